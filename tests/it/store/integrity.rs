//! What the shared REST layer promises on the wire, against the real test servers
//! through the test's TCP proxy: a byte flipped on the way is refused (or caught) and
//! the part sent again, never stored; one TCP connection per worker for a whole run;
//! and S3's CompleteMultipartUpload whose answer is lost counts as stored.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use crate::common::data::PatternReader;
use crate::common::providers::{
    endpoint, open_store, open_store_with, target, with_endpoint, Provider,
};
use crate::common::proxy::TcpProxy;

const MIB: u64 = 1024 * 1024;

/// A provider's variables straight to its server and through an inspecting proxy.
struct Proxied {
    direct: BTreeMap<String, String>,
    proxied: BTreeMap<String, String>,
    proxy: TcpProxy,
}

fn via_proxy(p: Provider, name: &str) -> Option<Proxied> {
    let direct = target(p, name)?;
    let upstream = endpoint(&direct).unwrap();
    let proxy = TcpProxy::start_inspecting(upstream.trim_start_matches("http://"));
    let proxied = with_endpoint(&direct, &proxy.url());
    Some(Proxied {
        direct,
        proxied,
        proxy,
    })
}

fn pattern(len: u64, seed: u64) -> Vec<u8> {
    let mut out = Vec::new();
    std::io::Read::read_to_end(&mut PatternReader::new(len, seed), &mut out).unwrap();
    out
}

/// One flipped byte in a single PUT and in a part: the upload still succeeds (sent
/// again) and what the server holds is the source, byte for byte.
fn corrupted_bytes_are_never_stored(p: Provider) {
    let Some(Proxied {
        direct,
        proxied,
        proxy,
    }) = via_proxy(p, "corrupt")
    else {
        return;
    };
    let store = open_store(&proxied);
    let reader = open_store(&direct);
    for (key, len) in [("single.ogg", 300_000u64), ("parts.ogg", 20 * MIB)] {
        let before = proxy.corrupted.load(Ordering::SeqCst);
        proxy.corrupt_next_body(200_000);
        let bytes = pattern(len, 7);
        let stored = store.put(key, &mut &bytes[..], Some(len)).unwrap();
        assert_eq!(stored, len, "{p:?} {key}");
        assert_eq!(
            proxy.corrupted.load(Ordering::SeqCst),
            before + 1,
            "{p:?} {key}: nothing was corrupted"
        );
        let back = reader.get(key).unwrap().unwrap();
        assert!(
            back == bytes,
            "{p:?} {key}: the server holds other bytes than the source"
        );
        store.delete(key).unwrap();
    }
}

/// [`corrupted_bytes_are_never_stored`] on S3.
#[test]
fn s3_corrupted_bytes_are_never_stored() {
    corrupted_bytes_are_never_stored(Provider::S3);
}

/// [`corrupted_bytes_are_never_stored`] on Azure.
#[test]
fn azure_corrupted_bytes_are_never_stored() {
    corrupted_bytes_are_never_stored(Provider::Azure);
}

/// fake-gcs-server checks no hash: the single upload is caught by comparing the
/// answer's crc32c and sent again; real GCS refuses the x-goog-hash itself.
#[test]
fn gcs_corrupted_single_upload_is_sent_again() {
    let Some(Proxied {
        direct,
        proxied,
        proxy,
    }) = via_proxy(Provider::Gcs, "corrupt")
    else {
        return;
    };
    let store = open_store(&proxied);
    let reader = open_store(&direct);
    proxy.corrupt_next_body(200_000);
    let bytes = pattern(300_000, 9);
    store
        .put("single.ogg", &mut &bytes[..], Some(300_000))
        .unwrap();
    assert_eq!(proxy.corrupted.load(Ordering::SeqCst), 1);
    assert!(reader.get("single.ogg").unwrap().unwrap() == bytes);
}

/// Four workers, three multipart objects each, one store: the connections the proxy
/// accepted stay at about one per worker (keep-alive), not one per request.
fn one_connection_per_worker(p: Provider) {
    let Some(Proxied { proxied, proxy, .. }) = via_proxy(p, "conns") else {
        return;
    };
    let workers = 4;
    let store = open_store_with(&proxied, workers);
    let requests = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|s| {
        for w in 0..workers {
            let (store, requests) = (&store, &requests);
            s.spawn(move || {
                for i in 0..3 {
                    let len = 17 * MIB + i;
                    let key = format!("w{w}/o{i}.ogg");
                    store
                        .put(&key, &mut PatternReader::new(len, w as u64), Some(len))
                        .unwrap();
                    requests.fetch_add(5, Ordering::SeqCst);
                    store.delete(&key).unwrap();
                }
            });
        }
    });
    let accepted = proxy.accepted.load(Ordering::SeqCst);
    println!(
        "{p:?}: {accepted} connections for {} requests or more",
        requests.load(Ordering::SeqCst)
    );
    assert!(
        accepted <= workers + 2,
        "{p:?}: {accepted} connections for {workers} workers"
    );
}

/// [`one_connection_per_worker`] on S3.
#[test]
fn s3_one_connection_per_worker() {
    one_connection_per_worker(Provider::S3);
}

/// [`one_connection_per_worker`] on GCS.
#[test]
fn gcs_one_connection_per_worker() {
    one_connection_per_worker(Provider::Gcs);
}

/// [`one_connection_per_worker`] on Azure.
#[test]
fn azure_one_connection_per_worker() {
    one_connection_per_worker(Provider::Azure);
}

/// The proxy forwards CompleteMultipartUpload, lets s3s-fs complete it, and cuts the
/// connection before the answer: the retry finds the upload gone, the HEAD finds the
/// object, and the put counts as stored.
#[test]
fn s3_lost_complete_answer_counts_as_stored() {
    let Some(Proxied {
        direct,
        proxied,
        proxy,
    }) = via_proxy(Provider::S3, "lost-complete")
    else {
        return;
    };
    let store = open_store(&proxied);
    proxy.cut_after("POST", "uploadId=");
    let len = 17 * MIB;
    let bytes = pattern(len, 3);
    assert_eq!(
        store.put("big.ogg", &mut &bytes[..], Some(len)).unwrap(),
        len
    );
    assert_eq!(
        proxy.cut.load(Ordering::SeqCst),
        1,
        "the Complete answer was not cut"
    );
    assert!(open_store(&direct).get("big.ogg").unwrap().unwrap() == bytes);
}
