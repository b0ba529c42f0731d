//! Google Cloud Storage through its JSON API, on the shared ureq agent.
//!
//! A hand-written client for the four calls the connector needs, instead of an async
//! SDK: simple media upload (`uploadType=media`) for objects that fit in one chunk,
//! resumable upload (`uploadType=resumable`) for larger ones, `alt=media` reads and
//! deletes. Credentials live in [`super::gcs_auth`].
//!
//! A resumable upload streams `src` one chunk at a time (a multiple of 256 KiB, 8 MiB
//! by default, `SP_TASK_SYNC_GCS_CHUNK_SIZE`), so memory stays at one chunk. One byte is read ahead after a full chunk
//! to know whether it is the last one; only the last chunk carries the total size, and
//! the object becomes visible only when that chunk is accepted. If `src` fails, the
//! session is cancelled and nothing is visible.
//!
//! Resuming after a transient failure: the chunk in flight is still in memory, so the
//! same chunk (from its first byte the server has not confirmed) is sent again with its
//! `Content-Range`. The server's `308` answer carries `Range: bytes=0-N`, its committed
//! offset; whatever of the chunk is still missing is then sent from there. This is the
//! status query of Google's protocol folded into the resend. We do not send the empty
//! status-check PUT (`Content-Range: bytes */*`) because fake-gcs-server, the emulator
//! the tests run against, finalises the upload on it and would publish a truncated
//! object; real GCS ignores resent bytes below its committed offset, so the resend is
//! safe there. Should the session report fewer bytes than the chunk's start (data
//! acknowledged earlier was lost) or be gone (404/410), the put fails as `Transient`
//! and the caller starts over. (fake-gcs appends a resent body without checking its
//! offset, so there a chunk whose answer alone was lost would be stored twice; real
//! GCS does not do that.)

use std::io::Read;
use std::thread::sleep;
use std::time::Duration;

use super::gcs_auth::{Credentials, TokenSource};
use super::{
    content_type, fill_buffer, prefixed, BlobStore, FirstPart, StoreError, StoreErrorKind,
};
use crate::encoding::percent_encode;
use crate::env::{ConfigError, Env};
use crate::retry::{with_retries, Backoff, Reason, RetryBudget, Side, Step};

pub const DEFAULT_ENDPOINT: &str = "https://storage.googleapis.com";
/// Resumable chunks (except the last) must be a multiple of this.
pub const CHUNK_GRANULARITY: usize = 256 * 1024;
pub const DEFAULT_CHUNK_SIZE: usize = 8 * 1024 * 1024;
/// The largest `SP_TASK_SYNC_GCS_CHUNK_SIZE` accepted (one chunk is held in memory).
pub const MAX_CHUNK_SIZE: usize = 1024 * 1024 * 1024;
/// Attempts per request inside the store; the engine retries whole puts beyond that.
pub const DEFAULT_ATTEMPTS: u32 = 4;
/// The largest object `get` reads (it is meant for the journal).
const MAX_GET: u64 = 1 << 30;

/// The checked `SP_TASK_SYNC_GCS_*` settings.
#[derive(Debug, Clone)]
pub struct GcsSettings {
    pub bucket: String,
    /// Sent as `userProject` (billed for requester-pays buckets).
    pub project: String,
    /// `SP_TASK_SYNC_SAVE_TO`: the object name prefix.
    pub prefix: String,
    /// Base URL without a trailing slash.
    pub endpoint: String,
    pub credentials: Credentials,
    /// Resumable chunk size; a multiple of [`CHUNK_GRANULARITY`].
    pub chunk_size: usize,
    /// Attempts per request (the shared [`Backoff`] between them).
    pub attempts: u32,
}

