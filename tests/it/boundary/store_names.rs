//! Two tasks never share a name in cloud storage, and GCS sends its token only to its
//! own origin.
//!
//! Path-safing folds the task ids `a/b` and `a_b` into the same name. A second task
//! that replaced the first one's recording would have both recordings deleted on the
//! platform, so each cloud store refuses to replace an object whose task-id metadata
//! names another task. The two tasks come in two runs here, so that nothing the engine
//! keeps in memory can tell: only the store's own check can. Against the real test
//! servers (s3s-fs, fake-gcs-server, Azurite).

use std::collections::BTreeMap;
use std::io::Read;
use std::net::TcpListener;
use std::process::Output;
use std::sync::{Arc, Mutex};

use spinoco_connector::{BlobStore, ObjectInfo, StoreErrorKind};

use crate::common::fake_http::{FakeServer, Request};
use crate::common::harness::{env_for_url, run, scratch, text};
use crate::common::hostile::{call_task, HostilePlatform};
use crate::common::providers::{endpoint, open_store, target, with_endpoint, Provider};
use crate::common::proxy::{DelayingProxy, TcpProxy};

/// The name the test template gives both tasks (their due date is the same, and both
/// ids become `a_b`); the platform's `fileName` is the same.
const NAME: &str = "2004/12/01/20041201120000-a_b";

/// One `--once` run of the connector against a hostile platform that hands out one
/// call task with `recording`.
struct Run {
    out: Output,
    platform: HostilePlatform,
}

fn sync_task(storage: &BTreeMap<String, String>, task_id: &str, recording: &[u8]) -> Run {
    let platform = HostilePlatform::start();
    let (task, contents) = call_task(task_id, NAME, recording);
    platform.add_task(task, contents);
    let mut e = env_for_url(&platform.url, &scratch("store-names"));
    e.extend(storage.clone());
    let out = run(&e, &["--once"]);
    Run { out, platform }
}

fn recording_of(store: &dyn BlobStore) -> Option<Vec<u8>> {
    store.get(&format!("{NAME}.ogg")).unwrap()
}

/// Task `a/b` stores its files; task `a_b`, a run later, comes to the same names and
/// is refused: nothing of it is stored, its recording is not deleted, the run exits 1
/// naming both tasks. Task `a/b` delivered again replaces its own files and is deleted.
fn second_task_never_overwrites_the_first(p: Provider) {
    let Some(storage) = target(p, "names") else {
        return;
    };
    let store = open_store(&storage);
    let first = sync_task(&storage, "a/b", b"the recording of task a/b");
    assert!(first.out.status.success(), "{}", text(&first.out));
    assert_eq!(first.platform.deletes(), ["/recording/a/b/r1"]);

    let second = sync_task(&storage, "a_b", b"another call: the recording of task a_b");
    let log = text(&second.out);
    assert_eq!(second.out.status.code(), Some(1), "{p:?}: {log}");
    assert_eq!(
        second.platform.deletes(),
        Vec::<String>::new(),
        "{p:?}: {log}"
    );
    assert!(
        log.contains(&format!(
            r#""{NAME}.ogg" is already stored for task "a/b"; another task ("a_b") must not overwrite it"#
        )),
        "{p:?}: {log}"
    );
    assert_eq!(
        recording_of(store.as_ref()).as_deref(),
        Some(&b"the recording of task a/b"[..]),
        "{p:?}: the first task's recording was replaced"
    );
    let meta = store.get(&format!("{NAME}.meta.json")).unwrap().unwrap();
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&meta).unwrap()["taskId"],
        "a/b",
        "{p:?}: the first task's metadata was replaced"
    );

    let again = sync_task(
        &storage,
        "a/b",
        b"the recording of task a/b, delivered again",
    );
    assert!(again.out.status.success(), "{p:?}: {}", text(&again.out));
    assert_eq!(again.platform.deletes(), ["/recording/a/b/r1"]);
    assert_eq!(
        recording_of(store.as_ref()).as_deref(),
        Some(&b"the recording of task a/b, delivered again"[..])
    );
}

