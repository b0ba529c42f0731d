//! The one REST layer under S3, GCS and Azure.
//!
//! Why: the three cloud providers differ in how they sign a request and in a few error
//! codes, and in nothing else that matters to "no data lost". So one place builds the
//! exchange (a request, the provider's signature, the shared ureq agent), classifies
//! every answer once, and decides about retries: each request is retried on its own
//! under the [`RetryBudget`] the store was opened with (a part, block or chunk is resent,
//! never a whole recording), and it ends in an answer for the provider to judge,
//! `Denied` (a missing bucket or container is one, naming the variable), `Rejected`, or
//! `Transient` meaning the budget is spent; what the engine makes of each is stated in
//! [`crate::store`]. A provider only says what differs through
//! [`Protocol`]: its signature, where its error code lives, the codes whose meaning is
//! not their status (`NoSuchBucket`, `ContainerNotFound`, `ExpiredToken`, digest
//! mismatches), and how to forget a refused token.
//!
//! The status table (every answer on the journal path, deliberately):
//!
//! | answer | meaning |
//! |---|---|
//! | 2xx, 3xx, 404 of an object, 409, 412 (and S3's 501 `NotImplemented`) | handed to the caller, which expects some of them (a `get` of nothing, a failed condition, a resumable 308, a conditional PUT the service does not implement) and calls the rest [`Client::unexpected`] (`Rejected`) |
//! | 404 of the bucket or container | `Denied`: `SP_TASK_SYNC_..._BUCKET="x": the bucket does not exist` |
//! | 401, or a provider's expired-token code | the cached token is dropped and the request sent once more with a fresh one; refused again: `Denied` |
//! | 403 | `Denied` (the key, SAS, token or policy is refused) |
//! | 408, 429, 5xx (507 included: a quota may free), a digest mismatch, network trouble, a broken answer | retried within the budget, then `Transient` |
//! | a certificate that does not verify | `Denied` at once: retrying cannot help |
//! | any other 4xx | `Rejected`: this object cannot be stored as sent |

pub mod claim;
pub mod identity;
pub mod parts;
pub mod read;
pub mod token;

use ureq::http::HeaderMap;

use super::{StoreError, StoreErrorKind};
use crate::redact;
use crate::retry::{with_retries, Reason, RetryBudget, Side, Step};

/// The largest answer body read (a `get` is for journal-sized objects).
pub const MAX_ANSWER: u64 = 1 << 30;
/// Bodies above this size are sent with `Expect: 100-continue`: a store that refuses
/// the request (a failed condition, a refused credential, a full quota) then answers
/// before the body is sent. Without it some servers (s3s-fs was seen to) answer early
/// and close the connection under the body, and the client sees only a broken pipe,
/// which it cannot tell from a network fault and retries forever.
const EXPECT_CONTINUE_ABOVE: usize = 64 * 1024;
/// The longest network error text put in a message.
const MAX_MESSAGE_CHARS: usize = 300;

/// One request before the provider signs it. Header names are lower case.
pub struct Request<'a> {
    pub method: &'static str,
    pub url: String,
    pub headers: Vec<(String, String)>,
    /// Sent as it is: the part buffer itself, never a copy.
    pub body: Body<'a>,
}

