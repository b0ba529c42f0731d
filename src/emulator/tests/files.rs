//! The emulator's downloads, deletes, faults and command line, over real HTTP.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::*;
use crate::emulator::cli::parse_cli;

fn first_recording(all: &[Value]) -> (Value, String) {
    for t in all {
        for g in t["get"].as_array().unwrap() {
            if g["dataType"] == "Recordings" {
                return (t.clone(), g["path"].as_str().unwrap().to_string());
            }
        }
    }
    panic!("no recording handed out");
}

#[test]
fn recordings_stream_exactly_with_length_or_chunked() {
    let (emu, c) = start(EmulatorConfig {
        tasks: 5,
        ..Default::default()
    });
    let (_, path) = first_recording(&c.drain(query("t"), 100).concat());
    let a = c.get(&path);
    assert_eq!(a.status, 200);
    let body = a.body.as_ref().unwrap();
    assert_eq!(
        a.header("content-length")
            .unwrap()
            .parse::<usize>()
            .unwrap(),
        body.len()
    );
    assert_eq!(Some(body.clone()), emu.content(&path));
    assert!((20_000..=200_000).contains(&body.len()));
    assert_eq!(emu.content("/recording-direct/nope/nope"), None);
    assert_eq!(c.get("/recording-direct/nope/nope").status, 404);

    let big = 5 * 1024 * 1024;
    let (emu, c) = start(EmulatorConfig {
        tasks: 5,
        recording_size: (big, big),
        chunked: 1.0,
        ..Default::default()
    });
    let (_, path) = first_recording(&c.drain(query("t"), 100).concat());
    let a = c.get(&path);
    assert_eq!(a.header("transfer-encoding"), Some("chunked"));
    assert_eq!(a.header("content-length"), None);
    let body = a.body.unwrap();
    assert_eq!(body.len() as u64, big);
    assert!(body == emu.content(&path).unwrap());
}

#[test]
fn delete_once_then_404_and_the_recording_is_gone() {
    let (emu, c) = start(EmulatorConfig {
        tasks: 10,
        ..Default::default()
    });
    let mut q = query("t");
    q["get"] = json!("Recordings,Transcriptions");
    let first = c.post(&json!({"query": q, "count": 10})).json();
    let all = first["result"].as_array().unwrap().clone();
    let (task, path) = first_recording(&all);
    let del = path.replace("/recording-direct/", "/recording/");
    assert!(task["delete"]
        .as_array()
        .unwrap()
        .contains(&json!({ "path": del })));
    assert_eq!(c.delete(&del).status, 204);
    assert_eq!(c.delete(&del).status, 404);
    assert_eq!(c.get(&path).status, 404);
    let trans = path.replace("/recording-direct/", "/task/transcription/");
    if emu.content(&trans).is_some() {
        assert_eq!(c.get(&trans).status, 200, "the transcription stays");
    }
    assert_eq!(emu.deletes(), vec![del.clone()]);
    assert!(emu.violations().is_empty(), "{:?}", emu.violations());
    assert!(
        emu.content(&path).is_some(),
        "content() still gives the bytes for verification"
    );
    assert_eq!(c.delete("/recording/nope/nope").status, 404);
}

#[test]
fn redelivered_tasks_come_again_without_done_deletes() {
    let (emu, c) = start(EmulatorConfig {
        tasks: 10,
        redeliver: 1.0,
        ..Default::default()
    });
    let first = c.drain(query("t"), 100).concat();
    assert_eq!(first.len(), 10);
    let (task, path) = first_recording(&first);
    let del = path.replace("/recording-direct/", "/recording/");
    assert_eq!(c.delete(&del).status, 204);
    let again = c.drain(query("t"), 100).concat();
    assert_eq!(ids(&again), ids(&first), "each task once more, in order");
    let re = again
        .iter()
        .find(|t| t["taskId"] == task["taskId"])
        .unwrap();
    assert!(!re["delete"]
        .as_array()
        .unwrap()
        .contains(&json!({ "path": del })));
    assert!(
        c.drain(query("t"), 100).concat().is_empty(),
        "only once more"
    );
    assert_eq!(emu.handed_out().len(), 20);
}

#[test]
fn drop_body_cuts_the_page_and_keeps_the_cursor() {
    let (emu, c) = start(EmulatorConfig {
        tasks: 10,
        ..Default::default()
    });
    emu.set_faults(Faults {
        drop_body: 1.0,
        ..Default::default()
    });
    let cut = c.post(&json!({"query": query("t"), "count": 5}));
    assert_eq!(cut.status, 200);
    assert!(cut.body.is_err(), "the client must see a short body");
    let (_, path) = (0, format!("/task/{}/meta", account_ids(&emu)[0]));
    assert!(c.get(&path).body.is_err());
    emu.set_faults(Faults::default());
    assert!(emu.handed_out().is_empty());
    let page = c.post(&json!({"query": query("t"), "count": 5})).json();
    assert_eq!(
        ids(page["result"].as_array().unwrap()),
        account_ids(&emu)[..5]
    );
    let reqs = emu.requests();
    assert!(!reqs[0].complete && reqs[0].bytes > 0);
    assert!(reqs[2].complete);
}

#[test]
fn stall_body_goes_silent_then_closes() {
    let (emu, c) = start(EmulatorConfig {
        tasks: 3,
        ..Default::default()
    });
    emu.set_faults(Faults {
        stall_body: 1.0,
        stall_for: Duration::from_millis(300),
        ..Default::default()
    });
    let t0 = Instant::now();
    let a = c.get(&format!("/task/{}/meta", account_ids(&emu)[0]));
    assert!(a.body.is_err());
    assert!(t0.elapsed() >= Duration::from_millis(300));
}

