//! The sync engine: rounds of the feed, pages of tasks, files in parallel.
//!
//! A round begins by proving that the storage takes the journal: the journal entry (or
//! an empty one) is written with a fresh round nonce, read back and compared
//! ([`PageJournal::prove`]). Only then is the feed asked for anything, so a storage that
//! refuses the journal (a typo in the bucket, a read-only credential, a full quota)
//! stops the run while the platform's cursor has not moved.
//!
//! A round asks the feed for pages until it is drained. Each page is journaled before
//! any work, its files are transferred by a small pool of threads sharing one HTTP
//! agent, and a task's deletes run only after all its files are stored and the journal
//! says so. A page leaves the journal only when every task of it is done. Nothing here
//! knows which storage provider is behind the [`BlobStore`].
//!
//! A page the feed handed out exists only in memory until it is journaled, so that
//! write never gives up (whatever the budget or the error); only a stop request ends
//! the wait, as [`SyncError::DataAtRisk`] naming its tasks.
//!
//! While a page's files transfer, the next page is already asked for (one try). When it
//! comes it is journaled at once, inside the current page's entry, because the platform
//! may have moved its cursor past it and its token may expire before a restart; after a
//! crash it is worked right after the current page. This hides a feed round trip per
//! page.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use log::{debug, error, info, warn};
use serde_json::{json, Value};

use crate::config::Config;
use crate::journal::{JournalError, JournaledPage, PageJournal};
use crate::platform::{FeedPage, Platform, PlatformError};
use crate::retry::{with_retries, Reason, RetryBudget, Side, Step};
use crate::shutdown;
use crate::store::{BlobStore, StoreError, StoreErrorKind};
use crate::task::join_types;
use crate::task::{excerpt, FileJob, Task};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Drain the feed, finish everything, stop.
    Once,
    /// Rounds forever, with the poll interval between them.
    Service,
}

/// Why a run ended early.
#[derive(Debug)]
pub enum SyncError {
    /// The platform refused the token (401/403).
    Auth(PlatformError),
    /// The storage refused our credentials or permissions.
    StorageDenied(StoreError),
    /// The platform refused the query itself.
    Refused(String),
    /// The platform's TLS certificate did not verify.
    Tls(PlatformError),
    /// The platform or the storage stayed unreachable through every attempt (`--once`).
    Unavailable(String),
    Journal(JournalError),
    /// The process was asked to stop while the journal was being written: not a
    /// failure; the journal keeps what it had and the next start goes on from there.
    Stopped,
    /// Stopped on request while a page the platform handed out could not be journaled
    /// (the storage kept refusing or failing the write): the platform may have moved its
    /// cursor past these tasks, so they may exist nowhere else.
    DataAtRisk {
        tasks: Vec<String>,
    },
    /// `--once`: some files could not be stored or deleted. Failures keep their page
    /// journaled for the next run; rejected tasks were reported and cannot be stored.
    Incomplete {
        failed: u64,
        rejected: u64,
    },
}

impl fmt::Display for SyncError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SyncError::Auth(e) => e.fmt(f),
            SyncError::StorageDenied(e) => write!(f, "the storage refused access: {e}"),
            SyncError::Refused(m) => f.write_str(m),
            SyncError::Tls(e) => e.fmt(f),
            SyncError::Unavailable(m) => write!(f, "gave up when the retry budget (SP_TASK_SYNC_RETRY_TIMEOUT) was spent: {m}"),
            SyncError::Journal(e) => e.fmt(f),
            SyncError::Stopped => f.write_str("stopped on request"),
            SyncError::DataAtRisk { tasks } => write!(
                f,
                "stopped on request before a page the platform handed out could be journaled: its {} task(s) \
                 may not be handed out again; copy them from the platform by hand (or re-sync them with a new \
                 tag and SP_TASK_SYNC_START_FROM): {}",
                tasks.len(),
                tasks.join(", ")
            ),
            SyncError::Incomplete { failed, rejected } => write!(
                f,
                "not everything was stored: {failed} transfer(s) or delete(s) failed (their page stays \
                 journaled and is finished on the next run), {rejected} task(s) or file(s) rejected (see the errors above)"
            ),
        }
    }
}

