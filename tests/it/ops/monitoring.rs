//! `deploy/prometheus/` and `deploy/grafana/`: promtool on the rules and their unit
//! tests, `promtool check metrics` on a live scrape of the connector, and every metric
//! the rules, their tests and the dashboard name against that scrape.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::harness::*;
use crate::common::skip::skip;
use serde_json::Value;
use spinoco_connector::{EmulatorConfig, Faults};

/// Metric names (`spinoco_…`) in a text.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("spinoco_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        // Not a part of a longer word (e.g. a label value spinoco-connector is not).
        let before = rest[..i].chars().last();
        if !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            out.insert(tail[..end].to_string());
        }
        rest = &tail[end..];
    }
    out
}

/// A live scrape of the connector running as a service against the emulator, after a
/// round with retries.
fn live_scrape() -> String {
    let emu = emulator(EmulatorConfig {
        tasks: 20,
        seed: 19,
        recording_size: (2_000, 20_000),
        faults: Faults {
            server_error: 0.1,
            ..Default::default()
        },
        ..Default::default()
    });
    let dir = scratch("scrape");
    let port = free_port();
    let mut e = env(&emu, &dir);
    e.insert("SP_METRICS_ADDR".into(), format!("127.0.0.1:{port}"));
    let log = dir.with_extension("log");
    let mut child = spawn(&e, &[], &log);
    let url = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(60);
    while get(&format!("{url}/readyz")).map(|(s, _)| s) != Some(200) {
        assert!(
            child.try_wait().unwrap().is_none(),
            "{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        assert!(Instant::now() < deadline, "never ready");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (status, page) = get(&format!("{url}/metrics")).unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(status, 200);
    page
}

/// The alert rules pass promtool and their unit tests, the live page passes `promtool
/// check metrics`, and every metric the rules, their tests and the dashboard name is
/// exported.
#[test]
fn alert_rules_and_dashboard_name_only_exported_metrics() {
    let Some(promtool) = which("promtool") else {
        return skip("promtool is not installed (Debian package prometheus)");
    };
    let prom = repo().join("deploy/prometheus");
    let rules = prom.join("spinoco-connector.rules.yml");
    let rule_tests = prom.join("spinoco-connector.rules.test.yml");
    let promtool_ok = |args: &[&Path]| {
        let mut cmd = Command::new(&promtool);
        for a in args {
            cmd.arg(a);
        }
        let out = cmd.current_dir(&prom).output().unwrap();
        assert!(out.status.success(), "promtool {args:?}:\n{}", text(&out));
        stdout(&out)
    };
    let said = promtool_ok(&[Path::new("check"), Path::new("rules"), &rules]);
    assert!(said.contains("SUCCESS"), "{said}");
    let said = promtool_ok(&[Path::new("test"), Path::new("rules"), &rule_tests]);
    assert!(said.contains("SUCCESS"), "{said}");

    // The live page passes promtool's lint.
    let page = live_scrape();
    let mut lint = Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    lint.stdin
        .take()
        .unwrap()
        .write_all(page.as_bytes())
        .unwrap();
    let out = lint.wait_with_output().unwrap();
    assert!(out.status.success(), "{}\n{page}", text(&out));
    let exported: BTreeSet<String> = page
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .map(|l| l.split(' ').next().unwrap().to_string())
        .collect();
    assert!(exported.contains("spinoco_retries_total"), "{page}");
    assert!(
        page.lines()
            .any(|l| l.starts_with("spinoco_retries_total") && !l.ends_with(" 0")),
        "the faults caused no retry:\n{page}"
    );

    // Every name in the rules, their tests and the dashboard is on the page.
    let dashboard_file = repo().join("deploy/grafana/spinoco-connector.json");
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(&dashboard_file).unwrap()).unwrap();
    let mut queries = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{}", panel["title"]);
        for t in targets {
            queries.push((
                panel["title"].to_string(),
                t["expr"].as_str().unwrap().to_string(),
            ));
        }
    }
    for var in dashboard["templating"]["list"].as_array().unwrap() {
        if let Some(q) = var["definition"].as_str() {
            queries.push((var["name"].to_string(), q.to_string()));
        }
    }
    let mut named = BTreeSet::new();
    for (title, q) in &queries {
        let names = metric_names(q);
        assert!(!names.is_empty(), "{title}: {q} names no connector metric");
        named.extend(names);
    }
    // The panels asked for: files and bytes per second, retries by side, rounds,
    // transfers in flight, journal age.
    for must in [
        "spinoco_files_total",
        "spinoco_bytes_total",
        "spinoco_retries_total",
        "spinoco_rounds_total",
        "spinoco_transfers_in_flight",
        "spinoco_journaled_page_timestamp_seconds",
    ] {
        assert!(named.contains(must), "the dashboard has no {must}");
    }
    assert!(queries
        .iter()
        .any(|(_, q)| q.contains("spinoco_retries_total") && q.contains("by (instance, side)")));
    let rule_text = std::fs::read_to_string(&rules).unwrap();
    let test_text = std::fs::read_to_string(&rule_tests).unwrap();
    named.extend(metric_names(&rule_text));
    let in_tests = metric_names(&test_text);
    assert!(in_tests.len() >= 6, "{in_tests:?}");
    named.extend(in_tests);
    let unknown: Vec<_> = named.difference(&exported).collect();
    assert!(
        unknown.is_empty(),
        "named but not exported: {unknown:?}\nexported: {exported:?}"
    );
}
