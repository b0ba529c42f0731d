//! What GCS adds to the shared REST layer ([`crate::store::client`]), and the frame of
//! its multipart uploads.

use ureq::http::HeaderMap;

use super::credential::TokenSource;
use crate::retry::Reason;
use crate::store::client::{clip, Class, Container, Protocol, Request};
use crate::store::{content_type, StoreError};

/// The code given to a refused `x-goog-hash` (GCS's own is the generic "invalid").
pub(super) const CHECKSUM_MISMATCH: &str = "checksumMismatch";

/// What GCS adds to the shared REST layer: a bearer token, the JSON error body, and
/// the codes whose status does not say it all.
pub(super) struct GcsProtocol {
    pub(super) agent: ureq::Agent,
    pub(super) tokens: TokenSource,
    pub(super) bucket: String,
}

impl Protocol for GcsProtocol {
    fn authorize(&self, req: &mut Request) -> Result<(), StoreError> {
        if let Some(auth) = self.tokens.authorization(&self.agent)? {
            req.headers.push(("authorization".into(), auth));
        }
        Ok(())
    }

    fn error_code(&self, _status: u16, _headers: &HeaderMap, body: &[u8]) -> String {
        let v = serde_json::from_slice::<serde_json::Value>(body).unwrap_or_default();
        let message = v["error"]["message"].as_str().unwrap_or_default();
        // GCS refuses an x-goog-hash that does not match with a 400 "invalid"; say so.
        if message.contains("match calculated") || message.contains("hash mismatch") {
            return CHECKSUM_MISMATCH.to_string();
        }
        v["error"]["errors"][0]["reason"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    fn error_message(&self, body: &[u8]) -> String {
        serde_json::from_slice::<serde_json::Value>(body)
            .ok()
            .and_then(|v| v["error"]["message"].as_str().map(|m| clip(m, 300)))
            .unwrap_or_default()
    }

    fn special(&self, _status: u16, code: &str) -> Option<Class> {
        match code {
            // The bytes changed on the way: the chunk is still in memory, send it again.
            CHECKSUM_MISMATCH => Some(Class::Retry(Reason::BrokenBody)),
            "rateLimitExceeded" | "userRateLimitExceeded" => Some(Class::Retry(Reason::Throttled)),
            _ => None,
        }
    }

    fn drop_credentials(&self) -> bool {
        self.tokens.invalidate()
    }

    fn container(&self) -> Container<'_> {
        Container {
            var: "SP_TASK_SYNC_GCS_BUCKET",
            value: &self.bucket,
            noun: "bucket",
        }
    }
}

/// The frame of a `multipart/related` upload around the object's bytes: the resource
/// part and the head of the bytes' part, then the closing boundary. The request sends
/// the two halves and the bytes from their own buffer as one body.
pub(super) struct Multipart {
    boundary: String,
    head: String,
    tail: String,
}

impl Multipart {
    pub(super) fn new(resource: &serde_json::Value, name: &str) -> Multipart {
        let boundary = format!("spinoco-{:016x}", crate::retry::Rng::seeded().next_u64());
        Multipart {
            head: format!(
                "--{boundary}\r\ncontent-type: application/json; charset=UTF-8\r\n\r\n{resource}\r\n--{boundary}\r\ncontent-type: {}\r\n\r\n",
                content_type(name)
            ),
            tail: format!("\r\n--{boundary}--\r\n"),
            boundary,
        }
    }

    pub(super) fn content_type(&self) -> String {
        format!("multipart/related; boundary={}", self.boundary)
    }

    /// The body's slices, in order.
    pub(super) fn around<'a>(&'a self, bytes: &'a [u8]) -> [&'a [u8]; 3] {
        [self.head.as_bytes(), bytes, self.tail.as_bytes()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::client::{classify, missing};
    use crate::store::gcs::credential::Credentials;
    use std::time::Duration;

    /// Every status GCS can answer on the journal path, mapped deliberately. A 404
    /// is the caller's (object or bucket: a bucket GET tells, see `not_found`).
    #[test]
    fn status_table() {
        let p = GcsProtocol {
            agent: crate::http::agent(Duration::from_secs(1), 1),
            tokens: TokenSource::new(Credentials::Anonymous),
            bucket: "bucket-typo".into(),
        };
        let mismatch = br#"{"error":{"code":400,"message":"Provided CRC32C \"AAAAAA==\" doesn't match calculated CRC32C \"mnG7TA==\".","errors":[{"reason":"invalid"}]}}"#;
        assert_eq!(
            p.error_code(400, &HeaderMap::new(), mismatch),
            CHECKSUM_MISMATCH
        );
        let table: &[(u16, &str, Class)] = &[
            (200, "", Class::Answer),
            (308, "", Class::Answer),
            (401, "authError", Class::Unauthorized),
            (403, "forbidden", Class::Denied),
            (404, "notFound", Class::Answer),
            (409, "conflict", Class::Answer),
            (412, "conditionNotMet", Class::Answer),
            (429, "rateLimitExceeded", Class::Retry(Reason::Throttled)),
            (400, CHECKSUM_MISMATCH, Class::Retry(Reason::BrokenBody)),
            (400, "invalid", Class::Rejected),
            (503, "backendError", Class::Retry(Reason::ServerError)),
            (507, "", Class::Retry(Reason::ServerError)),
        ];
        for (status, code, class) in table {
            assert_eq!(classify(&p, *status, code), *class, "{status} {code}");
        }
        assert!(
            !p.drop_credentials(),
            "no token to refresh for anonymous access"
        );
        let e = missing(&p);
        assert!(
            e.message
                .starts_with("SP_TASK_SYNC_GCS_BUCKET=\"bucket-typo\": the bucket does not exist"),
            "{e}"
        );
    }

    /// The frame around the bytes is the `multipart/related` body GCS reads: the
    /// resource part, the bytes' part, the closing boundary.
    #[test]
    fn a_multipart_body_frames_the_bytes_it_does_not_copy() {
        let resource = serde_json::json!({"name": "a/b.ogg"});
        let frame = Multipart::new(&resource, "a/b.ogg");
        let boundary = frame.boundary.clone();
        assert_eq!(
            frame.content_type(),
            format!("multipart/related; boundary={boundary}")
        );
        let bytes = b"OggS recording";
        let [head, middle, tail] = frame.around(bytes);
        assert!(
            std::ptr::eq(middle, &bytes[..]),
            "the bytes are sent from their buffer"
        );
        let body = [head, middle, tail].concat();
        let want = format!(
            "--{boundary}\r\ncontent-type: application/json; charset=UTF-8\r\n\r\n{{\"name\":\"a/b.ogg\"}}\r\n\
             --{boundary}\r\ncontent-type: audio/ogg\r\n\r\nOggS recording\r\n--{boundary}--\r\n"
        );
        assert_eq!(String::from_utf8(body).unwrap(), want);
    }
}
