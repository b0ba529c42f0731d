//! A round's window: the pages in work, the workers that transfer their files and
//! send their deletes, and the state the feed thread and the journal writer share
//! with them (see the engine's module comment for how the three kinds of thread work
//! together).

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use log::{debug, error, info, log_enabled, warn};
use serde_json::Value;

use super::outcome::Outcome;
use super::upload::{Fetched, Stage};
use super::{megabytes, Engine, Stored, Summary, SyncError};
use crate::journal::BacklogRef;
use crate::manifest::{self, FileRecord};
use crate::metrics::Counts;
use crate::report::Report;
use crate::shutdown;
use crate::task::FileJob;

/// Pages in work at once (the journal holds them all).
pub(super) const WINDOW_PAGES: usize = 3;
/// The task JSON of the pages in work at once, at most (one page is always admitted).
pub(super) const WINDOW_BYTES: usize = 2 << 20;

/// A task of a page in work.
pub(super) struct TaskWork {
    pub(super) id: String,
    pub(super) files: Vec<FileJob>,
    pub(super) deletes: Vec<String>,
    /// For each delete, the file of the recording it deletes.
    pub(super) deleted_files: Vec<usize>,
    pub(super) remaining: AtomicUsize,
    /// Some file is not stored (missing, rejected or failed): no deletes.
    pub(super) incomplete: AtomicBool,
    /// The archive record of each file once stored (see `crate::manifest`).
    pub(super) records: Mutex<Vec<Option<FileRecord>>>,
}

impl TaskWork {
    /// The records of its stored files, as the journal holds them.
    pub(super) fn records_json(&self) -> Vec<String> {
        let records = self.records.lock().unwrap_or_else(|e| e.into_inner());
        records.iter().flatten().map(FileRecord::to_json).collect()
    }
}

/// A page in work: its tasks planned, and their JSON as the journal holds it.
pub(super) struct Page {
    pub(super) number: u64,
    pub(super) tasks_json: String,
    /// Every task the platform sent, for logs and counts (ids or excerpts).
    pub(super) sent: Vec<String>,
    /// The names of its tasks' files in lower case, with their task ids.
    pub(super) names: Vec<(String, String)>,
    pub(super) tasks: Vec<TaskWork>,
    /// Tasks not done yet; the page is finished at zero.
    pub(super) left: AtomicUsize,
    pub(super) counts: Counts<AtomicU64>,
    pub(super) started: Instant,
    /// Unix milliseconds the page was received (journaled with it: its manifest's day).
    pub(super) received_ms: u64,
}

pub(super) enum Job {
    Transfer(Arc<Page>, usize, usize),
    /// The task's files are stored and recorded so: its deletes.
    Deletes(Arc<Page>, usize),
}

/// A page of the window, as the journal holds it.
pub(super) struct Entry {
    pub(super) page: Arc<Page>,
    pub(super) stored: BTreeSet<String>,
    /// The archive records of the stored tasks' files, as JSON objects.
    pub(super) records: Vec<String>,
    /// The generation whose write first holds this page (0: it was journaled before).
    pub(super) added: u64,
    /// Its jobs, queued when that write is durable.
    pub(super) held: Vec<Job>,
    /// All its tasks are done but some failed (`--once`): it stays journaled.
    pub(super) finished: bool,
}

