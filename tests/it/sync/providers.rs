//! A full `--once` sync into each cloud provider's test server stores exactly what
//! local storage stores: the same names under the prefix, the same bytes. Then the
//! same under platform faults (5xx, 429 with Retry-After, dropped and stalled bodies,
//! latency spikes, re-delivered tasks): every file complete, nothing else visible,
//! every delete after its task's files were stored, and every delete done.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::common::behaviour::server;
use crate::common::harness::*;
use crate::common::providers::*;
use spinoco_connector::emulator::{EmulatorConfig, Faults};

fn account() -> EmulatorConfig {
    EmulatorConfig {
        tasks: 30,
        seed: 23,
        recording_size: (2_000, 80_000),
        redeliver: 0.1,
        ..Default::default()
    }
}

/// The platform fault profile. A stall outlasts `SP_HTTP_TIMEOUT` (1 s
/// here), so the connector must time the read out and retry.
fn fault_profile() -> Faults {
    Faults {
        server_error: 0.10,
        too_many: 0.05,
        retry_after_secs: 1,
        drop_body: 0.05,
        stall_body: 0.05,
        stall_for: Duration::from_secs(3),
        spike: 0.05,
        spike_latency: Duration::from_millis(200),
    }
}

/// Syncs a fresh emulator into local storage and returns the stored names and bytes.
fn local_reference() -> BTreeMap<String, Vec<u8>> {
    let emu = emulator(account());
    let dir = scratch("reference");
    let out = run(&env(&emu, &dir), &["--once"]);
    assert!(out.status.success(), "{}", text(&out));
    verify_complete(&emu, &dir);
    files_in(&dir)
        .into_iter()
        .map(|n| (n.clone(), std::fs::read(dir.join(&n)).unwrap()))
        .collect()
}

/// Syncs a same-seed emulator (with `faults`) into the provider configured by
/// `provider_env`, then reads every object back through the provider and compares
/// with local storage; lists the server to see that nothing else is there.
fn sync_matches_local(provider_env: BTreeMap<String, String>, faults: Option<Faults>) {
    let faulty = faults.is_some();
    let emu = emulator(EmulatorConfig {
        faults: faults.unwrap_or_default(),
        chunked: if faulty { 0.3 } else { 0.0 },
        ..account()
    });
    let mut e = env(&emu, &scratch("unused"));
    e.extend(provider_env);
    if faulty {
        // Debug too: a back-off after an operation's first is logged at debug, and a
        // stall may come on a file's second try.
        e.insert("SP_LOG_LEVEL".into(), "debug".into());
        e.insert("SP_HTTP_TIMEOUT".into(), "1s".into());
        e.insert("SP_TASK_SYNC_CONCURRENCY".into(), "8".into());
        e.insert("SP_TASK_SYNC_PAGE_SIZE".into(), "7".into());
    }
    guard_via_store(&emu, &e);
    let out = run(&e, &["--once"]);
    assert!(out.status.success(), "{}", text(&out));

    let store = open_store(&e);
    let reference = local_reference();
    let handed_out: BTreeSet<String> = expected(&emu).into_keys().collect();
    assert_eq!(
        reference.keys().cloned().collect::<BTreeSet<_>>(),
        handed_out
    );
    for (name, bytes) in &reference {
        let got = store
            .get(name)
            .unwrap()
            .unwrap_or_else(|| panic!("{name} missing"));
        assert!(
            &got == bytes,
            "{name}: bytes differ ({} vs {})",
            got.len(),
            bytes.len()
        );
    }
    let v = verify(&emu, &e, &BTreeSet::new());
    if faulty {
        let t = text(&out);
        assert!(t.contains("retrying"), "no retry was needed? {t}");
        assert!(
            t.contains("timed out") || t.contains("timeout") || t.contains("Timeout"),
            "no stalled read was timed out: {t}"
        );
        tally(&format!(
            "test=platform-faults provider={} faults_injected={} files={} deletes={} files_lost=0 premature_deletes=0",
            provider_of(&e).name(),
            injected_faults(&emu),
            v.files,
            v.deletes
        ));
    }
}

#[test]
fn gcs_sync_matches_local() {
    let Some(e) = target(Provider::Gcs, "sync") else {
        return;
    };
    sync_matches_local(e, None);
}

