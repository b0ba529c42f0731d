//! Amazon S3 and S3-compatible storage (MinIO, Ceph RGW, Cloudflare R2, Wasabi, ...).
//!
//! Selected by `SP_TASK_SYNC_STORAGE_PROVIDER=s3`. Settings:
//!
//! | variable | meaning |
//! | --- | --- |
//! | `SP_TASK_SYNC_S3_BUCKET` | bucket name (required) |
//! | `SP_TASK_SYNC_S3_REGION` | region, e.g. `eu-central-1` (required; S3-compatible services often accept `us-east-1`) |
//! | `SP_TASK_SYNC_S3_ENDPOINT` | optional `http(s)://host[:port]` of an S3-compatible service; requests then use path-style addressing (`<endpoint>/<bucket>/<key>`). Unset: AWS, `https://s3.<region>.amazonaws.com`, virtual-hosted style |
//! | `SP_TASK_SYNC_SAVE_TO` | optional key prefix (as in the official connector) |
//! | `SP_TASK_SYNC_S3_MULTIPART_THRESHOLD` | objects above this size go up as multipart uploads (default 16MiB) |
//! | `SP_TASK_SYNC_S3_PART_SIZE` | size of one multipart part, 5MiB to 5GiB (default 8MiB) |
//!
//! Sizes are bytes, or a number with `K`, `M`, `G` (`KB`/`KiB`, ...: all powers of 1024).
//! Credentials come from the usual AWS chain, see [`super::s3_credentials`].
//!
//! How an object is written: an object of known size up to the threshold, or of unknown
//! size whose stream ends within the first part buffer, is one PUT. Anything larger is a
//! multipart upload fed from the stream one part buffer at a time, so memory stays near
//! one part (or one threshold-sized PUT). S3 makes an object visible only when the PUT
//! or CompleteMultipartUpload finishes, so no temporary key is needed. A multipart upload
//! that fails (source or storage) is aborted; an abort that fails too (the storage is
//! unreachable) is remembered and retried before the next upload. As a safety net for a
//! killed process, give the bucket a lifecycle rule `AbortIncompleteMultipartUpload`.
//!
//! rust-s3 runs in its blocking mode (attohttpc), so no async runtime is involved; its
//! own retries are switched off and the shared [`crate::retry`] policy is used instead.

use std::io::Read;
use std::sync::Mutex;
use std::time::Duration;

use s3::creds::Credentials;
use s3::error::S3Error;
use s3::serde_types::Part;
use s3::{Bucket, Region};

use super::s3_credentials::{CredentialProvider, CredentialSettings};
use super::{content_type, fill_buffer, prefixed, BlobStore, StoreError, StoreErrorKind};
use crate::env::{ConfigError, Env};
use crate::retry::{with_retries, Reason, RetryBudget, Side, Step};

const MIB: u64 = 1024 * 1024;
pub const DEFAULT_MULTIPART_THRESHOLD: u64 = 16 * MIB;
pub const DEFAULT_PART_SIZE: u64 = 8 * MIB;
/// S3's smallest part (all but the last).
pub const MIN_PART_SIZE: u64 = 5 * MIB;
/// S3's largest part, and largest single PUT.
pub const MAX_PART_SIZE: u64 = 5 * 1024 * MIB;
const MAX_PARTS: u32 = 10_000;
/// The whole of one request, a part included: 8 MiB in 5 minutes still works on a
/// 30 kB/s uplink, and a dead server is noticed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(300);
/// Attempts of one request inside an upload before the upload gives up; the engine
/// retries the whole object on a transient error after that.
const REQUEST_ATTEMPTS: RetryBudget = RetryBudget::tries(3);

/// The S3 settings from the environment.
#[derive(Debug, Clone)]
pub struct S3Settings {
    pub bucket: String,
    pub region: String,
    /// `http(s)://host[:port]` of an S3-compatible service, without a trailing slash.
    pub endpoint: Option<String>,
    /// Key prefix (`SP_TASK_SYNC_SAVE_TO`), may be empty.
    pub prefix: String,
    pub multipart_threshold: u64,
    pub part_size: u64,
    pub credentials: CredentialSettings,
}

