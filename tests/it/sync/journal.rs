//! What the journal saves: `kill -9` in the middle of a page, SIGTERM during a large
//! transfer, pages in work when the process froze and their tokens expired, an expired
//! page token, and the released version's journal finished after an upgrade.

use std::time::{Duration, Instant};

use crate::common::harness::*;
use spinoco_connector::EmulatorConfig;

use super::small;

/// `kill -9` at five instants in the work on a page, then a `--once`: everything stored
/// and deleted (but a task a reported lost query answer held), and at least three
/// restarts finished a journaled page.
#[test]
fn kill_9_mid_page_then_restart_loses_nothing() {
    let emu = emulator(EmulatorConfig {
        latency: Duration::from_millis(15),
        ..small(80)
    });
    let dir = scratch("kill9");
    guard_deletes(&emu, &dir);
    let mut e = env(&emu, &dir);
    e.insert("SP_TASK_SYNC_PAGE_SIZE".into(), "20".into());
    e.insert("SP_TASK_SYNC_CONCURRENCY".into(), "2".into());
    let log = dir.with_extension("log");
    for wait_ms in [150u64, 400, 700, 1000, 1300] {
        let mut child = spawn(&e, &[], &log);
        std::thread::sleep(Duration::from_millis(wait_ms));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
    }
    let out = run(&e, &["--once"]);
    let logs = std::fs::read_to_string(&log).unwrap() + &text(&out);
    // A kill while the query's answer was on its way may cost the one task it held
    // (the contract's window): always reported, never more than one per report. The
    // next start reports it; when that start is the last run, it exits 1 for it.
    let gaps = logs.matches("at most one task").count();
    let lost = tasks_not_stored(&emu, &dir);
    assert!(lost.len() <= gaps, "{lost:?} lost, {gaps} reported\n{logs}");
    assert!(
        out.status.success() || (gaps > 0 && out.status.code() == Some(1)),
        "{}",
        text(&out)
    );
    verify_complete_except(&emu, &dir, &lost);
    let done: std::collections::BTreeSet<String> = emu.deletes().into_iter().collect();
    let wanted: std::collections::BTreeSet<String> = recording_deletes(&emu)
        .into_iter()
        .filter(|d| !lost.iter().any(|t| d.contains(&format!("/{t}/"))))
        .collect();
    assert_eq!(done, wanted, "deletes complete after restarts");
    let resumed = logs.matches("finishing the journaled page").count();
    assert!(
        resumed >= 3,
        "only {resumed} restarts found a journaled page: the kills missed the work\n{logs}"
    );
}

/// SIGTERM while a 40-60 MB recording is written: exit 0 within 10 s, no temp file,
/// nothing partial visible, and the next run finishes the job.
#[test]
fn sigterm_during_a_large_transfer_exits_promptly_leaving_nothing_partial() {
    let emu = emulator(EmulatorConfig {
        recording_size: (40_000_000, 60_000_000),
        latency: Duration::from_millis(5),
        ..small(6)
    });
    let dir = scratch("sigterm");
    let e = env(&emu, &dir);
    let mut child = spawn(&e, &[], &dir.with_extension("log"));
    // Wait until a recording is being written (a temp file of more than a megabyte:
    // the lease's and the journal's own are a few hundred bytes).
    let tmp = dir.join(".spinoco-connector/tmp");
    let start = Instant::now();
    let writing = || {
        std::fs::read_dir(&tmp).is_ok_and(|d| {
            d.flatten()
                .any(|e| e.metadata().is_ok_and(|m| m.len() > 1_000_000))
        })
    };
    while !writing() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no transfer started"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let sent = Instant::now();
    signal(child.id(), "TERM");
    let status = child.wait().unwrap();
    let took = sent.elapsed();
    assert!(status.success(), "exit status {status:?}");
    assert!(took < Duration::from_secs(10), "took {took:?} to stop");
    assert_eq!(
        std::fs::read_dir(&tmp).unwrap().count(),
        0,
        "partial temp file left"
    );
    // Whatever is visible is complete.
    let expected = expected(&emu);
    for name in files_in(&dir) {
        let want = emu.content(&expected[&name]).unwrap();
        assert_eq!(
            std::fs::read(dir.join(&name)).unwrap().len(),
            want.len(),
            "{name} is partial"
        );
    }
    // And the next run finishes the job.
    let out = run(&e, &["--once"]);
    assert!(out.status.success(), "{}", text(&out));
    verify_complete(&emu, &dir);
}