impl<'a> Request<'a> {
    pub fn new(method: &'static str, url: String) -> Request<'a> {
        Request {
            method,
            url,
            headers: Vec::new(),
            body: Body::default(),
        }
    }

    pub fn header(mut self, name: &str, value: impl Into<String>) -> Self {
        self.headers.push((name.to_ascii_lowercase(), value.into()));
        self
    }

    pub fn body(mut self, body: &'a [u8]) -> Self {
        self.body = Body::chain([body, &[], &[]]);
        self
    }

    /// A body of slices sent one after the other (see [`Body`]).
    pub fn chain(mut self, parts: [&'a [u8]; 3]) -> Self {
        self.body = Body::chain(parts);
        self
    }
}

/// A request body: up to three slices sent one after the other, never copied into one
/// buffer. A GCS multipart upload is its metadata part, the object's own buffer and the
/// closing boundary; every other body is one slice.
#[derive(Clone, Copy, Default)]
pub struct Body<'a> {
    parts: [&'a [u8]; 3],
}

impl<'a> Body<'a> {
    pub fn chain(parts: [&'a [u8]; 3]) -> Body<'a> {
        Body { parts }
    }

    pub fn len(&self) -> usize {
        self.parts.iter().map(|p| p.len()).sum()
    }

    /// The one slice, when the body is a single slice (or empty).
    fn single(&self) -> Option<&'a [u8]> {
        match self.parts {
            [one, [], []] => Some(one),
            _ => None,
        }
    }

    fn reader(&self) -> impl std::io::Read + 'a {
        use std::io::Read;
        let [a, b, c] = self.parts;
        a.chain(b).chain(c)
    }
}

/// An answer the layer did not decide about: the caller judges it.
pub struct Answer {
    pub status: u16,
    pub headers: HeaderMap,
    /// The provider's error code (`NoSuchKey`, `BlobNotFound`, ...), or "".
    pub code: String,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// How the layer treats an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Handed to the caller.
    Answer,
    /// Worth another try within the budget.
    Retry(Reason),
    /// The credentials were refused: drop the cached token and try once more.
    Unauthorized,
    Denied,
    /// The bucket or container does not exist.
    MissingContainer,
    Rejected,
}

/// What differs between the providers.
pub trait Protocol: Send + Sync {
    /// Signs or authorizes `req` (adds headers; a SAS goes into the URL). A token
    /// endpoint that cannot be reached is `Transient`, a refused credential `Denied`.
    fn authorize(&self, req: &mut Request) -> Result<(), StoreError>;

    /// The provider's error code in an answer ("" when there is none).
    fn error_code(&self, status: u16, headers: &HeaderMap, body: &[u8]) -> String;

    /// A short, secret-free message from an error body.
    fn error_message(&self, body: &[u8]) -> String;

    /// The codes whose meaning is not their status (`None`: the status decides).
    fn special(&self, status: u16, code: &str) -> Option<Class>;

    /// Forgets a refused token; `true` when a fresh one may be fetched.
    fn drop_credentials(&self) -> bool {
        false
    }

    /// Removes secrets (a SAS) from a message.
    fn redact(&self, text: &str) -> String {
        text.to_string()
    }

    /// The variable and value naming the bucket or container, and what it is called.
    fn container(&self) -> Container<'_>;
}

/// The bucket or container of a store, for the "does not exist" message.
pub struct Container<'a> {
    pub var: &'static str,
    pub value: &'a str,
    /// "bucket" or "container".
    pub noun: &'static str,
}

/// The status table of the module comment, with the provider's exceptions first.
pub fn classify(proto: &dyn Protocol, status: u16, code: &str) -> Class {
    if let Some(class) = proto.special(status, code) {
        return class;
    }
    match status {
        200..=399 | 404 | 409 | 412 => Class::Answer,
        401 => Class::Unauthorized,
        403 => Class::Denied,
        408 | 429 | 500..=599 => Class::Retry(Reason::of_status(status)),
        _ => Class::Rejected,
    }
}

/// The shared agent and the retry budget of one store.
#[derive(Clone)]
pub struct Client {
    pub agent: ureq::Agent,
    pub budget: RetryBudget,
}

/// What one attempt of a request came to, before the retry decision.
enum Attempt {
    Answer(Answer),
    /// The request's URL without its query (it may hold a SAS).
    Transport(ureq::Error, String),
}

impl Client {
    pub fn new(agent: &ureq::Agent, budget: RetryBudget) -> Client {
        Client {
            agent: agent.clone(),
            budget,
        }
    }

    /// Sends the request `build` makes (again for every try: a signature is dated)
    /// until an answer the caller judges, a final error, or the budget is spent.
    /// `what` names the operation in messages ("S3 PUT of s3://b/k").
    pub fn send<'a>(
        &self,
        proto: &dyn Protocol,
        what: &str,
        build: impl FnMut() -> Result<Request<'a>, StoreError>,
    ) -> Result<Answer, StoreError> {
        self.send_verified(proto, what, build, |_| Ok(()))
    }

