//! Local file system storage.
//!
//! A file is written under `<root>/.spinoco-connector/tmp/`, flushed to disk, renamed
//! into place and its directory flushed, so a reader never sees a partial file and a
//! power cut never loses one that was reported stored. Temp files left by a killed
//! process are swept when the store is opened.
//!
//! Retries: a transient file-system error (a full disk, `Reason::Io`) is retried where
//! it happened, under the store's budget: a failed write is done again from the chunk
//! in memory at the same offset, and the steps that read no source (folders, the
//! temp file, the rename, the flushes, reads and deletes) are repeated whole. So a full
//! disk that drains costs no download. Permission and name errors are final.
//!
//! A target folder on another file system (a mount below the root): the rename from
//! the root's temp folder cannot cross it, so the file is copied into that file
//! system's own `<mount>/.spinoco-connector/tmp/`, flushed and renamed into place from
//! there; nothing partial ever appears beside the user's files. Each such temp folder
//! is listed in `<root>/.spinoco-connector/temp-dirs`, and all of them are swept of a
//! killed process's leftovers when the store is opened.
//!
//! Conditional writes (the journal lease): `IfAbsent` is a hard link of the finished
//! temp file to the target, which fails when the target exists; `IfMatch` compares the
//! SHA-256 of the stored bytes (the version) under an exclusive lock on
//! `.spinoco-connector/cas.lock`, so two connectors on one folder cannot both win.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use super::client::parts::sha256_hex;
use super::{
    BlobStore, ObjectInfo, ObjectVersion, PutCondition, PutIf, StoreError, StoreErrorKind,
    Versioned,
};
use crate::retry::{with_retries, Reason, RetryBudget, Side, Step};

/// Folder (below the root) that holds the connector's own state and temp files.
pub const STATE_DIR: &str = ".spinoco-connector";
const TEMP_DIR: &str = "tmp";
/// Lists the temp folders on other file systems (one path a line).
const TEMP_DIRS: &str = "temp-dirs";
/// A temp file untouched for this long belongs to a process that is gone.
const STALE_TEMP_AGE: Duration = Duration::from_secs(600);

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

pub struct LocalStore {
    root: PathBuf,
    temp: PathBuf,
    budget: RetryBudget,
}

