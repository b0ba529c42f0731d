//! The platform's task-sync API, as `../shared/platform-api.md` describes it.
//!
//! Three calls: the sync feed, downloads and deletes. Each answer is sorted into what
//! the engine must do with it (go on, retry, skip, stop); nothing here retries, so the
//! engine's one retry loop sees every failure. The token goes only into the
//! `Authorization` header and never into a message.

use std::fmt;
use std::io::{self, Read};
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

use crate::env::Secret;
use crate::http::retry_after;
use crate::redact;
use crate::retry::Reason;

/// The largest feed page accepted: a page holds at most 100 small task objects, so
/// anything this big is a broken or hostile answer, not data.
pub const MAX_PAGE_BYTES: u64 = 16 * 1024 * 1024;

/// What went wrong talking to the platform.
#[derive(Debug)]
pub enum PlatformError {
    /// 401/403: the token is missing, wrong, revoked or lacks the right.
    Auth { status: u16 },
    /// 400 on a page token: the platform no longer accepts it; start a new round.
    PageExpired,
    /// 404 on a download: the item no longer exists.
    NotFound,
    /// Worth retrying: 429, 5xx, timeouts, resets, truncated or unreadable bodies.
    Transient {
        message: String,
        reason: Reason,
        retry_after: Option<Duration>,
    },
    /// A feed request was sent (the platform may have acted on it and moved its
    /// cursor) and its answer did not arrive whole: worth retrying, but a query's
    /// answer lost this way cannot be asked for again.
    Lost { message: String, reason: Reason },
    /// The platform refused the request itself (another 4xx); retrying cannot help.
    Refused { status: u16, message: String },
    /// The platform's TLS certificate did not verify (unknown issuer, expired, wrong
    /// name): retrying cannot help, and going on would mean trusting an impostor.
    Tls { host: String, reason: String },
}

impl fmt::Display for PlatformError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PlatformError::Auth { status } => write!(
                f,
                "the platform refused the API token (HTTP {status}): check SP_API_TOKEN and that its user may read and delete these tasks"
            ),
            PlatformError::PageExpired => f.write_str("the platform no longer accepts the page token"),
            PlatformError::NotFound => f.write_str("not found on the platform (404)"),
            PlatformError::Transient { message, .. } | PlatformError::Lost { message, .. } => {
                f.write_str(message)
            }
            PlatformError::Refused { status, message } => write!(f, "the platform refused the request (HTTP {status}): {message}"),
            PlatformError::Tls { host, reason } => write!(
                f,
                "TLS certificate of {host} refused (nothing was sent to it, and retrying cannot help): {reason}"
            ),
        }
    }
}

impl std::error::Error for PlatformError {}

/// One answer of the sync feed: the raw task objects (parsed one by one later, so one
/// odd task cannot hide the others) and the next page's token.
#[derive(Debug, Clone, PartialEq, serde::Serialize, Deserialize)]
pub struct FeedPage {
    pub tasks: Vec<Value>,
    pub next: Option<String>,
}

#[derive(Deserialize)]
struct FeedBody {
    result: Vec<Value>,
    #[serde(default)]
    next: Option<String>,
}

/// Reads a feed page. Only the envelope must be right; each task is checked later on
/// its own, so one odd task cannot hide the others.
pub fn decode_page(bytes: &[u8]) -> Result<FeedPage, PlatformError> {
    let page: FeedBody = serde_json::from_slice(bytes).map_err(|e| {
        transient(
            Reason::BrokenBody,
            format!("the sync feed answered with a page that is not the expected JSON ({e})"),
        )
    })?;
    Ok(FeedPage {
        tasks: page.result,
        next: page.next.filter(|n| !n.is_empty()),
    })
}

/// A client of one platform, sharing the process's HTTP agent.
#[derive(Clone)]
pub struct Platform {
    agent: ureq::Agent,
    base: String,
    token: Secret,
}

