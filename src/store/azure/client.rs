//! What Azure adds to the shared REST layer ([`crate::store::client`]).

use ureq::http::HeaderMap;

use super::credential::{self, split_url, AzureAccount, Credential, SignedParts};
use crate::env::Secret;
use crate::retry::Reason;
use crate::store::client::token::{Fetched, TokenCache};
use crate::store::client::{clip, xml_tag, Class, Container, Protocol, Request};
use crate::store::StoreError;

/// The REST API version every request names (bearer tokens need 2017-11-09 or later;
/// the Cold tier 2021-12-02, which is then named instead).
pub const API_VERSION: &str = "2021-08-06";
/// The error code given to a 403 AuthenticationFailed for an expired bearer token.
const EXPIRED_TOKEN: &str = "AuthenticationFailed (the token is expired)";

/// What Azure adds to the shared REST layer: Shared Key signing or the SAS, the
/// `x-ms-error-code` header, and the codes that differ from their status.
pub(super) struct AzureProtocol {
    pub(super) account: AzureAccount,
    pub(super) container: String,
    /// `x-ms-version`: [`API_VERSION`], or newer when the access tier needs it.
    pub(super) version: &'static str,
    /// For fetching identity tokens; `Bearer ...` values are kept here.
    pub(super) agent: ureq::Agent,
    pub(super) tokens: TokenCache<Secret>,
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
                let to_sign = credential::string_to_sign(req.method, &signed, name, &path, &query);
                let signature = credential::sign(key, &to_sign);
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
    use crate::store::azure::crc64_b64;
    use crate::store::client::{classify, missing};

    #[test]
    fn date_is_rfc1123() {
        let d = http_date();
        assert!(d.ends_with(" GMT") && d.len() == 29, "{d}");
    }

    /// Every status Azure can answer on the journal path, mapped deliberately.
    #[test]
    fn status_table() {
        let p = AzureProtocol {
            account: credential::parse_connection_string("UseDevelopmentStorage=true").unwrap(),
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
        let e = missing(&p);
        assert!(
            e.message.starts_with(
                "SP_TASK_SYNC_AZURE_CLIENT_NAME=\"container-typo\": the container does not exist"
            ),
            "{e}"
        );
        // The crc64 goes out as its eight little-endian bytes in base64.
        assert_eq!(
            crc64_b64(crate::checksum::crc64(b"123456789")),
            crate::encoding::base64(&0xAE8B_1486_0A79_9888u64.to_le_bytes())
        );
    }
}