impl S3Settings {
    /// Reads every S3 variable; all mistakes are pushed to `errors`.
    pub fn from_env(env: &Env, errors: &mut Vec<ConfigError>) -> Option<S3Settings> {
        let before = errors.len();
        let mut required = |var: &str, what: &str| match env.get(var) {
            Some(v) if v.contains(char::is_whitespace) || v.contains('/') => {
                errors.push(ConfigError::new(
                    var,
                    Some(v),
                    format!("is not a valid {what}"),
                ));
                String::new()
            }
            Some(v) => v.to_string(),
            None => {
                errors.push(ConfigError::new(
                    var,
                    None,
                    format!("is required for S3 storage: the {what}"),
                ));
                String::new()
            }
        };
        let bucket = required("SP_TASK_SYNC_S3_BUCKET", "bucket name");
        let region = required("SP_TASK_SYNC_S3_REGION", "region (e.g. eu-central-1)");
        let endpoint =
            env.get("SP_TASK_SYNC_S3_ENDPOINT")
                .and_then(|raw| match check_endpoint(raw) {
                    Ok(e) => Some(e),
                    Err(problem) => {
                        // A URL with user:password in it must not be echoed.
                        let shown = if raw.contains('@') { "***" } else { raw };
                        errors.push(ConfigError::new(
                            "SP_TASK_SYNC_S3_ENDPOINT",
                            Some(shown),
                            problem,
                        ));
                        None
                    }
                });
        let mut size = |var: &str, default: u64| match env.get(var) {
            None => default,
            Some(raw) => match crate::env::parse_size(raw) {
                Some(n) if (MIN_PART_SIZE..=MAX_PART_SIZE).contains(&n) => n,
                _ => {
                    errors.push(ConfigError::new(
                        var,
                        Some(raw),
                        "must be a size from 5MiB to 5GiB, in bytes or with K, M, G",
                    ));
                    default
                }
            },
        };
        let multipart_threshold = size(
            "SP_TASK_SYNC_S3_MULTIPART_THRESHOLD",
            DEFAULT_MULTIPART_THRESHOLD,
        );
        let part_size = size("SP_TASK_SYNC_S3_PART_SIZE", DEFAULT_PART_SIZE);
        let credentials = CredentialSettings::from_env(env, errors);
        (errors.len() == before).then(|| S3Settings {
            bucket,
            region,
            endpoint,
            prefix: env
                .get("SP_TASK_SYNC_SAVE_TO")
                .unwrap_or("")
                .trim_matches('/')
                .to_string(),
            multipart_threshold,
            part_size,
            credentials,
        })
    }

    /// `name = value` lines for `check` (no secrets).
    pub fn describe(&self) -> Vec<(&'static str, String)> {
        vec![
            ("SP_TASK_SYNC_S3_BUCKET", self.bucket.clone()),
            ("SP_TASK_SYNC_S3_REGION", self.region.clone()),
            (
                "SP_TASK_SYNC_S3_ENDPOINT",
                self.endpoint.clone().unwrap_or_else(|| "- (AWS)".into()),
            ),
            (
                "SP_TASK_SYNC_SAVE_TO",
                if self.prefix.is_empty() {
                    "-".into()
                } else {
                    self.prefix.clone()
                },
            ),
            (
                "SP_TASK_SYNC_S3_MULTIPART_THRESHOLD",
                self.multipart_threshold.to_string(),
            ),
            ("SP_TASK_SYNC_S3_PART_SIZE", self.part_size.to_string()),
            ("AWS credentials", self.credentials.describe()),
        ]
    }
}

fn check_endpoint(raw: &str) -> Result<String, &'static str> {
    let rest = raw
        .strip_prefix("https://")
        .or_else(|| raw.strip_prefix("http://"))
        .ok_or("must start with http:// or https://")?;
    let authority = rest.trim_end_matches('/');
    if authority.is_empty() || authority.contains(['?', '#', ' ']) {
        return Err("must be http(s)://host[:port]");
    }
    if authority.contains('@') {
        return Err("must not contain user:password (credentials come from the AWS variables)");
    }
    Ok(raw.trim_end_matches('/').to_string())
}

/// An upload whose abort failed, to be aborted later.
struct PendingAbort {
    key: String,
    upload_id: String,
}

