//! `SP_TASK_SYNC_BANDWIDTH`: a capped sync takes at least its bytes over the cap (only
//! that lower bound is asserted, never an upper one), `check` shows the cap in force and
//! the next change, `/metrics` shows the cap, and a bad value is a configuration error
//! before any network call.

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::common::harness::*;
use spinoco_connector::EmulatorConfig;

const MIB: u64 = 1 << 20;

/// 12 recordings of about 1 MB.
fn recordings() -> EmulatorConfig {
    EmulatorConfig {
        tasks: 12,
        seed: 29,
        calls_only: true,
        recordings_per_call: Some(1),
        recording_size: (950_000, 1_050_000),
        ..Default::default()
    }
}

/// A timetable in `offset` (`+05:30`) that puts `now` in force from an hour ago and
/// `then` from two hours on: the timetable and the time of day of the switch, in that
/// offset.
fn timetable_now(offset: &str, now: &str, then: &str) -> (String, String) {
    let sign = if offset.starts_with('-') { -1 } else { 1 };
    let hours: i64 = offset[1..3].parse().unwrap();
    let minutes: i64 = offset[4..6].parse().unwrap();
    let unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let minute = (unix / 60 + sign * (hours * 60 + minutes)).rem_euclid(1440);
    let hhmm = |m: i64| {
        let m = m.rem_euclid(1440);
        format!("{:02}:{:02}", m / 60, m % 60)
    };
    let (from, to) = (minute - 60, minute + 120);
    let mut entries = [
        (from.rem_euclid(1440), format!("{},{now}", hhmm(from))),
        (to.rem_euclid(1440), format!("{},{then}", hhmm(to))),
    ];
    entries.sort();
    let table = entries.map(|(_, e)| e).join(" ");
    (table, hhmm(to))
}

fn capped_env(
    emu: &spinoco_connector::Emulator,
    dir: &std::path::Path,
) -> BTreeMap<String, String> {
    let mut e = env(emu, dir);
    e.insert("SP_TASK_SYNC_GET_DATA".into(), "Recordings".into());
    e
}

/// 12 recordings of about 1 MB at 1 MiB/s (a timetable in UTC+05:30 that puts the cap in
/// force now), 4 workers: the run takes at least the bytes less one second's burst over
/// the cap, and stores everything.
#[test]
fn a_capped_sync_takes_at_least_its_bytes_over_the_cap() {
    let emu = emulator(recordings());
    let dir = scratch("bandwidth-capped");
    let (table, switch) = timetable_now("+05:30", "1MiB/s", "off");
    let mut e = capped_env(&emu, &dir);
    e.insert("SP_TASK_SYNC_BANDWIDTH".into(), table.clone());
    e.insert("SP_TASK_SYNC_BANDWIDTH_TZ".into(), "+05:30".into());
    let check = run(&e, &["check"]);
    assert!(check.status.success(), "{}", text(&check));
    let want = format!("bandwidth: 1 MiB/s until {switch} UTC+05:30, then off");
    assert!(
        stdout(&check).lines().any(|l| l == want),
        "{want:?} for {table:?} in\n{}",
        text(&check)
    );

    let started = Instant::now();
    let out = run(&e, &["--once"]);
    let elapsed = started.elapsed();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(verify_complete(&emu, &dir), 12);
    let bytes: u64 = files_in(&dir)
        .iter()
        .map(|name| std::fs::metadata(dir.join(name)).unwrap().len())
        .sum();
    assert!(bytes > 11_000_000, "{bytes} bytes");
    let least = Duration::from_secs_f64((bytes - MIB) as f64 / MIB as f64);
    assert!(
        elapsed >= least,
        "{bytes} bytes in {elapsed:?}: faster than 1 MiB/s after a second's burst ({least:?})"
    );
}

