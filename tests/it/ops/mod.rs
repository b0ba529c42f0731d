//! Running it: the image and the files that deploy and watch it, the static binary,
//! the metrics endpoint and health, one connector per journal, TLS and proxies.

mod compose;
mod image;
mod kubernetes;
mod lease;
mod metrics;
mod monitoring;
mod static_binary;
mod systemd;
mod tls;