#[test]
fn errors_and_429_change_nothing() {
    let (emu, c) = start(EmulatorConfig {
        tasks: 10,
        ..Default::default()
    });
    emu.set_faults(Faults {
        too_many: 1.0,
        retry_after_secs: 7,
        ..Default::default()
    });
    let a = c.post(&json!({"query": query("t"), "count": 5}));
    assert_eq!(a.status, 429);
    assert_eq!(a.header("retry-after"), Some("7"));
    emu.set_faults(Faults {
        server_error: 1.0,
        ..Default::default()
    });
    let a = c.post(&json!({"query": query("t"), "count": 5}));
    assert!([500, 502, 503].contains(&a.status));
    emu.set_faults(Faults::default());
    let all = c.drain(query("t"), 100).concat();
    assert_eq!(all.len(), 10);
    let (_, path) = first_recording(&all);
    let del = path.replace("/recording-direct/", "/recording/");
    emu.set_faults(Faults {
        server_error: 1.0,
        ..Default::default()
    });
    assert!(c.delete(&del).status >= 500);
    emu.set_faults(Faults::default());
    assert!(
        emu.deletes().is_empty(),
        "a DELETE answered 5xx deletes nothing"
    );
    assert_eq!(c.delete(&del).status, 204);
}

#[test]
fn delete_guard_violations_are_recorded() {
    let (emu, c) = start(EmulatorConfig {
        tasks: 10,
        ..Default::default()
    });
    let all = c.drain(query("t"), 100).concat();
    let (task, path) = first_recording(&all);
    let id = task["taskId"].as_str().unwrap().to_string();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let seen2 = seen.clone();
    emu.set_delete_guard(Box::new(move |t: &Value| {
        seen2
            .lock()
            .unwrap()
            .push(t["taskId"].as_str().unwrap_or("").to_string());
        false
    }));
    assert_eq!(
        c.delete(&path.replace("/recording-direct/", "/recording/"))
            .status,
        204
    );
    assert_eq!(*seen.lock().unwrap(), vec![id.clone()]);
    let v = emu.violations();
    assert_eq!(v.len(), 1);
    assert!(
        v[0].contains("guard refused") && v[0].contains(&id),
        "{v:?}"
    );
}

#[test]
fn injected_tasks_are_served_as_they_are() {
    let (emu, c) = start(EmulatorConfig {
        tasks: 2,
        ..Default::default()
    });
    let hostile = json!({
        "taskId": "../../etc/passwd",
        "extra": {"unknown": true},
        "get": [{"path": "/recording-direct/evil/r1", "fileName": "/abs/../x.ogg"}],
        "delete": [{"path": "/recording/evil/r1"}]
    });
    emu.inject_task(
        hostile.clone(),
        vec![("/recording-direct/evil/r1".into(), b"evil bytes".to_vec())],
    );
    let all = c.drain(query("t"), 100).concat();
    assert_eq!(all.len(), 3);
    assert_eq!(all[2], hostile);
    assert_eq!(
        c.get("/recording-direct/evil/r1").body.unwrap(),
        b"evil bytes"
    );
    assert_eq!(c.delete("/recording/evil/r1").status, 204);
    assert_eq!(c.get("/recording-direct/evil/r1").status, 404);
}

#[test]
fn parallel_connections_do_not_serialise_latency() {
    let (emu, _c) = start(EmulatorConfig {
        tasks: 2,
        latency: Duration::from_millis(300),
        ..Default::default()
    });
    let path = format!("/task/{}/meta", account_ids(&emu)[0]);
    let t0 = Instant::now();
    let threads: Vec<_> = (0..6)
        .map(|_| {
            let c = Client::new(&emu);
            let path = path.clone();
            std::thread::spawn(move || c.get(&path).status)
        })
        .collect();
    for t in threads {
        assert_eq!(t.join().unwrap(), 200);
    }
    // Served one after another, six answers would need 6 × 300 ms at the very least;
    // anything below that proves they overlapped (no margin tuned to this machine).
    assert!(
        t0.elapsed() < Duration::from_millis(6 * 300),
        "{:?}: the connections were served one at a time",
        t0.elapsed()
    );
}

#[test]
fn cli_options_are_read() {
    let args: Vec<String> =
        "emulator --port 0 --tasks 7 --seed 9 --token T --latency-ms 5 --recording-kb 1-2 --drop-body 0.5"
            .split(' ')
            .map(String::from)
            .collect();
    let cfg = parse_cli(&args).unwrap();
    assert_eq!((cfg.tasks, cfg.seed, cfg.token.as_str()), (7, 9, "T"));
    assert_eq!(cfg.recording_size, (1024, 2048));
    assert_eq!(cfg.latency, Duration::from_millis(5));
    assert_eq!(cfg.faults.drop_body, 0.5);
    assert!(parse_cli(&["--bogus".to_string()])
        .unwrap_err()
        .contains("--bogus"));
    assert!(parse_cli(&["--recording-kb".to_string(), "9-1".to_string()]).is_err());
}

#[test]
fn stop_closes_the_port_and_requests_are_logged() {
    let (emu, c) = start(EmulatorConfig {
        tasks: 1,
        ..Default::default()
    });
    assert_eq!(c.get("/nowhere").status, 404);
    assert_eq!(c.delete("/task/sync/").status, 405);
    let log = emu.requests();
    assert_eq!(
        (log[0].method.as_str(), log[0].path.as_str(), log[0].status),
        ("GET", "/nowhere", 404)
    );
    assert!(log[0].complete && log[0].bytes > 0);
    let port = emu.port();
    emu.stop();
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
    assert_eq!(run_cli(&["--help".to_string()]), 0);
    assert_eq!(run_cli(&["--tasks".to_string(), "x".to_string()]), 2);
}
