//! spinoco-connector: pulls call recordings, transcriptions and metadata from the
//! Spinoco platform into local disk or cloud storage, named by the user's template.
//!
//! The binary is a thin shell over [`run`]. Every module is private; what the binary,
//! the benchmark, the fuzz targets and the integration tests need is named below, in one
//! block, with why. The modules are grouped bottom to top: a module imports only modules
//! of its own group or of the groups before it (README "Layout" gives the order).

// Leaf types and helpers.
mod bandwidth;
mod checksum;
mod date_pattern;
mod encoding;
mod env;
mod heap;
mod logging;
mod manifest;
mod notify;
mod process;
mod redact;
mod report;
mod shutdown;
mod task;
mod template;
// The transport, retries and counters every side shares.
mod http;
mod metrics;
mod retry;
// The two sides: the platform and the storage.
mod platform;
mod store;
// What the connector keeps, and its configuration.
mod config;
mod journal;
mod lease;
// The engine, and what runs it.
mod cli;
mod demo;
mod emulator;
mod endpoint;
mod sync;
mod verify;

// The binary: the whole command line, exit codes included.
pub use cli::run;

// The integration tests, the benchmark and the demo's users: the platform emulator.
pub use emulator::{Emulator, EmulatorConfig, EmulatorTls, Faults, RawReply};

// The integration tests: the configuration as the binary reads it, and the pieces they
// drive directly against the real storage servers.
pub use config::Config;
pub use env::Env;
pub use http::{agent, proxy::Network, Http};
pub use retry::RetryBudget;
pub use store::local::LocalStore;
pub use store::{
    honours_conditions, open as open_store, put_bytes, BlobStore, ObjectInfo, PutCondition, PutIf,
    StorageSettings, StoreErrorKind,
};

// The integration tests: each provider's store and settings, and the credential parsers
// and token sources they exercise against fake token endpoints.
pub mod azure {
    pub use crate::store::azure::builder::DEFAULT_BLOCK_SIZE;
    pub use crate::store::azure::credential::{
        account_sas, parse_connection_string, DEV_ACCOUNT, DEV_KEY,
    };
    pub use crate::store::azure::identity::AzureIdentity;
    pub use crate::store::azure::{AzureSettings, AzureStore};
}
pub mod gcs {
    pub use crate::store::gcs::credential::{Credentials, TokenSource};
    pub use crate::store::gcs::identity::{external_account_from_env, ExternalAccount};
    pub use crate::store::gcs::{GcsSettings, GcsStore};
}
pub mod s3 {
    pub use crate::store::s3::builder::{
        CredentialSettings, DEFAULT_MULTIPART_THRESHOLD, DEFAULT_PART_SIZE,
    };
    pub use crate::store::s3::credential::{CredentialProvider, Source};
    pub use crate::store::s3::identity::WebIdentity;
    pub use crate::store::s3::{S3Settings, S3Store};
}

// The fuzz targets: the feed's parser and the names.
pub use date_pattern::DatePattern;
pub use platform::decode_page;
pub use task::{NameSource, Task};
pub use template::{check_name, path_safe, FileNameTemplate, TaskFields};
