//! The reliability suite (issue 8): the storage going away and coming back, the
//! storage refusing us, `kill -9` at random instants and SIGTERM during large uploads
//! on every back-end, and hostile answers from the platform. Every test ends with the
//! same check ([`verify`]): every handed-out file complete with the platform's bytes,
//! nothing else visible, no delete before its task's files were stored, every delete
//! done. Each prints (and appends to the tally) a `RELIABILITY ...` figure line.
//! Platform-side faults per provider are in `sync_providers.rs`; the soak run is the
//! ignored `soak` test here.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use crate::common::behaviour::unique;
use crate::common::harness::*;
use crate::common::providers::*;
use crate::common::proxy::{Mode, TcpProxy};
use crate::common::s3fs::PrivateS3;
use spinoco_connector::emulator::{Emulator, EmulatorConfig, Faults, RawReply};

/// Whether the longer variants run (`SPINOCO_LONG_TESTS=1`).
fn long() -> bool {
    std::env::var("SPINOCO_LONG_TESTS").as_deref() == Ok("1")
}

/// The connector's environment for `emu` into the target `t`.
fn env_for(emu: &Emulator, t: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    let mut e = env(emu, &scratch("unused"));
    e.extend(t.clone());
    e
}

/// Everything handed out so far is stored and the round is over (no journal).
fn caught_up(emu: &Emulator, e: &BTreeMap<String, String>, tasks: usize) -> bool {
    let listed = list_objects(e);
    emu.handed_out().len() >= tasks
        && expected(emu).keys().all(|n| listed.contains(n))
        && !listed.iter().any(|n| n.starts_with(".spinoco-connector/"))
        && emu.deletes().len() >= recording_deletes(emu).len()
}

/// How often the sync feed was asked (each ask may move the platform's cursor).
fn feed_requests(emu: &Emulator) -> usize {
    emu.requests()
        .iter()
        .filter(|r| r.path.starts_with("/task/sync"))
        .count()
}

fn stop(mut child: Child) {
    signal(child.id(), "TERM");
    let status = child.wait().unwrap();
    assert!(status.success(), "exit status {status:?}");
}

// ---------------------------------------------------------------- storage outage

/// The storage server goes away (every connection refused, the open ones cut) for a
/// few seconds in the middle of a service-mode run, then comes back: the connector
/// waits and retries, stores nothing partial, deletes nothing early, then catches up.
fn storage_outage(p: Provider) {
    let Some(t) = target(p, "outage") else { return };
    let upstream = endpoint(&t).unwrap();
    let proxy = TcpProxy::start(upstream.trim_start_matches("http://"));
    let tasks = 40;
    let emu = emulator(EmulatorConfig {
        tasks,
        seed: 31,
        recording_size: (2_000, 300_000),
        latency: Duration::from_millis(10),
        ..Default::default()
    });
    guard_via_store(&emu, &t);
    let mut e = env_for(&emu, &with_endpoint(&t, &proxy.url()));
    e.insert("SP_TASK_SYNC_PAGE_SIZE".into(), "5".into());
    e.insert("SP_HTTP_TIMEOUT".into(), "2s".into());
    let log = scratch("outage-log").join("connector.log");
    let child = spawn(&e, &[], &log);
    wait_until("the first deletes", Duration::from_secs(60), || {
        emu.deletes().len() >= 3
    });
    let deletes_before = emu.deletes().len();
    proxy.set(Mode::Down);
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(emu.violations(), Vec::<String>::new(), "premature deletes");
    proxy.set(Mode::Pass);
    wait_until("catching up", Duration::from_secs(120), || {
        caught_up(&emu, &t, tasks)
    });
    stop(child);
    let v = verify(&emu, &t, &BTreeSet::new());
    let logs = std::fs::read_to_string(&log).unwrap();
    assert!(logs.contains("retrying"), "no retry in the log: {logs}");
    assert!(
        emu.deletes().len() > deletes_before,
        "nothing deleted after the outage"
    );
    tally(&format!(
        "test=storage-outage provider={} faults_injected={} files={} deletes={} files_lost=0 premature_deletes=0",
        p.name(),
        proxy.refused.load(std::sync::atomic::Ordering::SeqCst),
        v.files,
        v.deletes
    ));
}

#[test]
fn storage_outage_s3() {
    storage_outage(Provider::S3);
}

#[test]
fn storage_outage_gcs() {
    storage_outage(Provider::Gcs);
}

#[test]
fn storage_outage_azure() {
    storage_outage(Provider::Azure);
}

/// The storage is unreachable when the service starts (each round begins by reading
/// the journal): the connector waits for it instead of exiting, then syncs everything.
#[test]
fn storage_down_when_the_service_starts_is_waited_out() {
    let Some(t) = target(Provider::Azure, "down-at-start") else {
        return;
    };
    let upstream = endpoint(&t).unwrap();
    let proxy = TcpProxy::start(upstream.trim_start_matches("http://"));
    let tasks = 12;
    let emu = emulator(EmulatorConfig {
        tasks,
        seed: 41,
        recording_size: (2_000, 50_000),
        ..Default::default()
    });
    let mut e = env_for(&emu, &with_endpoint(&t, &proxy.url()));
    e.insert("SP_HTTP_TIMEOUT".into(), "2s".into());
    proxy.set(Mode::Down);
    let log = scratch("down-at-start-log").join("connector.log");
    let mut child = spawn(&e, &[], &log);
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        child.try_wait().unwrap().is_none(),
        "the service gave up while the storage was down: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    proxy.set(Mode::Pass);
    wait_until("catching up", Duration::from_secs(120), || {
        caught_up(&emu, &t, tasks)
    });
    stop(child);
    verify(&emu, &t, &BTreeSet::new());
    let logs = std::fs::read_to_string(&log).unwrap();
    // The first storage request of a start is the journal lease's, then the journal's.
    assert!(
        logs.contains("; retrying in ") && logs.contains(".spinoco-connector/it."),
        "no retry line: {logs}"
    );
}

