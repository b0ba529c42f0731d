//! Credentials and workload identities: each token flow against fake token endpoints
//! that check the request's shape, and each identity ending in a real sync into its
//! storage test server.

mod credentials;
mod deploy;
mod gcs_auth;
mod identity;