#[test]
fn s3_second_task_never_overwrites_the_first() {
    second_task_never_overwrites_the_first(Provider::S3);
}

#[test]
fn gcs_second_task_never_overwrites_the_first() {
    second_task_never_overwrites_the_first(Provider::Gcs);
}

#[test]
fn azure_second_task_never_overwrites_the_first() {
    second_task_never_overwrites_the_first(Provider::Azure);
}

fn info(task_id: &str) -> ObjectInfo {
    ObjectInfo {
        task_id: task_id.into(),
        data_type: "Recordings".into(),
    }
}

/// The store alone, small, middle and large objects (one request, and parts or chunks
/// or blocks): an object without a task id (the official connector's, or one put there
/// by hand) is replaced by a task, and then only that task replaces it.
fn store_keeps_each_name_for_its_task(p: Provider) {
    let Some(storage) = target(p, "names-store") else {
        return;
    };
    let store = open_store(&storage);
    // The middle size goes up in one request, too large to fit the socket's buffers:
    // a store that refuses the condition must be able to say so before the body.
    for (key, len) in [
        ("small.ogg", 1_000usize),
        ("middle.ogg", 4 << 20),
        ("large.ogg", 9 << 20),
    ] {
        let bytes = |seed: u8| -> Vec<u8> { (0..len).map(|i| (i as u8) ^ seed).collect() };
        let put = |seed: u8, task: &str| {
            let data = bytes(seed);
            store.put_with(key, &mut &data[..], Some(len as u64), &info(task))
        };
        store
            .put(key, &mut &bytes(1)[..], Some(len as u64))
            .unwrap();
        put(2, "task-1").unwrap();
        put(3, "task-1").unwrap();
        let refused = put(4, "task-2").unwrap_err();
        assert_eq!(
            refused.kind,
            StoreErrorKind::Rejected,
            "{p:?} {key}: {refused}"
        );
        assert!(
            refused
                .message
                .contains(r#"task "task-1"; another task ("task-2")"#),
            "{p:?} {key}: {refused}"
        );
        assert!(
            store.get(key).unwrap().unwrap() == bytes(3),
            "{p:?} {key}: another task's bytes are stored"
        );
        store.delete(key).unwrap();
        put(5, "task-2").unwrap();
        assert!(store.get(key).unwrap().unwrap() == bytes(5), "{p:?} {key}");
        store.delete(key).unwrap();
    }
}

#[test]
fn s3_store_keeps_each_name_for_its_task() {
    store_keeps_each_name_for_its_task(Provider::S3);
}

#[test]
fn gcs_store_keeps_each_name_for_its_task() {
    store_keeps_each_name_for_its_task(Provider::Gcs);
}

#[test]
fn azure_store_keeps_each_name_for_its_task() {
    store_keeps_each_name_for_its_task(Provider::Azure);
}

/// The common case, a new name, costs the one upload it cost before the check; a name
/// the same task holds already costs two more requests (the failed conditional create,
/// the metadata read, the replace on the version read). Counted by a proxy.
fn a_new_name_costs_one_request(p: Provider, expected: [&str; 4]) {
    let Some(direct) = target(p, "names-cost") else {
        return;
    };
    let upstream = endpoint(&direct).unwrap();
    let proxy = DelayingProxy::start(
        upstream.trim_start_matches("http://"),
        std::time::Duration::ZERO,
    );
    let store = open_store(&with_endpoint(&direct, &proxy.url()));
    let data = vec![7u8; 1_000];
    store
        .put_with("new.ogg", &mut &data[..], Some(1_000), &info("t"))
        .unwrap();
    let methods = || -> Vec<String> { proxy.requests().into_iter().map(|(m, _)| m).collect() };
    assert_eq!(methods(), expected[..1], "{p:?}: {:?}", proxy.requests());
    store
        .put_with("new.ogg", &mut &data[..], Some(1_000), &info("t"))
        .unwrap();
    assert_eq!(methods(), expected, "{p:?}: {:?}", proxy.requests());
}

#[test]
fn s3_a_new_name_costs_one_request() {
    a_new_name_costs_one_request(Provider::S3, ["PUT", "PUT", "HEAD", "PUT"]);
}

#[test]
fn gcs_a_new_name_costs_one_request() {
    a_new_name_costs_one_request(Provider::Gcs, ["POST", "POST", "GET", "POST"]);
}

#[test]
fn azure_a_new_name_costs_one_request() {
    a_new_name_costs_one_request(Provider::Azure, ["PUT", "PUT", "HEAD", "PUT"]);
}

/// A listener that records everything sent to it and answers nothing: the other origin.
struct Trap {
    url: String,
    received: Arc<Mutex<Vec<u8>>>,
}

fn trap() -> Trap {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let received = Arc::new(Mutex::new(Vec::new()));
    let log = received.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let _ = stream.set_read_timeout(Some(std::time::Duration::from_millis(500)));
            let mut buf = [0u8; 4096];
            if let Ok(n) = stream.read(&mut buf) {
                log.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        }
    });
    Trap { url, received }
}

