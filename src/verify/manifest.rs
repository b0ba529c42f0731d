//! The archive manifest as `verify` reads it (README "Proving the archive", a stable
//! interface): one JSON object per line per stored file, one object per page of tasks
//! under `.spinoco-connector/manifest/<tag escaped>/YYYY/MM/DD/<page id>.jsonl`, and
//! the records still waiting in the journal entry (`"records"` of each page). The
//! latest record of a name counts; a line that cannot be read is reported, never
//! skipped in silence.

use std::collections::HashMap;
use std::fmt;
use std::io::{self, BufRead};

use serde::Deserialize;
use serde_json::Value;

use crate::config::parse_iso_date;
use crate::template::{check_name, escape_tag, RESERVED_PREFIX};

/// The longest manifest line read: a record with a name of the longest length a name
/// may have (1024 bytes) takes about 1.4 KiB.
const MAX_LINE: usize = 64 * 1024;

/// The folder of the tag's manifests, ending in `/`.
pub fn manifest_prefix(tag: &str) -> String {
    format!("{RESERVED_PREFIX}/manifest/{}/", escape_tag(tag))
}

/// The tag's journal entry (as [`crate::journal`] names it).
pub fn journal_key(tag: &str) -> String {
    format!("{RESERVED_PREFIX}/{}.page.json", escape_tag(tag))
}

/// Whether `rest`, a name below the tag's manifest folder, is a manifest:
/// `YYYY/MM/DD/<16 lower-case hex digits>.jsonl`.
pub fn is_manifest(rest: &str) -> bool {
    let parts: Vec<&str> = rest.split('/').collect();
    let digits = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_digit());
    match parts[..] {
        [y, m, d, file] => {
            digits(y, 4)
                && digits(m, 2)
                && digits(d, 2)
                && file.strip_suffix(".jsonl").is_some_and(|id| {
                    id.len() == 16 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
                })
        }
        _ => false,
    }
}

/// One stored file as the engine recorded it.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// The stored name, relative to `SP_TASK_SYNC_SAVE_TO`.
    pub name: String,
    pub size: u64,
    pub crc32c: u32,
    pub task_id: String,
    pub data_type: String,
    pub recording_id: Option<String>,
    /// Unix milliseconds.
    pub stored_at: i64,
    /// Unix milliseconds the recording was deleted on the platform.
    pub deleted_at: Option<i64>,
}

/// A record as it is written (README "Proving the archive"); unknown fields are
/// allowed, so that a later writer may add some.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Written {
    name: String,
    size: u64,
    crc32c: String,
    task_id: String,
    data_type: String,
    #[serde(default)]
    recording_id: Option<String>,
    stored_at: String,
    #[serde(default)]
    deleted_at: Option<String>,
}

impl Record {
    /// Reads one record: a manifest line, or an object of the journal's `records`.
    pub fn parse(json: &[u8]) -> Result<Record, String> {
        let w: Written = serde_json::from_slice(json).map_err(|e| e.to_string())?;
        Record::checked(w)
    }

    fn from_value(value: Value) -> Result<Record, String> {
        let w: Written = serde_json::from_value(value).map_err(|e| e.to_string())?;
        Record::checked(w)
    }

    fn checked(w: Written) -> Result<Record, String> {
        check_name(&w.name).map_err(|e| format!("name {:?}: {e}", w.name))?;
        let crc32c = Some(&w.crc32c)
            .filter(|c| c.len() == 8 && c.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
            .and_then(|c| u32::from_str_radix(c, 16).ok())
            .ok_or_else(|| format!("crc32c {:?} is not 8 lower-case hex digits", w.crc32c))?;
        let date = |field: &str, raw: &str| {
            parse_iso_date(raw).ok_or_else(|| format!("{field} {raw:?} is not an ISO-8601 date"))
        };
        Ok(Record {
            stored_at: date("storedAt", &w.stored_at)?,
            deleted_at: w
                .deleted_at
                .as_deref()
                .map(|d| date("deletedAt", d))
                .transpose()?,
            name: w.name,
            size: w.size,
            crc32c,
            task_id: w.task_id,
            data_type: w.data_type,
            recording_id: w.recording_id,
        })
    }
}

/// A line (or a journal record) that cannot be read, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct BadLine {
    /// The object, and where in it (`... line 3`, `... page 1, record 2`).
    pub at: String,
    /// Remote text, escaped.
    pub reason: String,
}