pub struct S3Store {
    settings: S3Settings,
    region: Region,
    path_style: bool,
    credentials: CredentialProvider,
    pending_aborts: Mutex<Vec<PendingAbort>>,
}

impl S3Store {
    /// Checks nothing on the network yet: the first request finds the credentials.
    pub fn open(settings: &S3Settings, agent: &ureq::Agent) -> Result<S3Store, StoreError> {
        // Retries are ours (the shared policy); rust-s3's are a process-wide setting.
        s3::set_retries(0);
        // rust-s3's transport (attohttpc) builds rustls configs with the process's default
        // crypto provider. Its TLS feature enables aws-lc beside the ring that ureq uses,
        // and with two candidates rustls refuses to guess and panics at the first HTTPS
        // request: name ring, as everywhere else. (Err: already named, which is fine.)
        let _ = rustls::crypto::ring::default_provider().install_default();
        let (region, path_style) = match &settings.endpoint {
            Some(endpoint) => (
                Region::Custom {
                    region: settings.region.clone(),
                    endpoint: endpoint.clone(),
                },
                true,
            ),
            None => (
                Region::Custom {
                    region: settings.region.clone(),
                    endpoint: format!("https://s3.{}.amazonaws.com", settings.region),
                },
                // A dotted bucket name breaks the TLS wildcard of virtual hosts.
                settings.bucket.contains('.'),
            ),
        };
        Ok(S3Store {
            settings: settings.clone(),
            region,
            path_style,
            credentials: CredentialProvider::new(settings.credentials.clone(), agent.clone()),
            pending_aborts: Mutex::new(Vec::new()),
        })
    }

    /// A bucket handle with the current credentials (refreshed when near expiry).
    fn bucket(&self) -> Result<Box<Bucket>, StoreError> {
        let c = self.credentials.current()?;
        let creds = Credentials::new(
            Some(c.access_key_id.expose()),
            Some(c.secret_access_key.expose()),
            None,
            c.session_token.as_ref().map(|t| t.expose()),
            None,
        )
        .map_err(|_| {
            StoreError::new(
                StoreErrorKind::Denied,
                "the AWS credentials were refused by rust-s3",
            )
        })?;
        let mut bucket =
            Bucket::new(&self.settings.bucket, self.region.clone(), creds).map_err(|e| {
                StoreError::new(
                    StoreErrorKind::Denied,
                    format!("S3 bucket {}: {e}", self.settings.bucket),
                )
            })?;
        if self.path_style {
            bucket.set_path_style();
        }
        bucket.set_request_timeout(Some(REQUEST_TIMEOUT));
        Ok(bucket)
    }

    fn full_key(&self, key: &str) -> String {
        prefixed(&self.settings.prefix, key)
    }

    fn location(&self, key: &str) -> String {
        format!("s3://{}/{}", self.settings.bucket, key)
    }

    /// Turns a rust-s3 error into ours. Server messages are reduced to their `Code`
    /// and `Message`: AWS error documents can carry the provided signature.
    fn error(&self, op: &str, key: &str, err: S3Error) -> StoreError {
        let place = self.location(key);
        match err {
            S3Error::HttpFailWithBody(status, body) => {
                let code = xml_tag(&body, "Code").unwrap_or_default();
                let message = xml_tag(&body, "Message").unwrap_or_default();
                let mut message: String = message.chars().take(300).collect();
                if !message.is_empty() {
                    message.insert_str(0, ": ");
                }
                let text = format!("S3 {op} of {place} failed: HTTP {status} {code}{message}");
                let kind = match (status, code.as_str()) {
                    (_, "ExpiredToken" | "TokenRefreshRequired" | "RequestExpired") => {
                        self.credentials.invalidate();
                        StoreErrorKind::Transient
                    }
                    (_, "NoSuchBucket") => StoreErrorKind::Denied,
                    (401 | 403, _) => StoreErrorKind::Denied,
                    (408 | 429, _) | (500..=599, _) => StoreErrorKind::Transient,
                    (_, "RequestTimeout" | "SlowDown") => StoreErrorKind::Transient,
                    _ => StoreErrorKind::Rejected,
                };
                StoreError::new(kind, text)
            }
            // A certificate that does not verify will not verify on the next try either.
            other if other.to_string().contains("invalid peer certificate") => StoreError::new(
                StoreErrorKind::Denied,
                format!("S3 {op} of {place} failed: the endpoint's TLS certificate was refused: {other}"),
            ),
            other => StoreError::transient(format!("S3 {op} of {place} failed: {other}")),
        }
    }

