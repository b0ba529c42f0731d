//! The page journal: what the connector keeps durable so a crash loses nothing.
//!
//! The platform may move its cursor as soon as it returns a page, so every page is
//! stored before any work on it, and each task is recorded as stored before its first
//! delete (see "What the connector keeps durable, and why" in the contract). It lives
//! in the storage itself, through the same trait as the data, under the connector's
//! own folder, one entry per sync tag.
//!
//! One entry holds every page not finished yet (the engine works a small window of
//! pages at once), each with the tasks exactly as the platform sent them and the ids of
//! the tasks recorded as stored, plus the token of the page after the last one
//! received:
//!
//! ```json
//! {"pages":[{"tasks":[...],"stored":["id",...]}],"next":"token","round":"nonce",
//!  "backlog":{"id":"nonce","taken":2},"query":1733456789000}
//! ```
//!
//! An answer longer than a page (a buggy or hostile platform may send thousands of
//! tasks for `count: 50`, and the connector cannot refuse what the cursor has passed)
//! is cut into pages: the first goes into the window, the rest is written once, as a
//! backlog object beside the entry (`<tag>.backlog.json`, each task kept as its JSON
//! text), and the entry only counts how many of its pages were `taken` into the
//! window. So no write of the entry grows with the length of an answer.
//!
//! `query` marks a query of the feed sent (its time) whose answer is not journaled
//! yet: a query cannot be replayed, so a start that finds the mark reports that the
//! task its answer held may be missing.
//!
//! The entry written by the released version (one page at the top level, the page
//! received ahead inside it: `{"tasks":[...],"stored":[...],"next":..,"ahead":{..}}`)
//! is still read, so an upgrade in the middle of a page loses nothing. That version
//! cannot read this format: it stops with "cannot be read" instead of losing pages.
//!
//! Writing is hot (every group of tasks recorded as stored rewrites the entry), so the
//! engine keeps each page's tasks as JSON text, serialised once, and [`encode`] only
//! copies it and writes the ids; nothing is parsed or serialised again per write.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::manifest::FileRecord;
use crate::platform::FeedPage;
use crate::store::{put_bytes, BlobStore, StoreError};
use crate::template::{escape_tag, RESERVED_PREFIX};

/// A page not finished yet, as the journal holds it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct JournaledPage {
    /// The task objects exactly as the platform sent them.
    pub tasks: Vec<Value>,
    /// Tasks whose files are all durably stored: on replay they go straight to deletes.
    #[serde(default)]
    pub stored: BTreeSet<String>,
    /// The archive records of the stored tasks' files (`crate::manifest`): the page's
    /// manifest is written from them when it is finished.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub records: Vec<FileRecord>,
    /// Unix milliseconds the page was received (the day of its manifest).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub received: Option<u64>,
}

/// What the journal holds: the pages not finished, oldest first, and where the feed
/// goes on.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Journal {
    pub pages: Vec<JournaledPage>,
    /// The token of the page after the last one received. Kept while pages are worked
    /// and when they are done, so that a crash between asking for that page and
    /// journaling it is recovered by replaying the token (the platform may already
    /// have moved its cursor past it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
    /// The nonce of the round that last proved the journal writable (see
    /// [`PageJournal::prove`]); only a witness, never read for decisions.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub round: Option<String>,
    /// The pages of an answer not taken into the window yet (see the module comment).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backlog: Option<BacklogRef>,
    /// Unix milliseconds a query was sent whose answer is not journaled yet.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub query: Option<u64>,
}

/// Where the entry points into the backlog object.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct BacklogRef {
    /// The backlog object this entry belongs to (a nonce written into both).
    pub id: String,
    /// Its pages already taken into the window (and so held by the entry).
    pub taken: usize,
}

/// The backlog object: the pages of one answer after its first, each task as JSON
/// text, so that no task can nest deeper than the parser allows when read back.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Backlog {
    pub id: String,
    pub pages: Vec<Vec<String>>,
}

impl Backlog {
    /// The pages from `taken` on, each task parsed again (a task that does not parse
    /// is dropped with an error: it was refused when it came, too).
    pub fn remaining(self, taken: usize) -> Vec<Vec<Value>> {
        self.pages
            .into_iter()
            .skip(taken)
            .map(|page| {
                page.iter()
                    .filter_map(|text| match serde_json::from_str(text) {
                        Ok(v) => Some(v),
                        Err(e) => {
                            log::error!("a task of the journal's backlog cannot be read: {e}");
                            None
                        }
                    })
                    .collect()
            })
            .collect()
    }
}