#[derive(Default)]
pub(super) struct State {
    pub(super) jobs: VecDeque<Job>,
    pub(super) entries: Vec<Entry>,
    pub(super) window_bytes: usize,
    pub(super) next: Option<String>,
    /// Generation of the last change to what the journal must hold, and of the last
    /// durable write; a write takes every change up to its snapshot.
    pub(super) changed: u64,
    pub(super) durable: u64,
    /// Generation of the last page with tasks received from the feed: until a write
    /// of it is durable, that write never gives up.
    pub(super) received: u64,
    /// Generation of the last feed answer: the feed is asked again only once it is
    /// durable, so the journal's `next` token is never behind.
    pub(super) asked: u64,
    /// Deletes waiting for the write of their generation.
    pub(super) waiting: Vec<(u64, Arc<Page>, usize)>,
    /// The pages of a long answer not taken into the window yet.
    pub(super) backlog: Option<Backlog>,
    /// A backlog object was written this round (removed once no entry refers to it).
    pub(super) backlog_used: bool,
    /// Unix milliseconds the query in flight was sent; written with every entry until
    /// the entry that holds its answer.
    pub(super) query_mark: Option<u64>,
    /// A feed request is on its way: what it brings must still be written.
    pub(super) asking: bool,
    /// The names of the files of every task in the window (lower case), and whose.
    pub(super) names: HashMap<String, NameOwner>,
    pub(super) over: bool,
    pub(super) totals: Summary,
}

/// The task whose file has a name in the window, and how many pages list it there
/// (a re-delivered task may be in two).
pub(super) struct NameOwner {
    pub(super) task: String,
    pub(super) pages: usize,
}

/// The pages of an answer after its first, journaled once (see [`crate::journal`]).
pub(super) struct Backlog {
    pub(super) at: BacklogRef,
    pub(super) pages: VecDeque<Vec<Value>>,
}

/// One round's shared state: the feed thread, the workers, the upload stage and the
/// journal writer (see the module comment).
pub(super) struct Round<'e> {
    pub(super) engine: &'e Engine<'e>,
    /// The upload stage of a cloud store ([`super::upload`]); `None` for local storage.
    pub(super) stage: Option<Stage<'e>>,
    pub(super) state: Mutex<State>,
    /// For the workers: a job was queued, or the round is over.
    pub(super) work: Condvar,
    /// For the writer: the journal must hold something new.
    pub(super) changes: Condvar,
    /// For the feed thread: a write became durable or a page left the window.
    pub(super) progress: Condvar,
    pub(super) abort: AtomicBool,
    pub(super) fatal: Mutex<Option<SyncError>>,
    pub(super) failed: AtomicU64,
    /// Answers to a query lost on their way (see [`Engine::feed_gap`]).
    pub(super) gaps: AtomicU64,
    /// Pages planned so far (their numbers in the log).
    pub(super) planned: AtomicU64,
}

/// The age of the oldest journaled page of the window, for `/metrics` (and its alert).
pub(super) fn report_oldest(st: &State) {
    let oldest = st.entries.iter().map(|e| e.page.started).min();
    crate::metrics::global().oldest_page(oldest);
}

/// How often a waiting thread looks at the stop flag.
pub(super) const STOP_POLL: Duration = Duration::from_millis(100);

