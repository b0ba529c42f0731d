//! Hostile answers from the platform: broken and lying feed answers, broken
//! downloads, hostile names and values. Each is retried or refused with a clear line,
//! nothing is written outside the root, and the rest is stored.

use std::path::Path;
use std::time::Duration;

use crate::common::data::PatternReader;
use crate::common::harness::*;
use crate::common::providers::tally;
use spinoco_connector::{EmulatorConfig, RawReply};

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
    let body = PatternReader::bytes(100_000, 9);
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
