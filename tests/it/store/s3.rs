//! The S3 store against s3s-fs (started by tests/servers/s3.sh), which checks SigV4
//! signatures: the shared behaviour, multipart uploads, aborts when the server dies
//! mid-upload, and refused credentials.
//!
//! s3s-fs cannot list multipart uploads (501), so leftovers are looked for in its data
//! folder, on a server of the test's own (`crate::common::s3fs`).

use std::io::{self, Read};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::common::behaviour;
use crate::common::data::{FailingReader, PatternReader};
use crate::common::harness::unique;
use crate::common::s3fs::{PrivateS3, BUCKET};
use crate::common::skip;
use spinoco_connector::s3::{S3Settings, S3Store};
use spinoco_connector::Env;
use spinoco_connector::RetryBudget;
use spinoco_connector::{put_bytes, BlobStore, StoreErrorKind};

const MIB: u64 = 1024 * 1024;

struct Server {
    endpoint: String,
    bucket: String,
    access_key: String,
    secret_key: String,
    data_dir: PathBuf,
}

fn server() -> Option<Server> {
    let endpoint = skip::server("SPINOCO_TEST_S3_ENDPOINT")?;
    let var = |name: &str| std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set"));
    Some(Server {
        endpoint,
        bucket: var("SPINOCO_TEST_S3_BUCKET"),
        access_key: var("SPINOCO_TEST_S3_ACCESS_KEY"),
        secret_key: var("SPINOCO_TEST_S3_SECRET_KEY"),
        data_dir: PathBuf::from(var("SPINOCO_TEST_S3_DATA_DIR")),
    })
}

fn settings(
    endpoint: &str,
    bucket: &str,
    access_key: &str,
    secret_key: &str,
    extra: &[(&str, &str)],
) -> S3Settings {
    let mut env = Env::from_pairs([
        ("SP_TASK_SYNC_S3_BUCKET", bucket),
        ("SP_TASK_SYNC_S3_REGION", "us-east-1"),
        ("SP_TASK_SYNC_S3_ENDPOINT", endpoint),
        ("SP_TASK_SYNC_SAVE_TO", "spinoco-tests"),
        ("SP_TASK_SYNC_S3_MULTIPART_THRESHOLD", "5MiB"),
        ("SP_TASK_SYNC_S3_PART_SIZE", "5MiB"),
        ("AWS_ACCESS_KEY_ID", access_key),
        ("AWS_SECRET_ACCESS_KEY", secret_key),
        ("AWS_EC2_METADATA_DISABLED", "true"),
    ]);
    for (k, v) in extra {
        env.set(k, v);
    }
    let mut errors = Vec::new();
    S3Settings::from_env(&env, &mut errors).unwrap_or_else(|| panic!("settings: {errors:?}"))
}

fn open(s: &S3Settings) -> S3Store {
    let agent = spinoco_connector::agent(Duration::from_secs(10), 4);
    S3Store::open(s, &agent, RetryBudget::tries(3)).unwrap()
}

/// A store on a private s3s-fs.
fn open_private(s3: &PrivateS3) -> S3Store {
    open(&settings(
        &s3.endpoint(),
        BUCKET,
        &s3.access_key,
        &s3.secret_key,
        &[],
    ))
}

/// The shared behaviour, multipart uploads included, and no upload left open.
#[test]
fn s3_store_behaves() {
    let Some(s3) = PrivateS3::start("behaves") else {
        return;
    };
    let store = open_private(&s3);
    // 12 MiB + 1: three parts of the 5 MiB part size.
    behaviour::run(&store, 12 * MIB + 1);
    assert_eq!(store.pending_aborts(), 0);
    assert_eq!(
        s3.open_uploads(),
        Vec::<String>::new(),
        "multipart uploads left open"
    );
}

/// Calls `check` once when `at` bytes have been read.
struct Probe<'a> {
    inner: PatternReader,
    read: u64,
    at: u64,
    check: Option<Box<dyn FnOnce() + 'a>>,
}

impl Read for Probe<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.read >= self.at {
            if let Some(check) = self.check.take() {
                check();
            }
        }
        // Stop a read at `at`, so the check runs exactly there.
        let room = if self.read < self.at {
            (self.at - self.read) as usize
        } else {
            buf.len()
        };
        let len = buf.len().min(room);
        let n = self.inner.read(&mut buf[..len])?;
        self.read += n as u64;
        Ok(n)
    }
}

/// Half-way through a multipart upload the old object is still the one served and an
/// upload is open; at the end the new bytes are whole and no upload is left open.
#[test]
fn s3_multipart_upload_is_complete_and_invisible_until_done() {
    let Some(s3) = PrivateS3::start("multipart") else {
        return;
    };
    let store = open_private(&s3);
    let key = format!("{}/multi.ogg", unique("multipart"));
    put_bytes(&store, &key, b"previous version").unwrap();
    // Four times the threshold and a bit, size unknown; half-way through, the old
    // object is still the one served and an upload is open on the server.
    let size = 20 * MIB + 12_345;
    let mut src = Probe {
        inner: PatternReader::new(size, 99),
        read: 0,
        at: 11 * MIB,
        check: Some(Box::new(|| {
            assert_eq!(
                store.get(&key).unwrap().as_deref(),
                Some(&b"previous version"[..])
            );
            assert!(
                !s3.open_uploads().is_empty(),
                "no multipart upload open mid-way"
            );
        })),
    };
    let t = Instant::now();
    assert_eq!(store.put(&key, &mut src, None).unwrap(), size);
    eprintln!("20 MiB multipart upload took {:?}", t.elapsed());
    assert!(src.check.is_none(), "the mid-way check did not run");
    let got = store.get(&key).unwrap().unwrap();
    assert!(got == PatternReader::bytes(size, 99), "bytes differ");
    // The same with a size hint.
    assert_eq!(
        store
            .put(&key, &mut PatternReader::new(size, 5), Some(size))
            .unwrap(),
        size
    );
    assert!(
        store.get(&key).unwrap().unwrap() == PatternReader::bytes(size, 5),
        "bytes differ"
    );
    store.delete(&key).unwrap();
    assert_eq!(s3.open_uploads(), Vec::<String>::new());
}