/// Either format on disk.
#[derive(Deserialize)]
struct OnDisk {
    #[serde(default)]
    pages: Option<Vec<JournaledPage>>,
    #[serde(default)]
    next: Option<String>,
    #[serde(default)]
    round: Option<String>,
    #[serde(default)]
    backlog: Option<BacklogRef>,
    #[serde(default)]
    query: Option<u64>,
    // The released version's single page, and the page it received ahead.
    #[serde(default)]
    tasks: Option<Vec<Value>>,
    #[serde(default)]
    stored: BTreeSet<String>,
    #[serde(default)]
    ahead: Option<FeedPage>,
}

impl OnDisk {
    fn into_journal(self) -> Result<Journal, String> {
        match (self.pages, self.tasks) {
            (Some(pages), None) => Ok(Journal {
                pages,
                next: self.next,
                round: self.round,
                backlog: self.backlog,
                query: self.query,
            }),
            (None, Some(tasks)) => {
                let mut pages = vec![JournaledPage {
                    tasks,
                    stored: self.stored,
                    ..JournaledPage::default()
                }];
                let mut next = self.next;
                if let Some(ahead) = self.ahead {
                    // `next` was the token that fetched it; its own `next` goes on.
                    pages.push(JournaledPage {
                        tasks: ahead.tasks,
                        ..JournaledPage::default()
                    });
                    next = ahead.next;
                }
                pages.retain(|p| !p.tasks.is_empty());
                Ok(Journal {
                    pages,
                    next,
                    round: self.round,
                    backlog: None,
                    query: None,
                })
            }
            (Some(_), Some(_)) => Err("both \"pages\" and \"tasks\"".into()),
            (None, None) => Err("neither \"pages\" nor \"tasks\"".into()),
        }
    }
}

/// One page as [`encode`] writes it: its tasks as a JSON array already serialised.
pub struct EncodedPage<'p> {
    pub tasks_json: &'p str,
    pub stored: &'p BTreeSet<String>,
    /// The stored tasks' archive records, each a JSON object already.
    pub records: &'p [String],
    pub received_ms: u64,
}

/// Serialises the tasks of a page once, as the JSON array the journal holds.
pub fn tasks_json(tasks: &[&Value]) -> String {
    serde_json::to_string(tasks).expect("JSON values serialise")
}

/// What an entry holds besides its pages.
#[derive(Debug, Clone, Copy, Default)]
pub struct Tail<'a> {
    pub next: Option<&'a str>,
    pub backlog: Option<&'a BacklogRef>,
    pub query: Option<u64>,
}

impl Tail<'_> {
    /// Whether an entry with no pages must still be written.
    pub fn holds_anything(&self) -> bool {
        self.next.is_some() || self.backlog.is_some() || self.query.is_some()
    }
}

/// The journal entry for `pages` and `tail`, written by copying each page's tasks.
pub fn encode<'p>(pages: impl Iterator<Item = EncodedPage<'p>>, tail: Tail) -> Vec<u8> {
    let mut out = Vec::with_capacity(4096);
    out.extend_from_slice(b"{\"pages\":[");
    for (i, page) in pages.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"tasks\":");
        out.extend_from_slice(page.tasks_json.as_bytes());
        out.extend_from_slice(b",\"stored\":");
        serde_json::to_writer(&mut out, page.stored).expect("strings serialise");
        if !page.records.is_empty() {
            out.extend_from_slice(b",\"records\":[");
            for (i, r) in page.records.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(r.as_bytes());
            }
            out.push(b']');
        }
        out.extend_from_slice(format!(",\"received\":{}", page.received_ms).as_bytes());
        out.push(b'}');
    }
    out.push(b']');
    if let Some(next) = tail.next {
        out.extend_from_slice(b",\"next\":");
        serde_json::to_writer(&mut out, next).expect("strings serialise");
    }
    if let Some(backlog) = tail.backlog {
        out.extend_from_slice(b",\"backlog\":");
        serde_json::to_writer(&mut out, backlog).expect("a backlog reference serialises");
    }
    if let Some(query) = tail.query {
        out.extend_from_slice(format!(",\"query\":{query}").as_bytes());
    }
    out.push(b'}');
    out
}

#[derive(Debug)]
pub enum JournalError {
    Store(StoreError),
    Damaged { key: String, reason: String },
}

impl fmt::Display for JournalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JournalError::Store(_) => f.write_str("page journal"),
            JournalError::Damaged { key, reason } => write!(
                f,
                "the page journal {key} cannot be read ({reason}); it holds tasks the platform \
                 may not hand out again, so it is left in place: inspect or move it away to go on"
            ),
        }
    }
}

impl std::error::Error for JournalError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            JournalError::Store(e) => Some(e),
            JournalError::Damaged { .. } => None,
        }
    }
}

impl From<StoreError> for JournalError {
    fn from(e: StoreError) -> Self {
        JournalError::Store(e)
    }
}

