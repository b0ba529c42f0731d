//! A threaded HTTP emulator of the Spinoco platform's task-sync API
//! (`/work/shared/platform-api.md`), for the tests, the benchmark and the demo.
//!
//! The real platform cannot be broken on demand, so this one can: it serves a
//! deterministic account (see [`data`]), keeps per-tag cursors and page tokens the
//! way the contract allows, and injects faults (errors, 429s, cut or stalled bodies,
//! latency spikes) drawn from a seeded generator. It also records what it handed out
//! and what was deleted, so a test can check the connector's side of the contract.

mod data;
mod feed;
mod http;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use data::{Account, AccountSpec, RecordingReader, Rng};
use feed::{Query, SyncRequest};
pub use http::RawReply;
use http::{lock, Body, BodyFault, Request, Response, Server};

/// Faults injected per request; each field is a probability in [0, 1] unless noted.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// 500, 502 or 503; nothing changes on the platform.
    pub server_error: f64,
    /// 429 with `Retry-After: retry_after_secs`; nothing changes.
    pub too_many: f64,
    pub retry_after_secs: u64,
    /// Headers with the full length, about half the body, then the connection closes.
    pub drop_body: f64,
    /// About half the body, then silence for `stall_for`, then the connection closes.
    pub stall_body: f64,
    pub stall_for: Duration,
    /// An extra `spike_latency` before the answer.
    pub spike: f64,
    pub spike_latency: Duration,
}

#[derive(Debug, Clone)]
pub struct EmulatorConfig {
    pub seed: u64,
    /// Tasks in the account at start.
    pub tasks: usize,
    /// The accepted Bearer token.
    pub token: String,
    /// Smallest and largest size of a recording in bytes (inclusive).
    pub recording_size: (u64, u64),
    /// Every task is a call (benchmarks: a backlog of calls, a large-file account).
    pub calls_only: bool,
    /// Each call has exactly this many recordings instead of 0–3.
    pub recordings_per_call: Option<usize>,
    /// Slept before every answer (in the connection's own thread).
    pub latency: Duration,
    pub faults: Faults,
    /// Chance that a handed-out task is handed out once more later in the feed.
    pub redeliver: f64,
    /// Chance that a task is sent with only the always-there fields.
    pub old_platform: f64,
    /// Chance that a download is sent chunked (no Content-Length).
    pub chunked: f64,
    /// Due date of the first task (ms since the epoch); tasks follow in due-date order.
    pub start_due_ms: i64,
    /// Port on 127.0.0.1; 0 picks a free one.
    pub port: u16,
    /// Serve HTTPS with this certificate instead of plain HTTP.
    pub tls: Option<EmulatorTls>,
}

/// The emulator's HTTPS identity: a PEM certificate chain (server first) and its key.
#[derive(Clone)]
pub struct EmulatorTls {
    pub cert_chain_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
}

impl std::fmt::Debug for EmulatorTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EmulatorTls")
    }
}

impl EmulatorTls {
    fn server_config(&self) -> std::io::Result<Arc<rustls::ServerConfig>> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let bad = |what: &str, e: String| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{what}: {e}"))
        };
        let chain = CertificateDer::pem_slice_iter(&self.cert_chain_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad("the TLS certificate", e.to_string()))?;
        let key = PrivateKeyDer::from_pem_slice(&self.key_pem)
            .map_err(|e| bad("the TLS key", e.to_string()))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| bad("TLS versions", e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(|e| bad("the TLS certificate and key", e.to_string()))?;
        Ok(Arc::new(config))
    }
}

impl Default for EmulatorConfig {
    fn default() -> EmulatorConfig {
        EmulatorConfig {
            seed: 1,
            tasks: 40,
            token: "emulator-token".into(),
            recording_size: (20_000, 200_000),
            calls_only: false,
            recordings_per_call: None,
            latency: Duration::ZERO,
            faults: Faults::default(),
            redeliver: 0.0,
            old_platform: 0.0,
            chunked: 0.0,
            start_due_ms: 1_725_896_747_277,
            port: 0,
            tls: None,
        }
    }
}

/// One request as the emulator answered it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRecord {
    pub method: String,
    pub path: String,
    pub status: u16,
    /// Body bytes written.
    pub bytes: u64,
    /// Whether the whole body was written.
    pub complete: bool,
}

