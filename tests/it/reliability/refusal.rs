//! The storage refusing us: wrong credentials, a read-only mount, a missing bucket or
//! container, a credential that may read but not write, at a first start and between
//! two rounds. A clear error, exit 5, nothing deleted, and the feed asked nothing while
//! the journal cannot be written, so the platform's cursor has not moved.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::common::harness::*;
use crate::common::providers::*;
use crate::common::proxy::{Mode, TcpProxy};
use crate::common::tmpfs::Tmpfs;
use spinoco_connector::EmulatorConfig;

use super::{env_for, feed_requests};

/// The storage refuses our credentials: a clear error, nothing deleted, exit 5.
fn storage_refuses(p: Provider) {
    let Some(t) = target(p, "denied") else { return };
    let emu = emulator(EmulatorConfig {
        tasks: 8,
        seed: 3,
        recording_size: (1_000, 20_000),
        ..Default::default()
    });
    let mut bad = t.clone();
    let mut _proxy = None;
    let mut _ro = None;
    match p {
        Provider::S3 => {
            bad.insert(
                "AWS_SECRET_ACCESS_KEY".into(),
                "not-the-secret-key-0123".into(),
            );
        }
        Provider::Azure => {
            let dsn = &t["SP_TASK_SYNC_AZURE_DSN"];
            let key = dsn
                .split(';')
                .find_map(|p| p.strip_prefix("AccountKey="))
                .unwrap();
            let wrong = "d3Jvbmcta2V5LXdyb25nLWtleS13cm9uZy1rZXktd3Jvbmcta2V5LXdyb25nLWtleQ==";
            bad.insert("SP_TASK_SYNC_AZURE_DSN".into(), dsn.replace(key, wrong));
        }
        Provider::Gcs => {
            // fake-gcs-server checks no credentials: a proxy answers 403 for it.
            let proxy = TcpProxy::start(endpoint(&t).unwrap().trim_start_matches("http://"));
            proxy.set(Mode::Forbid);
            bad = with_endpoint(&t, &proxy.url());
            _proxy = Some(proxy);
        }
        Provider::Local => {
            let Some(fs) = Tmpfs::mount("readonly", "size=1m,ro") else {
                return;
            };
            bad.insert(
                "SP_TASK_SYNC_SAVE_TO".into(),
                fs.path().display().to_string(),
            );
            _ro = Some(fs);
        }
    }
    let out = run(&env_for(&emu, &bad), &["--once"]);
    let text = text(&out);
    assert_eq!(out.status.code(), Some(5), "{text}");
    assert!(
        text.contains("the storage refused access") || text.contains("cannot open the storage"),
        "{text}"
    );
    assert!(
        !text.contains("not-the-secret-key"),
        "secret leaked: {text}"
    );
    assert_eq!(
        emu.deletes(),
        Vec::<String>::new(),
        "deleted without storing"
    );
    if p != Provider::Local {
        let stored: Vec<_> = list_objects(&t)
            .into_iter()
            .filter(|n| !n.starts_with(".spinoco-connector/"))
            .collect();
        assert!(stored.is_empty(), "stored despite the refusal: {stored:?}");
    }
    tally(&format!(
        "test=storage-refuses provider={} faults_injected=1 exit=5 files_lost=0 premature_deletes=0",
        p.name()
    ));
}

/// [`storage_refuses`]: S3 with a wrong secret key.
#[test]
fn storage_refuses_s3_wrong_secret() {
    storage_refuses(Provider::S3);
}

/// [`storage_refuses`]: Azure with a wrong account key.
#[test]
fn storage_refuses_azure_wrong_key() {
    storage_refuses(Provider::Azure);
}

/// [`storage_refuses`]: GCS answering 403 (the test's proxy).
#[test]
fn storage_refuses_gcs_403() {
    storage_refuses(Provider::Gcs);
}

/// [`storage_refuses`]: a read-only local folder.
#[test]
fn storage_refuses_local_read_only() {
    storage_refuses(Provider::Local);
}