    /// [`Client::send`], with `verify` judging an answer the caller would get: a
    /// `Transient` error from it (the stored bytes are not what was sent) is retried
    /// like a refused checksum.
    pub fn send_verified<'a>(
        &self,
        proto: &dyn Protocol,
        what: &str,
        mut build: impl FnMut() -> Result<Request<'a>, StoreError>,
        verify: impl Fn(&Answer) -> Result<(), StoreError>,
    ) -> Result<Answer, StoreError> {
        let outcome = with_retries(self.budget, Side::Storage, what, || {
            let mut refreshed = false;
            loop {
                let step = self.try_once(proto, what, &mut build);
                match step {
                    Err(e) if e.kind == StoreErrorKind::Transient => {
                        return Step::Retry {
                            error: e,
                            reason: Reason::Transport,
                            after: None,
                        }
                    }
                    Err(e) => return Step::Fail(e),
                    Ok(Attempt::Transport(e, url)) => {
                        let message = redact::remote(
                            &proto.redact(&crate::http::error_message(&url, &e)),
                            MAX_MESSAGE_CHARS,
                        );
                        let message = format!("{what}: {message}");
                        if crate::http::tls::verification_failure(&e).is_some() {
                            return Step::Fail(StoreError::new(
                                StoreErrorKind::Denied,
                                format!("{message} (nothing was stored, and retrying cannot help)"),
                            ));
                        }
                        return Step::Retry {
                            error: StoreError::transient(message),
                            reason: crate::http::retry_reason(&e),
                            after: None,
                        };
                    }
                    Ok(Attempt::Answer(answer)) => {
                        match classify(proto, answer.status, &answer.code) {
                            Class::Answer => {
                                return match verify(&answer) {
                                    Ok(()) => Step::Done(answer),
                                    Err(e) if e.kind == StoreErrorKind::Transient => Step::Retry {
                                        error: e,
                                        reason: Reason::BrokenBody,
                                        after: None,
                                    },
                                    Err(e) => Step::Fail(e),
                                }
                            }
                            Class::Retry(reason) => {
                                let after = crate::http::retry_after_in(&answer.headers);
                                return Step::Retry {
                                    error: self.error(
                                        proto,
                                        what,
                                        &answer,
                                        StoreErrorKind::Transient,
                                    ),
                                    reason,
                                    after,
                                };
                            }
                            Class::Unauthorized if !refreshed && proto.drop_credentials() => {
                                log::info!(
                                    "{what}: HTTP {} {}: fetching a new token once",
                                    answer.status,
                                    answer.code
                                );
                                refreshed = true;
                                continue;
                            }
                            Class::Unauthorized | Class::Denied => {
                                return Step::Fail(self.error(
                                    proto,
                                    what,
                                    &answer,
                                    StoreErrorKind::Denied,
                                ))
                            }
                            Class::MissingContainer => return Step::Fail(missing(proto)),
                            Class::Rejected => {
                                return Step::Fail(self.error(
                                    proto,
                                    what,
                                    &answer,
                                    StoreErrorKind::Rejected,
                                ))
                            }
                        }
                    }
                }
            }
        });
        outcome.map_err(|e| match e.tries {
            Some(n) => StoreError::transient(format!(
                "{} (gave up after {n} tries: the retry budget is spent)",
                e.error
            )),
            None => e.error,
        })
    }

    fn try_once<'a>(
        &self,
        proto: &dyn Protocol,
        what: &str,
        build: &mut impl FnMut() -> Result<Request<'a>, StoreError>,
    ) -> Result<Attempt, StoreError> {
        let mut req = build()?;
        proto.authorize(&mut req)?;
        let mut http = ureq::http::Request::builder()
            .method(req.method)
            .uri(req.url.as_str());
        for (name, value) in &req.headers {
            http = http.header(name.as_str(), value.as_str());
        }
        if req.body.len() > EXPECT_CONTINUE_ABOVE {
            // Unsigned (it is added after the signature), as the AWS SDKs send it.
            http = http.header("expect", "100-continue");
        }
        let bad = |e: ureq::http::Error| {
            StoreError::new(
                StoreErrorKind::Rejected,
                format!(
                    "{what}: cannot build the request: {}",
                    redact::remote(&proto.redact(&e.to_string()), MAX_MESSAGE_CHARS)
                ),
            )
        };
        let sent = if req.method == "GET" || req.method == "HEAD" || req.method == "DELETE" {
            self.agent.run(http.body(()).map_err(bad)?)
        } else if let Some(slice) = req.body.single() {
            self.agent.run(http.body(slice).map_err(bad)?)
        } else {
            // A chain goes as a reader, framed by its length like a slice.
            let mut reader = req.body.reader();
            let http = http.header("content-length", req.body.len().to_string());
            self.agent.run(
                http.body(ureq::SendBody::from_reader(&mut reader))
                    .map_err(bad)?,
            )
        };
        let bare = || req.url.split('?').next().unwrap_or_default().to_string();
        let mut response = match sent {
            Ok(r) => r,
            Err(e) => return Ok(Attempt::Transport(e, bare())),
        };
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = if req.method == "HEAD" {
            Vec::new()
        } else {
            match response
                .body_mut()
                .with_config()
                .limit(MAX_ANSWER)
                .read_to_vec()
            {
                Ok(b) => b,
                Err(e) => return Ok(Attempt::Transport(e, bare())),
            }
        };
        let code = proto.error_code(status, &headers, &body);
        Ok(Attempt::Answer(Answer {
            status,
            headers,
            code,
            body,
        }))
    }

    /// The error for an answer, of `kind`, with the provider's code and message (both
    /// remote text: an error page may echo the request, credentials included).
    pub fn error(
        &self,
        proto: &dyn Protocol,
        what: &str,
        answer: &Answer,
        kind: StoreErrorKind,
    ) -> StoreError {
        let mut text = format!("{what}: HTTP {}", answer.status);
        if !answer.code.is_empty() {
            text.push(' ');
            text.push_str(&redact::remote(&answer.code, 100));
        }
        let message = proto.error_message(&answer.body);
        if !message.is_empty() {
            text.push_str(": ");
            text.push_str(&message);
        }
        if kind == StoreErrorKind::Denied {
            text.push_str(" (the storage refused the credentials or the permission)");
        }
        StoreError::new(kind, proto.redact(&redact::scrub(&text)))
    }

    /// An answer the caller did not expect: this object cannot be stored as sent.
    pub fn unexpected(&self, proto: &dyn Protocol, what: &str, answer: &Answer) -> StoreError {
        self.error(proto, what, answer, StoreErrorKind::Rejected)
    }
}

