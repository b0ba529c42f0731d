//! Operations: the metrics endpoint against a real run, `health` exit codes, JSON logs.

use std::collections::BTreeMap;
use std::process::Child;
use std::time::{Duration, Instant};

use crate::common::harness::*;
use serde_json::Value;
use spinoco_connector::{EmulatorConfig, Faults};

/// Polls `url` until it answers `status`, or fails after a minute.
fn wait_for(url: &str, status: u16, child: &mut Child, log: &std::path::Path) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some((s, body)) = get(url) {
            if s == status {
                return body;
            }
        }
        if let Some(exit) = child.try_wait().unwrap() {
            panic!(
                "the connector exited ({exit}) before {url} answered {status}:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        assert!(Instant::now() < deadline, "{url} never answered {status}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The unlabelled and labelled samples of a Prometheus text page.
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (name, value) = l.rsplit_once(' ').expect("name value");
            (name.to_string(), value.parse::<f64>().expect("a number"))
        })
        .collect()
}

fn health(env: &BTreeMap<String, String>, args: &[&str]) -> (Option<i32>, String) {
    let out = run(env, args);
    (out.status.code(), text(&out))
}

/// After a service round with faults, every counter on /metrics matches what the
/// emulator handed out, the retries counted are the ones logged, `health` answers from
/// the same endpoint, and every log line is one JSON object.
#[test]
fn metrics_after_a_service_round_match_what_the_emulator_handed_out() {
    let emu = emulator(EmulatorConfig {
        tasks: 40,
        seed: 5,
        recording_size: (2_000, 40_000),
        faults: Faults {
            server_error: 0.08,
            ..Default::default()
        },
        ..Default::default()
    });
    let dir = scratch("metrics");
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut e = env(&emu, &dir);
    e.insert("SP_METRICS_ADDR".into(), format!("127.0.0.1:{port}"));
    e.insert("SP_LOG_FORMAT".into(), "json".into());
    // Debug too: an operation's first back-off is a warning, the ones after it debug lines.
    e.insert("SP_LOG_LEVEL".into(), "debug".into());
    e.insert("SP_TASK_SYNC_PAGE_SIZE".into(), "15".into());
    let log = dir.with_extension("log");
    let mut child = spawn(&e, &[], &log);

    assert_eq!(
        wait_for(&format!("{base}/healthz"), 200, &mut child, &log),
        "ok\n"
    );
    // Ready once a round finished: the feed is drained, everything stored.
    wait_for(&format!("{base}/readyz"), 200, &mut child, &log);
    // No more faults; two more (empty) rounds, so no retry is under way at the scrape.
    emu.set_faults(Faults::default());
    let rounds = |page: &str| samples(page)["spinoco_rounds_total"];
    let (_, page) = get(&format!("{base}/metrics")).unwrap();
    let after = rounds(&page) + 2.0;
    let page = loop {
        let (status, page) = get(&format!("{base}/metrics")).unwrap();
        assert_eq!(status, 200);
        if rounds(&page) >= after {
            break page;
        }
        std::thread::sleep(Duration::from_millis(200));
    };

    // `health` asks the same endpoint; 0.0.0.0 is asked on loopback.
    let mut h = BTreeMap::new();
    h.insert("SP_METRICS_ADDR".to_string(), format!("0.0.0.0:{port}"));
    let (code, said) = health(&h, &["health"]);
    assert_eq!(code, Some(0), "{said}");
    assert!(
        said.contains("healthy") && said.contains("/readyz"),
        "{said}"
    );
    let (code, said) = health(&h, &["health", "--live"]);
    assert_eq!(code, Some(0), "{said}");
    assert!(said.contains("/healthz"), "{said}");
    let (_, four04) = get(&format!("{base}/nothing-here")).unwrap();
    assert!(four04.contains("try /metrics"), "{four04}");

    child.kill().unwrap();
    child.wait().unwrap();

    let m = samples(&page);
    let expected = expected(&emu);
    let bytes: usize = expected
        .values()
        .map(|path| emu.content(path).unwrap().len())
        .sum();
    verify_complete(&emu, &dir);
    let want = [
        ("spinoco_tasks_total", emu.handed_out().len() as f64),
        ("spinoco_files_total", expected.len() as f64),
        ("spinoco_bytes_total", bytes as f64),
        (
            "spinoco_deletes_total",
            recording_deletes(&emu).len() as f64,
        ),
        ("spinoco_errors_total{kind=\"missing\"}", 0.0),
        ("spinoco_errors_total{kind=\"rejected\"}", 0.0),
        ("spinoco_errors_total{kind=\"failed\"}", 0.0),
        ("spinoco_transfers_in_flight", 0.0),
        ("spinoco_storage_reachable", 1.0),
    ];
    for (name, value) in want {
        assert_eq!(m.get(name), Some(&value), "{name} in\n{page}");
    }
    assert!(m["spinoco_rounds_total"] >= 1.0, "{page}");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let last = m["spinoco_last_success_timestamp_seconds"];
    assert!(now - last < 120.0 && last <= now + 1.0, "{last} vs {now}");

    // Every log line is one JSON object; the retries counted are the ones logged.
    let lines = std::fs::read_to_string(&log).unwrap();
    let mut retries_logged = 0.0;
    let mut seen_sync = false;
    for line in lines.lines() {
        let v: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
        for field in ["ts", "level", "target", "msg"] {
            assert!(v[field].is_string(), "{field} missing in {line}");
        }
        let msg = v["msg"].as_str().unwrap();
        seen_sync |= msg.starts_with("syncing tag");
        assert!(!msg.contains(TOKEN), "token in the log: {line}");
        let level = v["level"].as_str().unwrap();
        if (level == "WARN" || level == "DEBUG") && msg.contains("; retrying in ") {
            retries_logged += 1.0;
        }
    }
    assert!(seen_sync, "no start line in\n{lines}");
    assert!(retries_logged > 0.0, "the faults caused no retry?\n{lines}");
    let retries = |side: &str| -> f64 {
        m.iter()
            .filter(|(k, _)| {
                k.starts_with("spinoco_retries_total{") && k.contains(&format!("side=\"{side}\""))
            })
            .map(|(_, v)| v)
            .sum()
    };
    assert_eq!(
        retries("platform") + retries("storage"),
        retries_logged,
        "retries by side and reason add up to the ones logged\n{page}"
    );
    assert!(
        m["spinoco_retries_total{side=\"platform\",reason=\"server_error\"}"] > 0.0,
        "the emulator's 5xx faults are counted as platform server errors\n{page}"
    );
}