/// A storage that opens (its folders exist) but cannot take the journal must not
/// consume the feed. The run exits 5 with zero feed requests, so the platform's cursor
/// has not moved; after the fix a second start stores every task.
#[test]
fn journal_refused_at_round_start_asks_the_feed_nothing_local() {
    let Some(fs) = Tmpfs::mount("journal-ro", "size=16m") else {
        return;
    };
    let root = fs.path().join("root");
    std::fs::create_dir_all(root.join(".spinoco-connector/tmp")).unwrap();
    fs.remount("ro");
    let tasks = 8;
    let emu = emulator(EmulatorConfig {
        tasks,
        seed: 4,
        recording_size: (1_000, 20_000),
        ..Default::default()
    });
    let t = vars(&[("SP_TASK_SYNC_SAVE_TO", root.display().to_string())]);
    guard_via_store(&emu, &t);
    let e = env_for(&emu, &t);
    let out = run(&e, &["--once"]);
    let log = text(&out);
    assert_eq!(out.status.code(), Some(5), "{log}");
    assert!(log.contains("the storage refused access"), "{log}");
    assert_eq!(
        feed_requests(&emu),
        0,
        "the feed was asked while the storage refused the journal: {log}"
    );
    assert!(emu.handed_out().is_empty());
    fs.remount("rw");
    let out = run(&e, &["--once"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        emu.handed_out().len(),
        tasks,
        "every task came after the fix"
    );
    let v = verify(&emu, &t, &BTreeSet::new());
    tally(&format!(
        "test=journal-refused-at-round-start provider=local faults_injected=1 exit=5 feed_requests_while_refused=0 files={} deletes={} files_lost=0 premature_deletes=0",
        v.files, v.deletes
    ));
}

/// How a cloud storage cannot take the journal at a first start.
enum Broken {
    /// A name with a typo in `var`: the `kind` (bucket, container) does not exist.
    Typo {
        var: &'static str,
        kind: &'static str,
    },
    /// A credential that may read but not write (the test's proxy refuses writes).
    ReadOnly,
}

/// A first start with a cloud storage that cannot take the journal (a bucket name with
/// a typo, a container that does not exist, a read-only credential): exit 5 saying so,
/// and the feed is asked nothing, so the platform's cursor has not moved; a second
/// start after the fix stores every task.
fn journal_refused_at_round_start_cloud(p: Provider, broken: Broken) {
    let Some(t) = target(p, "journal-refused") else {
        return;
    };
    let tasks = 8;
    let emu = emulator(EmulatorConfig {
        tasks,
        seed: 5,
        recording_size: (1_000, 20_000),
        ..Default::default()
    });
    guard_via_store(&emu, &t);
    let proxy = TcpProxy::start_inspecting(endpoint(&t).unwrap().trim_start_matches("http://"));
    let (bad, said) = match broken {
        Broken::Typo { var, kind } => {
            let typo = format!("{}-typo", &t[var]);
            let said = format!("{var}={typo:?}: the {kind} does not exist");
            let mut bad = t.clone();
            bad.insert(var.into(), typo);
            (bad, said)
        }
        Broken::ReadOnly => {
            proxy.set(Mode::ForbidPut);
            (
                with_endpoint(&t, &proxy.url()),
                "the storage refused access".into(),
            )
        }
    };
    let out = run(&env_for(&emu, &bad), &["--once"]);
    let log = text(&out);
    assert_eq!(out.status.code(), Some(5), "{log}");
    assert!(log.contains(&said), "{said:?} not in {log}");
    assert_eq!(feed_requests(&emu), 0, "the feed was asked: {log}");
    assert!(emu.handed_out().is_empty());
    let out = run(&env_for(&emu, &t), &["--once"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        emu.handed_out().len(),
        tasks,
        "every task came after the fix"
    );
    let v = verify(&emu, &t, &BTreeSet::new());
    tally(&format!(
        "test=journal-refused-at-round-start provider={} faults_injected=1 exit=5 feed_requests_while_refused=0 files={} deletes={} files_lost=0 premature_deletes=0",
        p.name(),
        v.files,
        v.deletes
    ));
}

/// [`journal_refused_at_round_start_cloud`]: S3 with a credential that may read but not
/// write.
#[test]
fn journal_refused_at_round_start_asks_the_feed_nothing_s3_read_only_credential() {
    journal_refused_at_round_start_cloud(Provider::S3, Broken::ReadOnly);
}

/// [`journal_refused_at_round_start_cloud`]: a GCS bucket name with a typo.
#[test]
fn journal_refused_at_round_start_asks_the_feed_nothing_gcs_missing_bucket() {
    journal_refused_at_round_start_cloud(
        Provider::Gcs,
        Broken::Typo {
            var: "SP_TASK_SYNC_GCS_BUCKET",
            kind: "bucket",
        },
    );
}

/// [`journal_refused_at_round_start_cloud`]: an Azure container that does not exist.
#[test]
fn journal_refused_at_round_start_asks_the_feed_nothing_azure_missing_container() {
    journal_refused_at_round_start_cloud(
        Provider::Azure,
        Broken::Typo {
            var: "SP_TASK_SYNC_AZURE_CLIENT_NAME",
            kind: "container",
        },
    );
}

/// The storage stops taking writes while a service waits between rounds (a credential
/// rotated to read-only, a mount gone read-only), after it took the journal lease: the
/// next round's proof fails (exit 5) before the feed is asked again, so the tasks added
/// meanwhile stay with the platform; a restart after the fix stores them. This is the
/// test that fails when the proof is moved after the first feed request of a round
/// (at the first start, the journal lease already refuses such a storage).
#[test]
fn storage_refusing_writes_between_rounds_stops_before_the_feed_is_asked() {
    let Some(fs) = Tmpfs::mount("journal-later-ro", "size=32m") else {
        return;
    };
    let root = fs.path().join("root");
    let tasks = 6;
    let emu = emulator(EmulatorConfig {
        tasks,
        seed: 6,
        recording_size: (1_000, 20_000),
        ..Default::default()
    });
    let t = vars(&[("SP_TASK_SYNC_SAVE_TO", root.display().to_string())]);
    guard_via_store(&emu, &t);
    let mut e = env_for(&emu, &t);
    e.insert("SP_TASK_SYNC_POLL_INTERVAL".into(), "3s".into());
    e.insert("SP_LOG_LEVEL".into(), "debug".into());
    let log = scratch("journal-later-ro-log").join("connector.log");
    let mut child = spawn(&e, &[], &log);
    let idle = || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .matches("feed drained; next round in")
            .count()
    };
    wait_until("the first round done", Duration::from_secs(60), || {
        idle() >= 1
    });
    fs.remount("ro");
    let asked_before = feed_requests(&emu);
    let later = "b808d74e-84b2-11ef-b864-0242ac120009";
    let meta = format!("/task/{later}/meta");
    emu.inject_task(
        serde_json::json!({"taskId": later,
            "get": [{"dataType": "CallMetadata", "path": meta, "fileName": "x.meta.json"}], "delete": []}),
        vec![(meta.clone(), b"{}".to_vec())],
    );
    let status = child.wait().unwrap();
    let said = std::fs::read_to_string(&log).unwrap();
    assert_eq!(status.code(), Some(5), "{said}");
    assert!(said.contains("the storage refused access"), "{said}");
    assert_eq!(
        feed_requests(&emu),
        asked_before,
        "the feed was asked while the storage refused the journal: {said}"
    );
    fs.remount("rw");
    let out = run(&e, &["--once"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        emu.handed_out().len(),
        tasks + 1,
        "the later task came after the fix"
    );
    verify(&emu, &t, &BTreeSet::new());
}
