//! `spinoco-connector verify` on all four providers against their real test servers.
//! The files are stored with the store API and their manifests and journal records
//! written by hand in the README's format (a stable interface: the reader is proved on
//! its own, not through the engine's writer). Then files are removed, rewritten with
//! other bytes of the same size or with another size, and each run's exit code, counts
//! and listed names are checked, with the storage unchanged by every run. Beside that:
//! bounded memory for a large `--deep` read, an object replaced under a read, and the
//! exit codes of what `verify` cannot do.

use std::collections::BTreeMap;
use std::io::Read;
use std::process::Stdio;
use std::time::Duration;

use crate::common::archive::crc32c;
use crate::common::data::PatternReader;
use crate::common::harness::{command, env_for_url, proc_status, run, scratch, stdout};
use crate::common::providers::{list_objects, open_store, target, Provider};
use spinoco_connector::{put_bytes, BlobStore};

/// The tag's manifest folder (`SP_TASK_SYNC_TAG=it`).
const MANIFESTS: &str = ".spinoco-connector/manifest/it";
const JOURNAL: &str = ".spinoco-connector/it.page.json";

/// A stored file and its record.
struct Stored {
    name: &'static str,
    bytes: Vec<u8>,
    recording: Option<&'static str>,
    stored_at: &'static str,
    deleted_at: Option<&'static str>,
}

impl Stored {
    fn new(name: &'static str, bytes: Vec<u8>, stored_at: &'static str) -> Stored {
        Stored {
            name,
            bytes,
            recording: None,
            stored_at,
            deleted_at: None,
        }
    }

    fn recording(mut self, id: &'static str, deleted_at: Option<&'static str>) -> Stored {
        self.recording = Some(id);
        self.deleted_at = deleted_at;
        self
    }

