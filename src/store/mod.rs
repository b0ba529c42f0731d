//! One storage trait for every provider.
//!
//! The sync engine only ever talks to a [`BlobStore`]: it streams a download into
//! [`BlobStore::put_with`] (or, for a cloud store's file that fits one request, reads it
//! into a buffer of the store's pool and hands it to [`BlobStore::put_whole`]: see
//! [`BlobStore::staging`]), keeps its page journal with small puts, gets and deletes,
//! and never knows which provider is behind it. Each provider lives in its own module and
//! promises the same thing: an object becomes visible only when it is complete.
//! `verify` reads an archive back through the same trait (a listing, a size, a
//! stream), and only reads.
//!
//! What reaches the engine from a store (stated here once): the store retries each of
//! its own requests (or file operations) under the [`RetryBudget`] it was opened with,
//! so a [`StoreErrorKind`] that reaches the engine means: `Denied`, stop (nothing more
//! is deleted from the platform); `Rejected`, this file cannot be stored; `Transient`,
//! the budget is spent; `Source` (the download broke) and `Restart` (the store lost
//! the upload itself), the engine transfers the file anew. The three cloud providers
//! share one REST layer ([`client`]) for their retries; local storage retries
//! transient file-system errors (a full disk) itself.

// rust-s3's own client must never send (clippy.toml lists its sending methods).
#![deny(clippy::disallowed_methods)]

use std::fmt;
use std::io::{self, Read};

pub mod azure;
pub mod client;
pub mod gcs;
pub mod local;
pub mod s3;

use std::path::PathBuf;

use crate::retry::RetryBudget;
pub use crate::task::ObjectInfo;
pub use client::parts::{Buffer, PartPool};

/// Which storage provider, with its own settings.
#[derive(Debug, Clone)]
pub enum StorageSettings {
    Local { root: PathBuf },
    Gcs(Box<gcs::GcsSettings>),
    Azure(azure::AzureSettings),
    S3(Box<s3::S3Settings>),
}

impl StorageSettings {
    pub fn provider(&self) -> &'static str {
        match self {
            StorageSettings::Local { .. } => "local",
            StorageSettings::Gcs(_) => "gcs",
            StorageSettings::Azure(_) => "azure",
            StorageSettings::S3(_) => "s3",
        }
    }
}

/// Opens the configured provider. `agent` is the shared HTTP agent for the providers
/// that speak REST through it; `budget` bounds the retries of each request
/// (`--once`: `RetryBudget::within(SP_TASK_SYNC_RETRY_TIMEOUT)`, service mode: forever).
pub fn open(
    settings: &StorageSettings,
    agent: &ureq::Agent,
    budget: RetryBudget,
) -> Result<Box<dyn BlobStore>, StoreError> {
    match settings {
        StorageSettings::Local { root } => {
            Ok(Box::new(local::LocalStore::open(root)?.with_budget(budget)))
        }
        StorageSettings::Gcs(gcs) => Ok(Box::new(gcs::GcsStore::open(gcs, agent, budget)?)),
        StorageSettings::Azure(s) => Ok(Box::new(azure::AzureStore::new(
            s.clone(),
            agent.clone(),
            budget,
        ))),
        StorageSettings::S3(s) => Ok(Box::new(s3::S3Store::open(s, agent, budget)?)),
    }
}

/// Opens the configured provider to read only (`verify`): as [`open`], except that a
/// local folder must exist and nothing is created in it.
pub fn open_existing(
    settings: &StorageSettings,
    agent: &ureq::Agent,
    budget: RetryBudget,
) -> Result<Box<dyn BlobStore>, StoreError> {
    match settings {
        StorageSettings::Local { root } => Ok(Box::new(
            local::LocalStore::open_existing(root)?.with_budget(budget),
        )),
        _ => open(settings, agent, budget),
    }
}

/// The provider's version of a stored object, for conditional writes: the S3 or Azure
/// ETag, the GCS generation, a content hash for local files. Opaque to callers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectVersion(pub String);

/// A small object read with its version.
#[derive(Debug, Clone)]
pub struct Versioned {
    pub bytes: Vec<u8>,
    pub version: ObjectVersion,
}