/// Called at each DELETE with the task object that carried the delete; false is a violation.
pub type DeleteGuard = Box<dyn Fn(&Value) -> bool + Send + Sync>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Item {
    Task(usize),
    Injected(usize),
}

#[derive(Debug, Clone, Copy)]
struct FeedItem {
    item: Item,
    redelivery: bool,
}

struct Injected {
    task: Value,
    due: Option<i64>,
    delete_paths: Vec<String>,
}

struct PageRef {
    query: Arc<Query>,
    start: usize,
    /// The `next` this page answered with, and where it ended: a replay answers the same.
    next: Option<(usize, String)>,
}

struct State {
    token: String,
    faults: Faults,
    account: Account,
    feed: Vec<FeedItem>,
    injected: Vec<Injected>,
    injected_content: HashMap<String, Vec<u8>>,
    cursors: HashMap<String, usize>,
    pages: HashMap<String, PageRef>,
    expired: HashSet<String>,
    token_serial: u64,
    /// Feed positions already considered for re-delivery.
    redelivery_drawn: HashSet<usize>,
    /// Delete paths done.
    deleted: HashSet<String>,
    /// Delete path → the latest task object handed out with it.
    delete_owner: HashMap<String, Value>,
    handed_out: Vec<Value>,
    deletes: Vec<String>,
    violations: Vec<String>,
    requests: Vec<RequestRecord>,
    /// Raw answers for the next feed requests, in order (see `queue_feed_response`).
    feed_raw: VecDeque<RawReply>,
    /// Raw answers for the next GETs of a path.
    download_raw: HashMap<String, VecDeque<RawReply>>,
    rng: Rng,
}

struct Shared {
    latency: Duration,
    redeliver: f64,
    chunked: f64,
    state: Mutex<State>,
    guard: Mutex<Option<Arc<DeleteGuard>>>,
    /// When the first request arrived (benchmarks measure start-up with it).
    first_request: OnceLock<Instant>,
}

/// A running emulator; stops when dropped.
pub struct Emulator {
    shared: Arc<Shared>,
    server: Server,
    secure: bool,
}

impl Emulator {
    /// Binds 127.0.0.1 (`cfg.port`, 0 for any) and serves in background threads.
    pub fn start(cfg: EmulatorConfig) -> std::io::Result<Emulator> {
        let spec = AccountSpec {
            seed: cfg.seed,
            start_due_ms: cfg.start_due_ms,
            recording_size: cfg.recording_size,
            old_platform: cfg.old_platform,
            calls_only: cfg.calls_only,
            recordings_per_call: cfg.recordings_per_call,
        };
        let account = Account::new(spec, cfg.tasks);
        let feed = (0..cfg.tasks)
            .map(|i| FeedItem {
                item: Item::Task(i),
                redelivery: false,
            })
            .collect();
        let state = State {
            token: cfg.token.clone(),
            faults: cfg.faults.clone(),
            account,
            feed,
            injected: Vec::new(),
            injected_content: HashMap::new(),
            cursors: HashMap::new(),
            pages: HashMap::new(),
            expired: HashSet::new(),
            token_serial: 0,
            redelivery_drawn: HashSet::new(),
            deleted: HashSet::new(),
            delete_owner: HashMap::new(),
            handed_out: Vec::new(),
            deletes: Vec::new(),
            violations: Vec::new(),
            requests: Vec::new(),
            feed_raw: VecDeque::new(),
            download_raw: HashMap::new(),
            rng: Rng::new(data::mix(cfg.seed, 0xFA17)),
        };
        let shared = Arc::new(Shared {
            latency: cfg.latency,
            redeliver: cfg.redeliver,
            chunked: cfg.chunked,
            state: Mutex::new(state),
            guard: Mutex::new(None),
            first_request: OnceLock::new(),
        });
        let handler_shared = shared.clone();
        let tls = cfg
            .tls
            .as_ref()
            .map(EmulatorTls::server_config)
            .transpose()?;
        let secure = tls.is_some();
        let server = Server::start(
            cfg.port,
            Arc::new(move |req: &Request| handle(&handler_shared, req)),
            tls,
        )?;
        Ok(Emulator {
            shared,
            server,
            secure,
        })
    }

    /// `http://127.0.0.1:PORT` (`https://` when serving TLS).
    pub fn url(&self) -> String {
        let scheme = if self.secure { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.port())
    }

