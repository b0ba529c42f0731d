//! spinoco-connector: pulls call recordings, transcriptions and metadata from the
//! Spinoco platform into local disk or cloud storage, named by the user's template.
//!
//! The binary is a thin shell over this library; the integration tests, the benchmark
//! and the demo use the same pieces (the platform emulator above all).

pub mod cloud;
pub mod config;
pub mod date_pattern;
pub mod demo;
pub mod emulator;
pub mod encoding;
pub mod endpoint;
pub mod env;
pub mod http;
pub mod journal;
pub mod lease;
pub mod logging;
pub mod metrics;
pub mod net;
pub mod notify;
pub mod platform;
pub mod process;
pub mod redact;
pub mod retry;
pub mod shutdown;
pub mod store;
pub mod sync;
pub mod task;
pub mod template;
pub mod tls;
