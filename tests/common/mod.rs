//! Pieces the integration tests share.

pub mod alone;
pub mod behaviour;
pub mod capture;
pub mod fake_http;
pub mod harness;
pub mod hostile;
pub mod pki;
pub mod providers;
pub mod proxy;
pub mod s3fs;
pub mod static_build;