/// A tmpfs of `size` mounted on a fresh folder (we are root in CI); `None` when
/// mounting is not allowed here.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(name: &str, options: &str) -> Option<Tmpfs> {
        let dir = scratch(name);
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "tmpfs"])
            .arg(&dir)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            // As root (the test script in CI) this must work; elsewhere it is skipped.
            let root = std::process::Command::new("id")
                .arg("-u")
                .output()
                .is_ok_and(|o| o.stdout.starts_with(b"0\n"));
            assert!(!root, "running as root but cannot mount a tmpfs on {dir:?}");
            eprintln!("skipped: cannot mount a tmpfs here (needs root)");
            return None;
        }
        Some(Tmpfs(dir))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

/// Fills the file system holding `dir` to the last byte with one ballast file.
fn fill(dir: &Path) -> PathBuf {
    use std::io::Write;
    let path = dir.join("ballast.bin");
    let mut f = std::fs::File::create(&path).unwrap();
    let block = vec![0u8; 64 * 1024];
    loop {
        if let Err(e) = f.write_all(&block) {
            assert_eq!(e.raw_os_error(), Some(28), "{e}");
            break;
        }
    }
    let mut byte = [0u8; 1];
    while f.write_all(&byte).is_ok() {
        byte[0] = 1;
    }
    path
}

/// Local storage on a full disk: a clear error, nothing partial, nothing deleted that
/// is not stored; it goes on when space comes back.
#[test]
fn local_disk_full_then_space_returns() {
    let Some(fs) = Tmpfs::mount("diskfull", "size=24m") else {
        return;
    };
    let root = fs.0.join("root");
    std::fs::create_dir_all(&root).unwrap();
    let tasks = 30;
    let emu = emulator(EmulatorConfig {
        tasks,
        seed: 5,
        recording_size: (50_000, 400_000),
        latency: Duration::from_millis(5),
        ..Default::default()
    });
    let t = vars(&[("SP_TASK_SYNC_SAVE_TO", root.display().to_string())]);
    guard_via_store(&emu, &t);
    let e = env_for(&emu, &t);
    let log = scratch("diskfull-log").join("connector.log");
    let ballast = fill(&fs.0);
    let child = spawn(&e, &[], &log);
    wait_until("the disk-full error", Duration::from_secs(60), || {
        std::fs::read_to_string(&log).is_ok_and(|l| l.contains("No space left on device"))
    });
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(emu.violations(), Vec::<String>::new(), "premature deletes");
    let deletes_while_full = emu.deletes().len();
    // Whatever is visible is complete.
    let want = expected(&emu);
    for name in files_in(&root) {
        let bytes = emu.content(&want[&name]).unwrap();
        assert_eq!(std::fs::read(root.join(&name)).unwrap(), bytes, "{name}");
    }
    std::fs::remove_file(&ballast).unwrap();
    wait_until("catching up", Duration::from_secs(120), || {
        caught_up(&emu, &t, tasks)
    });
    stop(child);
    let v = verify(&emu, &t, &BTreeSet::new());
    assert!(v.deletes > deletes_while_full);
    tally(&format!(
        "test=disk-full provider=local faults_injected=1 files={} deletes={} files_lost=0 premature_deletes=0",
        v.files, v.deletes
    ));
}

// ---------------------------------------------------------------- storage refuses

/// The storage refuses our credentials: a clear error, nothing deleted, exit 5.
fn storage_refuses(p: Provider) {
    let Some(t) = target(p, "denied") else { return };
    let emu = emulator(EmulatorConfig {
        tasks: 8,
        seed: 3,
        recording_size: (1_000, 20_000),
        ..Default::default()
    });
    let mut bad = t.clone();
    let mut _proxy = None;
    let mut _ro = None;
    match p {
        Provider::S3 => {
            bad.insert(
                "AWS_SECRET_ACCESS_KEY".into(),
                "not-the-secret-key-0123".into(),
            );
        }
        Provider::Azure => {
            let dsn = &t["SP_TASK_SYNC_AZURE_DSN"];
            let key = dsn
                .split(';')
                .find_map(|p| p.strip_prefix("AccountKey="))
                .unwrap();
            let wrong = "d3Jvbmcta2V5LXdyb25nLWtleS13cm9uZy1rZXktd3Jvbmcta2V5LXdyb25nLWtleQ==";
            bad.insert("SP_TASK_SYNC_AZURE_DSN".into(), dsn.replace(key, wrong));
        }
        Provider::Gcs => {
            // fake-gcs-server checks no credentials: a proxy answers 403 for it.
            let proxy = TcpProxy::start(endpoint(&t).unwrap().trim_start_matches("http://"));
            proxy.set(Mode::Forbid);
            bad = with_endpoint(&t, &proxy.url());
            _proxy = Some(proxy);
        }
        Provider::Local => {
            let Some(fs) = Tmpfs::mount("readonly", "size=1m,ro") else {
                return;
            };
            bad.insert("SP_TASK_SYNC_SAVE_TO".into(), fs.0.display().to_string());
            _ro = Some(fs);
        }
    }
    let out = run(&env_for(&emu, &bad), &["--once"]);
    let text = text(&out);
    assert_eq!(out.status.code(), Some(5), "{text}");
    assert!(
        text.contains("the storage refused access") || text.contains("cannot open the storage"),
        "{text}"
    );
    assert!(
        !text.contains("not-the-secret-key"),
        "secret leaked: {text}"
    );
    assert_eq!(
        emu.deletes(),
        Vec::<String>::new(),
        "deleted without storing"
    );
    if p != Provider::Local {
        let stored: Vec<_> = list_objects(&t)
            .into_iter()
            .filter(|n| !n.starts_with(".spinoco-connector/"))
            .collect();
        assert!(stored.is_empty(), "stored despite the refusal: {stored:?}");
    }
    tally(&format!(
        "test=storage-refuses provider={} faults_injected=1 exit=5 files_lost=0 premature_deletes=0",
        p.name()
    ));
}

#[test]
fn storage_refuses_s3_wrong_secret() {
    storage_refuses(Provider::S3);
}

#[test]
fn storage_refuses_azure_wrong_key() {
    storage_refuses(Provider::Azure);
}

#[test]
fn storage_refuses_gcs_403() {
    storage_refuses(Provider::Gcs);
}

#[test]
fn storage_refuses_local_read_only() {
    storage_refuses(Provider::Local);
}

// ---------------------------------------------------------------- round-start proof

