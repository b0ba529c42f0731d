//! What the feed hands out, taken without harm: two tasks that would share a name,
//! a task nested too deep for the journal, an answer far longer than asked for, and
//! the query's answer lost on its way (the one window the contract leaves open).

use std::collections::BTreeSet;
use std::process::Child;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::harness::*;
use crate::common::hostile::{call_task, FeedMode, HostilePlatform};

const BASE: &str = "2004/12/01/20041201120000-";

fn meta_task(id: &str) -> (Value, Vec<(String, Vec<u8>)>) {
    let path = format!("/task/{id}/meta");
    let task = json!({
        "taskId": id, "dueDate": 1_101_902_400_000i64,
        "get": [{"dataType": "CallMetadata", "path": path, "fileName": format!("{id}.meta.json")}],
        "delete": []
    });
    (task, vec![(path, format!("meta of {id}").into_bytes())])
}

fn add(platform: &HostilePlatform, (task, contents): (Value, Vec<(String, Vec<u8>)>)) {
    platform.add_task(task, contents);
}

/// `a/b`, `a_b` and `a..b` are all named `a_b` by the template: the first task in
/// work keeps the name; the others are errors, never an overwrite followed by two
/// deletes. The same task handed out twice rewrites its files harmlessly.
#[test]
fn two_tasks_in_work_never_share_a_name() {
    let platform = HostilePlatform::start();
    // The query asks for one task; the three that collide come on one page.
    add(&platform, meta_task("first"));
    add(&platform, call_task("a/b", "x1", b"OggS of a/b"));
    add(&platform, call_task("a_b", "x2", b"OggS of a_b"));
    add(&platform, call_task("a..b", "x3", b"OggS of a..b"));
    add(&platform, call_task("again", "x4", b"OggS again"));
    add(&platform, call_task("again", "x4", b"OggS again"));
    let dir = scratch("shared-name");
    let out = run(&env_for_url(&platform.url, &dir), &["--once"]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert_eq!(
        std::fs::read(dir.join(format!("{BASE}a_b.ogg"))).unwrap(),
        b"OggS of a/b",
        "the first task's recording is intact: {t}"
    );
    let mut deletes = platform.deletes();
    deletes.sort();
    assert_eq!(
        deletes,
        [
            "/recording/a/b/r1",
            "/recording/again/r1",
            "/recording/again/r1"
        ],
        "{t}"
    );
    for other in ["a_b", "a..b"] {
        assert!(
            t.lines().any(|l| l.contains("ERROR")
                && l.contains(&format!("{other:?}"))
                && l.contains("\"a/b\"")),
            "no error naming {other} and a/b: {t}"
        );
    }
    assert_eq!(
        std::fs::read(dir.join(format!("{BASE}again.ogg"))).unwrap(),
        b"OggS again"
    );
}

/// The deepest nesting the feed's JSON parser accepts inside a page.
fn deepest_accepted() -> usize {
    (1..200)
        .take_while(|&n| {
            let page = format!(
                "{{\"result\":[{{\"x\":{}0{}}}]}}",
                "[".repeat(n),
                "]".repeat(n)
            );
            serde_json::from_str::<Value>(&page).is_ok()
        })
        .last()
        .unwrap()
}

/// A task nested as deep as the feed's parser allows is refused when it comes; the
/// page it came on is journaled without it, so a restart can read the journal.
#[test]
fn a_task_nested_too_deep_never_makes_the_journal_unreadable() {
    let platform = HostilePlatform::start();
    add(&platform, meta_task("first"));
    let mut deep = json!(0);
    for _ in 0..deepest_accepted() {
        deep = json!([deep]);
    }
    platform.add_task(
        json!({"taskId": "deep", "get": [], "delete": [], "x": deep}),
        vec![],
    );
    let (task, contents) = call_task("kept", "kept", b"OggS kept");
    let recording = contents[1].0.clone();
    platform.add_task(task, contents);
    // The recording fails until the first run gives up: its page stays journaled.
    platform.set_download_mode(
        &recording,
        crate::common::hostile::DownloadMode::EchoHeaders(503),
    );
    let dir = scratch("deep-task");
    let mut e = env_for_url(&platform.url, &dir);
    e.insert("SP_TASK_SYNC_RETRY_TIMEOUT".into(), "1s".into());
    let first = run(&e, &["--once"]);
    let t = text(&first);
    assert_eq!(first.status.code(), Some(1), "{t}");
    assert!(t.contains("nested more than"), "{t}");
    assert!(dir.join(".spinoco-connector/it.page.json").exists(), "{t}");
    platform.set_download_mode(&recording, crate::common::hostile::DownloadMode::Whole);
    let second = run(&e, &["--once"]);
    let t = text(&second);
    assert!(second.status.success(), "the journal is read back: {t}");
    assert_eq!(
        std::fs::read(dir.join(format!("{BASE}kept.ogg"))).unwrap(),
        b"OggS kept"
    );
    assert_eq!(platform.deletes(), ["/recording/kept/r1"]);
}

/// Bytes the process has passed to `write()` so far (`wchar` of /proc/PID/io).
fn written(pid: u32) -> Option<u64> {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).ok()?;
    io.lines()
        .find_map(|l| l.strip_prefix("wchar: "))
        .and_then(|v| v.trim().parse().ok())
}

