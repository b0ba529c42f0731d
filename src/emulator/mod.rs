//! A threaded HTTP emulator of the Spinoco platform's task-sync API
//! (`/work/shared/platform-api.md`), for the tests, the benchmark and the demo.
//!
//! The real platform cannot be broken on demand, so this one can: it serves a
//! deterministic account (see [`data`]), keeps per-tag cursors and page tokens the
//! way the contract allows, and injects faults (errors, 429s, cut or stalled bodies,
//! latency spikes) drawn from a seeded generator. It also records what it handed out
//! and what was deleted, so a test can check the connector's side of the contract.

mod cli;
mod data;
mod feed;
mod http;
mod serve;

pub use cli::run_cli;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::Value;

use data::{Account, AccountSpec, Rng};
use feed::Query;
pub use http::RawReply;
use http::{lock, Request, Server};
use serve::{content_of, handle};

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

#[cfg(test)]
mod tests;
