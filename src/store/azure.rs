//! Azure Blob Storage through a small hand-written REST client.
//!
//! Small objects go up in one Put Blob. Larger ones (above one block: 8 MiB, or
//! `SP_TASK_SYNC_AZURE_BLOCK_SIZE`) are streamed as Put Block calls
//! from one reusable block buffer and become a blob only with the final Put Block
//! List: uncommitted blocks are never visible, so an upload that fails earlier leaves
//! nothing new behind and an older blob under the same name untouched (Azure drops
//! uncommitted blocks after a week). Each request is retried under the shared policy
//! ([`crate::retry::with_retries`]) a bounded number of times; a refused key or SAS is a
//! `Denied` error at once.

use std::io::Read;

use ureq::http::Response;
use ureq::Body;

use super::azure_auth::{self, AzureAccount, Credential};
use super::{
    content_type, fill_buffer, prefixed, BlobStore, FirstPart, StoreError, StoreErrorKind,
};
use crate::env::{ConfigError, Env, Secret};
use crate::retry::{with_retries, Reason, RetryBudget, Rng, Side, Step};

/// The REST API version every request names.
pub const API_VERSION: &str = "2021-08-06";
/// The block size of large uploads: also the one buffer a `put` holds.
pub const DEFAULT_BLOCK_SIZE: usize = 8 * 1024 * 1024;
/// Bounds of `SP_TASK_SYNC_AZURE_BLOCK_SIZE` (one block is held in memory).
pub const MIN_BLOCK_SIZE: usize = 64 * 1024;
pub const MAX_BLOCK_SIZE: usize = 1024 * 1024 * 1024;
/// A blob is committed from at most this many blocks.
const MAX_BLOCKS: usize = 50_000;
/// Attempts per request before a transient failure is handed to the caller.
pub const DEFAULT_ATTEMPTS: RetryBudget = RetryBudget::tries(5);
/// Longest blob name the service accepts.
const MAX_NAME_LEN: usize = 1024;

/// The checked settings of the azure provider.
#[derive(Debug, Clone)]
pub struct AzureSettings {
    pub account: AzureAccount,
    /// SP_TASK_SYNC_AZURE_CLIENT_NAME: the container.
    pub container: String,
    /// SP_TASK_SYNC_SAVE_TO: prepended to every blob name (may be empty).
    pub prefix: String,
    pub block_size: usize,
}

impl AzureSettings {
    /// Reads SP_TASK_SYNC_AZURE_DSN, SP_TASK_SYNC_AZURE_CLIENT_NAME and
    /// SP_TASK_SYNC_SAVE_TO; every mistake is pushed to `errors`.
    pub fn from_env(env: &Env, errors: &mut Vec<ConfigError>) -> Option<AzureSettings> {
        let dsn_var = "SP_TASK_SYNC_AZURE_DSN";
        let account = match env.get(dsn_var) {
            None => {
                errors.push(ConfigError::new(
                    dsn_var,
                    None,
                    "is required for azure storage: the storage account connection string",
                ));
                None
            }
            Some(dsn) => match azure_auth::parse_connection_string(dsn) {
                Ok(a) => Some(a),
                Err(problem) => {
                    errors.push(ConfigError::new(
                        dsn_var,
                        Some(&Secret::new(dsn).to_string()),
                        problem,
                    ));
                    None
                }
            },
        };
        let container_var = "SP_TASK_SYNC_AZURE_CLIENT_NAME";
        let container = match env.get(container_var) {
            None => {
                errors.push(ConfigError::new(
                    container_var,
                    None,
                    "is required for azure storage: the container",
                ));
                None
            }
            Some(c) if !valid_container_name(c) => {
                errors.push(ConfigError::new(
                    container_var,
                    Some(c),
                    "is not a container name: 3 to 63 lowercase letters, digits and single hyphens, \
                     starting and ending with a letter or digit",
                ));
                None
            }
            Some(c) => Some(c.to_string()),
        };
        let prefix = env
            .get("SP_TASK_SYNC_SAVE_TO")
            .unwrap_or("")
            .trim_matches('/')
            .to_string();
        let block_var = "SP_TASK_SYNC_AZURE_BLOCK_SIZE";
        let block_size = match env.get(block_var) {
            None => Some(DEFAULT_BLOCK_SIZE),
            Some(raw) => match crate::env::parse_size(raw) {
                Some(n) if (MIN_BLOCK_SIZE as u64..=MAX_BLOCK_SIZE as u64).contains(&n) => {
                    Some(n as usize)
                }
                _ => {
                    errors.push(ConfigError::new(
                        block_var,
                        Some(raw),
                        "must be a size from 64KiB to 1GiB (e.g. 8MiB), in bytes or with K, M, G",
                    ));
                    None
                }
            },
        };
        Some(AzureSettings {
            account: account?,
            container: container?,
            prefix,
            block_size: block_size?,
        })
    }

