//! The one HTTP agent the connector uses for the platform and for storage.
//!
//! Sharing it means one connection pool with keep-alive for all workers, and one place
//! where timeouts, TLS roots and proxies are set.
//!
//! Proxies: a ureq agent takes one proxy for every host, and its own NO_PROXY rules
//! (no domain-suffix entries, no ports) are not the usual ones. So the agent handed
//! out is the direct one, and a small middleware on it sends each request whose host
//! must go through a proxy to a second agent configured with that proxy (one for https
//! targets, one for plain http). ureq speaks CONNECT to the proxy for both, with Basic
//! credentials when the proxy URL has them. Every agent verifies TLS with
//! [`tls`]: built-in roots plus the extra CA bundles.

use std::time::Duration;

use ureq::http::Uri;
use ureq::unversioned::resolver::DefaultResolver;
use ureq::unversioned::transport::{ConnectProxyConnector, Connector, TcpConnector};

pub mod proxy;
pub mod tls;

use proxy::{Network, ProxySetting};
use tls::{TlsConnector, TrustRecord, TrustSource};

/// Builds the shared agent with the built-in roots and no proxy. `timeout` is the
/// longest silence accepted while connecting, waiting for an answer or reading a
/// body; a stalled server is then a transient error.
pub fn agent(timeout: Duration, concurrency: usize) -> ureq::Agent {
    Http::new(timeout, concurrency, &Network::default()).agent
}

/// The shared agent with the network settings it was built from.
pub struct Http {
    /// Clone it freely: clones share the pool.
    pub agent: ureq::Agent,
    network: Network,
    trust: TrustRecord,
}

impl Http {
    pub fn new(timeout: Duration, concurrency: usize, network: &Network) -> Http {
        let trust = TrustRecord::default();
        let tls = tls::client_config(
            &network.extra_ca_certs(),
            &network.ca_source(),
            trust.clone(),
        );
        // Per host: the workers, the upload stage's slots (up to four per worker, in
        // front of a cloud store) and the journal writer and lease beside them.
        let connections = 5 * concurrency.max(1) + 2;
        let build = |proxy: Option<&ProxySetting>, routes: Option<Routes>| {
            let mut b = ureq::Agent::config_builder()
                .http_status_as_error(false)
                .timeout_connect(Some(timeout.min(Duration::from_secs(30))))
                .timeout_send_request(Some(timeout))
                .timeout_recv_response(Some(timeout))
                .timeout_per_read(Some(timeout))
                .timeout_per_write(Some(timeout))
                // Every connection holds its two buffers while it is pooled, touched
                // whole (ureq zeroes them): 32 KiB each instead of 128, as there are
                // more connections in flight with the upload stage.
                .input_buffer_size(32 * 1024)
                .output_buffer_size(32 * 1024)
                .max_idle_connections_per_host(connections)
                .max_idle_connections(4 * connections)
                .max_redirects(0)
                .user_agent(concat!("spinoco-connector/", env!("CARGO_PKG_VERSION")))
                // Never ureq's own reading of *_PROXY: the settings were read and
                // checked with the rest of the configuration.
                .proxy(proxy.map(|p| p.to_ureq().expect("a checked proxy setting builds")));
            if let Some(routes) = routes {
                b = b.middleware(
                    move |req: ureq::http::Request<ureq::SendBody>,
                          next: ureq::middleware::MiddlewareNext| {
                        match routes.proxied_agent(req.uri()) {
                            Some(agent) => agent.run(req),
                            None => next.handle(req),
                        }
                    },
                );
            }
            // ureq's default chain with the TLS step replaced by ours (see `tls`).
            let connector =
                ().chain(ConnectProxyConnector::default())
                    .chain(TcpConnector::default())
                    .chain(TlsConnector {
                        config: tls.clone(),
                    });
            ureq::Agent::with_parts(b.build(), connector, DefaultResolver::default())
        };
        let routes = Routes {
            network: network.clone(),
            https: network.https_proxy.as_ref().map(|p| build(Some(p), None)),
            http: network.http_proxy.as_ref().map(|p| build(Some(p), None)),
        };
        let proxied = routes.https.is_some() || routes.http.is_some();
        let agent = build(None, proxied.then_some(routes));
        Http {
            agent,
            network: network.clone(),
            trust,
        }
    }

    /// How a request to `url` travels: `direct` or `through proxy http://u:***@p:3128`.
    pub fn route(&self, url: &str) -> String {
        match url
            .parse::<Uri>()
            .ok()
            .and_then(|u| proxy_of(&self.network, &u))
        {
            Some(p) => format!("through proxy {}", p.masked_url()),
            None => "direct".to_string(),
        }
    }

    /// Which roots verified `host`'s certificate on this agent, once it was reached.
    pub fn verified_by(&self, host: &str) -> Option<TrustSource> {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        self.trust
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(host)
            .cloned()
    }
}

/// The proxied agents and the rules that pick them.
struct Routes {
    network: Network,
    https: Option<ureq::Agent>,
    http: Option<ureq::Agent>,
}

impl Routes {
    fn proxied_agent(&self, uri: &Uri) -> Option<&ureq::Agent> {
        proxy_of(&self.network, uri)?;
        if uri.scheme_str() == Some("https") {
            self.https.as_ref()
        } else {
            self.http.as_ref()
        }
    }
}

fn proxy_of<'a>(network: &'a Network, uri: &Uri) -> Option<&'a ProxySetting> {
    let scheme = uri.scheme_str().unwrap_or("http");
    let port = uri
        .port_u16()
        .unwrap_or(if scheme == "https" { 443 } else { 80 });
    network.proxy_for(scheme, uri.host()?, port)
}

/// A transport error in words; a refused TLS certificate names the host and why.
pub fn error_message(url: &str, e: &ureq::Error) -> String {
    match tls::verification_failure(e) {
        Some(reason) => {
            let rest = url.split_once("://").map_or(url, |(_, r)| r);
            let authority = rest.split('/').next().unwrap_or(rest);
            format!("TLS certificate of {authority} refused: {reason}")
        }
        None => e.to_string(),
    }
}

/// Whether a request certainly never reached the server: its host did not resolve, or
/// the connection (or the proxy's tunnel) could not be set up. Anything else may have
/// been received and acted on, even when no answer came back.
pub fn never_sent(e: &ureq::Error) -> bool {
    use std::io::ErrorKind::*;
    match e {
        ureq::Error::HostNotFound
        | ureq::Error::ConnectionFailed
        | ureq::Error::ConnectProxyFailed(_) => true,
        ureq::Error::Timeout(t) => matches!(t, ureq::Timeout::Resolve | ureq::Timeout::Connect),
        ureq::Error::Io(io) => matches!(
            io.kind(),
            ConnectionRefused | AddrNotAvailable | NetworkUnreachable | HostUnreachable
        ),
        _ => false,
    }
}

/// Why a failed request is worth another try, for `/metrics`.
pub fn retry_reason(e: &ureq::Error) -> crate::retry::Reason {
    match e {
        ureq::Error::Timeout(_) => crate::retry::Reason::Timeout,
        _ => crate::retry::Reason::Transport,
    }
}

/// The `Retry-After` of an answer, when it is a number of seconds.
pub fn retry_after<B>(response: &ureq::http::Response<B>) -> Option<Duration> {
    retry_after_in(response.headers())
}

/// [`retry_after`] from an answer's headers.
pub fn retry_after_in(headers: &ureq::http::HeaderMap) -> Option<Duration> {
    headers
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
}