/// Remounts a tmpfs read-only or read-write: unlike `chmod`, a read-only mount stops
/// root too.
fn remount(fs: &Tmpfs, mode: &str) {
    let ok = std::process::Command::new("mount")
        .args(["-o", &format!("remount,{mode}")])
        .arg(&fs.0)
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "cannot remount {:?} {mode}", fs.0);
}

/// Issue 12 §1: a storage that opens (its folders exist) but cannot take the journal
/// must not consume the feed. The run exits 5 with zero feed requests, so the
/// platform's cursor has not moved; after the fix a second start stores every task.
#[test]
fn journal_refused_at_round_start_asks_the_feed_nothing_local() {
    let Some(fs) = Tmpfs::mount("journal-ro", "size=16m") else {
        return;
    };
    let root = fs.0.join("root");
    std::fs::create_dir_all(root.join(".spinoco-connector/tmp")).unwrap();
    remount(&fs, "ro");
    let tasks = 8;
    let emu = emulator(EmulatorConfig {
        tasks,
        seed: 4,
        recording_size: (1_000, 20_000),
        ..Default::default()
    });
    let t = vars(&[("SP_TASK_SYNC_SAVE_TO", root.display().to_string())]);
    guard_via_store(&emu, &t);
    let e = env_for(&emu, &t);
    let out = run(&e, &["--once"]);
    let log = text(&out);
    assert_eq!(out.status.code(), Some(5), "{log}");
    assert!(log.contains("the storage refused access"), "{log}");
    assert_eq!(
        feed_requests(&emu),
        0,
        "the feed was asked while the storage refused the journal: {log}"
    );
    assert!(emu.handed_out().is_empty());
    remount(&fs, "rw");
    let out = run(&e, &["--once"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        emu.handed_out().len(),
        tasks,
        "every task came after the fix"
    );
    let v = verify(&emu, &t, &BTreeSet::new());
    tally(&format!(
        "test=journal-refused-at-round-start provider=local faults_injected=1 exit=5 feed_requests_while_refused=0 files={} deletes={} files_lost=0 premature_deletes=0",
        v.files, v.deletes
    ));
}

/// Starts a `--once` run whose storage turns read-only while the first feed request is
/// on its way (the emulator answers after 400 ms): the round-start proof worked, the
/// page arrives, and its journal write is refused. The retry budget is 1 s, so a
/// budgeted write would have given up. Returns the tmpfs, the target, the log and the
/// running child, once the page was handed out.
fn received_page_meets_a_read_only_journal(
    name: &str,
    emu: &Emulator,
) -> (Tmpfs, BTreeMap<String, String>, PathBuf, Child) {
    let fs = Tmpfs::mount(name, "size=16m").expect("needs root for tmpfs mounts");
    let root = fs.0.join("root");
    std::fs::create_dir_all(root.join(".spinoco-connector/tmp")).unwrap();
    let t = vars(&[("SP_TASK_SYNC_SAVE_TO", root.display().to_string())]);
    guard_via_store(emu, &t);
    let mut e = env_for(emu, &t);
    e.insert("SP_TASK_SYNC_RETRY_TIMEOUT".into(), "1s".into());
    let log = scratch(&format!("{name}-log")).join("connector.log");
    let journal = root.join(".spinoco-connector/it.page.json");
    let child = spawn(&e, &["--once"], &log);
    wait_until("the round-start proof", Duration::from_secs(30), || {
        std::fs::read_to_string(&journal).is_ok_and(|j| j.contains("\"round\""))
    });
    remount(&fs, "ro");
    assert!(
        emu.handed_out().is_empty(),
        "the feed answered before the storage turned read-only (the test's timing)"
    );
    wait_until("the page handed out", Duration::from_secs(30), || {
        !emu.handed_out().is_empty()
    });
    // Time for the journal write to be refused.
    std::thread::sleep(Duration::from_millis(300));
    (fs, e, log, child)
}

fn slow_feed(tasks: usize) -> EmulatorConfig {
    EmulatorConfig {
        tasks,
        seed: 6,
        recording_size: (1_000, 20_000),
        latency: Duration::from_millis(400),
        ..Default::default()
    }
}

/// Issue 12 §1: a received page whose journal write fails is kept in memory and the
/// write retried past the `--once` budget until the storage takes it; nothing is lost.
#[test]
fn a_received_page_is_kept_until_the_journal_takes_it_local() {
    let tasks = 6;
    let emu = emulator(slow_feed(tasks));
    let (fs, e, log, mut child) = received_page_meets_a_read_only_journal("received-kept", &emu);
    // Well past the 1 s budget: still waiting, not given up.
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        child.try_wait().unwrap().is_none(),
        "gave up on a received page: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert_eq!(
        emu.handed_out().len(),
        1,
        "the query's page (the query asks for one task) was handed out"
    );
    remount(&fs, "rw");
    let status = child.wait().unwrap();
    let logs = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(status.success(), "{status:?}: {logs}");
    let t = vars(&[("SP_TASK_SYNC_SAVE_TO", e["SP_TASK_SYNC_SAVE_TO"].clone())]);
    let v = verify(&emu, &t, &BTreeSet::new());
    tally(&format!(
        "test=received-page-kept provider=local faults_injected=1 files={} deletes={} files_lost=0 premature_deletes=0",
        v.files, v.deletes
    ));
}

/// Issue 12 §1: a stop request ends the wait for the journal, and the exit code (6)
/// and the error log say which handed-out tasks are at risk.
#[test]
fn a_stop_while_a_received_page_is_unjournaled_exits_6_naming_its_tasks_local() {
    let emu = emulator(slow_feed(4));
    let (fs, _e, log, child) = received_page_meets_a_read_only_journal("received-stopped", &emu);
    signal(child.id(), "TERM");
    let mut child = child;
    let status = child.wait().unwrap();
    let logs = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(status.code(), Some(6), "{logs}");
    for task in emu.handed_out() {
        let id = task["taskId"].as_str().unwrap();
        assert!(
            logs.lines().any(|l| l.contains("ERROR") && l.contains(id)),
            "task {id} not named at error level: {logs}"
        );
    }
    assert!(emu.deletes().is_empty(), "deleted without storing");
    drop(fs);
    tally("test=received-page-stopped provider=local faults_injected=1 exit=6 premature_deletes=0");
}

