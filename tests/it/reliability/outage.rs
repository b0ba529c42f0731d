//! The storage going away and coming back: cut by the test's TCP proxy (or a full
//! disk for local storage) in the middle of a service run and of a `--once` run, and
//! down when the service starts. The connector waits and retries, stores nothing
//! partial, deletes nothing early, then catches up.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::common::harness::*;
use crate::common::providers::*;
use crate::common::proxy::{Mode, TcpProxy};
use crate::common::tmpfs::{fill, Tmpfs};
use spinoco_connector::EmulatorConfig;

use super::{caught_up, env_for};

/// The storage server goes away (every connection refused, the open ones cut) for a
/// few seconds in the middle of a service-mode run, then comes back: the connector
/// waits and retries, stores nothing partial, deletes nothing early, then catches up.
fn storage_outage(p: Provider) {
    let Some(t) = target(p, "outage") else { return };
    let upstream = endpoint(&t).unwrap();
    let proxy = TcpProxy::start(upstream.trim_start_matches("http://"));
    let tasks = 40;
    let emu = emulator(EmulatorConfig {
        tasks,
        seed: 31,
        recording_size: (2_000, 300_000),
        latency: Duration::from_millis(10),
        ..Default::default()
    });
    guard_via_store(&emu, &t);
    let mut e = env_for(&emu, &with_endpoint(&t, &proxy.url()));
    e.insert("SP_TASK_SYNC_PAGE_SIZE".into(), "5".into());
    e.insert("SP_HTTP_TIMEOUT".into(), "2s".into());
    let log = scratch("outage-log").join("connector.log");
    let child = spawn(&e, &[], &log);
    wait_until("the first deletes", Duration::from_secs(60), || {
        emu.deletes().len() >= 3
    });
    let deletes_before = emu.deletes().len();
    proxy.set(Mode::Down);
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(emu.violations(), Vec::<String>::new(), "premature deletes");
    proxy.set(Mode::Pass);
    wait_until("catching up", Duration::from_secs(120), || {
        caught_up(&emu, &t, tasks)
    });
    stop(child);
    let v = verify(&emu, &t, &BTreeSet::new());
    let logs = std::fs::read_to_string(&log).unwrap();
    assert!(logs.contains("retrying"), "no retry in the log: {logs}");
    assert!(
        emu.deletes().len() > deletes_before,
        "nothing deleted after the outage"
    );
    tally(&format!(
        "test=storage-outage provider={} faults_injected={} files={} deletes={} files_lost=0 premature_deletes=0",
        p.name(),
        proxy.refused.load(std::sync::atomic::Ordering::SeqCst),
        v.files,
        v.deletes
    ));
}

/// [`storage_outage`] on S3.
#[test]
fn storage_outage_s3() {
    storage_outage(Provider::S3);
}

/// [`storage_outage`] on GCS.
#[test]
fn storage_outage_gcs() {
    storage_outage(Provider::Gcs);
}

/// [`storage_outage`] on Azure.
#[test]
fn storage_outage_azure() {
    storage_outage(Provider::Azure);
}

/// The storage is unreachable when the service starts (each round begins by reading
/// the journal): the connector waits for it instead of exiting, then syncs everything.
#[test]
fn storage_down_when_the_service_starts_is_waited_out() {
    let Some(t) = target(Provider::Azure, "down-at-start") else {
        return;
    };
    let upstream = endpoint(&t).unwrap();
    let proxy = TcpProxy::start(upstream.trim_start_matches("http://"));
    let tasks = 12;
    let emu = emulator(EmulatorConfig {
        tasks,
        seed: 41,
        recording_size: (2_000, 50_000),
        ..Default::default()
    });
    let mut e = env_for(&emu, &with_endpoint(&t, &proxy.url()));
    e.insert("SP_HTTP_TIMEOUT".into(), "2s".into());
    proxy.set(Mode::Down);
    let log = scratch("down-at-start-log").join("connector.log");
    let mut child = spawn(&e, &[], &log);
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        child.try_wait().unwrap().is_none(),
        "the service gave up while the storage was down: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    proxy.set(Mode::Pass);
    wait_until("catching up", Duration::from_secs(120), || {
        caught_up(&emu, &t, tasks)
    });
    stop(child);
    verify(&emu, &t, &BTreeSet::new());
    let logs = std::fs::read_to_string(&log).unwrap();
    // The first storage request of a start is the journal lease's, then the journal's.
    assert!(
        logs.contains("; retrying in ") && logs.contains(".spinoco-connector/it."),
        "no retry line: {logs}"
    );
}

