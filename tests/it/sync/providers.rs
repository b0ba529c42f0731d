//! A full `--once` sync into each cloud provider's test server stores exactly what
//! local storage stores: the same names under the prefix, the same bytes. Then the
//! same under platform faults (5xx, 429 with Retry-After, dropped and stalled bodies,
//! latency spikes, re-delivered tasks): every file complete, nothing else visible,
//! every delete after its task's files were stored, and every delete done.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::common::harness::*;
use crate::common::providers::*;
use crate::common::skip::server;
use spinoco_connector::{EmulatorConfig, Faults};

fn account() -> EmulatorConfig {
    EmulatorConfig {
        tasks: 30,
        seed: 23,
        recording_size: (2_000, 80_000),
        redeliver: 0.1,
        ..Default::default()
    }
}

/// The platform fault profile of the README's reliability figures. A stall outlasts
/// `SP_HTTP_TIMEOUT` (1 s here), so the connector must time the read out and retry.
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

/// [`sync_matches_local`] into GCS.
#[test]
fn gcs_sync_matches_local() {
    let Some(e) = target(Provider::Gcs, "sync") else {
        return;
    };
    sync_matches_local(e, None);
}

/// [`sync_matches_local`] into GCS, under platform faults.
#[test]
fn gcs_sync_under_platform_faults() {
    let Some(e) = target(Provider::Gcs, "sync") else {
        return;
    };
    sync_matches_local(e, Some(fault_profile()));
}

/// [`sync_matches_local`] into Azure with an account key.
#[test]
fn azure_sync_matches_local_with_an_account_key() {
    let Some(e) = target(Provider::Azure, "sync") else {
        return;
    };
    sync_matches_local(e, None);
}

/// [`sync_matches_local`] into Azure, under platform faults.
#[test]
fn azure_sync_under_platform_faults() {
    let Some(e) = target(Provider::Azure, "sync") else {
        return;
    };
    sync_matches_local(e, Some(fault_profile()));
}

/// [`sync_matches_local`] into Azure with a SAS.
#[test]
fn azure_sync_matches_local_with_a_sas() {
    let (Some(mut e), Some(endpoint)) = (
        target(Provider::Azure, "sync-sas"),
        server("SPINOCO_TEST_AZURITE_BLOB"),
    ) else {
        return;
    };
    let sas = spinoco_connector::azure::account_sas(
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

/// [`sync_matches_local`] into S3.
#[test]
fn s3_sync_matches_local() {
    let Some(e) = target(Provider::S3, "sync") else {
        return;
    };
    sync_matches_local(e, None);
}

/// [`sync_matches_local`] into S3, under platform faults.
#[test]
fn s3_sync_under_platform_faults() {
    let Some(e) = target(Provider::S3, "sync") else {
        return;
    };
    sync_matches_local(e, Some(fault_profile()));
}

/// [`sync_matches_local`] into a local folder, under platform faults.
#[test]
fn local_sync_under_platform_faults() {
    let Some(e) = target(Provider::Local, "faults") else {
        return;
    };
    sync_matches_local(e, Some(fault_profile()));
}
