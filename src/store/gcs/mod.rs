//! Google Cloud Storage through its JSON API, on the shared ureq agent.
//!
//! A hand-written client for the four calls the connector needs, instead of an async
//! SDK: simple media upload (`uploadType=media`) for objects that fit in one chunk,
//! resumable upload (`uploadType=resumable`) for larger ones, `alt=media` reads and
//! deletes. Credentials live in [`credential`].
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
//! acknowledged earlier was lost) or be gone (404/410), the put fails as `Restart`:
//! nothing is visible, and the engine transfers the file anew. (fake-gcs appends a resent body without checking its
//! offset, so there a chunk whose answer alone was lost would be stored twice; real
//! GCS does not do that.)
//!
//! Requests go through the shared REST layer ([`crate::store::client`]), which retries each
//! under the store's budget. GCS answers the same 404 for a missing bucket and a
//! missing object, so a 404 of an object request is followed by one bucket GET (until
//! the bucket answered once). Integrity: the media upload and the last resumable chunk
//! carry the object's CRC32C (`x-goog-hash`, computed while the chunks are read), which
//! GCS checks before it makes the object; fake-gcs-server checks nothing, so the
//! answer's `crc32c` is compared as well and a media upload that differs is sent again
//! (a multipart one, a conditional create, is reported lost, `Restart`: the engine sends
//! it again from its source, and the claim replaces the object, this task's).
//!
//! A resumable session is the `Location` its start answers with; it must be on the
//! endpoint's origin, since every request to it carries the bearer token. A task's
//! small file is a conditional create, so that another task's object is never
//! replaced ([`crate::store::client::claim`]).
//!
//! Every upload names `SP_TASK_SYNC_GCS_KMS_KEY_NAME` (`kmsKeyName`) and carries the
//! object resource with `SP_TASK_SYNC_GCS_STORAGE_CLASS` and the task's metadata
//! (`task-id`, `data-type`): in a resumable session's start, or in a multipart upload
//! instead of a media upload for a small object (a media upload cannot carry one). A
//! multipart body is sent as its frame's two halves around the object's own buffer,
//! never assembled in a second one ([`crate::store::client::Body`]), so a small object
//! costs one chunk of memory at most, as a large one does.
//!
//! The files: [`builder`] reads the settings, [`credential`] finds the credentials and
//! keeps the token (workload identity federation in [`identity`]), `client` says what
//! GCS adds to the shared REST layer, `read` reads an archive back (`verify`), and
//! this file is the store.

use std::io::Read;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

pub mod builder;
mod client;
pub mod credential;
pub mod identity;
mod read;

pub use builder::GcsSettings;

use crate::encoding::percent_encode;
use crate::retry::RetryBudget;
use crate::store::client::claim::{Claim, Claims, Existing, Upload};
use crate::store::client::parts::{PartPool, PartReader, Sums};
use crate::store::client::{missing, Answer, Client, Request};
use crate::store::ObjectInfo;
use crate::store::{
    content_type, prefixed, BlobStore, ObjectVersion, PutCondition, PutIf, Staging, StoreError,
    StoreErrorKind, Versioned,
};
use builder::{CHUNK_GRANULARITY, DEFAULT_ENDPOINT};
use client::{GcsProtocol, Multipart};
use credential::TokenSource;

pub struct GcsStore {
    settings: GcsSettings,
    client: Client,
    proto: GcsProtocol,
    pool: PartPool,
    /// The bucket answered once: a 404 is then about the object (GCS and
    /// fake-gcs-server answer both with the same 404).
    bucket_seen: AtomicBool,
    /// No task's object is replaced by another task's (see [`crate::store::client::claim`]).
    claims: Claims,
}