/// Local storage on a full disk: a clear error, nothing partial, nothing deleted that
/// is not stored; it goes on when space comes back.
#[test]
fn local_disk_full_then_space_returns() {
    let Some(fs) = Tmpfs::mount("diskfull", "size=24m") else {
        return;
    };
    let root = fs.path().join("root");
    std::fs::create_dir_all(&root).unwrap();
    let tasks = 30;
    let emu = emulator(EmulatorConfig {
        tasks,
        seed: 5,
        recording_size: (50_000, 400_000),
        latency: Duration::from_millis(5),
        ..Default::default()
    });
    let t = vars(&[("SP_TASK_SYNC_SAVE_TO", root.display().to_string())]);
    guard_via_store(&emu, &t);
    let e = env_for(&emu, &t);
    let log = scratch("diskfull-log").join("connector.log");
    let ballast = fill(fs.path());
    let child = spawn(&e, &[], &log);
    wait_until("the disk-full error", Duration::from_secs(60), || {
        std::fs::read_to_string(&log).is_ok_and(|l| l.contains("No space left on device"))
    });
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(emu.violations(), Vec::<String>::new(), "premature deletes");
    let deletes_while_full = emu.deletes().len();
    // Whatever is visible is complete.
    let want = expected(&emu);
    for name in files_in(&root) {
        let bytes = emu.content(&want[&name]).unwrap();
        assert_eq!(std::fs::read(root.join(&name)).unwrap(), bytes, "{name}");
    }
    std::fs::remove_file(&ballast).unwrap();
    wait_until("catching up", Duration::from_secs(120), || {
        caught_up(&emu, &t, tasks)
    });
    stop(child);
    let v = verify(&emu, &t, &BTreeSet::new());
    assert!(v.deletes > deletes_while_full);
    tally(&format!(
        "test=disk-full provider=local faults_injected=1 files={} deletes={} files_lost=0 premature_deletes=0",
        v.files, v.deletes
    ));
}

/// A storage outage of 30 s in the middle of a `--once` run ends with exit 0
/// and everything stored, on every provider: the storage client retries each request
/// within SP_TASK_SYNC_RETRY_TIMEOUT (3 minutes). The cloud servers are cut by the
/// test's TCP proxy; local storage gets a full tmpfs for 30 s. The four run at once,
/// so the suite pays the 30 s once.
#[test]
fn storage_outage_of_30s_in_once_stores_everything() {
    let providers = [
        Provider::S3,
        Provider::Gcs,
        Provider::Azure,
        Provider::Local,
    ];
    std::thread::scope(|s| {
        let runs: Vec<_> = providers
            .iter()
            .map(|&p| s.spawn(move || outage_30s(p)))
            .collect();
        for (p, r) in providers.iter().zip(runs) {
            if let Err(e) = r.join() {
                std::panic::resume_unwind(Box::new(format!("{p:?}: {e:?}")));
            }
        }
    });
}

/// One provider's outage of 30 s: the cloud servers cut by the test's TCP proxy, local
/// storage's tmpfs filled to the last byte.
fn outage_30s(p: Provider) {
    let tmpfs = match p {
        Provider::Local => match Tmpfs::mount("outage30-local", "size=64m") {
            Some(fs) => Some(fs),
            None => return,
        },
        _ => None,
    };
    let t = match &tmpfs {
        Some(fs) => vars(&[(
            "SP_TASK_SYNC_SAVE_TO",
            fs.path().join("root").display().to_string(),
        )]),
        None => match target(p, "outage30") {
            Some(t) => t,
            None => return,
        },
    };
    let proxy = endpoint(&t).map(|u| TcpProxy::start(u.trim_start_matches("http://")));
    let connector_vars = match &proxy {
        Some(proxy) => with_endpoint(&t, &proxy.url()),
        None => t.clone(),
    };
    let tasks = 40;
    let emu = emulator(EmulatorConfig {
        tasks,
        seed: 61,
        recording_size: (2_000, 300_000),
        latency: Duration::from_millis(10),
        ..Default::default()
    });
    guard_via_store(&emu, &t);
    let mut e = env(&emu, &scratch("unused"));
    e.extend(connector_vars);
    e.insert("SP_TASK_SYNC_PAGE_SIZE".into(), "5".into());
    e.insert("SP_HTTP_TIMEOUT".into(), "2s".into());
    let log = scratch(&format!("outage30-{}", p.name())).join("connector.log");
    let mut child = spawn(&e, &["--once"], &log);
    wait_until("the first deletes", Duration::from_secs(60), || {
        emu.deletes().len() >= 3
    });
    let ballast = match (&proxy, &tmpfs) {
        (Some(proxy), _) => {
            proxy.set(Mode::Down);
            None
        }
        (None, Some(fs)) => Some(fill(fs.path())),
        (None, None) => unreachable!("local storage is on a tmpfs"),
    };
    std::thread::sleep(Duration::from_secs(30));
    assert!(
        child.try_wait().unwrap().is_none(),
        "{p:?}: the run ended during the outage: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    match (&proxy, ballast) {
        (Some(proxy), _) => proxy.set(Mode::Pass),
        (None, Some(b)) => std::fs::remove_file(b).unwrap(),
        (None, None) => unreachable!(),
    }
    let status = child.wait().unwrap();
    let logs = std::fs::read_to_string(&log).unwrap();
    assert!(status.success(), "{p:?}: exit {status:?}: {logs}");
    assert!(
        logs.contains("retrying"),
        "{p:?}: no retry in the log: {logs}"
    );
    let v = verify(&emu, &t, &BTreeSet::new());
    tally(&format!(
        "test=storage-outage-30s provider={} files={} deletes={} files_lost=0 premature_deletes=0",
        p.name(),
        v.files,
        v.deletes
    ));
}