pub struct PageJournal<'a> {
    store: &'a dyn BlobStore,
    key: String,
    backlog_key: String,
    writes: AtomicU64,
}

impl<'a> PageJournal<'a> {
    pub fn new(store: &'a dyn BlobStore, tag: &str) -> PageJournal<'a> {
        PageJournal {
            store,
            key: format!("{RESERVED_PREFIX}/{}.page.json", escape_tag(tag)),
            backlog_key: format!("{RESERVED_PREFIX}/{}.backlog.json", escape_tag(tag)),
            writes: AtomicU64::new(0),
        }
    }

    /// Writes the backlog object (before any entry refers to it).
    pub fn save_backlog(&self, backlog: &Backlog) -> Result<(), StoreError> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        let bytes = serde_json::to_vec(backlog).expect("a backlog serialises");
        put_bytes(self.store, &self.backlog_key, &bytes).map(|_| ())
    }

    /// The pages the entry has not taken from the backlog yet.
    pub fn load_backlog(&self, at: &BacklogRef) -> Result<Vec<Vec<Value>>, JournalError> {
        let damaged = |reason: String| JournalError::Damaged {
            key: self.backlog_key.clone(),
            reason,
        };
        let bytes = self
            .store
            .get(&self.backlog_key)?
            .ok_or_else(|| damaged("the journal entry refers to it, but it is missing".into()))?;
        let backlog: Backlog =
            serde_json::from_slice(&bytes).map_err(|e| damaged(e.to_string()))?;
        if backlog.id != at.id {
            return Err(damaged(format!(
                "it is backlog {:?}, the journal entry refers to {:?}",
                backlog.id, at.id
            )));
        }
        Ok(backlog.remaining(at.taken))
    }

    /// Removes the backlog object once no entry refers to it.
    pub fn clear_backlog(&self) -> Result<(), StoreError> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        self.store.delete(&self.backlog_key)
    }

    #[cfg(test)]
    fn key(&self) -> &str {
        &self.key
    }

    /// Writes (and removals) of the entry so far, tried or done.
    pub fn writes(&self) -> u64 {
        self.writes.load(Ordering::Relaxed)
    }

    pub fn load(&self) -> Result<Option<Journal>, JournalError> {
        let Some(bytes) = self.store.get(&self.key)? else {
            return Ok(None);
        };
        let damaged = |reason: String| JournalError::Damaged {
            key: self.key.clone(),
            reason,
        };
        let on_disk: OnDisk = serde_json::from_slice(&bytes).map_err(|e| damaged(e.to_string()))?;
        on_disk.into_journal().map(Some).map_err(damaged)
    }

    /// Stores an entry made by [`encode`].
    pub fn save_bytes(&self, bytes: &[u8]) -> Result<(), StoreError> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        put_bytes(self.store, &self.key, bytes).map(|_| ())
    }

    /// Proves that the storage takes the journal before the feed is asked for a page
    /// nobody has written down yet: writes `journal` (what it holds now, or an empty
    /// entry) marked with a fresh round nonce, reads it back and compares. A storage
    /// that refuses the write, or hands back something else, fails here, while the
    /// platform's cursor has not moved.
    pub fn prove(&self, journal: &Journal) -> Result<(), StoreError> {
        let marked = Journal {
            round: Some(round_nonce()),
            ..journal.clone()
        };
        let bytes = serde_json::to_vec(&marked).expect("a journal serialises");
        self.save_bytes(&bytes)?;
        match self.store.get(&self.key)? {
            Some(back) if back == bytes => Ok(()),
            back => Err(StoreError::transient(format!(
                "the page journal {} read back {} after it was written: is another connector \
                 working on the same tag and storage?",
                self.key,
                match back {
                    Some(b) => format!(
                        "different content ({} bytes, {} written)",
                        b.len(),
                        bytes.len()
                    ),
                    None => "as missing".to_string(),
                }
            ))),
        }
    }

    pub fn clear(&self) -> Result<(), StoreError> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        self.store.delete(&self.key)
    }
}

