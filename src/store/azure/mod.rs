//! Azure Blob Storage through a small hand-written REST client.
//!
//! Small objects go up in one Put Blob (for a task's file a conditional create, so that
//! another task's blob is never replaced: [`crate::store::client::claim`]). Larger ones (above
//! one block: 8 MiB, or `SP_TASK_SYNC_AZURE_BLOCK_SIZE`) are streamed as Put Block calls
//! from one reusable block buffer and become a blob only with the final Put Block
//! List: uncommitted blocks are never visible, so an upload that fails earlier leaves
//! nothing new behind and an older blob under the same name untouched (Azure drops
//! uncommitted blocks after a week). Requests go through the shared REST layer
//! ([`crate::store::client`]): each is retried under the store's budget, a refused key or SAS
//! is a `Denied` error at once, a missing container names SP_TASK_SYNC_AZURE_CLIENT_NAME.
//! Every Put Blob, Put Block and Put Block List carries `x-ms-content-crc64` (computed
//! while the block is read), which Azure and Azurite check before they take the bytes.
//!
//! The account is named by the connection string (`SP_TASK_SYNC_AZURE_DSN`: Shared Key
//! or SAS), or by `SP_TASK_SYNC_AZURE_ACCOUNT_URL` with a token from AKS workload
//! identity or a managed identity ([`identity`]) sent as `Bearer`, kept in
//! the shared token cache and dropped when the service answers 401. The access tier
//! (`SP_TASK_SYNC_AZURE_ACCESS_TIER`) and the task's metadata (`x-ms-meta-task_id`,
//! `x-ms-meta-data_type`) go with every Put Blob and Put Block List.
//!
//! The files: [`builder`] reads the settings, [`credential`] parses the connection
//! string and signs with its key or SAS (workload and managed identities in
//! [`identity`]), `client` says what Azure adds to the shared REST layer, `read`
//! reads an archive back (`verify`), and this file is the store.

use std::io::Read;

pub mod builder;
mod client;
pub mod credential;
pub mod identity;
mod read;

pub use builder::AzureSettings;

use crate::retry::{RetryBudget, Rng};
use crate::store::client::claim::{Claim, Claims, Existing, Upload};
use crate::store::client::parts::{PartPool, PartReader, Sums};
use crate::store::client::token::TokenCache;
use crate::store::client::{Answer, Client, Request};
use crate::store::ObjectInfo;
use crate::store::{
    content_type, prefixed, BlobStore, ObjectVersion, PutCondition, PutIf, Staging, StoreError,
    StoreErrorKind, Versioned,
};
use client::{AzureProtocol, API_VERSION};

/// A blob is committed from at most this many blocks.
const MAX_BLOCKS: usize = 50_000;
/// Longest blob name the service accepts.
const MAX_NAME_LEN: usize = 1024;

pub struct AzureStore {
    settings: AzureSettings,
    client: Client,
    proto: AzureProtocol,
    pool: PartPool,
    /// No task's blob is replaced by another task's (see [`crate::store::client::claim`]).
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
        let mut url = format!("{}/{}", self.container_url(), credential::encode_path(name));
        for (i, (n, v)) in query.iter().enumerate() {
            url.push(if i == 0 { '?' } else { '&' });
            url.push_str(n);
            url.push('=');
            url.push_str(&credential::encode_query_value(v));
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
        self.claims.write(claim, upload, || self.existing(name))
    }

    /// The task id (`x-ms-meta-task_id`) and ETag of the blob, `None` when there is none.
    fn existing(&self, name: &str) -> Result<Option<Existing>, StoreError> {
        Ok(self.head(name)?.map(|answer| Existing {
            task_id: answer.header("x-ms-meta-task_id").map(str::to_string),
            version: answer.header("etag").map(|e| ObjectVersion(e.to_string())),
        }))
    }

    /// Get Blob Properties (a HEAD); `None` when there is no blob.
    fn head(&self, name: &str) -> Result<Option<Answer>, StoreError> {
        let url = self.blob_url(name, &[]);
        let what = self.reading_properties(name);
        let answer = self
            .client
            .send(&self.proto, &what, || Ok(Request::new("HEAD", url.clone())))?;
        match answer.status {
            200 => Ok(Some(answer)),
            404 => Ok(None),
            _ => Err(self.client.unexpected(&self.proto, &what, &answer)),
        }
    }

    fn reading_properties(&self, name: &str) -> String {
        format!(
            "reading the properties of blob {name} in container {}",
            self.where_()
        )
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
        let crc = crate::checksum::crc64(xml.as_bytes());
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

    fn staging(&self) -> Option<Staging<'_>> {
        Some(Staging {
            pool: &self.pool,
            single_request: self.settings.block_size as u64,
        })
    }

    /// One Put Blob from `bytes` (blocks above one block's size).
    fn put_whole(&self, key: &str, bytes: &[u8], info: &ObjectInfo) -> Result<u64, StoreError> {
        if bytes.len() > self.settings.block_size {
            return self.put_with(key, &mut &bytes[..], Some(bytes.len() as u64), info);
        }
        let name = self.blob_name(key)?;
        let claim = Claim::of(key, info);
        let crc = crate::checksum::crc64(bytes);
        self.put_single(&name, bytes, crc, info, claim.as_ref())?;
        Ok(bytes.len() as u64)
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

    fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        self.list_names(prefix)
    }

    fn size(&self, key: &str) -> Result<Option<u64>, StoreError> {
        self.blob_size(key)
    }

    fn stream(&self, key: &str) -> Result<Option<Box<dyn Read + '_>>, StoreError> {
        self.blob_stream(key)
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
        let crc = crate::checksum::crc64(bytes);
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

#[cfg(test)]
mod tests {
    use super::*;

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
            account: credential::parse_connection_string(&dsn).unwrap(),
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
}