    pub fn port(&self) -> u16 {
        self.server.port()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        lock(&self.shared.state)
    }

    pub fn set_faults(&self, f: Faults) {
        self.state().faults = f;
    }

    /// Replaces the accepted token (revoking the old one: it then answers 401).
    pub fn set_token(&self, t: &str) {
        self.state().token = t.to_string();
    }

    /// Live arrival: `n` new tasks, due after every other, at the end of the feed.
    pub fn add_tasks(&self, n: usize) {
        let mut st = self.state();
        let first = st.account.tasks.len();
        st.account.add(n);
        for i in first..first + n {
            st.feed.push(FeedItem {
                item: Item::Task(i),
                redelivery: false,
            });
        }
    }

    /// Appends a raw task to the feed as it is (any query gets it, unfiltered), with
    /// the bodies its paths serve. A `/recording/X` path in its `delete` entries
    /// deletes it, after which `GET /recording-direct/X` answers 404.
    pub fn inject_task(&self, task: Value, contents: Vec<(String, Vec<u8>)>) {
        let mut st = self.state();
        let due = task.get("dueDate").and_then(Value::as_i64);
        let delete_paths = task
            .get("delete")
            .and_then(Value::as_array)
            .map(|d| {
                d.iter()
                    .filter_map(|e| e.get("path")?.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        st.injected_content.extend(contents);
        st.injected.push(Injected {
            task,
            due,
            delete_paths,
        });
        let item = Item::Injected(st.injected.len() - 1);
        st.feed.push(FeedItem {
            item,
            redelivery: false,
        });
    }

    /// The next feed request (`POST /task/sync/`, any body) gets `raw` instead of a
    /// page, before any injected fault; the cursor does not move. Queued answers are
    /// used in order, one per request.
    pub fn queue_feed_response(&self, raw: RawReply) {
        self.state().feed_raw.push_back(raw);
    }

    /// The next `GET path` gets `raw` instead of its content (queued in order).
    pub fn queue_download_response(&self, path: &str, raw: RawReply) {
        let mut st = self.state();
        st.download_raw
            .entry(path.to_string())
            .or_default()
            .push_back(raw);
    }

    /// Raw answers queued but not yet served.
    pub fn raw_responses_left(&self) -> usize {
        let st = self.state();
        st.feed_raw.len() + st.download_raw.values().map(VecDeque::len).sum::<usize>()
    }

    /// Every page token handed out so far answers 400 from now on.
    pub fn expire_page_tokens(&self) {
        let mut st = self.state();
        let tokens: Vec<String> = st.pages.drain().map(|(t, _)| t).collect();
        st.expired.extend(tokens);
    }

    /// Every task object returned in a fully written page, in order, repeats included.
    pub fn handed_out(&self) -> Vec<Value> {
        self.state().handed_out.clone()
    }

    /// The exact bytes `GET path` serves (also after the recording was deleted, so a
    /// test can verify what was stored); `None` for an unknown path.
    pub fn content(&self, path: &str) -> Option<Vec<u8>> {
        content_of(&self.state(), path)
    }

    /// [`Emulator::content`] for other threads, for example inside a delete guard
    /// (guards run while a DELETE is served, without the emulator's lock).
    pub fn content_source(&self) -> impl Fn(&str) -> Option<Vec<u8>> + Send + Sync + 'static {
        let shared = self.shared.clone();
        move |path| content_of(&lock(&shared.state), path)
    }

    /// Paths deleted (204), in order.
    pub fn deletes(&self) -> Vec<String> {
        self.state().deletes.clone()
    }

    pub fn set_delete_guard(&self, guard: DeleteGuard) {
        *lock(&self.shared.guard) = Some(Arc::new(guard));
    }

    /// Broken rules seen so far: refused by the delete guard, or a DELETE of a path
    /// no page ever handed out.
    pub fn violations(&self) -> Vec<String> {
        self.state().violations.clone()
    }

    pub fn requests(&self) -> Vec<RequestRecord> {
        self.state().requests.clone()
    }

    /// When the first request (of any kind) reached the emulator, before its latency.
    pub fn first_request_at(&self) -> Option<Instant> {
        self.shared.first_request.get().copied()
    }

    /// Closes the port and every open connection.
    pub fn stop(mut self) {
        self.server.stop();
    }
}

fn content_of(st: &State, path: &str) -> Option<Vec<u8>> {
    if let Some(b) = st.injected_content.get(path) {
        return Some(b.clone());
    }
    match resolve(st, path)? {
        Content::Bytes(b) => Some(b),
        Content::Recording(task, rec) => {
            let t = &st.account.tasks[task];
            Some(data::recording_bytes(&t.recordings[rec]))
        }
    }
}

fn error(status: u16, error: &str, message: &str) -> Response {
    Response::json(status, &json!({"error": error, "message": message}))
}

/// What a GET path serves.
enum Content {
    Bytes(Vec<u8>),
    /// (task index, recording index): streamed.
    Recording(usize, usize),
}

/// Resolves a generated path, ignoring deletions.
fn resolve(st: &State, path: &str) -> Option<Content> {
    let parts: Vec<&str> = path.strip_prefix('/')?.split('/').collect();
    match parts.as_slice() {
        ["task", id, "meta"] => st.account.find(id).map(|t| Content::Bytes(t.metadata())),
        ["task", id, "history"] => st.account.find(id)?.history().map(Content::Bytes),
        ["task", "transcription", id, rec] => {
            let t = st.account.find(id)?;
            t.transcription(t.recording(rec)?).map(Content::Bytes)
        }
        ["recording-direct", id, rec] => {
            let i = st.account.index(id)?;
            let r = st.account.tasks[i]
                .recordings
                .iter()
                .position(|r| r.id == *rec)?;
            Some(Content::Recording(i, r))
        }
        _ => None,
    }
}

enum Fault {
    None,
    ServerError(u16),
    TooMany(u64),
}

fn handle(shared: &Arc<Shared>, req: &Request) -> Response {
    shared.first_request.get_or_init(Instant::now);
    if !shared.latency.is_zero() {
        std::thread::sleep(shared.latency);
    }
    let (authorized, fault, body_fault, spike, raw) = {
        let mut st = lock(&shared.state);
        let expected = format!("Bearer {}", st.token);
        let authorized = req.header("authorization") == Some(expected.as_str());
        let raw = match (authorized, req.method.as_str(), req.path.as_str()) {
            (false, _, _) => None,
            (true, "POST", "/task/sync/") => st.feed_raw.pop_front(),
            (true, "GET", path) => st.download_raw.get_mut(path).and_then(VecDeque::pop_front),
            _ => None,
        };
        let f = st.faults.clone();
        let fault = if st.rng.chance(f.server_error) {
            Fault::ServerError(*st.rng.pick(&[500, 502, 503]))
        } else if st.rng.chance(f.too_many) {
            Fault::TooMany(f.retry_after_secs)
        } else {
            Fault::None
        };
        let body_fault = if st.rng.chance(f.drop_body) {
            BodyFault::Drop
        } else if st.rng.chance(f.stall_body) {
            BodyFault::Stall(f.stall_for)
        } else {
            BodyFault::None
        };
        let spike = if st.rng.chance(f.spike) {
            f.spike_latency
        } else {
            Duration::ZERO
        };
        (authorized, fault, body_fault, spike, raw)
    };
    if !spike.is_zero() {
        std::thread::sleep(spike);
    }
    let mut resp = if let Some(raw) = raw {
        Response::raw(raw)
    } else if !authorized {
        error(
            401,
            "unauthorized",
            "the Bearer token is missing, wrong or revoked",
        )
    } else {
        match fault {
            Fault::ServerError(code) => error(code, "server error", "injected fault"),
            Fault::TooMany(secs) => {
                let mut r = error(429, "too many requests", "injected fault");
                r.headers.push(("Retry-After".into(), secs.to_string()));
                r
            }
            Fault::None => route(shared, req),
        }
    };
    if authorized && matches!(fault, Fault::None) {
        resp.fault = body_fault;
    }
    let (method, path, status) = (req.method.clone(), req.path.clone(), resp.status);
    let inner = resp.on_sent.take();
    let log_shared = shared.clone();
    resp.on_sent = Some(Box::new(move |bytes, complete| {
        if let Some(f) = inner {
            f(bytes, complete);
        }
        lock(&log_shared.state).requests.push(RequestRecord {
            method,
            path,
            status,
            bytes,
            complete,
        });
    }));
    resp
}

fn route(shared: &Arc<Shared>, req: &Request) -> Response {
    let path = req.path.as_str();
    let method = req.method.as_str();
    let wrong_method = |allowed: &str| {
        error(
            405,
            "method not allowed",
            &format!("{path} answers {allowed} only"),
        )
    };
    if path == "/task/sync/" {
        return if method == "POST" {
            sync(shared, req)
        } else {
            wrong_method("POST")
        };
    }
    if path.starts_with("/recording/") {
        return if method == "DELETE" {
            delete(shared, path)
        } else {
            wrong_method("DELETE")
        };
    }
    match method {
        "GET" => download(shared, path),
        _ => error(404, "not found", &format!("nothing at {path}")),
    }
}

/// The due date of a feed item, when known.
fn due_of(st: &State, item: Item) -> Option<i64> {
    match item {
        Item::Task(i) => Some(st.account.tasks[i].due),
        Item::Injected(i) => st.injected[i].due,
    }
}

fn item_matches(st: &State, q: &Query, item: Item) -> bool {
    match item {
        Item::Task(i) => feed::matches(q, &st.account.tasks[i]),
        Item::Injected(_) => true,
    }
}

fn sync(shared: &Arc<Shared>, req: &Request) -> Response {
    let parsed = match feed::parse_sync_body(&req.body) {
        Ok(p) => p,
        Err(msg) => return error(400, "bad request", &msg),
    };
    let mut st = lock(&shared.state);
    let (query, start, count, replayed) = match parsed {
        SyncRequest::Query(q, count) => {
            let start = match st.cursors.get(&q.tag) {
                Some(&c) => c,
                None => {
                    let from = q.start_from.map(|ms| {
                        st.feed
                            .iter()
                            .position(|f| due_of(&st, f.item).is_none_or(|d| d >= ms))
                            .unwrap_or(st.feed.len())
                    });
                    let c = from.unwrap_or(0);
                    st.cursors.insert(q.tag.clone(), c);
                    c
                }
            };
            (Arc::new(*q), start, count, None)
        }
        SyncRequest::Page(token, count) => {
            if st.expired.contains(&token) {
                return error(
                    400,
                    "bad request",
                    "the page token expired; start a new round with the query",
                );
            }
            match st.pages.get(&token) {
                Some(p) => (p.query.clone(), p.start, count, Some(token)),
                None => return error(400, "bad request", "unknown page token"),
            }
        }
    };
    let mut tasks = Vec::new();
    let mut pos = start;
    while pos < st.feed.len() && tasks.len() < count {
        let item = st.feed[pos].item;
        if item_matches(&st, &query, item) {
            let task = match item {
                Item::Task(i) => match feed::render_task(&query, &st.account.tasks[i], &st.deleted)
                {
                    Ok(t) => t,
                    Err(msg) => return error(500, "server error", &msg),
                },
                Item::Injected(i) => st.injected[i].task.clone(),
            };
            tasks.push((pos, task));
        }
        pos += 1;
    }
    let end = pos;
    let more = (end..st.feed.len()).any(|p| item_matches(&st, &query, st.feed[p].item));
    let mut body = json!({"result": tasks.iter().map(|(_, t)| t.clone()).collect::<Vec<_>>()});
    if more {
        let earlier = replayed
            .as_ref()
            .and_then(|t| st.pages.get(t)?.next.clone());
        let token = match earlier {
            Some((e, token)) if e == end && st.pages.contains_key(&token) => token,
            _ => {
                st.token_serial += 1;
                let entropy = st.rng.next_u64();
                let token = format!("pg{}-{entropy:016x}", st.token_serial);
                let page = PageRef {
                    query: query.clone(),
                    start: end,
                    next: None,
                };
                st.pages.insert(token.clone(), page);
                if let Some(p) = replayed.as_ref().and_then(|t| st.pages.get_mut(t)) {
                    p.next = Some((end, token.clone()));
                }
                token
            }
        };
        body["next"] = json!(token);
    }
    drop(st);
    let mut resp = Response::json(200, &body);
    let done_shared = shared.clone();
    let tag = query.tag.clone();
    resp.on_sent = Some(Box::new(move |_, complete| {
        if complete {
            page_delivered(&done_shared, &tag, end, tasks);
        }
    }));
    resp
}

/// A page's body was fully written: move the cursor, record the tasks, draw re-deliveries.
fn page_delivered(shared: &Shared, tag: &str, end: usize, tasks: Vec<(usize, Value)>) {
    let mut st = lock(&shared.state);
    let cursor = st.cursors.entry(tag.to_string()).or_insert(0);
    *cursor = (*cursor).max(end);
    for (pos, task) in tasks {
        if let Some(dels) = task.get("delete").and_then(Value::as_array) {
            for p in dels.iter().filter_map(|d| d.get("path")?.as_str()) {
                st.delete_owner.insert(p.to_string(), task.clone());
            }
        }
        st.handed_out.push(task);
        let item = st.feed[pos];
        if !item.redelivery && matches!(item.item, Item::Task(_)) && st.redelivery_drawn.insert(pos)
        {
            let r = shared.redeliver;
            if st.rng.chance(r) {
                st.feed.push(FeedItem {
                    item: item.item,
                    redelivery: true,
                });
            }
        }
    }
}

fn download(shared: &Arc<Shared>, path: &str) -> Response {
    let mut st = lock(&shared.state);
    let chunked = st.rng.chance(shared.chunked);
    let recording_deleted = |st: &State| {
        path.strip_prefix("/recording-direct/")
            .is_some_and(|rest| st.deleted.contains(&format!("/recording/{rest}")))
    };
    let resp = if let Some(b) = st.injected_content.get(path) {
        if recording_deleted(&st) {
            return error(404, "not found", &format!("{path} was deleted"));
        }
        Response::new(200, "application/octet-stream", b.clone())
    } else {
        match resolve(&st, path) {
            None => return error(404, "not found", &format!("nothing at {path}")),
            Some(_) if recording_deleted(&st) => {
                return error(404, "not found", &format!("{path} was deleted"))
            }
            Some(Content::Bytes(b)) => Response::new(200, "application/json", b),
            Some(Content::Recording(t, r)) => {
                let rec = &st.account.tasks[t].recordings[r];
                let body = Body::Reader {
                    len: rec.size,
                    reader: Box::new(RecordingReader::new(rec)),
                };
                Response {
                    body,
                    ..Response::new(200, "audio/ogg", Vec::new())
                }
            }
        }
    };
    Response { chunked, ..resp }
}

/// The delete paths a path may name: a generated recording, or an injected task's delete.
fn deletable(st: &State, path: &str) -> bool {
    if st
        .injected
        .iter()
        .any(|i| i.delete_paths.iter().any(|p| p == path))
    {
        return true;
    }
    let rest = &path["/recording/".len()..];
    matches!(
        resolve(st, &format!("/recording-direct/{rest}")),
        Some(Content::Recording(..))
    )
}

/// A DELETE hit by a cut or stall still deletes; only its answer is lost.
fn delete(shared: &Arc<Shared>, path: &str) -> Response {
    let owner = {
        let st = lock(&shared.state);
        if !deletable(&st, path) {
            return error(404, "not found", &format!("nothing to delete at {path}"));
        }
        if st.deleted.contains(path) {
            return error(404, "not found", &format!("{path} was already deleted"));
        }
        st.delete_owner.get(path).cloned()
    };
    let guard = lock(&shared.guard).clone();
    let mut violation = None;
    match &owner {
        None => violation = Some(format!("DELETE {path}: no page handed out a delete for it")),
        Some(task) => {
            if let Some(g) = guard {
                if !g(task) {
                    let id = task.get("taskId").and_then(Value::as_str).unwrap_or("?");
                    violation = Some(format!(
                        "DELETE {path}: the delete guard refused it (task {id})"
                    ));
                }
            }
        }
    }
    let mut st = lock(&shared.state);
    st.violations.extend(violation);
    if !st.deleted.insert(path.to_string()) {
        return error(404, "not found", &format!("{path} was already deleted"));
    }
    st.deletes.push(path.to_string());
    Response::empty(204)
}

fn parse_arg<T: std::str::FromStr>(flag: &str, value: Option<&String>) -> Result<T, String> {
    let v = value.ok_or_else(|| format!("{flag} needs a value"))?;
    v.parse().map_err(|_| format!("{flag}: cannot read {v:?}"))
}

const USAGE: &str =
    "usage: spinoco-connector emulator [--port N] [--tasks N] [--seed N] [--token T] \
[--latency-ms N] [--recording-kb MIN-MAX] [--calls-only] [--recordings-per-call N] [--redeliver P] [--old-platform P] [--chunked P] \
[--start-due-ms N] [--server-error P] [--too-many P] [--retry-after S] [--drop-body P] \
[--stall-body P] [--stall-ms N] [--spike P] [--spike-ms N] [--tls-cert PEM --tls-key PEM]";

/// Reads the command line of `spinoco-connector emulator ...` (the subcommand itself may
/// be the first argument or already removed).
pub fn parse_cli(args: &[String]) -> Result<EmulatorConfig, String> {
    let mut cfg = EmulatorConfig::default();
    let mut it = args.iter().skip_while(|a| *a == "emulator");
    while let Some(flag) = it.next() {
        let f = &mut cfg.faults;
        match flag.as_str() {
            "--port" => cfg.port = parse_arg(flag, it.next())?,
            "--tasks" => cfg.tasks = parse_arg(flag, it.next())?,
            "--seed" => cfg.seed = parse_arg(flag, it.next())?,
            "--token" => cfg.token = parse_arg(flag, it.next())?,
            "--latency-ms" => cfg.latency = Duration::from_millis(parse_arg(flag, it.next())?),
            "--recording-kb" => {
                let v: String = parse_arg(flag, it.next())?;
                let (lo, hi) = v
                    .split_once('-')
                    .ok_or_else(|| format!("--recording-kb wants MIN-MAX, not {v:?}"))?;
                let kb = |s: &str| {
                    s.trim()
                        .parse::<u64>()
                        .map_err(|_| format!("--recording-kb: cannot read {v:?}"))
                };
                cfg.recording_size = (kb(lo)? * 1024, kb(hi)? * 1024);
                if cfg.recording_size.0 > cfg.recording_size.1 {
                    return Err(format!("--recording-kb {v}: MIN is larger than MAX"));
                }
            }
            "--calls-only" => cfg.calls_only = true,
            "--recordings-per-call" => cfg.recordings_per_call = Some(parse_arg(flag, it.next())?),
            "--redeliver" => cfg.redeliver = parse_arg(flag, it.next())?,
            "--old-platform" => cfg.old_platform = parse_arg(flag, it.next())?,
            "--chunked" => cfg.chunked = parse_arg(flag, it.next())?,
            "--start-due-ms" => cfg.start_due_ms = parse_arg(flag, it.next())?,
            "--server-error" => f.server_error = parse_arg(flag, it.next())?,
            "--too-many" => f.too_many = parse_arg(flag, it.next())?,
            "--retry-after" => f.retry_after_secs = parse_arg(flag, it.next())?,
            "--drop-body" => f.drop_body = parse_arg(flag, it.next())?,
            "--stall-body" => f.stall_body = parse_arg(flag, it.next())?,
            "--stall-ms" => f.stall_for = Duration::from_millis(parse_arg(flag, it.next())?),
            "--spike" => f.spike = parse_arg(flag, it.next())?,
            "--spike-ms" => f.spike_latency = Duration::from_millis(parse_arg(flag, it.next())?),
            "--tls-cert" | "--tls-key" => {
                let path: String = parse_arg(flag, it.next())?;
                let pem = std::fs::read(&path).map_err(|e| format!("{flag} {path}: {e}"))?;
                let tls = cfg.tls.get_or_insert(EmulatorTls {
                    cert_chain_pem: Vec::new(),
                    key_pem: Vec::new(),
                });
                if flag == "--tls-cert" {
                    tls.cert_chain_pem = pem;
                } else {
                    tls.key_pem = pem;
                }
            }
            other => return Err(format!("unknown option {other:?}")),
        }
    }
    Ok(cfg)
}

/// `spinoco-connector emulator ...`: starts, prints the URL on stdout, serves until killed.
pub fn run_cli(args: &[String]) -> i32 {
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("{USAGE}");
        return 0;
    }
    let cfg = match parse_cli(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("emulator: {e}\n{USAGE}");
            return 2;
        }
    };
    match Emulator::start(cfg) {
        Ok(emu) => {
            println!("{}", emu.url());
            let _ = std::io::Write::flush(&mut std::io::stdout());
            loop {
                std::thread::park();
            }
        }
        Err(e) => {
            eprintln!("emulator: cannot listen: {e}");
            1
        }
    }
}

#[cfg(test)]
mod tests;
