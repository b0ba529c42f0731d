//! A neighbour on the same local volume: a `check --connect` from another container
//! (another PID namespace), a person or program removing temp files, connectors of
//! other tags sharing the folder. None of them may cost a file, and the connector
//! cleans up only what is provably left over.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime};

use crate::common::harness::{self, env_for_url, scratch, wait_until};
use crate::common::hostile::{call_task, DownloadMode, HostilePlatform};
use crate::common::skip::skip;

const TASK: &str = "7c3a51c2-0d4e-4b7a-9a51-1b2c3d4e5f60";

/// A hostile platform serving one call whose recording (`len` bytes) trickles, so that
/// its temp file stays open for a while; the recording's bytes.
fn trickling_call(len: usize, every: Duration) -> (HostilePlatform, Vec<u8>) {
    let platform = HostilePlatform::start();
    let recording: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
    let (task, contents) = call_task(TASK, "call", &recording);
    platform.add_task(task, contents);
    platform.set_download_mode(
        &format!("/recording-direct/{TASK}/r1"),
        DownloadMode::Trickle { every },
    );
    (platform, recording)
}

/// The connector in the background, killed when the test ends, passed or failed.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn temp_dir(root: &Path) -> PathBuf {
    root.join(".spinoco-connector/tmp")
}

fn temp_names(root: &Path) -> BTreeSet<String> {
    std::fs::read_dir(temp_dir(root))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// Waits until the trickling `recording` is being written (200 bytes of it are in a
/// temp file) and returns the path of that temp file.
fn growing_temp(root: &Path, recording: &[u8]) -> PathBuf {
    let mut found = None;
    wait_until("the recording's temp file", Duration::from_secs(30), || {
        found = std::fs::read_dir(temp_dir(root))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .find(|p| std::fs::read(p).is_ok_and(|b| b.len() >= 200 && recording.starts_with(&b)));
        found.is_some()
    });
    found.unwrap()
}

/// The connector's environment for the call of [`trickling_call`] into `dir`, stored
/// under the platform's names (`call.ogg`, `call.meta.json`).
fn call_env(platform: &HostilePlatform, dir: &Path) -> BTreeMap<String, String> {
    let mut env = env_for_url(&platform.url, dir);
    env.insert(
        "SP_TASK_SYNC_GET_DATA".into(),
        "CallMetadata,Recordings".into(),
    );
    env.insert("SP_TASK_SYNC_NAMES".into(), "platform".into());
    env
}

/// Whether this host can run a process in a PID namespace of its own (root only).
fn pid_namespaces_work() -> bool {
    let works = Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc", "true"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !works {
        skip("cannot start a PID namespace here (needs root)");
    }
    works
}

/// The connector's `check --connect` in a PID namespace of its own, as from another
/// container on the same volume: no process of ours is visible to it.
fn check_from_another_pid_namespace(env: &BTreeMap<String, String>) -> String {
    let out = Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc"])
        .arg(env!("CARGO_BIN_EXE_spinoco-connector"))
        .args(["check", "--connect"])
        .env_clear()
        .envs(env)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = harness::text(&out);
    assert!(out.status.success(), "check --connect failed: {text}");
    assert!(
        text.contains("wrote, read back and removed a probe object"),
        "{text}"
    );
    text
}

#[test]
fn check_from_another_pid_namespace_sweeps_nothing_of_a_running_service() {
    if !pid_namespaces_work() {
        return;
    }
    let (platform, recording) = trickling_call(4000, Duration::from_millis(2));
    let dir = scratch("neighbour-check");
    let env = call_env(&platform, &dir);
    let log = dir.with_extension("log");
    let mut service = Running(harness::spawn(&env, &[], &log));
    let temp = growing_temp(&dir, &recording);

    check_from_another_pid_namespace(&env);
    // Still being written, or moved into place (the rename is atomic) if it finished.
    assert!(
        temp.exists() || dir.join("call.ogg").exists(),
        "check --connect removed the running service's temp file {temp:?}"
    );

    let delete = format!("/recording/{TASK}/r1");
    wait_until("the recording's delete", Duration::from_secs(60), || {
        platform.deletes().contains(&delete)
    });
    harness::signal(service.0.id(), "TERM");
    let status = service.0.wait().unwrap();
    let log = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(status.success(), "service exit {status:?}: {log}");
    assert_eq!(std::fs::read(dir.join("call.ogg")).unwrap(), recording);
    assert_eq!(
        harness::files_in(&dir),
        BTreeSet::from(["call.meta.json".to_string(), "call.ogg".to_string()])
    );
    assert_eq!(platform.deletes(), [delete]);
    assert_eq!(
        platform.downloads_of(&format!("/recording-direct/{TASK}/r1")),
        1,
        "the recording was downloaded again: {log}"
    );
    assert_eq!(temp_names(&dir), BTreeSet::new(), "temp files left behind");
}