impl GcsStore {
    pub fn open(
        settings: &GcsSettings,
        agent: &ureq::Agent,
        budget: RetryBudget,
    ) -> Result<GcsStore, StoreError> {
        if settings.chunk_size == 0 || !settings.chunk_size.is_multiple_of(CHUNK_GRANULARITY) {
            return Err(StoreError::new(
                StoreErrorKind::Rejected,
                format!(
                    "the GCS chunk size {} is not a multiple of 256 KiB",
                    settings.chunk_size
                ),
            ));
        }
        Ok(GcsStore {
            settings: settings.clone(),
            client: Client::new(agent, budget),
            proto: GcsProtocol {
                agent: agent.clone(),
                tokens: TokenSource::new(settings.credentials.clone()),
                bucket: settings.bucket.clone(),
            },
            pool: PartPool::new(settings.chunk_size),
            bucket_seen: AtomicBool::new(false),
            claims: Claims::default(),
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

    /// The upload URL; with `SP_TASK_SYNC_GCS_KMS_KEY_NAME`, every upload names the key.
    fn upload_url(&self, name: &str, upload_type: &str) -> String {
        let mut url = format!(
            "{}/upload/storage/v1/b/{}/o?uploadType={upload_type}&name={}&userProject={}",
            self.settings.endpoint,
            self.settings.bucket,
            percent_encode(name, false),
            percent_encode(&self.settings.project, false)
        );
        if let Some(key) = &self.settings.options.kms_key_name {
            url.push_str(&format!("&kmsKeyName={}", percent_encode(key, false)));
        }
        url
    }

    /// The object resource sent with an upload: name, content type, the storage class
    /// and the user metadata (task id, data type).
    fn resource(&self, name: &str, info: &ObjectInfo) -> serde_json::Value {
        let mut r = serde_json::json!({ "name": name, "contentType": content_type(name) });
        if let Some(class) = &self.settings.options.storage_class {
            r["storageClass"] = class.clone().into();
        }
        let meta = info.metadata('-');
        if !meta.is_empty() {
            let meta: serde_json::Map<String, serde_json::Value> =
                meta.into_iter().map(|(k, v)| (k, v.into())).collect();
            r["metadata"] = meta.into();
        }
        r
    }

    /// One upload with the resource (class, metadata) beside the bytes. Used instead of
    /// a media upload when there is a resource to send; the bytes are sent from their
    /// buffer between the two halves of the [`Multipart`] frame, not copied. For a
    /// task's file (`claim`) it is a conditional create, and another task's object is
    /// not replaced. fake-gcs-server checks no hash: an answer whose CRC32C is not the
    /// bytes' is a `Restart` (real GCS refuses such a body), and the object is sent
    /// again from its source: the claim replaces what was stored, which is this task's.
    fn put_multipart(
        &self,
        name: &str,
        data: &[u8],
        crc: u32,
        info: &ObjectInfo,
        claim: Option<&Claim>,
    ) -> Result<(), StoreError> {
        let what = format!("GCS upload of {}", self.gs(name));
        let mut resource = self.resource(name, info);
        resource["crc32c"] = crc32c_b64(crc).into();
        let frame = Multipart::new(&resource, name);
        let upload = |cond: Option<&PutCondition>| {
            let mut url = self.upload_url(name, "multipart");
            match cond {
                Some(PutCondition::IfAbsent) => url.push_str("&ifGenerationMatch=0"),
                Some(PutCondition::IfMatch(v)) => url.push_str(&format!(
                    "&ifGenerationMatch={}",
                    percent_encode(&v.0, false)
                )),
                None => {}
            }
            let answer = self.send(&what, || {
                Ok(Request::new("POST", url.clone())
                    .header("content-type", frame.content_type())
                    .chain(frame.around(data)))
            })?;
            match answer.status {
                200 | 201 => match self.check_crc(&what, &answer, crc) {
                    Ok(()) => Ok(Upload::Done),
                    Err(e) => Err(StoreError::restart(e.message)),
                },
                412 if cond.is_some() => Ok(Upload::ConditionFailed),
                404 => Err(missing(&self.proto)),
                _ => Err(self.client.unexpected(&self.proto, &what, &answer)),
            }
        };
        self.claims.write(claim, upload, || self.existing(name))
    }

    fn send<'a>(
        &self,
        what: &str,
        build: impl FnMut() -> Result<Request<'a>, StoreError>,
    ) -> Result<Answer, StoreError> {
        let answer = self.client.send(&self.proto, what, build)?;
        if answer.status < 300 {
            self.bucket_seen.store(true, Ordering::Relaxed);
        }
        Ok(answer)
    }

    /// A 404 of an object request: a missing object, or a missing bucket (asked once).
    fn not_found(&self) -> Result<(), StoreError> {
        if self.bucket_seen.load(Ordering::Relaxed) {
            return Ok(());
        }
        let url = format!(
            "{}/storage/v1/b/{}?userProject={}",
            self.settings.endpoint,
            self.settings.bucket,
            percent_encode(&self.settings.project, false)
        );
        let what = format!("GCS bucket {}", self.gs(""));
        let answer = self.send(&what, || Ok(Request::new("GET", url.clone())))?;
        match answer.status {
            200 => Ok(()),
            404 => Err(missing(&self.proto)),
            _ => Err(self.client.unexpected(&self.proto, &what, &answer)),
        }
    }

    /// The object's crc32c in an upload's answer, checked against ours: GCS refuses a
    /// mismatch itself (`x-goog-hash`); fake-gcs-server does not, so the answer is
    /// checked too, and a mismatch is an upload that must be done again.
    fn check_crc(&self, what: &str, answer: &Answer, crc: u32) -> Result<(), StoreError> {
        let stored = serde_json::from_slice::<serde_json::Value>(&answer.body)
            .ok()
            .and_then(|v| v["crc32c"].as_str().map(str::to_string));
        match stored {
            Some(s) if s != crc32c_b64(crc) => Err(StoreError::transient(format!(
                "{what}: the stored object's CRC32C {s} is not the uploaded bytes' {}",
                crc32c_b64(crc)
            ))),
            _ => Ok(()),
        }
    }

    /// An object whose bytes are all in memory, in one request: a media upload, or a
    /// multipart one when there is a resource to send (class, metadata).
    fn put_single(
        &self,
        name: &str,
        data: &[u8],
        crc: u32,
        info: &ObjectInfo,
        claim: Option<&Claim>,
    ) -> Result<(), StoreError> {
        if self.settings.options.storage_class.is_none() && info.metadata('-').is_empty() {
            self.put_media(name, data, crc)
        } else {
            self.put_multipart(name, data, crc, info, claim)
        }
    }

    fn put_media(&self, name: &str, data: &[u8], crc: u32) -> Result<(), StoreError> {
        let what = format!("GCS upload of {}", self.gs(name));
        let url = self.upload_url(name, "media");
        let hash = format!("crc32c={}", crc32c_b64(crc));
        // A stored object whose CRC32C is not ours is uploaded again (see check_crc).
        let answer = self.client.send_verified(
            &self.proto,
            &what,
            || {
                Ok(Request::new("POST", url.clone())
                    .header("content-type", content_type(name))
                    .header("x-goog-hash", hash.clone())
                    .body(data))
            },
            |a| match a.status {
                200 | 201 => self.check_crc(&what, a, crc),
                _ => Ok(()),
            },
        )?;
        match answer.status {
            200 | 201 => {
                self.bucket_seen.store(true, Ordering::Relaxed);
                Ok(())
            }
            404 => Err(missing(&self.proto)),
            _ => Err(self.client.unexpected(&self.proto, &what, &answer)),
        }
    }

    /// Streams the reader's parts through a resumable session; returns the bytes stored.
    fn put_resumable(
        &self,
        name: &str,
        reader: &mut PartReader,
        src: &mut dyn Read,
        info: &ObjectInfo,
    ) -> Result<u64, StoreError> {
        let what = format!("GCS resumable upload of {}", self.gs(name));
        let url = self.upload_url(name, "resumable");
        // The session's start carries the resource: class and metadata are set there.
        let resource = self.resource(name, info).to_string().into_bytes();
        let answer = self.send(&what, || {
            Ok(Request::new("POST", url.clone())
                .header("content-type", "application/json; charset=UTF-8")
                .header("x-upload-content-type", content_type(name))
                .body(&resource))
        })?;
        let session = match (answer.status, answer.header("location")) {
            (200 | 201, Some(location)) => self.session_url(&what, location)?,
            (200 | 201, None) => {
                return Err(StoreError::transient(format!(
                    "{what}: the server gave no session (Location)"
                )))
            }
            (404, _) => return Err(missing(&self.proto)),
            _ => return Err(self.client.unexpected(&self.proto, &what, &answer)),
        };
        let result = self.send_chunks(&what, &session, reader, src);
        if result.is_err() {
            // Best effort: an unfinished session is never visible and expires anyway.
            let once = Client::new(&self.client.agent, RetryBudget::tries(1));
            let _ = once.send(&self.proto, &what, || {
                Ok(Request::new("DELETE", session.clone()))
            });
        }
        result
    }

    /// The session URL of a `Location`, which must be on the endpoint's own origin
    /// (scheme, host and port): every request to it carries the bearer token, which
    /// must never go anywhere else. Another origin is refused, and nothing is sent there.
    fn session_url(&self, what: &str, location: &str) -> Result<String, StoreError> {
        let endpoint = url::Url::parse(&self.settings.endpoint).map_err(|_| {
            StoreError::new(
                StoreErrorKind::Rejected,
                format!(
                    "{what}: the endpoint {} is not a URL",
                    self.settings.endpoint
                ),
            )
        })?;
        let session = endpoint.join(location).map_err(|_| {
            StoreError::new(
                StoreErrorKind::Rejected,
                format!("{what}: the server's upload session (Location) is not a URL"),
            )
        })?;
        if session.origin() != endpoint.origin() {
            return Err(StoreError::new(
                StoreErrorKind::Rejected,
                format!(
                    "{what}: the server named an upload session on another origin ({}) than the \
                     endpoint's ({}); nothing was sent there (each request to it would carry the \
                     credentials)",
                    session.origin().ascii_serialization(),
                    endpoint.origin().ascii_serialization()
                ),
            ));
        }
        Ok(session.to_string())
    }

    fn send_chunks(
        &self,
        what: &str,
        session: &str,
        reader: &mut PartReader,
        src: &mut dyn Read,
    ) -> Result<u64, StoreError> {
        // The first chunk was read before the session began: send it from the buffer.
        let mut start = 0u64;
        let mut len = reader.current().len();
        let mut last = reader.is_last();
        loop {
            let crc = last.then(|| reader.crc32c());
            self.send_chunk(what, session, reader.current(), start, crc)?;
            if last {
                return Ok(start + len as u64);
            }
            match reader.next_part(src)? {
                Some(p) => {
                    start = p.offset;
                    len = p.bytes.len();
                    last = p.last;
                }
                None => return Ok(start + len as u64),
            }
        }
    }

    /// Sends `data`, the chunk at offset `start`, until the server has all of it,
    /// resending what it did not confirm (see the module comment). `crc` is the whole
    /// object's CRC32C when this is the last chunk.
    fn send_chunk(
        &self,
        what: &str,
        session: &str,
        data: &[u8],
        start: u64,
        crc: Option<u32>,
    ) -> Result<(), StoreError> {
        let end = start + data.len() as u64;
        let total = match crc {
            Some(_) => end.to_string(),
            None => "*".to_string(),
        };
        let hash = crc.map(|c| format!("crc32c={}", crc32c_b64(c)));
        let mut from = start;
        let mut stalls = 0;
        loop {
            let part = &data[(from - start) as usize..];
            let range = if part.is_empty() {
                format!("bytes */{total}")
            } else {
                format!("bytes {from}-{}/{total}", end - 1)
            };
            let answer = self.send(what, || {
                let mut r = Request::new("PUT", session.to_string())
                    .header("content-range", range.clone())
                    .body(part);
                if let Some(h) = &hash {
                    r = r.header("x-goog-hash", h.clone());
                }
                Ok(r)
            })?;
            match answer.status {
                200 | 201 if crc.is_some() => {
                    return self.check_crc(what, &answer, crc.unwrap_or_default())
                }
                200 | 201 => {
                    return Err(StoreError::transient(format!(
                    "{what}: the server finished the upload at byte {end}, before the source's end"
                )))
                }
                308 => {
                    let committed = committed_offset(answer.header("range"));
                    if committed < start || committed > end {
                        return Err(StoreError::restart(format!(
                            "{what}: the server holds {committed} bytes where {start} to {end} were expected; \
                             the upload must start over"
                        )));
                    }
                    if committed == end && crc.is_none() {
                        return Ok(());
                    }
                    if committed <= from {
                        stalls += 1;
                        if stalls >= STALLS {
                            return Err(StoreError::restart(format!(
                                "{what}: the server keeps confirming only {committed} bytes"
                            )));
                        }
                        crate::shutdown::sleep(Duration::from_millis(100 * stalls as u64));
                    }
                    from = committed;
                }
                404 | 410 => {
                    return Err(StoreError::restart(format!(
                        "{what}: the upload session is gone (HTTP {}); the upload must start over",
                        answer.status
                    )))
                }
                _ => return Err(self.client.unexpected(&self.proto, what, &answer)),
            }
        }
    }

    /// The object's resource (its metadata, without the bytes), `None` when there is none.
    /// An answer that is not a JSON object is a broken answer, asked again.
    fn resource_of(&self, name: &str) -> Result<Option<serde_json::Value>, StoreError> {
        let what = format!("GCS metadata of {}", self.gs(name));
        let url = self.object_url(name);
        let parse = |a: &Answer| {
            serde_json::from_slice::<serde_json::Value>(&a.body)
                .ok()
                .filter(serde_json::Value::is_object)
                .ok_or_else(|| {
                    StoreError::transient(format!("{what}: the answer is not a JSON object"))
                })
        };
        let answer = self.client.send_verified(
            &self.proto,
            &what,
            || Ok(Request::new("GET", url.clone())),
            |a| match a.status {
                200 => parse(a).map(|_| ()),
                _ => Ok(()),
            },
        )?;
        match answer.status {
            200 => {
                self.bucket_seen.store(true, Ordering::Relaxed);
                parse(&answer).map(Some)
            }
            404 => self.not_found().map(|_| None),
            _ => Err(self.client.unexpected(&self.proto, &what, &answer)),
        }
    }

    /// The object's generation from its metadata, `None` when there is none.
    fn generation(&self, name: &str) -> Result<Option<String>, StoreError> {
        Ok(self.resource_of(name)?.and_then(|r| generation_of(&r)))
    }

    /// The task id (`metadata.task-id`) and generation of the object, if there is one.
    fn existing(&self, name: &str) -> Result<Option<Existing>, StoreError> {
        Ok(self.resource_of(name)?.map(|r| Existing {
            task_id: r["metadata"]["task-id"].as_str().map(str::to_string),
            version: generation_of(&r).map(ObjectVersion),
        }))
    }
}

/// Consecutive 308s confirming nothing new before a chunk gives up.
const STALLS: u32 = 4;

fn generation_of(resource: &serde_json::Value) -> Option<String> {
    match &resource["generation"] {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// GCS writes a CRC32C as base64 of its four big-endian bytes.
fn crc32c_b64(crc: u32) -> String {
    crate::encoding::base64(&crc.to_be_bytes())
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

    fn put_with(
        &self,
        key: &str,
        src: &mut dyn Read,
        size: Option<u64>,
        info: &ObjectInfo,
    ) -> Result<u64, StoreError> {
        let name = self.object_name(key);
        let claim = Claim::of(key, info);
        let sums = Sums {
            crc32c_whole: true,
            ..Sums::default()
        };
        let mut reader = PartReader::new(&self.pool, size, sums);
        let first = reader.next_part(src)?.expect("a first part");
        let (len, last) = (first.bytes.len(), first.last);
        if last {
            let crc = reader.crc32c();
            self.put_single(&name, reader.current(), crc, info, claim.as_ref())?;
            return Ok(len as u64);
        }
        // One metadata read before the chunks (negligible next to them) guards a large object.
        if let Some(claim) = &claim {
            claim.check(self.existing(&name)?)?;
        }
        self.put_resumable(&name, &mut reader, src, info)
    }

    fn staging(&self) -> Option<Staging<'_>> {
        Some(Staging {
            pool: &self.pool,
            single_request: self.settings.chunk_size as u64,
        })
    }

    /// One upload from `bytes` (a resumable one above one chunk).
    fn put_whole(&self, key: &str, bytes: &[u8], info: &ObjectInfo) -> Result<u64, StoreError> {
        if bytes.len() > self.settings.chunk_size {
            return self.put_with(key, &mut &bytes[..], Some(bytes.len() as u64), info);
        }
        let name = self.object_name(key);
        let claim = Claim::of(key, info);
        let crc = crate::checksum::crc32c(bytes);
        self.put_single(&name, bytes, crc, info, claim.as_ref())?;
        Ok(bytes.len() as u64)
    }

    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let name = self.object_name(key);
        let what = format!("GCS read of {}", self.gs(&name));
        let url = format!("{}&alt=media", self.object_url(&name));
        let answer = self.send(&what, || Ok(Request::new("GET", url.clone())))?;
        match answer.status {
            200 => Ok(Some(answer.body)),
            404 => self.not_found().map(|_| None),
            _ => Err(self.client.unexpected(&self.proto, &what, &answer)),
        }
    }

    fn delete(&self, key: &str) -> Result<(), StoreError> {
        let name = self.object_name(key);
        let what = format!("GCS delete of {}", self.gs(&name));
        let url = self.object_url(&name);
        let answer = self.send(&what, || Ok(Request::new("DELETE", url.clone())))?;
        match answer.status {
            200 | 204 => Ok(()),
            404 => self.not_found(),
            _ => Err(self.client.unexpected(&self.proto, &what, &answer)),
        }
    }

    /// The generation is read first and the bytes then asked for with
    /// `ifGenerationMatch`, so bytes and version belong together.
    fn get_versioned(&self, key: &str) -> Result<Option<Versioned>, StoreError> {
        let name = self.object_name(key);
        let what = format!("GCS read of {}", self.gs(&name));
        for _ in 0..10 {
            let Some(generation) = self.generation(&name)? else {
                return Ok(None);
            };
            let url = format!(
                "{}&alt=media&ifGenerationMatch={generation}",
                self.object_url(&name)
            );
            let answer = self.send(&what, || Ok(Request::new("GET", url.clone())))?;
            match answer.status {
                200 => {
                    let version = answer
                        .header("x-goog-generation")
                        .map(str::to_string)
                        .unwrap_or(generation);
                    return Ok(Some(Versioned {
                        bytes: answer.body,
                        version: ObjectVersion(version),
                    }));
                }
                // Replaced or removed between the two reads: read again.
                404 | 412 => continue,
                _ => return Err(self.client.unexpected(&self.proto, &what, &answer)),
            }
        }
        Err(StoreError::transient(format!(
            "{what}: the object keeps changing between reading its generation and its bytes"
        )))
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

    /// A multipart upload (metadata and bytes in one request) with `ifGenerationMatch`:
    /// `0` for "absent", the generation for "unchanged".
    fn put_if(&self, key: &str, bytes: &[u8], cond: PutCondition) -> Result<PutIf, StoreError> {
        let name = self.object_name(key);
        let what = format!("GCS conditional upload of {}", self.gs(&name));
        let generation = match &cond {
            PutCondition::IfAbsent => "0".to_string(),
            PutCondition::IfMatch(v) => v.0.clone(),
        };
        let url = format!(
            "{}&ifGenerationMatch={}",
            self.upload_url(&name, "multipart"),
            percent_encode(&generation, false)
        );
        let crc = crc32c_b64(crate::checksum::crc32c(bytes));
        let mut resource = self.resource(&name, &ObjectInfo::default());
        resource["crc32c"] = crc.into();
        let frame = Multipart::new(&resource, &name);
        let answer = self.send(&what, || {
            Ok(Request::new("POST", url.clone())
                .header("content-type", frame.content_type())
                .chain(frame.around(bytes)))
        })?;
        match answer.status {
            200 | 201 => match serde_json::from_slice(&answer.body)
                .ok()
                .and_then(|r| generation_of(&r))
            {
                Some(g) => Ok(PutIf::Written(ObjectVersion(g))),
                None => Err(StoreError::transient(format!(
                    "{what}: the answer names no generation"
                ))),
            },
            412 => Ok(PutIf::ConditionFailed),
            404 => Err(missing(&self.proto)),
            _ => Err(self.client.unexpected(&self.proto, &what, &answer)),
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
    use credential::Credentials;

    /// Only the endpoint's own scheme, host and port get the session's requests (each
    /// carries the bearer token).
    #[test]
    fn upload_sessions_stay_on_the_endpoints_origin() {
        let store = |endpoint: &str| {
            let settings = GcsSettings {
                bucket: "bkt".into(),
                project: "p".into(),
                prefix: String::new(),
                endpoint: endpoint.into(),
                credentials: Credentials::Anonymous,
                chunk_size: CHUNK_GRANULARITY,
                options: Default::default(),
            };
            let agent = crate::http::agent(Duration::from_secs(1), 1);
            GcsStore::open(&settings, &agent, RetryBudget::tries(1)).unwrap()
        };
        let google = store(DEFAULT_ENDPOINT);
        for same in [
            "https://storage.googleapis.com/upload/storage/v1/b/bkt/o?upload_id=x",
            "https://storage.googleapis.com:443/upload?upload_id=x",
            "/upload/storage/v1/b/bkt/o?upload_id=x",
        ] {
            let url = google.session_url("upload", same).unwrap();
            assert!(
                url.starts_with("https://storage.googleapis.com/upload"),
                "{same}: {url}"
            );
        }
        for other in [
            "https://storage.evil.example/upload?upload_id=x",
            "http://storage.googleapis.com/upload?upload_id=x",
            "https://storage.googleapis.com:8443/upload?upload_id=x",
            "//evil.example/upload",
        ] {
            let e = google.session_url("upload", other).unwrap_err();
            assert_eq!(e.kind, StoreErrorKind::Rejected, "{other}");
            assert!(
                e.message.contains("another origin (") && !e.message.contains("upload_id"),
                "{other}: {e}"
            );
        }
        let emulator = store("http://127.0.0.1:4443");
        assert!(emulator
            .session_url("u", "http://localhost:4443/upload?upload_id=x")
            .is_err());
        let e = emulator
            .session_url("u", "http://127.0.0.1:4444/upload?upload_id=x")
            .unwrap_err();
        assert!(e.message.contains("(http://127.0.0.1:4444)"), "{e}");
    }

    #[test]
    fn range_header_gives_committed_offset() {
        assert_eq!(committed_offset(None), 0);
        assert_eq!(committed_offset(Some("bytes=0-262143")), 262_144);
        assert_eq!(committed_offset(Some("garbage")), 0);
    }
}