    /// Its manifest line, as the README gives the format (without the newline).
    fn record(&self) -> String {
        let data_type = if self.recording.is_some() {
            "Recordings"
        } else if self.name.ends_with(".trans.json") {
            "Transcriptions"
        } else {
            "CallMetadata"
        };
        let task = self
            .name
            .rsplit('-')
            .next()
            .unwrap()
            .split('.')
            .next()
            .unwrap();
        let mut line = format!(
            r#"{{"name":"{}","size":{},"crc32c":"{:08x}","taskId":"{task}","dataType":"{data_type}""#,
            self.name,
            self.bytes.len(),
            crc32c(&self.bytes)
        );
        if let Some(id) = self.recording {
            line.push_str(&format!(r#","recordingId":"{id}""#));
        }
        line.push_str(&format!(r#","storedAt":"{}""#, self.stored_at));
        if let Some(at) = self.deleted_at {
            line.push_str(&format!(r#","deletedAt":"{at}""#));
        }
        line.push('}');
        line
    }
}

fn manifest(records: &[String]) -> Vec<u8> {
    records
        .iter()
        .map(|r| format!("{r}\n"))
        .collect::<String>()
        .into_bytes()
}

const T1_OGG: &str = "2026/01/01/20260101090000-t1.ogg";
const T1_TRANS: &str = "2026/01/01/20260101090000-t1.trans.json";
const T1_META: &str = "2026/01/01/20260101090000-t1.meta.json";
const T2_OGG: &str = "2026/01/02/20260102090000-t2.ogg";
const T2_META: &str = "2026/01/02/20260102090000-t2.meta.json";
const T3_OGG: &str = "2026/01/03/20260103090000-t3.ogg";

/// Stores six files and records them: two manifests of day 1 (the second holds the
/// latest record of a file the first recorded with another size and checksum: its
/// task was delivered again), one of day 2, and a record waiting in the journal
/// (day 3). One recording is over 4 MiB, so a cloud reads it in two ranges; one file
/// is empty.
fn archive(store: &dyn BlobStore) {
    let files = [
        Stored::new(
            T1_OGG,
            PatternReader::bytes((5 << 20) + 7, 1),
            "2026-01-01T09:00:01.000Z",
        )
        .recording("r1", Some("2026-01-01T09:00:02.000Z")),
        Stored::new(
            T1_TRANS,
            br#"{"text":"hello"}"#.to_vec(),
            "2026-01-01T09:00:01.100Z",
        ),
        Stored::new(
            T1_META,
            br#"{"call":"t1","again":true}"#.to_vec(),
            "2026-01-01T10:00:00.000Z",
        ),
        Stored::new(
            T2_OGG,
            PatternReader::bytes(100_000, 2),
            "2026-01-02T09:00:01.000Z",
        )
        .recording("r2", Some("2026-01-02T09:00:02.000Z")),
        Stored::new(T2_META, Vec::new(), "2026-01-02T09:00:01.500Z"),
        Stored::new(
            T3_OGG,
            PatternReader::bytes(30_000, 3),
            "2026-01-03T09:00:01.000Z",
        )
        .recording("r3", None),
    ];
    for f in &files {
        assert_eq!(
            put_bytes(store, f.name, &f.bytes).unwrap(),
            f.bytes.len() as u64
        );
    }
    let record = |name| files.iter().find(|f| f.name == name).unwrap().record();
    let first_delivery = Stored::new(T1_META, b"{}".to_vec(), "2026-01-01T09:00:01.200Z");
    let day1 = manifest(&[record(T1_OGG), record(T1_TRANS), first_delivery.record()]);
    put_bytes(
        store,
        &format!("{MANIFESTS}/2026/01/01/00000000000000a1.jsonl"),
        &day1,
    )
    .unwrap();
    let again = manifest(&[record(T1_META)]);
    put_bytes(
        store,
        &format!("{MANIFESTS}/2026/01/01/00000000000000a2.jsonl"),
        &again,
    )
    .unwrap();
    let day2 = manifest(&[record(T2_OGG), record(T2_META)]);
    put_bytes(
        store,
        &format!("{MANIFESTS}/2026/01/02/0123456789abcdef.jsonl"),
        &day2,
    )
    .unwrap();
    let journal = format!(
        r#"{{"pages":[{{"tasks":[{{"taskId":"t3"}}],"stored":["t3"],"records":[{}]}}],"next":"n"}}"#,
        record(T3_OGG)
    );
    put_bytes(store, JOURNAL, journal.as_bytes()).unwrap();
}

/// Every object under the target with its bytes, read straight from the server's
/// listing (never through `verify`'s own listing).
fn snapshot(e: &BTreeMap<String, String>, store: &dyn BlobStore) -> BTreeMap<String, Vec<u8>> {
    list_objects(e)
        .into_iter()
        .map(|name| {
            let bytes = store.get(&name).unwrap().unwrap();
            (name, bytes)
        })
        .collect()
}

/// What one `verify` run said.
struct Said {
    code: i32,
    out: String,
}

impl Said {
    fn count(&self, label: &str) -> usize {
        let prefix = format!("  {label}: ");
        let line = self.out.lines().find(|l| l.starts_with(&prefix));
        let line = line.unwrap_or_else(|| panic!("no {label:?} count in:\n{}", self.out));
        line[prefix.len()..].parse().unwrap()
    }

    /// Asserts the exit code, that each of `says` is in the output, and the bad files
    /// listed (`<problem> <name>`, in order; none when everything holds).
    fn holds(&self, context: &str, code: i32, says: &[&str], listed: &[String]) {
        assert_eq!(self.code, code, "{context}: {}", self.out);
        for text in says {
            assert!(
                self.out.contains(text),
                "{context}: no {text:?} in {}",
                self.out
            );
        }
        assert_eq!(self.listed(), listed, "{context}: {}", self.out);
    }

    /// The bad files listed, each as `<problem> <name>`.
    fn listed(&self) -> Vec<String> {
        let start = self.out.lines().position(|l| l == "bad files:");
        let Some(start) = start else {
            return Vec::new();
        };
        self.out
            .lines()
            .skip(start + 1)
            .take_while(|l| l.starts_with("  "))
            .map(|l| {
                let words: Vec<&str> = l.split_whitespace().collect();
                let name = words.iter().position(|w| w.contains('/')).unwrap();
                format!("{} {}", words[..name].join(" "), words[name])
            })
            .collect()
    }
}

fn verify(e: &BTreeMap<String, String>, args: &[&str]) -> Said {
    let mut all = vec!["verify"];
    all.extend_from_slice(args);
    let out = run(e, &all);
    Said {
        code: out.status.code().unwrap_or(-1),
        out: format!(
            "{}\n--- stderr ---\n{}",
            stdout(&out),
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

/// The connector's variables for `p`'s test server (a platform it never calls).
fn connector_env(p: Provider) -> Option<BTreeMap<String, String>> {
    let mut e = env_for_url("http://127.0.0.1:9", &scratch("verify-unused"));
    e.extend(target(p, "verify")?);
    e.insert("SP_TASK_SYNC_CONCURRENCY".into(), "3".into());
    e.insert("SP_TASK_SYNC_RETRY_TIMEOUT".into(), "20s".into());
    Some(e)
}

fn the_archive_is_proved(p: Provider) {
    let Some(e) = connector_env(p) else { return };
    let store = open_store(&e);
    archive(store.as_ref());
    let before = snapshot(&e, store.as_ref());

    let context = format!("{p:?}");
    verify(&e, &[]).holds(
        &context,
        0,
        &[
            "6 name(s) recorded in 3 manifest(s)",
            "6 file(s) checked",
            "OK: every file checked is there",
        ],
        &[],
    );
    verify(&e, &["--deep"]).holds(&context, 0, &["with the recorded size and CRC-32C"], &[]);

    // One recording removed, one rewritten with other bytes of its size, one file
    // rewritten with another size.
    store.delete(T1_OGG).unwrap();
    put_bytes(store.as_ref(), T2_OGG, &PatternReader::bytes(100_000, 99)).unwrap();
    put_bytes(store.as_ref(), T1_TRANS, br#"{"text":"hello, longer"}"#).unwrap();
    let after_changes = snapshot(&e, store.as_ref());

    let said = verify(&e, &[]);
    assert_eq!(said.code, 1, "{p:?}: {}", said.out);
    assert_eq!(
        said.listed(),
        [
            format!("missing {T1_OGG}"),
            format!("wrong size {T1_TRANS}")
        ],
        "{p:?}: {}",
        said.out
    );
    assert_eq!(
        (
            said.count("missing"),
            said.count("wrong size"),
            said.count("wrong checksum")
        ),
        (1, 1, 0),
        "{p:?}"
    );
    assert_eq!(
        said.count("unrecoverable (recordings deleted on the platform among the bad files)"),
        1,
        "{p:?}"
    );
    assert!(said.out.contains(&format!("{T1_OGG} [recording r1 deleted on the platform 2026-01-01T09:00:02.000Z: unrecoverable]")), "{p:?}: {}", said.out);

    // Only the content tells the rewritten recording.
    let said = verify(&e, &["--deep"]);
    assert_eq!(said.code, 1, "{p:?}: {}", said.out);
    assert_eq!(
        said.listed(),
        [
            format!("missing {T1_OGG}"),
            format!("wrong size {T1_TRANS}"),
            format!("wrong checksum {T2_OGG}")
        ],
        "{p:?}: {}",
        said.out
    );
    assert_eq!(
        said.count("unrecoverable (recordings deleted on the platform among the bad files)"),
        2,
        "{p:?}"
    );

    // The dates select by when each file was stored (its latest record), both ends included.
    verify(&e, &["--since", "2026-01-02", "--deep"]).holds(
        &context,
        1,
        &["3 file(s) checked"],
        &[format!("wrong checksum {T2_OGG}")],
    );
    verify(&e, &["--until", "2026-01-01", "--deep"]).holds(
        &context,
        1,
        &["3 file(s) checked"],
        &[
            format!("missing {T1_OGG}"),
            format!("wrong size {T1_TRANS}"),
        ],
    );
    let one_instant = [
        "--since",
        "2026-01-01T10:00:00Z",
        "--until",
        "2026-01-01T10:00:00Z",
        "--deep",
    ];
    verify(&e, &one_instant).holds(
        &format!("{p:?}: only the latest record of {T1_META}"),
        0,
        &["1 file(s) checked"],
        &[],
    );
    verify(&e, &["--since", "2026-01-03", "--deep"]).holds(
        &format!("{p:?}: the journal's record"),
        0,
        &["1 file(s) checked"],
        &[],
    );

    assert_eq!(
        snapshot(&e, store.as_ref()),
        after_changes,
        "{p:?}: verify changed the storage"
    );
    assert_ne!(before, after_changes);
    assert_eq!(
        store.get(".spinoco-connector/it.lease.json").unwrap(),
        None,
        "{p:?}: a lease was taken"
    );

    // A manifest line that cannot be read fails the run, named, even when every file holds.
    let bad = format!("{MANIFESTS}/2026/01/04/00000000000000d4.jsonl");
    put_bytes(
        store.as_ref(),
        &bad,
        b"{\"name\":\"2026/01/04/x.ogg\",\"size\":1}\n",
    )
    .unwrap();
    let said = verify(&e, &["--since", "2026-01-03"]);
    assert_eq!(said.code, 1, "{p:?}: {}", said.out);
    assert_eq!(said.count("unreadable manifest lines"), 1, "{p:?}");
    assert!(
        said.out
            .contains(&format!("{bad} line 1: missing field `crc32c`")),
        "{p:?}: {}",
        said.out
    );
}

#[test]
fn local_archive_is_proved() {
    the_archive_is_proved(Provider::Local);
}

#[test]
fn s3_archive_is_proved() {
    the_archive_is_proved(Provider::S3);
}

#[test]
fn gcs_archive_is_proved() {
    the_archive_is_proved(Provider::Gcs);
}

#[test]
fn azure_archive_is_proved() {
    the_archive_is_proved(Provider::Azure);
}

/// The object `--deep` reads in [`a_deep_check_keeps_memory_bounded`].
const BIG_MIB: u64 = 64;

/// `--deep` reads a 64 MiB object through a bounded buffer (the clouds one range at a
/// time): the process's peak RSS stays under half the object's size, which a whole
/// read would pass. (Measured, dev build: about 14 MB on local disk and 20 MB on the
/// clouds, the same for 40 and 160 MiB objects.)
fn a_deep_check_keeps_memory_bounded(p: Provider) {
    let Some(mut e) = connector_env(p) else {
        return;
    };
    e.insert("SP_TASK_SYNC_CONCURRENCY".into(), "1".into());
    let store = open_store(&e);
    let big = Stored::new(
        "2026/01/05/20260105090000-t5.ogg",
        PatternReader::bytes(BIG_MIB << 20, 5),
        "2026-01-05T09:00:00.000Z",
    )
    .recording("r5", None);
    put_bytes(store.as_ref(), big.name, &big.bytes).unwrap();
    let key = format!("{MANIFESTS}/2026/01/05/00000000000000e5.jsonl");
    put_bytes(store.as_ref(), &key, &manifest(&[big.record()])).unwrap();
    let mut child = command(&e, &["verify", "--deep"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // VmHWM never goes down: polled to the exit, it misses at most the last moments.
    let pid = child.id().to_string();
    let mut peak_kib = 0;
    let status = loop {
        peak_kib = peak_kib.max(proc_status(&pid, "VmHWM:").unwrap_or(0));
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    assert!(status.success(), "{p:?}: {status:?}");
    eprintln!("{p:?}: verify --deep of a {BIG_MIB} MiB object: peak RSS {peak_kib} KiB");
    assert!(peak_kib > 0, "{p:?}: the peak was never read");
    assert!(
        peak_kib < BIG_MIB / 2 * 1024,
        "{p:?}: peak RSS {peak_kib} KiB reading a {BIG_MIB} MiB object"
    );
}

#[test]
fn local_deep_check_keeps_memory_bounded() {
    a_deep_check_keeps_memory_bounded(Provider::Local);
}

#[test]
fn s3_deep_check_keeps_memory_bounded() {
    a_deep_check_keeps_memory_bounded(Provider::S3);
}

#[test]
fn gcs_deep_check_keeps_memory_bounded() {
    a_deep_check_keeps_memory_bounded(Provider::Gcs);
}

#[test]
fn azure_deep_check_keeps_memory_bounded() {
    a_deep_check_keeps_memory_bounded(Provider::Azure);
}

/// A bad command line is a usage error (2), a bad configuration 3, a folder that holds
/// no record 1 (nothing proves anything there), a folder that does not exist 5; none
/// of them creates anything.
#[test]
fn what_verify_cannot_do_has_its_exit_code() {
    let dir = scratch("verify-codes");
    let e = env_for_url("http://127.0.0.1:9", &dir);
    for args in [
        &["--since", "yesterday"][..],
        &["--until"],
        &["--fast"],
        &["--since", "2024-02-02", "--until", "2024-02-01"],
    ] {
        let said = verify(&e, args);
        assert_eq!(said.code, 2, "{args:?}: {}", said.out);
        assert!(said.out.contains("Usage:"), "{args:?}: {}", said.out);
    }
    let mut no_tag = e.clone();
    no_tag.remove("SP_TASK_SYNC_TAG");
    let said = verify(&no_tag, &[]);
    assert_eq!(said.code, 3, "{}", said.out);
    assert!(
        said.out.contains("SP_TASK_SYNC_TAG: is required"),
        "{}",
        said.out
    );

    let said = verify(&e, &[]);
    assert_eq!(said.code, 1, "{}", said.out);
    assert!(
        said.out
            .contains("nothing to verify: .spinoco-connector/manifest/it/"),
        "{}",
        said.out
    );
    assert_eq!(
        std::fs::read_dir(&dir).unwrap().count(),
        0,
        "verify created something"
    );

    let gone = dir.join("typo");
    let mut typo = e.clone();
    typo.insert("SP_TASK_SYNC_SAVE_TO".into(), gone.display().to_string());
    let said = verify(&typo, &[]);
    assert_eq!(said.code, 5, "{}", said.out);
    assert!(
        said.out.contains("the folder does not exist"),
        "{}",
        said.out
    );
    assert!(!gone.exists());
}

/// A storage that refuses the credentials stops `verify` with exit 5 (S3 with a wrong
/// secret: s3s-fs checks every signature).
#[test]
fn s3_refusing_the_credentials_is_exit_5() {
    let Some(mut e) = connector_env(Provider::S3) else {
        return;
    };
    e.insert("AWS_SECRET_ACCESS_KEY".into(), "not-the-secret".into());
    let said = verify(&e, &[]);
    assert_eq!(said.code, 5, "{}", said.out);
    assert!(said.out.contains("SignatureDoesNotMatch"), "{}", said.out);
    assert!(!said.out.contains("not-the-secret"), "{}", said.out);
}

/// An object replaced while it is streamed (`BlobStore::stream`) is never read half
/// old, half new: the range after the replacement asks for the version the read began
/// with, and is refused (by Azurite on the condition; s3s-fs and fake-gcs-server ignore
/// it, and the answer's ETag or generation tells).
fn a_replaced_object_is_not_read_half_old_half_new(p: Provider) {
    let Some(e) = connector_env(p) else { return };
    let store = open_store(&e);
    let key = "2026/01/06/20260106090000-t6.ogg";
    let old = PatternReader::bytes((5 << 20) + 7, 11);
    put_bytes(store.as_ref(), key, &old).unwrap();
    let mut src = store.stream(key).unwrap().unwrap();
    let mut first = vec![0u8; 1 << 20];
    src.read_exact(&mut first).unwrap();
    assert!(
        first == old[..1 << 20],
        "{p:?}: the first bytes are the object's"
    );
    put_bytes(
        store.as_ref(),
        key,
        &PatternReader::bytes((5 << 20) + 7, 12),
    )
    .unwrap();
    let mut rest = Vec::new();
    let err = src.read_to_end(&mut rest).unwrap_err();
    assert!(
        err.to_string()
            .contains("the object was replaced while it was read"),
        "{p:?}: {err}"
    );
    assert!(
        rest == old[1 << 20..rest.len() + (1 << 20)],
        "{p:?}: the rest read is the old object's"
    );
}

#[test]
fn s3_replaced_object_is_not_read_half_old_half_new() {
    a_replaced_object_is_not_read_half_old_half_new(Provider::S3);
}

#[test]
fn gcs_replaced_object_is_not_read_half_old_half_new() {
    a_replaced_object_is_not_read_half_old_half_new(Provider::Gcs);
}

#[test]
fn azure_replaced_object_is_not_read_half_old_half_new() {
    a_replaced_object_is_not_read_half_old_half_new(Provider::Azure);
}