/// When a conditional write may happen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PutCondition {
    /// Only if nothing is stored under the key.
    IfAbsent,
    /// Only if the stored object still has this version.
    IfMatch(ObjectVersion),
}

/// What a conditional write came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PutIf {
    Written(ObjectVersion),
    /// Someone else's object is there (or the version moved on): nothing was written.
    ConditionFailed,
}

/// Whether the store honours conditional writes: writes `probe` with `IfAbsent` twice;
/// the second must be refused. `Ok(false)` means the store ignores the conditions (some
/// S3-compatible servers do), so a lease on it cannot exclude a second writer. The
/// probe object is removed afterwards.
pub fn honours_conditions(store: &dyn BlobStore, probe: &str) -> Result<bool, StoreError> {
    store.delete(probe)?;
    let first = store.put_if(probe, b"probe 1", PutCondition::IfAbsent)?;
    let second = store.put_if(probe, b"probe 2", PutCondition::IfAbsent)?;
    let kept = store.get(probe)?;
    store.delete(probe)?;
    Ok(matches!(first, PutIf::Written(_))
        && second == PutIf::ConditionFailed
        && kept.as_deref() == Some(&b"probe 1"[..]))
}

/// What a storage provider offers the connector.
///
/// Keys are `/`-separated relative names that were already checked by
/// [`crate::template::check_name`]; the provider adds its own root or prefix.
pub trait BlobStore: Send + Sync {
    /// Where the data goes, for logs and `check` (never a secret).
    fn describe(&self) -> String;

    /// Streams `src` into `key` and returns the number of bytes stored; `info` says what
    /// the object is, which the cloud providers store as user metadata (`x-amz-meta-*`,
    /// GCS `metadata`, `x-ms-meta-*`) for downstream tools to index on (local files
    /// ignore it).
    ///
    /// The object becomes visible only after `src` reached its end without error and
    /// everything is durable; on any error nothing new is visible under `key` and an
    /// older object under that key is untouched. An existing object is replaced, except
    /// (S3, GCS, Azure) one whose task id names another task than `info`'s: that put is
    /// `Rejected` and writes nothing ([`client::claim`]).
    /// `size` is the expected length when known (a hint for choosing upload modes).
    fn put_with(
        &self,
        key: &str,
        src: &mut dyn Read,
        size: Option<u64>,
        info: &ObjectInfo,
    ) -> Result<u64, StoreError>;

    /// [`BlobStore::put_with`] for the connector's own objects (journal, lease, probes).
    fn put(&self, key: &str, src: &mut dyn Read, size: Option<u64>) -> Result<u64, StoreError> {
        self.put_with(key, src, size, &ObjectInfo::default())
    }

    /// Reads a small object whole; `Ok(None)` when there is none.
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError>;

    /// Removes an object; a missing object is not an error.
    fn delete(&self, key: &str) -> Result<(), StoreError>;

    /// Reads a small object with its version; `Ok(None)` when there is none.
    fn get_versioned(&self, key: &str) -> Result<Option<Versioned>, StoreError> {
        let _ = key;
        Err(StoreError::new(
            StoreErrorKind::Rejected,
            format!("{} has no versioned reads", self.describe()),
        ))
    }

    /// Writes a small object only when `cond` holds, atomically at the store (S3
    /// `If-None-Match: *` / `If-Match`, GCS `ifGenerationMatch`, Azure `If-None-Match`
    /// / `If-Match`, local an exclusive create or a compare under a lock).
    fn put_if(&self, key: &str, bytes: &[u8], cond: PutCondition) -> Result<PutIf, StoreError> {
        let _ = (key, bytes, cond);
        Err(StoreError::new(
            StoreErrorKind::Rejected,
            format!("{} has no conditional writes", self.describe()),
        ))
    }