// ---------------------------------------------------------------- kill -9

/// A small deterministic generator for the kill instants.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// Part, block and chunk sizes lowered so that recordings go up in pieces, and
/// recording sizes that cross them.
fn piecewise(p: Provider, t: &mut BTreeMap<String, String>) -> (u64, u64) {
    match p {
        Provider::S3 => {
            t.insert("SP_TASK_SYNC_S3_MULTIPART_THRESHOLD".into(), "5MiB".into());
            t.insert("SP_TASK_SYNC_S3_PART_SIZE".into(), "5MiB".into());
            (1_000, 12_000_000)
        }
        Provider::Gcs => {
            t.insert("SP_TASK_SYNC_GCS_CHUNK_SIZE".into(), "256K".into());
            (1_000, 1_500_000)
        }
        Provider::Azure => {
            t.insert("SP_TASK_SYNC_AZURE_BLOCK_SIZE".into(), "64K".into());
            (1_000, 1_000_000)
        }
        Provider::Local => (1_000, 2_000_000),
    }
}

/// `kill -9` at seeded random instants (`SPINOCO_KILL_SEED` repeats a run), restart
/// each time, then a last `--once`: the same names and bytes as an uninterrupted run.
fn kill_9_at_random_instants(p: Provider) {
    // Killed uploads stay open on S3: on a server of the test's own, they are counted
    // as this test's alone.
    let private = match p {
        Provider::S3 => match PrivateS3::start("kill9") {
            Some(s3) => Some(s3),
            None => return,
        },
        _ => None,
    };
    let Some(mut t) = private
        .as_ref()
        .map(|s3| s3.target("kill9"))
        .or_else(|| target(p, "kill9"))
    else {
        return;
    };
    let seed: u64 = std::env::var("SPINOCO_KILL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!(
        "kill -9 test on {}: seed {seed} (SPINOCO_KILL_SEED={seed} repeats it)",
        p.name()
    );
    let mut rng = Rng(seed | 1);
    let kills = if long() { 40 } else { 10 };
    let page_size = 4usize;
    let sizes = piecewise(p, &mut t);
    let emu = emulator(EmulatorConfig {
        tasks: if long() { 40 } else { 16 },
        seed: seed % 1000,
        recording_size: sizes,
        latency: Duration::from_millis(30),
        redeliver: 0.1,
        ..Default::default()
    });
    guard_via_store(&emu, &t);
    let mut e = env_for(&emu, &t);
    e.insert("SP_TASK_SYNC_PAGE_SIZE".into(), page_size.to_string());
    e.insert("SP_TASK_SYNC_CONCURRENCY".into(), "3".into());
    let log = scratch("kill9-log").join("connector.log");
    // Tasks that may be lost in the contract's window: those of the last page handed
    // out before each kill (the first page of a round, if not yet journaled).
    let mut tolerated = BTreeSet::new();
    // Pages the journal held at each kill (read straight from the server).
    let store = open_store(&t);
    let pages_journaled = || {
        store
            .get(".spinoco-connector/it.page.json")
            .ok()
            .flatten()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|j| j["pages"].as_array().map(Vec::len))
            .unwrap_or(0)
    };
    let mut pages_at_kills = Vec::new();
    for kill in 0..kills {
        let before = emu.handed_out().len();
        let mut child = spawn(&e, &[], &log);
        // Somewhere in the work on a page: from the instant it was handed out (the
        // journal write) to well into its uploads.
        wait_until("a page handed out", Duration::from_secs(60), || {
            emu.handed_out().len() > before
        });
        if kill % 2 == 1 {
            // Every other kill once several pages are in work at once (the window).
            let start = Instant::now();
            while pages_journaled() < 2 && start.elapsed() < Duration::from_secs(5) {
                std::thread::sleep(Duration::from_millis(5));
            }
            std::thread::sleep(Duration::from_millis(rng.below(100)));
        } else {
            std::thread::sleep(Duration::from_millis(rng.below(400)));
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        pages_at_kills.push(pages_journaled());
        let handed = emu.handed_out();
        for task in &handed[handed.len().saturating_sub(page_size)..] {
            tolerated.insert(task["taskId"].as_str().unwrap_or("").to_string());
        }
        // New work keeps arriving, so that every kill finds some.
        emu.add_tasks(3);
    }
    let several = pages_at_kills.iter().filter(|&&n| n >= 2).count();
    assert!(
        several > 0,
        "seed {seed}: no kill found several pages journaled ({pages_at_kills:?})"
    );
    let out = run(&e, &["--once"]);
    // A kill while the query's answer was on its way leaves the query marked in the
    // journal: the next start reports the gap (at most one task) and --once exits 1,
    // with nothing else failed.
    let gap_only = text(&out).contains("was never journaled")
        && text(&out).contains(" 0 transfer(s) or delete(s) failed")
        && text(&out).contains(" 0 task(s) or file(s) rejected");
    assert!(
        out.status.success() || (out.status.code() == Some(1) && gap_only),
        "seed {seed}: {}",
        text(&out)
    );
    let v = verify(&emu, &t, &tolerated);
    let logs = std::fs::read_to_string(&log).unwrap_or_default();
    let gaps = (logs.clone() + &text(&out))
        .matches("at most one task")
        .count();
    let resumed = logs.matches("finishing the journaled page").count()
        + text(&out).matches("finishing the journaled page").count();
    assert!(
        resumed >= 3,
        "seed {seed}: only {resumed} restarts found a journaled page: the kills missed the work"
    );
    // A killed process cannot abort its multipart uploads: they stay invisible and
    // are the bucket lifecycle rule's job (README).
    let abandoned = private.as_ref().map_or(0, |s3| {
        s3.open_uploads()
            .iter()
            .filter(|n| n.ends_with(".json"))
            .count()
    });
    if v.window_lost > 0 {
        eprintln!(
            "seed {seed}: {} file(s) lost in the first-page window (the contract's known limit)",
            v.window_lost
        );
    }
    tally(&format!(
        "test=kill-9 provider={} seed={seed} crashes={kills} kills_with_several_pages_journaled={several} resumed_journaled_pages={resumed} files={} deletes={} files_lost=0 window_lost={} query_gaps_reported={gaps} abandoned_invisible_uploads={abandoned} premature_deletes=0",
        p.name(),
        v.files,
        v.deletes,
        v.window_lost
    ));
}