#[test]
fn a_temp_file_or_folder_removed_under_a_transfer_means_a_new_transfer() {
    let (platform, recording) = trickling_call(1500, Duration::from_millis(2));
    let dir = scratch("neighbour-vanish");
    let mut env = call_env(&platform, &dir);
    // Long enough for three trickled transfers; a vanished temp file retried in place
    // gives up when it runs out.
    env.insert("SP_TASK_SYNC_RETRY_TIMEOUT".into(), "25s".into());
    let log = dir.with_extension("log");
    let mut once = Running(harness::spawn(&env, &["--once"], &log));
    let recording_path = format!("/recording-direct/{TASK}/r1");

    // First the temp file goes, then the whole temp folder under the new transfer.
    let first = growing_temp(&dir, &recording);
    std::fs::remove_file(&first).unwrap();
    wait_until("a second download", Duration::from_secs(30), || {
        platform.downloads_of(&recording_path) >= 2
    });
    growing_temp(&dir, &recording);
    std::fs::remove_dir_all(temp_dir(&dir)).unwrap();

    let mut status = None;
    wait_until("the --once run to end", Duration::from_secs(60), || {
        status = once.0.try_wait().unwrap();
        status.is_some()
    });
    let log = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(status.unwrap().success(), "--once failed: {log}");
    assert_eq!(std::fs::read(dir.join("call.ogg")).unwrap(), recording);
    assert_eq!(platform.downloads_of(&recording_path), 3, "{log}");
    assert_eq!(platform.deletes(), [format!("/recording/{TASK}/r1")]);
    assert_eq!(temp_names(&dir), BTreeSet::new(), "temp files left behind");
}

#[test]
fn leftovers_of_a_dead_run_of_the_tag_are_swept_once_the_lease_is_held() {
    let platform = HostilePlatform::start();
    let (task, contents) = call_task(TASK, "call", b"a short recording");
    platform.add_task(task, contents);
    let dir = scratch("neighbour-sweep");
    let env = env_for_url(&platform.url, &dir);
    let temp = temp_dir(&dir);
    std::fs::create_dir_all(&temp).unwrap();
    // The lease of tag "it" as a connector on this host left it when it was killed
    // (its pid runs no more: above the kernel's pid_max), naming its run.
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    let killed = serde_json::json!({
        "owner": "killed", "host": host.trim(), "pid": 4_194_305, "since_ms": 1,
        "renewed_ms": 1, "ttl_ms": 60_000, "run_id": "00000000000000aa"
    });
    std::fs::write(
        dir.join(".spinoco-connector/it.lease.json"),
        killed.to_string(),
    )
    .unwrap();
    let stale = SystemTime::now() - Duration::from_secs(11 * 60);
    let plant = |name: &str, modified: Option<SystemTime>| {
        let mut f = std::fs::File::create(temp.join(name)).unwrap();
        f.write_all(b"partial").unwrap();
        if let Some(t) = modified {
            f.set_modified(t).unwrap();
        }
    };
    // Another tag's connector at work on the same volume.
    let other_tag = "other.0123456789abcdef.4.part";
    // Runs of this tag ("it") that are over: the killed one's transfer and a file it
    // wrote before it held the lease (a lease probe), and an earlier run's transfer.
    let killed_transfer = "it.00000000000000aa.3.part";
    let killed_probe = "00000000000000aa.9.part";
    let earlier_run = "it.fedcba9876543210.7.part";
    // A `check` (or a connector waiting for the lease) in progress: no tag.
    let untagged = "0011223344556677.2.part";
    // An older version's names: a fresh one may belong to a live process elsewhere, one
    // untouched for ten minutes is a leftover.
    let old_fresh = "4194305-1.part";
    let old_stale = "4194305-2.part";
    // A stale file of another tag: nothing writes it any more.
    let other_stale = "other.0123456789abcdef.5.part";
    for name in [
        other_tag,
        killed_transfer,
        killed_probe,
        earlier_run,
        untagged,
        old_fresh,
    ] {
        plant(name, None);
    }
    for name in [old_stale, other_stale] {
        plant(name, Some(stale));
    }
    let all: BTreeSet<String> = [
        other_tag,
        killed_transfer,
        killed_probe,
        earlier_run,
        untagged,
        old_fresh,
        old_stale,
        other_stale,
    ]
    .map(String::from)
    .into();

    let out = harness::run(&env, &["check", "--connect"]);
    assert!(out.status.success(), "{}", harness::text(&out));
    assert_eq!(temp_names(&dir), all, "check --connect swept temp files");

    let out = harness::run(&env, &["--once"]);
    assert!(out.status.success(), "{}", harness::text(&out));
    assert_eq!(platform.deletes(), [format!("/recording/{TASK}/r1")]);
    assert_eq!(
        temp_names(&dir),
        [other_tag, untagged, old_fresh].map(String::from).into(),
        "the lease holder swept the wrong temp files"
    );
}