impl<'e> Round<'e> {
    pub(super) fn new(engine: &'e Engine<'e>) -> Round<'e> {
        Round {
            engine,
            stage: engine
                .store
                .staging()
                .map(|staging| Stage::new(staging, engine.cfg.concurrency)),
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

    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits for `cv` at most [`STOP_POLL`]. A waiting round is a live one: the systemd
    /// watchdog is fed meanwhile.
    pub(super) fn wait<'g>(
        &self,
        cv: &Condvar,
        st: MutexGuard<'g, State>,
    ) -> MutexGuard<'g, State> {
        crate::notify::alive();
        cv.wait_timeout(st, STOP_POLL)
            .unwrap_or_else(|e| e.into_inner())
            .0
    }

    pub(super) fn halted(&self) -> bool {
        self.abort.load(Ordering::Relaxed) || shutdown::requested()
    }

    pub(super) fn fail(&self, e: SyncError) {
        error!("{}", Report(&e));
        self.abort.store(true, Ordering::Relaxed);
        self.fatal.lock().unwrap().get_or_insert(e);
        self.work.notify_all();
        self.changes.notify_all();
        self.progress.notify_all();
        if let Some(stage) = &self.stage {
            stage.close();
        }
    }

    /// A worker: takes jobs until the round is over (or stopped). Upload threads of the
    /// stage are started in `scope` as they are needed.
    pub(super) fn worker<'r>(&'r self, scope: &'r std::thread::Scope<'r, '_>) {
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
                Job::Transfer(page, task, file) => {
                    let job = &page.tasks[task].files[file];
                    match self.engine.transfer(job, self.stage.as_ref()).done_or() {
                        Ok(Fetched::Whole(staged)) => {
                            self.hand_off(scope, &page, task, file, staged)
                        }
                        Ok(Fetched::Stored(stored)) => {
                            self.settle(&page, task, file, Outcome::Done(stored))
                        }
                        Err(failed) => self.settle(&page, task, file, failed),
                    }
                }
                Job::Deletes(page, task) => self.run_deletes(&page, task),
            }
        }
    }

    /// Reports what storing one file came to, streamed by a worker or uploaded by the
    /// stage; the last stored file of a task with deletes records the task as stored.
    pub(super) fn settle(
        &self,
        page: &Arc<Page>,
        task_index: usize,
        file: usize,
        outcome: Outcome<Stored>,
    ) {
        let c = &page.counts;
        let task = &page.tasks[task_index];
        let job = &task.files[file];
        let stored = match outcome {
            Outcome::Done(stored) => {
                let n = stored.bytes;
                debug!("stored {} ({n} bytes)", job.name);
                Counts::bump(&c.files, 1);
                Counts::bump(&c.bytes, n);
                crate::metrics::global().file_stored(n);
                let record = FileRecord {
                    name: job.name.clone(),
                    size: n,
                    crc32c: stored.crc32c,
                    task_id: task.id.clone(),
                    data_type: job.info.data_type.clone(),
                    recording_id: job.recording_id.clone(),
                    stored_at: super::now_ms(),
                    deleted_at: None,
                };
                task.records.lock().unwrap_or_else(|e| e.into_inner())[file] = Some(record);
                true
            }
            Outcome::Missing => {
                warn!(
                    "{} is gone from the platform (404); skipped, and task {} keeps its recordings",
                    job.path, task.id
                );
                Counts::bump(&c.missing, 1);
                false
            }
            Outcome::Rejected(m) => {
                error!("task {}: {}: {m}; not stored", task.id, job.name);
                Counts::bump(&c.rejected, 1);
                false
            }
            Outcome::GaveUp(m) => {
                error!("{}: giving up: {m}", job.name);
                Counts::bump(&c.failed, 1);
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
        // Recorded as stored, with its files' archive records, by the next journal
        // write, which then queues the deletes.
        let records = task.records_json();
        let mut st = self.lock();
        let Some(entry) = st.entries.iter_mut().find(|e| Arc::ptr_eq(&e.page, page)) else {
            return;
        };
        entry.stored.insert(task.id.clone());
        entry.records.extend(records);
        st.changed += 1;
        let gen = st.changed;
        st.waiting.push((gen, page.clone(), task_index));
        self.changes.notify_one();
    }

    pub(super) fn run_deletes(&self, page: &Arc<Page>, task_index: usize) {
        let c = &page.counts;
        let task = &page.tasks[task_index];
        let deleted = |i: usize| {
            let mut records = task.records.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(r) = records[task.deleted_files[i]].as_mut() {
                r.deleted_at = Some(super::now_ms());
            }
        };
        for (i, path) in task.deletes.iter().enumerate() {
            if self.halted() {
                return;
            }
            match self.engine.delete(path) {
                Outcome::Done(()) => {
                    debug!("deleted {path} on the platform");
                    Counts::bump(&c.deletes, 1);
                    deleted(i);
                }
                Outcome::Missing => {
                    Counts::bump(&c.deletes, 1);
                    deleted(i);
                }
                Outcome::Rejected(m) => {
                    error!("delete of {path} refused: {m}; the recording stays on the platform");
                    Counts::bump(&c.rejected, 1);
                }
                Outcome::GaveUp(m) => {
                    error!("delete of {path} failed: {m}");
                    Counts::bump(&c.failed, 1);
                }
                Outcome::Fatal(e) => return self.fail(e),
                Outcome::Stopped => return,
            }
        }
        self.task_done(page);
    }

    pub(super) fn task_done(&self, page: &Arc<Page>) {
        if page.left.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.write_manifest(page);
            let mut st = self.lock();
            self.finished(&mut st, page);
        }
    }

    /// Writes the archive manifest of a page whose tasks are all done, before the page
    /// leaves the journal: one object, every file stored with its record. When it cannot
    /// be written the page counts a failure and stays journaled (a replay writes it).
    pub(super) fn write_manifest(&self, page: &Page) {
        if self.halted() || page.counts.failed.load(Ordering::Relaxed) > 0 {
            return;
        }
        let records: Vec<FileRecord> = page
            .tasks
            .iter()
            .flat_map(|t| {
                let records = t.records.lock().unwrap_or_else(|e| e.into_inner());
                records.iter().flatten().cloned().collect::<Vec<_>>()
            })
            .collect();
        if records.is_empty() {
            return;
        }
        let engine = self.engine;
        let key = manifest::object_key(&engine.cfg.tag, page.received_ms, &page.tasks_json);
        let bytes = manifest::json_lines(&records);
        let written = engine.retried_store("writing the archive manifest", || {
            crate::store::put_bytes(engine.store, &key, &bytes).map(|_| ())
        });
        match written {
            Ok(()) => debug!("archive manifest {key}: {} file(s)", records.len()),
            Err(SyncError::Stopped) => {}
            Err(e @ SyncError::StorageDenied(_)) => self.fail(e),
            Err(e) => {
                error!(
                    "page {}: {}; it stays journaled and its manifest is written on the next run",
                    page.number,
                    Report(&e)
                );
                Counts::bump(&page.counts.failed, 1);
            }
        }
    }

    /// Every task of the page is done: it leaves the window and the journal (unless
    /// something failed for good: then it stays journaled for the next run).
    pub(super) fn finished(&self, st: &mut State, page: &Arc<Page>) {
        let c = page.counts.snapshot();
        let failed = c.failed;
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
            let secs = page.started.elapsed().as_secs_f64();
            info!(
                "page {}: {} tasks, {} files, {} in {secs:.2}s ({:.1} MB/s), {} deleted{}{}",
                page.number,
                page.sent.len(),
                c.files,
                megabytes(c.bytes),
                c.bytes as f64 / 1_000_000.0 / secs.max(1e-6),
                c.deletes,
                match c.missing {
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
    pub(super) fn account(&self, totals: &mut Summary, page: &Page) {
        let counts = page.counts.snapshot();
        let tasks = page.sent.len() as u64;
        totals.pages += 1;
        totals.tasks += tasks;
        totals.counts += &counts;
        crate::metrics::global().page_done(tasks, &counts);
    }

    /// Waits until every page of the window is finished and the journal says so (or
    /// the round stops), then lets every thread go.
    pub(super) fn finish(&self) {
        let mut st = self.lock();
        while !self.halted() && (!st.entries.iter().all(|e| e.finished) || st.durable < st.changed)
        {
            st = self.wait(&self.progress, st);
        }
        st.over = true;
        self.work.notify_all();
        self.changes.notify_all();
        if let Some(stage) = &self.stage {
            stage.close();
        }
    }

    /// The round's counts (pages not finished, stopped or aborted, included) and how
    /// many items failed for good, or the error that stopped it.
    pub(super) fn close(self) -> Result<(Summary, u64), SyncError> {
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
                warn!(
                    "could not remove the page journal's backlog, which nothing needs any more: {}",
                    e.report()
                );
            }
        }
        Ok((totals, self.failed.load(Ordering::Relaxed)))
    }
}