#[test]
fn kill_9_local() {
    kill_9_at_random_instants(Provider::Local);
}

#[test]
fn kill_9_s3_during_multipart_uploads() {
    kill_9_at_random_instants(Provider::S3);
}

#[test]
fn kill_9_gcs_during_resumable_uploads() {
    kill_9_at_random_instants(Provider::Gcs);
}

#[test]
fn kill_9_azure_during_block_uploads() {
    kill_9_at_random_instants(Provider::Azure);
}

// ---------------------------------------------------------------- SIGTERM

/// SIGTERM while large recordings go up in parts: exit 0 within 10 s, nothing
/// partial visible, and the next run finishes the job.
fn sigterm_during_large_upload(p: Provider) {
    let Some(t) = target(p, "sigterm") else {
        return;
    };
    let emu = emulator(EmulatorConfig {
        tasks: 3,
        seed: 8,
        recording_size: (20_000_000, 30_000_000),
        latency: Duration::from_millis(5),
        ..Default::default()
    });
    guard_via_store(&emu, &t);
    let e = env_for(&emu, &t);
    let log = scratch("sigterm-log").join("connector.log");
    let mut child = spawn(&e, &[], &log);
    wait_until("a recording download", Duration::from_secs(60), || {
        !emu.handed_out().is_empty()
    });
    std::thread::sleep(Duration::from_millis(700));
    let sent = Instant::now();
    signal(child.id(), "TERM");
    let status = child.wait().unwrap();
    let took = sent.elapsed();
    assert!(status.success(), "exit status {status:?}");
    assert!(took < Duration::from_secs(10), "took {took:?} to stop");
    let want = expected(&emu);
    let store = open_store(&t);
    for name in list_objects(&t) {
        if name.starts_with(".spinoco-connector/") {
            assert!(name.ends_with(".page.json"), "left behind: {name}");
            continue;
        }
        let bytes = emu.content(&want[&name]).unwrap();
        assert!(
            store.get(&name).unwrap().unwrap() == bytes,
            "{name} is partial"
        );
    }
    let out = run(&e, &["--once"]);
    assert!(out.status.success(), "{}", text(&out));
    let v = verify(&emu, &t, &BTreeSet::new());
    tally(&format!(
        "test=sigterm provider={} stop_secs={:.1} files={} files_lost=0 premature_deletes=0",
        p.name(),
        took.as_secs_f64(),
        v.files
    ));
}

#[test]
fn sigterm_during_s3_multipart_upload() {
    sigterm_during_large_upload(Provider::S3);
}

#[test]
fn sigterm_during_gcs_resumable_upload() {
    sigterm_during_large_upload(Provider::Gcs);
}

#[test]
fn sigterm_during_azure_block_upload() {
    sigterm_during_large_upload(Provider::Azure);
}

// ---------------------------------------------------------------- hostile input

fn http(status: &str, headers: &str, body: &[u8]) -> Vec<u8> {
    let mut v = format!("HTTP/1.1 {status}\r\n{headers}\r\n").into_bytes();
    v.extend_from_slice(body);
    v
}

fn with_length(status: &str, body: &[u8]) -> Vec<u8> {
    http(
        status,
        &format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ),
        body,
    )
}

/// Broken and hostile feed answers, one per feed request of a run (each page a new
/// request): malformed, truncated, enormous, wrong types, missing fields, lying
/// Content-Length both ways, a server that never answers. Each is retried with a
/// clear log line and the run ends with everything stored.
#[test]
fn hostile_feed_answers_are_retried_and_lose_nothing() {
    let mut enormous = b"{\"result\":[".to_vec();
    enormous.resize(17 * 1024 * 1024, b' ');
    enormous.extend_from_slice(b"]}");
    let answers: Vec<(&str, RawReply)> = vec![
        (
            "malformed JSON",
            raw(with_length("200 OK", b"{\"result\": [{,]")),
        ),
        (
            "not JSON at all",
            raw(http(
                "200 OK",
                "Content-Type: text/html\r\nContent-Length: 15\r\n",
                b"<html>hi</html>",
            )),
        ),
        (
            "truncated (Content-Length longer than the body)",
            raw(http(
                "200 OK",
                "Content-Length: 400\r\n",
                b"{\"result\":[{\"taskId\":\"x\"",
            )),
        ),
        (
            "Content-Length shorter than the body",
            raw(http("200 OK", "Content-Length: 9\r\n", b"{\"result\":[]}")),
        ),
        ("enormous", raw(with_length("200 OK", &enormous))),
        (
            "wrong type of result",
            raw(with_length("200 OK", b"{\"result\":\"tasks\"}")),
        ),
        (
            "wrong type of next",
            raw(with_length("200 OK", b"{\"result\":[],\"next\":42}")),
        ),
        ("missing result", raw(with_length("200 OK", b"{}"))),
        (
            "broken chunked encoding",
            raw(http(
                "200 OK",
                "Transfer-Encoding: chunked\r\n",
                b"zz\r\n{}\r\n0\r\n\r\n",
            )),
        ),
        (
            "a server that never answers",
            RawReply {
                bytes: Vec::new(),
                silence: Duration::from_secs(4),
            },
        ),
        (
            "headers and then silence",
            RawReply {
                bytes: http("200 OK", "Content-Length: 100\r\n", b"{\"res"),
                silence: Duration::from_secs(4),
            },
        ),
        (
            "an error status with a garbage body",
            raw(http("503 Oops", "Content-Length: 3\r\n", b"\x00\xff\x01")),
        ),
    ];
    let tasks = 30;
    let emu = emulator(EmulatorConfig {
        tasks,
        seed: 77,
        recording_size: (1_000, 20_000),
        ..Default::default()
    });
    let dir = scratch("hostile-feed");
    guard_deletes(&emu, &dir);
    let mut e = env(&emu, &dir);
    e.insert("SP_TASK_SYNC_PAGE_SIZE".into(), "2".into());
    e.insert("SP_HTTP_TIMEOUT".into(), "1s".into());
    // An operation's first back-off is a warning, the ones after it debug lines.
    e.insert("SP_LOG_LEVEL".into(), "debug".into());
    let n = answers.len();
    // Service mode: after the backlog it keeps polling, so every answer meets a feed
    // request whatever the timing; each is queued once the previous one was served,
    // so at most two come in a row and every retry is short.
    let log = dir.with_extension("log");
    let child = spawn(&e, &[], &log);
    for (_, answer) in answers {
        emu.queue_feed_response(answer);
        wait_until(
            "the hostile answer served",
            Duration::from_secs(120),
            || emu.raw_responses_left() == 0,
        );
    }
    let journal = dir.join(".spinoco-connector/it.page.json");
    wait_until("catching up", Duration::from_secs(120), || {
        emu.handed_out().len() >= tasks
            && files_in(&dir).len() >= expected(&emu).len()
            && !journal.exists()
    });
    stop(child);
    let t = std::fs::read_to_string(&log).unwrap();
    let retries = t
        .lines()
        .filter(|l| l.contains("] the sync feed") && l.contains("retrying in"))
        .count();
    assert!(
        retries >= n,
        "{retries} feed retries for {n} hostile answers: {t}"
    );
    assert!(
        t.contains("not the expected JSON"),
        "no clear line for bad JSON: {t}"
    );
    let files = verify_complete(&emu, &dir);
    tally(&format!(
        "test=hostile-feed provider=local hostile_inputs={n} files={files} files_lost=0 premature_deletes=0"
    ));
}

