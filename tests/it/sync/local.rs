//! The real binary against the platform emulator over HTTP, into a local folder: a
//! full sync of every data type, second runs and re-delivered tasks, filters, faults
//! retried, hostile names refused, a file gone from the platform, tasks arriving while
//! it runs, and platform file names that differ from the template's.

use std::time::{Duration, Instant};

use crate::common::harness::*;
use spinoco_connector::{EmulatorConfig, Faults};

use super::small;

/// A full `--once` sync of every data type: every file with the platform's bytes, every
/// recording deleted once stored and not before, the token nowhere in the output.
#[test]
fn full_sync_of_every_data_type_with_deletes_after_stores() {
    let emu = emulator(small(60));
    let dir = scratch("full");
    guard_deletes(&emu, &dir);
    let out = run(&env(&emu, &dir), &["--once"]);
    assert!(out.status.success(), "{}", text(&out));
    let n = verify_complete(&emu, &dir);
    let files = files_in(&dir);
    for suffix in [
        ".meta.json",
        ".ogg",
        "-2.ogg",
        ".trans.json",
        ".history.json",
    ] {
        assert!(
            files.iter().any(|f| f.ends_with(suffix)),
            "no {suffix} file among {n}"
        );
    }
    let deletes = recording_deletes(&emu);
    assert!(!deletes.is_empty());
    let done: std::collections::BTreeSet<String> = emu.deletes().into_iter().collect();
    assert_eq!(done, deletes, "every recording deleted once stored");
    assert!(
        !text(&out).contains(TOKEN),
        "the token leaked into the output"
    );
}

