//! The GCS store against fake-gcs-server (started by tests/servers/gcs.sh): the shared
//! behaviour, a resumable upload that survives a connection dropped mid-chunk, and a
//! broken source that leaves nothing behind.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::common::behaviour;
use crate::common::data::{FailingReader, PatternReader};
use crate::common::harness::unique;
use crate::common::skip;
use spinoco_connector::retry::RetryBudget;
use spinoco_connector::store::gcs::{GcsSettings, GcsStore};
use spinoco_connector::store::gcs_auth::Credentials;
use spinoco_connector::store::{BlobStore, StoreErrorKind};

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
    spinoco_connector::http::agent(Duration::from_secs(10), 4)
}

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

/// A TCP proxy in front of fake-gcs-server that cuts the connection once, in the
/// middle of a request body, after `cut_after` bytes went to the server in total.
/// fake-gcs names itself in the `Location` of a resumable session, so the proxy
/// rewrites that header to keep the session's chunks coming through it.
struct Proxy {
    port: u16,
    drops: Arc<AtomicUsize>,
}

impl Proxy {
    fn start(upstream: &str, cut_after: u64) -> Proxy {
        let upstream_addr = upstream
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_string();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let drops = Arc::new(AtomicUsize::new(0));
        let sent = Arc::new(AtomicU64::new(0));
        let armed = Arc::new(AtomicBool::new(true));
        let from = format!("\r\nLocation: http://{upstream_addr}/");
        let to = format!("\r\nLocation: http://127.0.0.1:{port}/");
        let d = drops.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { break };
                let server = TcpStream::connect(&upstream_addr).unwrap();
                let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                let (sent, armed, drops) = (sent.clone(), armed.clone(), d.clone());
                // Client to server, counting bytes; cut once past the mark.
                std::thread::spawn(move || {
                    let (mut client, mut server) = (client, server);
                    let mut buf = vec![0u8; 16 * 1024];
                    loop {
                        let n = match client.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        let total = sent.fetch_add(n as u64, Ordering::SeqCst) + n as u64;
                        if total > cut_after && armed.swap(false, Ordering::SeqCst) {
                            drops.fetch_add(1, Ordering::SeqCst);
                            break;
                        }
                        if server.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = client.shutdown(Shutdown::Both);
                    let _ = server.shutdown(Shutdown::Both);
                });
                // Server to client, rewriting the session's Location. A possible start of
                // the pattern is held back until more comes or the server pauses.
                let (from, to) = (from.clone(), to.clone());
                std::thread::spawn(move || {
                    let (mut server, mut client) = (s2, c2);
                    server
                        .set_read_timeout(Some(Duration::from_millis(20)))
                        .unwrap();
                    let mut pending: Vec<u8> = Vec::new();
                    let mut buf = vec![0u8; 16 * 1024];
                    loop {
                        match server.read(&mut buf) {
                            Ok(0) => break,
                            Ok(n) => {
                                pending.extend_from_slice(&buf[..n]);
                                pending = replace_bytes(&pending, from.as_bytes(), to.as_bytes());
                                let cut = pending.len().saturating_sub(from.len() - 1);
                                if client.write_all(&pending[..cut]).is_err() {
                                    break;
                                }
                                pending.drain(..cut);
                            }
                            Err(e)
                                if matches!(
                                    e.kind(),
                                    ErrorKind::WouldBlock | ErrorKind::TimedOut
                                ) =>
                            {
                                if client.write_all(&pending).is_err() {
                                    break;
                                }
                                pending.clear();
                            }
                            Err(_) => break,
                        }
                    }
                    let _ = client.write_all(&pending);
                    let _ = client.shutdown(Shutdown::Both);
                });
            }
        });
        Proxy { port, drops }
    }
}

fn replace_bytes(data: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len());
    let mut i = 0;
    while i < data.len() {
        if data[i..].starts_with(from) {
            out.extend_from_slice(to);
            i += from.len();
        } else {
            out.push(data[i]);
            i += 1;
        }
    }
    out
}

#[test]
fn resumable_upload_survives_a_dropped_chunk() {
    let Some((endpoint, bucket)) = server() else {
        return;
    };
    let size = 12 * CHUNK as u64 + 777;
    // Cut in the middle of the fifth chunk's body.
    let proxy = Proxy::start(&endpoint, 4 * CHUNK as u64 + CHUNK as u64 / 2);
    let via_proxy = settings(&format!("http://127.0.0.1:{}", proxy.port), &bucket);
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
        proxy.drops.load(Ordering::SeqCst),
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
