//! Conditional writes (the journal lease's base) and missing buckets or containers,
//! on every provider against its real test server: what each server honours is
//! asserted, so a server that stops honouring a condition fails here.

use crate::common::providers::{open_store, target, Provider};
use spinoco_connector::{
    honours_conditions, put_bytes, BlobStore, PutCondition, PutIf, StoreErrorKind,
};

fn store(p: Provider, name: &str) -> Option<Box<dyn BlobStore>> {
    target(p, name).map(|e| open_store(&e))
}

/// IfAbsent twice, IfMatch with the right and a stale version, and the probe.
fn conditions(store: &dyn BlobStore) {
    let key = ".spinoco-connector/lease-test.json";
    store.delete(key).unwrap();
    assert_eq!(store.get_versioned(key).unwrap().map(|v| v.bytes), None);
    let PutIf::Written(v1) = store.put_if(key, b"one", PutCondition::IfAbsent).unwrap() else {
        panic!("the first IfAbsent must write");
    };
    assert_eq!(
        store.put_if(key, b"two", PutCondition::IfAbsent).unwrap(),
        PutIf::ConditionFailed,
        "IfAbsent over an existing object"
    );
    let read = store.get_versioned(key).unwrap().unwrap();
    assert_eq!((read.bytes.as_slice(), &read.version), (&b"one"[..], &v1));
    let PutIf::Written(v2) = store
        .put_if(key, b"three", PutCondition::IfMatch(v1.clone()))
        .unwrap()
    else {
        panic!("IfMatch with the current version must write");
    };
    assert_ne!(v1, v2);
    assert_eq!(
        store
            .put_if(key, b"four", PutCondition::IfMatch(v1))
            .unwrap(),
        PutIf::ConditionFailed,
        "IfMatch with a stale version"
    );
    assert_eq!(store.get(key).unwrap().as_deref(), Some(&b"three"[..]));
    store.delete(key).unwrap();
    assert!(honours_conditions(store, ".spinoco-connector/probe").unwrap());
}

/// [`conditions`] on local storage.
#[test]
fn local_honours_conditions() {
    conditions(store(Provider::Local, "cond").unwrap().as_ref());
}

/// [`conditions`] on s3s-fs.
#[test]
fn s3_honours_conditions() {
    let Some(s) = store(Provider::S3, "cond") else {
        return;
    };
    conditions(s.as_ref());
}

/// [`conditions`] on fake-gcs-server.
#[test]
fn gcs_honours_conditions() {
    let Some(s) = store(Provider::Gcs, "cond") else {
        return;
    };
    conditions(s.as_ref());
}

/// [`conditions`] on Azurite.
#[test]
fn azure_honours_conditions() {
    let Some(s) = store(Provider::Azure, "cond") else {
        return;
    };
    conditions(s.as_ref());
}

/// A missing bucket or container names the variable and the value, and is Denied
/// (exit 5) on the journal's first read and write.
fn missing(p: Provider, var: &str, value: &str, noun: &str) {
    let Some(mut e) = target(p, "missing") else {
        return;
    };
    e.insert(var.into(), value.into());
    let s = open_store(&e);
    let expected = format!("{var}=\"{value}\": the {noun} does not exist");
    for err in [
        s.get(".spinoco-connector/x.page.json").unwrap_err(),
        put_bytes(s.as_ref(), ".spinoco-connector/x.page.json", b"{}").unwrap_err(),
    ] {
        assert_eq!(err.kind, StoreErrorKind::Denied, "{err}");
        assert!(err.message.starts_with(&expected), "{err}");
    }
}

/// [`missing`]: a GCS bucket with a typo.
#[test]
fn gcs_missing_bucket_is_named() {
    missing(
        Provider::Gcs,
        "SP_TASK_SYNC_GCS_BUCKET",
        "bucket-typo",
        "bucket",
    );
}

/// [`missing`]: an Azure container with a typo.
#[test]
fn azure_missing_container_is_named() {
    missing(
        Provider::Azure,
        "SP_TASK_SYNC_AZURE_CLIENT_NAME",
        "container-typo",
        "container",
    );
}

/// s3s-fs creates a missing bucket, so the test's proxy answers like AWS does.
#[test]
fn s3_missing_bucket_is_named() {
    use crate::common::providers::{endpoint, with_endpoint};
    use crate::common::proxy::{Mode, TcpProxy};
    let Some(t) = target(Provider::S3, "missing") else {
        return;
    };
    let proxy = TcpProxy::start(endpoint(&t).unwrap().trim_start_matches("http://"));
    proxy.set(Mode::NoSuchBucket);
    let mut e = with_endpoint(&t, &proxy.url());
    e.insert("SP_TASK_SYNC_S3_BUCKET".into(), "bucket-typo".into());
    let s = open_store(&e);
    let expected = "SP_TASK_SYNC_S3_BUCKET=\"bucket-typo\": the bucket does not exist";
    for err in [
        s.get(".spinoco-connector/x.page.json").unwrap_err(),
        put_bytes(s.as_ref(), ".spinoco-connector/x.page.json", b"{}").unwrap_err(),
        s.delete("x").unwrap_err(),
    ] {
        assert_eq!(err.kind, StoreErrorKind::Denied, "{err}");
        assert!(err.message.starts_with(expected), "{err}");
    }
}

/// The proxy mode the engine's "storage cannot take the journal" tests use: reads
/// pass, writes are refused (a credential that may read but not write) on every cloud
/// provider, and the refusal is Denied (exit 5).
#[test]
fn reads_pass_and_writes_are_denied_behind_forbid_put() {
    use crate::common::providers::{endpoint, with_endpoint};
    use crate::common::proxy::{Mode, TcpProxy};
    for p in [Provider::S3, Provider::Gcs, Provider::Azure] {
        let Some(t) = target(p, "forbid-put") else {
            continue;
        };
        let proxy = TcpProxy::start_inspecting(endpoint(&t).unwrap().trim_start_matches("http://"));
        proxy.set(Mode::ForbidPut);
        let s = open_store(&with_endpoint(&t, &proxy.url()));
        assert_eq!(
            s.get(".spinoco-connector/x.page.json").unwrap(),
            None,
            "{p:?}"
        );
        let err = put_bytes(s.as_ref(), ".spinoco-connector/x.page.json", b"{}").unwrap_err();
        assert_eq!(err.kind, StoreErrorKind::Denied, "{p:?}: {err}");
    }
}