    /// Lines for `check`: the connection string itself is never shown.
    pub fn describe(&self) -> Vec<(&'static str, String)> {
        vec![
            (
                "SP_TASK_SYNC_AZURE_DSN",
                format!("*** ({})", self.account.summary()),
            ),
            ("SP_TASK_SYNC_AZURE_CLIENT_NAME", self.container.clone()),
            (
                "SP_TASK_SYNC_SAVE_TO",
                if self.prefix.is_empty() {
                    "-".into()
                } else {
                    self.prefix.clone()
                },
            ),
        ]
    }
}

/// Azure's container naming rules.
pub fn valid_container_name(name: &str) -> bool {
    let b = name.as_bytes();
    (3..=63).contains(&b.len())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
        && !name.contains("--")
}

pub struct AzureStore {
    agent: ureq::Agent,
    settings: AzureSettings,
    attempts: RetryBudget,
}

/// One request before signing: the blob name is not yet encoded, query values not yet.
struct Request<'a> {
    method: &'static str,
    blob: Option<&'a str>,
    query: Vec<(&'static str, String)>,
    headers: Vec<(&'static str, String)>,
    body: &'a [u8],
}

impl<'a> Request<'a> {
    fn new(method: &'static str, blob: Option<&'a str>) -> Request<'a> {
        Request {
            method,
            blob,
            query: Vec::new(),
            headers: Vec::new(),
            body: &[],
        }
    }
}

impl AzureStore {
    pub fn new(settings: AzureSettings, agent: ureq::Agent) -> AzureStore {
        AzureStore {
            agent,
            settings,
            attempts: DEFAULT_ATTEMPTS,
        }
    }

    /// Changes how many attempts each request gets (default [`DEFAULT_ATTEMPTS`]).
    pub fn with_attempts(mut self, attempts: RetryBudget) -> AzureStore {
        self.attempts = attempts;
        self
    }

    /// Creates the container when it does not exist (for `check --connect` and the
    /// tests). Returns whether it was created.
    pub fn ensure_container(&self) -> Result<bool, StoreError> {
        let mut req = Request::new("PUT", None);
        req.query.push(("restype", "container".into()));
        let what = format!("creating container {}", self.where_());
        let (status, code, _) = self.execute(&req, &what)?;
        match (status, code.as_str()) {
            (201, _) => Ok(true),
            (409, "ContainerAlreadyExists") => Ok(false),
            _ => Err(self.status_error(status, &code, &what)),
        }
    }

    fn where_(&self) -> String {
        match &self.settings.account.account {
            Some(a) => format!("{} in account {a}", self.settings.container),
            None => format!(
                "{} at {}",
                self.settings.container, self.settings.account.endpoint
            ),
        }
    }

    fn blob_name(&self, key: &str) -> Result<String, StoreError> {
        let name = prefixed(&self.settings.prefix, key);
        if key.is_empty() || name.len() > MAX_NAME_LEN || name.ends_with('/') {
            return Err(StoreError::new(
                StoreErrorKind::Rejected,
                format!("{name:?} is not a usable blob name (empty, ends in '/' or over {MAX_NAME_LEN} bytes)"),
            ));
        }
        Ok(name)
    }

