//! Azure Blob storage against Azurite: the shared behaviour through the account-key
//! and the SAS connection strings, block uploads, a refused key, a broken source.

use std::time::Duration;

use crate::common::alone;
use crate::common::behaviour;
use crate::common::codec::base64;
use crate::common::data::{FailingReader, PatternReader};
use crate::common::harness::{proc_status, unique};
use crate::common::skip::server;
use spinoco_connector::azure::{self as credential, DEV_ACCOUNT, DEV_KEY};
use spinoco_connector::azure::{AzureSettings, AzureStore};
use spinoco_connector::RetryBudget;
use spinoco_connector::{put_bytes, BlobStore, StoreErrorKind};

const CONTAINER: &str = "spinoco-tests";
/// Small blocks keep the block-upload paths fast.
const BLOCK: usize = 64 * 1024;

fn agent() -> ureq::Agent {
    spinoco_connector::agent(Duration::from_secs(30), 4)
}

fn key_dsn(endpoint: &str, key: &str) -> String {
    format!("DefaultEndpointsProtocol=http;AccountName={DEV_ACCOUNT};AccountKey={key};BlobEndpoint={endpoint};")
}

fn sas_dsn(endpoint: &str) -> String {
    let sas = credential::account_sas(
        DEV_ACCOUNT,
        DEV_KEY,
        "rwdlac",
        "2099-01-01T00:00:00Z",
        "2021-08-06",
    )
    .expect("the dev key is base64");
    format!("BlobEndpoint={endpoint};SharedAccessSignature={sas}")
}

fn store(dsn: &str, prefix: &str, block_size: usize) -> AzureStore {
    let account = credential::parse_connection_string(dsn).expect("valid connection string");
    let settings = AzureSettings {
        account,
        container: CONTAINER.to_string(),
        prefix: prefix.to_string(),
        block_size,
        access_tier: None,
    };
    AzureStore::new(settings, agent(), RetryBudget::tries(5))
}

/// The container exists for every test, whichever runs first.
fn key_store(endpoint: &str, block_size: usize) -> AzureStore {
    let s = store(&key_dsn(endpoint, DEV_KEY), "key-form", block_size);
    s.ensure_container().expect("create the test container");
    s
}

/// The shared behaviour through an account-key connection string, block uploads
/// included; creating the container twice says it exists.
#[test]
fn account_key_form_behaves() {
    let Some(endpoint) = server("SPINOCO_TEST_AZURITE_BLOB") else {
        return;
    };
    let s = key_store(&endpoint, BLOCK);
    assert!(
        !s.ensure_container().unwrap(),
        "second create reports an existing container"
    );
    behaviour::run(&s, 5 * BLOCK as u64 + 123);
}

/// The shared behaviour through a SAS connection string, whose description shows no
/// signature.
#[test]
fn sas_form_behaves() {
    let Some(endpoint) = server("SPINOCO_TEST_AZURITE_BLOB") else {
        return;
    };
    key_store(&endpoint, BLOCK);
    let s = store(&sas_dsn(&endpoint), "sas-form", BLOCK);
    assert!(
        s.describe().contains("SAS") && !s.describe().contains("sig="),
        "{}",
        s.describe()
    );
    behaviour::run(&s, 3 * BLOCK as u64 + 7);
}

/// `UseDevelopmentStorage=true` signs for the development account Azurite checks.
#[test]
fn development_storage_shortcut_names_the_same_account() {
    // UseDevelopmentStorage=true points at port 10000; the signature it makes must be
    // the one Azurite checks on our port, so swap only the endpoint.
    let Some(endpoint) = server("SPINOCO_TEST_AZURITE_BLOB") else {
        return;
    };
    key_store(&endpoint, BLOCK);
    let mut account = credential::parse_connection_string("UseDevelopmentStorage=true").unwrap();
    account.endpoint = endpoint;
    let settings = AzureSettings {
        account,
        container: CONTAINER.into(),
        prefix: "dev-form".into(),
        block_size: BLOCK,
        access_tier: None,
    };
    let s = AzureStore::new(settings, agent(), RetryBudget::tries(5));
    let key = unique("dev");
    put_bytes(&s, &key, b"hello").unwrap();
    assert_eq!(s.get(&key).unwrap().as_deref(), Some(&b"hello"[..]));
    s.delete(&key).unwrap();
}

