//! The sync engine: rounds of the feed, a window of pages, files in parallel.
//!
//! A round begins by proving that the storage takes the journal: the journal entry (or
//! an empty one) is written with a fresh round nonce, read back and compared
//! ([`PageJournal::prove`]). Only then is the feed asked for anything, so a storage that
//! refuses the journal (a typo in the bucket, a read-only credential, a full quota)
//! stops the run while the platform's cursor has not moved.
//!
//! A round then asks the feed for pages until it is drained, keeping a small window of
//! pages in work at once ([`WINDOW_PAGES`], and at most [`WINDOW_BYTES`] of task JSON):
//! one pool of threads takes the files of every page in the window from one queue, so
//! the pool never drains between pages, and the next page is asked for as soon as one
//! leaves the window. The journal holds every page of the window; a page leaves it
//! only when every task of it is done, and a restart finishes all of them first.
//!
//! Three kinds of thread share a [`Round`]: this one asks the feed, the workers transfer
//! and delete, and one journal writer owns every write of the journal entry. The feed
//! thread asks for a page only after everything it received before is durable (so the
//! journal's `next` token is never behind the platform's cursor by more than the page
//! in flight), and hands a new page to the workers only after the write that holds it.
//! A page the feed handed out exists only in memory until then, so that write never
//! gives up (whatever the budget or the error); only a stop request ends the wait, as
//! [`SyncError::DataAtRisk`] naming its tasks.
//!
//! Group commit. When the last file of a task with deletes is stored, the worker adds
//! the task's id to its page's `stored` set and raises the journal's generation; the
//! task's deletes wait, tagged with that generation, and the worker goes on with other
//! files. The writer takes everything changed so far (after a short linger that lets a
//! few more tasks join, cut short when a new page waits), writes it in one request, and
//! when it is durable queues the deletes of every task whose generation it covers, at
//! the front of the queue. So no worker waits for a journal write, one write records
//! every task that became stored while the previous write was in flight, and "recorded
//! as stored before the first DELETE" holds by construction: a delete is queued only by
//! the writer, only after a durable write whose snapshot was taken after that task's
//! id was added.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use log::{debug, error, info, log_enabled, warn};
use serde_json::{json, Value};

use crate::config::Config;
use crate::journal::{self, BacklogRef, EncodedPage, Journal, JournalError, PageJournal, Tail};
use crate::platform::{FeedPage, Platform, PlatformError};
use crate::retry::{with_retries, Reason, RetryBudget, Side, Step};
use crate::shutdown;
use crate::store::{BlobStore, StoreError, StoreErrorKind};
use crate::task::{excerpt, FileJob, NameDifferences, Task};
use crate::task::{join_types, DataType};