    /// Sends `req` once: builds the URL, adds date and version, signs or appends the SAS.
    fn send_once(&self, req: &Request) -> Result<Response<Body>, ureq::Error> {
        let account = &self.settings.account;
        let mut path = format!("{}/{}", account.endpoint_path(), self.settings.container);
        if let Some(blob) = req.blob {
            path.push('/');
            path.push_str(&azure_auth::encode_path(blob));
        }
        let mut query: Vec<String> = req
            .query
            .iter()
            .map(|(n, v)| format!("{n}={}", azure_auth::encode_query_value(v)))
            .collect();
        if let Credential::Sas(token) = &account.credential {
            query.push(token.expose().to_string());
        }
        let base = account
            .endpoint
            .strip_suffix(account.endpoint_path())
            .unwrap_or(&account.endpoint);
        let url = if query.is_empty() {
            format!("{base}{path}")
        } else {
            format!("{base}{path}?{}", query.join("&"))
        };

        let mut headers: Vec<(&str, String)> = vec![
            ("x-ms-date", http_date()),
            ("x-ms-version", API_VERSION.into()),
        ];
        headers.extend(req.headers.iter().cloned());
        if let Credential::SharedKey(key) = &account.credential {
            let mut signed: Vec<(&str, &str)> =
                headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
            let length = req.body.len().to_string();
            if req.method == "PUT" {
                signed.push(("Content-Length", &length));
            }
            let query: Vec<(&str, &str)> =
                req.query.iter().map(|(n, v)| (*n, v.as_str())).collect();
            let name = account.account.as_deref().unwrap_or_default();
            let to_sign = azure_auth::string_to_sign(req.method, &signed, name, &path, &query);
            let signature = azure_auth::sign(key, &to_sign);
            headers.push(("Authorization", format!("SharedKey {name}:{signature}")));
        }

        match req.method {
            "PUT" => {
                let mut builder = self.agent.put(&url);
                for (n, v) in &headers {
                    builder = builder.header(*n, v);
                }
                builder.send(req.body)
            }
            "GET" | "DELETE" => {
                let mut builder = if req.method == "GET" {
                    self.agent.get(&url)
                } else {
                    self.agent.delete(&url)
                };
                for (n, v) in &headers {
                    builder = builder.header(*n, v);
                }
                builder.call()
            }
            other => unreachable!("no {other} requests are made"),
        }
    }

    /// Sends with retries. Returns the status, the `x-ms-error-code` (or "") and the
    /// response of the first answer that is not worth retrying; a refused credential
    /// is a `Denied` error straight away.
    fn execute(
        &self,
        req: &Request,
        what: &str,
    ) -> Result<(u16, String, Response<Body>), StoreError> {
        let outcome = with_retries(self.attempts, Side::Storage, what, || {
            match self.send_once(req) {
                Ok(mut response) => {
                    let status = response.status().as_u16();
                    let code = response
                        .headers()
                        .get("x-ms-error-code")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_string();
                    if !retryable(status) {
                        if status == 401 || status == 403 {
                            drain(&mut response);
                            return Step::Fail(self.status_error(status, &code, what));
                        }
                        return Step::Done((status, code, response));
                    }
                    let wait = crate::http::retry_after(&response);
                    drain(&mut response);
                    Step::Retry {
                        error: StoreError::transient(format!("{what}: HTTP {status} {code}")),
                        reason: Reason::of_status(status),
                        after: wait,
                    }
                }
                Err(e) => {
                    let failure = super::transport_error(&self.settings.account.endpoint, &e);
                    let failure = StoreError::new(
                        failure.kind,
                        format!("{what}: {}", self.scrub(&failure.message)),
                    );
                    match failure.kind {
                        StoreErrorKind::Denied => Step::Fail(failure),
                        _ => Step::Retry {
                            error: failure,
                            reason: Reason::Transport,
                            after: None,
                        },
                    }
                }
            }
        });
        outcome.map_err(|e| match e.tries {
            Some(n) => StoreError::transient(format!("{} (after {n} attempts)", e.error)),
            None => e.error,
        })
    }