    /// For the engine's upload stage: the store's buffers and the largest object it
    /// sends in one request. `None` when a write has no round trip worth hiding behind
    /// the next download (local storage).
    fn staging(&self) -> Option<Staging<'_>> {
        None
    }

    /// Stores an object whose bytes are all in memory, as [`BlobStore::put_with`] does
    /// (the same promises), in one request when it is at most
    /// [`Staging::single_request`] long; the bytes are sent from `bytes`, not copied.
    fn put_whole(&self, key: &str, bytes: &[u8], info: &ObjectInfo) -> Result<u64, StoreError> {
        let mut src = bytes;
        self.put_with(key, &mut src, Some(bytes.len() as u64), info)
    }

    /// Whether a conditional create ([`PutCondition::IfAbsent`]) is atomic at the store
    /// itself, so that of two writers at once exactly one wins (local storage: an
    /// exclusive create). The cloud providers promise it, but the S3 test server
    /// (s3s-fs) checks, then writes, so the lease reads itself back there
    /// ([`crate::lease`]).
    fn atomic_creates(&self) -> bool {
        false
    }

    /// Every name under `prefix` (`a/b/` for a folder), relative to the store's root or
    /// prefix like the keys, in no particular order: S3 ListObjectsV2, GCS objects list
    /// and Azure List Blobs page by page, local disk a walk (symbolic links to folders
    /// left out). Only reads (`verify`).
    fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError>;

    /// The size of the object under `key` (a HEAD, the metadata, a stat), `Ok(None)`
    /// when there is none.
    fn size(&self, key: &str) -> Result<Option<u64>, StoreError>;

    /// The object under `key` as a stream of its bytes, `Ok(None)` when there is none.
    /// Memory stays bounded whatever the object's size: the cloud providers read it one
    /// range at a time through the shared REST layer ([`client::read`]), each range
    /// retried on its own. An error while reading is an `io::Error` whose inner error is
    /// the [`StoreError`] ([`StoreError::of_io`] gets it back).
    fn stream(&self, key: &str) -> Result<Option<Box<dyn Read + '_>>, StoreError>;

    /// Called by the service once it holds the journal lease of `tag`, and only then:
    /// cleans up what earlier runs left behind. `earlier_run` is the run id of the
    /// lease's previous holder ([`crate::lease::Lease::predecessor`]), whose run is over.
    /// Local storage names its temp files with the tag from then on and removes the
    /// temp files of the previous holder's run, of the tag's other runs (their owner is
    /// gone or fenced off: the lease is exclusive) and any untouched for ten minutes,
    /// never its own run's. The cloud providers have nothing to sweep: an unfinished
    /// upload is invisible, and the bucket's lifecycle rule ends it.
    fn sweep_leftovers(&self, tag: &str, earlier_run: Option<&str>) {
        let _ = (tag, earlier_run);
    }
}

/// What a cloud store offers the engine's upload stage ([`BlobStore::staging`]).
#[derive(Clone, Copy)]
pub struct Staging<'a> {
    /// Every buffer of the store's uploads, streamed or whole, comes from this pool; its
    /// limit is the store's memory bound.
    pub pool: &'a PartPool,
    /// Objects up to this many bytes go up in one request ([`BlobStore::put_whole`]).
    pub single_request: u64,
}

/// Stores a small in-memory value (journal entries, probes).
pub fn put_bytes(store: &dyn BlobStore, key: &str, bytes: &[u8]) -> Result<u64, StoreError> {
    let mut src = bytes;
    store.put(key, &mut src, Some(bytes.len() as u64))
}

/// How the engine should react to a storage error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreErrorKind {
    /// Worth retrying: the network, a 5xx, a full disk that may drain.
    Transient,
    /// The storage refused our credentials or permissions: retrying cannot help,
    /// the process stops so that nothing gets deleted from the platform.
    Denied,
    /// This one object cannot be stored (for example a name the storage refuses).
    Rejected,
    /// Reading the source failed (the download broke); the caller decides.
    Source,
    /// The store lost the upload itself (its multipart upload or resumable session is
    /// gone, a local temp file was removed under the write, or it keeps confirming the
    /// same bytes): nothing new is visible, and the whole
    /// object must be sent again from its source, which only the caller can read again
    /// (the engine transfers the file anew).
    Restart,
}

