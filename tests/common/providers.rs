//! The four storage back-ends as the reliability tests see them: the connector's
//! variables for each test server, reading back and listing what it stored (straight
//! from the server, never through the connector), and the checks every test ends with.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use spinoco_connector::Config;
use spinoco_connector::Emulator;
use spinoco_connector::Env;
use spinoco_connector::{open_store as open, BlobStore};

use super::archive;
use super::harness::{expected, guard_deletes_with, recording_deletes, scratch, unique};
use super::skip::server;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    Local,
    S3,
    Gcs,
    Azure,
}

impl Provider {
    pub fn name(self) -> &'static str {
        match self {
            Provider::Local => "local",
            Provider::S3 => "s3",
            Provider::Gcs => "gcs",
            Provider::Azure => "azure",
        }
    }
}

pub const AZURE_CONTAINER: &str = "spinoco-sync";
/// Azurite's published development account key (its README): not a secret.
pub const AZURITE_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// Where an S3 target's server keeps its files: the test's own variable, which the
/// connector ignores, so that listing reads the folder of the server the target names
/// (the script's or a private one, `common::s3fs`).
pub const S3_DATA_DIR: &str = "SPINOCO_TEST_S3_DATA_DIR";

pub fn vars(pairs: &[(&str, String)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

/// The provider's variables with a fresh prefix (a fresh folder for local), or `None`
/// when its test server is not running (outside the test script).
pub fn target(p: Provider, name: &str) -> Option<BTreeMap<String, String>> {
    let prefix = unique(&format!("rel-{name}"));
    let mut e = match p {
        Provider::Local => vars(&[(
            "SP_TASK_SYNC_SAVE_TO",
            scratch(&format!("rel-{name}")).display().to_string(),
        )]),
        Provider::S3 => vars(&[
            (
                "SP_TASK_SYNC_S3_ENDPOINT",
                server("SPINOCO_TEST_S3_ENDPOINT")?,
            ),
            ("SP_TASK_SYNC_S3_BUCKET", server("SPINOCO_TEST_S3_BUCKET")?),
            ("SP_TASK_SYNC_S3_REGION", "us-east-1".into()),
            ("AWS_ACCESS_KEY_ID", server("SPINOCO_TEST_S3_ACCESS_KEY")?),
            (
                "AWS_SECRET_ACCESS_KEY",
                server("SPINOCO_TEST_S3_SECRET_KEY")?,
            ),
            ("SP_TASK_SYNC_SAVE_TO", prefix),
            (S3_DATA_DIR, server(S3_DATA_DIR)?),
        ]),
        Provider::Gcs => vars(&[
            (
                "SP_TASK_SYNC_GCS_ENDPOINT",
                server("SPINOCO_TEST_GCS_ENDPOINT")?,
            ),
            (
                "SP_TASK_SYNC_GCS_BUCKET",
                server("SPINOCO_TEST_GCS_BUCKET")?,
            ),
            ("SP_TASK_SYNC_GCS_PROJECT", "test-project".into()),
            ("SP_TASK_SYNC_SAVE_TO", prefix),
        ]),
        Provider::Azure => {
            let dsn = server("SPINOCO_TEST_AZURITE_DSN")?;
            azure_container(&dsn);
            vars(&[
                ("SP_TASK_SYNC_AZURE_DSN", dsn),
                ("SP_TASK_SYNC_AZURE_CLIENT_NAME", AZURE_CONTAINER.into()),
                ("SP_TASK_SYNC_SAVE_TO", prefix),
            ])
        }
    };
    e.insert("SP_TASK_SYNC_STORAGE_PROVIDER".into(), p.name().into());
    Some(e)
}

/// Creates the test container through the provider itself (Azurite starts empty).
pub fn azure_container(dsn: &str) {
    use spinoco_connector::azure::{AzureSettings, AzureStore};
    let account = spinoco_connector::azure::parse_connection_string(dsn).unwrap();
    let settings = AzureSettings {
        account,
        container: AZURE_CONTAINER.into(),
        prefix: String::new(),
        block_size: 8 << 20,
        access_tier: None,
    };
    AzureStore::new(
        settings,
        spinoco_connector::agent(Duration::from_secs(10), 1),
        spinoco_connector::RetryBudget::tries(5),
    )
    .ensure_container()
    .unwrap();
}

pub fn provider_of(e: &BTreeMap<String, String>) -> Provider {
    match e
        .get("SP_TASK_SYNC_STORAGE_PROVIDER")
        .map(String::as_str)
        .unwrap_or("local")
    {
        "s3" => Provider::S3,
        "gcs" => Provider::Gcs,
        "azure" => Provider::Azure,
        _ => Provider::Local,
    }
}

/// The storage server's `http://host:port` as the connector is told it.
pub fn endpoint(e: &BTreeMap<String, String>) -> Option<String> {
    match provider_of(e) {
        Provider::Local => None,
        Provider::S3 => e.get("SP_TASK_SYNC_S3_ENDPOINT").cloned(),
        Provider::Gcs => e.get("SP_TASK_SYNC_GCS_ENDPOINT").cloned(),
        Provider::Azure => {
            let dsn = &e["SP_TASK_SYNC_AZURE_DSN"];
            let blob = dsn
                .split(';')
                .find_map(|p| p.strip_prefix("BlobEndpoint="))?;
            let rest = blob.strip_prefix("http://")?;
            Some(format!("http://{}", rest.split('/').next()?))
        }
    }
}

/// The same variables with the storage server's `http://host:port` replaced.
pub fn with_endpoint(e: &BTreeMap<String, String>, url: &str) -> BTreeMap<String, String> {
    let old = endpoint(e).expect("a cloud provider");
    e.iter()
        .map(|(k, v)| (k.clone(), v.replace(&old, url)))
        .collect()
}

pub fn open_store(e: &BTreeMap<String, String>) -> Box<dyn BlobStore> {
    open_store_with(e, 2)
}

/// [`open_store`] with an agent sized for `concurrency` workers.
pub fn open_store_with(e: &BTreeMap<String, String>, concurrency: usize) -> Box<dyn BlobStore> {
    let mut e = e.clone();
    for (k, v) in [
        ("SP_API_TOKEN", "unused"),
        ("SP_TASK_SYNC_TAG", "it"),
        ("SP_TASK_SYNC_FILE_NAME_TEMPLATE", "{{task_id}}"),
    ] {
        e.entry(k.into()).or_insert(v.into());
    }
    let cfg = Config::from_env(&Env::from_pairs(
        e.iter().map(|(k, v)| (k.as_str(), v.as_str())),
    ))
    .unwrap();
    open(
        &cfg.storage,
        &spinoco_connector::agent(Duration::from_secs(10), concurrency),
        spinoco_connector::RetryBudget::tries(5),
    )
    .unwrap()
}

/// At each DELETE, every file of the task must be readable from the storage with the
/// platform's bytes (read straight from the server, not through any proxy).
pub fn guard_via_store(emu: &Emulator, e: &BTreeMap<String, String>) {
    let store = open_store(e);
    guard_deletes_with(emu, move |name| store.get(name).ok().flatten());
}

/// Every object the server holds under the prefix, relative to it, the connector's own
/// `.spinoco-connector/` objects included, except the journal lease and its lock (a
/// connector that stopped leaves them behind by design: the lease marked released, the
/// local store's empty lock file). Listed from the server itself.
pub fn list_objects(e: &BTreeMap<String, String>) -> BTreeSet<String> {
    let mut all = list_all_objects(e);
    all.retain(|n| !is_lease(n) && !n.starts_with(archive::MANIFESTS));
    all
}

/// The archive manifests under the prefix (see [`verify`]).
pub fn list_manifests(e: &BTreeMap<String, String>) -> BTreeSet<String> {
    let mut all = list_all_objects(e);
    all.retain(|n| n.starts_with(archive::MANIFESTS));
    all
}

/// A journal lease object (`.spinoco-connector/<tag>.lease.json`) or the local store's
/// lock for conditional writes.
pub fn is_lease(name: &str) -> bool {
    name.starts_with(".spinoco-connector/")
        && (name.ends_with(".lease.json") || name == ".spinoco-connector/cas.lock")
}

fn list_all_objects(e: &BTreeMap<String, String>) -> BTreeSet<String> {
    let prefix = e
        .get("SP_TASK_SYNC_SAVE_TO")
        .cloned()
        .unwrap_or_default()
        .trim_matches('/')
        .to_string();
    match provider_of(e) {
        Provider::Local => walk(Path::new(&e["SP_TASK_SYNC_SAVE_TO"])),
        Provider::S3 => {
            let root = Path::new(&e[S3_DATA_DIR])
                .join(&e["SP_TASK_SYNC_S3_BUCKET"])
                .join(&prefix);
            if root.exists() {
                walk(&root)
            } else {
                BTreeSet::new()
            }
        }
        Provider::Gcs => {
            let base = format!(
                "{}/storage/v1/b/{}/o",
                e["SP_TASK_SYNC_GCS_ENDPOINT"], e["SP_TASK_SYNC_GCS_BUCKET"]
            );
            let mut out = BTreeSet::new();
            let mut token = String::new();
            loop {
                let url = format!("{base}?prefix={prefix}/&pageToken={token}");
                let v: Value = ureq::get(&url)
                    .call()
                    .unwrap()
                    .body_mut()
                    .read_json()
                    .unwrap();
                for item in v["items"].as_array().into_iter().flatten() {
                    let name = item["name"].as_str().unwrap();
                    out.insert(name[prefix.len() + 1..].to_string());
                }
                match v["nextPageToken"].as_str() {
                    Some(t) if !t.is_empty() => token = t.to_string(),
                    _ => return out,
                }
            }
        }
        Provider::Azure => {
            let blob = std::env::var("SPINOCO_TEST_AZURITE_BLOB").expect("azurite endpoint");
            let sas = spinoco_connector::azure::account_sas(
                "devstoreaccount1",
                AZURITE_KEY,
                "rl",
                "2099-01-01T00:00:00Z",
                "2021-08-06",
            )
            .unwrap();
            let mut out = BTreeSet::new();
            let mut marker = String::new();
            loop {
                let url = format!(
                    "{blob}/{AZURE_CONTAINER}?restype=container&comp=list&prefix={prefix}/&marker={marker}&{sas}"
                );
                let xml = ureq::get(&url)
                    .call()
                    .unwrap()
                    .body_mut()
                    .read_to_string()
                    .unwrap();
                for part in xml.split("<Name>").skip(1) {
                    let name = part.split("</Name>").next().unwrap().replace("&amp;", "&");
                    out.insert(name[prefix.len() + 1..].to_string());
                }
                match xml
                    .split("<NextMarker>")
                    .nth(1)
                    .and_then(|r| r.split("</NextMarker>").next())
                {
                    Some(m) if !m.is_empty() => marker = m.to_string(),
                    _ => return out,
                }
            }
        }
    }
}

fn walk(root: &Path) -> BTreeSet<String> {
    fn go(root: &Path, dir: &Path, out: &mut BTreeSet<String>) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                go(root, &p, out);
            } else {
                out.insert(p.strip_prefix(root).unwrap().to_string_lossy().to_string());
            }
        }
    }
    let mut out = BTreeSet::new();
    go(root, root, &mut out);
    out
}