impl std::error::Error for SyncError {}

impl From<JournalError> for SyncError {
    fn from(e: JournalError) -> Self {
        match e {
            JournalError::Store(s) if s.kind == StoreErrorKind::Denied => {
                SyncError::StorageDenied(s)
            }
            other => SyncError::Journal(other),
        }
    }
}

/// What a run did.
#[derive(Debug, Default, Clone)]
pub struct Summary {
    pub rounds: u64,
    pub pages: u64,
    pub tasks: u64,
    pub files: u64,
    pub bytes: u64,
    /// Files the platform answered 404 for (warnings, not failures).
    pub missing: u64,
    pub deletes: u64,
    /// Tasks that cannot be stored as sent (bad names, malformed JSON): errors, not retried.
    pub rejected: u64,
    /// The run stopped on SIGTERM/SIGINT.
    pub stopped: bool,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} tasks, {} files, {} in {} page(s); {} deleted on the platform, {} missing (404), {} rejected",
            self.tasks,
            self.files,
            megabytes(self.bytes),
            self.pages,
            self.deletes,
            self.missing,
            self.rejected
        )
    }
}

fn megabytes(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1_000_000.0)
}

pub struct Engine<'a> {
    cfg: &'a Config,
    platform: Platform,
    store: &'a dyn BlobStore,
    journal: PageJournal<'a>,
    budget: RetryBudget,
    summary: Summary,
}

/// The result of one retried operation.
enum Outcome<T> {
    Done(T),
    /// 404 on a download.
    Missing,
    /// Every attempt failed (only in `--once`).
    GaveUp(String),
    /// Cannot work for this item (bad name, refused path).
    Rejected(String),
    /// Stop the run.
    Fatal(SyncError),
    Stopped,
}

/// One try of an operation, sorted.
enum Try<T> {
    Ok(T),
    Retry {
        message: String,
        reason: Reason,
        after: Option<Duration>,
    },
    Missing,
    Reject(String),
    Fatal(SyncError),
    Stopped,
}

