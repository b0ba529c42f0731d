//! The page journal: what the connector keeps durable so a crash loses nothing.
//!
//! The platform may move its cursor as soon as it returns a page, so the page is
//! stored before any work on it, and each task is recorded as stored before its first
//! delete (see "What the connector keeps durable, and why" in the contract). It lives
//! in the storage itself, through the same trait as the data, under the connector's
//! own folder, one entry per sync tag.

use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::platform::FeedPage;
use crate::store::{put_bytes, BlobStore, StoreError};
use crate::template::RESERVED_PREFIX;

/// A page being worked on.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct JournaledPage {
    /// The task objects exactly as the platform sent them.
    pub tasks: Vec<Value>,
    /// Tasks whose files are all durably stored: on replay they go straight to deletes.
    #[serde(default)]
    pub stored: BTreeSet<String>,
    /// The token of the page after this one. Kept when the page is done, so that a
    /// crash between asking for that page and journaling it is recovered by replaying
    /// the token (the platform may already have moved its cursor past it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
    /// The page after this one, already received while this one was worked on: after a
    /// restart it is worked next, so it is not lost when its token has expired.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ahead: Option<FeedPage>,
    /// The nonce of the round that last proved the journal writable (see
    /// [`PageJournal::prove`]); only a witness, never read for decisions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub round: Option<String>,
}

#[derive(Debug)]
pub enum JournalError {
    Store(StoreError),
    Damaged { key: String, reason: String },
}

impl fmt::Display for JournalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JournalError::Store(e) => write!(f, "page journal: {e}"),
            JournalError::Damaged { key, reason } => write!(
                f,
                "the page journal {key} cannot be read ({reason}); it holds tasks the platform \
                 may not hand out again, so it is left in place: inspect or move it away to go on"
            ),
        }
    }
}

impl std::error::Error for JournalError {}

impl From<StoreError> for JournalError {
    fn from(e: StoreError) -> Self {
        JournalError::Store(e)
    }
}

pub struct PageJournal<'a> {
    store: &'a dyn BlobStore,
    key: String,
}

impl<'a> PageJournal<'a> {
    pub fn new(store: &'a dyn BlobStore, tag: &str) -> PageJournal<'a> {
        PageJournal {
            store,
            key: format!("{RESERVED_PREFIX}/{}.page.json", escape_tag(tag)),
        }
    }

    pub fn key(&self) -> &str {
        &self.key
    }

    pub fn load(&self) -> Result<Option<JournaledPage>, JournalError> {
        let Some(bytes) = self.store.get(&self.key)? else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| JournalError::Damaged {
                key: self.key.clone(),
                reason: e.to_string(),
            })
    }

    pub fn save(&self, page: &JournaledPage) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(page).expect("a page serialises");
        put_bytes(self.store, &self.key, &bytes).map(|_| ())
    }

    /// Proves that the storage takes the journal before the feed is asked for a page
    /// nobody has written down yet: writes `page` (what the journal holds now, or an
    /// empty entry) marked with a fresh round nonce, reads it back and compares. A
    /// storage that refuses the write, or hands back something else, fails here, while
    /// the platform's cursor has not moved.
    pub fn prove(&self, page: &JournaledPage) -> Result<(), StoreError> {
        let marked = JournaledPage {
            round: Some(round_nonce()),
            ..page.clone()
        };
        let bytes = serde_json::to_vec(&marked).expect("a page serialises");
        put_bytes(self.store, &self.key, &bytes)?;
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
        self.store.delete(&self.key)
    }
}

/// A value no earlier round wrote: the time in nanoseconds and the process id.
fn round_nonce() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{nanos:x}-{:x}", std::process::id())
}

/// Makes a tag usable as one file name: letters, digits, `-` and `_` stay, every other
/// byte becomes `~xx`, so two tags never share an entry.
pub fn escape_tag(tag: &str) -> String {
    let mut out = String::new();
    for b in tag.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
            out.push(b as char);
        } else {
            out.push_str(&format!("~{b:02x}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::local::LocalStore;

    #[test]
    fn tags_escape_to_distinct_safe_names() {
        assert_eq!(escape_tag("my_sync-tag1"), "my_sync-tag1");
        assert_eq!(escape_tag("../a/b"), "~2e~2e~2fa~2fb");
        assert_ne!(escape_tag("a~2fb"), escape_tag("a/b"));
        assert_eq!(escape_tag("ž"), "~c5~be");
    }

    #[test]
    fn round_trip_and_damage() {
        let root = std::env::temp_dir().join(format!("spinoco-journal-{}", std::process::id()));
        let store = LocalStore::open(&root).unwrap();
        let journal = PageJournal::new(&store, "t/1");
        assert!(journal.load().unwrap().is_none());
        let mut page = JournaledPage {
            tasks: vec![serde_json::json!({"taskId": "x"})],
            ..Default::default()
        };
        page.stored.insert("x".into());
        journal.save(&page).unwrap();
        assert_eq!(journal.load().unwrap(), Some(page.clone()));
        put_bytes(&store, journal.key(), b"{\"tasks\": [").unwrap();
        assert!(matches!(journal.load(), Err(JournalError::Damaged { .. })));
        journal.prove(&page).unwrap();
        let proven = journal.load().unwrap().unwrap();
        assert!(proven.round.is_some());
        assert_eq!(
            JournaledPage {
                round: None,
                ..proven
            },
            page,
            "the proof keeps the page"
        );
        journal.clear().unwrap();
        assert!(journal.load().unwrap().is_none());
        std::fs::remove_dir_all(root).unwrap();
    }
}
