//! Reading a local archive back (`verify`): a store opened on a folder that must
//! exist and that nothing is created in, a walk for the listing, a stat for the size
//! and the file itself as the stream.

use std::fs::{self, File};
use std::io::{self, Read};
use std::path::Path;

use super::LocalStore;
use crate::store::{StoreError, StoreErrorKind};

impl LocalStore {
    /// Opens `root` for reading only: unlike [`LocalStore::open`] it creates nothing,
    /// not even the connector's temp folder; a folder that does not exist is `Denied`
    /// (as a missing bucket is).
    pub fn open_existing(root: &Path) -> Result<LocalStore, StoreError> {
        match fs::metadata(root) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(StoreError::new(
                    StoreErrorKind::Denied,
                    format!("SP_TASK_SYNC_SAVE_TO={:?}: is not a folder", root.display()),
                ))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StoreError::new(
                    StoreErrorKind::Denied,
                    format!(
                        "SP_TASK_SYNC_SAVE_TO={:?}: the folder does not exist",
                        root.display()
                    ),
                ))
            }
            Err(e) => {
                return Err(StoreError::from_io(
                    &format!("cannot read {}", root.display()),
                    e,
                ))
            }
        }
        let root = std::path::absolute(root)
            .map_err(|e| StoreError::from_io("cannot read the working directory", e))?;
        Ok(LocalStore {
            temp: root.join(super::STATE_DIR).join(super::TEMP_DIR),
            root,
            budget: crate::retry::RetryBudget::tries(1),
            lease_tag: std::sync::OnceLock::new(),
        })
    }

    /// Every file below the folder part of `prefix` whose name starts with `prefix`.
    /// Names that are not UTF-8 are no key of the connector's and are left out.
    pub(super) fn list_names(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let folder = prefix.rsplit_once('/').map_or("", |(folder, _)| folder);
        let dir = match folder {
            "" => self.root.clone(),
            _ => self.path_of(folder)?,
        };
        let mut names = self.retried(&format!("cannot list {}", dir.display()), || {
            let mut names = Vec::new();
            walk(&dir, folder, &mut names)?;
            Ok(names)
        })?;
        names.retain(|n| n.starts_with(prefix));
        Ok(names)
    }

    pub(super) fn file_size(&self, key: &str) -> Result<Option<u64>, StoreError> {
        let path = self.path_of(key)?;
        self.retried(
            &format!("cannot read the size of {}", path.display()),
            || match fs::metadata(&path) {
                Ok(m) if m.is_file() => Ok(Some(m.len())),
                Ok(_) => Ok(None),
                Err(e) if absent(&e) => Ok(None),
                Err(e) => Err(e),
            },
        )
    }

    pub(super) fn file_stream(&self, key: &str) -> Result<Option<Box<dyn Read + '_>>, StoreError> {
        let path = self.path_of(key)?;
        self.retried(&format!("cannot open {}", path.display()), || {
            let file = match File::open(&path) {
                Ok(f) => f,
                Err(e) if absent(&e) => return Ok(None),
                Err(e) => return Err(e),
            };
            Ok(file
                .metadata()?
                .is_file()
                .then(|| Box::new(file) as Box<dyn Read>))
        })
    }
}

/// Nothing is there: the file, or a folder on its way (or a file where one is).
fn absent(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
    )
}

/// Adds the files below `dir` (named `rel` below the root) to `out`; folders are
/// walked, symbolic links to folders left out (a loop would never end).
fn walk(dir: &Path, rel: &str, out: &mut Vec<String>) -> io::Result<()> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if absent(&e) => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        let name = if rel.is_empty() {
            name
        } else {
            format!("{rel}/{name}")
        };
        let kind = entry.file_type()?;
        if kind.is_dir() {
            walk(&entry.path(), &name, out)?;
        } else if !(kind.is_symlink() && entry.path().is_dir()) {
            out.push(name);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{put_bytes, BlobStore};

    #[test]
    fn reading_back_creates_nothing_and_finds_every_file() {
        let root = std::env::temp_dir().join(format!("spinoco-local-read-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        let err = LocalStore::open_existing(&root).err().unwrap();
        assert_eq!(err.kind, StoreErrorKind::Denied, "{err}");
        assert!(err.message.contains("does not exist"), "{err}");
        assert!(!root.exists(), "opening to read created the folder");
        fs::create_dir_all(&root).unwrap();
        let store = LocalStore::open_existing(&root).unwrap();
        assert!(
            !root.join(".spinoco-connector").exists(),
            "a temp folder was made"
        );
        let writer = LocalStore::open(&root).unwrap();
        for (key, bytes) in [
            ("m/a/1.jsonl", &b"one"[..]),
            ("m/a/b/2.jsonl", b""),
            ("m/ab", b"x"),
            ("n", b"y"),
        ] {
            put_bytes(&writer, key, bytes).unwrap();
        }
        std::os::unix::fs::symlink(&root, root.join("m/a/loop")).unwrap();
        let mut names = store.list("m/a/").unwrap();
        names.sort();
        assert_eq!(names, ["m/a/1.jsonl", "m/a/b/2.jsonl"]);
        let mut names = store.list("m/a").unwrap();
        names.sort();
        assert_eq!(names, ["m/a/1.jsonl", "m/a/b/2.jsonl", "m/ab"]);
        assert_eq!(store.list("none/").unwrap(), Vec::<String>::new());
        assert_eq!(store.size("m/a/1.jsonl").unwrap(), Some(3));
        assert_eq!(store.size("m/a/b/2.jsonl").unwrap(), Some(0));
        assert_eq!(store.size("m/a/nothing").unwrap(), None);
        assert_eq!(store.size("n/under-a-file").unwrap(), None);
        assert_eq!(store.size("m/a/b").unwrap(), None, "a folder is no file");
        let mut back = String::new();
        store
            .stream("m/a/1.jsonl")
            .unwrap()
            .unwrap()
            .read_to_string(&mut back)
            .unwrap();
        assert_eq!(back, "one");
        assert!(store.stream("m/a/nothing").unwrap().is_none());
        assert!(store.stream("m/a/b").unwrap().is_none());
        fs::remove_dir_all(&root).unwrap();
    }
}