impl<'a> Engine<'a> {
    pub fn new(
        cfg: &'a Config,
        platform: Platform,
        store: &'a dyn BlobStore,
        mode: Mode,
    ) -> Engine<'a> {
        let budget = match mode {
            Mode::Once => RetryBudget::within(cfg.retry_timeout),
            Mode::Service => RetryBudget::FOREVER,
        };
        Engine {
            cfg,
            platform,
            store,
            journal: PageJournal::new(store, &cfg.tag),
            budget,
            summary: Summary::default(),
        }
    }

    /// Runs rounds until the feed is drained (`--once`) or forever (service), stopping
    /// early on SIGTERM/SIGINT with the current page journaled.
    pub fn run(mut self, mode: Mode) -> Result<Summary, SyncError> {
        info!(
            "syncing tag {:?} from {} into {} (get {}, delete {}, {} parallel transfers)",
            self.cfg.tag,
            self.platform.base_url(),
            self.store.describe(),
            join_types(&self.cfg.get),
            if self.cfg.delete.is_empty() {
                "nothing".to_string()
            } else {
                join_types(&self.cfg.delete)
            },
            self.cfg.concurrency
        );
        let mut failed = 0;
        loop {
            let started = Instant::now();
            let before = self.summary.clone();
            failed += match self.round() {
                Err(SyncError::Stopped) => {
                    self.summary.stopped = true;
                    0
                }
                other => other?,
            };
            self.summary.rounds += 1;
            crate::metrics::global().round_done(failed == 0 && !self.summary.stopped);
            if self.summary.stopped || shutdown::requested() {
                self.summary.stopped = true;
                info!("stopped on request; the page in progress stays journaled and is finished on the next start");
                break;
            }
            let s = &self.summary;
            // A quiet round (nothing new) is routine in service mode: keep it out of info.
            let level = if s.tasks == before.tasks {
                log::Level::Debug
            } else {
                log::Level::Info
            };
            log::log!(
                level,
                "round {} done in {:.1}s: {} tasks, {} files, {}, {} deleted",
                s.rounds,
                started.elapsed().as_secs_f64(),
                s.tasks - before.tasks,
                s.files - before.files,
                megabytes(s.bytes - before.bytes),
                s.deletes - before.deletes
            );
            if mode == Mode::Once {
                break;
            }
            debug!("feed drained; next round in {:?}", self.cfg.poll_interval);
            if !shutdown::sleep(self.cfg.poll_interval) {
                self.summary.stopped = true;
                break;
            }
        }
        if failed > 0 || (mode == Mode::Once && self.summary.rejected > 0) {
            return Err(SyncError::Incomplete {
                failed,
                rejected: self.summary.rejected,
            });
        }
        Ok(self.summary)
    }

    /// One round: the journaled page first, then the feed until drained. Returns how
    /// many items failed for good (only possible in `--once`).
    fn round(&mut self) -> Result<u64, SyncError> {
        let query = self.query();
        let mut request = query.clone();
        // The next page, fetched while the previous one was worked on.
        let mut ahead: Option<FeedPage> = None;
        let journaled = self.load_journal()?;
        // No feed request before the storage has taken (and given back) the journal.
        let held = journaled.clone().unwrap_or_default();
        self.retried_store("proving the storage takes the page journal", || {
            self.journal.prove(&held)
        })?;
        if let Some(page) = journaled {
            if !page.tasks.is_empty() {
                info!(
                    "finishing the journaled page ({} tasks, {} already stored)",
                    page.tasks.len(),
                    page.stored.len()
                );
            }
            let next = page.next.clone();
            // Already journaled (and just rewritten by the proof).
            let (failed, fetched) = self.work_page(page, false)?;
            if failed > 0 || self.summary.stopped {
                return Ok(failed);
            }
            if let Some(token) = next {
                request = self.page_request(&token);
                ahead = fetched;
            }
        }
        loop {
            let fetched = match ahead.take() {
                Some(page) => Outcome::Done(Some(page)),
                None => self.retried(Side::Platform, "the sync feed", || {
                    feed_try(&self.platform, &request)
                }),
            };
            let page = match fetched {
                Outcome::Done(Some(page)) => page,
                Outcome::Done(None) => {
                    info!("the page token expired; starting the round again");
                    request = query.clone();
                    continue;
                }
                Outcome::Stopped => {
                    self.summary.stopped = true;
                    return Ok(0);
                }
                Outcome::GaveUp(m) => return Err(SyncError::Unavailable(m)),
                Outcome::Rejected(m) => return Err(SyncError::Refused(m)),
                Outcome::Fatal(e) => return Err(e),
                Outcome::Missing => {
                    return Err(SyncError::Refused("the sync feed answered 404".into()))
                }
            };
            let FeedPage { tasks, next } = page;
            let (failed, fetched) = self.work_page(
                JournaledPage {
                    tasks,
                    next: next.clone(),
                    ..Default::default()
                },
                true,
            )?;
            if failed > 0 || self.summary.stopped {
                return Ok(failed);
            }
            match next {
                Some(token) => {
                    request = self.page_request(&token);
                    ahead = fetched;
                }
                None => return Ok(0),
            }
        }
    }

    fn page_request(&self, token: &str) -> Value {
        json!({ "page": token, "count": self.cfg.page_size })
    }

    fn query(&self) -> Value {
        let f = &self.cfg.filters;
        let mut query = json!({
            "tag": self.cfg.tag,
            "get": join_types(&self.cfg.get),
            "delete": join_types(&self.cfg.delete),
            "fileNameTemplate": self.cfg.template_source,
            "skillsMust": f.skills_must, "skillsShould": f.skills_should, "skillsMustNot": f.skills_must_not,
            "hashTagsMust": f.hashtags_must, "hashTagsShould": f.hashtags_should, "hashTagsMustNot": f.hashtags_must_not,
        });
        if let Some(ms) = self.cfg.start_from {
            query["startFrom"] = json!(ms.to_string());
        }
        json!({ "query": query, "count": self.cfg.page_size })
    }

    /// Journals the page (when it is new), does all its work, and clears the journal
    /// when nothing is left to do. Meanwhile it asks once for the next page; returns how
    /// many items failed for good, and that next page when it came.
    ///
    /// When the next page came, the finished page stays journaled with that next page
    /// inside it, until the caller journals the returned page in its place.
    fn work_page(
        &mut self,
        page: JournaledPage,
        fresh: bool,
    ) -> Result<(u64, Option<FeedPage>), SyncError> {
        if page.tasks.is_empty() {
            // Nothing to do; remember where the feed goes on, or forget the page.
            return self.close_page(page.next).map(|()| (0, None));
        }
        let started = Instant::now();
        if fresh {
            self.save_received(&page, &page.tasks)?;
        }
        // A page journaled ahead (before a restart) needs no asking again.
        let prefetch = match page.ahead {
            Some(_) => None,
            None => page.next.as_ref().map(|token| self.page_request(token)),
        };
        let work = PageWork::plan(page, self);
        let pool = self.cfg.concurrency.min(work.jobs.len()).max(1);
        let fetched = std::thread::scope(|s| {
            for _ in 0..pool {
                s.spawn(|| work.worker(self));
            }
            // One try only: on any trouble the caller asks again the usual way.
            let next = match prefetch.map(|r| feed_try(&self.platform, &r)) {
                None => return Ok(None),
                Some(Try::Ok(next)) => next,
                Some(Try::Retry { message: m, .. } | Try::Reject(m)) => {
                    warn!("the sync feed (asked ahead): {m}; asking again when this page is done");
                    return Ok(None);
                }
                Some(Try::Fatal(e)) => {
                    warn!("the sync feed (asked ahead): {e}");
                    return Ok(None);
                }
                Some(Try::Missing | Try::Stopped) => return Ok(None),
            };
            let Some(next) = next else { return Ok(None) };
            // Received, so it exists nowhere else: durable before anything else happens
            // to it (see the module comment), and never given up.
            let mut journal_page = work.journal_page.lock().unwrap();
            journal_page.ahead = Some(next);
            let saved =
                self.save_received(&journal_page, &journal_page.ahead.as_ref().unwrap().tasks);
            saved.map(|()| journal_page.ahead.clone())
        });
        let fetched = fetched?.or_else(|| work.journal_page.lock().unwrap().ahead.clone());
        let PageWork {
            counters: c,
            fatal,
            journal_page,
            ..
        } = work;
        if let Some(e) = fatal.into_inner().unwrap() {
            return Err(e);
        }
        let failed = c.failed.load(Ordering::Relaxed);
        let stopped = c.stopped.load(Ordering::Relaxed);
        let (files, bytes) = (
            c.files.load(Ordering::Relaxed),
            c.bytes.load(Ordering::Relaxed),
        );
        let tasks = journal_page.lock().unwrap().tasks.len() as u64;
        self.summary.pages += 1;
        self.summary.tasks += tasks;
        self.summary.files += files;
        self.summary.bytes += bytes;
        self.summary.missing += c.missing.load(Ordering::Relaxed);
        self.summary.deletes += c.deletes.load(Ordering::Relaxed);
        self.summary.rejected += c.rejected.load(Ordering::Relaxed);
        crate::metrics::global().page_done(
            tasks,
            c.deletes.load(Ordering::Relaxed),
            c.missing.load(Ordering::Relaxed),
            c.rejected.load(Ordering::Relaxed),
            failed,
        );
        let secs = started.elapsed().as_secs_f64();
        info!(
            "page {}: {tasks} tasks, {files} files, {} in {secs:.2}s ({:.1} MB/s), {} deleted{}{}",
            self.summary.pages,
            megabytes(bytes),
            bytes as f64 / 1_000_000.0 / secs.max(1e-6),
            c.deletes.load(Ordering::Relaxed),
            match c.missing.load(Ordering::Relaxed) {
                0 => String::new(),
                n => format!(", {n} missing"),
            },
            if failed > 0 {
                format!(", {failed} FAILED")
            } else {
                String::new()
            },
        );
        if stopped || shutdown::requested() {
            self.summary.stopped = true;
            return Ok((0, None));
        }
        if failed > 0 {
            return Ok((failed, None));
        }
        if fetched.is_none() {
            let next = journal_page.into_inner().unwrap().next;
            self.close_page(next)?;
        }
        Ok((0, fetched))
    }

    /// The page is done: keep only the token of the next one, if any.
    fn close_page(&self, next: Option<String>) -> Result<(), SyncError> {
        match next {
            Some(token) => {
                let rest = JournaledPage {
                    next: Some(token),
                    ..Default::default()
                };
                self.save_journal(&rest)
            }
            None => self.retried_store("clearing the page journal", || self.journal.clear()),
        }
    }

    /// Reads the journal, waiting out a storage that is briefly unreachable (each round
    /// starts here, so a short outage must not end a service). A damaged entry stops the
    /// run: it may hold tasks the platform will not hand out again.
    fn load_journal(&self) -> Result<Option<JournaledPage>, SyncError> {
        let mut damaged = None;
        let outcome = self.retried(Side::Storage, "reading the page journal", || {
            match self.journal.load() {
                Ok(page) => Try::Ok(page),
                Err(JournalError::Store(e)) => store_try(e),
                Err(e) => {
                    let message = e.to_string();
                    damaged = Some(e);
                    Try::Reject(message)
                }
            }
        });
        match outcome {
            Outcome::Done(page) => Ok(page),
            Outcome::Fatal(e) => Err(e),
            Outcome::Stopped => Err(SyncError::Stopped),
            Outcome::Rejected(m) | Outcome::GaveUp(m) => Err(match damaged {
                Some(e) => SyncError::Journal(e),
                None => SyncError::Unavailable(format!("reading the page journal: {m}")),
            }),
            Outcome::Missing => Ok(None),
        }
    }

    /// Journals `page`, which holds `received`, tasks the feed just handed out: the
    /// platform may have moved its cursor past them, so until this write works they
    /// exist only in memory. So it never gives up, whatever the budget or the error (a
    /// refusal may be fixed while we wait); only a stop request ends the wait, and then
    /// the run ends with [`SyncError::DataAtRisk`] naming them.
    fn save_received(&self, page: &JournaledPage, received: &[Value]) -> Result<(), SyncError> {
        let what = "journaling a page the platform handed out";
        let mut told = false;
        let saved = with_retries(RetryBudget::FOREVER, Side::Storage, what, || {
            match self.journal.save(page) {
                Ok(()) => Step::Done(()),
                Err(e) => {
                    if e.kind != StoreErrorKind::Transient && !std::mem::replace(&mut told, true) {
                        error!(
                            "{what}: {e}; {} task(s) exist only in memory now, so the write is retried \
                             until the storage takes it (a stop now puts them at risk)",
                            received.len()
                        );
                    }
                    let reason = match e.kind {
                        StoreErrorKind::Transient | StoreErrorKind::Source => Reason::Transport,
                        // Refused, yet retried: the label says the storage answered no.
                        StoreErrorKind::Denied | StoreErrorKind::Rejected => Reason::ServerError,
                    };
                    Step::Retry {
                        error: e.message,
                        reason,
                        after: None,
                    }
                }
            }
        });
        match saved {
            Ok(()) => Ok(()),
            Err(_) => {
                let tasks: Vec<String> = received.iter().map(|t| excerpt(t)).collect();
                error!(
                    "stopped before {} task(s) the platform handed out were journaled; they may exist nowhere else: {}",
                    tasks.len(),
                    tasks.join(", ")
                );
                Err(SyncError::DataAtRisk { tasks })
            }
        }
    }

    fn save_journal(&self, page: &JournaledPage) -> Result<(), SyncError> {
        self.retried_store("writing the page journal", || self.journal.save(page))
    }

    fn retried_store(
        &self,
        what: &str,
        op: impl FnMut() -> Result<(), StoreError>,
    ) -> Result<(), SyncError> {
        let mut op = op;
        match self.retried(Side::Storage, what, || match op() {
            Ok(()) => Try::Ok(()),
            Err(e) => store_try(e),
        }) {
            Outcome::Done(()) => Ok(()),
            Outcome::Fatal(e) => Err(e),
            Outcome::GaveUp(m) | Outcome::Rejected(m) => {
                Err(SyncError::Unavailable(format!("{what}: {m}")))
            }
            Outcome::Stopped => Err(SyncError::Stopped),
            Outcome::Missing => Err(SyncError::Unavailable(format!("{what}: not found"))),
        }
    }

    /// Runs `op` until it works, backing off between tries per the shared policy
    /// ([`crate::retry`]) within the run's budget.
    fn retried<T>(&self, side: Side, what: &str, mut op: impl FnMut() -> Try<T>) -> Outcome<T> {
        if shutdown::requested() {
            return Outcome::Stopped;
        }
        let tried = with_retries(self.budget, side, what, || match op() {
            Try::Ok(v) => Step::Done(Outcome::Done(v)),
            Try::Missing => Step::Done(Outcome::Missing),
            Try::Reject(m) => Step::Done(Outcome::Rejected(m)),
            Try::Fatal(e) => Step::Done(Outcome::Fatal(e)),
            Try::Stopped => Step::Done(Outcome::Stopped),
            Try::Retry {
                message,
                reason,
                after,
            } => Step::Retry {
                error: message,
                reason,
                after,
            },
        });
        match tried {
            Ok(outcome) => outcome,
            Err(_) if shutdown::requested() => Outcome::Stopped,
            Err(e) => Outcome::GaveUp(e.error),
        }
    }

    /// Downloads one file into the storage, retrying a broken download from the start.
    fn transfer(&self, job: &FileJob) -> Outcome<u64> {
        let _in_flight = crate::metrics::global().transfer();
        self.retried(Side::Platform, &job.name, || {
            let mut download = match self.platform.download(&job.path) {
                Ok(d) => d,
                Err(e) => return platform_try(e),
            };
            let size = download.expected_len();
            match self.store.put(&job.name, &mut download, size) {
                Ok(n) => Try::Ok(n),
                Err(_) if shutdown::requested() => Try::Stopped,
                Err(e) if e.kind == StoreErrorKind::Source => Try::Retry {
                    message: e.message,
                    reason: Reason::BrokenBody,
                    after: None,
                },
                Err(e) => store_try(e),
            }
        })
    }

    fn delete(&self, path: &str) -> Outcome<()> {
        self.retried(Side::Platform, path, || match self.platform.delete(path) {
            Ok(()) => Try::Ok(()),
            Err(e) => platform_try(e),
        })
    }
}