impl BadLine {
    pub fn new(at: String, reason: &str) -> BadLine {
        BadLine {
            at,
            reason: crate::redact::remote(reason, 300),
        }
    }
}

impl fmt::Display for BadLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.at, self.reason)
    }
}

/// What one manifest holds.
#[derive(Debug, Default)]
pub struct Manifest {
    pub records: Vec<Record>,
    pub bad: Vec<BadLine>,
}

/// Reads the manifest `key` from `src`, line by line (a line longer than [`MAX_LINE`]
/// is a bad line, and memory stays at one line). Blank lines hold nothing and are
/// passed over.
pub fn read_manifest(mut src: impl BufRead, key: &str) -> io::Result<Manifest> {
    let mut manifest = Manifest::default();
    let mut line = Vec::new();
    for number in 1.. {
        line.clear();
        if io::Read::take(&mut src, MAX_LINE as u64 + 1).read_until(b'\n', &mut line)? == 0 {
            break;
        }
        let at = || format!("{key} line {number}");
        if line.len() > MAX_LINE && !line.ends_with(b"\n") {
            skip_line(&mut src)?;
            let reason = format!("longer than {MAX_LINE} bytes");
            manifest.bad.push(BadLine::new(at(), &reason));
            continue;
        }
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match Record::parse(&line) {
            Ok(record) => manifest.records.push(record),
            Err(reason) => manifest.bad.push(BadLine::new(at(), &reason)),
        }
    }
    Ok(manifest)
}

/// Reads up to the end of the line.
fn skip_line(src: &mut impl BufRead) -> io::Result<()> {
    loop {
        let buf = src.fill_buf()?;
        if buf.is_empty() {
            return Ok(());
        }
        match buf.iter().position(|&b| b == b'\n') {
            Some(i) => {
                src.consume(i + 1);
                return Ok(());
            }
            None => {
                let n = buf.len();
                src.consume(n);
            }
        }
    }
}

/// The records waiting in the journal entry `key` (`bytes`): each page's `records`.
pub fn journal_records(bytes: &[u8], key: &str) -> Manifest {
    let mut found = Manifest::default();
    let entry: Value = match serde_json::from_slice(bytes) {
        Ok(v) => v,
        Err(e) => {
            found
                .bad
                .push(BadLine::new(key.to_string(), &e.to_string()));
            return found;
        }
    };
    let pages = entry["pages"].as_array().cloned().unwrap_or_default();
    for (p, mut page) in pages.into_iter().enumerate() {
        let records = match page["records"].take() {
            Value::Null => continue,
            Value::Array(records) => records,
            _ => {
                let at = format!("{key} page {}", p + 1);
                found
                    .bad
                    .push(BadLine::new(at, "its \"records\" is not a list"));
                continue;
            }
        };
        for (r, value) in records.into_iter().enumerate() {
            match Record::from_value(value) {
                Ok(record) => found.records.push(record),
                Err(reason) => {
                    let at = format!("{key} page {}, record {}", p + 1, r + 1);
                    found.bad.push(BadLine::new(at, &reason));
                }
            }
        }
    }
    found
}

/// Where a record was read, for the order of two records of one name stored in the
/// same millisecond: the journal first, then the manifests by name, then by line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Place {
    pub source: usize,
    pub line: usize,
}

/// The latest record of every name.
#[derive(Debug, Default)]
pub struct Index {
    latest: HashMap<String, (Record, Place)>,
}

impl Index {
    /// Adds `record`, read at `place`: it counts when it was stored later than the
    /// name's record so far (in the same millisecond: when it says the recording was
    /// deleted and the other does not, or else when it was read later).
    pub fn add(&mut self, record: Record, place: Place) {
        let rank = |r: &Record, p: Place| (r.stored_at, r.deleted_at.is_some(), p);
        match self.latest.get_mut(&record.name) {
            Some((kept, at)) if rank(kept, *at) >= rank(&record, place) => {}
            Some(slot) => *slot = (record, place),
            None => {
                self.latest.insert(record.name.clone(), (record, place));
            }
        }
    }

