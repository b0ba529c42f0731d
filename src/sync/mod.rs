//! The sync engine: rounds of the feed, a window of pages, files in parallel.
//!
//! A round begins by proving that the storage takes the journal: the journal entry (or
//! an empty one) is written with a fresh round nonce, read back and compared
//! ([`PageJournal::prove`]). Only then is the feed asked for anything, so a storage that
//! refuses the journal (a typo in the bucket, a read-only credential, a full quota)
//! stops the run while the platform's cursor has not moved.
//!
//! A round then asks the feed for pages until it is drained, keeping a small window of
//! pages in work at once ([`round::WINDOW_PAGES`], at most [`round::WINDOW_BYTES`] of task JSON):
//! one pool of threads takes the files of every page in the window from one queue, so
//! the pool never drains between pages, and the next page is asked for as soon as one
//! leaves the window. The journal holds every page of the window; a page leaves it
//! only when every task of it is done, and a restart finishes all of them first.
//!
//! Four kinds of thread share a [`round::Round`]: the feed thread ([`feed`]) asks the
//! feed, the workers transfer and delete, the upload threads of a cloud store's upload
//! stage ([`upload`]) store the files the workers downloaded whole, and one journal
//! writer ([`writer`]) owns every write of the journal entry. The feed thread asks for a page only after everything it
//! received before is durable (so the journal's `next` token is never behind the
//! platform's cursor by more than the page in flight), and hands a new page to the
//! workers only after the write that holds it. A page the feed handed out exists only in
//! memory until then, so that write never gives up (whatever the budget or the error);
//! only a stop request ends the wait, as
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

mod feed;
mod outcome;
mod round;
mod upload;
mod writer;

use std::fmt;
use std::time::{Duration, Instant};

use log::{debug, error, info, warn};
use serde_json::{json, Value};

use self::outcome::{done, platform_step, store_reason, store_step, Outcome, Try};
use self::round::Round;
use self::upload::{Fetched, Stage, Staged};
use crate::checksum::Crc32cReader;
use crate::config::Config;
use crate::journal::{Journal, JournalError, PageJournal};
use crate::metrics::Counts;
use crate::platform::{Platform, PlatformError};
use crate::report::Report;
use crate::retry::{with_retries, RetryBudget, Side, Step};
use crate::shutdown;
use crate::store::{BlobStore, StoreError, StoreErrorKind};
use crate::task::join_types;
use crate::task::{FileJob, NameDifferences};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Drain the feed, finish everything, stop.
    Once,
    /// Rounds forever, with the poll interval between them.
    Service,
}

impl Mode {
    /// How long one operation (a request, a transfer) keeps retrying a transient
    /// failure: `retry_timeout` (`SP_TASK_SYNC_RETRY_TIMEOUT`) in `--once`, forever as a
    /// service. The engine and the storage client retry under the same budget.
    pub fn budget(self, retry_timeout: Duration) -> RetryBudget {
        match self {
            Mode::Once => RetryBudget::within(retry_timeout),
            Mode::Service => RetryBudget::FOREVER,
        }
    }
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
            SyncError::StorageDenied(_) => f.write_str("the storage refused access"),
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

impl std::error::Error for SyncError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SyncError::StorageDenied(e) => Some(e),
            // Shown as the journal's own error: its cause comes next.
            SyncError::Journal(e) => std::error::Error::source(e),
            _ => None,
        }
    }
}

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
    /// Files the platform answered 404 for are warnings, not failures; rejected tasks
    /// (bad names, malformed JSON) are errors, not retried.
    pub counts: Counts,
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
            self.counts.files,
            megabytes(self.counts.bytes),
            self.pages,
            self.counts.deletes,
            self.counts.missing,
            self.counts.rejected,
            self.journal_writes
        )
    }
}

impl Summary {
    /// The line `systemctl status` shows after a round: when it ended, the files stored
    /// since the start, and the errors (rejected, given up, feed answers lost).
    fn status(&self) -> String {
        let errors = self.counts.rejected + self.counts.failed + self.feed_gaps;
        format!(
            "round {} done at {}: {} files stored since the start, {errors} error(s)",
            self.rounds,
            crate::template::iso_millis(now_ms() as i64),
            self.counts.files
        )
    }
}

/// A file the store took: its size and the CRC-32C of its bytes.
pub(super) struct Stored {
    pub(super) bytes: u64,
    pub(super) crc32c: u32,
}

/// Unix milliseconds now.
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn megabytes(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1_000_000.0)
}

pub struct Engine<'a> {
    cfg: &'a Config,
    platform: Platform,
    store: &'a dyn BlobStore,
    journal: PageJournal<'a>,
    mode: Mode,
    budget: RetryBudget,
    summary: Summary,
    name_differences: NameDifferences,
}