/// `health` exits 1 without an address, when nothing listens and when the connector is
/// alive but never ready; `health --live` exits 0 once it listens.
#[test]
fn health_fails_when_not_ready_or_nothing_listens() {
    let dir = scratch("health");
    let port = free_port();
    let dead_platform = free_port();
    let mut e: BTreeMap<String, String> = [
        ("SP_API_TOKEN", TOKEN),
        ("SP_TASK_SYNC_TAG", "health"),
        ("SP_TASK_SYNC_FILE_NAME_TEMPLATE", TEMPLATE),
        ("SP_TASK_SYNC_POLL_INTERVAL", "1s"),
        ("SP_HTTP_TIMEOUT", "1s"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    e.insert(
        "SP_API_URL".into(),
        format!("http://127.0.0.1:{dead_platform}"),
    );
    e.insert("SP_TASK_SYNC_SAVE_TO".into(), dir.display().to_string());
    e.insert("SP_METRICS_ADDR".into(), format!("127.0.0.1:{port}"));

    let mut h = BTreeMap::new();
    let (code, said) = health(&h, &["health"]);
    assert_eq!(code, Some(1), "no SP_METRICS_ADDR: {said}");
    assert!(said.contains("SP_METRICS_ADDR is not set"), "{said}");
    h.insert("SP_METRICS_ADDR".to_string(), format!("127.0.0.1:{port}"));
    let (code, said) = health(&h, &["health", "--live"]);
    assert_eq!(code, Some(1), "nothing listens yet: {said}");

    // A connector whose platform never answers: alive, never ready.
    let log = dir.with_extension("log");
    let mut child = spawn(&e, &[], &log);
    wait_for(
        &format!("http://127.0.0.1:{port}/healthz"),
        200,
        &mut child,
        &log,
    );
    let (code, said) = health(&h, &["health", "--live"]);
    assert_eq!(code, Some(0), "{said}");
    let (code, said) = health(&h, &["health"]);
    assert_eq!(code, Some(1), "{said}");
    assert!(
        said.contains("503") && said.contains("no sync round"),
        "{said}"
    );
    child.kill().unwrap();
    child.wait().unwrap();

    h.insert("SP_METRICS_ADDR".to_string(), "not-an-address".into());
    let (code, said) = health(&h, &["health"]);
    assert_eq!(code, Some(1), "{said}");
}

/// A bad `SP_METRICS_ADDR` and `SP_LOG_FORMAT` are configuration errors (exit 3) before
/// any network call.
#[test]
fn bad_metrics_address_and_log_format_are_configuration_errors() {
    let emu = emulator(EmulatorConfig {
        tasks: 1,
        ..Default::default()
    });
    let dir = scratch("badops");
    let mut e = env(&emu, &dir);
    e.insert("SP_METRICS_ADDR".into(), "localhost".into());
    e.insert("SP_LOG_FORMAT".into(), "xml".into());
    let out = run(&e, &["--once"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let t = text(&out);
    assert!(t.contains("SP_METRICS_ADDR=\"localhost\""), "{t}");
    assert!(
        t.contains("SP_LOG_FORMAT=\"xml\": must be text or json"),
        "{t}"
    );
    assert!(
        emu.requests().is_empty(),
        "a network call before validation"
    );
}
