//! Azure Blob Storage through a small hand-written REST client.
//!
//! Small objects go up in one Put Blob (for a task's file a conditional create, so that
//! another task's blob is never replaced: [`super::client::claim`]). Larger ones (above
//! one block: 8 MiB, or `SP_TASK_SYNC_AZURE_BLOCK_SIZE`) are streamed as Put Block calls
//! from one reusable block buffer and become a blob only with the final Put Block
//! List: uncommitted blocks are never visible, so an upload that fails earlier leaves
//! nothing new behind and an older blob under the same name untouched (Azure drops
//! uncommitted blocks after a week). Requests go through the shared REST layer
//! ([`super::client`]): each is retried under the store's budget, a refused key or SAS
//! is a `Denied` error at once, a missing container names SP_TASK_SYNC_AZURE_CLIENT_NAME.
//! Every Put Blob, Put Block and Put Block List carries `x-ms-content-crc64` (computed
//! while the block is read), which Azure and Azurite check before they take the bytes.
//!
//! The account is named by the connection string (`SP_TASK_SYNC_AZURE_DSN`: Shared Key
//! or SAS), or by `SP_TASK_SYNC_AZURE_ACCOUNT_URL` with a token from AKS workload
//! identity or a managed identity ([`crate::cloud::azure`]) sent as `Bearer`, kept in
//! the shared token cache and dropped when the service answers 401. The access tier
//! (`SP_TASK_SYNC_AZURE_ACCESS_TIER`) and the task's metadata (`x-ms-meta-task_id`,
//! `x-ms-meta-data_type`) go with every Put Blob and Put Block List.

use std::io::Read;

use ureq::http::HeaderMap;

use super::azure_auth::{self, AzureAccount, Credential};
use super::client::claim::{Claim, Claims, Existing, Upload};
use super::client::parts::{PartPool, PartReader, Sums};
use super::client::token::{Fetched, TokenCache};
use super::client::{clip, xml_tag, Answer, Class, Client, Container, Protocol, Request};
use super::ObjectInfo;
use super::{
    content_type, prefixed, BlobStore, ObjectVersion, PutCondition, PutIf, StoreError,
    StoreErrorKind, Versioned,
};
use crate::cloud::azure::{AccessTier, AzureIdentity};
use crate::env::{ConfigError, Env, Secret};
use crate::retry::{Reason, RetryBudget, Rng};

/// The REST API version every request names (bearer tokens need 2017-11-09 or later;
/// the Cold tier 2021-12-02, which is then named instead).
pub const API_VERSION: &str = "2021-08-06";
/// The error code given to a 403 AuthenticationFailed for an expired bearer token.
const EXPIRED_TOKEN: &str = "AuthenticationFailed (the token is expired)";
/// The block size of large uploads: also the one buffer a `put` holds.
pub const DEFAULT_BLOCK_SIZE: usize = 8 * 1024 * 1024;
/// Bounds of `SP_TASK_SYNC_AZURE_BLOCK_SIZE` (one block is held in memory).
pub const MIN_BLOCK_SIZE: usize = 64 * 1024;
pub const MAX_BLOCK_SIZE: usize = 1024 * 1024 * 1024;
/// A blob is committed from at most this many blocks.
const MAX_BLOCKS: usize = 50_000;
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
    /// SP_TASK_SYNC_AZURE_ACCESS_TIER, set on every blob.
    pub access_tier: Option<AccessTier>,
}