thread_local! {
    /// The buffer [`LocalStore`] copies a download through, one per transfer thread.
    static CHUNK: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0u8; 64 * 1024]);
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
        let store = LocalStore {
            root,
            temp,
            budget: RetryBudget::tries(1),
        };
        store.sweep_stale_temps(&store.temp);
        for dir in store.other_temp_dirs() {
            store.sweep_stale_temps(&dir);
        }
        Ok(store)
    }

    /// Retries transient file-system errors under `budget` (default: one try).
    pub fn with_budget(mut self, budget: RetryBudget) -> LocalStore {
        self.budget = budget;
        self
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Runs `op` until it works, fails for good, or the budget is spent.
    fn retried<T>(
        &self,
        what: &str,
        mut op: impl FnMut() -> io::Result<T>,
    ) -> Result<T, StoreError> {
        with_retries(self.budget, Side::Storage, what, || match op() {
            Ok(v) => Step::Done(v),
            Err(e) => {
                let err = StoreError::from_io(what, &e);
                if err.kind == StoreErrorKind::Transient {
                    Step::Retry {
                        error: err,
                        reason: Reason::Io,
                        after: None,
                    }
                } else {
                    Step::Fail(err)
                }
            }
        })
        .map_err(|e| e.error)
    }

    /// Removes temp files of processes that are gone: ours from an earlier life with
    /// the same pid (containers restart as pid 1), those whose pid no longer runs, and
    /// any untouched for ten minutes.
    fn sweep_stale_temps(&self, temp: &Path) {
        let Ok(entries) = fs::read_dir(temp) else {
            return;
        };
        let now = SystemTime::now();
        let me = std::process::id();
        let proc_visible = Path::new("/proc/self").exists();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            let pid = name.split('-').next().and_then(|p| p.parse::<u32>().ok());
            let dead = pid.is_some_and(|pid| {
                pid == me || (proc_visible && !Path::new("/proc").join(pid.to_string()).exists())
            });
            let old = entry
                .metadata()
                .and_then(|m| m.modified())
                .map(|t| now.duration_since(t).unwrap_or_default() > STALE_TEMP_AGE)
                .unwrap_or(false);
            if dead || old {
                let _ = fs::remove_file(entry.path());
            }
        }
    }

    /// The temp folders on other file systems used so far (see the module comment).
    fn other_temp_dirs(&self) -> Vec<PathBuf> {
        let list = self.root.join(STATE_DIR).join(TEMP_DIRS);
        fs::read_to_string(list)
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.is_empty())
            .map(PathBuf::from)
            .collect()
    }

    /// The temp folder on the file system of `dir` (another than the root's): below
    /// the highest folder of that file system under the root, listed for the sweep.
    fn temp_dir_near(&self, dir: &Path) -> io::Result<PathBuf> {
        use std::os::unix::fs::MetadataExt;
        let dev = fs::metadata(dir)?.dev();
        let mut top = dir.to_path_buf();
        while let Some(parent) = top.parent() {
            if !parent.starts_with(&self.root) || fs::metadata(parent)?.dev() != dev {
                break;
            }
            top = parent.to_path_buf();
        }
        let temp = top.join(STATE_DIR).join(TEMP_DIR);
        if !temp.is_dir() {
            fs::create_dir_all(&temp)?;
            sync_dir(&top)?;
        }
        if !self.other_temp_dirs().contains(&temp) {
            let list = self.root.join(STATE_DIR).join(TEMP_DIRS);
            let mut f = fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&list)?;
            writeln!(f, "{}", temp.display())?;
            f.sync_all()?;
        }
        Ok(temp)
    }

    /// Renames a finished temp file over the target. Where the target folder is on
    /// another file system (a mount below the root), the file is copied into that
    /// file system's temp folder first, so the final step is still an atomic rename
    /// and nothing partial is ever beside the user's files.
    fn rename_into_place(&self, temp: &Path, target: &Path) -> io::Result<()> {
        match fs::rename(temp, target) {
            Err(e) if e.kind() == io::ErrorKind::CrossesDevices => {
                let dir = target.parent().unwrap_or(&self.root);
                let near = self.temp_dir_near(dir)?.join(
                    temp.file_name()
                        .map(|n| n.to_os_string())
                        .unwrap_or_else(|| "copy.part".into()),
                );
                let copied = fs::copy(temp, &near)
                    .and_then(|_| File::open(&near)?.sync_all())
                    .and_then(|_| fs::rename(&near, target));
                if copied.is_err() {
                    let _ = fs::remove_file(&near);
                } else {
                    let _ = fs::remove_file(temp);
                }
                copied
            }
            other => other,
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
        use std::io::{Seek, SeekFrom};
        let mut file = self.retried(&format!("cannot create {}", temp.display()), || {
            File::create(temp)
        })?;
        let mut total = 0u64;
        // One copy buffer per thread for its whole life: zeroing a fresh one for every
        // file was a fifth of the instructions of a run of small files.
        CHUNK.with_borrow_mut(|buf| loop {
            let n = match src.read(buf) {
                Ok(0) => return Ok(()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(StoreError::new(StoreErrorKind::Source, e.to_string())),
            };
            // A failed write is done again from this chunk, at its offset.
            self.retried(&format!("cannot write {}", temp.display()), || {
                file.seek(SeekFrom::Start(total))?;
                file.write_all(&buf[..n])
            })?;
            total += n as u64;
        })?;
        self.retried(&format!("cannot flush {}", temp.display()), || {
            file.set_len(total)?;
            file.sync_all()
        })?;
        Ok(total)
    }

    /// Writes `bytes` to a new temp file, flushed; the caller moves it.
    fn temp_with(&self, bytes: &[u8]) -> Result<PathBuf, StoreError> {
        let temp = self.temp_path();
        match self.write_temp(&temp, &mut &bytes[..]) {
            Ok(_) => Ok(temp),
            Err(e) => {
                let _ = fs::remove_file(&temp);
                Err(e)
            }
        }
    }

    fn read(&self, path: &Path) -> Result<Option<Vec<u8>>, StoreError> {
        self.retried(
            &format!("cannot read {}", path.display()),
            || match fs::read(path) {
                Ok(bytes) => Ok(Some(bytes)),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(e),
            },
        )
    }
}

impl BlobStore for LocalStore {
    fn describe(&self) -> String {
        format!("local folder {}", self.root.display())
    }

    fn put_with(
        &self,
        key: &str,
        src: &mut dyn Read,
        _size: Option<u64>,
        _info: &ObjectInfo,
    ) -> Result<u64, StoreError> {
        let target = self.path_of(key)?;
        let dir = target.parent().unwrap_or(&self.root).to_path_buf();
        self.retried(&format!("cannot create folder {}", dir.display()), || {
            self.create_dirs(&dir)
        })?;
        let temp = self.temp_path();
        let result = self.write_temp(&temp, src).and_then(|n| {
            self.retried(&format!("cannot move into {}", target.display()), || {
                self.rename_into_place(&temp, &target)
            })?;
            self.retried(&format!("cannot flush folder {}", dir.display()), || {
                sync_dir(&dir)
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
        self.read(&path)
    }

    fn delete(&self, key: &str) -> Result<(), StoreError> {
        let path = self.path_of(key)?;
        let dir = path.parent().unwrap_or(&self.root).to_path_buf();
        self.retried(
            &format!("cannot remove {}", path.display()),
            || match fs::remove_file(&path) {
                Ok(()) => sync_dir(&dir),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(e),
            },
        )
    }

    fn get_versioned(&self, key: &str) -> Result<Option<Versioned>, StoreError> {
        let path = self.path_of(key)?;
        Ok(self.read(&path)?.map(|bytes| Versioned {
            version: ObjectVersion(sha256_hex(&bytes)),
            bytes,
        }))
    }

    fn put_if(&self, key: &str, bytes: &[u8], cond: PutCondition) -> Result<PutIf, StoreError> {
        let target = self.path_of(key)?;
        let dir = target.parent().unwrap_or(&self.root).to_path_buf();
        self.retried(&format!("cannot create folder {}", dir.display()), || {
            self.create_dirs(&dir)
        })?;
        let lock_path = self.root.join(STATE_DIR).join("cas.lock");
        let lock = self.retried(&format!("cannot open {}", lock_path.display()), || {
            let f = fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&lock_path)?;
            f.lock()?;
            Ok(f)
        })?;
        let temp = self.temp_with(bytes)?;
        let outcome = (|| {
            let current = self.read(&target)?;
            let allowed = match (&cond, &current) {
                (PutCondition::IfAbsent, None) => true,
                (PutCondition::IfMatch(v), Some(now)) => sha256_hex(now) == v.0,
                _ => false,
            };
            if !allowed {
                return Ok(PutIf::ConditionFailed);
            }
            let what = format!("cannot move into {}", target.display());
            match cond {
                // A link fails when the target exists, whoever made it.
                PutCondition::IfAbsent => match fs::hard_link(&temp, &target) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                        return Ok(PutIf::ConditionFailed)
                    }
                    Err(e) => return Err(StoreError::from_io(&what, &e)),
                },
                PutCondition::IfMatch(_) => self.retried(&what, || fs::rename(&temp, &target))?,
            }
            self.retried(&format!("cannot flush folder {}", dir.display()), || {
                sync_dir(&dir)
            })?;
            Ok(PutIf::Written(ObjectVersion(sha256_hex(bytes))))
        })();
        let _ = fs::remove_file(&temp);
        drop(lock);
        outcome
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
        let escape = format!("spinoco-escape-{}", std::process::id());
        let up = format!("../{escape}");
        for key in [
            up.as_str(),
            "/etc/passwd",
            "a//b",
            "a/./b",
            "a\\b",
            "",
            "a/",
        ] {
            let err = crate::store::put_bytes(&store, key, b"x").unwrap_err();
            assert_eq!(err.kind, StoreErrorKind::Rejected, "{key}");
        }
        assert!(!root.parent().unwrap().join(escape).exists());
    }

    #[test]
    fn temps_of_gone_processes_are_swept_on_open() {
        let root = scratch("sweep");
        let temp = root.join(STATE_DIR).join(TEMP_DIR);
        fs::create_dir_all(&temp).unwrap();
        let mine = temp.join(format!("{}-1.part", std::process::id()));
        let gone = temp.join("4294967295-1.part");
        let alive = temp.join("1-1.part"); // pid 1 always runs
        for p in [&mine, &gone, &alive] {
            fs::write(p, b"partial").unwrap();
        }
        LocalStore::open(&root).unwrap();
        assert!(!mine.exists() && !gone.exists());
        assert!(alive.exists(), "a running process's temp file must stay");
        fs::remove_dir_all(root).unwrap();
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