    /// Removes the SAS from a message, should a network error quote the URL.
    fn scrub(&self, message: &str) -> String {
        match &self.settings.account.credential {
            Credential::Sas(token) if !token.expose().is_empty() => {
                message.replace(token.expose(), "***")
            }
            _ => message.to_string(),
        }
    }

    fn status_error(&self, status: u16, code: &str, what: &str) -> StoreError {
        let code = if code.is_empty() {
            String::new()
        } else {
            format!(" {code}")
        };
        match status {
            401 | 403 => StoreError::new(
                StoreErrorKind::Denied,
                format!("{what}: the storage account key or SAS was refused (HTTP {status}{code})"),
            ),
            // Every object would fail the same way: stop the process like a refusal.
            404 if code.trim() == "ContainerNotFound" => StoreError::new(
                StoreErrorKind::Denied,
                format!(
                    "{what}: container {} does not exist (HTTP 404 ContainerNotFound)",
                    self.where_()
                ),
            ),
            s if retryable(s) => StoreError::transient(format!("{what}: HTTP {s}{code}")),
            s => StoreError::new(StoreErrorKind::Rejected, format!("{what}: HTTP {s}{code}")),
        }
    }

    fn put_blob(&self, name: &str, bytes: &[u8]) -> Result<(), StoreError> {
        let mut req = Request::new("PUT", Some(name));
        req.headers.push(("x-ms-blob-type", "BlockBlob".into()));
        req.headers
            .push(("Content-Type", content_type(name).into()));
        req.body = bytes;
        let what = format!("uploading blob {name} to container {}", self.where_());
        let (status, code, _) = self.execute(&req, &what)?;
        match status {
            201 => Ok(()),
            _ => Err(self.status_error(status, &code, &what)),
        }
    }

    fn put_block(
        &self,
        name: &str,
        id: &str,
        bytes: &[u8],
        index: usize,
    ) -> Result<(), StoreError> {
        let mut req = Request::new("PUT", Some(name));
        req.query.push(("comp", "block".into()));
        req.query.push(("blockid", id.into()));
        req.body = bytes;
        let what = format!(
            "uploading block {index} of blob {name} to container {}",
            self.where_()
        );
        let (status, code, _) = self.execute(&req, &what)?;
        match status {
            201 => Ok(()),
            _ => Err(self.status_error(status, &code, &what)),
        }
    }

    fn put_block_list(&self, name: &str, ids: &[String]) -> Result<(), StoreError> {
        let mut xml = String::from("<?xml version=\"1.0\" encoding=\"utf-8\"?><BlockList>");
        for id in ids {
            xml.push_str(&format!("<Latest>{id}</Latest>"));
        }
        xml.push_str("</BlockList>");
        let mut req = Request::new("PUT", Some(name));
        req.query.push(("comp", "blocklist".into()));
        req.headers
            .push(("x-ms-blob-content-type", content_type(name).into()));
        req.headers.push(("Content-Type", "application/xml".into()));
        req.body = xml.as_bytes();
        let what = format!(
            "committing the {} blocks of blob {name} in container {}",
            ids.len(),
            self.where_()
        );
        let (status, code, _) = self.execute(&req, &what)?;
        match status {
            201 => Ok(()),
            _ => Err(self.status_error(status, &code, &what)),
        }
    }
}

impl BlobStore for AzureStore {
    fn describe(&self) -> String {
        let prefix = if self.settings.prefix.is_empty() {
            String::new()
        } else {
            format!(", prefix {}", self.settings.prefix)
        };
        format!(
            "Azure container {} ({}){prefix}",
            self.settings.container,
            self.settings.account.summary()
        )
    }

