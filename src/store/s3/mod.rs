//! Amazon S3 and S3-compatible storage (MinIO, Ceph RGW, Cloudflare R2, Wasabi, ...).
//!
//! Selected by `SP_TASK_SYNC_STORAGE_PROVIDER=s3`. Settings:
//!
//! | variable | meaning |
//! | --- | --- |
//! | `SP_TASK_SYNC_S3_BUCKET` | bucket name (required) |
//! | `SP_TASK_SYNC_S3_REGION` (else `AWS_REGION`, `AWS_DEFAULT_REGION`) | region, e.g. `eu-central-1` (required; S3-compatible services often accept `us-east-1`) |
//! | `SP_TASK_SYNC_S3_ENDPOINT` (else `AWS_ENDPOINT_URL_S3`, `AWS_ENDPOINT_URL`) | optional `http(s)://host[:port]` of an S3-compatible service; requests then use path-style addressing (`<endpoint>/<bucket>/<key>`). Unset: AWS, `https://s3.<region>.amazonaws.com`, virtual-hosted style |
//! | `SP_TASK_SYNC_S3_ADDRESSING` | `path` or `virtual` instead of that default |
//! | `SP_TASK_SYNC_S3_SSE`, `_SSE_KMS_KEY_ID`, `_BUCKET_KEY`, `_STORAGE_CLASS` | encryption and class of every upload ([`options::S3Options`]): on PutObject and CreateMultipartUpload, never on UploadPart |
//! | `SP_TASK_SYNC_SAVE_TO` | optional key prefix (as in the official connector) |
//! | `SP_TASK_SYNC_S3_MULTIPART_THRESHOLD` | objects above this size go up as multipart uploads (default 8MiB, the part size) |
//! | `SP_TASK_SYNC_S3_PART_SIZE` | size of one multipart part, 5MiB to 5GiB (default 8MiB) |
//!
//! Sizes are bytes, or a number with `K`, `M`, `G` (`KB`/`KiB`, ...: all powers of 1024).
//! Credentials come from the usual AWS chain, see [`credential`].
//!
//! How an object is written: an object of known size up to the threshold, or one whose
//! stream ends within the first part, is one PUT (for a task's file a conditional
//! create, so that another task's object is never replaced:
//! [`crate::store::client::claim`]). Anything larger is a multipart upload fed from the
//! stream one part at a time through the shared part reader
//! ([`crate::store::client::parts`]), so memory stays at one part buffer per upload,
//! reused from the store's pool. An object already in memory (the engine's upload
//! stage) is one PUT from its buffer ([`BlobStore::put_whole`]). S3 makes an object
//! visible only when the PUT or CompleteMultipartUpload finishes, so
//! no temporary key is needed. A multipart upload that fails (source or storage) is
//! aborted; an abort that fails too is remembered and retried before the next upload.
//! As a safety net for a killed process, give the bucket a lifecycle rule
//! `AbortIncompleteMultipartUpload`.
//!
//! Transport: rust-s3 only builds the URLs (`AttoRequest::url`), the multipart XML and
//! the SigV4 signature (`s3::signing`); every request goes through the shared REST
//! layer ([`crate::store::client`]) on the shared ureq agent, so the CA bundle,
//! proxies, `NO_PROXY`, timeouts, keep-alive and retries are those of the other
//! providers. Nothing calls
//! rust-s3's own client (clippy.toml forbids its sending methods).
//!
//! Integrity: every PUT and UploadPart is signed with the SHA-256 of its payload
//! (`x-amz-content-sha256`), computed while the part is read from the source. S3 (and
//! s3s-fs) recompute it and refuse a body that changed on the way (`XAmzContentSHA256Mismatch`
//! or `BadDigest`), which the layer retries from the part in memory. `UNSIGNED-PAYLOAD`
//! is not used, even over HTTPS: it would save that one SHA-256 pass (about 0.5 s per GB
//! on this machine, ring with SHA extensions) but leave the part without a checksum the
//! store checks, since s3s-fs verifies neither `Content-MD5` nor `x-amz-checksum-*` on
//! UploadPart.
//!
//! The files: [`builder`] reads the settings (the upload options in [`options`]),
//! [`credential`] finds the credentials and signs (the web identity in [`identity`]),
//! `client` says what S3 adds to the shared REST layer, `read` reads an archive back
//! (`verify`), and this file is the store.