    /// How many names have a record.
    pub fn len(&self) -> usize {
        self.latest.len()
    }

    /// The latest records stored from `since` to `until` (Unix milliseconds, both
    /// included), by name.
    pub fn select(self, since: Option<i64>, until: Option<i64>) -> Vec<Record> {
        let mut records: Vec<Record> = self
            .latest
            .into_values()
            .map(|(r, _)| r)
            .filter(|r| since.is_none_or(|s| r.stored_at >= s))
            .filter(|r| until.is_none_or(|u| r.stored_at <= u))
            .collect();
        records.sort_by(|a, b| a.name.cmp(&b.name));
        records
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(name: &str, size: u64, stored_at: &str) -> String {
        format!(
            r#"{{"name":"{name}","size":{size},"crc32c":"6f3a9b21","taskId":"t1","dataType":"Recordings","recordingId":"r1","storedAt":"{stored_at}"}}"#
        )
    }

    #[test]
    fn the_briefs_example_line_reads() {
        let r = Record::parse(br#"{"name":"2024/09/09/20240909154547-a1d2.ogg","size":203344,"crc32c":"6f3a9b21","taskId":"a1d2","dataType":"Recordings","recordingId":"r1","storedAt":"2026-12-06T06:20:31.123Z","deletedAt":"2026-12-06T06:20:31.456Z"}"#).unwrap();
        assert_eq!(
            r,
            Record {
                name: "2024/09/09/20240909154547-a1d2.ogg".into(),
                size: 203344,
                crc32c: 0x6f3a9b21,
                task_id: "a1d2".into(),
                data_type: "Recordings".into(),
                recording_id: Some("r1".into()),
                stored_at: 1796538031123,
                deleted_at: Some(1796538031456),
            }
        );
        let meta = Record::parse(br#"{"name":"a.meta.json","size":0,"crc32c":"00000000","taskId":"t","dataType":"","storedAt":"2026-12-06T00:00:00.000Z","later":1}"#).unwrap();
        assert_eq!((meta.recording_id, meta.deleted_at), (None, None));
    }

    #[test]
    fn bad_lines_are_reported_with_where_and_why() {
        let long = format!(r#"{{"name":"{}"}}"#, "x".repeat(MAX_LINE));
        let text = [
            line("a.ogg", 3, "2026-12-06T06:20:31.123Z"),
            "not json".into(),
            String::new(),
            r#"{"name":"b.ogg","crc32c":"00000000","taskId":"t","dataType":"","storedAt":"2026-12-06T06:20:31.123Z"}"#.into(),
            line("c.ogg", 3, "yesterday"),
            line("../etc/passwd", 3, "2026-12-06T06:20:31.123Z"),
            line("d.ogg", 3, "2026-12-06T06:20:31.123Z").replace("6f3a9b21", "6F3A9B21"),
            line("e\u{202e}.ogg", 3, "2026-12-06T06:20:31.123Z"),
            long,
            line("f.ogg", 4, "2026-12-06T06:20:31.123Z"),
        ]
        .join("\n");
        let m = read_manifest(text.as_bytes(), "m.jsonl").unwrap();
        let names: Vec<_> = m.records.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(
            names,
            ["a.ogg", "f.ogg"],
            "the last line has no newline and still counts"
        );
        let at: Vec<_> = m.bad.iter().map(|b| b.at.as_str()).collect();
        assert_eq!(
            at,
            [
                "m.jsonl line 2",
                "m.jsonl line 4",
                "m.jsonl line 5",
                "m.jsonl line 6",
                "m.jsonl line 7",
                "m.jsonl line 8",
                "m.jsonl line 9"
            ]
        );
        let reasons: Vec<_> = m.bad.iter().map(|b| b.reason.as_str()).collect();
        assert!(reasons[1].contains("missing field `size`"), "{reasons:?}");
        assert!(reasons[2].contains("storedAt \"yesterday\""), "{reasons:?}");
        assert!(reasons[3].contains("../etc/passwd"), "{reasons:?}");
        assert!(reasons[4].contains("lower-case hex"), "{reasons:?}");
        assert!(!reasons[5].contains('\u{202e}'), "escaped: {reasons:?}");
        assert!(reasons[6].contains("longer than"), "{reasons:?}");
    }

    #[test]
    fn the_latest_record_of_a_name_wins() {
        let rec =
            |name: &str, size, at: &str| Record::parse(line(name, size, at).as_bytes()).unwrap();
        let place = |source, line| Place { source, line };
        let mut index = Index::default();
        index.add(rec("a", 1, "2026-01-02T00:00:00.000Z"), place(2, 1));
        index.add(rec("a", 2, "2026-01-03T00:00:00.000Z"), place(1, 1));
        index.add(rec("a", 3, "2026-01-01T00:00:00.000Z"), place(3, 1));
        // The same millisecond: the one read later, unless the other says deleted.
        index.add(rec("b", 1, "2026-01-01T00:00:00.000Z"), place(1, 1));
        index.add(rec("b", 2, "2026-01-01T00:00:00.000Z"), place(1, 2));
        let mut deleted = rec("c", 1, "2026-01-01T00:00:00.000Z");
        deleted.deleted_at = Some(deleted.stored_at + 1);
        index.add(deleted, place(0, 1));
        index.add(rec("c", 2, "2026-01-01T00:00:00.000Z"), place(1, 1));
        assert_eq!(index.len(), 3);
        let sizes: Vec<_> = index
            .select(None, None)
            .iter()
            .map(|r| (r.name.clone(), r.size))
            .collect();
        assert_eq!(sizes, [("a".into(), 2), ("b".into(), 2), ("c".into(), 1)]);
    }

    #[test]
    fn dates_select_the_latest_records_both_ends_included() {
        let mut index = Index::default();
        for (i, day) in ["01", "02", "03", "04"].iter().enumerate() {
            let r = Record::parse(line(day, 1, &format!("2026-01-{day}T12:00:00.000Z")).as_bytes());
            index.add(r.unwrap(), Place { source: 1, line: i });
        }
        // "02" stored again on the 5th: its latest record is out of the range.
        let again = Record::parse(line("02", 1, "2026-01-05T00:00:00.000Z").as_bytes());
        index.add(again.unwrap(), Place { source: 2, line: 1 });
        let since = parse_iso_date("2026-01-02T12:00:00.000Z");
        let until = parse_iso_date("2026-01-04T12:00:00.000Z");
        let names: Vec<_> = index
            .select(since, until)
            .into_iter()
            .map(|r| r.name)
            .collect();
        assert_eq!(names, ["03", "04"]);
    }

    #[test]
    fn manifest_names_and_keys() {
        assert_eq!(
            manifest_prefix("my tag"),
            ".spinoco-connector/manifest/my~20tag/"
        );
        assert_eq!(journal_key("it"), ".spinoco-connector/it.page.json");
        assert!(is_manifest("2026/12/06/0123456789abcdef.jsonl"));
        for not in [
            "2026/12/06/0123456789ABCDEF.jsonl",
            "2026/12/06/0123456789abcde.jsonl",
            "2026/12/6/0123456789abcdef.jsonl",
            "2026/12/06/0123456789abcdef.json",
            "x/2026/12/06/0123456789abcdef.jsonl",
            "notes.txt",
        ] {
            assert!(!is_manifest(not), "{not}");
        }
    }

    #[test]
    fn journal_records_are_each_pages_records() {
        let entry = format!(
            r#"{{"pages":[{{"tasks":[],"stored":[],"records":[{},{{"name":"x"}}]}},{{"tasks":[]}},{{"tasks":[],"records":{{}}}}],"next":"t"}}"#,
            line("a.ogg", 3, "2026-12-06T06:20:31.123Z")
        );
        let found = journal_records(entry.as_bytes(), "j");
        assert_eq!(found.records.len(), 1);
        let at: Vec<_> = found.bad.iter().map(|b| b.at.as_str()).collect();
        assert_eq!(at, ["j page 1, record 2", "j page 3"]);
        let broken = journal_records(b"{\"pages\":[", "j");
        assert_eq!((broken.records.len(), broken.bad.len()), (0, 1));
        // The released version's entry: one page at the top, no records.
        let old = journal_records(br#"{"tasks":[],"stored":[]}"#, "j");
        assert_eq!((old.records.len(), old.bad.len()), (0, 0));
    }
}
