//! The feed thread of a round: it asks the feed for pages while the window has room,
//! plans each (names, deletes, the names taken in the window) and admits it once the
//! journal holds it; the pages of an answer longer than a page wait in the journal's
//! backlog and are admitted before the feed is asked again.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use log::{error, info};
use serde_json::Value;

use super::outcome::{done, platform_step, Outcome};
use super::round::{
    report_oldest, Backlog, Entry, Job, NameOwner, Page, Round, State, TaskWork, WINDOW_BYTES,
    WINDOW_PAGES,
};
use super::{now_ms, SyncError};
use crate::journal::{self, BacklogRef, Journal, JournaledPage};
use crate::manifest::FileRecord;
use crate::metrics::Counts;
use crate::platform::{FeedPage, PlatformError};
use crate::report::Report;
use crate::retry::Side;
use crate::task::DataType;
use crate::task::{excerpt, FileJob, Task};

/// A file name another task has in the window, and whose.
pub(super) struct NameClash {
    pub(super) name: String,
    pub(super) owner: String,
}

/// Marks the feed thread's request as answered (or given up) when dropped, after the
/// page it brought was admitted.
pub(super) struct Asking<'r, 'e>(&'r Round<'e>);

impl Drop for Asking<'_, '_> {
    fn drop(&mut self) {
        self.0.lock().asking = false;
        self.0.changes.notify_one();
    }
}

/// An answer cut into pages of at most `size` tasks.
pub(super) fn split_pages(tasks: Vec<Value>, size: usize) -> VecDeque<Vec<Value>> {
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

impl<'e> Round<'e> {
    /// The feed thread: the journaled pages first, then pages from the feed while the
    /// window has room, each handed to the workers once the journal holds it. The pages
    /// of an answer longer than a page wait in the backlog (journaled once) and are
    /// taken into the window before the feed is asked again.
    pub(super) fn feed(&self, journaled: Journal, backlog: Vec<Vec<Value>>, mut request: Value) {
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
            let (page, jobs) = self.plan(&p.tasks, &p);
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
                let (page, jobs) = self.plan(&tasks, &JournaledPage::default());
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
                    Ok(page) => done(Some(page)),
                    Err(PlatformError::PageExpired) => done(None),
                    Err(e) => {
                        if is_query && matches!(e, PlatformError::Lost { .. }) {
                            engine.feed_gap(&format!(
                                "the answer to a query of the sync feed was lost on its way ({e})"
                            ));
                            self.gaps.fetch_add(1, Ordering::Relaxed);
                        }
                        platform_step(e)
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
            let planned = first.map(|tasks| self.plan(&tasks, &JournaledPage::default()));
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
    pub(super) fn save_backlog(&self, pages: &VecDeque<Vec<Value>>) -> Option<BacklogRef> {
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
    /// `held` is what the journal already holds of the page (nothing for a page the feed
    /// just sent): the tasks recorded as stored, their archive records, when it came.
    pub(super) fn plan(&self, raw: &[Value], held: &JournaledPage) -> (Arc<Page>, Vec<Job>) {
        let stored = &held.stored;
        let engine = self.engine;
        let counts = Counts::new();
        let mut tasks = Vec::with_capacity(raw.len());
        // What the journal holds of the page: the tasks that can be worked.
        let mut accepted = Vec::with_capacity(raw.len());
        let mut names: HashMap<String, String> = HashMap::new();
        for value in raw {
            let task = match Task::from_value(value) {
                Ok(t) => t,
                Err(e) => {
                    error!("skipping a task the platform sent: {}", Report(&e));
                    Counts::bump(&counts.rejected, 1);
                    continue;
                }
            };
            let files = match task.files(&engine.cfg.template, engine.cfg.names) {
                Ok(f) => f,
                Err(e) => {
                    error!(
                        "task {}: {}; nothing of it is stored and nothing deleted",
                        excerpt(value),
                        Report(&e)
                    );
                    Counts::bump(&counts.rejected, 1);
                    continue;
                }
            };
            if let Some(clash) = self.name_taken(&task.task_id, &files, &names) {
                error!(
                    "task {:?}: its file {:?} has the name of a file of task {:?}, which is in work; \
                     nothing of it is stored and nothing deleted, so that neither overwrites the other",
                    task.task_id, clash.name, clash.owner
                );
                Counts::bump(&counts.rejected, 1);
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
                Counts::bump(&counts.rejected, 1);
            }
            // A task recorded as stored keeps the records the journal holds of it.
            let records = files
                .iter()
                .map(|f| {
                    let of_this = |r: &&FileRecord| r.task_id == task.task_id && r.name == f.name;
                    stored
                        .contains(&task.task_id)
                        .then(|| held.records.iter().find(of_this).cloned())
                        .flatten()
                })
                .collect();
            tasks.push(TaskWork {
                deleted_files: deletes.recordings,
                deletes: deletes.allowed,
                remaining: AtomicUsize::new(files.len()),
                files,
                id: task.task_id,
                incomplete: AtomicBool::new(false),
                records: Mutex::new(records),
            });
        }
        let mut page = Page {
            number: self.planned.fetch_add(1, Ordering::Relaxed) + 1,
            tasks_json: journal::tasks_json(&accepted),
            sent: raw.iter().map(excerpt).collect(),
            names: names.into_iter().collect(),
            tasks,
            left: AtomicUsize::new(0),
            counts,
            started: Instant::now(),
            received_ms: held.received.unwrap_or_else(super::now_ms),
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
    pub(super) fn name_taken(
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
    pub(super) fn admit(
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
        let records = (page.tasks.iter())
            .filter(|t| stored.contains(&t.id))
            .flat_map(TaskWork::records_json)
            .collect();
        st.entries.push(Entry {
            page: page.clone(),
            stored,
            records,
            added,
            held,
            finished: false,
        });
        if nothing_to_do {
            self.finished(st, &page);
        }
        report_oldest(st);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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