    fn put(&self, key: &str, src: &mut dyn Read, size: Option<u64>) -> Result<u64, StoreError> {
        let name = self.blob_name(key)?;
        let block_size = self.settings.block_size.max(1);
        let first = FirstPart::read(src, size, block_size)?;
        if first.is_whole() {
            self.put_blob(&name, first.bytes())?;
            return Ok(first.len as u64);
        }
        let (mut buf, mut n) = (first.buf, first.len);

        // Fixed-width ids, unique per upload so that two uploads of the same name
        // cannot mix their uncommitted blocks.
        let nonce = Rng::seeded().next_u64();
        let mut ids: Vec<String> = Vec::new();
        let mut total = 0u64;
        while n > 0 {
            if ids.len() == MAX_BLOCKS {
                return Err(StoreError::new(
                    StoreErrorKind::Rejected,
                    format!("blob {name} is larger than {MAX_BLOCKS} blocks of {block_size} bytes"),
                ));
            }
            let id = crate::encoding::base64(format!("{nonce:016x}-{:06}", ids.len()).as_bytes());
            self.put_block(&name, &id, &buf[..n], ids.len())?;
            ids.push(id);
            total += n as u64;
            if n < block_size {
                break;
            }
            n = fill_buffer(src, &mut buf)?;
        }
        self.put_block_list(&name, &ids)?;
        Ok(total)
    }

    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let name = self.blob_name(key)?;
        let req = Request::new("GET", Some(&name));
        let what = format!("reading blob {name} from container {}", self.where_());
        let (status, code, mut response) = self.execute(&req, &what)?;
        match status {
            200 => response
                .body_mut()
                .with_config()
                .limit(u64::MAX)
                .read_to_vec()
                .map(Some)
                .map_err(|e| {
                    StoreError::transient(format!("{what}: {}", self.scrub(&e.to_string())))
                }),
            404 if code == "BlobNotFound" || code.is_empty() => Ok(None),
            _ => Err(self.status_error(status, &code, &what)),
        }
    }

    fn delete(&self, key: &str) -> Result<(), StoreError> {
        let name = self.blob_name(key)?;
        let req = Request::new("DELETE", Some(&name));
        let what = format!("deleting blob {name} from container {}", self.where_());
        let (status, code, mut response) = self.execute(&req, &what)?;
        drain(&mut response);
        match status {
            202 | 200 => Ok(()),
            404 if code == "BlobNotFound" || code.is_empty() => Ok(()),
            _ => Err(self.status_error(status, &code, &what)),
        }
    }
}

fn retryable(status: u16) -> bool {
    status == 408 || status == 429 || status >= 500
}

/// Reads a (small) error body so the connection can be reused.
fn drain(response: &mut Response<Body>) {
    let _ = response
        .body_mut()
        .with_config()
        .limit(64 * 1024)
        .read_to_vec();
}

