//! A page the feed handed out whose journal write is refused (the storage turned
//! read-only while the request was on its way): kept in memory and written once the
//! storage takes it, or, when the connector is stopped, named at error level with
//! exit 6.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Child;
use std::time::Duration;

use crate::common::harness::*;
use crate::common::providers::*;
use crate::common::tmpfs::Tmpfs;
use spinoco_connector::{Emulator, EmulatorConfig};

use super::env_for;

/// Starts a `--once` run whose storage turns read-only while the first feed request is
/// on its way (the emulator answers after 400 ms): the round-start proof worked, the
/// page arrives, and its journal write is refused. The retry budget is 1 s, so a
/// budgeted write would have given up. Returns once the page was handed out (`None`:
/// skipped, no tmpfs here).
fn received_page_meets_a_read_only_journal(name: &str, emu: &Emulator) -> Option<ReceivedPage> {
    let fs = Tmpfs::mount(name, "size=16m")?;
    let root = fs.path().join("root");
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
    fs.remount("ro");
    assert!(
        emu.handed_out().is_empty(),
        "the feed answered before the storage turned read-only (the test's timing)"
    );
    wait_until("the page handed out", Duration::from_secs(30), || {
        !emu.handed_out().is_empty()
    });
    // Time for the journal write to be refused.
    std::thread::sleep(Duration::from_millis(300));
    Some(ReceivedPage {
        fs,
        root,
        log,
        child,
    })
}

/// A `--once` run whose received page meets a read-only journal.
struct ReceivedPage {
    /// The tmpfs under the storage, read-only now.
    fs: Tmpfs,
    /// The storage's root on it.
    root: PathBuf,
    log: PathBuf,
    child: Child,
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

/// A received page whose journal write fails is kept in memory and the
/// write retried past the `--once` budget until the storage takes it; nothing is lost.
#[test]
fn a_received_page_is_kept_until_the_journal_takes_it_local() {
    let tasks = 6;
    let emu = emulator(slow_feed(tasks));
    let Some(ReceivedPage {
        fs,
        root,
        log,
        mut child,
    }) = received_page_meets_a_read_only_journal("received-kept", &emu)
    else {
        return;
    };
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
    fs.remount("rw");
    let status = child.wait().unwrap();
    let logs = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(status.success(), "{status:?}: {logs}");
    let t = vars(&[("SP_TASK_SYNC_SAVE_TO", root.display().to_string())]);
    let v = verify(&emu, &t, &BTreeSet::new());
    tally(&format!(
        "test=received-page-kept provider=local faults_injected=1 files={} deletes={} files_lost=0 premature_deletes=0",
        v.files, v.deletes
    ));
}

/// A stop request ends the wait for the journal, and the exit code (6)
/// and the error log say which handed-out tasks are at risk.
#[test]
fn a_stop_while_a_received_page_is_unjournaled_exits_6_naming_its_tasks_local() {
    let emu = emulator(slow_feed(4));
    let Some(ReceivedPage {
        fs, log, mut child, ..
    }) = received_page_meets_a_read_only_journal("received-stopped", &emu)
    else {
        return;
    };
    signal(child.id(), "TERM");
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
