//! What the integration tests (`tests/it/`) share, in one place: running the binary and
//! checking what it stored (`harness`, `providers`, `behaviour`, `archive`), the platforms it talks
//! to (the emulator of the crate, `hostile`), what stands in for the network and the
//! servers (`fake_http`, `proxy`, `capture`, `s3fs`, `azurite`, `pki`, `tmpfs`, `podman`,
//! `static_build`), deterministic data and coding (`data`, `codec`), and the one skip
//! policy (`skip`). The benchmark includes it too.

pub mod alone;
pub mod archive;
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
