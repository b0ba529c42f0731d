//! The journal writer of a round: the one thread that writes the journal entry, with
//! group commit (see the engine's module comment).

use std::sync::Arc;
use std::time::{Duration, Instant};

use log::error;

use super::round::{Job, Page, Round};
use super::SyncError;
use crate::journal::{self, EncodedPage, Tail};
use crate::report::Report;

/// How long the journal writer lets more tasks join a write that only records tasks
/// as stored (their deletes wait that long at most; no worker waits).
pub(super) const GROUP_LINGER: Duration = Duration::from_millis(100);
/// A write goes without lingering once this many tasks wait for it.
pub(super) const GROUP_MAX: usize = 32;

impl<'e> Round<'e> {
    /// The journal writer: the one thread that writes the journal entry (see the module
    /// comment for the group commit).
    pub(super) fn journal_writer(&self) {
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
                        records: &e.records,
                        received_ms: e.page.received_ms,
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
                        error!(
                            "cannot record tasks as stored, so they are not deleted now: {}",
                            Report(&e)
                        );
                    }
                    return self.fail(e);
                }
            }
        }
    }
}