/// `SP_TASK_SYNC_S3_BUCKET="typo": the bucket does not exist`, which stops the run like
/// a refused credential (exit 5): every object would fail the same way.
pub fn missing(proto: &dyn Protocol) -> StoreError {
    let c = proto.container();
    StoreError::new(
        StoreErrorKind::Denied,
        format!(
            "{}={:?}: the {} does not exist (create it, or fix the name)",
            c.var, c.value, c.noun
        ),
    )
}

/// The text of the first `<tag>` in an XML document (S3 and Azure error bodies).
pub fn xml_tag(body: &str, tag: &str) -> Option<String> {
    let start = body.find(&format!("<{tag}>"))? + tag.len() + 2;
    let end = body[start..].find(&format!("</{tag}>"))? + start;
    Some(body[start..end].trim().to_string())
}

/// Remote text (an excerpt of an error body) fit for a message: at most `n`
/// characters, secrets and credentials masked before the cut, control and format
/// characters escaped ([`redact::remote`]).
pub fn clip(s: &str, n: usize) -> String {
    redact::remote(s, n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    struct Plain;
    impl Protocol for Plain {
        fn authorize(&self, _: &mut Request) -> Result<(), StoreError> {
            Ok(())
        }
        fn error_code(&self, _: u16, _: &HeaderMap, _: &[u8]) -> String {
            String::new()
        }
        fn error_message(&self, _: &[u8]) -> String {
            String::new()
        }
        fn special(&self, status: u16, code: &str) -> Option<Class> {
            (status == 404 && code == "NoSuchBucket").then_some(Class::MissingContainer)
        }
        fn container(&self) -> Container<'_> {
            Container {
                var: "SP_TASK_SYNC_S3_BUCKET",
                value: "typo",
                noun: "bucket",
            }
        }
    }

    /// A provider whose error message is the whole body, as clipped for messages.
    struct Echoing;
    impl Protocol for Echoing {
        fn authorize(&self, _: &mut Request) -> Result<(), StoreError> {
            Ok(())
        }
        fn error_code(&self, _: u16, _: &HeaderMap, _: &[u8]) -> String {
            String::new()
        }
        fn error_message(&self, body: &[u8]) -> String {
            clip(&String::from_utf8_lossy(body), 300)
        }
        fn special(&self, _: u16, _: &str) -> Option<Class> {
            None
        }
        fn container(&self) -> Container<'_> {
            Plain.container()
        }
    }

    #[test]
    fn error_documents_are_masked_and_escaped_before_they_are_cut() {
        let client = Client::new(
            &crate::http::agent(Duration::from_secs(1), 1),
            RetryBudget::tries(1),
        );
        let body = format!(
            "{}\nforged line \u{1b}[31m\u{202e} you sent Authorization: Bearer ya29.secret-token-value",
            "x".repeat(230)
        );
        let answer = Answer {
            status: 403,
            headers: HeaderMap::new(),
            code: "Access\nDenied".into(),
            body: body.into_bytes(),
        };
        let e = client.error(
            &Echoing,
            "GCS PUT of gs://b/k",
            &answer,
            StoreErrorKind::Denied,
        );
        assert!(!e.message.contains("ya29"), "{e}");
        assert!(!e.message.contains(['\n', '\u{1b}', '\u{202e}']), "{e}");
        assert!(
            e.message
                .starts_with("GCS PUT of gs://b/k: HTTP 403 Access\\nDenied: xxx"),
            "{e}"
        );
        assert!(
            e.message.contains("\\nforged line \\u{1b}[31m\\u{202e}"),
            "{e}"
        );
    }

    /// What a one-request server read: the request head's lines and the body.
    fn serve_one(listener: std::net::TcpListener) -> (Vec<String>, Vec<u8>) {
        use std::io::{BufRead, BufReader, Read, Write};
        let (stream, _) = listener.accept().unwrap();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut head = Vec::new();
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            if line.trim().is_empty() {
                break;
            }
            head.push(line.trim().to_ascii_lowercase());
        }
        let mut out = stream;
        if head.iter().any(|h| h == "expect: 100-continue") {
            out.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").unwrap();
        }
        let len: usize = head
            .iter()
            .find_map(|h| h.strip_prefix("content-length: "))
            .map_or(0, |n| n.parse().unwrap());
        let mut body = vec![0u8; len];
        reader.read_exact(&mut body).unwrap();
        out.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
            .unwrap();
        (head, body)
    }

    /// A chain of slices goes on the wire as one body framed by its whole length,
    /// byte for byte what the slices hold in order.
    #[test]
    fn a_chained_body_is_sent_as_one_body_of_its_slices() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/upload", listener.local_addr().unwrap());
        let server = std::thread::spawn(move || serve_one(listener));
        let middle: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let client = Client::new(
            &crate::http::agent(Duration::from_secs(5), 1),
            RetryBudget::tries(1),
        );
        let answer = client
            .send(&Plain, "chained upload", || {
                Ok(Request::new("POST", url.clone()).chain([
                    b"--head\r\n",
                    &middle,
                    b"\r\n--tail--",
                ]))
            })
            .unwrap();
        assert_eq!(answer.status, 200);
        let (head, body) = server.join().unwrap();
        let mut want = b"--head\r\n".to_vec();
        want.extend_from_slice(&middle);
        want.extend_from_slice(b"\r\n--tail--");
        assert!(body == want, "the body is not the slices in order");
        assert!(
            head.contains(&format!("content-length: {}", want.len())),
            "{head:?}"
        );
        assert!(
            !head.iter().any(|h| h.starts_with("transfer-encoding")),
            "{head:?}"
        );
        let body = Body::chain([b"ab", b"", b"c"]);
        assert_eq!((body.len(), body.single()), (3, None));
        assert_eq!(Body::chain([b"ab", b"", b""]).single(), Some(&b"ab"[..]));
    }

    #[test]
    fn status_table() {
        let table: &[(u16, &str, Class)] = &[
            (200, "", Class::Answer),
            (308, "", Class::Answer),
            (401, "", Class::Unauthorized),
            (403, "", Class::Denied),
            (404, "", Class::Answer),
            (404, "NoSuchBucket", Class::MissingContainer),
            (408, "", Class::Retry(Reason::Timeout)),
            (409, "", Class::Answer),
            (412, "", Class::Answer),
            (429, "", Class::Retry(Reason::Throttled)),
            (400, "", Class::Rejected),
            (500, "", Class::Retry(Reason::ServerError)),
            (503, "", Class::Retry(Reason::ServerError)),
            (507, "", Class::Retry(Reason::ServerError)),
        ];
        for (status, code, class) in table {
            assert_eq!(classify(&Plain, *status, code), *class, "{status} {code}");
        }
        let e = missing(&Plain);
        assert_eq!(e.kind, StoreErrorKind::Denied);
        assert!(
            e.message
                .starts_with("SP_TASK_SYNC_S3_BUCKET=\"typo\": the bucket does not exist"),
            "{e}"
        );
    }
}
