//! A full `--once` sync into each cloud provider's test server stores exactly what
//! local storage stores: the same names under the prefix, the same bytes.

mod common;

use std::collections::BTreeMap;

use common::behaviour::{server, unique};
use common::harness::*;
use spinoco_connector::config::{Config, Env};
use spinoco_connector::emulator::EmulatorConfig;
use spinoco_connector::store::{self, BlobStore};

fn account() -> EmulatorConfig {
    EmulatorConfig {
        tasks: 30,
        seed: 23,
        recording_size: (2_000, 80_000),
        redeliver: 0.1,
        ..Default::default()
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

/// Syncs a same-seed emulator into the provider configured by `provider_env`, then
/// reads every object back through the provider and compares with local storage.
fn sync_matches_local(provider_env: BTreeMap<String, String>) {
    let emu = emulator(account());
    let mut e = env(&emu, &scratch("unused"));
    let prefix = unique("sync");
    e.insert("SP_TASK_SYNC_SAVE_TO".into(), prefix.clone());
    e.extend(provider_env);
    guard_via_store(&emu, &e);
    let out = run(&e, &["--once"]);
    assert!(out.status.success(), "{}", text(&out));

    let store = open_store(&e);
    let reference = local_reference();
    assert_eq!(reference.len(), expected(&emu).len());
    for (name, bytes) in &reference {
        let got = store
            .get(name)
            .unwrap()
            .unwrap_or_else(|| panic!("{name} missing under {prefix}"));
        assert!(
            &got == bytes,
            "{name}: bytes differ ({} vs {})",
            got.len(),
            bytes.len()
        );
    }
    assert_eq!(
        store.get(".spinoco-connector/it.page.json").unwrap(),
        None,
        "journal left"
    );
    assert_eq!(emu.violations(), Vec::<String>::new(), "premature deletes");
    let done: std::collections::BTreeSet<String> = emu.deletes().into_iter().collect();
    assert_eq!(done, recording_deletes(&emu));
}

fn open_store(e: &BTreeMap<String, String>) -> Box<dyn BlobStore> {
    let cfg = Config::from_env(&Env::from_pairs(
        e.iter().map(|(k, v)| (k.as_str(), v.as_str())),
    ))
    .unwrap();
    store::open(
        &cfg.storage,
        &spinoco_connector::http::agent(cfg.http_timeout, 2),
    )
    .unwrap()
}

/// At each DELETE, every file of the task must be readable from the provider with
/// the platform's bytes.
fn guard_via_store(emu: &spinoco_connector::emulator::Emulator, e: &BTreeMap<String, String>) {
    let store = open_store(e);
    let contents = emu.content_source();
    emu.set_delete_guard(Box::new(move |task: &serde_json::Value| {
        task["get"].as_array().is_some_and(|gets| {
            gets.iter().all(|g| {
                let name = g["fileName"].as_str().unwrap_or("");
                let path = g["path"].as_str().unwrap_or("");
                matches!((store.get(name), contents(path)), (Ok(Some(got)), Some(want)) if got == want)
            })
        })
    }));
}

fn vars(pairs: &[(&str, String)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

#[test]
fn gcs_sync_matches_local() {
    let (Some(endpoint), Some(bucket)) = (
        server("SPINOCO_TEST_GCS_ENDPOINT"),
        server("SPINOCO_TEST_GCS_BUCKET"),
    ) else {
        return;
    };
    sync_matches_local(vars(&[
        ("SP_TASK_SYNC_STORAGE_PROVIDER", "gcs".into()),
        ("SP_TASK_SYNC_GCS_ENDPOINT", endpoint),
        ("SP_TASK_SYNC_GCS_BUCKET", bucket),
        ("SP_TASK_SYNC_GCS_PROJECT", "test-project".into()),
    ]));
}

const AZURE_CONTAINER: &str = "spinoco-sync";

/// Creates the test container through the provider itself (Azurite starts empty).
fn azure_container(dsn: &str) {
    use spinoco_connector::store::azure::{AzureSettings, AzureStore};
    let account = spinoco_connector::store::azure_auth::parse_connection_string(dsn).unwrap();
    let settings = AzureSettings {
        account,
        container: AZURE_CONTAINER.into(),
        prefix: String::new(),
        block_size: 8 << 20,
    };
    AzureStore::new(
        settings,
        spinoco_connector::http::agent(std::time::Duration::from_secs(10), 1),
    )
    .ensure_container()
    .unwrap();
}

#[test]
fn azure_sync_matches_local_with_an_account_key() {
    let Some(dsn) = server("SPINOCO_TEST_AZURITE_DSN") else {
        return;
    };
    azure_container(&dsn);
    sync_matches_local(vars(&[
        ("SP_TASK_SYNC_STORAGE_PROVIDER", "azure".into()),
        ("SP_TASK_SYNC_AZURE_DSN", dsn),
        ("SP_TASK_SYNC_AZURE_CLIENT_NAME", AZURE_CONTAINER.into()),
    ]));
}

#[test]
fn azure_sync_matches_local_with_a_sas() {
    let (Some(dsn), Some(endpoint)) = (
        server("SPINOCO_TEST_AZURITE_DSN"),
        server("SPINOCO_TEST_AZURITE_BLOB"),
    ) else {
        return;
    };
    azure_container(&dsn);
    let sas = spinoco_connector::store::azure_auth::account_sas(
        "devstoreaccount1",
        AZURITE_KEY,
        "rwdlac",
        "2099-01-01T00:00:00Z",
        "2021-08-06",
    )
    .unwrap();
    sync_matches_local(vars(&[
        ("SP_TASK_SYNC_STORAGE_PROVIDER", "azure".into()),
        (
            "SP_TASK_SYNC_AZURE_DSN",
            format!("BlobEndpoint={endpoint};SharedAccessSignature={sas}"),
        ),
        ("SP_TASK_SYNC_AZURE_CLIENT_NAME", AZURE_CONTAINER.into()),
    ]));
}

/// Azurite's published development account key (its README): not a secret.
const AZURITE_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

#[test]
fn s3_sync_matches_local() {
    let (Some(endpoint), Some(bucket), Some(key), Some(secret)) = (
        server("SPINOCO_TEST_S3_ENDPOINT"),
        server("SPINOCO_TEST_S3_BUCKET"),
        server("SPINOCO_TEST_S3_ACCESS_KEY"),
        server("SPINOCO_TEST_S3_SECRET_KEY"),
    ) else {
        return;
    };
    sync_matches_local(vars(&[
        ("SP_TASK_SYNC_STORAGE_PROVIDER", "s3".into()),
        ("SP_TASK_SYNC_S3_ENDPOINT", endpoint),
        ("SP_TASK_SYNC_S3_BUCKET", bucket),
        ("SP_TASK_SYNC_S3_REGION", "us-east-1".into()),
        ("AWS_ACCESS_KEY_ID", key),
        ("AWS_SECRET_ACCESS_KEY", secret),
    ]));
}