fn feed_try(platform: &Platform, request: &Value) -> Try<Option<FeedPage>> {
    match platform.feed(request) {
        Ok(page) => Try::Ok(Some(page)),
        Err(PlatformError::PageExpired) => Try::Ok(None),
        Err(e) => platform_try(e),
    }
}

fn platform_try<T>(e: PlatformError) -> Try<T> {
    match e {
        PlatformError::Auth { .. } => Try::Fatal(SyncError::Auth(e)),
        PlatformError::Tls { .. } => Try::Fatal(SyncError::Tls(e)),
        PlatformError::NotFound => Try::Missing,
        PlatformError::Transient {
            message,
            reason,
            retry_after,
        } => Try::Retry {
            message,
            reason,
            after: retry_after,
        },
        PlatformError::Refused { .. } | PlatformError::PageExpired => Try::Reject(e.to_string()),
    }
}

fn store_try<T>(e: StoreError) -> Try<T> {
    match e.kind {
        StoreErrorKind::Denied => Try::Fatal(SyncError::StorageDenied(e)),
        StoreErrorKind::Rejected => Try::Reject(e.message),
        StoreErrorKind::Transient | StoreErrorKind::Source => Try::Retry {
            message: e.message,
            reason: Reason::Transport,
            after: None,
        },
    }
}

