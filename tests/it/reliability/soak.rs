//! The soak run (not in CI, `#[ignore]`): live task arrival with platform faults on,
//! watching memory, threads and descriptors over time.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use crate::common::harness::*;
use crate::common::providers::*;
use spinoco_connector::{EmulatorConfig, Faults};

use super::{caught_up, env_for};

/// A field of the process's status, 0 once it is gone.
fn status(pid: u32, field: &str) -> u64 {
    proc_status(&pid.to_string(), field).unwrap_or(0)
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// The soak run (not in CI): live task arrival with platform faults on, for
/// `SPINOCO_SOAK_SECS` (default 1800) into `SPINOCO_SOAK_PROVIDER` (default local).
/// Prints files, bytes, peak RSS, open descriptors and threads at start and end.
/// `SPINOCO_SOAK_SECS=1800 tests/run.sh --test it reliability::soak -- --ignored --nocapture`
#[test]
#[ignore]
fn soak() {
    let secs: u64 = std::env::var("SPINOCO_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1800);
    let p = match std::env::var("SPINOCO_SOAK_PROVIDER").as_deref() {
        Ok("s3") => Provider::S3,
        Ok("gcs") => Provider::Gcs,
        Ok("azure") => Provider::Azure,
        _ => Provider::Local,
    };
    let Some(t) = target(p, "soak") else { return };
    let emu = emulator(EmulatorConfig {
        tasks: 20,
        seed: 99,
        recording_size: (2_000, 400_000),
        redeliver: 0.05,
        chunked: 0.2,
        faults: Faults {
            server_error: 0.05,
            too_many: 0.02,
            retry_after_secs: 1,
            drop_body: 0.02,
            stall_body: 0.01,
            stall_for: Duration::from_secs(3),
            spike: 0.05,
            spike_latency: Duration::from_millis(200),
        },
        ..Default::default()
    });
    guard_via_store(&emu, &t);
    let mut e = env_for(&emu, &t);
    e.insert("SP_HTTP_TIMEOUT".into(), "1s".into());
    e.insert("SP_LOG_LEVEL".into(), "warn".into());
    let log = scratch("soak-log").join("connector.log");
    let child = spawn(&e, &[], &log);
    let pid = child.id();
    let sample = |label: &str| {
        let (rss, hwm, threads, fds) = (
            status(pid, "VmRSS:"),
            status(pid, "VmHWM:"),
            status(pid, "Threads:"),
            open_fds(pid),
        );
        eprintln!(
            "SOAK {label}: handed out {} tasks, {} deletes, RSS {} kB (peak {} kB), {} threads, {} open fds",
            emu.handed_out().len(),
            emu.deletes().len(),
            rss,
            hwm,
            threads,
            fds
        );
        (hwm, threads, fds)
    };
    std::thread::sleep(Duration::from_secs(5));
    let start = sample("start");
    let began = Instant::now();
    let mut added = 20;
    let mut max_threads = start.1;
    let mut max_fds = start.2;
    while began.elapsed() < Duration::from_secs(secs) {
        std::thread::sleep(Duration::from_secs(2));
        emu.add_tasks(3);
        added += 3;
        max_threads = max_threads.max(status(pid, "Threads:"));
        max_fds = max_fds.max(open_fds(pid));
        if began.elapsed().as_secs() % 60 < 2 {
            sample("progress");
        }
    }
    wait_until("catching up", Duration::from_secs(300), || {
        caught_up(&emu, &t, added)
    });
    let end = sample("end");
    stop(child);
    let v = verify(&emu, &t, &BTreeSet::new());
    let bytes: u64 = expected(&emu)
        .values()
        .map(|p| emu.content(p).map_or(0, |b| b.len() as u64))
        .sum();
    tally(&format!(
        "test=soak provider={} secs={secs} files={} bytes={bytes} deletes={} faults_injected={} peak_rss_kb_start={} peak_rss_kb_end={} threads_start={} threads_end={} threads_max={max_threads} fds_start={} fds_end={} fds_max={max_fds} files_lost=0 premature_deletes=0",
        p.name(), v.files, v.deletes, injected_faults(&emu), start.0, end.0, start.1, end.1, start.2, end.2
    ));
    assert!(end.1 <= start.1 + 8, "threads grew: {start:?} → {end:?}");
    assert!(
        end.2 <= start.2 + 16,
        "open files grew: {start:?} → {end:?}"
    );
}
