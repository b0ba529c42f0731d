//! What S3 adds to the shared REST layer ([`crate::store::client`]).

use s3::Region;
use ureq::http::HeaderMap;

use super::credential::{sign, CredentialProvider};
use crate::retry::Reason;
use crate::store::client::{clip, xml_tag, Class, Container, Protocol, Request};
use crate::store::StoreError;

/// What S3 adds to the shared REST layer: SigV4 by rust-s3's signing functions, the
/// error code from the XML document, and the codes that differ from their status.
pub(super) struct S3Protocol {
    pub(super) region: Region,
    pub(super) bucket: String,
    pub(super) credentials: CredentialProvider,
}

impl Protocol for S3Protocol {
    fn authorize(&self, req: &mut Request) -> Result<(), StoreError> {
        let c = self.credentials.current()?;
        sign(
            req,
            &self.region,
            c.access_key_id.expose(),
            c.secret_access_key.expose(),
            c.session_token.as_ref().map(|t| t.expose()),
            time::OffsetDateTime::now_utc(),
        )
    }

    fn error_code(&self, _status: u16, _headers: &HeaderMap, body: &[u8]) -> String {
        let text = String::from_utf8_lossy(&body[..body.len().min(64 * 1024)]);
        if !text.contains("<Error>") {
            return String::new();
        }
        xml_tag(&text, "Code").unwrap_or_default()
    }

    fn error_message(&self, body: &[u8]) -> String {
        // Only Code and Message: AWS error documents can carry the provided signature.
        let text = String::from_utf8_lossy(&body[..body.len().min(64 * 1024)]);
        clip(&xml_tag(&text, "Message").unwrap_or_default(), 300)
    }

    fn special(&self, status: u16, code: &str) -> Option<Class> {
        Some(match code {
            "NoSuchBucket" => Class::MissingContainer,
            "ExpiredToken" | "TokenRefreshRequired" | "RequestExpired" => Class::Unauthorized,
            // The bytes arrived changed: the part is still in memory, send it again.
            "BadDigest" | "XAmzContentSHA256Mismatch" | "InvalidDigest" => {
                Class::Retry(Reason::BrokenBody)
            }
            "SlowDown" => Class::Retry(Reason::Throttled),
            "RequestTimeout" | "InternalError" | "OperationAborted" => {
                Class::Retry(Reason::ServerError)
            }
            // A header the service does not implement (a conditional PUT on some
            // S3-compatible ones): the caller's answer, retrying cannot help.
            "NotImplemented" => Class::Answer,
            // CompleteMultipartUpload may answer 200 with an error document.
            _ if status == 200 && !code.is_empty() => Class::Rejected,
            _ => return None,
        })
    }

    fn drop_credentials(&self) -> bool {
        self.credentials.invalidate()
    }

    fn container(&self) -> Container<'_> {
        Container {
            var: "SP_TASK_SYNC_S3_BUCKET",
            value: &self.bucket,
            noun: "bucket",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::env::Env;
    use crate::store::client::{classify, missing};
    use crate::store::s3::builder::CredentialSettings;
    use crate::store::StoreErrorKind;

    fn env(pairs: &[(&str, &str)]) -> Env {
        Env::from_pairs(pairs.iter().copied())
    }

    fn proto() -> S3Protocol {
        let mut errors = Vec::new();
        let credentials = CredentialSettings::from_env(&env(&[]), &mut errors);
        S3Protocol {
            region: Region::Custom {
                region: "us-east-1".into(),
                endpoint: "http://127.0.0.1:1".into(),
            },
            bucket: "typo".into(),
            credentials: CredentialProvider::new(
                credentials,
                crate::http::agent(std::time::Duration::from_secs(1), 1),
            ),
        }
    }

    #[test]
    fn error_documents_are_reduced_and_codes_mapped() {
        let body = "<?xml version=\"1.0\"?><Error><Code>SignatureDoesNotMatch</Code><Message>The request \
                    signature we calculated does not match</Message><SignatureProvided>abcdef0123</SignatureProvided></Error>";
        let p = proto();
        let code = p.error_code(403, &HeaderMap::new(), body.as_bytes());
        assert_eq!(code, "SignatureDoesNotMatch");
        let message = p.error_message(body.as_bytes());
        assert!(
            message.contains("does not match") && !message.contains("abcdef0123"),
            "{message}"
        );
        let table: &[(u16, &str, Class)] = &[
            (403, "SignatureDoesNotMatch", Class::Denied),
            (403, "AccessDenied", Class::Denied),
            (401, "", Class::Unauthorized),
            (400, "ExpiredToken", Class::Unauthorized),
            (404, "NoSuchBucket", Class::MissingContainer),
            (404, "NoSuchKey", Class::Answer),
            (404, "NoSuchUpload", Class::Answer),
            (409, "OperationAborted", Class::Retry(Reason::ServerError)),
            (412, "PreconditionFailed", Class::Answer),
            (400, "BadDigest", Class::Retry(Reason::BrokenBody)),
            (
                400,
                "XAmzContentSHA256Mismatch",
                Class::Retry(Reason::BrokenBody),
            ),
            (503, "SlowDown", Class::Retry(Reason::Throttled)),
            (507, "", Class::Retry(Reason::ServerError)),
            (200, "InternalError", Class::Retry(Reason::ServerError)),
            (200, "", Class::Answer),
            (400, "InvalidArgument", Class::Rejected),
            (501, "NotImplemented", Class::Answer),
        ];
        for (status, code, class) in table {
            assert_eq!(classify(&p, *status, code), *class, "{status} {code}");
        }
        let missing = missing(&p);
        assert_eq!(missing.kind, StoreErrorKind::Denied);
        assert!(
            missing
                .message
                .starts_with("SP_TASK_SYNC_S3_BUCKET=\"typo\": the bucket does not exist"),
            "{missing}"
        );
    }
}