#[derive(Default)]
struct Counters {
    files: AtomicU64,
    bytes: AtomicU64,
    missing: AtomicU64,
    deletes: AtomicU64,
    rejected: AtomicU64,
    failed: AtomicU64,
    stopped: AtomicBool,
}

impl Counters {
    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// A task of the page being worked on.
struct TaskWork {
    id: String,
    files: Vec<FileJob>,
    deletes: Vec<String>,
    remaining: AtomicUsize,
    /// Some file is not stored (missing, rejected or failed): no deletes.
    incomplete: AtomicBool,
}

enum Job {
    Transfer {
        task: usize,
        file: usize,
    },
    /// The task's files were stored before a restart: only its deletes are left.
    Deletes {
        task: usize,
    },
}

/// A page's work, shared by the pool's threads.
struct PageWork {
    tasks: Vec<TaskWork>,
    jobs: Vec<Job>,
    next_job: AtomicUsize,
    journal_page: Mutex<JournaledPage>,
    counters: Counters,
    fatal: Mutex<Option<SyncError>>,
    abort: AtomicBool,
}

impl PageWork {
    fn plan(page: JournaledPage, engine: &Engine) -> PageWork {
        let counters = Counters::default();
        let mut tasks = Vec::new();
        let mut jobs = Vec::new();
        for raw in &page.tasks {
            let task = match Task::from_value(raw) {
                Ok(t) => t,
                Err(e) => {
                    error!("skipping a task the platform sent: {e}");
                    Counters::add(&counters.rejected, 1);
                    continue;
                }
            };
            let files = match task.files(&engine.cfg.template) {
                Ok(f) => f,
                Err(e) => {
                    error!(
                        "task {}: {e}; nothing of it is stored and nothing deleted",
                        excerpt(raw)
                    );
                    Counters::add(&counters.rejected, 1);
                    continue;
                }
            };
            let deletes: Vec<String> = task.delete.iter().map(|d| d.path.clone()).collect();
            let index = tasks.len();
            if page.stored.contains(&task.task_id) {
                if !deletes.is_empty() {
                    jobs.push(Job::Deletes { task: index });
                }
            } else {
                jobs.extend((0..files.len()).map(|file| Job::Transfer { task: index, file }));
                if files.is_empty() && !deletes.is_empty() {
                    warn!("task {:?} asks for deletes but hands out no files; not deleting anything of it", task.task_id);
                }
            }
            tasks.push(TaskWork {
                id: task.task_id,
                remaining: AtomicUsize::new(files.len()),
                files,
                deletes,
                incomplete: AtomicBool::new(false),
            });
        }
        PageWork {
            tasks,
            jobs,
            next_job: AtomicUsize::new(0),
            journal_page: Mutex::new(page),
            counters,
            fatal: Mutex::new(None),
            abort: AtomicBool::new(false),
        }
    }