/// Uploads of many blocks, with an exact and a ragged last block, and one with a size
/// hint smaller than the truth, come back byte for byte.
#[test]
fn many_blocks_round_trip_with_exact_and_ragged_ends() {
    let Some(endpoint) = server("SPINOCO_TEST_AZURITE_BLOB") else {
        return;
    };
    let block = 4096;
    let s = key_store(&endpoint, block);
    for (i, len) in [
        40 * block as u64,
        40 * block as u64 + 1,
        block as u64,
        block as u64 - 1,
    ]
    .into_iter()
    .enumerate()
    {
        let key = unique(&format!("blocks-{i}"));
        assert_eq!(
            s.put(&key, &mut PatternReader::new(len, i as u64), None)
                .unwrap(),
            len
        );
        let got = s.get(&key).unwrap().expect("blob present");
        assert_eq!(got.len() as u64, len);
        assert!(
            got == PatternReader::bytes(len, i as u64),
            "bytes differ for {len}"
        );
        s.delete(&key).unwrap();
    }
    // A size hint smaller than the truth still stores everything.
    let key = unique("short-hint");
    assert_eq!(
        s.put(&key, &mut PatternReader::new(3 * block as u64, 9), Some(10))
            .unwrap(),
        3 * block as u64
    );
    assert_eq!(
        s.get(&key).unwrap().unwrap(),
        PatternReader::bytes(3 * block as u64, 9)
    );
    s.delete(&key).unwrap();
}

/// A wrong account key is Denied at once on every operation, naming the container and
/// no part of either key.
#[test]
fn wrong_key_is_denied_without_key_material() {
    let Some(endpoint) = server("SPINOCO_TEST_AZURITE_BLOB") else {
        return;
    };
    key_store(&endpoint, BLOCK);
    let wrong = base64(b"definitely-not-the-devstoreaccount1-key-0123456789");
    let s = store(&key_dsn(&endpoint, &wrong), "wrong", BLOCK);
    let started = std::time::Instant::now();
    let errors = [
        put_bytes(&s, "x.txt", b"x").unwrap_err(),
        s.put(
            "big.ogg",
            &mut PatternReader::new(3 * BLOCK as u64, 1),
            None,
        )
        .unwrap_err(),
        s.get("x.txt").unwrap_err(),
        s.delete("x.txt").unwrap_err(),
    ];
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "a refusal must not be retried"
    );
    for err in errors {
        assert_eq!(err.kind, StoreErrorKind::Denied, "{err}");
        assert!(
            err.message.contains("the storage refused the credentials"),
            "{err}"
        );
        assert!(
            err.message.contains(CONTAINER),
            "names the container: {err}"
        );
        for secret in [wrong.as_str(), &wrong[..12], DEV_KEY, &DEV_KEY[..12]] {
            assert!(!err.message.contains(secret), "key material in {err}");
        }
    }
}

/// A SAS signed with a wrong key is Denied, and the message holds no signature.
#[test]
fn wrong_sas_is_denied_without_the_token() {
    let Some(endpoint) = server("SPINOCO_TEST_AZURITE_BLOB") else {
        return;
    };
    key_store(&endpoint, BLOCK);
    let wrong_key = base64(b"another-wrong-key");
    let sas = credential::account_sas(
        DEV_ACCOUNT,
        &wrong_key,
        "rwdlac",
        "2099-01-01T00:00:00Z",
        "2021-08-06",
    )
    .unwrap();
    let s = store(
        &format!("BlobEndpoint={endpoint};SharedAccessSignature={sas}"),
        "wrong-sas",
        BLOCK,
    );
    let err = put_bytes(&s, "x.txt", b"x").unwrap_err();
    assert_eq!(err.kind, StoreErrorKind::Denied, "{err}");
    let sig = sas.split("sig=").nth(1).unwrap();
    assert!(
        !err.message.contains(sig) && !err.message.contains("sig="),
        "{err}"
    );
}