    /// Runs one request with the shared back-off for transient failures.
    fn retried<T>(&self, mut op: impl FnMut() -> Result<T, StoreError>) -> Result<T, StoreError> {
        with_retries(REQUEST_ATTEMPTS, Side::Storage, "S3", || match op() {
            Ok(v) => Step::Done(v),
            Err(e) if e.kind == StoreErrorKind::Transient => Step::Retry {
                error: e,
                reason: Reason::Transport,
                after: None,
            },
            Err(e) => Step::Fail(e),
        })
        .map_err(|e| e.error)
    }

    fn put_single(&self, key: &str, bytes: &[u8]) -> Result<(), StoreError> {
        let content_type = content_type(key);
        self.retried(|| {
            self.bucket()?
                .put_object_with_content_type(key, bytes, content_type)
                .map(|_| ())
                .map_err(|e| self.error("PUT", key, e))
        })
    }

    /// Streams `src` as a multipart upload whose first part is already in `buf`.
    fn put_multipart(
        &self,
        key: &str,
        src: &mut dyn Read,
        mut buf: Vec<u8>,
        first: usize,
    ) -> Result<u64, StoreError> {
        let content_type = content_type(key);
        let upload_id = self.retried(|| {
            self.bucket()?
                .initiate_multipart_upload(key, content_type)
                .map(|r| r.upload_id)
                .map_err(|e| self.error("CreateMultipartUpload", key, e))
        })?;
        log::debug!("multipart upload to {} started", self.location(key));
        let result = self.upload_parts(key, &upload_id, src, &mut buf, first);
        drop(buf);
        match result {
            Ok(total) => Ok(total),
            Err(e) => {
                self.abort(key, &upload_id);
                Err(e)
            }
        }
    }

    fn upload_parts(
        &self,
        key: &str,
        upload_id: &str,
        src: &mut dyn Read,
        buf: &mut Vec<u8>,
        first: usize,
    ) -> Result<u64, StoreError> {
        let content_type = content_type(key);
        let part_size = self.settings.part_size as usize;
        let mut parts: Vec<Part> = Vec::new();
        let mut filled = first;
        let mut total = 0u64;
        loop {
            let number = parts.len() as u32 + 1;
            if number > MAX_PARTS {
                return Err(StoreError::new(
                    StoreErrorKind::Rejected,
                    format!(
                        "{} is larger than {MAX_PARTS} parts of {part_size} bytes",
                        self.location(key)
                    ),
                ));
            }
            let chunk = &buf[..filled];
            let part = self.retried(|| {
                self.bucket()?
                    .put_multipart_chunk(chunk, key, number, upload_id, content_type)
                    .map_err(|e| self.error(&format!("UploadPart {number}"), key, e))
            })?;
            parts.push(part);
            total += filled as u64;
            if filled < buf.len() {
                break; // the source ended within this part
            }
            if buf.len() != part_size {
                // The first buffer may have been sized for a single PUT.
                buf.truncate(part_size);
                buf.shrink_to_fit();
                buf.resize(part_size, 0);
            }
            filled = fill_buffer(src, buf)?;
            if filled == 0 {
                break;
            }
        }
        self.retried(|| {
            self.bucket()?
                .complete_multipart_upload(key, upload_id, parts.clone())
                .map(|_| ())
                .map_err(|e| self.error("CompleteMultipartUpload", key, e))
        })?;
        Ok(total)
    }

    /// Aborts an upload; if that fails it is kept for a later try.
    fn abort(&self, key: &str, upload_id: &str) {
        match self.try_abort(key, upload_id) {
            Ok(()) => log::debug!("multipart upload to {} aborted", self.location(key)),
            Err(e) => {
                log::warn!("{e}; will try again before the next upload");
                let pending = PendingAbort {
                    key: key.to_string(),
                    upload_id: upload_id.to_string(),
                };
                self.pending_aborts
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(pending);
            }
        }
    }

