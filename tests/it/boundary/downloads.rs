//! Downloads the platform cannot be trusted with: bodies without framing, bodies that
//! never end or announce too much, bodies that trickle, and a platform that drops
//! every connection. A download is complete only when its framing says so, sizes and
//! rates are bounded, and the back-off backs off.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::harness::{env_for_url, files_in, run, scratch, spawn, text, wait_until};
use crate::common::hostile::{call_task, DownloadMode, FeedMode, HostilePlatform};

/// The name the test template gives a task's recording.
fn recording_name(id: &str) -> String {
    format!("2004/12/01/20041201120000-{id}.ogg")
}

fn recording_path(id: &str) -> String {
    format!("/recording-direct/{id}/r1")
}

/// A hostile platform with one call task `id` whose recording is `recording`,
/// downloaded in `mode`.
fn platform_with(id: &str, recording: &[u8], mode: DownloadMode) -> HostilePlatform {
    let platform = HostilePlatform::start();
    let (task, contents) = call_task(id, id, recording);
    platform.add_task(task, contents);
    platform.set_download_mode(&recording_path(id), mode);
    platform
}

fn recording(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

/// The connector's environment with JSON log lines, so levels can be counted.
fn env_json(url: &str, dir: &Path) -> BTreeMap<String, String> {
    let mut env = env_for_url(url, dir);
    env.insert("SP_LOG_FORMAT".into(), "json".into());
    env
}

/// The log lines of a run at `level` (`ERROR`, `WARN`, ...).
fn lines_at(log: &str, level: &str) -> Vec<String> {
    log.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["level"] == level)
        .map(|v| v["msg"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// Checks a `--once` run in which the recording of `id` was rejected: exit 1, not
/// stored, not retried, no DELETE, and one error line naming the task, the file and
/// `reason`.
fn assert_rejected(
    platform: &HostilePlatform,
    dir: &Path,
    out: &std::process::Output,
    id: &str,
    reason: &str,
) {
    let log = text(out);
    assert_eq!(out.status.code(), Some(1), "{log}");
    let name = recording_name(id);
    assert!(!files_in(dir).contains(&name), "{name} was stored: {log}");
    assert_eq!(platform.deletes(), Vec::<String>::new(), "{log}");
    assert_eq!(
        platform.downloads_of(&recording_path(id)),
        1,
        "a rejected download is not retried: {log}"
    );
    let errors = lines_at(&log, "ERROR");
    assert!(
        errors
            .iter()
            .any(|m| m.contains(id) && m.contains(&name) && m.contains(reason)),
        "no error line naming task {id}, {name} and {reason:?} in {errors:#?}"
    );
    let summary = lines_at(&log, "ERROR").join("\n");
    assert!(summary.contains("1 task(s) or file(s) rejected"), "{log}");
    let tmp = dir.join(".spinoco-connector/tmp");
    let left: Vec<_> = std::fs::read_dir(&tmp)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "temp files left: {left:?}");
}

#[test]
fn a_close_delimited_recording_cut_short_is_rejected_not_stored() {
    let id = "close-cut";
    let platform = platform_with(
        id,
        &recording(10_000),
        DownloadMode::CloseDelimited {
            cut_after: Some(3_000),
        },
    );
    let dir = scratch("dl-close-cut");
    let out = run(&env_json(&platform.url, &dir), &["--once"]);
    assert_rejected(
        &platform,
        &dir,
        &out,
        id,
        "neither Content-Length nor chunked",
    );
}

#[test]
fn a_complete_close_delimited_recording_is_rejected_too() {
    // Its end cannot be told from a cut, so a whole one is no more trusted.
    let id = "close-whole";
    let platform = platform_with(
        id,
        &recording(10_000),
        DownloadMode::CloseDelimited { cut_after: None },
    );
    let dir = scratch("dl-close-whole");
    let out = run(&env_json(&platform.url, &dir), &["--once"]);
    assert_rejected(
        &platform,
        &dir,
        &out,
        id,
        "neither Content-Length nor chunked",
    );
}

#[test]
fn a_chunked_recording_cut_short_is_retried_and_stored_whole() {
    let id = "chunked-cut";
    let content = recording(20_000);
    let platform = platform_with(
        id,
        &content,
        DownloadMode::FirstThenWhole(Box::new(DownloadMode::CutChunked { cut_after: 8_192 })),
    );
    let dir = scratch("dl-chunked-cut");
    let out = run(&env_json(&platform.url, &dir), &["--once"]);
    let log = text(&out);
    assert_eq!(out.status.code(), Some(0), "{log}");
    assert_eq!(platform.downloads_of(&recording_path(id)), 2, "{log}");
    let stored = std::fs::read(dir.join(recording_name(id))).unwrap();
    assert!(
        stored == content,
        "{} bytes stored of {}",
        stored.len(),
        content.len()
    );
    assert_eq!(
        platform.deletes(),
        vec![format!("/recording/{id}/r1")],
        "{log}"
    );
}

/// Runs `--once` in the background and waits for its end; fails (after killing it)
/// when it runs past `limit` or its temp files grow over `max_temp` bytes.
fn run_bounded(
    env: &BTreeMap<String, String>,
    dir: &Path,
    limit: Duration,
    max_temp: u64,
) -> (Option<i32>, String) {
    let log = dir.with_extension("log");
    let mut child: Child = spawn(env, &["--once"], &log);
    let started = Instant::now();
    let tmp = dir.join(".spinoco-connector/tmp");
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        let temp: u64 = std::fs::read_dir(&tmp)
            .map(|d| {
                d.flatten()
                    .filter_map(|e| e.metadata().ok())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0);
        let over = if temp > max_temp {
            Some(format!("its temp files hold {temp} bytes"))
        } else if started.elapsed() > limit {
            Some(format!("it ran past {limit:?}"))
        } else {
            None
        };
        if let Some(why) = over {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!(
                "stopped the connector: {why}\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    (status.code(), std::fs::read_to_string(&log).unwrap())
}

#[test]
fn an_endless_chunked_recording_is_rejected_at_the_size_limit() {
    let id = "endless";
    let platform = platform_with(id, &recording(5_000), DownloadMode::EndlessChunked);
    let dir = scratch("dl-endless");
    let mut env = env_json(&platform.url, &dir);
    env.insert("SP_TASK_SYNC_MAX_FILE_SIZE".into(), "1MiB".into());
    let (code, log) = run_bounded(&env, &dir, Duration::from_secs(120), 8 << 20);
    assert_eq!(code, Some(1), "{log}");
    assert_eq!(platform.deletes(), Vec::<String>::new(), "{log}");
    assert_eq!(platform.downloads_of(&recording_path(id)), 1, "{log}");
    let name = recording_name(id);
    let errors = lines_at(&log, "ERROR");
    assert!(
        errors.iter().any(|m| m.contains(id)
            && m.contains(&name)
            && m.contains("SP_TASK_SYNC_MAX_FILE_SIZE")
            && m.contains("1048576")),
        "no error naming task, file and limit in {errors:#?}"
    );
    assert!(!files_in(&dir).contains(&name), "{log}");
    let tmp: Vec<_> = std::fs::read_dir(dir.join(".spinoco-connector/tmp"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(tmp.is_empty(), "temp files left: {tmp:?}");
}

#[test]
fn a_content_length_over_the_limit_is_rejected_before_the_body_is_read() {
    // The platform announces 2 MiB and sends nothing: a connector that read the body
    // would wait for it, time out and try again.
    let id = "announced";
    let platform = platform_with(
        id,
        &recording(1_000),
        DownloadMode::HeadersOnly {
            content_length: 2 << 20,
        },
    );
    let dir = scratch("dl-announced");
    let mut env = env_json(&platform.url, &dir);
    env.insert("SP_TASK_SYNC_MAX_FILE_SIZE".into(), "1MiB".into());
    env.insert("SP_TASK_SYNC_RETRY_TIMEOUT".into(), "10s".into());
    let out = run(&env, &["--once"]);
    assert_rejected(&platform, &dir, &out, id, "SP_TASK_SYNC_MAX_FILE_SIZE");
    let errors = lines_at(&text(&out), "ERROR").join("\n");
    assert!(
        errors.contains("2097152") && errors.contains("1048576"),
        "{errors}"
    );
}

#[test]
fn a_trickling_recording_is_given_up_as_stalled_and_retried() {
    // One byte every 2 s never trips the 5 s per-read timeout; the average rate does.
    let id = "trickle";
    let content = recording(1_000);
    let platform = platform_with(
        id,
        &content,
        DownloadMode::Trickle {
            every: Duration::from_secs(2),
        },
    );
    let path = recording_path(id);
    let dir = scratch("dl-trickle");
    let mut env = env_json(&platform.url, &dir);
    env.insert("SP_HTTP_TIMEOUT".into(), "5s".into());
    let watcher = {
        let dir = dir.clone();
        std::thread::spawn(move || run_bounded(&env, &dir, Duration::from_secs(150), 1 << 20))
    };
    wait_until("the first download", Duration::from_secs(30), || {
        platform.downloads_of(&path) == 1
    });
    platform.set_download_mode(&path, DownloadMode::Whole);
    let (code, log) = watcher.join().unwrap();
    assert_eq!(code, Some(0), "{log}");
    assert_eq!(platform.downloads_of(&path), 2, "{log}");
    let stored = std::fs::read(dir.join(recording_name(id))).unwrap();
    assert!(
        stored == content,
        "{} bytes stored of {}",
        stored.len(),
        content.len()
    );
    assert_eq!(
        platform.deletes(),
        vec![format!("/recording/{id}/r1")],
        "{log}"
    );
    let warnings = lines_at(&log, "WARN");
    assert!(
        warnings
            .iter()
            .any(|m| m.contains(&recording_name(id)) && m.contains("stalled")),
        "no retry of the stalled download in {warnings:#?}"
    );
}

#[test]
fn a_platform_that_drops_every_connection_gets_a_handful_of_attempts() {
    let platform = HostilePlatform::start();
    platform.set_feed_mode(FeedMode::DropConnections);
    let dir = scratch("dl-dropped");
    let mut env = env_json(&platform.url, &dir);
    env.insert("SP_TASK_SYNC_RETRY_TIMEOUT".into(), "40s".into());
    let out = run(&env, &["--once"]);
    let log = text(&out);
    assert_eq!(out.status.code(), Some(1), "{log}");
    let attempts = platform.feed_requests().len();
    // The old walk made about 45 in 40 s; growing to a 15 s cap makes about 13.
    assert!(
        (3..=25).contains(&attempts),
        "{attempts} feed requests\n{log}"
    );
    let warnings = lines_at(&log, "WARN");
    assert!(
        warnings.len() <= 2,
        "{} warnings: {warnings:#?}",
        warnings.len()
    );
    assert!(
        !log.contains("the sync feed: the sync feed"),
        "the operation's name twice: {log}"
    );
}