fn raw(bytes: Vec<u8>) -> RawReply {
    RawReply {
        bytes,
        silence: Duration::ZERO,
    }
}

/// Broken downloads (short, lying, stalled, garbage chunks) are retried and the
/// stored file has the platform's bytes.
#[test]
fn hostile_download_answers_are_retried() {
    let emu = emulator(EmulatorConfig {
        tasks: 3,
        seed: 78,
        recording_size: (1_000, 20_000),
        ..Default::default()
    });
    let dir = scratch("hostile-dl");
    guard_deletes(&emu, &dir);
    let body = crate::common::behaviour::PatternReader::bytes(100_000, 9);
    let path = "/recording-direct/hostile-dl/r1";
    emu.inject_task(
        serde_json::json!({
            "taskId": "b808d74e-84b2-11ef-b864-0242ac120009",
            "get": [{"dataType": "Recordings", "recordingId": "r1", "path": path, "fileName": "x.ogg"}],
            "delete": [{"path": "/recording/hostile-dl/r1"}]
        }),
        vec![(path.into(), body.clone())],
    );
    let answers = vec![
        raw(http(
            "200 OK",
            "Content-Length: 100000\r\n",
            &body[..40_000],
        )),
        RawReply {
            bytes: http("200 OK", "Content-Length: 100000\r\n", &body[..10]),
            silence: Duration::from_secs(3),
        },
        raw(http(
            "200 OK",
            "Transfer-Encoding: chunked\r\n",
            b"10\r\nshort\r\nXYZ\r\n",
        )),
        raw(http("500 Internal", "Content-Length: 0\r\n", b"")),
        RawReply {
            bytes: Vec::new(),
            silence: Duration::from_secs(3),
        },
    ];
    let n = answers.len();
    for a in answers {
        emu.queue_download_response(path, a);
    }
    let mut e = env(&emu, &dir);
    e.insert("SP_HTTP_TIMEOUT".into(), "1s".into());
    // An operation's first back-off is a warning, the ones after it debug lines.
    e.insert("SP_LOG_LEVEL".into(), "debug".into());
    let out = run(&e, &["--once"]);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert_eq!(emu.raw_responses_left(), 0);
    let retried = t
        .lines()
        .filter(|l| l.contains("hostile-dl/r1") && l.contains("retrying"))
        .count();
    assert!(
        retried >= n,
        "{retried} retries for {n} broken answers: {t}"
    );
    verify_complete(&emu, &dir);
    assert_eq!(std::fs::read(dir.join("x.ogg")).unwrap(), body);
    tally(&format!(
        "test=hostile-downloads provider=local hostile_inputs={n} files_lost=0 premature_deletes=0"
    ));
}