    fn try_abort(&self, key: &str, upload_id: &str) -> Result<(), StoreError> {
        self.retried(|| match self.bucket()?.abort_upload(key, upload_id) {
            Ok(()) => Ok(()),
            // Already gone (aborted or never completed): nothing is left to clean.
            Err(S3Error::HttpFailWithBody(404, _)) => Ok(()),
            Err(e) => Err(self.error("AbortMultipartUpload", key, e)),
        })
    }

    /// Retries the aborts that failed earlier (one attempt each).
    fn retry_pending_aborts(&self) {
        let pending = std::mem::take(
            &mut *self
                .pending_aborts
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        );
        for p in pending {
            self.abort(&p.key, &p.upload_id);
        }
    }

    /// How many failed aborts are waiting for another try.
    pub fn pending_aborts(&self) -> usize {
        self.pending_aborts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }
}

impl BlobStore for S3Store {
    fn describe(&self) -> String {
        let mut s = format!(
            "S3 bucket s3://{}/{}",
            self.settings.bucket, self.settings.prefix
        );
        match &self.settings.endpoint {
            Some(e) => s.push_str(&format!(" at {e} (region {})", self.settings.region)),
            None => s.push_str(&format!(" in {}", self.settings.region)),
        }
        s
    }

    fn put(&self, key: &str, src: &mut dyn Read, size: Option<u64>) -> Result<u64, StoreError> {
        self.retry_pending_aborts();
        let key = self.full_key(key);
        let threshold = self.settings.multipart_threshold;
        // One extra byte tells a source that ends exactly at the size from a longer one.
        let first_len = match size {
            Some(n) if n <= threshold => n + 1,
            _ => self.settings.part_size,
        };
        let mut buf = vec![0u8; first_len as usize];
        let filled = fill_buffer(src, &mut buf)?;
        if filled < buf.len() {
            self.put_single(&key, &buf[..filled])?;
            return Ok(filled as u64);
        }
        if (filled as u64) < MIN_PART_SIZE {
            // The size hint was too small: grow the first part to a legal size.
            buf.resize(self.settings.part_size as usize, 0);
            let more = fill_buffer(src, &mut buf[filled..])?;
            if filled + more < buf.len() {
                self.put_single(&key, &buf[..filled + more])?;
                return Ok((filled + more) as u64);
            }
            return self.put_multipart(&key, src, buf, filled + more);
        }
        self.put_multipart(&key, src, buf, filled)
    }

    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let key = self.full_key(key);
        self.retried(|| match self.bucket()?.get_object(&key) {
            Ok(response) => Ok(Some(response.to_vec())),
            Err(S3Error::HttpFailWithBody(404, body)) if !body.contains("NoSuchBucket") => Ok(None),
            Err(e) => Err(self.error("GET", &key, e)),
        })
    }

    fn delete(&self, key: &str) -> Result<(), StoreError> {
        let key = self.full_key(key);
        self.retried(|| match self.bucket()?.delete_object(&key) {
            Ok(_) => Ok(()),
            Err(S3Error::HttpFailWithBody(404, body)) if !body.contains("NoSuchBucket") => Ok(()),
            Err(e) => Err(self.error("DELETE", &key, e)),
        })
    }
}