impl Platform {
    pub fn new(agent: ureq::Agent, base_url: &str, token: Secret) -> Platform {
        Platform {
            agent,
            base: base_url.trim_end_matches('/').to_string(),
            token,
        }
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    fn bearer(&self) -> String {
        format!("Bearer {}", self.token.expose())
    }

    /// `POST /task/sync/` with a query or a page token.
    pub fn feed(&self, body: &Value) -> Result<FeedPage, PlatformError> {
        let is_page = body.get("page").is_some();
        let url = format!("{}/task/sync/", self.base);
        let mut response = self
            .agent
            .post(&url)
            .header("Authorization", &self.bearer())
            .header("Content-Type", "application/json")
            .send(serde_json::to_vec(body).expect("a JSON value serialises"))
            .map_err(|e| match transport(&self.base, "the sync feed", &e) {
                PlatformError::Transient {
                    message, reason, ..
                } if !crate::http::never_sent(&e) => PlatformError::Lost { message, reason },
                other => other,
            })?;
        let status = response.status().as_u16();
        if status != 200 {
            if status == 400 && is_page {
                return Err(PlatformError::PageExpired);
            }
            let text = error_text(response.body_mut());
            return Err(classify(
                status,
                "the sync feed",
                text,
                retry_after(&response),
            ));
        }
        let bytes = response
            .body_mut()
            .with_config()
            .limit(MAX_PAGE_BYTES)
            .read_to_vec()
            .map_err(|e| PlatformError::Lost {
                message: format!("reading a sync feed page failed: {e}"),
                reason: Reason::BrokenBody,
            })?;
        decode_page(&bytes).map_err(|e| PlatformError::Lost {
            message: e.to_string(),
            reason: Reason::BrokenBody,
        })
    }

    /// `GET path`, answering with a reader of the body once the status is 200.
    pub fn download(&self, path: &str) -> Result<Download, PlatformError> {
        let url = self.url_of(path)?;
        let response = self
            .agent
            .get(&url)
            .header("Authorization", &self.bearer())
            .call()
            .map_err(|e| transport(&self.base, path, &e))?;
        let status = response.status().as_u16();
        if status == 404 {
            return Err(PlatformError::NotFound);
        }
        if status != 200 {
            let after = retry_after(&response);
            let text = error_text(&mut response.into_body());
            return Err(classify(status, path, text, after));
        }
        let expected = response.body().content_length();
        Ok(Download {
            body: response.into_body().into_reader(),
            expected,
            received: 0,
            path: path.to_string(),
        })
    }

    /// `DELETE path`; a 404 means it is already gone, which is done too.
    pub fn delete(&self, path: &str) -> Result<(), PlatformError> {
        let url = self.url_of(path)?;
        let mut response = self
            .agent
            .delete(&url)
            .header("Authorization", &self.bearer())
            .call()
            .map_err(|e| transport(&self.base, path, &e))?;
        match response.status().as_u16() {
            200 | 202 | 204 | 404 => Ok(()),
            status => {
                let text = error_text(response.body_mut());
                Err(classify(status, path, text, retry_after(&response)))
            }
        }
    }

    /// Only paths on the configured platform: `/something`, never a URL to elsewhere.
    fn url_of(&self, path: &str) -> Result<String, PlatformError> {
        let ok = path.starts_with('/')
            && !path.starts_with("//")
            && !path
                .chars()
                .any(|c| c.is_control() || c.is_whitespace() || c == '\\');
        if !ok {
            return Err(PlatformError::Refused {
                status: 0,
                message: format!("refusing the path {path:?}: not a path on the platform"),
            });
        }
        Ok(format!("{}{path}", self.base))
    }
}

/// A download's body. It fails at the end when fewer bytes came than the
/// `Content-Length` promised, so a storage never commits a truncated file, and it
/// stops early when the process is asked to stop.
pub struct Download {
    body: ureq::BodyReader<'static>,
    expected: Option<u64>,
    received: u64,
    path: String,
}

impl Download {
    pub fn expected_len(&self) -> Option<u64> {
        self.expected
    }
}

impl Read for Download {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if crate::shutdown::requested() {
            return Err(io::Error::other("stopping: the process was asked to stop"));
        }
        let n = self.body.read(buf).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "download of {} broke after {} bytes: {e}",
                    self.path, self.received
                ),
            )
        })?;
        self.received += n as u64;
        if let Some(expected) = self.expected {
            if (n == 0 && self.received < expected) || self.received > expected {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "download of {} delivered {} of {} bytes",
                        self.path, self.received, expected
                    ),
                ));
            }
        }
        Ok(n)
    }
}

