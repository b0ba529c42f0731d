//! Local storage: the shared behaviour, and a folder below the root on another file
//! system.

use crate::common::harness::scratch;
use crate::common::tmpfs::Tmpfs;
use spinoco_connector::BlobStore;
use spinoco_connector::LocalStore;

/// The shared behaviour, and no temp file left.
#[test]
fn local_store_behaves() {
    let root = scratch("store-local");
    let store = LocalStore::open(&root).unwrap();
    crate::common::behaviour::run(&store, 8 * 1024 * 1024);
    let temp = root.join(".spinoco-connector/tmp");
    assert_eq!(
        std::fs::read_dir(temp).unwrap().count(),
        0,
        "temp files left behind"
    );
    std::fs::remove_dir_all(root).unwrap();
}

/// A target folder on another file system (a tmpfs mounted below the root) gets its
/// file through that file system's own temp folder: nothing partial is ever beside the
/// user's files, and a killed run's leftovers there are swept by the lease holder.
#[test]
fn another_file_system_below_the_root_never_shows_a_partial_file() {
    let root = scratch("store-xfs");
    let mnt = root.join("2024");
    std::fs::create_dir_all(&mnt).unwrap();
    let Some(_tmpfs) = Tmpfs::mount_on(mnt.clone(), "size=16m") else {
        return;
    };
    let store = LocalStore::open(&root).unwrap();
    // A source that checks, halfway, that nothing is in the mount's user folders yet.
    struct Watch {
        left: usize,
        dir: std::path::PathBuf,
        seen: Vec<String>,
    }
    impl std::io::Read for Watch {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            if self.left == 0 {
                return Ok(0);
            }
            if self.left <= 100_000 && self.seen == ["not read"] {
                self.seen = user_files(&self.dir);
            }
            let n = buf.len().min(self.left).min(100_000);
            buf[..n].fill(b'x');
            self.left -= n;
            Ok(n)
        }
    }
    let mut src = Watch {
        left: 300_000,
        dir: mnt.clone(),
        seen: vec!["not read".into()],
    };
    assert_eq!(store.put("2024/01/a.ogg", &mut src, None).unwrap(), 300_000);
    assert_eq!(
        src.seen,
        Vec::<String>::new(),
        "something was visible mid-write"
    );
    assert_eq!(std::fs::read(mnt.join("01/a.ogg")).unwrap().len(), 300_000);
    assert_eq!(user_files(&mnt), vec!["01/a.ogg".to_string()]);
    // The copy went through the mount's own temp folder, listed for the sweep.
    let listed = std::fs::read_to_string(root.join(".spinoco-connector/temp-dirs")).unwrap();
    let near = mnt.join(".spinoco-connector/tmp");
    assert_eq!(listed.trim(), near.display().to_string());
    assert_eq!(
        std::fs::read_dir(&near).unwrap().count(),
        0,
        "the copy's temp file stayed"
    );
    // A killed run of tag "t" leaves a temp file in the mount's own temp folder: swept
    // once the next run holds the lease of the tag.
    let left = mnt.join(".spinoco-connector/tmp/t.fedcba9876543210.7.part");
    std::fs::write(&left, b"partial").unwrap();
    drop(store);
    let store = LocalStore::open(&root).unwrap();
    assert!(left.exists(), "opening a store swept a temp file");
    store.sweep_leftovers("t", None);
    assert!(
        !left.exists(),
        "the leftover on the other file system was not swept"
    );
}

/// Files below `dir`, outside the connector's own `.spinoco-connector/` folders.
fn user_files(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if e.file_name() == ".spinoco-connector" {
                continue;
            }
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p.strip_prefix(dir).unwrap().display().to_string());
            }
        }
    }
    out.sort();
    out
}