impl GcsSettings {
    /// Reads the settings; every mistake is pushed to `errors`. Reads local files (the
    /// credentials), never the network.
    pub fn from_env(env: &Env, errors: &mut Vec<ConfigError>) -> Option<GcsSettings> {
        let before = errors.len();
        let bucket = env
            .get("SP_TASK_SYNC_GCS_BUCKET")
            .unwrap_or_default()
            .to_string();
        if bucket.is_empty() {
            errors.push(ConfigError::new(
                "SP_TASK_SYNC_GCS_BUCKET",
                None,
                "is required for gcs storage",
            ));
        } else if !valid_bucket(&bucket) {
            errors.push(ConfigError::new(
                "SP_TASK_SYNC_GCS_BUCKET",
                Some(&bucket),
                "is not a bucket name: 3 to 222 characters of a-z, 0-9, '-', '_' and '.', \
                 starting and ending with a letter or digit",
            ));
        }
        let project = env
            .get("SP_TASK_SYNC_GCS_PROJECT")
            .unwrap_or_default()
            .to_string();
        if project.is_empty() {
            errors.push(ConfigError::new(
                "SP_TASK_SYNC_GCS_PROJECT",
                None,
                "is required for gcs storage: the project billed for requests (userProject)",
            ));
        }
        let (endpoint_var, raw_endpoint) = match (
            env.get("SP_TASK_SYNC_GCS_ENDPOINT"),
            env.get("STORAGE_EMULATOR_HOST"),
        ) {
            (Some(e), _) => ("SP_TASK_SYNC_GCS_ENDPOINT", Some(e)),
            (None, Some(e)) => ("STORAGE_EMULATOR_HOST", Some(e)),
            (None, None) => ("", None),
        };
        let emulator = raw_endpoint.is_some();
        let endpoint = match raw_endpoint {
            None => DEFAULT_ENDPOINT.to_string(),
            Some(raw) => {
                // Google's libraries take STORAGE_EMULATOR_HOST as host:port, plain HTTP.
                let url = if raw.contains("://") {
                    raw.to_string()
                } else {
                    format!("http://{raw}")
                };
                let url = url.trim_end_matches('/').to_string();
                let rest = url
                    .strip_prefix("http://")
                    .or_else(|| url.strip_prefix("https://"));
                if rest.is_none_or(|r| r.is_empty() || r.contains(['?', '#', '@', ' '])) {
                    errors.push(ConfigError::new(
                        endpoint_var,
                        Some(raw),
                        "must be http(s)://host[:port] or host:port",
                    ));
                }
                url
            }
        };
        let chunk_var = "SP_TASK_SYNC_GCS_CHUNK_SIZE";
        let chunk_size = match env.get(chunk_var) {
            None => DEFAULT_CHUNK_SIZE,
            Some(raw) => match crate::env::parse_size(raw) {
                Some(n)
                    if n > 0 && n % CHUNK_GRANULARITY as u64 == 0 && n <= MAX_CHUNK_SIZE as u64 =>
                {
                    n as usize
                }
                _ => {
                    errors.push(ConfigError::new(
                        chunk_var,
                        Some(raw),
                        "must be a multiple of 256KiB up to 1GiB (e.g. 8MiB): GCS takes \
                         resumable chunks only in such sizes",
                    ));
                    DEFAULT_CHUNK_SIZE
                }
            },
        };
        let credentials = match Credentials::discover(env, emulator) {
            Ok(c) => c,
            Err(e) => {
                errors.push(e);
                Credentials::Anonymous
            }
        };
        (errors.len() == before).then(|| GcsSettings {
            bucket,
            project,
            prefix: env
                .get("SP_TASK_SYNC_SAVE_TO")
                .unwrap_or_default()
                .trim_matches('/')
                .to_string(),
            endpoint,
            credentials,
            chunk_size,
            attempts: DEFAULT_ATTEMPTS,
        })
    }