fn transient(reason: Reason, message: String) -> PlatformError {
    PlatformError::Transient {
        message,
        reason,
        retry_after: None,
    }
}

fn transport(base: &str, what: &str, e: &ureq::Error) -> PlatformError {
    if let Some(reason) = crate::tls::verification_failure(e) {
        let host = base.split_once("://").map_or(base, |(_, rest)| rest);
        return PlatformError::Tls {
            host: host.to_string(),
            reason,
        };
    }
    match e {
        ureq::Error::BadUri(u) => PlatformError::Refused {
            status: 0,
            message: format!("bad address for {what}: {u}"),
        },
        _ => transient(
            crate::http::retry_reason(e),
            format!("{what}: {}", redact::remote(&e.to_string(), 300)),
        ),
    }
}

fn classify(status: u16, what: &str, text: String, after: Option<Duration>) -> PlatformError {
    match status {
        401 | 403 => PlatformError::Auth { status },
        408 | 429 | 500..=599 => PlatformError::Transient {
            message: format!("{what}: HTTP {status}{text}"),
            reason: Reason::of_status(status),
            retry_after: after,
        },
        _ => PlatformError::Refused {
            status,
            message: format!("{what}{text}"),
        },
    }
}

/// A short excerpt of an error body, fit for a log line: an error page may echo the
/// request, `Authorization` header included, so it passes [`redact::remote`] (secrets
/// and credentials masked, control and format characters escaped, cut so that a huge
/// one cannot flood the log).
fn error_text(body: &mut ureq::Body) -> String {
    let text = body
        .with_config()
        .limit(4096)
        .read_to_string()
        .unwrap_or_default();
    let text = redact::remote(&text, 200);
    if text.is_empty() {
        String::new()
    } else {
        format!(" ({text})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_decode_or_fail_as_transient() {
        let ok = decode_page(br#"{"result":[{"taskId":"a"},{"odd":true}],"next":"t2","extra":1}"#)
            .unwrap();
        assert_eq!(ok.tasks.len(), 2);
        assert_eq!(ok.next.as_deref(), Some("t2"));
        let drained = decode_page(br#"{"result":[],"next":""}"#).unwrap();
        assert_eq!(drained.next, None, "an empty token means drained");
        for bad in [
            &b"{\"result\":[{\"taskId\":\"a\"}"[..],
            b"",
            b"null",
            b"[]",
            b"{\"result\":{}}",
            b"{\"next\":\"x\"}",
            b"{\"result\":[],\"next\":5}",
            b"\xff\xfe",
        ] {
            match decode_page(bad) {
                Err(PlatformError::Transient { message, .. }) => {
                    assert!(message.contains("not the expected JSON"), "{message}")
                }
                other => panic!("{:?} gave {other:?}", String::from_utf8_lossy(bad)),
            }
        }
    }

    #[test]
    fn only_paths_on_the_platform_are_fetched() {
        let p = Platform::new(
            crate::http::agent(Duration::from_secs(1), 1),
            "http://127.0.0.1:9",
            Secret::new("t"),
        );
        for bad in [
            "http://evil.example/x",
            "//evil.example/x",
            "relative",
            "/a b",
            "/a\nb",
            "/a\\b",
        ] {
            assert!(
                matches!(p.url_of(bad), Err(PlatformError::Refused { .. })),
                "{bad:?}"
            );
        }
        assert_eq!(
            p.url_of("/task/x/meta").unwrap(),
            "http://127.0.0.1:9/task/x/meta"
        );
    }
}