/// Hostile names and values: each task refused with a clear error naming it,
/// nothing written outside the root, the good tasks stored, the process alive.
#[test]
fn hostile_names_and_values_never_leave_the_root() {
    let emu = emulator(EmulatorConfig {
        tasks: 5,
        seed: 79,
        recording_size: (1_000, 10_000),
        ..Default::default()
    });
    let outer = scratch("hostile-names");
    let dir = outer.join("root");
    let long = "a".repeat(2000) + ".ogg";
    let bad_names: Vec<String> = vec![
        "../escape.ogg".into(),
        "/tmp/spinoco-rel-abs.ogg".into(),
        "a\\..\\..\\b.ogg".into(),
        "nul\0byte.ogg".into(),
        "bell\u{7}.ogg".into(),
        "new\nline.ogg".into(),
        "x/../../y.ogg".into(),
        "./dot.ogg".into(),
        "a//b.ogg".into(),
        long,
        ".spinoco-connector/it.page.json".into(),
        String::new(),
    ];
    for (i, name) in bad_names.iter().enumerate() {
        let path = format!("/task/hostile-name-{i}/meta");
        emu.inject_task(
            serde_json::json!({"taskId": format!("hostile-name-{i}"), "get": [{"path": path, "fileName": name}],
                               "delete": [{"path": format!("/recording/hostile-name-{i}/r")}]}),
            vec![(path.clone(), b"evil".to_vec())],
        );
    }
    // Hostile values in template variables: made path-safe, stored inside the root.
    let values = [
        "../../../../tmp/spinoco-rel-value",
        "/etc/passwd",
        "..\\..\\x",
        "a\0b\u{1b}[31m",
        "\u{202e}gnp.exe\u{301}😀",
    ];
    for (i, v) in values.iter().enumerate() {
        let path = format!("/task/hostile-value-{i}/meta");
        emu.inject_task(
            serde_json::json!({"taskId": v, "dueDate": 1101902400000i64 + i as i64,
                               "get": [{"dataType": "CallMetadata", "path": path, "fileName": "ignored.meta.json"}],
                               "delete": []}),
            vec![(path.clone(), format!("value {i}").into_bytes())],
        );
    }
    // Odd but harmless Unicode in a platform file name (older platforms).
    let path = "/task/odd-unicode/meta";
    emu.inject_task(
        serde_json::json!({"taskId": "odd-unicode", "get": [{"path": path, "fileName": "ünï/çødé 😀 (1).meta.json"}], "delete": []}),
        vec![(path.into(), b"odd".to_vec())],
    );
    // Wrong types and missing fields in tasks.
    let malformed = [
        serde_json::json!({"taskId": 42, "get": "odd"}),
        serde_json::json!({"get": []}),
        serde_json::json!({"taskId": "t", "get": [{"path": 5, "fileName": ["x"]}]}),
        serde_json::json!([1, 2, 3]),
        serde_json::json!(null),
    ];
    for m in &malformed {
        emu.inject_task(m.clone(), vec![]);
    }
    let out = run(&env(&emu, &dir), &["--once"]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    let refusals = t.matches("unsafe file name").count() + t.matches("malformed task").count();
    assert!(
        refusals >= bad_names.len() + malformed.len() - 1,
        "{refusals} refusals for {} bad tasks: {t}",
        bad_names.len() + malformed.len()
    );
    let stray: Vec<_> = std::fs::read_dir(&outer)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(stray, vec![std::ffi::OsString::from("root")]);
    assert!(!Path::new("/tmp/spinoco-rel-abs.ogg").exists());
    assert!(!Path::new("/tmp/spinoco-rel-value").exists());
    assert!(
        emu.deletes().iter().all(|d| !d.contains("hostile-name")),
        "a refused task's delete was sent"
    );
    // Every generated task and every hostile value was stored, inside the root.
    let stored = files_in(&dir);
    for task in emu.handed_out() {
        let id = task["taskId"].as_str().unwrap_or("");
        if id.starts_with("hostile-name") || task["taskId"].as_str().is_none() {
            continue;
        }
        let gets = task["get"].as_array().cloned().unwrap_or_default();
        if id == "odd-unicode" {
            assert!(
                stored.contains("ünï/çødé 😀 (1).meta.json"),
                "odd unicode name not stored: {stored:?}"
            );
        } else if !gets.is_empty() && gets[0]["fileName"] == "ignored.meta.json" {
            continue;
        } else if !id.is_empty() && id != "t" {
            for g in gets {
                let name = g["fileName"].as_str().unwrap();
                assert!(stored.contains(name), "{name} not stored");
            }
        }
    }
    let value_files = stored
        .iter()
        .filter(|f| std::fs::read(dir.join(f)).is_ok_and(|b| b.starts_with(b"value ")))
        .count();
    assert_eq!(
        value_files,
        values.len(),
        "hostile values not all stored: {stored:?}"
    );
    tally(&format!(
        "test=hostile-names provider=local hostile_inputs={} files_outside_root=0 premature_deletes=0",
        bad_names.len() + values.len() + malformed.len() + 1
    ));
}

// ---------------------------------------------------------------- soak

fn proc_status(pid: u32, field: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// The soak run (not in CI): live task arrival with platform faults on, for
/// `SPINOCO_SOAK_SECS` (default 1800) into `SPINOCO_SOAK_PROVIDER` (default local).
/// Prints files, bytes, peak RSS, open descriptors and threads at start and end.
/// `SPINOCO_SOAK_SECS=1800 tests/run.sh --test reliability soak -- --ignored --nocapture`
#[test]
#[ignore]
fn soak() {
    let secs: u64 = std::env::var("SPINOCO_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1800);
    let p = match std::env::var("SPINOCO_SOAK_PROVIDER").as_deref() {
        Ok("s3") => Provider::S3,
        Ok("gcs") => Provider::Gcs,
        Ok("azure") => Provider::Azure,
        _ => Provider::Local,
    };
    let Some(t) = target(p, "soak") else { return };
    let emu = emulator(EmulatorConfig {
        tasks: 20,
        seed: 99,
        recording_size: (2_000, 400_000),
        redeliver: 0.05,
        chunked: 0.2,
        faults: Faults {
            server_error: 0.05,
            too_many: 0.02,
            retry_after_secs: 1,
            drop_body: 0.02,
            stall_body: 0.01,
            stall_for: Duration::from_secs(3),
            spike: 0.05,
            spike_latency: Duration::from_millis(200),
        },
        ..Default::default()
    });
    guard_via_store(&emu, &t);
    let mut e = env_for(&emu, &t);
    e.insert("SP_HTTP_TIMEOUT".into(), "1s".into());
    e.insert("SP_LOG_LEVEL".into(), "warn".into());
    let log = scratch("soak-log").join("connector.log");
    let child = spawn(&e, &[], &log);
    let pid = child.id();
    let sample = |label: &str| {
        let (rss, hwm, threads, fds) = (
            proc_status(pid, "VmRSS:"),
            proc_status(pid, "VmHWM:"),
            proc_status(pid, "Threads:"),
            open_fds(pid),
        );
        eprintln!(
            "SOAK {label}: handed out {} tasks, {} deletes, RSS {} kB (peak {} kB), {} threads, {} open fds",
            emu.handed_out().len(),
            emu.deletes().len(),
            rss,
            hwm,
            threads,
            fds
        );
        (hwm, threads, fds)
    };
    std::thread::sleep(Duration::from_secs(5));
    let start = sample("start");
    let began = Instant::now();
    let mut added = 20;
    let mut max_threads = start.1;
    let mut max_fds = start.2;
    while began.elapsed() < Duration::from_secs(secs) {
        std::thread::sleep(Duration::from_secs(2));
        emu.add_tasks(3);
        added += 3;
        max_threads = max_threads.max(proc_status(pid, "Threads:"));
        max_fds = max_fds.max(open_fds(pid));
        if began.elapsed().as_secs() % 60 < 2 {
            sample("progress");
        }
    }
    wait_until("catching up", Duration::from_secs(300), || {
        caught_up(&emu, &t, added)
    });
    let end = sample("end");
    stop(child);
    let v = verify(&emu, &t, &BTreeSet::new());
    let bytes: u64 = expected(&emu)
        .values()
        .map(|p| emu.content(p).map_or(0, |b| b.len() as u64))
        .sum();
    tally(&format!(
        "test=soak provider={} secs={secs} files={} bytes={bytes} deletes={} faults_injected={} peak_rss_kb_start={} peak_rss_kb_end={} threads_start={} threads_end={} threads_max={max_threads} fds_start={} fds_end={} fds_max={max_fds} files_lost=0 premature_deletes=0",
        p.name(), v.files, v.deletes, injected_faults(&emu), start.0, end.0, start.1, end.1, start.2, end.2
    ));
    assert!(end.1 <= start.1 + 8, "threads grew: {start:?} → {end:?}");
    assert!(
        end.2 <= start.2 + 16,
        "open files grew: {start:?} → {end:?}"
    );
    let _ = unique("soak");
}

/// How a cloud storage cannot take the journal at a first start.
enum Broken {
    /// A name with a typo in `var`: the `kind` (bucket, container) does not exist.
    Typo {
        var: &'static str,
        kind: &'static str,
    },
    /// A credential that may read but not write (the test's proxy refuses writes).
    ReadOnly,
}

/// A first start with a cloud storage that cannot take the journal (a bucket name with
/// a typo, a container that does not exist, a read-only credential): exit 5 saying so,
/// and the feed is asked nothing, so the platform's cursor has not moved; a second
/// start after the fix stores every task.
fn journal_refused_at_round_start_cloud(p: Provider, broken: Broken) {
    let Some(t) = target(p, "journal-refused") else {
        return;
    };
    let tasks = 8;
    let emu = emulator(EmulatorConfig {
        tasks,
        seed: 5,
        recording_size: (1_000, 20_000),
        ..Default::default()
    });
    guard_via_store(&emu, &t);
    let proxy = TcpProxy::start_inspecting(endpoint(&t).unwrap().trim_start_matches("http://"));
    let (bad, said) = match broken {
        Broken::Typo { var, kind } => {
            let typo = format!("{}-typo", &t[var]);
            let said = format!("{var}={typo:?}: the {kind} does not exist");
            let mut bad = t.clone();
            bad.insert(var.into(), typo);
            (bad, said)
        }
        Broken::ReadOnly => {
            proxy.set(Mode::ForbidPut);
            (
                with_endpoint(&t, &proxy.url()),
                "the storage refused access".into(),
            )
        }
    };
    let out = run(&env_for(&emu, &bad), &["--once"]);
    let log = text(&out);
    assert_eq!(out.status.code(), Some(5), "{log}");
    assert!(log.contains(&said), "{said:?} not in {log}");
    assert_eq!(feed_requests(&emu), 0, "the feed was asked: {log}");
    assert!(emu.handed_out().is_empty());
    let out = run(&env_for(&emu, &t), &["--once"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        emu.handed_out().len(),
        tasks,
        "every task came after the fix"
    );
    let v = verify(&emu, &t, &BTreeSet::new());
    tally(&format!(
        "test=journal-refused-at-round-start provider={} faults_injected=1 exit=5 feed_requests_while_refused=0 files={} deletes={} files_lost=0 premature_deletes=0",
        p.name(),
        v.files,
        v.deletes
    ));
}

#[test]
fn journal_refused_at_round_start_asks_the_feed_nothing_s3_read_only_credential() {
    journal_refused_at_round_start_cloud(Provider::S3, Broken::ReadOnly);
}

#[test]
fn journal_refused_at_round_start_asks_the_feed_nothing_gcs_missing_bucket() {
    journal_refused_at_round_start_cloud(
        Provider::Gcs,
        Broken::Typo {
            var: "SP_TASK_SYNC_GCS_BUCKET",
            kind: "bucket",
        },
    );
}

#[test]
fn journal_refused_at_round_start_asks_the_feed_nothing_azure_missing_container() {
    journal_refused_at_round_start_cloud(
        Provider::Azure,
        Broken::Typo {
            var: "SP_TASK_SYNC_AZURE_CLIENT_NAME",
            kind: "container",
        },
    );
}

/// The storage stops taking writes while a service waits between rounds (a credential
/// rotated to read-only, a mount gone read-only), after it took the journal lease: the
/// next round's proof fails (exit 5) before the feed is asked again, so the tasks added
/// meanwhile stay with the platform; a restart after the fix stores them. This is the
/// test that fails when the proof is moved after the first feed request of a round
/// (at the first start, the journal lease already refuses such a storage).
#[test]
fn storage_refusing_writes_between_rounds_stops_before_the_feed_is_asked() {
    let Some(fs) = Tmpfs::mount("journal-later-ro", "size=32m") else {
        return;
    };
    let root = fs.0.join("root");
    let tasks = 6;
    let emu = emulator(EmulatorConfig {
        tasks,
        seed: 6,
        recording_size: (1_000, 20_000),
        ..Default::default()
    });
    let t = vars(&[("SP_TASK_SYNC_SAVE_TO", root.display().to_string())]);
    guard_via_store(&emu, &t);
    let mut e = env_for(&emu, &t);
    e.insert("SP_TASK_SYNC_POLL_INTERVAL".into(), "3s".into());
    e.insert("SP_LOG_LEVEL".into(), "debug".into());
    let log = scratch("journal-later-ro-log").join("connector.log");
    let mut child = spawn(&e, &[], &log);
    let idle = || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .matches("feed drained; next round in")
            .count()
    };
    wait_until("the first round done", Duration::from_secs(60), || {
        idle() >= 1
    });
    remount(&fs, "ro");
    let asked_before = feed_requests(&emu);
    let later = "b808d74e-84b2-11ef-b864-0242ac120009";
    let meta = format!("/task/{later}/meta");
    emu.inject_task(
        serde_json::json!({"taskId": later,
            "get": [{"dataType": "CallMetadata", "path": meta, "fileName": "x.meta.json"}], "delete": []}),
        vec![(meta.clone(), b"{}".to_vec())],
    );
    let status = child.wait().unwrap();
    let said = std::fs::read_to_string(&log).unwrap();
    assert_eq!(status.code(), Some(5), "{said}");
    assert!(said.contains("the storage refused access"), "{said}");
    assert_eq!(
        feed_requests(&emu),
        asked_before,
        "the feed was asked while the storage refused the journal: {said}"
    );
    remount(&fs, "rw");
    let out = run(&e, &["--once"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        emu.handed_out().len(),
        tasks + 1,
        "the later task came after the fix"
    );
    verify(&emu, &t, &BTreeSet::new());
}
