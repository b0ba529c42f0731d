//! The GCS store against fake-gcs-server (started by tests/servers/gcs.sh): the shared
//! behaviour, a resumable upload that survives a connection dropped mid-chunk, and a
//! broken source that leaves nothing behind.

use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::common::behaviour;
use crate::common::data::{FailingReader, PatternReader};
use crate::common::harness::unique;
use crate::common::proxy::TcpProxy;
use crate::common::skip;
use spinoco_connector::gcs::Credentials;
use spinoco_connector::gcs::{GcsSettings, GcsStore};
use spinoco_connector::RetryBudget;
use spinoco_connector::{BlobStore, StoreErrorKind};

const CHUNK: usize = 256 * 1024;

fn settings(endpoint: &str, bucket: &str) -> GcsSettings {
    GcsSettings {
        bucket: bucket.to_string(),
        project: "spinoco-test-project".to_string(),
        prefix: unique("gcs-test"),
        endpoint: endpoint.trim_end_matches('/').to_string(),
        credentials: Credentials::Anonymous,
        chunk_size: CHUNK,
        options: Default::default(),
    }
}

fn server() -> Option<(String, String)> {
    let endpoint = skip::server("SPINOCO_TEST_GCS_ENDPOINT")?;
    let bucket = skip::server("SPINOCO_TEST_GCS_BUCKET")?;
    Some((endpoint, bucket))
}

fn agent() -> ureq::Agent {
    spinoco_connector::agent(Duration::from_secs(10), 4)
}

/// The shared behaviour, resumable uploads of several chunks included.
#[test]
fn gcs_store_behaves() {
    let Some((endpoint, bucket)) = server() else {
        return;
    };
    let store = GcsStore::open(
        &settings(&endpoint, &bucket),
        &agent(),
        RetryBudget::tries(4),
    )
    .unwrap();
    // Several chunks and a short last one.
    behaviour::run(&store, 3 * CHUNK as u64 + 12_345);
}

/// A source that breaks in the sixth chunk of a resumable upload leaves no object.
#[test]
fn broken_source_in_a_later_chunk_leaves_no_object() {
    let Some((endpoint, bucket)) = server() else {
        return;
    };
    let store = GcsStore::open(
        &settings(&endpoint, &bucket),
        &agent(),
        RetryBudget::tries(4),
    )
    .unwrap();
    let err = store
        .put(
            "cut.ogg",
            &mut FailingReader::new(5 * CHUNK as u64 + 1000),
            None,
        )
        .unwrap_err();
    assert_eq!(err.kind, StoreErrorKind::Source, "{err}");
    assert_eq!(
        store.get("cut.ogg").unwrap(),
        None,
        "a broken resumable upload must not be visible"
    );
}

/// A connection cut in the middle of a chunk: the resumable upload goes on, and the
/// object is complete.
#[test]
fn resumable_upload_survives_a_dropped_chunk() {
    let Some((endpoint, bucket)) = server() else {
        return;
    };
    let size = 12 * CHUNK as u64 + 777;
    // Cut in the middle of the fifth chunk's body.
    let proxy = TcpProxy::start_inspecting(endpoint.trim_start_matches("http://"));
    proxy.cut_body_after(4 * CHUNK as u64 + CHUNK as u64 / 2);
    let via_proxy = settings(&proxy.url(), &bucket);
    let direct = GcsSettings {
        prefix: via_proxy.prefix.clone(),
        ..settings(&endpoint, &bucket)
    };
    let store = GcsStore::open(&via_proxy, &agent(), RetryBudget::tries(4)).unwrap();
    let n = store
        .put("long.ogg", &mut PatternReader::new(size, 99), None)
        .unwrap();
    assert_eq!(n, size);
    assert_eq!(
        proxy.cut.load(Ordering::SeqCst),
        1,
        "the proxy never cut a connection: nothing was tested"
    );
    let reader = GcsStore::open(&direct, &agent(), RetryBudget::tries(4)).unwrap();
    let got = reader
        .get("long.ogg")
        .unwrap()
        .expect("object present after the resumed upload");
    assert_eq!(got.len() as u64, size, "length after the resumed upload");
    assert!(
        got == PatternReader::bytes(size, 99),
        "bytes differ after the resumed upload"
    );
    reader.delete("long.ogg").unwrap();
}