/// Re-delivered tasks, older platforms' tasks and a second run rewrite the same files
/// with the same bytes.
#[test]
fn second_run_and_redelivered_tasks_rewrite_harmlessly() {
    let emu = emulator(EmulatorConfig {
        redeliver: 0.3,
        old_platform: 0.2,
        ..small(40)
    });
    let dir = scratch("redeliver");
    let mut e = env(&emu, &dir);
    e.insert("SP_TASK_SYNC_PAGE_SIZE".into(), "7".into());
    let out = run(&e, &["--once"]);
    assert!(out.status.success(), "{}", text(&out));
    let first = verify_complete(&emu, &dir);
    let out = run(&e, &["--once"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(verify_complete(&emu, &dir), first);
}

/// `SP_TASK_SYNC_START_FROM` and a skill filter reach the platform and narrow what it
/// hands out.
#[test]
fn filters_and_start_from_are_sent_and_honoured() {
    let emu = emulator(small(60));
    let all: Vec<_> = {
        let dir = scratch("nofilter");
        let mut e = env(&emu, &dir);
        e.insert("SP_TASK_SYNC_TAG".into(), "all".into());
        e.remove("SP_TASK_SYNC_DELETE_DATA");
        assert!(run(&e, &["--once"]).status.success());
        emu.handed_out()
    };
    let count = all.len();
    let mid_due = all[count / 2]["dueDate"].as_i64().unwrap();

    let dir = scratch("startfrom");
    let mut e = env(&emu, &dir);
    e.insert("SP_TASK_SYNC_TAG".into(), "from".into());
    e.remove("SP_TASK_SYNC_DELETE_DATA");
    let iso = time::OffsetDateTime::from_unix_timestamp_nanos(mid_due as i128 * 1_000_000)
        .unwrap()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    e.insert("SP_TASK_SYNC_START_FROM".into(), iso);
    assert!(run(&e, &["--once"]).status.success());
    let from: Vec<_> = emu.handed_out()[count..].to_vec();
    assert!(
        !from.is_empty() && from.len() < count,
        "startFrom gave {} of {count}",
        from.len()
    );
    assert!(from
        .iter()
        .all(|t| t["dueDate"].as_i64().is_none_or(|d| d >= mid_due)));

    let dir = scratch("skills");
    let mut e = env(&emu, &dir);
    e.insert("SP_TASK_SYNC_TAG".into(), "skills".into());
    e.remove("SP_TASK_SYNC_DELETE_DATA");
    e.insert("SP_TASK_SYNC_SKILLS_MUST".into(), "SK1".into());
    let before = emu.handed_out().len();
    assert!(run(&e, &["--once"]).status.success());
    let filtered = emu.handed_out().len() - before;
    assert!(
        filtered > 0 && filtered < count,
        "skill filter gave {filtered} of {count}"
    );
}

/// A refused API token stops the run with exit 4 and a clear message, without the token
/// even at trace level.
#[test]
fn revoked_token_stops_with_exit_4_and_a_clear_message() {
    let emu = emulator(small(5));
    let dir = scratch("auth");
    let mut e = env(&emu, &dir);
    e.insert("SP_API_TOKEN".into(), "wrong-token-value".into());
    e.insert("SP_LOG_LEVEL".into(), "trace".into());
    let out = run(&e, &["--once"]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    let t = text(&out);
    assert!(t.contains("refused the API token"), "{t}");
    assert!(!t.contains("wrong-token-value"), "token leaked: {t}");
}

/// 5xx, 429, dropped, stalled and chunked answers are retried, and every file is
/// complete.
#[test]
fn transient_faults_are_retried_and_leave_no_partial_files() {
    let faults = Faults {
        server_error: 0.10,
        too_many: 0.05,
        retry_after_secs: 1,
        drop_body: 0.05,
        stall_body: 0.03,
        stall_for: Duration::from_secs(5),
        spike: 0.05,
        spike_latency: Duration::from_millis(200),
    };
    let emu = emulator(EmulatorConfig {
        faults,
        chunked: 0.3,
        ..small(40)
    });
    let dir = scratch("faults");
    guard_deletes(&emu, &dir);
    let mut e = env(&emu, &dir);
    e.insert("SP_TASK_SYNC_CONCURRENCY".into(), "8".into());
    let out = run(&e, &["--once"]);
    assert!(out.status.success(), "{}", text(&out));
    verify_complete(&emu, &dir);
    let t = text(&out);
    assert!(t.contains("retrying"), "no retry was needed? {t}");
}

/// Unsafe file names and a malformed task are refused (exit 1) naming why, nothing is
/// written outside the root, and the good tasks are stored.
#[test]
fn hostile_names_are_rejected_and_nothing_leaves_the_root() {
    let emu = emulator(small(5));
    let outer = scratch("hostile");
    let dir = outer.join("root");
    let bad = [
        "../escape.meta.json",
        "/tmp/spinoco-abs.meta.json",
        "a\\b.meta.json",
        "x/../../y.meta.json",
        ".spinoco-connector/it.page.json",
    ];
    for (i, name) in bad.iter().enumerate() {
        let path = format!("/task/hostile-{i}/meta");
        emu.inject_task(
            serde_json::json!({"taskId": format!("hostile-{i}"), "get": [{"path": path, "fileName": name}], "delete": []}),
            vec![(path.clone(), b"evil".to_vec())],
        );
    }
    emu.inject_task(serde_json::json!({"taskId": 42, "get": "odd"}), vec![]);
    let out = run(&env(&emu, &dir), &["--once"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let t = text(&out);
    assert!(t.contains("unsafe file name"), "{t}");
    assert!(t.contains("malformed task"), "{t}");
    assert!(!outer.join("escape.meta.json").exists());
    assert!(!std::path::Path::new("/tmp/spinoco-abs.meta.json").exists());
    let stray: Vec<_> = std::fs::read_dir(&outer)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(stray, vec![std::ffi::OsString::from("root")]);
    // The well-formed tasks were all stored.
    assert!(files_in(&dir).iter().any(|f| f.ends_with(".ogg")));
}

/// A file gone from the platform (404) is a warning: the task's other files are stored
/// and its recording is not deleted.
#[test]
fn a_404_download_is_a_warning_and_suppresses_the_tasks_deletes() {
    let emu = emulator(small(4));
    let dir = scratch("missing");
    let task = serde_json::json!({
        "taskId": "b808d74e-84b2-11ef-b864-0242ac120002", "dueDate": 1101902400000i64,
        "get": [
            {"dataType": "CallMetadata", "path": "/task/gone/meta", "fileName": "x.meta.json"},
            {"dataType": "Recordings", "recordingId": "r1", "path": "/recording-direct/gone/r1", "fileName": "x.ogg"}
        ],
        "delete": [{"path": "/recording/gone/r1"}]
    });
    emu.inject_task(task, vec![("/task/gone/meta".into(), b"{}".to_vec())]);
    let out = run(&env(&emu, &dir), &["--once"]);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.contains("is gone from the platform (404)"), "{t}");
    assert!(dir
        .join("2004/12/01/20041201120000-b808d74e-84b2-11ef-b864-0242ac120002.meta.json")
        .exists());
    assert!(
        !emu.deletes().contains(&"/recording/gone/r1".to_string()),
        "deleted despite a missing file"
    );
}

/// The service picks up tasks that arrive after its first round and stops cleanly on
/// SIGTERM.
#[test]
fn service_mode_picks_up_tasks_that_arrive_later() {
    let emu = emulator(small(5));
    let dir = scratch("live");
    let mut child = spawn(&env(&emu, &dir), &[], &dir.with_extension("log"));
    let wait_for = |n: usize| {
        let start = Instant::now();
        while emu.handed_out().len() < n {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "only {} of {n} tasks handed out",
                emu.handed_out().len()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    wait_for(5);
    emu.add_tasks(7);
    wait_for(12);
    // Let the round finish (the journal goes away when the feed is drained), then stop.
    let start = Instant::now();
    let journal = dir.join(".spinoco-connector/it.page.json");
    while (files_in(&dir).len() < expected(&emu).len() || journal.exists())
        && start.elapsed() < Duration::from_secs(30)
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    signal(child.id(), "TERM");
    assert!(child.wait().unwrap().success());
    verify_complete(&emu, &dir);
}

/// A platform file name that differs from the template's is reported once per round and
/// stored under the name `SP_TASK_SYNC_NAMES` chooses; a bad value of it is a
/// configuration error.
#[test]
fn a_platform_file_name_that_differs_is_reported_and_chosen_by_sp_task_sync_names() {
    const ID: &str = "b808d74e-84b2-11ef-b864-0242ac120002";
    let ours = format!("2004/12/01/20041201120000-{ID}");
    // A platform that rendered the date an hour off (another zone) for the recording.
    let theirs = format!("2004/12/01/20041201130000-{ID}.ogg");
    let task = serde_json::json!({
        "taskId": ID, "dueDate": 1101902400000i64,
        "get": [
            {"dataType": "CallMetadata", "path": "/task/n/meta", "fileName": format!("{ours}.meta.json")},
            {"dataType": "Recordings", "recordingId": "r1", "path": "/recording-direct/n/r1", "fileName": theirs}
        ],
        "delete": []
    });
    let contents = vec![
        ("/task/n/meta".to_string(), b"{}".to_vec()),
        ("/recording-direct/n/r1".to_string(), b"OggS".to_vec()),
    ];
    for (names, recording) in [
        (None, format!("{ours}.ogg")),
        (Some("template"), format!("{ours}.ogg")),
        (Some("platform"), theirs.clone()),
    ] {
        let emu = emulator(small(0));
        emu.inject_task(task.clone(), contents.clone());
        let dir = scratch(&format!("names-{}", names.unwrap_or("default")));
        let mut e = env(&emu, &dir);
        if let Some(n) = names {
            e.insert("SP_TASK_SYNC_NAMES".into(), n.into());
        }
        let out = run(&e, &["--once"]);
        let t = text(&out);
        assert!(out.status.success(), "{t}");
        let warned: Vec<&str> = t
            .lines()
            .filter(|l| l.contains("named differently"))
            .collect();
        assert_eq!(warned.len(), 1, "one warning per round:\n{t}");
        assert!(
            warned[0].contains("1 file(s)") && warned[0].contains("SP_TASK_SYNC_NAMES"),
            "{t}"
        );
        let stored = files_in(&dir);
        assert!(stored.contains(&recording), "{names:?}: {stored:?}");
        assert!(stored.contains(&format!("{ours}.meta.json")), "{stored:?}");
        assert_eq!(stored.len(), 2, "{stored:?}");
    }
    let emu = emulator(small(1));
    let mut e = env(&emu, &scratch("names-bad"));
    e.insert("SP_TASK_SYNC_NAMES".into(), "both".into());
    let out = run(&e, &["--once"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(
        text(&out).contains("SP_TASK_SYNC_NAMES=\"both\""),
        "{}",
        text(&out)
    );
}