/// A storage failure with a message a user can act on (no secrets in it), and the
/// error that caused it, if any (printed after it: see [`crate::report`]).
#[derive(Debug)]
pub struct StoreError {
    pub kind: StoreErrorKind,
    pub message: String,
    pub source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl StoreError {
    pub fn new(kind: StoreErrorKind, message: impl Into<String>) -> Self {
        StoreError {
            kind,
            message: message.into(),
            source: None,
        }
    }

    /// The message with its cause, as a user reads it.
    pub fn report(&self) -> String {
        crate::report::Report(self).to_string()
    }

    pub fn transient(message: impl Into<String>) -> Self {
        Self::new(StoreErrorKind::Transient, message)
    }

    pub fn restart(message: impl Into<String>) -> Self {
        Self::new(StoreErrorKind::Restart, message)
    }

    /// The storage error inside an `io::Error` a [`BlobStore::stream`] returned, or a
    /// `Transient` one saying what `what` met.
    pub fn of_io(what: &str, err: io::Error) -> Self {
        err.downcast::<StoreError>()
            .unwrap_or_else(|err| StoreError {
                kind: StoreErrorKind::Transient,
                message: what.to_string(),
                source: Some(Box::new(err)),
            })
    }

    /// Classifies a local I/O error met while doing `what`. A missing file or folder
    /// while storing is a temp file (or its folder) that vanished under the write: it
    /// never comes back by retrying, the file must be written again from its source.
    pub fn from_io(what: &str, err: io::Error) -> Self {
        use io::ErrorKind::*;
        let kind = match err.kind() {
            PermissionDenied | ReadOnlyFilesystem => StoreErrorKind::Denied,
            InvalidFilename | InvalidInput | NotADirectory | IsADirectory => {
                StoreErrorKind::Rejected
            }
            NotFound => StoreErrorKind::Restart,
            _ => StoreErrorKind::Transient,
        };
        StoreError {
            kind,
            message: what.to_string(),
            source: Some(Box::new(err)),
        }
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for StoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_deref().map(|e| e as _)
    }
}

/// The `Content-Type` stored with an object, from its suffix.
pub fn content_type(key: &str) -> &'static str {
    let ext = key
        .rsplit_once('.')
        .map(|(_, e)| e.to_ascii_lowercase())
        .unwrap_or_default();
    match ext.as_str() {
        "json" => "application/json",
        "ogg" => "audio/ogg",
        _ => "application/octet-stream",
    }
}

/// Joins an optional prefix (SP_TASK_SYNC_SAVE_TO for cloud providers) and a key.
pub fn prefixed(prefix: &str, key: &str) -> String {
    let prefix = prefix.trim_matches('/');
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}/{key}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_joins_without_double_slashes() {
        assert_eq!(prefixed("", "a/b"), "a/b");
        assert_eq!(prefixed("/calls/", "a/b"), "calls/a/b");
        assert_eq!(prefixed("x", "a"), "x/a");
    }

    #[test]
    fn io_errors_sort_into_kinds() {
        let kind = |k| StoreError::from_io("x", io::Error::from(k)).kind;
        assert_eq!(kind(io::ErrorKind::NotFound), StoreErrorKind::Restart);
        assert_eq!(kind(io::ErrorKind::StorageFull), StoreErrorKind::Transient);
        assert_eq!(
            kind(io::ErrorKind::PermissionDenied),
            StoreErrorKind::Denied
        );
        assert_eq!(kind(io::ErrorKind::IsADirectory), StoreErrorKind::Rejected);
    }

    #[test]
    fn a_store_error_comes_back_out_of_an_io_error() {
        let inner = StoreError::new(StoreErrorKind::Denied, "refused");
        let back = StoreError::of_io("reading", io::Error::other(inner));
        assert_eq!(
            (back.kind, back.message.as_str()),
            (StoreErrorKind::Denied, "refused")
        );
        let plain = StoreError::of_io("reading x", io::Error::from(io::ErrorKind::BrokenPipe));
        assert_eq!(
            (plain.kind, plain.message.as_str()),
            (StoreErrorKind::Transient, "reading x")
        );
    }

    #[test]
    fn content_types() {
        assert_eq!(content_type("a/b.TRANS.JSON"), "application/json");
        assert_eq!(content_type("a/b-2.ogg"), "audio/ogg");
        assert_eq!(content_type("noext"), "application/octet-stream");
    }
}