impl AzureSettings {
    /// Reads SP_TASK_SYNC_AZURE_DSN, SP_TASK_SYNC_AZURE_CLIENT_NAME and
    /// SP_TASK_SYNC_SAVE_TO; every mistake is pushed to `errors`.
    pub fn from_env(env: &Env, errors: &mut Vec<ConfigError>) -> Option<AzureSettings> {
        let dsn_var = "SP_TASK_SYNC_AZURE_DSN";
        let url_var = "SP_TASK_SYNC_AZURE_ACCOUNT_URL";
        let account = match env.get(dsn_var) {
            None if env.get(url_var).is_some() => {
                let url = crate::cloud::azure::account_url(env, errors);
                let identity = AzureIdentity::from_env(env, errors);
                match (url, identity) {
                    (Some(url), Some(identity)) => Some(AzureAccount {
                        account: Some(url.account),
                        endpoint: url.endpoint,
                        credential: Credential::Identity(identity),
                    }),
                    _ => None,
                }
            }
            None => {
                errors.push(ConfigError::new(
                    dsn_var,
                    None,
                    "is required for azure storage: the storage account connection string \
                     (or SP_TASK_SYNC_AZURE_ACCOUNT_URL with a workload or managed identity)",
                ));
                None
            }
            Some(_) if env.get(url_var).is_some() => {
                // Reported once, under the account URL.
                crate::cloud::azure::account_url(env, errors);
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
        let before = errors.len();
        let access_tier = crate::cloud::azure::access_tier(env, errors);
        if errors.len() > before {
            return None;
        }
        Some(AzureSettings {
            account: account?,
            container: container?,
            prefix,
            block_size: block_size?,
            access_tier,
        })
    }

    /// Lines for `check`: the connection string itself is never shown.
    pub fn describe(&self) -> Vec<(&'static str, String)> {
        let account = match &self.account.credential {
            Credential::Identity(_) => ("SP_TASK_SYNC_AZURE_ACCOUNT_URL", self.account.summary()),
            _ => (
                "SP_TASK_SYNC_AZURE_DSN",
                format!("*** ({})", self.account.summary()),
            ),
        };
        vec![
            account,
            (
                "SP_TASK_SYNC_AZURE_ACCESS_TIER",
                self.access_tier
                    .map(|t| t.header_value().to_string())
                    .unwrap_or_else(|| "- (the account's default)".into()),
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

/// What Azure adds to the shared REST layer: Shared Key signing or the SAS, the
/// `x-ms-error-code` header, and the codes that differ from their status.
struct AzureProtocol {
    account: AzureAccount,
    container: String,
    /// `x-ms-version`: [`API_VERSION`], or newer when the access tier needs it.
    version: &'static str,
    /// For fetching identity tokens; `Bearer ...` values are kept here.
    agent: ureq::Agent,
    tokens: TokenCache<Secret>,
}

impl Protocol for AzureProtocol {
    fn authorize(&self, req: &mut Request) -> Result<(), StoreError> {
        req.headers.push(("x-ms-date".into(), http_date()));
        req.headers
            .push(("x-ms-version".into(), self.version.into()));
        match &self.account.credential {
            Credential::Identity(identity) => {
                let header = self.tokens.get(|| {
                    let t = identity.fetch(&self.agent)?;
                    Ok(Fetched {
                        value: Secret::new(format!("Bearer {}", t.token.expose())),
                        expires: Some(t.expires),
                    })
                })?;
                req.headers
                    .push(("authorization".into(), header.expose().to_string()));
            }
            Credential::Sas(token) => {
                let sep = if req.url.contains('?') { '&' } else { '?' };
                req.url = format!("{}{sep}{}", req.url, token.expose());
            }
            Credential::SharedKey(key) => {
                let SignedParts { path, query } = split_url(&req.url);
                let mut signed: Vec<(&str, &str)> = req
                    .headers
                    .iter()
                    .map(|(n, v)| (n.as_str(), v.as_str()))
                    .collect();
                let length = req.body.len().to_string();
                if req.method == "PUT" {
                    signed.push(("Content-Length", &length));
                }
                let query: Vec<(&str, &str)> = query
                    .iter()
                    .map(|(n, v)| (n.as_str(), v.as_str()))
                    .collect();
                let name = self.account.account.as_deref().unwrap_or_default();
                let to_sign = azure_auth::string_to_sign(req.method, &signed, name, &path, &query);
                let signature = azure_auth::sign(key, &to_sign);
                req.headers.push((
                    "authorization".into(),
                    format!("SharedKey {name}:{signature}"),
                ));
            }
        }
        Ok(())
    }

    fn error_code(&self, _status: u16, headers: &HeaderMap, body: &[u8]) -> String {
        let code = headers
            .get("x-ms-error-code")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        // An expired bearer token is a 401 InvalidAuthenticationInfo today, but the
        // service (and Azurite) also answer 403 AuthenticationFailed with this detail:
        // both mean "fetch a new token", not "refused".
        let expired = code == "AuthenticationFailed"
            && matches!(self.account.credential, Credential::Identity(_))
            && String::from_utf8_lossy(&body[..body.len().min(4096)])
                .contains("The token is expired");
        if expired {
            EXPIRED_TOKEN.to_string()
        } else {
            code.to_string()
        }
    }

    fn error_message(&self, body: &[u8]) -> String {
        let text = String::from_utf8_lossy(&body[..body.len().min(64 * 1024)]);
        let message = xml_tag(&text, "Message").unwrap_or_default();
        clip(message.lines().next().unwrap_or_default(), 300)
    }

    fn special(&self, _status: u16, code: &str) -> Option<Class> {
        Some(match code {
            "ContainerNotFound" => Class::MissingContainer,
            // The bytes changed on the way: the block is still in memory.
            "Md5Mismatch" | "Crc64Mismatch" => Class::Retry(Reason::BrokenBody),
            "ServerBusy" | "OperationTimedOut" => Class::Retry(Reason::Throttled),
            EXPIRED_TOKEN => Class::Unauthorized,
            "ContainerBeingDeleted" | "ContainerBeingDisabled" => Class::Retry(Reason::ServerError),
            // 409 with If-None-Match: * on an existing blob: the caller's answer.
            "BlobAlreadyExists" | "ConditionNotMet" => Class::Answer,
            // A block list the store no longer has (another upload of the blob was
            // committed meanwhile): `put_block_list` restarts the blob from its source.
            "InvalidBlockList" => Class::Answer,
            _ => return None,
        })
    }

    fn drop_credentials(&self) -> bool {
        matches!(self.account.credential, Credential::Identity(_)) && self.tokens.invalidate()
    }

    fn redact(&self, text: &str) -> String {
        match &self.account.credential {
            Credential::Sas(token) if !token.expose().is_empty() => {
                text.replace(token.expose(), "***")
            }
            _ => text.to_string(),
        }
    }

    fn container(&self) -> Container<'_> {
        Container {
            var: "SP_TASK_SYNC_AZURE_CLIENT_NAME",
            value: &self.container,
            noun: "container",
        }
    }
}

/// What Shared Key signs of a URL.
struct SignedParts {
    /// The encoded path.
    path: String,
    /// The query pairs, values decoded.
    query: Vec<(String, String)>,
}

fn split_url(url: &str) -> SignedParts {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let path_and_query = rest.find('/').map_or("/", |i| &rest[i..]);
    let (path, query) = path_and_query
        .split_once('?')
        .unwrap_or((path_and_query, ""));
    let pairs = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (n, v) = p.split_once('=').unwrap_or((p, ""));
            let v = crate::encoding::percent_decode(v).unwrap_or_else(|| v.to_string());
            (n.to_string(), v)
        })
        .collect();
    SignedParts {
        path: path.to_string(),
        query: pairs,
    }
}

pub struct AzureStore {
    settings: AzureSettings,
    client: Client,
    proto: AzureProtocol,
    pool: PartPool,
    /// No task's blob is replaced by another task's (see [`super::client::claim`]).
    claims: Claims,
}

impl AzureStore {
    /// Every request is retried under `budget` (see [`crate::store::client`]).
    pub fn new(settings: AzureSettings, agent: ureq::Agent, budget: RetryBudget) -> AzureStore {
        AzureStore {
            client: Client::new(&agent, budget),
            proto: AzureProtocol {
                account: settings.account.clone(),
                container: settings.container.clone(),
                version: match settings.access_tier {
                    Some(t) if t.min_version() > API_VERSION => t.min_version(),
                    _ => API_VERSION,
                },
                agent: agent.clone(),
                tokens: TokenCache::new(),
            },
            pool: PartPool::new(settings.block_size.max(1)),
            claims: Claims::default(),
            settings,
        }
    }

    /// Creates the container when it does not exist (for `check --connect` and the
    /// tests). Returns whether it was created.
    pub fn ensure_container(&self) -> Result<bool, StoreError> {
        let url = format!("{}?restype=container", self.container_url());
        let what = format!("creating container {}", self.where_());
        let answer = self
            .client
            .send(&self.proto, &what, || Ok(Request::new("PUT", url.clone())))?;
        match (answer.status, answer.code.as_str()) {
            (201, _) => Ok(true),
            (409, "ContainerAlreadyExists") => Ok(false),
            _ => Err(self.client.unexpected(&self.proto, &what, &answer)),
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

    fn container_url(&self) -> String {
        format!(
            "{}/{}",
            self.settings.account.endpoint.trim_end_matches('/'),
            self.settings.container
        )
    }

    fn blob_url(&self, name: &str, query: &[(&str, &str)]) -> String {
        let mut url = format!("{}/{}", self.container_url(), azure_auth::encode_path(name));
        for (i, (n, v)) in query.iter().enumerate() {
            url.push(if i == 0 { '?' } else { '&' });
            url.push_str(n);
            url.push('=');
            url.push_str(&azure_auth::encode_query_value(v));
        }
        url
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

    /// Put Blob with `extra` headers (conditions); the answer for the caller to judge.
    fn put_blob(
        &self,
        name: &str,
        bytes: &[u8],
        crc: u64,
        extra: &[(&str, String)],
        info: &ObjectInfo,
    ) -> Result<Answer, StoreError> {
        let url = self.blob_url(name, &[]);
        let what = format!("uploading blob {name} to container {}", self.where_());
        self.client.send(&self.proto, &what, || {
            let mut r = Request::new("PUT", url.clone())
                .header("x-ms-blob-type", "BlockBlob")
                .header("content-type", content_type(name))
                .header("x-ms-content-crc64", crc64_b64(crc))
                .body(bytes);
            for (n, v) in self.blob_headers(info) {
                r = r.header(&n, v);
            }
            for (n, v) in extra {
                r = r.header(n, v.clone());
            }
            Ok(r)
        })
    }

    /// One Put Blob of a blob whose bytes are in memory: for a task's file (`claim`), a
    /// conditional create, and another task's blob is not replaced.
    fn put_single(
        &self,
        name: &str,
        bytes: &[u8],
        crc: u64,
        info: &ObjectInfo,
        claim: Option<&Claim>,
    ) -> Result<(), StoreError> {
        let what = format!("uploading blob {name} to container {}", self.where_());
        let upload = |cond: Option<&PutCondition>| {
            let header = match cond {
                Some(PutCondition::IfAbsent) => Some(("if-none-match", "*".to_string())),
                Some(PutCondition::IfMatch(v)) => Some(("if-match", v.0.clone())),
                None => None,
            };
            let answer = self.put_blob(name, bytes, crc, header.as_slice(), info)?;
            match answer.status {
                201 => Ok(Upload::Done),
                // 409 BlobAlreadyExists (If-None-Match), 412 ConditionNotMet (If-Match).
                409 if answer.code == "BlobAlreadyExists" && cond.is_some() => {
                    Ok(Upload::ConditionFailed)
                }
                412 if cond.is_some() => Ok(Upload::ConditionFailed),
                // If-Match on a blob that is gone.
                404 if answer.code == "BlobNotFound" && cond.is_some() => {
                    Ok(Upload::ConditionFailed)
                }
                _ => Err(self.client.unexpected(&self.proto, &what, &answer)),
            }
        };
        match claim {
            Some(claim) => self.claims.write(claim, upload, || self.existing(name)),
            None => match upload(None)? {
                Upload::Done => Ok(()),
                other => Err(StoreError::transient(format!("{what}: {other:?}"))),
            },
        }
    }

    /// The task id (`x-ms-meta-task_id`) and ETag of the blob, `None` when there is none.
    fn existing(&self, name: &str) -> Result<Option<Existing>, StoreError> {
        let url = self.blob_url(name, &[]);
        let what = format!(
            "reading the properties of blob {name} in container {}",
            self.where_()
        );
        let answer = self
            .client
            .send(&self.proto, &what, || Ok(Request::new("HEAD", url.clone())))?;
        match answer.status {
            200 => Ok(Some(Existing {
                task_id: answer.header("x-ms-meta-task_id").map(str::to_string),
                version: answer.header("etag").map(|e| ObjectVersion(e.to_string())),
            })),
            404 => Ok(None),
            _ => Err(self.client.unexpected(&self.proto, &what, &answer)),
        }
    }

    fn put_block(
        &self,
        name: &str,
        id: &str,
        bytes: &[u8],
        crc: u64,
        index: usize,
    ) -> Result<(), StoreError> {
        let url = self.blob_url(name, &[("comp", "block"), ("blockid", id)]);
        let what = format!(
            "uploading block {index} of blob {name} to container {}",
            self.where_()
        );
        let answer = self.client.send(&self.proto, &what, || {
            Ok(Request::new("PUT", url.clone())
                .header("x-ms-content-crc64", crc64_b64(crc))
                .body(bytes))
        })?;
        match answer.status {
            201 => Ok(()),
            _ => Err(self.client.unexpected(&self.proto, &what, &answer)),
        }
    }

    /// The access tier and the user metadata, for Put Blob and Put Block List (the
    /// blob's properties are set when it is created or committed, not per block).
    fn blob_headers(&self, info: &ObjectInfo) -> Vec<(String, String)> {
        let mut h: Vec<(String, String)> = info
            .metadata('_')
            .into_iter()
            .map(|(k, v)| (format!("x-ms-meta-{k}"), v))
            .collect();
        if let Some(tier) = self.settings.access_tier {
            h.push(("x-ms-access-tier".into(), tier.header_value().into()));
        }
        h
    }

    fn put_block_list(
        &self,
        name: &str,
        ids: &[String],
        info: &ObjectInfo,
    ) -> Result<(), StoreError> {
        let mut xml = String::from("<?xml version=\"1.0\" encoding=\"utf-8\"?><BlockList>");
        for id in ids {
            xml.push_str(&format!("<Latest>{id}</Latest>"));
        }
        xml.push_str("</BlockList>");
        let url = self.blob_url(name, &[("comp", "blocklist")]);
        let what = format!(
            "committing the {} blocks of blob {name} in container {}",
            ids.len(),
            self.where_()
        );
        let crc = super::client::parts::crc64(xml.as_bytes());
        let answer = self.client.send(&self.proto, &what, || {
            let mut r = Request::new("PUT", url.clone())
                .header("x-ms-blob-content-type", content_type(name))
                .header("content-type", "application/xml")
                .header("x-ms-content-crc64", crc64_b64(crc))
                .body(xml.as_bytes());
            for (n, v) in self.blob_headers(info) {
                r = r.header(&n, v);
            }
            Ok(r)
        })?;
        match answer.status {
            201 => Ok(()),
            // Our blocks are gone: another upload of the same blob committed meanwhile
            // (a commit drops every uncommitted block of the blob), or they expired. The
            // blob is sent again from its source.
            400 if answer.code == "InvalidBlockList" => Err(StoreError::restart(format!(
                "{what}: the blocks were dropped by the store (InvalidBlockList: another upload of the blob was committed meanwhile); the blob starts over"
            ))),
            _ => Err(self.client.unexpected(&self.proto, &what, &answer)),
        }
    }
}

/// Azure's `x-ms-content-crc64`: base64 of the CRC-64/NVME's eight little-endian bytes.
fn crc64_b64(crc: u64) -> String {
    crate::encoding::base64(&crc.to_le_bytes())
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

    fn put_with(
        &self,
        key: &str,
        src: &mut dyn Read,
        size: Option<u64>,
        info: &ObjectInfo,
    ) -> Result<u64, StoreError> {
        let name = self.blob_name(key)?;
        let claim = Claim::of(key, info);
        let sums = Sums {
            crc64: true,
            ..Sums::default()
        };
        let mut reader = PartReader::new(&self.pool, size, sums);
        let first = reader.next_part(src)?.expect("a first part");
        if first.last {
            let (len, crc) = (first.bytes.len(), first.crc64.unwrap_or_default());
            self.put_single(&name, reader.current(), crc, info, claim.as_ref())?;
            return Ok(len as u64);
        }
        // One HEAD before the blocks (negligible next to them) guards a large blob.
        if let Some(claim) = &claim {
            claim.check(self.existing(&name)?)?;
        }
        // Fixed-width ids, unique per upload so that two uploads of the same name
        // cannot mix their uncommitted blocks.
        let nonce = Rng::seeded().next_u64();
        let mut ids: Vec<String> = Vec::new();
        let mut total = 0u64;
        let mut part = Some(first);
        while let Some(p) = part {
            if ids.len() == MAX_BLOCKS {
                return Err(StoreError::new(
                    StoreErrorKind::Rejected,
                    format!(
                        "blob {name} is larger than {MAX_BLOCKS} blocks of {} bytes",
                        self.settings.block_size
                    ),
                ));
            }
            let id = crate::encoding::base64(format!("{nonce:016x}-{:06}", ids.len()).as_bytes());
            self.put_block(&name, &id, p.bytes, p.crc64.unwrap_or_default(), ids.len())?;
            ids.push(id);
            total += p.bytes.len() as u64;
            part = reader.next_part(src)?;
        }
        self.put_block_list(&name, &ids, info)?;
        Ok(total)
    }

    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.get_versioned(key).map(|v| v.map(|v| v.bytes))
    }

    fn delete(&self, key: &str) -> Result<(), StoreError> {
        let name = self.blob_name(key)?;
        let url = self.blob_url(&name, &[]);
        let what = format!("deleting blob {name} from container {}", self.where_());
        let answer = self.client.send(&self.proto, &what, || {
            Ok(Request::new("DELETE", url.clone()))
        })?;
        match answer.status {
            202 | 200 => Ok(()),
            404 if answer.code == "BlobNotFound" || answer.code.is_empty() => Ok(()),
            _ => Err(self.client.unexpected(&self.proto, &what, &answer)),
        }
    }

    fn get_versioned(&self, key: &str) -> Result<Option<Versioned>, StoreError> {
        let name = self.blob_name(key)?;
        let url = self.blob_url(&name, &[]);
        let what = format!("reading blob {name} from container {}", self.where_());
        let answer = self
            .client
            .send(&self.proto, &what, || Ok(Request::new("GET", url.clone())))?;
        match answer.status {
            200 => Ok(Some(Versioned {
                version: ObjectVersion(answer.header("etag").unwrap_or_default().to_string()),
                bytes: answer.body,
            })),
            404 if answer.code == "BlobNotFound" || answer.code.is_empty() => Ok(None),
            _ => Err(self.client.unexpected(&self.proto, &what, &answer)),
        }
    }

    fn put_if(&self, key: &str, bytes: &[u8], cond: PutCondition) -> Result<PutIf, StoreError> {
        let name = self.blob_name(key)?;
        let header = match &cond {
            PutCondition::IfAbsent => ("if-none-match", "*".to_string()),
            PutCondition::IfMatch(v) => ("if-match", v.0.clone()),
        };
        let what = format!(
            "conditional upload of blob {name} to container {}",
            self.where_()
        );
        let crc = super::client::parts::crc64(bytes);
        let answer = self.put_blob(&name, bytes, crc, &[header], &ObjectInfo::default())?;
        match answer.status {
            201 => Ok(PutIf::Written(ObjectVersion(
                answer.header("etag").unwrap_or_default().to_string(),
            ))),
            409 | 412 => Ok(PutIf::ConditionFailed),
            // If-Match on a blob that is gone.
            404 if answer.code == "BlobNotFound" => Ok(PutIf::ConditionFailed),
            _ => Err(self.client.unexpected(&self.proto, &what, &answer)),
        }
    }
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
        sas_store_with(endpoint, RetryBudget::tries(3))
    }

    fn sas_store_with(endpoint: &str, budget: RetryBudget) -> AzureStore {
        let dsn = format!(
            "BlobEndpoint={endpoint}/acct;SharedAccessSignature=sv=2021-08-06&sig=TopSecretSig"
        );
        let settings = AzureSettings {
            account: azure_auth::parse_connection_string(&dsn).unwrap(),
            container: "calls".into(),
            prefix: "p".into(),
            block_size: 1024,
            access_tier: None,
        };
        let agent = crate::http::agent(std::time::Duration::from_secs(5), 1);
        AzureStore::new(settings, agent, budget)
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
            err.message.contains("after 3 tries") && err.message.contains("503"),
            "{err}"
        );
        assert_eq!(seen.lock().unwrap().len(), 3);

        let (url, seen) = fake_server(vec![(403, "AuthenticationFailed"), (201, "")]);
        let err = crate::store::put_bytes(&sas_store(&url), "x", b"x").unwrap_err();
        assert_eq!(err.kind, StoreErrorKind::Denied, "{err}");
        assert!(
            err.message.contains("the storage refused the credentials"),
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
        let store = sas_store_with(&format!("http://127.0.0.1:{port}"), RetryBudget::tries(1));
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

    /// Every status Azure can answer on the journal path, mapped deliberately.
    #[test]
    fn status_table() {
        use super::super::client::classify;
        let p = AzureProtocol {
            account: azure_auth::parse_connection_string("UseDevelopmentStorage=true").unwrap(),
            container: "container-typo".into(),
            version: API_VERSION,
            agent: crate::http::agent(std::time::Duration::from_secs(1), 1),
            tokens: TokenCache::new(),
        };
        let table: &[(u16, &str, Class)] = &[
            (201, "", Class::Answer),
            (401, "", Class::Unauthorized),
            (403, "AuthenticationFailed", Class::Denied),
            (403, "AuthorizationPermissionMismatch", Class::Denied),
            (404, "ContainerNotFound", Class::MissingContainer),
            (404, "BlobNotFound", Class::Answer),
            (409, "BlobAlreadyExists", Class::Answer),
            (
                409,
                "ContainerBeingDeleted",
                Class::Retry(Reason::ServerError),
            ),
            (409, "LeaseIdMissing", Class::Answer),
            (412, "ConditionNotMet", Class::Answer),
            (400, "Crc64Mismatch", Class::Retry(Reason::BrokenBody)),
            (400, "Md5Mismatch", Class::Retry(Reason::BrokenBody)),
            (400, "InvalidHeaderValue", Class::Rejected),
            // put_block_list restarts the blob from its source on this one.
            (400, "InvalidBlockList", Class::Answer),
            (503, "ServerBusy", Class::Retry(Reason::Throttled)),
            (500, "InternalError", Class::Retry(Reason::ServerError)),
            (507, "", Class::Retry(Reason::ServerError)),
        ];
        for (status, code, class) in table {
            assert_eq!(classify(&p, *status, code), *class, "{status} {code}");
        }
        let e = super::super::client::missing(&p);
        assert!(
            e.message.starts_with(
                "SP_TASK_SYNC_AZURE_CLIENT_NAME=\"container-typo\": the container does not exist"
            ),
            "{e}"
        );
        // The crc64 goes out as its eight little-endian bytes in base64.
        assert_eq!(
            crc64_b64(super::super::client::parts::crc64(b"123456789")),
            crate::encoding::base64(&0xAE8B_1486_0A79_9888u64.to_le_bytes())
        );
    }
}