impl<'a> Engine<'a> {
    pub fn new(
        cfg: &'a Config,
        platform: Platform,
        store: &'a dyn BlobStore,
        mode: Mode,
    ) -> Engine<'a> {
        Engine {
            cfg,
            platform,
            store,
            journal: PageJournal::new(store, &cfg.tag),
            mode,
            budget: mode.budget(cfg.retry_timeout),
            summary: Summary::default(),
            name_differences: NameDifferences::default(),
        }
    }

    /// Runs rounds until the feed is drained (`--once`) or forever (service), stopping
    /// early on SIGTERM/SIGINT with the pages in progress journaled.
    pub fn run(mut self) -> Result<Summary, SyncError> {
        let mode = self.mode;
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
            crate::notify::status(&self.summary.status());
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
                s.counts.files - before.counts.files,
                megabytes(s.counts.bytes - before.counts.bytes),
                s.counts.deletes - before.counts.deletes
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
        if failed > 0 || (mode == Mode::Once && (s.counts.rejected > 0 || s.feed_gaps > 0)) {
            return Err(SyncError::Incomplete {
                failed,
                rejected: s.counts.rejected,
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
                s.spawn(|| round.worker(s));
            }
            round.feed(journaled, backlog, request);
            round.finish();
        });
        let (totals, failed) = round.close()?;
        let s = &mut self.summary;
        s.pages += totals.pages;
        s.tasks += totals.tasks;
        s.counts += &totals.counts;
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
            Ok(found) => done(found),
            Err(JournalError::Store(e)) => store_step(e),
            Err(e) => {
                let message = Report(&e).to_string();
                damaged = Some(e);
                Step::Done(Outcome::Rejected(message))
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
                            "{what}: {}; {} task(s) exist only in memory now, so the write is retried \
                             until the storage takes it (a stop now puts them at risk)",
                            e.report(),
                            at_risk().len()
                        );
                    }
                    Step::Retry {
                        reason: store_reason(e.kind),
                        error: e.report(),
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
            Ok(()) => done(()),
            Err(e) => store_step(e),
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
    fn retried<T>(&self, side: Side, what: &str, op: impl FnMut() -> Try<T>) -> Outcome<T> {
        if shutdown::requested() {
            return Outcome::Stopped;
        }
        match with_retries(self.budget, side, what, op) {
            Ok(outcome) => outcome,
            Err(_) if shutdown::requested() => Outcome::Stopped,
            Err(e) => Outcome::GaveUp(e.error),
        }
    }

    /// Downloads one file into the storage, retrying a broken download from the start:
    /// streamed into the store, or, when the `stage` takes it, whole into a buffer for
    /// the stage to upload ([`upload`]).
    fn transfer<'s>(&self, job: &FileJob, stage: Option<&Stage<'s>>) -> Outcome<Fetched<'s>> {
        let mut in_flight = Some(crate::metrics::global().transfer());
        self.retried(Side::Platform, &job.name, || {
            let started = Instant::now();
            let download = match self.platform.download(&job.path, self.cfg.max_file_size) {
                Ok(d) => d,
                Err(e) => return platform_step(e),
            };
            let size = download.expected_len();
            // The archive manifest's checksum, of the very bytes the store takes.
            let mut download = Crc32cReader::new(download);
            if let Some(stage) = stage.filter(|s| s.takes(size)) {
                let len = size.unwrap_or_default();
                return stage.fetch(&mut download, len, started, &mut in_flight);
            }
            let stored = self
                .store
                .put_with(&job.name, &mut download, size, &job.info);
            // The body itself gave up (too large, stalled): it says how to take that.
            if let Some(failure) = download
                .inner()
                .take_failure()
                .filter(|_| stored.is_err() && !shutdown::requested())
            {
                return platform_step(failure);
            }
            match stored {
                Ok(bytes) => done(Fetched::Stored(Stored {
                    bytes,
                    crc32c: download.crc32c(),
                })),
                Err(_) if shutdown::requested() => Step::Done(Outcome::Stopped),
                Err(e) => store_step(e),
            }
        })
    }

    /// Stores a file downloaded whole (the upload stage's part of a transfer): an
    /// upload the store lost is sent again from its buffer, not downloaded again.
    fn upload(&self, job: &FileJob, staged: &Staged) -> Outcome<Stored> {
        self.retried(Side::Storage, &job.name, || {
            match self.store.put_whole(&job.name, staged.bytes(), &job.info) {
                Ok(bytes) => done(Stored {
                    bytes,
                    crc32c: staged.crc32c,
                }),
                Err(_) if shutdown::requested() => Step::Done(Outcome::Stopped),
                Err(e) => store_step(e),
            }
        })
    }

    fn delete(&self, path: &str) -> Outcome<()> {
        self.retried(Side::Platform, path, || match self.platform.delete(path) {
            Ok(()) => done(()),
            Err(e) => platform_step(e),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lease::LeaseError;
    use crate::report::Report;

    /// Each error says what failed at its level; the cause is its source, and the
    /// report joins them into the line users read.
    #[test]
    fn a_storage_failure_reads_with_its_causes() {
        let denied = || {
            StoreError::from_io(
                "cannot write /data/x.part",
                std::io::Error::from(std::io::ErrorKind::PermissionDenied),
            )
        };
        let cases: Vec<(Box<dyn std::error::Error>, &str)> = vec![
            (
                Box::new(denied()),
                "cannot write /data/x.part: permission denied",
            ),
            (
                Box::new(JournalError::Store(denied())),
                "page journal: cannot write /data/x.part: permission denied",
            ),
            (
                Box::new(LeaseError::Store(denied())),
                "the storage refused access (taking the journal lease): cannot write /data/x.part: permission denied",
            ),
            (
                Box::new(LeaseError::Store(StoreError::transient("S3 GET: 503"))),
                "the journal lease: S3 GET: 503",
            ),
            (
                Box::new(SyncError::StorageDenied(denied())),
                "the storage refused access: cannot write /data/x.part: permission denied",
            ),
            (
                Box::new(SyncError::Journal(JournalError::Store(StoreError::transient("x: y")))),
                "page journal: x: y",
            ),
        ];
        for (e, want) in cases {
            assert_eq!(Report(e.as_ref()).to_string(), want);
        }
        let io = denied();
        let cause = std::error::Error::source(&io).expect("the I/O error is kept");
        assert_eq!(cause.to_string(), "permission denied");
    }
}
