//! One storage trait for every provider.
//!
//! The sync engine only ever talks to a [`BlobStore`]: it streams a download into
//! [`BlobStore::put`], keeps its page journal with small puts, gets and deletes, and
//! never knows which provider is behind it. Each provider lives in its own module and
//! promises the same thing: an object becomes visible only when it is complete.

use std::fmt;
use std::io::{self, Read};

pub mod azure;
pub mod azure_auth;
pub mod gcs;
pub mod gcs_auth;
pub mod local;
pub mod s3;
pub mod s3_credentials;

use std::path::PathBuf;

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
/// that speak REST through it.
pub fn open(
    settings: &StorageSettings,
    agent: &ureq::Agent,
) -> Result<Box<dyn BlobStore>, StoreError> {
    match settings {
        StorageSettings::Local { root } => Ok(Box::new(local::LocalStore::open(root)?)),
        StorageSettings::Gcs(gcs) => Ok(Box::new(gcs::GcsStore::open(gcs, agent)?)),
        StorageSettings::Azure(s) => Ok(Box::new(azure::AzureStore::new(s.clone(), agent.clone()))),
        StorageSettings::S3(s) => Ok(Box::new(s3::S3Store::open(s, agent)?)),
    }
}

/// What a storage provider offers the connector.
///
/// Keys are `/`-separated relative names that were already checked by
/// [`crate::template::check_name`]; the provider adds its own root or prefix.
pub trait BlobStore: Send + Sync {
    /// Where the data goes, for logs and `check` (never a secret).
    fn describe(&self) -> String;

    /// Streams `src` into `key` and returns the number of bytes stored.
    ///
    /// The object becomes visible only after `src` reached its end without error and
    /// everything is durable; on any error nothing new is visible under `key` and an
    /// older object under that key is untouched. An existing object is replaced.
    /// `size` is the expected length when known (a hint for choosing upload modes).
    fn put(&self, key: &str, src: &mut dyn Read, size: Option<u64>) -> Result<u64, StoreError>;

    /// Reads a small object whole; `Ok(None)` when there is none.
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError>;

    /// Removes an object; a missing object is not an error.
    fn delete(&self, key: &str) -> Result<(), StoreError>;
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
}

/// A storage failure with a message a user can act on (no secrets in it).
#[derive(Debug)]
pub struct StoreError {
    pub kind: StoreErrorKind,
    pub message: String,
}

impl StoreError {
    pub fn new(kind: StoreErrorKind, message: impl Into<String>) -> Self {
        StoreError {
            kind,
            message: message.into(),
        }
    }

    pub fn transient(message: impl Into<String>) -> Self {
        Self::new(StoreErrorKind::Transient, message)
    }

    /// Classifies a local I/O error met while doing `what`.
    pub fn from_io(what: &str, err: &io::Error) -> Self {
        use io::ErrorKind::*;
        let kind = match err.kind() {
            PermissionDenied | ReadOnlyFilesystem => StoreErrorKind::Denied,
            InvalidFilename | InvalidInput | NotADirectory | IsADirectory => {
                StoreErrorKind::Rejected
            }
            _ => StoreErrorKind::Transient,
        };
        StoreError::new(kind, format!("{what}: {err}"))
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for StoreError {}

/// A transport failure of a provider that speaks REST through the shared agent. A
/// refused TLS certificate will not verify on the next try either, so it stops the run
/// like refused credentials; anything else (a reset, a timeout) may be retried.
pub fn transport_error(url: &str, e: &ureq::Error) -> StoreError {
    let message = crate::http::error_message(url, e);
    match crate::tls::verification_failure(e) {
        Some(_) => StoreError::new(StoreErrorKind::Denied, message),
        None => StoreError::transient(message),
    }
}

/// Reads from `src` into `buf` until it is full or `src` ends; returns how many bytes
/// were read. Providers that upload in parts use it to fill one part at a time.
/// A read error is reported as [`StoreErrorKind::Source`].
pub fn fill_buffer(src: &mut dyn Read, buf: &mut [u8]) -> Result<usize, StoreError> {
    let mut filled = 0;
    while filled < buf.len() {
        match src.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(StoreError::new(StoreErrorKind::Source, e.to_string())),
        }
    }
    Ok(filled)
}

/// The first part of an upload, read before choosing between one simple request and
/// a multi-part upload. A size hint below `part` sizes the buffer (journal entries and
/// metadata stay small in memory); one byte past the hint tells a source that is longer
/// than announced, which then gets a whole part.
pub struct FirstPart {
    pub buf: Vec<u8>,
    pub len: usize,
}

impl FirstPart {
    pub fn read(
        src: &mut dyn Read,
        size: Option<u64>,
        part: usize,
    ) -> Result<FirstPart, StoreError> {
        let part = part.max(1);
        let first = size.map_or(part, |s| s.saturating_add(1).min(part as u64) as usize);
        let mut buf = vec![0u8; first];
        let mut len = fill_buffer(src, &mut buf)?;
        if len == buf.len() && buf.len() < part {
            buf.resize(part, 0);
            len += fill_buffer(src, &mut buf[len..])?;
        }
        Ok(FirstPart { buf, len })
    }

    /// The source ended within the part: one simple upload carries it all.
    pub fn is_whole(&self) -> bool {
        self.len < self.buf.len()
    }

    pub fn bytes(&self) -> &[u8] {
        &self.buf[..self.len]
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
    fn first_part_is_sized_by_the_hint_and_grows_for_a_longer_source() {
        let whole = FirstPart::read(&mut &[7u8; 10][..], Some(10), 64).unwrap();
        assert!(whole.is_whole() && whole.bytes() == [7u8; 10] && whole.buf.len() == 11);
        let lied = FirstPart::read(&mut &[7u8; 100][..], Some(10), 64).unwrap();
        assert!(!lied.is_whole() && lied.len == 64);
        let unknown = FirstPart::read(&mut &[7u8; 30][..], None, 64).unwrap();
        assert!(unknown.is_whole() && unknown.len == 30);
        let exact = FirstPart::read(&mut &[7u8; 64][..], None, 64).unwrap();
        assert!(!exact.is_whole(), "a source that fills the part may go on");
        assert_eq!(content_type("a/b.TRANS.JSON"), "application/json");
        assert_eq!(content_type("a/b-2.ogg"), "audio/ogg");
        assert_eq!(content_type("noext"), "application/octet-stream");
    }

    #[test]
    fn fill_buffer_reads_across_short_reads() {
        struct Trickle(Vec<u8>);
        impl Read for Trickle {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                if self.0.is_empty() || buf.is_empty() {
                    return Ok(0);
                }
                buf[0] = self.0.remove(0);
                Ok(1)
            }
        }
        let mut src = Trickle(b"hello world".to_vec());
        let mut buf = [0u8; 5];
        assert_eq!(fill_buffer(&mut src, &mut buf).unwrap(), 5);
        assert_eq!(&buf, b"hello");
        let mut big = [0u8; 64];
        assert_eq!(fill_buffer(&mut src, &mut big).unwrap(), 6);
    }
}
