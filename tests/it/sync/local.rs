//! The real binary against the platform emulator over HTTP, into a local folder.

use std::time::{Duration, Instant};

use crate::common::harness::*;
use spinoco_connector::emulator::{EmulatorConfig, Faults};

fn small(tasks: usize) -> EmulatorConfig {
    EmulatorConfig {
        tasks,
        seed: 11,
        recording_size: (2_000, 60_000),
        ..Default::default()
    }
}

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
    let iso = spinoco_connector::template::iso_millis(mid_due);
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
    assert!(out.status.success(), "{}", text(&out));
    verify_complete(&emu, &dir);
    let done: std::collections::BTreeSet<String> = emu.deletes().into_iter().collect();
    assert_eq!(
        done,
        recording_deletes(&emu),
        "deletes complete after restarts"
    );
    let logs = std::fs::read_to_string(&log).unwrap() + &text(&out);
    let resumed = logs.matches("finishing the journaled page").count();
    assert!(
        resumed >= 3,
        "only {resumed} restarts found a journaled page: the kills missed the work\n{logs}"
    );
}

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
    // Wait until a recording is being written.
    let tmp = dir.join(".spinoco-connector/tmp");
    let start = Instant::now();
    while std::fs::read_dir(&tmp).map(|d| d.count()).unwrap_or(0) == 0 {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no transfer started"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let sent = Instant::now();
    sigterm(child.id());
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

fn sigterm(pid: u32) {
    signal(pid, "TERM");
}

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

#[test]
fn configuration_errors_are_all_reported_before_any_network_call() {
    let emu = emulator(small(3));
    let dir = scratch("config");
    let mut e = env(&emu, &dir);
    e.remove("SP_TASK_SYNC_TAG");
    e.insert(
        "SP_TASK_SYNC_FILE_NAME_TEMPLATE".into(),
        "{{due_date|yyyy}}".into(),
    );
    e.insert("SP_TASK_SYNC_GET_DATA".into(), "Recordings,Videos".into());
    e.insert("SP_TASK_SYNC_DELETE_DATA".into(), "Transcriptions".into());
    e.insert("SP_TASK_SYNC_SKILLS_MUST".into(), "TOOLONG".into());
    e.insert("SP_TASK_SYNC_HASHTAGS_MUST".into(), "not-a-uuid".into());
    e.insert("SP_TASK_SYNC_START_FROM".into(), "last tuesday".into());
    e.insert("SP_TASK_SYNC_STORAGE_PROVIDER".into(), "dropbox".into());
    for args in [
        &[][..],
        &["--once"][..],
        &["check"][..],
        &["check", "--connect"][..],
    ] {
        let out = run(&e, args);
        assert_eq!(out.status.code(), Some(3), "{args:?}: {}", text(&out));
        let t = text(&out);
        for needle in [
            "SP_TASK_SYNC_TAG: is required",
            "must contain {{task_id}}",
            "\"Videos\"",
            "only Recordings can be deleted",
            "TOOLONG",
            "not-a-uuid",
            "last tuesday",
            "dropbox",
        ] {
            assert!(t.contains(needle), "{args:?}: {needle:?} not in {t}");
        }
        assert!(!t.contains(TOKEN), "token leaked: {t}");
    }
    assert!(
        emu.requests().is_empty(),
        "a network call was made before validation"
    );
}

#[test]
fn check_render_help_and_version() {
    let emu = emulator(small(3));
    let dir = scratch("check");
    let e = env(&emu, &dir);
    let out = run(&e, &["check", "--connect"]);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(
        t.contains("token accepted") && t.contains("probe object"),
        "{t}"
    );
    assert!(!t.contains(TOKEN) && t.contains("***"), "{t}");
    assert!(emu.handed_out().is_empty(), "check must not consume tasks");

    let render = |more: &[&str]| {
        let mut args = vec![
            "render",
            "--due-date",
            "2004-12-01T12:00:00Z",
            "--task-id",
            "b808d74e-84b2-11ef-b864-0242ac120002",
        ];
        args.extend_from_slice(more);
        let out = run(&e, &args);
        assert!(out.status.success(), "{}", text(&out));
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let t = render(&[]);
    assert!(
        t.contains("2004/12/01/20041201120000-b808d74e-84b2-11ef-b864-0242ac120002.ogg"),
        "{t}"
    );
    assert!(
        t.contains("20041201120000-b808d74e-84b2-11ef-b864-0242ac120002-2.trans.json"),
        "{t}"
    );
    let compare = |file_name: &str| {
        let t = render(&["--file-name", file_name]);
        t.lines().last().unwrap().to_string()
    };
    let same = compare("2004/12/01/20041201120000-b808d74e-84b2-11ef-b864-0242ac120002-2.ogg");
    assert!(same.contains("the same as the template's name"), "{same}");
    let other = compare("2004/12/01/20041201130000-b808d74e-84b2-11ef-b864-0242ac120002-2.ogg");
    assert!(
        other.contains("DIFFERS")
            && other.contains("20041201120000-b808d74e-84b2-11ef-b864-0242ac120002-2.ogg")
            && other.contains("SP_TASK_SYNC_NAMES=template stores"),
        "{other}"
    );

    assert_eq!(run(&e, &["--bogus"]).status.code(), Some(2));
    assert!(run(&e, &["--help"]).status.success());
    let v = run(&e, &["--version"]);
    assert!(String::from_utf8_lossy(&v.stdout).starts_with("spinoco-connector "));
}

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
    sigterm(child.id());
    assert!(child.wait().unwrap().success());
    verify_complete(&emu, &dir);
}

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
