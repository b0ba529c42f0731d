//! The one HTTP agent the connector uses for the platform and for storage.
//!
//! Sharing it means one connection pool with keep-alive for all workers, and one place
//! where timeouts (and later TLS roots and proxies) are set.

use std::time::Duration;

/// Builds the shared agent. `timeout` is the longest silence accepted while connecting,
/// waiting for an answer or reading a body; a stalled server is then a transient error.
pub fn agent(timeout: Duration, concurrency: usize) -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_connect(Some(timeout.min(Duration::from_secs(30))))
        .timeout_send_request(Some(timeout))
        .timeout_recv_response(Some(timeout))
        .timeout_per_read(Some(timeout))
        .timeout_per_write(Some(timeout))
        .max_idle_connections_per_host(concurrency + 2)
        .max_idle_connections(4 * (concurrency + 2))
        .max_redirects(0)
        .user_agent(concat!("spinoco-connector/", env!("CARGO_PKG_VERSION")))
        .build()
        .into()
}

/// The `Retry-After` of an answer, when it is a number of seconds.
pub fn retry_after<B>(response: &ureq::http::Response<B>) -> Option<Duration> {
    response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
}