use std::io::Read;
use std::sync::Mutex;

use s3::command::{Command, Multipart};
use s3::creds::Credentials;
use s3::request::blocking::AttoRequest;
use s3::request::Request as _;
use s3::serde_types::CompleteMultipartUploadData;
use s3::{Bucket, Region};

pub mod builder;
mod client;
pub mod credential;
pub mod identity;
pub mod options;
mod read;

pub use builder::S3Settings;

use crate::checksum::sha256_hex;
use crate::retry::RetryBudget;
use crate::store::client::claim::{Claim, Claims, Existing, Upload};
use crate::store::client::parts::{PartPool, PartReader, Sums};
use crate::store::client::{missing, xml_tag, Answer, Client, Request};
use crate::store::ObjectInfo;
use crate::store::{
    content_type, prefixed, BlobStore, ObjectVersion, PutCondition, PutIf, Staging, StoreError,
    StoreErrorKind, Versioned,
};
use builder::Addressing;
use client::S3Protocol;
use credential::CredentialProvider;

const MAX_PARTS: u32 = 10_000;

/// An upload whose abort failed, to be aborted later.
struct PendingAbort {
    key: String,
    upload_id: String,
}

pub struct S3Store {
    settings: S3Settings,
    client: Client,
    proto: S3Protocol,
    /// rust-s3's bucket, for URLs only: its credentials are empty and it never sends.
    urls: Box<Bucket>,
    /// Parts, and single PUTs up to the threshold (read whole into one buffer).
    pool: PartPool,
    pending_aborts: Mutex<Vec<PendingAbort>>,
    /// No task's object is replaced by another task's (see [`crate::store::client::claim`]).
    claims: Claims,
}

impl S3Store {
    /// Checks nothing on the network yet: the first request finds the credentials.
    /// Every request is retried under `budget` (see [`crate::store::client`]).
    pub fn open(
        settings: &S3Settings,
        agent: &ureq::Agent,
        budget: RetryBudget,
    ) -> Result<S3Store, StoreError> {
        let endpoint = match &settings.endpoint {
            Some(e) => e.clone(),
            None => format!("https://s3.{}.amazonaws.com", settings.region),
        };
        let region = Region::Custom {
            region: settings.region.clone(),
            endpoint,
        };
        // The default (path-style for a custom endpoint or a dotted bucket name, whose
        // virtual host the TLS wildcard does not cover) or SP_TASK_SYNC_S3_ADDRESSING.
        let path_style = settings.addressing == Addressing::Path;
        let anonymous = Credentials::anonymous().map_err(|e| {
            StoreError::new(
                StoreErrorKind::Rejected,
                format!("rust-s3 credentials: {e}"),
            )
        })?;
        let mut urls = Bucket::new(&settings.bucket, region.clone(), anonymous).map_err(|e| {
            StoreError::new(
                StoreErrorKind::Rejected,
                format!("S3 bucket {}: {e}", settings.bucket),
            )
        })?;
        if path_style {
            urls.set_path_style();
        }
        Ok(S3Store {
            settings: settings.clone(),
            client: Client::new(agent, budget),
            proto: S3Protocol {
                region,
                bucket: settings.bucket.clone(),
                credentials: CredentialProvider::new(settings.credentials.clone(), agent.clone()),
            },
            urls,
            pool: PartPool::new(settings.part_size as usize),
            pending_aborts: Mutex::new(Vec::new()),
            claims: Claims::default(),
        })
    }

    /// The largest object sent in one PUT: it fits the first part, or is announced up
    /// to the threshold.
    fn single_request(&self) -> u64 {
        self.settings
            .multipart_threshold
            .max(self.settings.part_size)
    }

