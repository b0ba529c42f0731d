//! The archive manifest a sync with deletes writes: one object per page, a line per
//! stored file with its size, CRC-32C, task, type, recording and times, the deletes
//! marked; journaled before the first delete, written before the page leaves the
//! journal.

use serde_json::Value;

use crate::common::archive::{crc32c, MANIFESTS};
use crate::common::harness::*;
use crate::common::hostile::{call_task, HostilePlatform};

fn manifests(dir: &std::path::Path) -> Vec<(String, Vec<Value>)> {
    fn walk(p: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        for e in std::fs::read_dir(p).unwrap().flatten() {
            if e.path().is_dir() {
                walk(&e.path(), out)
            } else {
                out.push(e.path())
            }
        }
    }
    let mut files = Vec::new();
    walk(&dir.join(MANIFESTS), &mut files);
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let key = p.strip_prefix(dir).unwrap().to_string_lossy().to_string();
            let text = std::fs::read_to_string(&p).unwrap();
            let lines = text
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect();
            (key, lines)
        })
        .collect()
}

#[test]
fn a_sync_with_deletes_leaves_a_manifest_per_page() {
    let platform = HostilePlatform::start();
    // The query asks for one task: pages of 1 and 2 tasks.
    for (i, id) in ["m1", "m2", "m3"].iter().enumerate() {
        let (task, contents) = call_task(id, id, format!("OggS recording {i}").as_bytes());
        platform.add_task(task, contents);
    }
    let dir = scratch("manifest");
    let out = run(&env_for_url(&platform.url, &dir), &["--once"]);
    assert!(out.status.success(), "{}", text(&out));
    let today = time::OffsetDateTime::now_utc();
    let day = format!(
        "{:04}/{:02}/{:02}",
        today.year(),
        today.month() as u8,
        today.day()
    );
    let found = manifests(&dir);
    assert_eq!(found.len(), 2, "one manifest per page: {found:?}");
    let mut records = Vec::new();
    for (key, lines) in &found {
        assert!(
            key.starts_with(&format!(".spinoco-connector/manifest/it/{day}/")),
            "{key}"
        );
        let id = key.rsplit('/').next().unwrap();
        assert_eq!(id.len(), "0123456789abcdef.jsonl".len(), "{key}");
        records.extend(lines.iter().cloned());
    }
    assert_eq!(records.len(), 6, "two files a task: {records:?}");
    for r in &records {
        let name = r["name"].as_str().unwrap();
        let bytes = std::fs::read(dir.join(name)).unwrap();
        assert_eq!(r["size"], bytes.len() as u64, "{r}");
        assert_eq!(r["crc32c"], format!("{:08x}", crc32c(&bytes)), "{r}");
        assert!(r["storedAt"].as_str().unwrap().ends_with('Z'), "{r}");
        let task = r["taskId"].as_str().unwrap();
        assert!(
            name.ends_with(&format!("-{task}.ogg"))
                || name.ends_with(&format!("-{task}.meta.json")),
            "{r}"
        );
        if name.ends_with(".ogg") {
            assert_eq!(r["dataType"], "Recordings", "{r}");
            assert_eq!(r["recordingId"], "r1", "{r}");
            assert!(
                r["deletedAt"].is_string(),
                "a deleted recording says when: {r}"
            );
        } else {
            assert_eq!(r["dataType"], "CallMetadata", "{r}");
            assert!(
                r.get("recordingId").is_none() && r.get("deletedAt").is_none(),
                "{r}"
            );
        }
    }
    assert_eq!(platform.deletes().len(), 3);
}

/// At each DELETE, the task's files are already recorded (size, checksum) in the
/// journal: a crash after the delete cannot lose the record of what was stored.
#[test]
fn every_delete_comes_after_its_records_are_journaled() {
    let emu = emulator(spinoco_connector::EmulatorConfig {
        tasks: 12,
        seed: 21,
        calls_only: true,
        recording_size: (2_000, 20_000),
        ..Default::default()
    });
    let dir = scratch("records-journaled");
    let journal = dir.join(".spinoco-connector/it.page.json");
    emu.set_delete_guard(Box::new(move |task: &Value| {
        let Ok(text) = std::fs::read_to_string(&journal) else {
            return false;
        };
        let Ok(entry) = serde_json::from_str::<Value>(&text) else {
            return false;
        };
        let records: Vec<&Value> = entry["pages"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|p| p["records"].as_array().into_iter().flatten())
            .collect();
        task["get"].as_array().into_iter().flatten().all(|g| {
            records.iter().any(|r| {
                r["name"] == g["fileName"]
                    && r["taskId"] == task["taskId"]
                    && r["crc32c"].is_string()
            })
        })
    }));
    let out = run(&env(&emu, &dir), &["--once"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(!emu.deletes().is_empty());
    assert_eq!(
        emu.violations(),
        Vec::<String>::new(),
        "a delete before its records"
    );
    verify_complete(&emu, &dir);
}

/// A sync with deletes, then `verify` over what it wrote: it passes; a stored
/// recording removed, or one changed to other bytes of the same size (only `--deep`
/// sees that), makes it fail naming the file.
fn a_synced_archive_is_verified(p: crate::common::providers::Provider) {
    use crate::common::providers::{open_store, target};
    let Some(t) = target(p, "archive-e2e") else {
        return;
    };
    let emu = emulator(spinoco_connector::EmulatorConfig {
        tasks: 8,
        seed: 31,
        calls_only: true,
        recording_size: (3_000, 30_000),
        ..Default::default()
    });
    let mut e = env(&emu, &scratch("archive-e2e-unused"));
    e.extend(t);
    let out = run(&e, &["--once"]);
    assert!(out.status.success(), "{}", text(&out));
    let verify = |args: &[&str]| {
        let mut all = vec!["verify"];
        all.extend_from_slice(args);
        let out = run(&e, &all);
        (out.status.code(), text(&out))
    };
    let (code, said) = verify(&["--deep"]);
    assert_eq!(code, Some(0), "{said}");
    let store = open_store(&e);
    let recordings: Vec<String> = crate::common::harness::expected(&emu)
        .into_keys()
        .filter(|n| n.ends_with(".ogg"))
        .collect();
    assert!(recordings.len() >= 2, "{recordings:?}");
    // Other bytes of the same size: only the deep check sees them.
    let changed = &recordings[0];
    let mut bytes = store.get(changed).unwrap().unwrap();
    bytes[0] ^= 0xff;
    spinoco_connector::put_bytes(store.as_ref(), changed, &bytes).unwrap();
    assert_eq!(verify(&[]).0, Some(0));
    let (code, said) = verify(&["--deep"]);
    assert_eq!(code, Some(1), "{said}");
    assert!(said.contains(changed.as_str()), "{said}");
    // A recording gone (and deleted on the platform: it exists nowhere else).
    let removed = &recordings[1];
    store.delete(removed).unwrap();
    let (code, said) = verify(&[]);
    assert_eq!(code, Some(1), "{said}");
    assert!(said.contains(removed.as_str()), "{said}");
}

#[test]
fn local_synced_archive_is_verified() {
    a_synced_archive_is_verified(crate::common::providers::Provider::Local);
}

#[test]
fn s3_synced_archive_is_verified() {
    a_synced_archive_is_verified(crate::common::providers::Provider::S3);
}