/// A journal whose page token has expired starts a new round, and everything is stored.
#[test]
fn an_expired_page_token_in_the_journal_starts_a_new_round() {
    let emu = emulator(small(30));
    let dir = scratch("expired");
    // As left by a run that finished a page and died before asking for the next one.
    std::fs::create_dir_all(dir.join(".spinoco-connector")).unwrap();
    std::fs::write(
        dir.join(".spinoco-connector/it.page.json"),
        br#"{"tasks":[],"next":"long-gone"}"#,
    )
    .unwrap();
    let out = run(&env(&emu, &dir), &["--once"]);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.contains("page token expired"), "{t}");
    verify_complete(&emu, &dir);
}

/// The process frozen and killed while its journal holds several pages in work, every
/// page token expired: the restart finishes every page of the window.
#[test]
fn pages_in_flight_survive_a_crash_and_expired_tokens() {
    let emu = emulator(EmulatorConfig {
        latency: Duration::from_millis(10),
        ..small(60)
    });
    let dir = scratch("window");
    let mut e = env(&emu, &dir);
    e.insert("SP_TASK_SYNC_PAGE_SIZE".into(), "10".into());
    let log = dir.with_extension("log");
    let mut child = spawn(&e, &[], &log);
    // Freeze the connector while its journal holds several pages in work (the
    // platform's cursor is past all of them), then kill it and expire every page
    // token: the restart must still store every page of the window.
    let journal = dir.join(".spinoco-connector/it.page.json");
    // Several pages in it, and the last task handed out among them: no page is on its
    // way unjournaled (that one the contract cannot save once its token is expired).
    let pages_in_flight = || {
        let Ok(bytes) = std::fs::read(&journal) else {
            return false;
        };
        let j: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
        let pages = j["pages"].as_array().cloned().unwrap_or_default();
        let last = emu.handed_out().last().map(|t| t["taskId"].clone());
        pages.len() >= 2
            && pages.iter().any(|p| {
                p["tasks"]
                    .as_array()
                    .is_some_and(|t| t.iter().any(|t| Some(&t["taskId"]) == last.as_ref()))
            })
    };
    let start = Instant::now();
    loop {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "never saw several pages journaled at once"
        );
        if emu.handed_out().len() >= 20 && pages_in_flight() {
            signal(child.id(), "STOP");
            // An answer on its way when it froze is handed out, yet not journaled.
            std::thread::sleep(Duration::from_millis(30));
            if pages_in_flight() {
                break;
            }
            signal(child.id(), "CONT");
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    emu.expire_page_tokens();
    let out = run(&e, &["--once"]);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(
        t.matches("finishing the journaled page").count() >= 2,
        "{t}"
    );
    verify_complete(&emu, &dir);
}

/// An upgrade in the middle of a page: the released version's journal (one page at
/// the top level, the page received ahead inside it) is finished by this one, with
/// every token expired, and nothing of either page is lost.
#[test]
fn the_released_versions_journal_is_finished_after_an_upgrade() {
    let emu = emulator(small(30));
    let dir = scratch("upgrade");
    let ask = |body: serde_json::Value| -> serde_json::Value {
        ureq::post(format!("{}/task/sync/", emu.url()))
            .header("Authorization", format!("Bearer {TOKEN}"))
            .send_json(body)
            .unwrap()
            .body_mut()
            .read_json()
            .unwrap()
    };
    // What the released version had received when it was stopped for the upgrade.
    let first = ask(serde_json::json!({
        "query": {
            "tag": "it", "get": ALL_TYPES, "delete": "Recordings", "fileNameTemplate": TEMPLATE,
            "skillsMust": [], "skillsShould": [], "skillsMustNot": [],
            "hashTagsMust": [], "hashTagsShould": [], "hashTagsMustNot": []
        },
        "count": 6
    }));
    let ahead = ask(serde_json::json!({"page": first["next"], "count": 6}));
    assert_eq!(emu.handed_out().len(), 12);
    std::fs::create_dir_all(dir.join(".spinoco-connector")).unwrap();
    let v1 = serde_json::json!({
        "tasks": first["result"],
        "stored": [],
        "next": first["next"],
        "ahead": {"tasks": ahead["result"], "next": ahead["next"]}
    });
    std::fs::write(dir.join(".spinoco-connector/it.page.json"), v1.to_string()).unwrap();
    emu.expire_page_tokens();
    guard_deletes(&emu, &dir);
    let out = run(&env(&emu, &dir), &["--once"]);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert_eq!(t.matches("finishing the journaled page").count(), 2, "{t}");
    assert!(t.contains("page token expired"), "{t}");
    verify_complete(&emu, &dir);
}