    fn worker(&self, engine: &Engine) {
        loop {
            if self.abort.load(Ordering::Relaxed) || shutdown::requested() {
                self.counters
                    .stopped
                    .store(shutdown::requested(), Ordering::Relaxed);
                return;
            }
            let i = self.next_job.fetch_add(1, Ordering::Relaxed);
            let Some(job) = self.jobs.get(i) else { return };
            match *job {
                Job::Transfer { task, file } => self.transfer(engine, task, file),
                Job::Deletes { task } => self.run_deletes(engine, task),
            }
        }
    }

    fn transfer(&self, engine: &Engine, task_index: usize, file: usize) {
        let task = &self.tasks[task_index];
        let job = &task.files[file];
        let stored = match engine.transfer(job) {
            Outcome::Done(n) => {
                debug!("stored {} ({n} bytes)", job.name);
                Counters::add(&self.counters.files, 1);
                Counters::add(&self.counters.bytes, n);
                crate::metrics::global().file_stored(n);
                true
            }
            Outcome::Missing => {
                warn!(
                    "{} is gone from the platform (404); skipped, and task {} keeps its recordings",
                    job.path, task.id
                );
                Counters::add(&self.counters.missing, 1);
                false
            }
            Outcome::Rejected(m) => {
                error!("{}: {m}; not stored", job.name);
                Counters::add(&self.counters.rejected, 1);
                false
            }
            Outcome::GaveUp(m) => {
                error!("{}: giving up: {m}", job.name);
                Counters::add(&self.counters.failed, 1);
                false
            }
            Outcome::Fatal(e) => {
                self.fail(e);
                false
            }
            Outcome::Stopped => {
                self.counters.stopped.store(true, Ordering::Relaxed);
                false
            }
        };
        if !stored {
            task.incomplete.store(true, Ordering::Relaxed);
        }
        if task.remaining.fetch_sub(1, Ordering::AcqRel) == 1
            && !task.incomplete.load(Ordering::Acquire)
            && !task.deletes.is_empty()
        {
            self.mark_stored_then_delete(engine, task_index);
        }
    }

