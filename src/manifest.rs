//! The archive manifest: what was stored, when, with which checksum, and which
//! recordings were deleted on the platform.
//!
//! With deletes on, the storage is the only copy of every recording, so the connector
//! keeps a record of every file it stored: a JSON object per file (a stable interface,
//! README "Proving the archive"), journaled with its task before the task's first
//! delete, and written, a page's files together, as one JSON Lines object in the same
//! storage before the page leaves the journal:
//!
//! ```text
//! .spinoco-connector/manifest/<tag>/YYYY/MM/DD/<page id>.jsonl
//! ```
//!
//! The date is the UTC day the page was received (its files are stored while it is in
//! work); the page id is the start of the SHA-256 of the page's tasks as the journal
//! holds them. Both are fixed per page, so a replay after a crash rewrites the same
//! object.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use time::OffsetDateTime;

use crate::checksum::sha256_hex;
use crate::template::{escape_tag, iso_millis, RESERVED_PREFIX};

/// One stored file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FileRecord {
    /// The stored name, relative to `SP_TASK_SYNC_SAVE_TO`.
    pub name: String,
    pub size: u64,
    /// CRC-32C of the stored bytes ([`crate::checksum::crc32c`]), as 8 hex digits.
    #[serde(serialize_with = "hex32", deserialize_with = "from_hex32")]
    pub crc32c: u32,
    pub task_id: String,
    pub data_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recording_id: Option<String>,
    /// Unix milliseconds, written as ISO-8601 in UTC.
    #[serde(serialize_with = "iso", deserialize_with = "from_iso")]
    pub stored_at: u64,
    /// When the recording was deleted on the platform, if it was.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "iso_opt",
        deserialize_with = "from_iso_opt"
    )]
    pub deleted_at: Option<u64>,
}

impl FileRecord {
    /// The record as one JSON object (a line of the manifest, an item of the journal).
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a record serialises")
    }
}

/// The manifest object of a page of `tag`: named by the day it was received and its
/// tasks (see the module comment).
pub fn object_key(tag: &str, received_ms: u64, tasks_json: &str) -> String {
    let day = OffsetDateTime::from_unix_timestamp_nanos(received_ms as i128 * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH);
    format!(
        "{RESERVED_PREFIX}/manifest/{}/{:04}/{:02}/{:02}/{}.jsonl",
        escape_tag(tag),
        day.year(),
        day.month() as u8,
        day.day(),
        &sha256_hex(tasks_json.as_bytes())[..16]
    )
}

/// The manifest object's content: one record a line.
pub fn json_lines<'a>(records: impl IntoIterator<Item = &'a FileRecord>) -> Vec<u8> {
    let mut out = Vec::new();
    for r in records {
        out.extend_from_slice(r.to_json().as_bytes());
        out.push(b'\n');
    }
    out
}

fn hex32<S: Serializer>(crc: &u32, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{crc:08x}"))
}

fn from_hex32<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let text = String::deserialize(d)?;
    u32::from_str_radix(&text, 16)
        .ok()
        .filter(|_| text.len() == 8)
        .ok_or_else(|| serde::de::Error::custom(format!("{text:?} is not 8 hex digits")))
}

fn iso<S: Serializer>(ms: &u64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&iso_millis(*ms as i64))
}

fn iso_opt<S: Serializer>(ms: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
    match ms {
        Some(ms) => iso(ms, s),
        None => s.serialize_none(),
    }
}

fn parse_iso(text: &str) -> Option<u64> {
    let t = OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()?;
    u64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok()
}

fn from_iso<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let text = String::deserialize(d)?;
    parse_iso(&text).ok_or_else(|| serde::de::Error::custom(format!("{text:?} is not a date")))
}

fn from_iso_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    match Option::<String>::deserialize(d)? {
        None => Ok(None),
        Some(text) => parse_iso(&text)
            .map(Some)
            .ok_or_else(|| serde::de::Error::custom(format!("{text:?} is not a date"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_is_one_line_of_the_documented_shape() {
        let r = FileRecord {
            name: "2024/09/09/x.ogg".into(),
            size: 203_344,
            crc32c: 0x6f3a_9b21,
            task_id: "a1d2".into(),
            data_type: "Recordings".into(),
            recording_id: Some("r1".into()),
            stored_at: 1_796_537_631_123,
            deleted_at: Some(1_796_537_631_456),
        };
        let line = r.to_json();
        assert_eq!(
            line,
            r#"{"name":"2024/09/09/x.ogg","size":203344,"crc32c":"6f3a9b21","taskId":"a1d2","dataType":"Recordings","recordingId":"r1","storedAt":"2026-12-06T06:13:51.123Z","deletedAt":"2026-12-06T06:13:51.456Z"}"#
        );
        let back: FileRecord = serde_json::from_str(&line).unwrap();
        assert_eq!(back, r);
        let plain = FileRecord {
            recording_id: None,
            deleted_at: None,
            data_type: "CallMetadata".into(),
            ..r
        };
        assert!(!plain.to_json().contains("recordingId") && !plain.to_json().contains("deletedAt"));
        assert_eq!(
            json_lines([&plain, &plain])
                .iter()
                .filter(|b| **b == b'\n')
                .count(),
            2
        );
        assert!(serde_json::from_str::<FileRecord>(&line.replace("6f3a9b21", "6f3a9b2")).is_err());
    }

    #[test]
    fn the_object_is_named_by_the_day_and_the_page() {
        let key = object_key("a/b", 1_796_537_631_123, "[{\"taskId\":\"x\"}]");
        assert!(
            key.starts_with(".spinoco-connector/manifest/a~2fb/2026/12/06/"),
            "{key}"
        );
        assert!(
            key.ends_with(".jsonl")
                && key.len() == ".spinoco-connector/manifest/a~2fb/2026/12/06/".len() + 16 + 6
        );
        assert_eq!(
            key,
            object_key("a/b", 1_796_537_631_999, "[{\"taskId\":\"x\"}]")
        );
        assert_ne!(
            key,
            object_key("a/b", 1_796_537_631_123, "[{\"taskId\":\"y\"}]")
        );
    }
}
