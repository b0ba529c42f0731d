//! Local file system storage.
//!
//! A file is written under `<root>/.spinoco-connector/tmp/`, flushed to disk, renamed
//! into place and its directory flushed, so a reader never sees a partial file and a
//! power cut never loses one that was reported stored. Temp files left by a killed
//! process are swept when the store is opened.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use super::{BlobStore, StoreError, StoreErrorKind};

/// Folder (below the root) that holds the connector's own state and temp files.
pub const STATE_DIR: &str = ".spinoco-connector";
const TEMP_DIR: &str = "tmp";
/// A temp file untouched for this long belongs to a process that is gone.
const STALE_TEMP_AGE: Duration = Duration::from_secs(600);

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

pub struct LocalStore {
    root: PathBuf,
    temp: PathBuf,
}

impl LocalStore {
    /// Opens (and creates) the root folder. A relative root is taken relative to the
    /// working directory.
    pub fn open(root: &Path) -> Result<LocalStore, StoreError> {
        let root = if root.is_absolute() {
            root.to_path_buf()
        } else {
            std::env::current_dir()
                .map_err(|e| StoreError::from_io("cannot read the working directory", &e))?
                .join(root)
        };
        let temp = root.join(STATE_DIR).join(TEMP_DIR);
        fs::create_dir_all(&temp).map_err(|e| {
            StoreError::from_io(&format!("cannot create folder {}", temp.display()), &e)
        })?;
        let store = LocalStore { root, temp };
        store.sweep_stale_temps();
        Ok(store)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn sweep_stale_temps(&self) {
        let Ok(entries) = fs::read_dir(&self.temp) else {
            return;
        };
        let now = SystemTime::now();
        for entry in entries.flatten() {
            let old = entry
                .metadata()
                .and_then(|m| m.modified())
                .map(|t| now.duration_since(t).unwrap_or_default() > STALE_TEMP_AGE)
                .unwrap_or(false);
            if old {
                let _ = fs::remove_file(entry.path());
            }
        }
    }

    /// Maps a key to a path below the root, refusing anything that could leave it.
    fn path_of(&self, key: &str) -> Result<PathBuf, StoreError> {
        let rel = Path::new(key);
        let ok = !key.is_empty()
            && !key.contains('\\')
            && !key.contains('\0')
            && rel.components().all(|c| matches!(c, Component::Normal(_)))
            && !key
                .split('/')
                .any(|part| part.is_empty() || part == "." || part == "..");
        if !ok {
            return Err(StoreError::new(
                StoreErrorKind::Rejected,
                format!("refusing to store under unsafe name {key:?}"),
            ));
        }
        Ok(self.root.join(rel))
    }

    fn temp_path(&self) -> PathBuf {
        let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        self.temp.join(format!("{}-{n}.part", std::process::id()))
    }

    /// Creates the folders of `dir` that are missing and flushes each new entry.
    fn create_dirs(&self, dir: &Path) -> io::Result<()> {
        if dir.is_dir() {
            return Ok(());
        }
        if let Some(parent) = dir.parent() {
            self.create_dirs(parent)?;
        }
        match fs::create_dir(dir) {
            Ok(()) => sync_dir(dir.parent().unwrap_or(&self.root)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn write_temp(&self, temp: &Path, src: &mut dyn Read) -> Result<u64, StoreError> {
        let mut file = File::create(temp)
            .map_err(|e| StoreError::from_io(&format!("cannot create {}", temp.display()), &e))?;
        let mut buf = vec![0u8; 64 * 1024];
        let mut total = 0u64;
        loop {
            let n = match src.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(StoreError::new(StoreErrorKind::Source, e.to_string())),
            };
            file.write_all(&buf[..n]).map_err(|e| {
                StoreError::from_io(&format!("cannot write {}", temp.display()), &e)
            })?;
            total += n as u64;
        }
        file.sync_all()
            .map_err(|e| StoreError::from_io(&format!("cannot flush {}", temp.display()), &e))?;
        Ok(total)
    }
}

impl BlobStore for LocalStore {
    fn describe(&self) -> String {
        format!("local folder {}", self.root.display())
    }

    fn put(&self, key: &str, src: &mut dyn Read, _size: Option<u64>) -> Result<u64, StoreError> {
        let target = self.path_of(key)?;
        let dir = target.parent().unwrap_or(&self.root).to_path_buf();
        self.create_dirs(&dir).map_err(|e| {
            StoreError::from_io(&format!("cannot create folder {}", dir.display()), &e)
        })?;
        let temp = self.temp_path();
        let result = self.write_temp(&temp, src).and_then(|n| {
            rename_into_place(&temp, &target)?;
            sync_dir(&dir).map_err(|e| {
                StoreError::from_io(&format!("cannot flush folder {}", dir.display()), &e)
            })?;
            Ok(n)
        });
        if result.is_err() {
            let _ = fs::remove_file(&temp);
        }
        result
    }

    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let path = self.path_of(key)?;
        match fs::read(&path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StoreError::from_io(
                &format!("cannot read {}", path.display()),
                &e,
            )),
        }
    }

    fn delete(&self, key: &str) -> Result<(), StoreError> {
        let path = self.path_of(key)?;
        match fs::remove_file(&path) {
            Ok(()) => {
                let dir = path.parent().unwrap_or(&self.root);
                sync_dir(dir).map_err(|e| {
                    StoreError::from_io(&format!("cannot flush folder {}", dir.display()), &e)
                })
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(StoreError::from_io(
                &format!("cannot remove {}", path.display()),
                &e,
            )),
        }
    }
}

/// Renames a finished temp file over the target. Where the target folder is on
/// another file system than the root (a mount below the root), the file is copied
/// next to the target first, so the final step is still an atomic rename.
fn rename_into_place(temp: &Path, target: &Path) -> Result<(), StoreError> {
    match fs::rename(temp, target) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::CrossesDevices => {
            let dir = target.parent().unwrap_or(Path::new("."));
            let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
            let near = dir.join(format!(".{}-{n}.spinoco-part", std::process::id()));
            let copied = fs::copy(temp, &near)
                .and_then(|_| File::open(&near)?.sync_all())
                .and_then(|_| fs::rename(&near, target));
            let _ = fs::remove_file(temp);
            copied.map_err(|e| {
                let _ = fs::remove_file(&near);
                StoreError::from_io(&format!("cannot move into {}", target.display()), &e)
            })
        }
        Err(e) => Err(StoreError::from_io(
            &format!("cannot move into {}", target.display()),
            &e,
        )),
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("spinoco-local-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn unsafe_keys_are_refused() {
        let root = scratch("unsafe");
        let store = LocalStore::open(&root).unwrap();
        for key in ["../x", "/etc/passwd", "a//b", "a/./b", "a\\b", "", "a/"] {
            let err = crate::store::put_bytes(&store, key, b"x").unwrap_err();
            assert_eq!(err.kind, StoreErrorKind::Rejected, "{key}");
        }
        assert!(!root.parent().unwrap().join("x").exists());
    }

    #[test]
    fn failed_source_leaves_nothing_behind() {
        struct Broken(usize);
        impl Read for Broken {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                if self.0 == 0 {
                    return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "cut"));
                }
                self.0 -= 1;
                buf[0] = b'x';
                Ok(1)
            }
        }
        let root = scratch("broken");
        let store = LocalStore::open(&root).unwrap();
        crate::store::put_bytes(&store, "a/b.ogg", b"old").unwrap();
        let err = store.put("a/b.ogg", &mut Broken(100), None).unwrap_err();
        assert_eq!(err.kind, StoreErrorKind::Source);
        assert_eq!(fs::read(root.join("a/b.ogg")).unwrap(), b"old");
        assert_eq!(
            fs::read_dir(root.join(STATE_DIR).join(TEMP_DIR))
                .unwrap()
                .count(),
            0
        );
    }
}