    /// `name = value` lines for `check` (no secrets: credentials are described).
    pub fn describe(&self) -> Vec<(&'static str, String)> {
        vec![
            ("SP_TASK_SYNC_GCS_BUCKET", self.bucket.clone()),
            ("SP_TASK_SYNC_GCS_PROJECT", self.project.clone()),
            (
                "SP_TASK_SYNC_SAVE_TO",
                if self.prefix.is_empty() {
                    "-".into()
                } else {
                    self.prefix.clone()
                },
            ),
            ("SP_TASK_SYNC_GCS_ENDPOINT", self.endpoint.clone()),
            ("GCS credentials", self.credentials.describe()),
        ]
    }
}

/// Bucket naming rules, loosely: lowercase letters, digits, `-`, `_`, `.`.
fn valid_bucket(name: &str) -> bool {
    let bytes = name.as_bytes();
    (3..=222).contains(&bytes.len())
        && bytes.iter().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.')
        })
        && bytes[0].is_ascii_alphanumeric()
        && bytes[bytes.len() - 1].is_ascii_alphanumeric()
}

pub struct GcsStore {
    agent: ureq::Agent,
    settings: GcsSettings,
    tokens: TokenSource,
}

/// What a request brought back (the body read whole: GCS answers are small, and
/// `get` is for small objects).
struct Answer {
    status: u16,
    location: Option<String>,
    range: Option<String>,
    retry_after: Option<Duration>,
    body: Vec<u8>,
}

impl GcsStore {
    pub fn open(settings: &GcsSettings, agent: &ureq::Agent) -> Result<GcsStore, StoreError> {
        if settings.chunk_size == 0 || settings.chunk_size % CHUNK_GRANULARITY != 0 {
            return Err(StoreError::new(
                StoreErrorKind::Rejected,
                format!(
                    "the GCS chunk size {} is not a multiple of 256 KiB",
                    settings.chunk_size
                ),
            ));
        }
        Ok(GcsStore {
            agent: agent.clone(),
            settings: settings.clone(),
            tokens: TokenSource::new(settings.credentials.clone()),
        })
    }

    fn object_name(&self, key: &str) -> String {
        prefixed(&self.settings.prefix, key)
    }

    /// `gs://bucket/name`, for messages.
    fn gs(&self, name: &str) -> String {
        format!("gs://{}/{name}", self.settings.bucket)
    }

    fn object_url(&self, name: &str) -> String {
        format!(
            "{}/storage/v1/b/{}/o/{}?userProject={}",
            self.settings.endpoint,
            self.settings.bucket,
            percent_encode(name, false),
            percent_encode(&self.settings.project, false)
        )
    }

    fn upload_url(&self, name: &str, upload_type: &str) -> String {
        format!(
            "{}/upload/storage/v1/b/{}/o?uploadType={upload_type}&name={}&userProject={}",
            self.settings.endpoint,
            self.settings.bucket,
            percent_encode(name, false),
            percent_encode(&self.settings.project, false)
        )
    }

