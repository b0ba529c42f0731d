//! The storage behaviour every provider must show, run against each one's real server.

use spinoco_connector::{put_bytes, BlobStore, StoreErrorKind};

use super::data::{FailingReader, PatternReader};
use super::harness::unique;

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