/// A source that breaks after several staged blocks leaves no blob, and the same name
/// then uploads cleanly.
#[test]
fn failed_source_mid_block_upload_leaves_no_blob() {
    let Some(endpoint) = server("SPINOCO_TEST_AZURITE_BLOB") else {
        return;
    };
    let s = key_store(&endpoint, BLOCK);
    let key = unique("broken");
    // Several blocks are staged before the source breaks.
    let err = s
        .put(&key, &mut FailingReader::new(4 * BLOCK as u64 + 10), None)
        .unwrap_err();
    assert_eq!(err.kind, StoreErrorKind::Source, "{err}");
    assert_eq!(
        s.get(&key).unwrap(),
        None,
        "uncommitted blocks must not form a blob"
    );
    // The same name then uploads cleanly: stale uncommitted blocks do not leak in.
    let len = 2 * BLOCK as u64 + 5;
    s.put(&key, &mut PatternReader::new(len, 3), None).unwrap();
    assert_eq!(s.get(&key).unwrap().unwrap(), PatternReader::bytes(len, 3));
    s.delete(&key).unwrap();
}

/// A container that does not exist is Denied, named in the message.
#[test]
fn missing_container_is_reported_by_name() {
    let Some(endpoint) = server("SPINOCO_TEST_AZURITE_BLOB") else {
        return;
    };
    let account = credential::parse_connection_string(&key_dsn(&endpoint, DEV_KEY)).unwrap();
    let settings = AzureSettings {
        account,
        container: "no-such-container".into(),
        prefix: String::new(),
        block_size: BLOCK,
        access_tier: None,
    };
    let s = AzureStore::new(settings, agent(), RetryBudget::tries(5));
    let err = put_bytes(&s, "x.txt", b"x").unwrap_err();
    assert_eq!(err.kind, StoreErrorKind::Denied, "{err}");
    assert!(
        err.message.contains("no-such-container") && err.message.contains("does not exist"),
        "{err}"
    );
}

/// Peak resident memory of this process so far, from /proc (Linux).
fn peak_rss_bytes() -> Option<u64> {
    proc_status("self", "VmHWM:").map(|kb| kb * 1024)
}

/// A 12-block upload raises the peak memory of the process by less than three blocks.
#[test]
fn large_upload_holds_about_one_block_in_memory() {
    let Some(endpoint) = server("SPINOCO_TEST_AZURITE_BLOB") else {
        return;
    };
    if !alone::in_own_process(
        module_path!(),
        "large_upload_holds_about_one_block_in_memory",
    ) {
        return;
    }
    let block = spinoco_connector::azure::DEFAULT_BLOCK_SIZE;
    let s = key_store(&endpoint, block);
    let len = 12 * block as u64 + 99;
    let before = peak_rss_bytes().expect("/proc/self/status");
    let key = unique("memory");
    assert_eq!(
        s.put(&key, &mut PatternReader::new(len, 5), Some(len))
            .unwrap(),
        len
    );
    let grew = peak_rss_bytes().unwrap().saturating_sub(before);
    eprintln!("uploading {len} bytes in {block}-byte blocks raised the peak RSS by {grew} bytes");
    // One block buffer plus slack.
    assert!(
        grew < 3 * block as u64,
        "peak memory grew by {grew} bytes for a {len}-byte upload"
    );
    s.delete(&key).unwrap();
}