/// A value no earlier round wrote: the time in nanoseconds and the process id.
pub fn round_nonce() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{nanos:x}-{:x}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::local::LocalStore;
    use serde_json::json;

    fn temp_store(name: &str) -> (std::path::PathBuf, LocalStore) {
        let root =
            std::env::temp_dir().join(format!("spinoco-journal-{name}-{}", std::process::id()));
        let store = LocalStore::open(&root).unwrap();
        (root, store)
    }

    #[test]
    fn round_trip_proof_and_damage() {
        let (root, store) = temp_store("rt");
        let journal = PageJournal::new(&store, "t/1");
        assert!(journal.load().unwrap().is_none());
        let record = FileRecord {
            name: "a/y.ogg".into(),
            size: 7,
            crc32c: 0xdead_beef,
            task_id: "y\"z".into(),
            data_type: "Recordings".into(),
            recording_id: Some("r1".into()),
            stored_at: 1_796_537_631_123,
            deleted_at: None,
        };
        let page = JournaledPage {
            tasks: vec![json!({"taskId": "x"}), json!({"taskId": "y\"z"})],
            stored: ["y\"z".to_string()].into(),
            records: vec![record.clone()],
            received: Some(1_796_537_630_000),
        };
        let backlog = BacklogRef {
            id: "b1".into(),
            taken: 2,
        };
        let bytes = encode(
            [EncodedPage {
                tasks_json: &tasks_json(&page.tasks.iter().collect::<Vec<_>>()),
                stored: &page.stored,
                records: &[record.to_json()],
                received_ms: 1_796_537_630_000,
            }]
            .into_iter(),
            Tail {
                next: Some("tok\\1"),
                backlog: Some(&backlog),
                query: Some(1234),
            },
        );
        journal.save_bytes(&bytes).unwrap();
        let want = Journal {
            pages: vec![page],
            next: Some("tok\\1".into()),
            round: None,
            backlog: Some(backlog),
            query: Some(1234),
        };
        assert_eq!(journal.load().unwrap().as_ref(), Some(&want));
        journal.prove(&want).unwrap();
        let proven = journal.load().unwrap().unwrap();
        assert!(proven.round.is_some());
        assert_eq!(
            Journal {
                round: None,
                ..proven
            },
            want,
            "the proof keeps the pages"
        );
        journal.prove(&Journal::default()).unwrap();
        assert_eq!(journal.load().unwrap().unwrap().pages, vec![]);
        put_bytes(&store, journal.key(), b"{\"pages\": [").unwrap();
        assert!(matches!(journal.load(), Err(JournalError::Damaged { .. })));
        put_bytes(&store, journal.key(), b"{\"next\": \"t\"}").unwrap();
        assert!(matches!(journal.load(), Err(JournalError::Damaged { .. })));
        journal.clear().unwrap();
        assert!(journal.load().unwrap().is_none());
        assert_eq!(journal.writes(), 4, "three puts and one removal");
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn a_backlog_is_read_back_from_where_the_entry_took_it() {
        let (root, store) = temp_store("backlog");
        let journal = PageJournal::new(&store, "t");
        let at = BacklogRef {
            id: "b7".into(),
            taken: 1,
        };
        assert!(matches!(
            journal.load_backlog(&at),
            Err(JournalError::Damaged { .. })
        ));
        let backlog = Backlog {
            id: "b7".into(),
            pages: vec![
                vec![json!({"taskId": "a"}).to_string()],
                vec![json!({"taskId": "b"}).to_string(), "{broken".into()],
                vec![json!({"taskId": "c"}).to_string()],
            ],
        };
        journal.save_backlog(&backlog).unwrap();
        let rest = journal.load_backlog(&at).unwrap();
        assert_eq!(
            rest,
            vec![vec![json!({"taskId": "b"})], vec![json!({"taskId": "c"})]],
            "from the second page on; a task that does not parse is dropped"
        );
        let other = BacklogRef {
            id: "b8".into(),
            taken: 0,
        };
        assert!(matches!(
            journal.load_backlog(&other),
            Err(JournalError::Damaged { .. })
        ));
        journal.clear_backlog().unwrap();
        std::fs::remove_dir_all(root).unwrap();
    }

    /// The released version's entry: the current page at the top level, the page
    /// received ahead inside it; both are finished after an upgrade.
    #[test]
    fn the_released_versions_entry_is_read() {
        let (root, store) = temp_store("v1");
        let journal = PageJournal::new(&store, "t");
        let v1 = json!({
            "tasks": [{"taskId": "a"}, {"taskId": "b"}],
            "stored": ["a"],
            "next": "token-of-ahead",
            "ahead": {"tasks": [{"taskId": "c"}], "next": "token-after-ahead"}
        });
        put_bytes(&store, journal.key(), v1.to_string().as_bytes()).unwrap();
        let j = journal.load().unwrap().unwrap();
        assert_eq!(j.pages.len(), 2);
        assert_eq!(j.pages[0].stored, ["a".to_string()].into());
        assert_eq!(j.pages[1].tasks, vec![json!({"taskId": "c"})]);
        assert_eq!(j.next.as_deref(), Some("token-after-ahead"));
        let v1 = json!({"tasks": [], "next": "t2"});
        put_bytes(&store, journal.key(), v1.to_string().as_bytes()).unwrap();
        let j = journal.load().unwrap().unwrap();
        assert!(j.pages.is_empty());
        assert_eq!(j.next.as_deref(), Some("t2"));
        std::fs::remove_dir_all(root).unwrap();
    }
}