/// The text of the first `<tag>` in an XML error document.
fn xml_tag(body: &str, tag: &str) -> Option<String> {
    let start = body.find(&format!("<{tag}>"))? + tag.len() + 2;
    let end = body[start..].find(&format!("</{tag}>"))? + start;
    Some(body[start..end].trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Env {
        Env::from_pairs(pairs.iter().copied())
    }

    #[test]
    fn required_settings_are_named() {
        let mut errors = Vec::new();
        assert!(S3Settings::from_env(&env(&[]), &mut errors).is_none());
        let vars: Vec<&str> = errors.iter().map(|e| e.var.as_str()).collect();
        assert_eq!(vars, ["SP_TASK_SYNC_S3_BUCKET", "SP_TASK_SYNC_S3_REGION"]);
    }

    #[test]
    fn settings_parse() {
        let mut errors = Vec::new();
        let s = S3Settings::from_env(
            &env(&[
                ("SP_TASK_SYNC_S3_BUCKET", "calls"),
                ("SP_TASK_SYNC_S3_REGION", "eu-central-1"),
                ("SP_TASK_SYNC_S3_ENDPOINT", "http://127.0.0.1:9000/"),
                ("SP_TASK_SYNC_SAVE_TO", "/spinoco/"),
                ("SP_TASK_SYNC_S3_MULTIPART_THRESHOLD", "32MiB"),
                ("SP_TASK_SYNC_S3_PART_SIZE", "5242880"),
                ("AWS_ACCESS_KEY_ID", "AKIDSECRETISH"),
                ("AWS_SECRET_ACCESS_KEY", "very-secret"),
            ]),
            &mut errors,
        )
        .unwrap();
        assert!(errors.is_empty());
        assert_eq!(s.endpoint.as_deref(), Some("http://127.0.0.1:9000"));
        assert_eq!(s.prefix, "spinoco");
        assert_eq!((s.multipart_threshold, s.part_size), (32 * MIB, 5 * MIB));
        let shown = format!("{s:?} {:?}", s.describe());
        assert!(
            !shown.contains("very-secret") && !shown.contains("AKIDSECRETISH"),
            "{shown}"
        );
    }

    #[test]
    fn bad_values_are_reported_and_masked() {
        let mut errors = Vec::new();
        let e = env(&[
            ("SP_TASK_SYNC_S3_BUCKET", "a bucket"),
            ("SP_TASK_SYNC_S3_REGION", "eu-central-1"),
            ("SP_TASK_SYNC_S3_ENDPOINT", "https://user:pw@minio.local"),
            ("SP_TASK_SYNC_S3_PART_SIZE", "1MiB"),
            ("SP_TASK_SYNC_S3_MULTIPART_THRESHOLD", "lots"),
        ]);
        assert!(S3Settings::from_env(&e, &mut errors).is_none());
        let vars: Vec<&str> = errors.iter().map(|e| e.var.as_str()).collect();
        assert_eq!(
            vars,
            [
                "SP_TASK_SYNC_S3_BUCKET",
                "SP_TASK_SYNC_S3_ENDPOINT",
                "SP_TASK_SYNC_S3_MULTIPART_THRESHOLD",
                "SP_TASK_SYNC_S3_PART_SIZE"
            ]
        );
        assert!(!format!("{errors:?}").contains("pw@"));
    }

    #[test]
    fn error_documents_are_reduced() {
        let body = "<?xml version=\"1.0\"?><Error><Code>SignatureDoesNotMatch</Code><Message>The request \
                    signature we calculated does not match</Message><SignatureProvided>abcdef0123</SignatureProvided></Error>";
        assert_eq!(
            xml_tag(body, "Code").as_deref(),
            Some("SignatureDoesNotMatch")
        );
        let mut errors = Vec::new();
        let settings = S3Settings::from_env(
            &env(&[
                ("SP_TASK_SYNC_S3_BUCKET", "b"),
                ("SP_TASK_SYNC_S3_REGION", "us-east-1"),
                ("AWS_ACCESS_KEY_ID", "a"),
                ("AWS_SECRET_ACCESS_KEY", "s"),
            ]),
            &mut errors,
        )
        .unwrap();
        let store =
            S3Store::open(&settings, &crate::http::agent(Duration::from_secs(1), 1)).unwrap();
        let err = store.error("PUT", "k", S3Error::HttpFailWithBody(403, body.to_string()));
        assert_eq!(err.kind, StoreErrorKind::Denied);
        assert!(
            err.message.contains("SignatureDoesNotMatch") && !err.message.contains("abcdef0123"),
            "{err}"
        );
        let err = store.error(
            "PUT",
            "k",
            S3Error::HttpFailWithBody(503, "<Code>SlowDown</Code>".into()),
        );
        assert_eq!(err.kind, StoreErrorKind::Transient);
        let err = store.error(
            "PUT",
            "k",
            S3Error::HttpFailWithBody(404, "<Code>NoSuchBucket</Code>".into()),
        );
        assert_eq!(
            err.kind,
            StoreErrorKind::Denied,
            "a missing bucket stops the connector"
        );
        let err = store.error(
            "PUT",
            "k",
            S3Error::HttpFailWithBody(400, "<Code>InvalidArgument</Code>".into()),
        );
        assert_eq!(err.kind, StoreErrorKind::Rejected);
    }
}