/// A wrong secret key is Denied on writes and reads, and neither secret is in the
/// message.
#[test]
fn s3_wrong_secret_is_denied_without_leaking_it() {
    let Some(srv) = server() else { return };
    let wrong = "wrong-secret-Zq8Xv2";
    let store = open(&settings(
        &srv.endpoint,
        &srv.bucket,
        &srv.access_key,
        wrong,
        &[],
    ));
    let err = put_bytes(&store, "denied/x.json", b"{}").unwrap_err();
    assert_eq!(err.kind, StoreErrorKind::Denied, "{err}");
    assert!(
        err.message.contains("SignatureDoesNotMatch") || err.message.contains("403"),
        "{err}"
    );
    let err2 = store.get("denied/x.json").unwrap_err();
    assert_eq!(err2.kind, StoreErrorKind::Denied, "{err2}");
    for text in [err.message, err2.message] {
        assert!(
            !text.contains(wrong) && !text.contains(&srv.secret_key),
            "{text}"
        );
    }
}

/// An upload cut by the server dying leaves no object; its parts are aborted before the
/// next upload once the server is back, and a broken source aborts at once.
#[test]
fn s3_upload_cut_by_a_dead_server_leaves_no_object_and_is_aborted_later() {
    let Some(s3) = PrivateS3::start("cut") else {
        return;
    };
    let store = open_private(&s3);
    let server = Mutex::new(s3);
    let key = "cut/recording.ogg";

    // The server dies after two parts of a 30 MiB stream.
    let mut src = Probe {
        inner: PatternReader::new(30 * MIB, 3),
        read: 0,
        at: 12 * MIB,
        check: Some(Box::new(|| server.lock().unwrap().kill())),
    };
    let err = store.put(key, &mut src, Some(30 * MIB)).unwrap_err();
    assert_eq!(err.kind, StoreErrorKind::Transient, "{err}");
    assert_eq!(
        store.pending_aborts(),
        1,
        "the abort cannot have reached a dead server"
    );

    server.lock().unwrap().restart();
    assert_eq!(
        store.get(key).unwrap(),
        None,
        "a cut upload must not be visible"
    );
    assert!(
        !server.lock().unwrap().open_uploads().is_empty(),
        "s3s-fs should still hold the parts"
    );
    // The next upload first aborts the one left open.
    put_bytes(&store, "cut/next.json", b"{}").unwrap();
    assert_eq!(store.pending_aborts(), 0);
    assert_eq!(
        server.lock().unwrap().open_uploads(),
        Vec::<String>::new(),
        "parts left behind"
    );
    assert_eq!(store.get(key).unwrap(), None);

    // A broken source aborts at once (the server is up): nothing stays open.
    let err = store
        .put(key, &mut FailingReader::new(11 * MIB), None)
        .unwrap_err();
    assert_eq!(err.kind, StoreErrorKind::Source);
    assert_eq!(
        server.lock().unwrap().open_uploads(),
        Vec::<String>::new(),
        "parts left behind after a source error"
    );
}

/// Peak memory while moving 500 MB of unknown size with the default part size
/// (8 MiB). Run under `/usr/bin/time -v` and read "Maximum resident set size":
/// `cargo test --release --test it -- --ignored --exact store::s3::s3_memory_500mb`.
#[test]
#[ignore]
fn s3_memory_500mb() {
    let Some(srv) = server() else { return };
    let store = open(&default_sizes(&srv));
    let size = 500_000_000;
    let t = Instant::now();
    assert_eq!(
        store
            .put("memory/500mb.bin", &mut PatternReader::new(size, 1), None)
            .unwrap(),
        size
    );
    eprintln!("500 MB streamed in {:?}", t.elapsed());
    let on_disk = srv
        .data_dir
        .join(&srv.bucket)
        .join("spinoco-tests/memory/500mb.bin");
    assert_eq!(std::fs::metadata(on_disk).unwrap().len(), size);
    store.delete("memory/500mb.bin").unwrap();
}

/// Peak memory of the largest single PUT (an object of the default 16 MiB threshold).
#[test]
#[ignore]
fn s3_memory_threshold_put() {
    let Some(srv) = server() else { return };
    let store = open(&default_sizes(&srv));
    let size = spinoco_connector::s3::DEFAULT_MULTIPART_THRESHOLD;
    store
        .put(
            "memory/threshold.bin",
            &mut PatternReader::new(size, 2),
            Some(size),
        )
        .unwrap();
    store.delete("memory/threshold.bin").unwrap();
}

fn default_sizes(srv: &Server) -> S3Settings {
    let mut s = settings(
        &srv.endpoint,
        &srv.bucket,
        &srv.access_key,
        &srv.secret_key,
        &[],
    );
    s.multipart_threshold = spinoco_connector::s3::DEFAULT_MULTIPART_THRESHOLD;
    s.part_size = spinoco_connector::s3::DEFAULT_PART_SIZE;
    s
}
