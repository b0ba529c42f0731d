//! The storage behaviour every provider must show, run against each one's real server.

use std::io::{self, Read};

use spinoco_connector::store::{put_bytes, BlobStore, StoreErrorKind};

/// Deterministic bytes of a given length, produced while read (never held whole).
pub struct PatternReader {
    left: u64,
    state: u64,
}

impl PatternReader {
    pub fn new(len: u64, seed: u64) -> PatternReader {
        PatternReader {
            left: len,
            state: seed | 1,
        }
    }

    pub fn bytes(len: u64, seed: u64) -> Vec<u8> {
        let mut v = Vec::with_capacity(len as usize);
        PatternReader::new(len, seed).read_to_end(&mut v).unwrap();
        v
    }
}

impl Read for PatternReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = (buf.len() as u64).min(self.left) as usize;
        for b in &mut buf[..n] {
            self.state ^= self.state << 13;
            self.state ^= self.state >> 7;
            self.state ^= self.state << 17;
            *b = self.state as u8;
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// Gives `good` bytes, then fails like a dropped download.
pub struct FailingReader {
    inner: PatternReader,
    good: u64,
}

impl FailingReader {
    pub fn new(good: u64) -> FailingReader {
        FailingReader {
            inner: PatternReader::new(u64::MAX, 7),
            good,
        }
    }
}

impl Read for FailingReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.good == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "download cut off (test)",
            ));
        }
        let n = (buf.len() as u64).min(self.good) as usize;
        self.good -= n as u64;
        self.inner.read(&mut buf[..n])
    }
}

pub fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{prefix}-{}-{nanos}", std::process::id())
}

/// The shared behaviour. `large` is the size of the streamed object: choose it above
/// the provider's multipart / block / resumable threshold.
pub fn run(store: &dyn BlobStore, large: u64) {
    let base = unique("behaviour");
    let key = format!("{base}/a.txt");

    // Missing objects.
    assert_eq!(store.get(&key).unwrap(), None, "get of a missing object");
    store
        .delete(&key)
        .expect("delete of a missing object is fine");

    // Round trip, overwrite, delete.
    assert_eq!(put_bytes(store, &key, b"first").unwrap(), 5);
    assert_eq!(store.get(&key).unwrap().as_deref(), Some(&b"first"[..]));
    put_bytes(store, &key, b"second, longer").unwrap();
    assert_eq!(
        store.get(&key).unwrap().as_deref(),
        Some(&b"second, longer"[..]),
        "overwrite"
    );
    store.delete(&key).unwrap();
    assert_eq!(store.get(&key).unwrap(), None, "deleted");
    store.delete(&key).unwrap();

    // Empty object and a name with non-ASCII characters and spaces.
    let odd = format!("{base}/ž/ü file (1).ogg");
    put_bytes(store, &odd, b"").unwrap();
    assert_eq!(
        store.get(&odd).unwrap().as_deref(),
        Some(&b""[..]),
        "empty object under {odd}"
    );

    // A broken source leaves nothing new visible and keeps the old object.
    let broken = format!("{base}/broken.ogg");
    let err = store
        .put(&broken, &mut FailingReader::new(300_000), None)
        .unwrap_err();
    assert_eq!(err.kind, StoreErrorKind::Source, "broken source: {err}");
    assert_eq!(
        store.get(&broken).unwrap(),
        None,
        "a broken upload must not be visible"
    );
    put_bytes(store, &broken, b"old").unwrap();
    let err = store
        .put(&broken, &mut FailingReader::new(large + 1), None)
        .unwrap_err();
    assert_eq!(
        err.kind,
        StoreErrorKind::Source,
        "broken large source: {err}"
    );
    assert_eq!(
        store.get(&broken).unwrap().as_deref(),
        Some(&b"old"[..]),
        "old object kept"
    );

    // A large object, streamed, with and without a size hint.
    for (i, hint) in [Some(large), None].into_iter().enumerate() {
        let big = format!("{base}/big-{i}.ogg");
        let n = store
            .put(&big, &mut PatternReader::new(large, 42 + i as u64), hint)
            .unwrap();
        assert_eq!(n, large);
        let got = store.get(&big).unwrap().expect("large object present");
        assert!(
            got == PatternReader::bytes(large, 42 + i as u64),
            "large object bytes differ"
        );
        store.delete(&big).unwrap();
    }

    // Parallel puts to different keys.
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let base = &base;
            s.spawn(move || {
                let k = format!("{base}/parallel/{t}.bin");
                store
                    .put(&k, &mut PatternReader::new(100_000, t), None)
                    .unwrap();
                assert_eq!(
                    store.get(&k).unwrap().unwrap(),
                    PatternReader::bytes(100_000, t)
                );
            });
        }
    });

    for k in [odd, broken] {
        store.delete(&k).unwrap();
    }
    for t in 0..4 {
        store.delete(&format!("{base}/parallel/{t}.bin")).unwrap();
    }
}

/// The address of a test server the test script started, or `None` to skip when run
/// outside it. Under the test script (`SPINOCO_TEST_REQUIRE_SERVERS=1`) a missing
/// server is a failure, never a silent skip.
pub fn server(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => Some(v),
        _ if std::env::var("SPINOCO_TEST_REQUIRE_SERVERS").as_deref() == Ok("1") => {
            panic!("{var} is not set: the test script should have started this server")
        }
        _ => {
            eprintln!(
                "skipped: {var} is not set (run the README's test command to start the servers)"
            );
            None
        }
    }
}
