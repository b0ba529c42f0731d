//! One connector per journal, on every back-end: two connectors started at once on one
//! tag take turns (exactly one works, the other waits, then finishes everything once
//! the first stopped); a `--once` run next to a working connector exits with a clear
//! message; a killed owner on this host is taken over at once; `check --connect` shows
//! the owner.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Child;
use std::time::Duration;

use crate::common::harness::*;
use crate::common::providers::*;
use spinoco_connector::{Emulator, EmulatorConfig};

fn env_for(emu: &Emulator, t: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    let mut e = env(emu, &scratch("unused"));
    e.extend(t.clone());
    e.insert("SP_TASK_SYNC_LEASE_TTL".into(), "4s".into());
    e.insert("SP_TASK_SYNC_PAGE_SIZE".into(), "5".into());
    e
}

fn log_of(path: &std::path::Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn slow_account(tasks: usize) -> Emulator {
    emulator(EmulatorConfig {
        tasks,
        seed: 17,
        recording_size: (2_000, 60_000),
        latency: Duration::from_millis(15),
        ..Default::default()
    })
}

/// Everything handed out is stored and deleted, and no page is journaled.
fn all_stored(emu: &Emulator, t: &BTreeMap<String, String>, tasks: usize) -> bool {
    let listed = list_objects(t);
    emu.handed_out().len() >= tasks
        && expected(emu).keys().all(|n| listed.contains(n))
        && emu.deletes().len() >= recording_deletes(emu).len()
        && !listed.iter().any(|n| n.ends_with(".page.json"))
}

fn take_turns(p: Provider) {
    let Some(t) = target(p, "lease-turns") else {
        return;
    };
    let tasks = 30;
    let emu = slow_account(tasks);
    guard_via_store(&emu, &t);
    let e = env_for(&emu, &t);
    let dir = scratch(&format!("lease-logs-{}", p.name()));
    let logs = [dir.join("a.log"), dir.join("b.log")];
    let mut children: Vec<Option<Child>> = logs.iter().map(|l| Some(spawn(&e, &[], l))).collect();
    // Exactly one takes the lease; the other says who holds it and waits.
    let mut holder = None;
    wait_until(
        "one connector holding the lease",
        Duration::from_secs(30),
        || {
            holder = (0..2).find(|&i| log_of(&logs[i]).contains("holding the journal lease"));
            holder.is_some()
        },
    );
    let (first, second) = match holder.unwrap() {
        0 => (0, 1),
        _ => (1, 0),
    };
    wait_until("the second one waiting", Duration::from_secs(30), || {
        log_of(&logs[second]).contains("another connector works on tag")
    });
    wait_until("the first deletes", Duration::from_secs(60), || {
        emu.deletes().len() >= 2
    });
    let waiting = log_of(&logs[second]);
    assert!(
        !waiting.contains("holding the journal lease") && !waiting.contains("syncing tag"),
        "the second connector worked beside the first:\n{waiting}"
    );
    assert!(waiting.contains("(pid "), "the owner is named: {waiting}");
    stop(children[first].take().unwrap());
    wait_until("the second one finishing", Duration::from_secs(120), || {
        all_stored(&emu, &t, tasks)
    });
    stop(children[second].take().unwrap());
    let took = log_of(&logs[second]);
    assert!(took.contains("holding the journal lease"), "{took}");
    assert!(
        !took.contains("taking over"),
        "a released lease needs no take-over: {took}"
    );
    let v = verify(&emu, &t, &BTreeSet::new());
    tally(&format!(
        "test=lease-two-instances provider={} files={} deletes={} files_lost=0 premature_deletes=0",
        p.name(),
        v.files,
        v.deletes
    ));
}

/// [`take_turns`] on local storage.
#[test]
fn two_connectors_on_one_tag_take_turns_local() {
    take_turns(Provider::Local);
}

/// [`take_turns`] on S3.
#[test]
fn two_connectors_on_one_tag_take_turns_s3() {
    take_turns(Provider::S3);
}

/// [`take_turns`] on GCS.
#[test]
fn two_connectors_on_one_tag_take_turns_gcs() {
    take_turns(Provider::Gcs);
}

/// [`take_turns`] on Azure.
#[test]
fn two_connectors_on_one_tag_take_turns_azure() {
    take_turns(Provider::Azure);
}

/// `--once` beside a working connector exits at once with who holds the tag;
/// `check --connect` names the owner; a `kill -9`ed owner on this host is taken over
/// without waiting for its lease to expire, and everything is finished.
#[test]
fn once_refuses_a_held_tag_and_a_killed_owner_is_taken_over() {
    let t = target(Provider::Local, "lease-once").unwrap();
    let tasks = 20;
    let emu = slow_account(tasks);
    guard_via_store(&emu, &t);
    let e = env_for(&emu, &t);
    let log = scratch("lease-once-logs").join("service.log");
    let mut service = spawn(&e, &[], &log);
    wait_until(
        "the service holding the lease",
        Duration::from_secs(30),
        || log_of(&log).contains("holding the journal lease"),
    );
    let out = run(&e, &["--once"]);
    let said = text(&out);
    assert_eq!(out.status.code(), Some(7), "{said}");
    assert!(
        said.contains("another connector works on tag \"it\"")
            && said.contains(&format!("(pid {})", service.id())),
        "{said}"
    );
    let check = run(&e, &["check", "--connect"]);
    let said = text(&check);
    assert!(
        said.contains("journal lease: held by")
            && said.contains(&format!("(pid {})", service.id())),
        "{said}"
    );

    wait_until("the first deletes", Duration::from_secs(60), || {
        !emu.deletes().is_empty()
    });
    service.kill().unwrap();
    service.wait().unwrap();
    let out = run(&e, &["--once"]);
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    assert!(said.contains("taking over the journal lease"), "{said}");
    assert!(all_stored(&emu, &t, tasks), "{said}");
    verify(&emu, &t, &BTreeSet::new());
}

/// A lease overwritten behind its owner's back (a store that ignores conditions, a hand
/// edit): the owner notices at its next renewal and stops at once (exit 1), so two
/// connectors never work on one journal; a restart finishes everything.
#[test]
fn an_owner_whose_lease_was_taken_stops() {
    let t = target(Provider::Local, "lease-lost").unwrap();
    let emu = slow_account(20);
    guard_via_store(&emu, &t);
    let e = env_for(&emu, &t);
    let log = scratch("lease-lost-logs").join("service.log");
    let mut service = spawn(&e, &[], &log);
    wait_until(
        "the service holding the lease",
        Duration::from_secs(30),
        || log_of(&log).contains("holding the journal lease"),
    );
    let lease =
        std::path::Path::new(&t["SP_TASK_SYNC_SAVE_TO"]).join(".spinoco-connector/it.lease.json");
    let foreign = br#"{"owner":"elsewhere/1/1","host":"elsewhere","pid":1,"since_ms":0,"renewed_ms":0,"ttl_ms":4000}"#;
    std::fs::write(&lease, foreign).unwrap();
    let status = service.wait().unwrap();
    assert_eq!(status.code(), Some(1), "{}", log_of(&log));
    let said = log_of(&log);
    assert!(
        said.contains("was taken over by another connector"),
        "{said}"
    );
    assert_eq!(
        std::fs::read(&lease).unwrap(),
        foreign,
        "the new owner's lease is left alone"
    );
    std::fs::remove_file(&lease).unwrap();
    let out = run(&e, &["--once"]);
    assert!(out.status.success(), "{}", text(&out));
    verify(&emu, &t, &BTreeSet::new());
}