    /// One HTTP exchange with the current token. Network trouble is `Transient`.
    fn once(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Result<Answer, StoreError> {
        let mut request = ureq::http::Request::builder().method(method).uri(url);
        if let Some(auth) = self.tokens.authorization(&self.agent)? {
            request = request.header("authorization", auth);
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let bad = |e: ureq::http::Error| {
            StoreError::new(
                StoreErrorKind::Rejected,
                format!("cannot build the request: {e}"),
            )
        };
        let sent = match body {
            Some(bytes) => self.agent.run(request.body(bytes).map_err(bad)?),
            None => self.agent.run(request.body(()).map_err(bad)?),
        };
        let mut response = sent.map_err(|e| super::transport_error(url, &e))?;
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let (location, range) = (header("location"), header("range"));
        let retry_after = crate::http::retry_after(&response);
        let status = response.status().as_u16();
        let body = response
            .body_mut()
            .with_config()
            .limit(MAX_GET)
            .read_to_vec()
            .map_err(|e| StoreError::transient(format!("reading the answer: {e}")))?;
        Ok(Answer {
            status,
            location,
            range,
            retry_after,
            body,
        })
    }

    /// A request with the shared back-off between attempts: network errors, 408, 429
    /// and 5xx are tried again (at most `attempts` times in all); any other answer is
    /// returned for the caller to judge. `what` names the operation for messages.
    fn call(
        &self,
        what: &str,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Result<Answer, StoreError> {
        let attempts = RetryBudget::tries(self.settings.attempts.max(1));
        with_retries(attempts, Side::Storage, what, || {
            match self.once(method, url, headers, body) {
                Ok(answer) if !matches!(answer.status, 408 | 429 | 500..=599) => Step::Done(answer),
                Ok(answer) => Step::Retry {
                    error: self.status_error(what, &answer),
                    reason: Reason::of_status(answer.status),
                    after: answer.retry_after,
                },
                Err(e) if e.kind == StoreErrorKind::Transient => Step::Retry {
                    error: StoreError::transient(format!("{what} failed: {}", e.message)),
                    reason: Reason::Transport,
                    after: None,
                },
                Err(e) => Step::Fail(StoreError::new(e.kind, format!("{what}: {}", e.message))),
            }
        })
        .map_err(|e| e.error)
    }

    /// The error for an answer the caller did not expect.
    fn status_error(&self, what: &str, answer: &Answer) -> StoreError {
        let kind = match answer.status {
            401 | 403 => StoreErrorKind::Denied,
            408 | 429 | 500..=599 => StoreErrorKind::Transient,
            _ => StoreErrorKind::Rejected,
        };
        let message = serde_json::from_slice::<serde_json::Value>(&answer.body)
            .ok()
            .and_then(|v| {
                v["error"]["message"]
                    .as_str()
                    .map(|m| m.chars().take(300).collect::<String>())
            })
            .unwrap_or_default();
        StoreError::new(
            kind,
            format!("{what}: HTTP {} {message}", answer.status)
                .trim_end()
                .to_string(),
        )
    }

    fn put_media(&self, name: &str, data: &[u8]) -> Result<(), StoreError> {
        let what = format!("GCS upload of {}", self.gs(name));
        let url = self.upload_url(name, "media");
        let answer = self.call(
            &what,
            "POST",
            &url,
            &[("content-type", content_type(name))],
            Some(data),
        )?;
        match answer.status {
            200 | 201 => Ok(()),
            _ => Err(self.status_error(&what, &answer)),
        }
    }

    /// Streams `first` (one full chunk) and the rest of `src` through a resumable
    /// session; returns the number of bytes stored.
    fn put_resumable(
        &self,
        name: &str,
        mut chunk: Vec<u8>,
        src: &mut dyn Read,
    ) -> Result<u64, StoreError> {
        let what = format!("GCS resumable upload of {}", self.gs(name));
        let url = self.upload_url(name, "resumable");
        let headers = [
            ("content-type", "application/json"),
            ("x-upload-content-type", content_type(name)),
        ];
        let answer = self.call(&what, "POST", &url, &headers, Some(b"{}"))?;
        let session = match (answer.status, &answer.location) {
            (200 | 201, Some(location)) => location.clone(),
            (200 | 201, None) => {
                return Err(StoreError::transient(format!(
                    "{what}: the server gave no session (Location)"
                )))
            }
            _ => return Err(self.status_error(&what, &answer)),
        };
        let result = self.send_chunks(&what, &session, &mut chunk, src);
        if result.is_err() {
            // Best effort: an unfinished session is never visible and expires anyway.
            let _ = self.once("DELETE", &session, &[], None);
        }
        result
    }

    fn send_chunks(
        &self,
        what: &str,
        session: &str,
        buf: &mut [u8],
        src: &mut dyn Read,
    ) -> Result<u64, StoreError> {
        let mut start = 0u64;
        let mut len = buf.len();
        loop {
            let mut next = [0u8; 1];
            let more = len == buf.len() && fill_buffer(src, &mut next)? == 1;
            self.send_chunk(what, session, &buf[..len], start, !more)?;
            if !more {
                return Ok(start + len as u64);
            }
            start += len as u64;
            buf[0] = next[0];
            len = 1 + fill_buffer(src, &mut buf[1..])?;
        }
    }

    /// Sends `data`, the chunk at offset `start`, until the server has all of it,
    /// resending what it did not confirm (see the module comment).
    fn send_chunk(
        &self,
        what: &str,
        session: &str,
        data: &[u8],
        start: u64,
        last: bool,
    ) -> Result<(), StoreError> {
        let end = start + data.len() as u64;
        let total = if last {
            end.to_string()
        } else {
            "*".to_string()
        };
        let mut from = start;
        let mut backoff = Backoff::new();
        let mut stalls = 0;
        loop {
            let part = &data[(from - start) as usize..];
            let range = if part.is_empty() {
                format!("bytes */{total}")
            } else {
                format!("bytes {from}-{}/{total}", end - 1)
            };
            let answer = self.call(
                what,
                "PUT",
                session,
                &[("content-range", &range)],
                Some(part),
            )?;
            match answer.status {
                200 | 201 if last => return Ok(()),
                200 | 201 => {
                    return Err(StoreError::transient(format!(
                    "{what}: the server finished the upload at byte {end}, before the source's end"
                )))
                }
                308 => {
                    let committed = committed_offset(answer.range.as_deref());
                    if committed < start || committed > end {
                        return Err(StoreError::transient(format!(
                            "{what}: the server holds {committed} bytes where {start} to {end} were expected; \
                             the upload must start over"
                        )));
                    }
                    if committed == end && !last {
                        return Ok(());
                    }
                    if committed <= from {
                        stalls += 1;
                        if stalls >= self.settings.attempts.max(1) {
                            return Err(StoreError::transient(format!(
                                "{what}: the server keeps confirming only {committed} bytes"
                            )));
                        }
                        sleep(backoff.next_delay(None));
                    }
                    from = committed;
                }
                404 | 410 => {
                    return Err(StoreError::transient(format!(
                        "{what}: the upload session is gone (HTTP {}); the upload must start over",
                        answer.status
                    )))
                }
                _ => return Err(self.status_error(what, &answer)),
            }
        }
    }
}

impl BlobStore for GcsStore {
    fn describe(&self) -> String {
        let s = &self.settings;
        let at = if s.endpoint == DEFAULT_ENDPOINT {
            String::new()
        } else {
            format!(" at {}", s.endpoint)
        };
        format!(
            "Google Cloud Storage {}{at} (project {}, credentials: {})",
            self.gs(&s.prefix),
            s.project,
            s.credentials.describe()
        )
    }

    fn put(&self, key: &str, src: &mut dyn Read, size: Option<u64>) -> Result<u64, StoreError> {
        let name = self.object_name(key);
        let chunk = self.settings.chunk_size;
        let first = FirstPart::read(src, size, chunk)?;
        if first.is_whole() {
            self.put_media(&name, first.bytes())?;
            return Ok(first.len as u64);
        }
        let buf = first.buf;
        self.put_resumable(&name, buf, src)
    }

    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let name = self.object_name(key);
        let what = format!("GCS read of {}", self.gs(&name));
        let url = format!("{}&alt=media", self.object_url(&name));
        let answer = self.call(&what, "GET", &url, &[], None)?;
        match answer.status {
            200 => Ok(Some(answer.body)),
            404 => Ok(None),
            _ => Err(self.status_error(&what, &answer)),
        }
    }

    fn delete(&self, key: &str) -> Result<(), StoreError> {
        let name = self.object_name(key);
        let what = format!("GCS delete of {}", self.gs(&name));
        let answer = self.call(&what, "DELETE", &self.object_url(&name), &[], None)?;
        match answer.status {
            200 | 204 | 404 => Ok(()),
            _ => Err(self.status_error(&what, &answer)),
        }
    }
}

/// The session's committed length from a 308's `Range: bytes=0-N` (none: nothing yet).
fn committed_offset(range: Option<&str>) -> u64 {
    range
        .and_then(|r| r.trim().strip_prefix("bytes=0-"))
        .and_then(|n| n.trim().parse::<u64>().ok())
        .map_or(0, |n| n + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Env {
        Env::from_pairs(pairs.iter().copied())
    }

    #[test]
    fn chunk_size_can_be_set_and_is_checked() {
        let with = |size: &str| {
            let mut errors = Vec::new();
            let s = GcsSettings::from_env(
                &env(&[
                    ("SP_TASK_SYNC_GCS_BUCKET", "my-bucket"),
                    ("SP_TASK_SYNC_GCS_PROJECT", "p"),
                    ("STORAGE_EMULATOR_HOST", "localhost:4443"),
                    ("SP_TASK_SYNC_GCS_CHUNK_SIZE", size),
                ]),
                &mut errors,
            );
            (s.map(|s| s.chunk_size), errors)
        };
        assert_eq!(with("256K").0, Some(256 * 1024));
        assert_eq!(with("16MiB").0, Some(16 << 20));
        for bad in ["100K", "0", "2G", "big"] {
            let (s, errors) = with(bad);
            assert!(s.is_none(), "{bad}");
            assert_eq!(errors[0].var, "SP_TASK_SYNC_GCS_CHUNK_SIZE", "{bad}");
        }
    }

    #[test]
    fn settings_are_checked() {
        let mut errors = Vec::new();
        let s = GcsSettings::from_env(
            &env(&[
                ("SP_TASK_SYNC_GCS_BUCKET", "my-bucket"),
                ("SP_TASK_SYNC_GCS_PROJECT", "proj-1"),
                ("SP_TASK_SYNC_SAVE_TO", "/calls/"),
                ("STORAGE_EMULATOR_HOST", "localhost:4443"),
            ]),
            &mut errors,
        )
        .unwrap();
        assert!(errors.is_empty());
        assert_eq!(s.endpoint, "http://localhost:4443");
        assert_eq!(s.prefix, "calls");
        assert!(matches!(s.credentials, Credentials::Anonymous));

        let s = GcsSettings::from_env(
            &env(&[
                ("SP_TASK_SYNC_GCS_BUCKET", "b.example"),
                ("SP_TASK_SYNC_GCS_PROJECT", "p"),
                ("HOME", "/nonexistent"),
            ]),
            &mut errors,
        )
        .unwrap();
        assert_eq!(s.endpoint, DEFAULT_ENDPOINT);
        assert!(matches!(s.credentials, Credentials::Metadata { .. }));

        let mut errors = Vec::new();
        let s = GcsSettings::from_env(
            &env(&[
                ("SP_TASK_SYNC_GCS_BUCKET", "Bad_Bucket!"),
                ("SP_TASK_SYNC_GCS_ENDPOINT", "ftp://x"),
            ]),
            &mut errors,
        );
        assert!(s.is_none());
        let vars: Vec<&str> = errors.iter().map(|e| e.var.as_str()).collect();
        assert_eq!(
            vars,
            [
                "SP_TASK_SYNC_GCS_BUCKET",
                "SP_TASK_SYNC_GCS_PROJECT",
                "SP_TASK_SYNC_GCS_ENDPOINT"
            ]
        );
        assert_eq!(errors[0].value.as_deref(), Some("Bad_Bucket!"));
    }

    #[test]
    fn range_header_gives_committed_offset() {
        assert_eq!(committed_offset(None), 0);
        assert_eq!(committed_offset(Some("bytes=0-262143")), 262_144);
        assert_eq!(committed_offset(Some("garbage")), 0);
    }

    #[test]
    fn bucket_names() {
        assert!(valid_bucket("abc") && valid_bucket("a.b-c_d1"));
        assert!(
            !valid_bucket("ab")
                && !valid_bucket("-ab")
                && !valid_bucket("ABC")
                && !valid_bucket("a/b")
        );
    }
}