/// What a finished run left, as counted by [`verify`].
#[derive(Debug, Default)]
pub struct Verified {
    pub files: usize,
    pub deletes: usize,
    /// Files of tasks lost in the contract's first-page window (see [`verify`]).
    pub window_lost: usize,
    /// The archive manifests found, and what they hold.
    pub manifests: archive::Manifests,
}

/// The end state every test wants: every handed-out file stored with the platform's
/// bytes (except files of tasks in `tolerated`, which the caller proved may have been
/// lost in the contract's first-page window), nothing else under the prefix (no temp,
/// partial or journal object), no delete refused by the guard, and every delete of a
/// stored task done.
pub fn verify(
    emu: &Emulator,
    e: &BTreeMap<String, String>,
    tolerated: &BTreeSet<String>,
) -> Verified {
    let store = open_store(e);
    let want = expected(emu);
    assert!(!want.is_empty(), "the emulator handed out nothing");
    let owner = file_owners(emu);
    let listed = list_objects(e);
    let mut v = Verified::default();
    let mut lost_tasks = BTreeSet::new();
    for (name, path) in &want {
        let bytes = emu.content(path).unwrap();
        match store.get(name).unwrap() {
            Some(got) => {
                assert!(
                    got == bytes,
                    "{name}: {} bytes stored, {} expected (or different bytes)",
                    got.len(),
                    bytes.len()
                );
                v.files += 1;
            }
            None if tolerated.contains(&owner[name]) => {
                v.window_lost += 1;
                lost_tasks.insert(owner[name].clone());
            }
            None => panic!(
                "{name} (task {}) is missing from {}",
                owner[name],
                provider_of(e).name()
            ),
        }
    }
    let stored: BTreeSet<String> = want
        .keys()
        .filter(|n| listed.contains(*n))
        .cloned()
        .collect();
    let extra: Vec<_> = listed.difference(&stored).collect();
    assert!(
        extra.is_empty(),
        "objects that should not be there (temp, partial or journal): {extra:?}"
    );
    assert_eq!(emu.violations(), Vec::<String>::new(), "premature deletes");
    let done: BTreeSet<String> = emu.deletes().into_iter().collect();
    let lost_deletes: BTreeSet<String> = emu
        .handed_out()
        .iter()
        .filter(|t| lost_tasks.contains(t["taskId"].as_str().unwrap_or("")))
        .flat_map(|t| t["delete"].as_array().cloned().unwrap_or_default())
        .filter_map(|d| d["path"].as_str().map(str::to_string))
        .collect();
    let should: BTreeSet<String> = recording_deletes(emu)
        .difference(&lost_deletes)
        .cloned()
        .collect();
    let not_done: Vec<_> = should.difference(&done).collect();
    assert!(not_done.is_empty(), "deletes not done: {not_done:?}");
    v.deletes = done.len();
    let manifests: Vec<(String, Vec<u8>)> = list_manifests(e)
        .into_iter()
        .map(|k| {
            let bytes = store.get(&k).unwrap().unwrap();
            (k, bytes)
        })
        .collect();
    v.manifests = archive::check(&manifests, |n| store.get(n).unwrap(), emu);
    v
}

/// fileName → the taskId that handed it out.
fn file_owners(emu: &Emulator) -> BTreeMap<String, String> {
    let mut map = BTreeMap::new();
    for t in emu.handed_out() {
        let id = t["taskId"].as_str().unwrap_or("?").to_string();
        for g in t["get"].as_array().cloned().unwrap_or_default() {
            map.entry(g["fileName"].as_str().unwrap_or("").to_string())
                .or_insert(id.clone());
        }
    }
    map
}

/// The faults the emulator injected so far, from its request log: 5xx and 429
/// answers, and bodies that did not go out whole (dropped, stalled, raw).
pub fn injected_faults(emu: &Emulator) -> usize {
    emu.requests()
        .iter()
        .filter(|r| r.status >= 500 || r.status == 429 || !r.complete)
        .count()
}

/// Appends one figure line to the suite's tally (printed at the end of tests/run.sh)
/// and to the test's output.
pub fn tally(line: &str) {
    use std::io::Write;
    let line = format!("RELIABILITY {line}\n");
    eprint!("{line}");
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join("reliability-tally.txt");
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        let _ = f.write_all(line.as_bytes());
    }
}
