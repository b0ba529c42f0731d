//! Credentials and workload identities: each token flow against fake token endpoints
//! that check the request's shape, and each identity ending in a real sync into its
//! storage test server.

use std::time::Duration;

mod credentials;
mod deploy;
mod gcs_auth;
mod identity;

/// The instant `from_now` ahead, as token endpoints write an expiry (RFC 3339).
fn rfc3339_from_now(from_now: Duration) -> String {
    (time::OffsetDateTime::now_utc() + from_now)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

fn in_an_hour() -> String {
    rfc3339_from_now(Duration::from_secs(3600))
}
