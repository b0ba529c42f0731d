//! The platform's task-sync API, as `../shared/platform-api.md` describes it.
//!
//! Three calls: the sync feed, downloads and deletes. Each answer is sorted into what
//! the engine must do with it (go on, retry, skip, stop); nothing here retries, so the
//! engine's one retry loop sees every failure. The token goes only into the
//! `Authorization` header and never into a message.
//!
//! A download is complete only when its framing says so: a body with neither
//! `Content-Length` nor chunked coding ends when the connection closes, so a cut one
//! looks whole, and it is refused. Its size is bounded (`SP_TASK_SYNC_MAX_FILE_SIZE`,
//! checked against the `Content-Length` before the body is read, and as a chunked body
//! grows), and so is its pace: a body slower than [`MIN_RATE`] on average over
//! [`RATE_WINDOW`] of waiting for it has stalled, even when no single read outlasts
//! `SP_HTTP_TIMEOUT`.
//!
//! Under a bandwidth cap (`SP_TASK_SYNC_BANDWIDTH`) every download takes the bytes it
//! reads from one [`Limiter`] shared by all workers, and waits between reads as long as
//! it says: outside the time that judges the platform's pace, and never inside a read.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::Value;

use crate::bandwidth::{Limiter, SystemClock, Timetable};
use crate::env::Secret;
use crate::http::retry_after;
use crate::redact;
use crate::retry::Reason;

mod download;

use download::Throttle;
pub use download::{Download, Framing};

/// The largest feed page accepted: a page holds at most 100 small task objects, so
/// anything this big is a broken or hostile answer, not data.
pub const MAX_PAGE_BYTES: u64 = 16 * 1024 * 1024;
/// The slowest average pace of a download, in bytes a second of waiting for it.
pub const MIN_RATE: u64 = 1024;
/// How long a download is waited for before its average pace is judged.
pub const RATE_WINDOW: Duration = Duration::from_secs(60);

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
    /// A download that cannot be stored as the platform sends it, however often it is
    /// tried.
    Unstorable { path: String, why: Unstorable },
}

/// Why a download cannot be stored as the platform sends it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unstorable {
    /// `200` with neither `Content-Length` nor chunked coding: the body ends when the
    /// connection closes, so a cut body cannot be told from a whole one.
    Unframed,
    /// A `Content-Length` over `SP_TASK_SYNC_MAX_FILE_SIZE`.
    Announced { length: u64, limit: u64 },
    /// A chunked body that grew over `SP_TASK_SYNC_MAX_FILE_SIZE`.
    Grew { limit: u64 },
}

impl fmt::Display for Unstorable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Unstorable::Unframed => f.write_str(
                "came with neither Content-Length nor chunked coding, so a cut body cannot be told from a whole one",
            ),
            Unstorable::Announced { length, limit } => write!(
                f,
                "announces {length} bytes, over SP_TASK_SYNC_MAX_FILE_SIZE ({limit} bytes)"
            ),
            Unstorable::Grew { limit } => write!(
                f,
                "grew over SP_TASK_SYNC_MAX_FILE_SIZE ({limit} bytes) before its end"
            ),
        }
    }
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
            PlatformError::Unstorable { path, why } => write!(f, "{path} {why}"),
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

/// A client of one platform, sharing the process's HTTP agent (and its clones, the
/// bandwidth cap's bucket).
#[derive(Clone)]
pub struct Platform {
    agent: ureq::Agent,
    base: String,
    token: Secret,
    limiter: Option<Arc<Limiter>>,
}

impl Platform {
    pub fn new(agent: ureq::Agent, base_url: &str, token: Secret) -> Platform {
        Platform {
            agent,
            base: base_url.trim_end_matches('/').to_string(),
            token,
            limiter: None,
        }
    }

    /// The same client with its downloads capped by `timetable`, all of them together.
    pub fn paced(self, timetable: &Timetable) -> Platform {
        let limiter = (!timetable.is_off())
            .then(|| Arc::new(Limiter::new(timetable.clone(), Arc::new(SystemClock))));
        Platform { limiter, ..self }
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

    /// `GET path`, answering with a reader of the body once the status is 200 and its
    /// framing is one a cut can be told by, with a size of at most `max_size`.
    pub fn download(&self, path: &str, max_size: u64) -> Result<Download, PlatformError> {
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
        // As ureq reads it: chunked coding wins over a length, except in HTTP/1.0.
        let chunked = response.version() != ureq::http::Version::HTTP_10
            && response
                .headers()
                .get_all("transfer-encoding")
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .any(|coding| coding.trim().eq_ignore_ascii_case("chunked"));
        let framing =
            Framing::of(response.body().content_length(), chunked, max_size).map_err(|why| {
                PlatformError::Unstorable {
                    path: path.to_string(),
                    why,
                }
            })?;
        let throttle = self.limiter.clone().map(|limiter| Throttle {
            limiter,
            sleep: Box::new(crate::shutdown::sleep),
        });
        Ok(Download::new(
            Box::new(response.into_body().into_reader()),
            path,
            framing,
            Box::new(Instant::now),
            throttle,
        ))
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

fn transient(reason: Reason, message: String) -> PlatformError {
    PlatformError::Transient {
        message,
        reason,
        retry_after: None,
    }
}

fn transport(base: &str, what: &str, e: &ureq::Error) -> PlatformError {
    if let Some(reason) = crate::http::tls::verification_failure(e) {
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