/// GCS through a proxy that names the resumable session on another origin (as a
/// hostile or broken front end could): the upload is refused naming that origin, and
/// nothing, above all not the bearer token, reaches it. The same proxy naming its own
/// origin (as a reverse proxy does) uploads as before, with the token.
#[test]
fn gcs_session_on_another_origin_gets_no_token() {
    let Some(direct) = target(Provider::Gcs, "session-origin") else {
        return;
    };
    let tokens = FakeServer::start(Box::new(|_: &Request| {
        (
            200,
            r#"{"access_token":"tok-5ecret","expires_in":3599}"#.into(),
        )
    }));
    let credentials = scratch("session-origin").join("adc.json");
    let file = serde_json::json!({
        "type": "authorized_user",
        "client_id": "c",
        "client_secret": "s",
        "refresh_token": "r",
        "token_uri": format!("{}/token", tokens.url),
    });
    std::fs::write(&credentials, file.to_string()).unwrap();
    let proxy = TcpProxy::start(endpoint(&direct).unwrap().trim_start_matches("http://"));
    let mut proxied = with_endpoint(&direct, &proxy.url());
    proxied.insert(
        "GOOGLE_APPLICATION_CREDENTIALS".into(),
        credentials.display().to_string(),
    );
    proxied.insert("SP_TASK_SYNC_GCS_CHUNK_SIZE".into(), "256K".into());
    let store = open_store(&proxied);
    let data: Vec<u8> = (0..600_000u32).map(|i| (i % 251) as u8).collect();

    let elsewhere = trap();
    proxy.set_location_origin(&elsewhere.url);
    let err = store
        .put_with("large.ogg", &mut &data[..], Some(600_000), &info("t"))
        .unwrap_err();
    assert_eq!(err.kind, StoreErrorKind::Rejected, "{err}");
    assert!(
        err.message.contains(&elsewhere.url) && !err.message.contains("tok-5ecret"),
        "{err}"
    );
    std::thread::sleep(std::time::Duration::from_millis(200));
    let received = elsewhere.received.lock().unwrap().clone();
    assert!(
        received.is_empty(),
        "sent to the other origin: {}",
        String::from_utf8_lossy(&received)
    );
    assert!(!tokens.requests().is_empty(), "no token was used at all");

    proxy.set_location_origin(&proxy.url());
    store
        .put_with("large.ogg", &mut &data[..], Some(600_000), &info("t"))
        .unwrap();
    assert!(open_store(&direct).get("large.ogg").unwrap().unwrap() == data);
}