/// `check` says the cap in force and when it changes next, in the timetable's offset.
#[test]
fn check_shows_the_cap_in_force_and_the_next_change() {
    let emu = emulator(recordings());
    let dir = scratch("bandwidth-check");
    let bandwidth_lines = |vars: &[(&str, &str)]| {
        let mut e = env(&emu, &dir);
        for (k, v) in vars {
            e.insert(k.to_string(), v.to_string());
        }
        let out = run(&e, &["check"]);
        assert!(out.status.success(), "{}", text(&out));
        stdout(&out)
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            .filter(|l| l.starts_with("SP_TASK_SYNC_BANDWIDTH ") || l.starts_with("bandwidth:"))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        bandwidth_lines(&[]),
        [
            "SP_TASK_SYNC_BANDWIDTH off (no cap)",
            "bandwidth: off (no cap)"
        ]
    );
    assert_eq!(
        bandwidth_lines(&[("SP_TASK_SYNC_BANDWIDTH", "1.5M")]),
        [
            "SP_TASK_SYNC_BANDWIDTH 1.5 MiB/s at all times",
            "bandwidth: 1.5 MiB/s at all times"
        ]
    );
    // Off now, 2 MiB/s from two hours on, in UTC-05:30.
    let (table, switch) = timetable_now("-05:30", "off", "2MiB/s");
    let lines = bandwidth_lines(&[
        ("SP_TASK_SYNC_BANDWIDTH", &table),
        ("SP_TASK_SYNC_BANDWIDTH_TZ", "-05:30"),
    ]);
    assert_eq!(
        lines[1],
        format!("bandwidth: off until {switch} UTC-05:30, then 2 MiB/s"),
        "{table}"
    );
    assert!(
        lines[0].starts_with("SP_TASK_SYNC_BANDWIDTH ")
            && lines[0].ends_with("(times of day in UTC-05:30)"),
        "{lines:?}"
    );
    assert!(emu.handed_out().is_empty(), "check must not consume tasks");
}

/// `/metrics` shows the cap in force: the timetable's entry for now, 0 with none.
#[test]
fn the_metric_shows_the_cap_in_force() {
    let emu = emulator(EmulatorConfig {
        tasks: 2,
        seed: 31,
        recording_size: (1_000, 2_000),
        ..Default::default()
    });
    let gauge = |bandwidth: Option<&str>| {
        let dir = scratch("bandwidth-metric");
        let port = free_port();
        let mut e = env(&emu, &dir);
        e.insert("SP_METRICS_ADDR".into(), format!("127.0.0.1:{port}"));
        if let Some(table) = bandwidth {
            e.insert("SP_TASK_SYNC_BANDWIDTH".into(), table.into());
        }
        let log = dir.with_extension("log");
        let child = spawn(&e, &[], &log);
        let url = format!("http://127.0.0.1:{port}/metrics");
        let mut page = String::new();
        wait_until("/metrics", Duration::from_secs(30), || {
            page = get(&url).map(|(_, body)| body).unwrap_or_default();
            !page.is_empty()
        });
        stop(child);
        page.lines()
            .find_map(|l| l.strip_prefix("spinoco_bandwidth_limit_bytes_per_second "))
            .unwrap_or_else(|| panic!("no gauge in\n{page}"))
            .to_string()
    };
    let (table, _) = timetable_now("+00:00", "3MiB/s", "off");
    assert_eq!(gauge(Some(&table)), (3 * MIB).to_string(), "{table}");
    assert_eq!(gauge(None), "0");
}

/// A bad rate, a day-of-week entry or a zone name is a configuration error (exit 3) that
/// names the variable and the bad part, reported with the others before any network call.
#[test]
fn a_bad_timetable_is_a_configuration_error_before_any_network_call() {
    let emu = emulator(recordings());
    let dir = scratch("bandwidth-config");
    let mut e = env(&emu, &dir);
    e.insert(
        "SP_TASK_SYNC_BANDWIDTH".into(),
        "Mon-08:00,2MiB/s 12:00,fast 18:00,10Mbit/s".into(),
    );
    e.insert("SP_TASK_SYNC_BANDWIDTH_TZ".into(), "Europe/Prague".into());
    e.insert("SP_TASK_SYNC_PAGE_SIZE".into(), "500".into());
    for args in [&["--once"][..], &["check"][..]] {
        let out = run(&e, args);
        assert_eq!(out.status.code(), Some(3), "{args:?}: {}", text(&out));
        let t = text(&out);
        let table = "SP_TASK_SYNC_BANDWIDTH=\"Mon-08:00,2MiB/s 12:00,fast 18:00,10Mbit/s\": ";
        for needle in [
            format!("{table}\"Mon-08:00\" names a day of the week"),
            format!("{table}\"fast\" is not a rate"),
            format!("{table}\"10Mbit/s\" is in bits"),
            "SP_TASK_SYNC_BANDWIDTH_TZ=\"Europe/Prague\": \"Europe/Prague\" is not a fixed offset"
                .to_string(),
            "SP_TASK_SYNC_PAGE_SIZE=\"500\"".to_string(),
        ] {
            assert!(t.contains(&needle), "{args:?}: {needle:?} not in {t}");
        }
    }
    assert!(
        emu.requests().is_empty(),
        "a network call was made before validation"
    );
}