/// Pages in work at once (the journal holds them all).
pub const WINDOW_PAGES: usize = 3;
/// The task JSON of the pages in work at once, at most (one page is always admitted).
pub const WINDOW_BYTES: usize = 2 << 20;
/// How long the journal writer lets more tasks join a write that only records tasks
/// as stored (their deletes wait that long at most; no worker waits).
const GROUP_LINGER: Duration = Duration::from_millis(100);
/// A write goes without lingering once this many tasks wait for it.
const GROUP_MAX: usize = 32;

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
        feed_gaps: u64,
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
            SyncError::Incomplete {
                failed,
                rejected,
                feed_gaps,
            } => {
                write!(
                    f,
                    "not everything was stored: {failed} transfer(s) or delete(s) failed (their page stays \
                     journaled and is finished on the next run), {rejected} task(s) or file(s) rejected (see the errors above)"
                )?;
                if *feed_gaps > 0 {
                    write!(
                        f,
                        ", {feed_gaps} answer(s) of the feed lost on the way (each may have held one task; see the errors above)"
                    )?;
                }
                Ok(())
            }
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
    /// Answers to a query of the feed lost after it was sent (each may have held a task
    /// the platform will not hand out again).
    pub feed_gaps: u64,
    /// The run stopped on SIGTERM/SIGINT.
    pub stopped: bool,
    /// Writes (and removals) of the page journal.
    pub journal_writes: u64,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} tasks, {} files, {} in {} page(s); {} deleted on the platform, {} missing (404), {} rejected; {} journal writes",
            self.tasks,
            self.files,
            megabytes(self.bytes),
            self.pages,
            self.deletes,
            self.missing,
            self.rejected,
            self.journal_writes
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
    name_differences: NameDifferences,
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
    /// Final for this item: a storage error after the storage client spent its own
    /// retry budget (the layer that made the request decides; see `crate::retry`).
    GaveUp(String),
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
            name_differences: NameDifferences::default(),
        }
    }

    /// Runs rounds until the feed is drained (`--once`) or forever (service), stopping
    /// early on SIGTERM/SIGINT with the pages in progress journaled.
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
            let outcome = self.round();
            self.summary.journal_writes = self.journal.writes();
            failed += match outcome {
                Err(SyncError::Stopped) => {
                    self.summary.stopped = true;
                    0
                }
                other => other?,
            };
            self.summary.rounds += 1;
            if let Some(d) = self.name_differences.take() {
                warn!("{d}");
            }
            crate::metrics::global().round_done(failed == 0 && !self.summary.stopped);
            if self.summary.stopped || shutdown::requested() {
                self.summary.stopped = true;
                info!("stopped on request; the pages in progress stay journaled and are finished on the next start");
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
        let s = &self.summary;
        if failed > 0 || (mode == Mode::Once && (s.rejected > 0 || s.feed_gaps > 0)) {
            return Err(SyncError::Incomplete {
                failed,
                rejected: s.rejected,
                feed_gaps: s.feed_gaps,
            });
        }
        Ok(self.summary)
    }

    /// One round: the journaled pages first (with the feed already asked for more
    /// beside them), then the feed until drained. Returns how many items failed for
    /// good (only possible in `--once`).
    fn round(&mut self) -> Result<u64, SyncError> {
        let mut journaled = self.load_journal()?.unwrap_or_default();
        if let Some(sent) = journaled.query.take() {
            self.feed_gap(&format!(
                "a query of the sync feed was sent at {} and its answer was never journaled (the \
                 connector stopped while it was on its way)",
                crate::template::iso_millis(sent as i64)
            ));
            self.summary.feed_gaps += 1;
        }
        let backlog = match &journaled.backlog {
            Some(at) => self
                .read_journal("reading the page journal's backlog", || {
                    self.journal.load_backlog(at)
                })?
                .unwrap_or_default(),
            None => Vec::new(),
        };
        let request = match &journaled.next {
            Some(token) => self.page_request(token),
            None => {
                // Marked before it is sent, cleared by the write that holds its answer.
                journaled.query = Some(now_ms());
                self.query()
            }
        };
        // No feed request before the storage has taken (and given back) the journal.
        self.retried_store("proving the storage takes the page journal", || {
            self.journal.prove(&journaled)
        })?;
        let round = Round::new(self);
        std::thread::scope(|s| {
            s.spawn(|| round.journal_writer());
            for _ in 0..self.cfg.concurrency.max(1) {
                s.spawn(|| round.worker());
            }
            round.feed(journaled, backlog, request);
            round.finish();
        });
        let (totals, failed) = round.close()?;
        let s = &mut self.summary;
        s.pages += totals.pages;
        s.tasks += totals.tasks;
        s.files += totals.files;
        s.bytes += totals.bytes;
        s.missing += totals.missing;
        s.deletes += totals.deletes;
        s.rejected += totals.rejected;
        s.feed_gaps += totals.feed_gaps;
        s.stopped |= totals.stopped;
        Ok(failed)
    }

    /// Reports an answer of the feed's query that may have held a task and was lost.
    fn feed_gap(&self, what: &str) {
        crate::metrics::global().feed_gap();
        error!(
            "{what}: at most one task the platform handed out then may be missing, as the query \
             cannot be replayed; to fetch it again, sync into a new SP_TASK_SYNC_TAG with \
             SP_TASK_SYNC_START_FROM before that time (files already stored are rewritten harmlessly)"
        );
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
        // The query cannot be replayed: an answer lost on its way may have held tasks
        // the platform will not hand out again. Asking it for one task keeps that to at
        // most one; the pages after it come by replayable, journaled tokens.
        json!({ "query": query, "count": 1 })
    }

    /// Reads the journal, waiting out a storage that is briefly unreachable (each round
    /// starts here, so a short outage must not end a service). A damaged entry stops the
    /// run: it may hold tasks the platform will not hand out again.
    fn load_journal(&self) -> Result<Option<Journal>, SyncError> {
        self.read_journal("reading the page journal", || self.journal.load())
            .map(|found| found.flatten())
    }

    /// Reads something of the journal (see [`Engine::load_journal`]); `Ok(None)` when
    /// the storage has nothing there.
    fn read_journal<T>(
        &self,
        what: &str,
        mut read: impl FnMut() -> Result<T, JournalError>,
    ) -> Result<Option<T>, SyncError> {
        let mut damaged = None;
        let outcome = self.retried(Side::Storage, what, || match read() {
            Ok(found) => Try::Ok(found),
            Err(JournalError::Store(e)) => store_try(e),
            Err(e) => {
                let message = e.to_string();
                damaged = Some(e);
                Try::Reject(message)
            }
        });
        match outcome {
            Outcome::Done(found) => Ok(Some(found)),
            Outcome::Fatal(e) => Err(e),
            Outcome::Stopped => Err(SyncError::Stopped),
            Outcome::Rejected(m) | Outcome::GaveUp(m) => Err(match damaged {
                Some(e) => SyncError::Journal(e),
                None => SyncError::Unavailable(format!("{what}: {m}")),
            }),
            Outcome::Missing => Ok(None),
        }
    }

    /// Writes a journal entry that holds tasks the feed just handed out: the platform
    /// may have moved its cursor past them, so until this write works they exist only
    /// in memory. So it never gives up, whatever the budget or the error (a refusal may
    /// be fixed while we wait); only a stop request ends the wait, and then the run
    /// ends with [`SyncError::DataAtRisk`] naming them (`at_risk`).
    fn save_received(
        &self,
        mut write: impl FnMut() -> Result<(), StoreError>,
        at_risk: impl Fn() -> Vec<String>,
    ) -> Result<(), SyncError> {
        let what = "journaling a page the platform handed out";
        let mut told = false;
        let saved = with_retries(RetryBudget::FOREVER, Side::Storage, what, || {
            match write() {
                Ok(()) => Step::Done(()),
                Err(e) => {
                    if e.kind != StoreErrorKind::Transient && !std::mem::replace(&mut told, true) {
                        error!(
                            "{what}: {e}; {} task(s) exist only in memory now, so the write is retried \
                             until the storage takes it (a stop now puts them at risk)",
                            at_risk().len()
                        );
                    }
                    let reason = match e.kind {
                        StoreErrorKind::Transient
                        | StoreErrorKind::Source
                        | StoreErrorKind::Restart => Reason::Transport,
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
                let tasks = at_risk();
                error!(
                    "stopped before {} task(s) the platform handed out were journaled; they may exist nowhere else: {}",
                    tasks.len(),
                    tasks.join(", ")
                );
                Err(SyncError::DataAtRisk { tasks })
            }
        }
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
            Try::GaveUp(_) if shutdown::requested() => Step::Done(Outcome::Stopped),
            Try::GaveUp(m) => Step::Done(Outcome::GaveUp(m)),
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
            let mut download = match self.platform.download(&job.path, self.cfg.max_file_size) {
                Ok(d) => d,
                Err(e) => return platform_try(e),
            };
            let size = download.expected_len();
            let stored = self
                .store
                .put_with(&job.name, &mut download, size, &job.info);
            // The body itself gave up (too large, stalled): it says how to take that.
            if let Some(failure) = download
                .take_failure()
                .filter(|_| stored.is_err() && !shutdown::requested())
            {
                return platform_try(failure);
            }
            match stored {
                Ok(n) => Try::Ok(n),
                Err(_) if shutdown::requested() => Try::Stopped,
                Err(e) if e.kind == StoreErrorKind::Source => Try::Retry {
                    message: e.message,
                    reason: Reason::BrokenBody,
                    after: None,
                },
                // The store lost the upload: the file is transferred anew.
                Err(e) if e.kind == StoreErrorKind::Restart => Try::Retry {
                    message: e.message,
                    reason: Reason::ServerError,
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
        PlatformError::Lost { message, reason } => Try::Retry {
            message,
            reason,
            after: None,
        },
        PlatformError::Refused { .. }
        | PlatformError::PageExpired
        | PlatformError::Unstorable { .. } => Try::Reject(e.to_string()),
    }
}

/// Sorts a storage error. The storage client already retried its request within the
/// run's budget, so a transient error here is final; only a broken download (the
/// source of a transfer) is tried again, by the engine.
fn store_try<T>(e: StoreError) -> Try<T> {
    match e.kind {
        StoreErrorKind::Denied => Try::Fatal(SyncError::StorageDenied(e)),
        StoreErrorKind::Rejected => Try::Reject(e.message),
        StoreErrorKind::Transient => Try::GaveUp(e.message),
        StoreErrorKind::Restart => Try::Retry {
            message: e.message,
            reason: Reason::ServerError,
            after: None,
        },
        StoreErrorKind::Source => Try::Retry {
            message: e.message,
            reason: Reason::BrokenBody,
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
}

impl Counters {
    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// A file name another task has in the window, and whose.
struct NameClash {
    name: String,
    owner: String,
}

/// A task of a page in work.
struct TaskWork {
    id: String,
    files: Vec<FileJob>,
    deletes: Vec<String>,
    remaining: AtomicUsize,
    /// Some file is not stored (missing, rejected or failed): no deletes.
    incomplete: AtomicBool,
}

/// A page in work: its tasks planned, and their JSON as the journal holds it.
struct Page {
    number: u64,
    tasks_json: String,
    /// Every task the platform sent, for logs and counts (ids or excerpts).
    sent: Vec<String>,
    /// The names of its tasks' files in lower case, with their task ids.
    names: Vec<(String, String)>,
    tasks: Vec<TaskWork>,
    /// Tasks not done yet; the page is finished at zero.
    left: AtomicUsize,
    counters: Counters,
    started: Instant,
}

enum Job {
    Transfer(Arc<Page>, usize, usize),
    /// The task's files are stored and recorded so: its deletes.
    Deletes(Arc<Page>, usize),
}

/// A page of the window, as the journal holds it.
struct Entry {
    page: Arc<Page>,
    stored: BTreeSet<String>,
    /// The generation whose write first holds this page (0: it was journaled before).
    added: u64,
    /// Its jobs, queued when that write is durable.
    held: Vec<Job>,
    /// All its tasks are done but some failed (`--once`): it stays journaled.
    finished: bool,
}

#[derive(Default)]
struct State {
    jobs: VecDeque<Job>,
    entries: Vec<Entry>,
    window_bytes: usize,
    next: Option<String>,
    /// Generation of the last change to what the journal must hold, and of the last
    /// durable write; a write takes every change up to its snapshot.
    changed: u64,
    durable: u64,
    /// Generation of the last page with tasks received from the feed: until a write
    /// of it is durable, that write never gives up.
    received: u64,
    /// Generation of the last feed answer: the feed is asked again only once it is
    /// durable, so the journal's `next` token is never behind.
    asked: u64,
    /// Deletes waiting for the write of their generation.
    waiting: Vec<(u64, Arc<Page>, usize)>,
    /// The pages of a long answer not taken into the window yet.
    backlog: Option<Backlog>,
    /// A backlog object was written this round (removed once no entry refers to it).
    backlog_used: bool,
    /// Unix milliseconds the query in flight was sent; written with every entry until
    /// the entry that holds its answer.
    query_mark: Option<u64>,
    /// A feed request is on its way: what it brings must still be written.
    asking: bool,
    /// The names of the files of every task in the window (lower case), and whose.
    names: HashMap<String, NameOwner>,
    over: bool,
    totals: Summary,
}

/// Marks the feed thread's request as answered (or given up) when dropped, after the
/// page it brought was admitted.
struct Asking<'r, 'e>(&'r Round<'e>);

impl Drop for Asking<'_, '_> {
    fn drop(&mut self) {
        self.0.lock().asking = false;
        self.0.changes.notify_one();
    }
}

/// The task whose file has a name in the window, and how many pages list it there
/// (a re-delivered task may be in two).
struct NameOwner {
    task: String,
    pages: usize,
}

/// The pages of an answer after its first, journaled once (see [`crate::journal`]).
struct Backlog {
    at: BacklogRef,
    pages: VecDeque<Vec<Value>>,
}

/// An answer cut into pages of at most `size` tasks.
fn split_pages(tasks: Vec<Value>, size: usize) -> VecDeque<Vec<Value>> {
    let size = size.max(1);
    if tasks.len() <= size {
        return VecDeque::from([tasks]);
    }
    let mut pages = VecDeque::new();
    let mut rest = tasks.into_iter();
    loop {
        let page: Vec<Value> = rest.by_ref().take(size).collect();
        if page.is_empty() {
            return pages;
        }
        pages.push_back(page);
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// One round's shared state: the feed thread, the workers and the journal writer (see
/// the module comment).
struct Round<'e> {
    engine: &'e Engine<'e>,
    state: Mutex<State>,
    /// For the workers: a job was queued, or the round is over.
    work: Condvar,
    /// For the writer: the journal must hold something new.
    changes: Condvar,
    /// For the feed thread: a write became durable or a page left the window.
    progress: Condvar,
    abort: AtomicBool,
    fatal: Mutex<Option<SyncError>>,
    failed: AtomicU64,
    /// Answers to a query lost on their way (see [`Engine::feed_gap`]).
    gaps: AtomicU64,
    /// Pages planned so far (their numbers in the log).
    planned: AtomicU64,
}

/// The age of the oldest journaled page of the window, for `/metrics` (and its alert).
fn report_oldest(st: &State) {
    let oldest = st.entries.iter().map(|e| e.page.started).min();
    crate::metrics::global().oldest_page(oldest);
}

/// How often a waiting thread looks at the stop flag.
const STOP_POLL: Duration = Duration::from_millis(100);

impl<'e> Round<'e> {
    fn new(engine: &'e Engine<'e>) -> Round<'e> {
        Round {
            engine,
            state: Mutex::default(),
            work: Condvar::new(),
            changes: Condvar::new(),
            progress: Condvar::new(),
            abort: AtomicBool::new(false),
            fatal: Mutex::new(None),
            failed: AtomicU64::new(0),
            gaps: AtomicU64::new(0),
            planned: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wait<'g>(&self, cv: &Condvar, st: MutexGuard<'g, State>) -> MutexGuard<'g, State> {
        cv.wait_timeout(st, STOP_POLL)
            .unwrap_or_else(|e| e.into_inner())
            .0
    }

    fn halted(&self) -> bool {
        self.abort.load(Ordering::Relaxed) || shutdown::requested()
    }

    fn fail(&self, e: SyncError) {
        error!("{e}");
        self.abort.store(true, Ordering::Relaxed);
        self.fatal.lock().unwrap().get_or_insert(e);
        self.work.notify_all();
        self.changes.notify_all();
        self.progress.notify_all();
    }

    /// The feed thread: the journaled pages first, then pages from the feed while the
    /// window has room, each handed to the workers once the journal holds it. The pages
    /// of an answer longer than a page wait in the backlog (journaled once) and are
    /// taken into the window before the feed is asked again.
    fn feed(&self, journaled: Journal, backlog: Vec<Vec<Value>>, mut request: Value) {
        let engine = self.engine;
        let Journal {
            pages,
            next,
            backlog: at,
            query: mark,
            ..
        } = journaled;
        {
            let mut st = self.lock();
            st.next = next;
            st.query_mark = mark;
            st.backlog = at.map(|at| Backlog {
                at,
                pages: backlog.into(),
            });
            st.backlog_used = st.backlog.is_some();
        }
        for p in pages {
            info!(
                "finishing the journaled page ({} tasks, {} already stored)",
                p.tasks.len(),
                p.stored.len()
            );
            // Planned outside the lock (names are rendered here); durable already.
            let (page, jobs) = self.plan(&p.tasks, &p.stored);
            let mut st = self.lock();
            st.jobs.extend(jobs);
            self.admit(&mut st, page, p.stored, 0, Vec::new());
            self.work.notify_all();
        }
        let query = engine.query();
        let mut drained = false;
        loop {
            let mut st = self.lock();
            loop {
                if self.halted() || self.failed.load(Ordering::Relaxed) > 0 {
                    return;
                }
                // Never ask before what came is durable, nor beyond the window.
                if st.durable >= st.asked
                    && st.entries.len() < WINDOW_PAGES
                    && st.window_bytes < WINDOW_BYTES
                {
                    break;
                }
                st = self.wait(&self.progress, st);
            }
            if let Some(tasks) = st.backlog.as_mut().and_then(|b| b.pages.pop_front()) {
                // Durable in the backlog already: the write that takes it only moves it.
                drop(st);
                let (page, jobs) = self.plan(&tasks, &BTreeSet::new());
                let mut st = self.lock();
                if let Some(b) = st.backlog.as_mut() {
                    b.at.taken += 1;
                }
                st.changed += 1;
                let gen = st.changed;
                st.asked = gen;
                self.admit(&mut st, page, BTreeSet::new(), gen, jobs);
                self.changes.notify_one();
                continue;
            }
            if drained {
                return;
            }
            let is_query = request.get("query").is_some();
            if is_query && st.query_mark.is_none() {
                // A query asked again within the round (a page token expired): marked
                // durably before it is sent, like the round's first.
                st.query_mark = Some(now_ms());
                st.next = None;
                st.changed += 1;
                st.asked = st.changed;
                self.changes.notify_one();
                continue;
            }
            // The writer stays until this request's answer is admitted (or it failed):
            // a stop while it is on its way must not leave its page unwritten.
            st.asking = true;
            drop(st);
            let _asking = Asking(self);
            let fetched = engine.retried(Side::Platform, "the sync feed", || {
                match engine.platform.feed(&request) {
                    Ok(page) => Try::Ok(Some(page)),
                    Err(PlatformError::PageExpired) => Try::Ok(None),
                    Err(e) => {
                        if is_query && matches!(e, PlatformError::Lost { .. }) {
                            engine.feed_gap(&format!(
                                "the answer to a query of the sync feed was lost on its way ({e})"
                            ));
                            self.gaps.fetch_add(1, Ordering::Relaxed);
                        }
                        platform_try(e)
                    }
                }
            });
            let FeedPage { tasks, next } = match fetched {
                Outcome::Done(Some(page)) => page,
                Outcome::Done(None) => {
                    info!("the page token expired; starting the round again");
                    request = query.clone();
                    continue;
                }
                Outcome::Stopped => return,
                Outcome::GaveUp(m) => return self.fail(SyncError::Unavailable(m)),
                Outcome::Rejected(m) => return self.fail(SyncError::Refused(m)),
                Outcome::Fatal(e) => return self.fail(e),
                Outcome::Missing => {
                    return self.fail(SyncError::Refused("the sync feed answered 404".into()))
                }
            };
            match &next {
                Some(token) => request = engine.page_request(token),
                None => drained = true,
            }
            let mut pages = split_pages(tasks, engine.cfg.page_size as usize);
            let first = pages.pop_front();
            let backlog = if pages.is_empty() {
                None
            } else {
                match self.save_backlog(&pages) {
                    Some(at) => Some(Backlog { at, pages }),
                    None => return,
                }
            };
            let planned = first.map(|tasks| self.plan(&tasks, &BTreeSet::new()));
            let mut st = self.lock();
            st.next = next;
            st.query_mark = None;
            if backlog.is_some() {
                st.backlog = backlog;
                st.backlog_used = true;
            }
            st.changed += 1;
            let gen = st.changed;
            st.asked = gen;
            if let Some((page, jobs)) = planned {
                st.received = gen;
                self.admit(&mut st, page, BTreeSet::new(), gen, jobs);
            }
            self.changes.notify_one();
        }
    }

    /// Journals the pages of an answer after its first, once, before any entry refers
    /// to them: they exist only in memory until then, so the write never gives up (see
    /// [`Engine::save_received`]). `None` when the run stops or fails meanwhile.
    fn save_backlog(&self, pages: &VecDeque<Vec<Value>>) -> Option<BacklogRef> {
        let engine = self.engine;
        let backlog = journal::Backlog {
            id: journal::round_nonce(),
            pages: pages
                .iter()
                .map(|p| p.iter().map(Value::to_string).collect())
                .collect(),
        };
        info!(
            "the feed answered {} more page(s) than asked for; they are journaled once and worked \
             before the feed is asked again",
            pages.len()
        );
        let saved = engine.save_received(
            || engine.journal.save_backlog(&backlog),
            || pages.iter().flatten().map(excerpt).collect(),
        );
        match saved {
            Ok(()) => Some(BacklogRef {
                id: backlog.id,
                taken: 0,
            }),
            Err(e) => {
                self.fail(e);
                None
            }
        }
    }

    /// Plans the work of a page: every task checked and named, its jobs listed (only
    /// deletes for a task recorded as stored). Tasks that cannot be stored as sent are
    /// reported and counted here.
    fn plan(&self, raw: &[Value], stored: &BTreeSet<String>) -> (Arc<Page>, Vec<Job>) {
        let engine = self.engine;
        let counters = Counters::default();
        let mut tasks = Vec::with_capacity(raw.len());
        // What the journal holds of the page: the tasks that can be worked.
        let mut accepted = Vec::with_capacity(raw.len());
        let mut names: HashMap<String, String> = HashMap::new();
        for value in raw {
            let task = match Task::from_value(value) {
                Ok(t) => t,
                Err(e) => {
                    error!("skipping a task the platform sent: {e}");
                    Counters::add(&counters.rejected, 1);
                    continue;
                }
            };
            let files = match task.files(&engine.cfg.template, engine.cfg.names) {
                Ok(f) => f,
                Err(e) => {
                    error!(
                        "task {}: {e}; nothing of it is stored and nothing deleted",
                        excerpt(value)
                    );
                    Counters::add(&counters.rejected, 1);
                    continue;
                }
            };
            if let Some(clash) = self.name_taken(&task.task_id, &files, &names) {
                error!(
                    "task {:?}: its file {:?} has the name of a file of task {:?}, which is in work; \
                     nothing of it is stored and nothing deleted, so that neither overwrites the other",
                    task.task_id, clash.name, clash.owner
                );
                Counters::add(&counters.rejected, 1);
                continue;
            }
            for f in &files {
                names.insert(f.name.to_lowercase(), task.task_id.clone());
            }
            accepted.push(value);
            for f in &files {
                if engine.name_differences.note(f) {
                    crate::metrics::global().name_differs();
                }
            }
            let deletes = task.deletes(engine.cfg.delete.contains(&DataType::Recordings));
            for refused in &deletes.refused {
                error!(
                    "task {:?} asks to delete {:?}, which is not sent: {} (a platform error)",
                    task.task_id, refused.path, refused.reason
                );
                Counters::add(&counters.rejected, 1);
            }
            tasks.push(TaskWork {
                deletes: deletes.allowed,
                remaining: AtomicUsize::new(files.len()),
                files,
                id: task.task_id,
                incomplete: AtomicBool::new(false),
            });
        }
        let mut page = Page {
            number: self.planned.fetch_add(1, Ordering::Relaxed) + 1,
            tasks_json: journal::tasks_json(&accepted),
            sent: raw.iter().map(excerpt).collect(),
            names: names.into_iter().collect(),
            tasks,
            left: AtomicUsize::new(0),
            counters,
            started: Instant::now(),
        };
        let mut work = Vec::new();
        for (i, t) in page.tasks.iter().enumerate() {
            if stored.contains(&t.id) {
                if !t.deletes.is_empty() {
                    work.push((i, None));
                }
            } else if !t.files.is_empty() {
                work.extend((0..t.files.len()).map(|f| (i, Some(f))));
            }
        }
        let left: BTreeSet<usize> = work.iter().map(|(i, _)| *i).collect();
        page.left = AtomicUsize::new(left.len());
        let page = Arc::new(page);
        let jobs = work
            .into_iter()
            .map(|(i, f)| match f {
                Some(f) => Job::Transfer(page.clone(), i, f),
                None => Job::Deletes(page.clone(), i),
            })
            .collect();
        (page, jobs)
    }

    /// A name of `files` that another task's file has in the window or earlier in the
    /// page being planned (`page`), compared in lower case: a case-insensitive volume
    /// would give both one file. Path-safing folds some task ids together (`a/b` and
    /// `a_b`), and a platform `fileName` can name anything.
    fn name_taken(
        &self,
        task: &str,
        files: &[FileJob],
        page: &HashMap<String, String>,
    ) -> Option<NameClash> {
        let st = self.lock();
        files.iter().find_map(|f| {
            let key = f.name.to_lowercase();
            let owner = st
                .names
                .get(&key)
                .map(|o| o.task.as_str())
                .or(page.get(&key).map(String::as_str))?;
            (owner != task).then(|| NameClash {
                name: f.name.clone(),
                owner: owner.to_string(),
            })
        })
    }

    /// Puts a planned page into the window (and so into the next journal write).
    fn admit(
        &self,
        st: &mut State,
        page: Arc<Page>,
        stored: BTreeSet<String>,
        added: u64,
        held: Vec<Job>,
    ) {
        st.window_bytes += page.tasks_json.len();
        for (name, task) in &page.names {
            st.names
                .entry(name.clone())
                .and_modify(|o| o.pages += 1)
                .or_insert_with(|| NameOwner {
                    task: task.clone(),
                    pages: 1,
                });
        }
        let nothing_to_do = page.left.load(Ordering::Relaxed) == 0;
        st.entries.push(Entry {
            page: page.clone(),
            stored,
            added,
            held,
            finished: false,
        });
        if nothing_to_do {
            self.finished(st, &page);
        }
        report_oldest(st);
    }

    /// A worker: takes jobs until the round is over (or stopped).
    fn worker(&self) {
        loop {
            let job = {
                let mut st = self.lock();
                loop {
                    if st.over || self.halted() {
                        return;
                    }
                    if let Some(job) = st.jobs.pop_front() {
                        break job;
                    }
                    st = self.wait(&self.work, st);
                }
            };
            match job {
                Job::Transfer(page, task, file) => self.transfer(&page, task, file),
                Job::Deletes(page, task) => self.run_deletes(&page, task),
            }
        }
    }

    fn transfer(&self, page: &Arc<Page>, task_index: usize, file: usize) {
        let c = &page.counters;
        let task = &page.tasks[task_index];
        let job = &task.files[file];
        let stored = match self.engine.transfer(job) {
            Outcome::Done(n) => {
                debug!("stored {} ({n} bytes)", job.name);
                Counters::add(&c.files, 1);
                Counters::add(&c.bytes, n);
                crate::metrics::global().file_stored(n);
                true
            }
            Outcome::Missing => {
                warn!(
                    "{} is gone from the platform (404); skipped, and task {} keeps its recordings",
                    job.path, task.id
                );
                Counters::add(&c.missing, 1);
                false
            }
            Outcome::Rejected(m) => {
                error!("task {}: {}: {m}; not stored", task.id, job.name);
                Counters::add(&c.rejected, 1);
                false
            }
            Outcome::GaveUp(m) => {
                error!("{}: giving up: {m}", job.name);
                Counters::add(&c.failed, 1);
                false
            }
            Outcome::Fatal(e) => {
                self.fail(e);
                return;
            }
            // The task stays unfinished, and so does its page: journaled for the next start.
            Outcome::Stopped => return,
        };
        if !stored {
            task.incomplete.store(true, Ordering::Relaxed);
        }
        if task.remaining.fetch_sub(1, Ordering::AcqRel) != 1 {
            return;
        }
        if task.incomplete.load(Ordering::Acquire) || task.deletes.is_empty() {
            return self.task_done(page);
        }
        // Recorded as stored by the next journal write, which then queues the deletes.
        let mut st = self.lock();
        let Some(entry) = st.entries.iter_mut().find(|e| Arc::ptr_eq(&e.page, page)) else {
            return;
        };
        entry.stored.insert(task.id.clone());
        st.changed += 1;
        let gen = st.changed;
        st.waiting.push((gen, page.clone(), task_index));
        self.changes.notify_one();
    }

    fn run_deletes(&self, page: &Arc<Page>, task_index: usize) {
        let c = &page.counters;
        for path in &page.tasks[task_index].deletes {
            if self.halted() {
                return;
            }
            match self.engine.delete(path) {
                Outcome::Done(()) => {
                    debug!("deleted {path} on the platform");
                    Counters::add(&c.deletes, 1);
                }
                Outcome::Missing => Counters::add(&c.deletes, 1),
                Outcome::Rejected(m) => {
                    error!("delete of {path} refused: {m}; the recording stays on the platform");
                    Counters::add(&c.rejected, 1);
                }
                Outcome::GaveUp(m) => {
                    error!("delete of {path} failed: {m}");
                    Counters::add(&c.failed, 1);
                }
                Outcome::Fatal(e) => return self.fail(e),
                Outcome::Stopped => return,
            }
        }
        self.task_done(page);
    }

    fn task_done(&self, page: &Arc<Page>) {
        if page.left.fetch_sub(1, Ordering::AcqRel) == 1 {
            let mut st = self.lock();
            self.finished(&mut st, page);
        }
    }

    /// Every task of the page is done: it leaves the window and the journal (unless
    /// something failed for good: then it stays journaled for the next run).
    fn finished(&self, st: &mut State, page: &Arc<Page>) {
        let c = &page.counters;
        let failed = Counters::get(&c.failed);
        let Some(at) = st.entries.iter().position(|e| Arc::ptr_eq(&e.page, page)) else {
            return;
        };
        if failed > 0 {
            st.entries[at].finished = true;
            self.failed.fetch_add(failed, Ordering::Relaxed);
        } else {
            st.entries.remove(at);
            st.window_bytes -= page.tasks_json.len();
            for (name, _) in &page.names {
                if let Some(owner) = st.names.get_mut(name) {
                    owner.pages -= 1;
                    if owner.pages == 0 {
                        st.names.remove(name);
                    }
                }
            }
            st.changed += 1;
            self.changes.notify_one();
        }
        self.account(&mut st.totals, page);
        report_oldest(st);
        self.progress.notify_all();
        if log_enabled!(log::Level::Info) {
            let (files, bytes) = (Counters::get(&c.files), Counters::get(&c.bytes));
            let secs = page.started.elapsed().as_secs_f64();
            info!(
                "page {}: {} tasks, {files} files, {} in {secs:.2}s ({:.1} MB/s), {} deleted{}{}",
                page.number,
                page.sent.len(),
                megabytes(bytes),
                bytes as f64 / 1_000_000.0 / secs.max(1e-6),
                Counters::get(&c.deletes),
                match Counters::get(&c.missing) {
                    0 => String::new(),
                    n => format!(", {n} missing"),
                },
                if failed > 0 {
                    format!(", {failed} FAILED")
                } else {
                    String::new()
                },
            );
        }
    }

    /// Adds a page's counts to the round's (and to the metrics).
    fn account(&self, totals: &mut Summary, page: &Page) {
        let c = &page.counters;
        let tasks = page.sent.len() as u64;
        totals.pages += 1;
        totals.tasks += tasks;
        totals.files += Counters::get(&c.files);
        totals.bytes += Counters::get(&c.bytes);
        totals.missing += Counters::get(&c.missing);
        totals.deletes += Counters::get(&c.deletes);
        totals.rejected += Counters::get(&c.rejected);
        crate::metrics::global().page_done(
            tasks,
            Counters::get(&c.deletes),
            Counters::get(&c.missing),
            Counters::get(&c.rejected),
            Counters::get(&c.failed),
        );
    }

    /// The journal writer: the one thread that writes the journal entry (see the module
    /// comment for the group commit).
    fn journal_writer(&self) {
        let engine = self.engine;
        let mut st = self.lock();
        loop {
            let at_risk = st.received > st.durable;
            let done = self.halted() || (st.over && st.changed == st.durable);
            if !at_risk && !st.asking && done {
                return;
            }
            if st.changed == st.durable {
                st = self.wait(&self.changes, st);
                continue;
            }
            if !at_risk {
                // Only tasks recorded as stored wait: let a few more join, while there is
                // other work for the workers.
                let until = Instant::now() + GROUP_LINGER;
                while st.received <= st.durable
                    && st.waiting.len() < GROUP_MAX
                    && !st.jobs.is_empty()
                    && !self.halted()
                {
                    let Some(left) = until.checked_duration_since(Instant::now()) else {
                        break;
                    };
                    st = self
                        .changes
                        .wait_timeout(st, left)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
            }
            let at_risk = st.received > st.durable;
            let gen = st.changed;
            let durable = st.durable;
            let tail = Tail {
                next: st.next.as_deref(),
                // Referred to while some of its pages wait; then every page of it is
                // in the window (or done), and the entry forgets it.
                backlog: st
                    .backlog
                    .as_ref()
                    .filter(|b| !b.pages.is_empty())
                    .map(|b| &b.at),
                query: st.query_mark,
            };
            let bytes = (!st.entries.is_empty() || tail.holds_anything()).then(|| {
                journal::encode(
                    st.entries.iter().map(|e| EncodedPage {
                        tasks_json: &e.page.tasks_json,
                        stored: &e.stored,
                    }),
                    tail,
                )
            });
            let risky: Vec<Arc<Page>> = st
                .entries
                .iter()
                .filter(|e| e.added > durable)
                .map(|e| e.page.clone())
                .collect();
            drop(st);
            let written = match &bytes {
                Some(b) if at_risk => engine.save_received(
                    || engine.journal.save_bytes(b),
                    || risky.iter().flat_map(|p| p.sent.iter().cloned()).collect(),
                ),
                Some(b) => engine
                    .retried_store("recording tasks as stored in the page journal", || {
                        engine.journal.save_bytes(b)
                    }),
                None => {
                    engine.retried_store("clearing the page journal", || engine.journal.clear())
                }
            };
            drop(bytes);
            st = self.lock();
            match written {
                Ok(()) => {
                    st.durable = gen;
                    let waiting = std::mem::take(&mut st.waiting);
                    for (g, page, task) in waiting {
                        if g <= gen {
                            st.jobs.push_front(Job::Deletes(page, task));
                        } else {
                            st.waiting.push((g, page, task));
                        }
                    }
                    let mut held = Vec::new();
                    for e in st.entries.iter_mut().filter(|e| e.added <= gen) {
                        held.append(&mut e.held);
                    }
                    st.jobs.extend(held);
                    self.work.notify_all();
                    self.progress.notify_all();
                }
                Err(SyncError::Stopped) => return,
                Err(e) => {
                    drop(st);
                    if !matches!(e, SyncError::DataAtRisk { .. }) {
                        error!("cannot record tasks as stored, so they are not deleted now: {e}");
                    }
                    return self.fail(e);
                }
            }
        }
    }

    /// Waits until every page of the window is finished and the journal says so (or
    /// the round stops), then lets every thread go.
    fn finish(&self) {
        let mut st = self.lock();
        while !self.halted() && (!st.entries.iter().all(|e| e.finished) || st.durable < st.changed)
        {
            st = self.wait(&self.progress, st);
        }
        st.over = true;
        self.work.notify_all();
        self.changes.notify_all();
    }

    /// The round's counts (pages not finished, stopped or aborted, included) and how
    /// many items failed for good, or the error that stopped it.
    fn close(self) -> Result<(Summary, u64), SyncError> {
        let st = std::mem::take(&mut *self.lock());
        let mut totals = st.totals;
        for e in st.entries.iter().filter(|e| !e.finished) {
            self.account(&mut totals, &e.page);
        }
        totals.stopped = shutdown::requested();
        totals.feed_gaps = self.gaps.load(Ordering::Relaxed);
        if let Some(e) = self.fatal.lock().unwrap().take() {
            return Err(e);
        }
        let backlog_done = st.backlog.is_none_or(|b| b.pages.is_empty());
        if st.backlog_used && backlog_done && !self.halted() {
            // The last durable entry no longer refers to it.
            if let Err(e) = self.engine.journal.clear_backlog() {
                warn!("could not remove the page journal's backlog, which nothing needs any more: {e}");
            }
        }
        Ok((totals, self.failed.load(Ordering::Relaxed)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_answer_is_cut_into_pages_of_the_size_asked_for() {
        let tasks = |n: usize| (0..n).map(|i| json!(i)).collect::<Vec<_>>();
        let sizes = |pages: VecDeque<Vec<Value>>| pages.iter().map(Vec::len).collect::<Vec<_>>();
        assert_eq!(
            sizes(split_pages(tasks(0), 50)),
            [0],
            "an empty answer is one page"
        );
        assert_eq!(sizes(split_pages(tasks(50), 50)), [50]);
        assert_eq!(sizes(split_pages(tasks(120), 50)), [50, 50, 20]);
        let pages = split_pages(tasks(3), 1);
        assert_eq!(pages, [vec![json!(0)], vec![json!(1)], vec![json!(2)]]);
    }
}
