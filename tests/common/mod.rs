//! Pieces the integration tests share.

pub mod alone;
pub mod azurite;
pub mod behaviour;
pub mod capture;
pub mod codec;
pub mod data;
pub mod fake_http;
pub mod harness;
pub mod hostile;
pub mod pki;
pub mod podman;
pub mod providers;
pub mod proxy;
pub mod s3fs;
pub mod skip;
pub mod static_build;
pub mod tmpfs;