/// `Sun, 11 Oct 2009 21:49:13 GMT` for now.
fn http_date() -> String {
    let format = time::macros::format_description!(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
    );
    time::OffsetDateTime::now_utc()
        .format(&format)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&'static str, &'static str)]) -> Env {
        Env::from_pairs(pairs.iter().copied())
    }

    #[test]
    fn container_names() {
        for ok in ["abc", "my-container-1", &"a".repeat(63)] {
            assert!(valid_container_name(ok), "{ok}");
        }
        for bad in ["ab", "-abc", "abc-", "a--b", "ABC", "a_b", &"a".repeat(64)] {
            assert!(!valid_container_name(bad), "{bad}");
        }
    }

    #[test]
    fn settings_from_env_mask_the_dsn() {
        let secret = "AccountName=acct;AccountKey=U3VwZXJTZWNyZXQ=;EndpointSuffix=core.windows.net";
        let mut errors = Vec::new();
        let s = AzureSettings::from_env(
            &env(&[
                ("SP_TASK_SYNC_AZURE_DSN", secret),
                ("SP_TASK_SYNC_AZURE_CLIENT_NAME", "calls"),
                ("SP_TASK_SYNC_SAVE_TO", "/spinoco/"),
            ]),
            &mut errors,
        )
        .unwrap();
        assert!(errors.is_empty());
        assert_eq!(s.prefix, "spinoco");
        let shown = format!("{s:?} {:?}", s.describe());
        assert!(!shown.contains("U3VwZXJTZWNyZXQ"), "{shown}");
        assert!(shown.contains("account acct"), "{shown}");

        let mut errors = Vec::new();
        let bad = "AccountName=acct;SharedAccessSignature=sv=1&se=SuperSecret";
        let s = AzureSettings::from_env(
            &env(&[
                ("SP_TASK_SYNC_AZURE_DSN", bad),
                ("SP_TASK_SYNC_AZURE_CLIENT_NAME", "No_Such"),
            ]),
            &mut errors,
        );
        assert!(s.is_none());
        let vars: Vec<&str> = errors.iter().map(|e| e.var.as_str()).collect();
        assert_eq!(
            vars,
            ["SP_TASK_SYNC_AZURE_DSN", "SP_TASK_SYNC_AZURE_CLIENT_NAME"]
        );
        let text = format!("{errors:?}");
        assert!(!text.contains("SuperSecret"), "{text}");
        assert!(text.contains("sig="), "{text}");
    }

    #[test]
    fn block_size_can_be_set_and_is_checked() {
        let dsn = "AccountName=acct;AccountKey=U3VwZXJTZWNyZXQ=;EndpointSuffix=core.windows.net";
        let with = |size: &'static str| {
            let mut errors = Vec::new();
            let s = AzureSettings::from_env(
                &env(&[
                    ("SP_TASK_SYNC_AZURE_DSN", dsn),
                    ("SP_TASK_SYNC_AZURE_CLIENT_NAME", "calls"),
                    ("SP_TASK_SYNC_AZURE_BLOCK_SIZE", size),
                ]),
                &mut errors,
            );
            (s.map(|s| s.block_size), errors)
        };
        assert_eq!(with("256K").0, Some(256 * 1024));
        assert_eq!(with("16MiB").0, Some(16 << 20));
        for bad in ["1K", "2G", "lots", "-5"] {
            let (s, errors) = with(bad);
            assert!(s.is_none(), "{bad}");
            assert_eq!(errors[0].var, "SP_TASK_SYNC_AZURE_BLOCK_SIZE", "{bad}");
        }
    }

    #[test]
    fn missing_settings_are_named() {
        let mut errors = Vec::new();
        assert!(AzureSettings::from_env(&env(&[]), &mut errors).is_none());
        let vars: Vec<&str> = errors.iter().map(|e| e.var.as_str()).collect();
        assert_eq!(
            vars,
            ["SP_TASK_SYNC_AZURE_DSN", "SP_TASK_SYNC_AZURE_CLIENT_NAME"]
        );
    }

    #[test]
    fn config_selects_azure_and_masks_the_dsn_in_describe() {
        let key = azure_auth::DEV_KEY;
        let dsn = format!("AccountName=acct;AccountKey={key}");
        let env = Env::from_pairs([
            ("SP_API_TOKEN", "t"),
            ("SP_TASK_SYNC_TAG", "tag"),
            ("SP_TASK_SYNC_FILE_NAME_TEMPLATE", "{{task_id}}"),
            ("SP_TASK_SYNC_STORAGE_PROVIDER", "Azure"),
            ("SP_TASK_SYNC_AZURE_DSN", dsn.as_str()),
            ("SP_TASK_SYNC_AZURE_CLIENT_NAME", "calls"),
        ]);
        let config = crate::config::Config::from_env(&env).unwrap();
        assert_eq!(config.storage.provider(), "azure");
        let lines = format!("{:?} {config:?}", config.describe());
        assert!(!lines.contains(&key[..20]), "{lines}");
        assert!(
            lines.contains("https://acct.blob.core.windows.net") && lines.contains("calls"),
            "{lines}"
        );
    }

    /// A one-request-per-connection HTTP server answering with the given statuses
    /// in turn; returns its base URL and the request lines it saw.
    fn fake_server(
        answers: Vec<(u16, &'static str)>,
    ) -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
        use std::io::{BufRead, BufReader, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = seen.clone();
        std::thread::spawn(move || {
            for (status, code) in answers {
                let Ok((stream, _)) = listener.accept() else {
                    return;
                };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                log.lock().unwrap().push(line.trim().to_string());
                let mut length = 0usize;
                loop {
                    let mut h = String::new();
                    reader.read_line(&mut h).unwrap();
                    if h.trim().is_empty() {
                        break;
                    }
                    if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                        length = v.trim().parse().unwrap();
                    }
                }
                let mut body = vec![0u8; length];
                reader.read_exact(&mut body).unwrap();
                let mut stream = stream;
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status} X\r\nx-ms-error-code: {code}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                );
            }
        });
        (url, seen)
    }

    fn sas_store(endpoint: &str) -> AzureStore {
        let dsn = format!(
            "BlobEndpoint={endpoint}/acct;SharedAccessSignature=sv=2021-08-06&sig=TopSecretSig"
        );
        let settings = AzureSettings {
            account: azure_auth::parse_connection_string(&dsn).unwrap(),
            container: "calls".into(),
            prefix: "p".into(),
            block_size: 1024,
        };
        let agent = crate::http::agent(std::time::Duration::from_secs(5), 1);
        AzureStore::new(settings, agent).with_attempts(RetryBudget::tries(3))
    }

    #[test]
    fn server_errors_are_retried_then_succeed() {
        let (url, seen) = fake_server(vec![(503, "ServerBusy"), (500, "InternalError"), (201, "")]);
        let store = sas_store(&url);
        assert_eq!(
            crate::store::put_bytes(&store, "a b.json", b"{}").unwrap(),
            2
        );
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 3, "{seen:?}");
        assert!(
            seen[0].starts_with("PUT /acct/calls/p/a%20b.json?sv=2021-08-06&sig=TopSecretSig "),
            "{seen:?}"
        );
    }

    #[test]
    fn retries_are_bounded_and_refusals_are_not_retried() {
        let (url, seen) = fake_server(vec![(503, "ServerBusy"); 3]);
        let err = sas_store(&url).get("x").unwrap_err();
        assert_eq!(err.kind, StoreErrorKind::Transient, "{err}");
        assert!(
            err.message.contains("after 3 attempts") && err.message.contains("503"),
            "{err}"
        );
        assert_eq!(seen.lock().unwrap().len(), 3);

        let (url, seen) = fake_server(vec![(403, "AuthenticationFailed"), (201, "")]);
        let err = crate::store::put_bytes(&sas_store(&url), "x", b"x").unwrap_err();
        assert_eq!(err.kind, StoreErrorKind::Denied, "{err}");
        assert!(
            err.message
                .contains("the storage account key or SAS was refused"),
            "{err}"
        );
        assert!(!err.message.contains("TopSecret"), "{err}");
        assert_eq!(seen.lock().unwrap().len(), 1, "a refusal is not retried");
    }

    #[test]
    fn network_errors_never_quote_the_sas() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let store =
            sas_store(&format!("http://127.0.0.1:{port}")).with_attempts(RetryBudget::tries(1));
        let err = store.delete("x").unwrap_err();
        assert_eq!(err.kind, StoreErrorKind::Transient, "{err}");
        assert!(
            !err.message.contains("TopSecret") && err.message.contains("deleting blob p/x"),
            "{err}"
        );
    }

    #[test]
    fn date_is_rfc1123() {
        let d = http_date();
        assert!(d.ends_with(" GMT") && d.len() == 29, "{d}");
    }
}