    /// Records durably that all files of the task are stored, then deletes.
    fn mark_stored_then_delete(&self, engine: &Engine, task_index: usize) {
        let task = &self.tasks[task_index];
        let saved = {
            let mut page = self.journal_page.lock().unwrap();
            page.stored.insert(task.id.clone());
            engine.save_journal(&page)
        };
        match saved {
            Ok(()) => self.run_deletes(engine, task_index),
            Err(SyncError::Stopped) => self.counters.stopped.store(true, Ordering::Relaxed),
            Err(e) => {
                error!(
                    "task {}: cannot record it as stored, so nothing is deleted: {e}",
                    task.id
                );
                self.fail(e);
            }
        }
    }

    fn run_deletes(&self, engine: &Engine, task_index: usize) {
        for path in &self.tasks[task_index].deletes {
            if self.abort.load(Ordering::Relaxed) {
                return;
            }
            match engine.delete(path) {
                Outcome::Done(()) => {
                    debug!("deleted {path} on the platform");
                    Counters::add(&self.counters.deletes, 1);
                }
                Outcome::Missing => Counters::add(&self.counters.deletes, 1),
                Outcome::Rejected(m) => {
                    error!("delete of {path} refused: {m}; the recording stays on the platform");
                    Counters::add(&self.counters.rejected, 1);
                }
                Outcome::GaveUp(m) => {
                    error!("delete of {path} failed: {m}");
                    Counters::add(&self.counters.failed, 1);
                }
                Outcome::Fatal(e) => return self.fail(e),
                Outcome::Stopped => {
                    self.counters.stopped.store(true, Ordering::Relaxed);
                    return;
                }
            }
        }
    }

    fn fail(&self, e: SyncError) {
        error!("{e}");
        self.abort.store(true, Ordering::Relaxed);
        self.fatal.lock().unwrap().get_or_insert(e);
    }
}