#[test]
fn gcs_sync_under_platform_faults() {
    let Some(e) = target(Provider::Gcs, "sync") else {
        return;
    };
    sync_matches_local(e, Some(fault_profile()));
}

#[test]
fn azure_sync_matches_local_with_an_account_key() {
    let Some(e) = target(Provider::Azure, "sync") else {
        return;
    };
    sync_matches_local(e, None);
}

#[test]
fn azure_sync_under_platform_faults() {
    let Some(e) = target(Provider::Azure, "sync") else {
        return;
    };
    sync_matches_local(e, Some(fault_profile()));
}

#[test]
fn azure_sync_matches_local_with_a_sas() {
    let (Some(mut e), Some(endpoint)) = (
        target(Provider::Azure, "sync-sas"),
        server("SPINOCO_TEST_AZURITE_BLOB"),
    ) else {
        return;
    };
    let sas = spinoco_connector::store::azure_auth::account_sas(
        "devstoreaccount1",
        AZURITE_KEY,
        "rwdlac",
        "2099-01-01T00:00:00Z",
        "2021-08-06",
    )
    .unwrap();
    e.insert(
        "SP_TASK_SYNC_AZURE_DSN".into(),
        format!("BlobEndpoint={endpoint};SharedAccessSignature={sas}"),
    );
    sync_matches_local(e, None);
}

#[test]
fn s3_sync_matches_local() {
    let Some(e) = target(Provider::S3, "sync") else {
        return;
    };
    sync_matches_local(e, None);
}

#[test]
fn s3_sync_under_platform_faults() {
    let Some(e) = target(Provider::S3, "sync") else {
        return;
    };
    sync_matches_local(e, Some(fault_profile()));
}

#[test]
fn local_sync_under_platform_faults() {
    let Some(e) = target(Provider::Local, "faults") else {
        return;
    };
    sync_matches_local(e, Some(fault_profile()));
}

/// Issue 12: a storage outage of 30 s in the middle of a `--once` run ends with exit 0
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

/// A tmpfs mounted on a fresh folder, unmounted on drop; `None` when mounting is not
/// allowed here (not root).
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(name: &str, size: &str) -> Option<Tmpfs> {
        let dir = scratch(name);
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir)
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Tmpfs(dir))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

/// Fills the file system of `dir` to its last byte.
fn fill(dir: &std::path::Path) -> std::path::PathBuf {
    use std::io::Write;
    let path = dir.join("ballast.bin");
    let mut f = std::fs::File::create(&path).unwrap();
    let block = vec![0u8; 64 * 1024];
    while f.write_all(&block).is_ok() {}
    while f.write_all(&[0u8]).is_ok() {}
    path
}

fn outage_30s(p: Provider) {
    let tmpfs;
    let t = match p {
        Provider::Local => {
            let Some(fs) = Tmpfs::mount("outage30-local", "64m") else {
                eprintln!("skipped local: cannot mount a tmpfs here");
                return;
            };
            tmpfs = fs;
            vars(&[(
                "SP_TASK_SYNC_SAVE_TO",
                tmpfs.0.join("root").display().to_string(),
            )])
        }
        _ => match target(p, "outage30") {
            Some(t) => t,
            None => return,
        },
    };
    let proxy = endpoint(&t)
        .map(|u| crate::common::proxy::TcpProxy::start(u.trim_start_matches("http://")));
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
    let ballast = match &proxy {
        Some(proxy) => {
            proxy.set(crate::common::proxy::Mode::Down);
            None
        }
        None => Some(fill(&tmpfs_dir(&e))),
    };
    std::thread::sleep(Duration::from_secs(30));
    assert!(
        child.try_wait().unwrap().is_none(),
        "{p:?}: the run ended during the outage: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    match (&proxy, ballast) {
        (Some(proxy), _) => proxy.set(crate::common::proxy::Mode::Pass),
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

/// The tmpfs under a local root (its parent folder).
fn tmpfs_dir(e: &BTreeMap<String, String>) -> std::path::PathBuf {
    std::path::Path::new(&e["SP_TASK_SYNC_SAVE_TO"])
        .parent()
        .unwrap()
        .to_path_buf()
}