/// Waits for `child`, sampling what it wrote; returns the last sample.
fn wait_sampling_writes(child: &mut Child) -> (std::process::ExitStatus, u64) {
    let mut last = 0;
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return (status, last);
        }
        assert!(Instant::now() < deadline, "the connector did not finish");
        last = written(child.id()).unwrap_or(last).max(last);
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Thousands of tasks in answer to `count: 50` are taken without harm (the cursor has
/// passed them) and journaled once: no journal write grows with the answer. Before,
/// every change rewrote the whole answer: 3,000 small tasks cost about 300 MB of writes.
#[test]
fn an_answer_far_longer_than_asked_is_journaled_once() {
    let platform = HostilePlatform::start();
    let tasks = 3_000;
    for i in 0..tasks {
        let id = format!("t{i:05}");
        add(&platform, call_task(&id, &id, b"OggS"));
    }
    platform.set_feed_mode(FeedMode::IgnoreCount(tasks));
    let dir = scratch("long-answer");
    let mut e = env_for_url(&platform.url, &dir);
    e.insert("SP_LOG_LEVEL".into(), "warn".into());
    let log = dir.with_extension("log");
    let mut child = spawn(&e, &["--once"], &log);
    let (status, wrote) = wait_sampling_writes(&mut child);
    let t = std::fs::read_to_string(&log).unwrap();
    assert!(status.success(), "{status:?}: {t}");
    assert_eq!(files_in(&dir).len(), 2 * tasks, "{t}");
    assert_eq!(platform.deletes().len(), tasks, "{t}");
    // The files themselves are about 60 KB; the journal holds the answer once (about
    // 1.3 MB) and a window of pages per write, with every group of tasks recorded as
    // stored before their deletes.
    assert!(
        wrote < 40_000_000,
        "{wrote} bytes written for {tasks} small files"
    );
    println!("long answer: {wrote} bytes passed to write() for {tasks} tasks");
    assert!(!dir.join(".spinoco-connector/it.backlog.json").exists());
}

/// A crash while an answer's backlog is being worked: the restart takes the rest from
/// the journal, although the platform's cursor has passed every task.
#[test]
fn a_crash_while_a_long_answer_is_worked_loses_none_of_it() {
    let platform = HostilePlatform::start();
    let tasks = 400;
    for i in 0..tasks {
        add(
            &platform,
            call_task(&format!("c{i:04}"), &format!("c{i:04}"), b"OggS"),
        );
    }
    platform.set_feed_mode(FeedMode::IgnoreCount(tasks));
    let dir = scratch("long-answer-kill");
    let mut e = env_for_url(&platform.url, &dir);
    e.insert("SP_LOG_LEVEL".into(), "warn".into());
    let log = dir.with_extension("log");
    let mut child = spawn(&e, &[], &log);
    let journal = dir.join(".spinoco-connector/it.page.json");
    wait_until("a backlog in work", Duration::from_secs(60), || {
        std::fs::read_to_string(&journal).is_ok_and(|j| j.contains("\"taken\":3"))
    });
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(platform.left(), 0, "the cursor passed every task");
    let out = run(&e, &["--once"]);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert_eq!(files_in(&dir).len(), 2 * tasks, "{t}");
    let deletes: BTreeSet<String> = platform.deletes().into_iter().collect();
    assert_eq!(deletes.len(), tasks, "every recording deleted once");
    assert!(!journal.exists());
    assert!(!dir.join(".spinoco-connector/it.backlog.json").exists());
}

fn errors_about_lost_answers(t: &str) -> usize {
    t.lines()
        .filter(|l| l.contains("ERROR") && l.contains("at most one task"))
        .count()
}

/// The query is asked for one task, so an answer cut on its way loses at most that
/// one: the run says so at error level, counts it, goes on, and `--once` exits 1.
#[test]
fn a_lost_query_answer_exposes_one_task_and_is_never_silent() {
    let platform = HostilePlatform::start();
    for i in 0..20 {
        add(&platform, meta_task(&format!("q{i:02}")));
    }
    platform.set_feed_mode(FeedMode::CutQueryAnswers(1));
    let dir = scratch("lost-query");
    let out = run(&env_for_url(&platform.url, &dir), &["--once"]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert_eq!(errors_about_lost_answers(&t), 1, "{t}");
    let queries: Vec<Value> = platform
        .feed_requests()
        .into_iter()
        .filter(|r| r.get("query").is_some())
        .collect();
    assert!(queries.iter().all(|q| q["count"] == 1), "{queries:?}");
    // Only the task of the lost answer is missing.
    assert_eq!(files_in(&dir).len(), 19, "{t}");
    assert!(!dir.join(format!("{BASE}q00.meta.json")).exists());
}

/// A crash while the query's answer is on its way: the start after it finds the
/// query marked in the journal, says at error level that one task may be missing,
/// and `--once` exits 1; the start after that is clean.
#[test]
fn a_crash_while_the_query_answer_is_on_its_way_is_reported_at_the_next_start() {
    let platform = HostilePlatform::start();
    for i in 0..5 {
        add(&platform, meta_task(&format!("k{i}")));
    }
    platform.set_feed_mode(FeedMode::DelayQueryAnswers(Duration::from_secs(3)));
    let dir = scratch("query-crash");
    let e = env_for_url(&platform.url, &dir);
    let log = dir.with_extension("log");
    let mut child = spawn(&e, &["--once"], &log);
    wait_until("the query sent", Duration::from_secs(30), || {
        !platform.feed_requests().is_empty()
    });
    child.kill().unwrap();
    child.wait().unwrap();
    platform.set_feed_mode(FeedMode::Honest);
    let out = run(&e, &["--once"]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert_eq!(errors_about_lost_answers(&t), 1, "{t}");
    assert!(t.contains("never journaled"), "{t}");
    assert_eq!(files_in(&dir).len(), 4, "all but the lost task: {t}");
    let again = run(&e, &["--once"]);
    assert!(again.status.success(), "{}", text(&again));
    assert_eq!(errors_about_lost_answers(&text(&again)), 0);
}

/// A stop requested while a feed answer is on its way: the page it brings is still
/// journaled before the process exits, so the next start finishes it (the platform's
/// cursor has passed it).
#[test]
fn a_stop_while_a_feed_answer_is_on_its_way_still_journals_its_page() {
    let platform = HostilePlatform::start();
    for i in 0..5 {
        add(&platform, meta_task(&format!("s{i}")));
    }
    platform.set_feed_mode(FeedMode::DelayQueryAnswers(Duration::from_secs(2)));
    let dir = scratch("stop-in-flight");
    let e = env_for_url(&platform.url, &dir);
    let log = dir.with_extension("log");
    let mut child = spawn(&e, &["--once"], &log);
    wait_until("the query sent", Duration::from_secs(30), || {
        !platform.feed_requests().is_empty()
    });
    signal(child.id(), "TERM");
    let status = child.wait().unwrap();
    let t = std::fs::read_to_string(&log).unwrap();
    assert!(
        std::fs::read_to_string(dir.join(".spinoco-connector/it.page.json"))
            .is_ok_and(|j| j.contains("\"s0\"")),
        "{status:?}: the page on its way was not journaled: {t}"
    );
    platform.set_feed_mode(FeedMode::Honest);
    let out = run(&e, &["--once"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(files_in(&dir).len(), 5, "{}", text(&out));
}