    /// The task's metadata as `x-amz-meta-*` headers.
    fn metadata(info: &ObjectInfo) -> Vec<(String, String)> {
        info.metadata('-')
            .into_iter()
            .map(|(k, v)| (format!("x-amz-meta-{k}"), v))
            .collect()
    }

    fn full_key(&self, key: &str) -> String {
        prefixed(&self.settings.prefix, key)
    }

    fn location(&self, key: &str) -> String {
        format!("s3://{}/{}", self.settings.bucket, key)
    }

    /// The request URL rust-s3 builds for `command` on `key`.
    fn url(&self, key: &str, command: Command) -> Result<String, StoreError> {
        let request = AttoRequest::new(&self.urls, key, command)
            .map_err(|e| StoreError::new(StoreErrorKind::Rejected, e.to_string()))?;
        request
            .url()
            .map(|u| u.to_string())
            .map_err(|e| StoreError::new(StoreErrorKind::Rejected, e.to_string()))
    }

    fn put_command<'a>(multipart: Option<Multipart<'a>>) -> Command<'a> {
        Command::PutObject {
            content: &[],
            content_type: "",
            custom_headers: None,
            multipart,
        }
    }

    /// One PUT of a whole object, with `extra` headers (conditions). Returns the answer
    /// for the caller to judge (200, 412, ...).
    fn put_object(
        &self,
        key: &str,
        bytes: &[u8],
        sha256: &str,
        extra: &[(&str, String)],
    ) -> Result<Answer, StoreError> {
        let url = self.url(key, Self::put_command(None))?;
        let what = format!("S3 PUT of {}", self.location(key));
        self.client.send(&self.proto, &what, || {
            let mut r = Request::new("PUT", url.clone())
                .header("content-type", content_type(key))
                .header("x-amz-content-sha256", sha256)
                .body(bytes);
            for (n, v) in self.settings.options.headers().iter().chain(extra) {
                r = r.header(n, v.clone());
            }
            Ok(r)
        })
    }

    /// One PUT of an object whose bytes are in memory: for a task's file (`claim`), a
    /// conditional create, and another task's object is not replaced.
    fn put_single(
        &self,
        key: &str,
        bytes: &[u8],
        sha256: &str,
        meta: &[(String, String)],
        claim: Option<&Claim>,
    ) -> Result<(), StoreError> {
        let what = format!("S3 PUT of {}", self.location(key));
        let upload = |cond: Option<&PutCondition>| {
            let mut headers: Vec<(&str, String)> =
                meta.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
            match cond {
                Some(PutCondition::IfAbsent) => headers.push(("if-none-match", "*".into())),
                Some(PutCondition::IfMatch(v)) => headers.push(("if-match", v.0.clone())),
                None => {}
            }
            let answer = self.put_object(key, bytes, sha256, &headers)?;
            match answer.status {
                200 | 201 | 204 => Ok(Upload::Done),
                // 409: a conditional write raced with another one on the same key.
                412 | 409 if cond.is_some() => Ok(Upload::ConditionFailed),
                // If-Match on an object that is gone.
                404 if answer.code == "NoSuchKey" && cond.is_some() => Ok(Upload::ConditionFailed),
                501 if cond.is_some() => Ok(Upload::ConditionsUnsupported),
                404 => Err(missing(&self.proto)),
                _ => Err(self.client.unexpected(&self.proto, &what, &answer)),
            }
        };
        self.claims.write(claim, upload, || self.existing(key))
    }

    /// The task id and ETag of the object under `key`, `None` when there is none.
    fn existing(&self, key: &str) -> Result<Option<Existing>, StoreError> {
        Ok(self.head(key)?.map(|h| Existing {
            task_id: h.task_id,
            version: h.etag.map(ObjectVersion),
        }))
    }

    /// Streams the rest of `parts` as a multipart upload whose first part was read.
    fn put_multipart(
        &self,
        key: &str,
        src: &mut dyn Read,
        parts: &mut PartReader,
        first_sha: String,
        first_len: usize,
        meta: &[(String, String)],
    ) -> Result<u64, StoreError> {
        let url = self.url(
            key,
            Command::InitiateMultipartUpload {
                content_type: content_type(key),
            },
        )?;
        let what = format!("S3 CreateMultipartUpload of {}", self.location(key));
        let answer = self.client.send(&self.proto, &what, || {
            let mut r = Request::new("POST", url.clone()).header("content-type", content_type(key));
            // Encryption, class and metadata are given when the upload starts, not per part.
            for (n, v) in self.settings.options.headers() {
                r = r.header(n, v);
            }
            for (n, v) in meta {
                r = r.header(n, v.clone());
            }
            Ok(r)
        })?;
        let started = answer.header("date").and_then(http_date);
        let upload_id = match answer.status {
            200 => xml_tag(&String::from_utf8_lossy(&answer.body), "UploadId")
                .filter(|id| !id.is_empty())
                .ok_or_else(|| {
                    StoreError::transient(format!("{what}: the answer names no UploadId"))
                })?,
            404 => return Err(missing(&self.proto)),
            _ => return Err(self.client.unexpected(&self.proto, &what, &answer)),
        };
        log::debug!("multipart upload to {} started", self.location(key));
        let result = self.upload_parts(key, &upload_id, src, parts, first_sha, first_len, started);
        match result {
            Ok(total) => Ok(total),
            Err(e) => {
                self.abort(key, &upload_id);
                Err(e)
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn upload_parts(
        &self,
        key: &str,
        upload_id: &str,
        src: &mut dyn Read,
        reader: &mut PartReader,
        first_sha: String,
        first_len: usize,
        started: Option<i64>,
    ) -> Result<u64, StoreError> {
        // The first part was read (and hashed) before the upload began; it is still in
        // the reader's buffer, which the next `next_part` refills.
        let mut done: Vec<s3::serde_types::Part> = Vec::new();
        let mut total = 0u64;
        let first = reader.current();
        let etag = self.upload_part(key, upload_id, 1, first, &first_sha)?;
        done.push(s3::serde_types::Part {
            part_number: 1,
            etag,
        });
        total += first_len as u64;
        while let Some(part) = reader.next_part(src)? {
            if part.number > MAX_PARTS {
                return Err(StoreError::new(
                    StoreErrorKind::Rejected,
                    format!(
                        "{} is larger than {MAX_PARTS} parts of {} bytes",
                        self.location(key),
                        self.settings.part_size
                    ),
                ));
            }
            let sha = part.sha256.clone().unwrap_or_default();
            let etag = self.upload_part(key, upload_id, part.number, part.bytes, &sha)?;
            done.push(s3::serde_types::Part {
                part_number: part.number,
                etag,
            });
            total += part.bytes.len() as u64;
        }
        self.complete(key, upload_id, done, total, started)?;
        Ok(total)
    }

    fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        number: u32,
        bytes: &[u8],
        sha256: &str,
    ) -> Result<String, StoreError> {
        let url = self.url(
            key,
            Self::put_command(Some(Multipart::new(number, upload_id))),
        )?;
        let what = format!("S3 UploadPart {number} of {}", self.location(key));
        let answer = self.client.send(&self.proto, &what, || {
            Ok(Request::new("PUT", url.clone())
                .header("x-amz-content-sha256", sha256)
                .body(bytes))
        })?;
        match (answer.status, answer.header("etag")) {
            (200, Some(etag)) => Ok(etag.to_string()),
            (200, None) => Err(StoreError::transient(format!(
                "{what}: the answer has no ETag"
            ))),
            (404, _) if answer.code == "NoSuchUpload" => Err(StoreError::restart(format!(
                "{what}: the upload is gone (NoSuchUpload); the object starts over"
            ))),
            (404, _) => Err(missing(&self.proto)),
            _ => Err(self.client.unexpected(&self.proto, &what, &answer)),
        }
    }

    /// CompleteMultipartUpload. When its answer was lost and the retry finds the upload
    /// gone (AWS: 404 `NoSuchUpload`; s3s-fs: 403 `AccessDenied`), a HEAD decides: an
    /// object of the uploaded size written since the upload began is ours.
    fn complete(
        &self,
        key: &str,
        upload_id: &str,
        parts: Vec<s3::serde_types::Part>,
        total: u64,
        started: Option<i64>,
    ) -> Result<(), StoreError> {
        let xml = CompleteMultipartUploadData { parts }.to_string();
        let sha = sha256_hex(xml.as_bytes());
        // Complete and Abort share the URL `<key>?uploadId=<id>` (POST and DELETE).
        let url = self.url(key, Command::AbortMultipartUpload { upload_id })?;
        let what = format!("S3 CompleteMultipartUpload of {}", self.location(key));
        let mut tries = 0;
        let answer = self.client.send(&self.proto, &what, || {
            tries += 1;
            Ok(Request::new("POST", url.clone())
                .header("content-type", "application/xml")
                .header("x-amz-content-sha256", sha.clone())
                .body(xml.as_bytes()))
        });
        let gone = match &answer {
            Ok(a) => a.status == 404 && a.code == "NoSuchUpload",
            Err(e) => e.kind == StoreErrorKind::Denied && e.message.contains("AccessDenied"),
        };
        if gone && tries > 1 {
            match self.head(key)? {
                Some(h) if h.size == total && started.is_none_or(|s| h.modified >= s) => {
                    log::info!(
                        "{what}: the answer was lost; the object is there with its {total} bytes"
                    );
                    return Ok(());
                }
                _ => {}
            }
        }
        let answer = answer?;
        match answer.status {
            200 => Ok(()),
            404 if answer.code == "NoSuchUpload" => Err(StoreError::restart(format!(
                "{what}: the upload is gone (NoSuchUpload) and no complete object is there"
            ))),
            404 => Err(missing(&self.proto)),
            _ => Err(self.client.unexpected(&self.proto, &what, &answer)),
        }
    }

    /// Size and Last-Modified (UNIX seconds) of an object, `None` when there is none.
    fn head(&self, key: &str) -> Result<Option<Head>, StoreError> {
        let url = self.url(key, Command::HeadObject)?;
        let what = format!("S3 HEAD of {}", self.location(key));
        let answer = self
            .client
            .send(&self.proto, &what, || Ok(Request::new("HEAD", url.clone())))?;
        match answer.status {
            200 => Ok(Some(Head {
                size: answer
                    .header("content-length")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0),
                modified: answer
                    .header("last-modified")
                    .and_then(http_date)
                    .unwrap_or(0),
                etag: answer.header("etag").map(str::to_string),
                task_id: answer.header("x-amz-meta-task-id").map(str::to_string),
            })),
            404 => Ok(None),
            _ => Err(self.client.unexpected(&self.proto, &what, &answer)),
        }
    }

    /// Aborts an upload; if that fails it is kept for a later try.
    fn abort(&self, key: &str, upload_id: &str) {
        match self.try_abort(key, upload_id) {
            Ok(()) => log::debug!("multipart upload to {} aborted", self.location(key)),
            Err(e) => {
                log::warn!("{}; will try again before the next upload", e.report());
                self.pending_aborts
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(PendingAbort {
                        key: key.to_string(),
                        upload_id: upload_id.to_string(),
                    });
            }
        }
    }

    fn try_abort(&self, key: &str, upload_id: &str) -> Result<(), StoreError> {
        let url = self.url(key, Command::AbortMultipartUpload { upload_id })?;
        let what = format!("S3 AbortMultipartUpload of {}", self.location(key));
        // One try here: a failed abort is kept and tried again before the next upload.
        let once = Client::new(&self.client.agent, RetryBudget::tries(1));
        let answer = once.send(&self.proto, &what, || {
            Ok(Request::new("DELETE", url.clone()))
        })?;
        match answer.status {
            // 404: already gone (aborted or never completed): nothing is left to clean.
            200 | 204 | 404 => Ok(()),
            _ => Err(self.client.unexpected(&self.proto, &what, &answer)),
        }
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

/// What a HEAD says about an object.
struct Head {
    size: u64,
    /// UNIX seconds.
    modified: i64,
    etag: Option<String>,
    /// `x-amz-meta-task-id`: the task the object was stored for.
    task_id: Option<String>,
}

/// An IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`) as UNIX seconds.
fn http_date(text: &str) -> Option<i64> {
    let format = time::macros::format_description!(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
    );
    time::PrimitiveDateTime::parse(text.trim(), &format)
        .ok()
        .map(|t| t.assume_utc().unix_timestamp())
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

    fn put_with(
        &self,
        key: &str,
        src: &mut dyn Read,
        size: Option<u64>,
        info: &ObjectInfo,
    ) -> Result<u64, StoreError> {
        let meta = Self::metadata(info);
        let claim = Claim::of(key, info);
        self.retry_pending_aborts();
        let key = self.full_key(key);
        let sums = Sums {
            sha256: true,
            ..Sums::default()
        };
        // Objects announced up to the threshold go up in one PUT, read whole.
        let threshold = self.settings.multipart_threshold;
        let mut parts = PartReader::reading_whole(&self.pool, size, threshold, sums);
        let first = parts.next_part(src)?.expect("the first part always exists");
        let (len, last, sha) = (
            first.bytes.len(),
            first.last,
            first.sha256.clone().unwrap_or_default(),
        );
        if last {
            self.put_single(&key, parts.current(), &sha, &meta, claim.as_ref())?;
            return Ok(len as u64);
        }
        // One HEAD before the parts (negligible next to them) guards a large object.
        if let Some(claim) = &claim {
            claim.check(self.existing(&key)?)?;
        }
        self.put_multipart(&key, src, &mut parts, sha, len, &meta)
    }

    fn staging(&self) -> Option<Staging<'_>> {
        Some(Staging {
            pool: &self.pool,
            single_request: self.single_request(),
        })
    }

    /// One PUT from `bytes` (a multipart upload above [`Staging::single_request`]).
    fn put_whole(&self, key: &str, bytes: &[u8], info: &ObjectInfo) -> Result<u64, StoreError> {
        if bytes.len() as u64 > self.single_request() {
            return self.put_with(key, &mut &bytes[..], Some(bytes.len() as u64), info);
        }
        let claim = Claim::of(key, info);
        self.retry_pending_aborts();
        let key = self.full_key(key);
        let sha = sha256_hex(bytes);
        self.put_single(&key, bytes, &sha, &Self::metadata(info), claim.as_ref())?;
        Ok(bytes.len() as u64)
    }

    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.get_versioned(key).map(|v| v.map(|v| v.bytes))
    }

    fn delete(&self, key: &str) -> Result<(), StoreError> {
        let key = self.full_key(key);
        let url = self.url(&key, Command::DeleteObject)?;
        let what = format!("S3 DELETE of {}", self.location(&key));
        let answer = self.client.send(&self.proto, &what, || {
            Ok(Request::new("DELETE", url.clone()))
        })?;
        match answer.status {
            200 | 204 => Ok(()),
            404 if !answer.code.is_empty() && answer.code != "NoSuchKey" => {
                Err(missing(&self.proto))
            }
            404 => Ok(()),
            _ => Err(self.client.unexpected(&self.proto, &what, &answer)),
        }
    }

    fn get_versioned(&self, key: &str) -> Result<Option<Versioned>, StoreError> {
        let key = self.full_key(key);
        let url = self.url(&key, Command::GetObject)?;
        let what = format!("S3 GET of {}", self.location(&key));
        let answer = self
            .client
            .send(&self.proto, &what, || Ok(Request::new("GET", url.clone())))?;
        match answer.status {
            200 => {
                let version = ObjectVersion(answer.header("etag").unwrap_or_default().to_string());
                Ok(Some(Versioned {
                    bytes: answer.body,
                    version,
                }))
            }
            404 if answer.code == "NoSuchKey" || answer.code.is_empty() => Ok(None),
            404 => Err(missing(&self.proto)),
            _ => Err(self.client.unexpected(&self.proto, &what, &answer)),
        }
    }

    fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        self.list_names(prefix)
    }

    fn size(&self, key: &str) -> Result<Option<u64>, StoreError> {
        self.object_size(key)
    }

    fn stream(&self, key: &str) -> Result<Option<Box<dyn Read + '_>>, StoreError> {
        self.object_stream(key)
    }

    fn put_if(&self, key: &str, bytes: &[u8], cond: PutCondition) -> Result<PutIf, StoreError> {
        let key = self.full_key(key);
        let header = match &cond {
            PutCondition::IfAbsent => ("if-none-match", "*".to_string()),
            PutCondition::IfMatch(v) => ("if-match", v.0.clone()),
        };
        let what = format!("S3 conditional PUT of {}", self.location(&key));
        let answer = self.put_object(&key, bytes, &sha256_hex(bytes), &[header])?;
        match answer.status {
            200 | 201 | 204 => {
                let version = match answer.header("etag") {
                    Some(e) => e.to_string(),
                    None => self.head(&key)?.and_then(|h| h.etag).unwrap_or_default(),
                };
                Ok(PutIf::Written(ObjectVersion(version)))
            }
            // 409: a conditional write raced with another one on the same key.
            412 | 409 => Ok(PutIf::ConditionFailed),
            404 if matches!(cond, PutCondition::IfMatch(_)) && answer.code == "NoSuchKey" => {
                Ok(PutIf::ConditionFailed)
            }
            404 => Err(missing(&self.proto)),
            _ => Err(self.client.unexpected(&self.proto, &what, &answer)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::env::Env;

    fn env(pairs: &[(&str, &str)]) -> Env {
        Env::from_pairs(pairs.iter().copied())
    }

    #[test]
    fn addressing_decides_the_urls() {
        let store = |pairs: &[(&str, &str)]| {
            let mut errors = Vec::new();
            let mut all = vec![
                ("SP_TASK_SYNC_S3_BUCKET", "calls"),
                ("AWS_REGION", "eu-central-1"),
                ("AWS_ACCESS_KEY_ID", "a"),
                ("AWS_SECRET_ACCESS_KEY", "b"),
            ];
            all.extend_from_slice(pairs);
            let s = S3Settings::from_env(&env(&all), &mut errors).unwrap();
            assert!(errors.is_empty(), "{errors:?}");
            let agent = crate::http::agent(std::time::Duration::from_secs(1), 1);
            S3Store::open(&s, &agent, RetryBudget::tries(1)).unwrap()
        };
        let aws = store(&[]);
        assert_eq!(
            aws.url("k/a.ogg", Command::GetObject).unwrap(),
            "https://calls.s3.eu-central-1.amazonaws.com/k/a.ogg"
        );
        let minio = store(&[("AWS_ENDPOINT_URL", "https://minio.example:9000")]);
        assert_eq!(
            minio.url("k", Command::GetObject).unwrap(),
            "https://minio.example:9000/calls/k",
            "path-style with an endpoint by default"
        );
        let virt = store(&[
            ("AWS_ENDPOINT_URL", "https://minio.example:9000"),
            ("SP_TASK_SYNC_S3_ADDRESSING", "virtual"),
        ]);
        assert_eq!(
            virt.url("k", Command::GetObject).unwrap(),
            "https://calls.minio.example:9000/k"
        );
        let path = store(&[("SP_TASK_SYNC_S3_ADDRESSING", "path")]);
        assert_eq!(
            path.url("k", Command::GetObject).unwrap(),
            "https://s3.eu-central-1.amazonaws.com/calls/k"
        );
    }

    #[test]
    fn http_dates_parse() {
        assert_eq!(http_date("Sun, 06 Nov 1994 08:49:37 GMT"), Some(784111777));
        assert_eq!(http_date("yesterday"), None);
    }
}
