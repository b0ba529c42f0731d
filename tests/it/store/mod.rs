//! The stores on their own, against each provider's real test server: the behaviour
//! every provider shares, each one's upload paths, conditional writes, and what the
//! shared REST layer promises on the wire.

mod azure;
mod conditions;
mod gcs;
mod integrity;
mod local;
mod s3;
