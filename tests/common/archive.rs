//! The archive manifest's two promises, checked at the end of a run: no manifest lists a
//! file that is not stored (with the recorded size and CRC-32C), and every recording
//! deleted on the platform is in a manifest, marked deleted.

use std::collections::BTreeMap;

use serde_json::Value;
use spinoco_connector::Emulator;

/// Where the manifests of every tag live, below the storage root.
pub const MANIFESTS: &str = ".spinoco-connector/manifest/";

/// CRC-32C (Castagnoli), bit by bit: the tests' own, not the connector's.
pub fn crc32c(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// What the manifests hold, for the figures.
#[derive(Debug, Default)]
pub struct Manifests {
    pub objects: usize,
    pub records: usize,
    pub deleted: usize,
}

/// Checks `objects` (each manifest's key and bytes) against the storage (`stored` reads
/// a name) and the deletes the emulator saw.
pub fn check(
    objects: &[(String, Vec<u8>)],
    stored: impl Fn(&str) -> Option<Vec<u8>>,
    emu: &Emulator,
) -> Manifests {
    let mut m = Manifests {
        objects: objects.len(),
        ..Manifests::default()
    };
    // (task id, name) -> deleted at some point, by every record of it.
    let mut deleted: BTreeMap<(String, String), bool> = BTreeMap::new();
    for (key, bytes) in objects {
        assert!(
            key.starts_with(MANIFESTS) && key.ends_with(".jsonl"),
            "{key}"
        );
        let text = String::from_utf8(bytes.clone()).expect("a manifest is UTF-8");
        assert!(text.ends_with('\n'), "{key}: the last line is not ended");
        for line in text.lines() {
            let r: Value =
                serde_json::from_str(line).unwrap_or_else(|e| panic!("{key}: {e}: {line}"));
            let name = r["name"].as_str().expect("a name");
            let got =
                stored(name).unwrap_or_else(|| panic!("{key} lists {name}, which is not stored"));
            assert_eq!(
                r["size"].as_u64(),
                Some(got.len() as u64),
                "{key}: {name}: size"
            );
            assert_eq!(
                r["crc32c"].as_str(),
                Some(format!("{:08x}", crc32c(&got)).as_str()),
                "{key}: {name}: crc32c"
            );
            for field in ["taskId", "dataType", "storedAt"] {
                assert!(r[field].is_string(), "{key}: {name}: no {field}: {line}");
            }
            let task = r["taskId"].as_str().unwrap_or("").to_string();
            let entry = deleted.entry((task, name.to_string())).or_insert(false);
            *entry |= r["deletedAt"].is_string();
            m.records += 1;
        }
    }
    // Every recording deleted on the platform is in a manifest, marked deleted.
    let handed_out = emu.handed_out();
    for path in emu.deletes() {
        // The task that listed the delete, and its recording the delete names: by the
        // recording id, or by the last segment of the recording's path.
        let rec = path.rsplit('/').next().unwrap_or("").to_string();
        let task = handed_out
            .iter()
            .find(|t| {
                t["delete"]
                    .as_array()
                    .is_some_and(|ds| ds.iter().any(|d| d["path"] == path.as_str()))
            })
            .unwrap_or_else(|| panic!("{path}: no task handed out lists it"));
        let name = task["get"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|g| {
                g["recordingId"] == rec.as_str()
                    || g["path"]
                        .as_str()
                        .is_some_and(|p| p.ends_with(&format!("/{rec}")))
            })
            .and_then(|g| g["fileName"].as_str().map(str::to_string))
            .unwrap_or_else(|| panic!("{path}: no recording of its task"));
        let task = task["taskId"].as_str().unwrap_or("").to_string();
        assert_eq!(
            deleted.get(&(task.clone(), name.clone())),
            Some(&true),
            "{path} was deleted on the platform but no manifest says so ({name})"
        );
        m.deleted += 1;
    }
    m
}
