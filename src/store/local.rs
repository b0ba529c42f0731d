//! Local file system storage.
//!
//! A file is written under `<root>/.spinoco-connector/tmp/`, flushed to disk, renamed
//! into place and its directory flushed, so a reader never sees a partial file and a
//! power cut never loses one that was reported stored.
//!
//! Temp files and neighbours: other processes share the volume (a `check --connect`
//! from another container, connectors of other tags, older versions), and process ids
//! say nothing across PID namespaces. So a temp file is named by who wrote it:
//! `<tag>.<run id>.<n>.part` once this process holds the journal lease of the tag,
//! `<run id>.<n>.part` before that (the lease's own probes) and in any other process
//! (`check --connect`), the run id being [`crate::process::run_id`]. Only the lease
//! holder sweeps ([`BlobStore::sweep_leftovers`], once it holds the lease, never when
//! a store is opened): the temp files of its tag from other runs (the lease is
//! exclusive, so their owner is gone or fenced off), every temp file of the run its
//! lease record replaced, and any file untouched for ten minutes, never its own run's.
//! A temp file (or the temp folder) removed under a write anyway is a
//! [`StoreErrorKind::Restart`]: the file is written again from its source, the folder
//! made again.
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
//! is listed in `<root>/.spinoco-connector/temp-dirs`, and all of them are swept as
//! the root's temp folder is.
//!
//! Conditional writes (the journal lease): `IfAbsent` is a hard link of the finished
//! temp file to the target, which fails when the target exists; `IfMatch` compares the
//! SHA-256 of the stored bytes (the version) under an exclusive lock on
//! `.spinoco-connector/cas.lock`, so two connectors on one folder cannot both win.
//!
//! Reading an archive back (`verify`), which creates nothing, is in `read`.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use log::info;

use super::{
    BlobStore, ObjectInfo, ObjectVersion, PutCondition, PutIf, StoreError, StoreErrorKind,
    Versioned,
};
use crate::checksum::sha256_hex;
use crate::process::run_id;
use crate::report::Chained;
use crate::retry::{with_retries, Reason, RetryBudget, Side, Step};

mod read;

/// Folder (below the root) that holds the connector's own state and temp files.
pub const STATE_DIR: &str = ".spinoco-connector";
const TEMP_DIR: &str = "tmp";
/// Lists the temp folders on other file systems (one path a line).
const TEMP_DIRS: &str = "temp-dirs";
/// A temp file untouched for this long belongs to a process that is gone (a transfer
/// stalls for at most one HTTP timeout before it is given up).
const STALE_TEMP_AGE: Duration = Duration::from_secs(600);

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

pub struct LocalStore {
    root: PathBuf,
    temp: PathBuf,
    budget: RetryBudget,
    /// The tag whose journal lease this process holds, escaped as the journal's name
    /// (no dots), once it does: temp files carry it from then on.
    lease_tag: OnceLock<String>,
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
                .map_err(|e| StoreError::from_io("cannot read the working directory", e))?
                .join(root)
        };
        let temp = root.join(STATE_DIR).join(TEMP_DIR);
        fs::create_dir_all(&temp).map_err(|e| {
            StoreError::from_io(&format!("cannot create folder {}", temp.display()), e)
        })?;
        Ok(LocalStore {
            root,
            temp,
            budget: RetryBudget::tries(1),
            lease_tag: OnceLock::new(),
        })
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
                let err = StoreError::from_io(what, e);
                if err.kind == StoreErrorKind::Transient {
                    Step::Retry {
                        error: Chained(err),
                        reason: Reason::Io,
                        after: None,
                    }
                } else {
                    Step::Fail(Chained(err))
                }
            }
        })
        .map_err(|e| e.error.0)
    }

    /// Removes the leftovers in one temp folder; returns how many.
    fn sweep_temp_folder(&self, temp: &Path, sweep: &Sweep) -> usize {
        let Ok(entries) = fs::read_dir(temp) else {
            return 0;
        };
        let now = SystemTime::now();
        entries
            .flatten()
            .filter(|entry| {
                // Unreadable times count as fresh.
                let age = entry
                    .metadata()
                    .and_then(|m| m.modified())
                    .map(|t| now.duration_since(t).unwrap_or_default())
                    .unwrap_or_default();
                sweep.is_leftover(&entry.file_name().to_string_lossy(), age)
            })
            .filter(|entry| fs::remove_file(entry.path()).is_ok())
            .count()
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

    /// A new temp file's path, named by its writer (see the module comment).
    fn temp_path(&self) -> PathBuf {
        let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        let run = run_id();
        self.temp.join(match self.lease_tag.get() {
            Some(tag) => format!("{tag}.{run}.{n}.part"),
            None => format!("{run}.{n}.part"),
        })
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
            match File::create(temp) {
                // The temp folder was removed (by hand, or by another process): made again.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    fs::create_dir_all(temp.parent().unwrap_or(&self.root))?;
                    File::create(temp)
                }
                other => other,
            }
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

    /// A create is a hard link, which fails when the target exists, made under the
    /// store's file lock: of two writers, one wins.
    fn atomic_creates(&self) -> bool {
        true
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
        let mut result = self.write_temp(&temp, src).and_then(|n| {
            self.retried(&format!("cannot move into {}", target.display()), || {
                match self.rename_into_place(&temp, &target) {
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {
                        if !temp.exists() {
                            return Err(io::Error::new(
                                io::ErrorKind::NotFound,
                                format!("another process removed the temp file {}", temp.display()),
                            ));
                        }
                        // The target folder was removed meanwhile: made again.
                        self.create_dirs(&dir)?;
                        self.rename_into_place(&temp, &target)
                    }
                    other => other,
                }
            })?;
            self.retried(&format!("cannot flush folder {}", dir.display()), || {
                sync_dir(&dir)
            })?;
            Ok(n)
        });
        if let Err(e) = &mut result {
            let _ = fs::remove_file(&temp);
            if e.kind == StoreErrorKind::Restart {
                e.message
                    .push_str("; the file is written again from its source");
            }
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

    fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        self.list_names(prefix)
    }

    fn size(&self, key: &str) -> Result<Option<u64>, StoreError> {
        self.file_size(key)
    }

    fn stream(&self, key: &str) -> Result<Option<Box<dyn Read + '_>>, StoreError> {
        self.file_stream(key)
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
                    Err(e) => return Err(StoreError::from_io(&what, e)),
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

    fn sweep_leftovers(&self, tag: &str, earlier_run: Option<&str>) {
        let sweep = Sweep {
            tag: self
                .lease_tag
                .get_or_init(|| crate::template::escape_tag(tag)),
            me: run_id(),
            earlier_run,
        };
        let swept: usize = std::iter::once(self.temp.clone())
            .chain(self.other_temp_dirs())
            .map(|dir| self.sweep_temp_folder(&dir, &sweep))
            .sum();
        if swept > 0 {
            info!(
                "removed {swept} temp file(s) that earlier runs left in {}",
                self.describe()
            );
        }
    }
}

/// What the holder of a journal lease may sweep.
struct Sweep<'a> {
    /// The tag of the lease, escaped.
    tag: &'a str,
    /// The holder's own run id.
    me: &'a str,
    /// The run id of the lease's previous holder, whose run is over.
    earlier_run: Option<&'a str>,
}

impl Sweep<'_> {
    /// Whether the temp file `name`, untouched for `age`, is left over: never one of
    /// the holder's own run; any of the previous holder's run; one of the tag from
    /// another run (gone or fenced off: the lease is exclusive); anything else only when
    /// stale (another tag's or a `check`'s files while they are fresh, older versions'
    /// `<pid>-<n>.part`, names of nobody).
    fn is_leftover(&self, name: &str, age: Duration) -> bool {
        match TempOwner::of(name) {
            Some(owner) if owner.run_id == self.me => false,
            Some(owner) if Some(owner.run_id) == self.earlier_run => true,
            Some(TempOwner { tag: Some(t), .. }) if t == self.tag => true,
            _ => age > STALE_TEMP_AGE,
        }
    }
}

/// Who wrote a temp file, read from its name (see [`LocalStore::temp_path`]).
#[derive(Debug, PartialEq)]
struct TempOwner<'a> {
    /// The escaped tag of a lease holder's file.
    tag: Option<&'a str>,
    run_id: &'a str,
}

impl<'a> TempOwner<'a> {
    /// `None` for a name this version does not give (an older version's, a stranger's).
    fn of(name: &'a str) -> Option<TempOwner<'a>> {
        let stem = name.strip_suffix(".part")?;
        let (rest, n) = stem.rsplit_once('.')?;
        if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let (tag, run_id) = match rest.rsplit_once('.') {
            Some((tag, run_id)) => (Some(tag), run_id),
            None => (None, rest),
        };
        let is_run_id = run_id.len() == 16 && run_id.bytes().all(|b| b.is_ascii_hexdigit());
        (is_run_id && tag.is_none_or(|t| !t.contains('.'))).then_some(TempOwner { tag, run_id })
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

    /// Plants a temp file `name`, untouched for `age`.
    fn plant(temp: &Path, name: &str, age: Duration) -> PathBuf {
        let path = temp.join(name);
        let file = File::create(&path).unwrap();
        file.set_modified(SystemTime::now() - age).unwrap();
        path
    }

    const FRESH: Duration = Duration::ZERO;
    const STALE: Duration = Duration::from_secs(11 * 60);

    #[test]
    fn temp_names_say_who_wrote_them() {
        let run = "0123456789abcdef";
        let owner = |name| TempOwner::of(name).map(|o| (o.tag, o.run_id));
        assert_eq!(owner("it.0123456789abcdef.7.part"), Some((Some("it"), run)));
        assert_eq!(
            owner("a~2fb.0123456789abcdef.0.part"),
            Some((Some("a~2fb"), run))
        );
        assert_eq!(owner("0123456789abcdef.12.part"), Some((None, run)));
        for stranger in [
            "4294967295-1.part",
            "a.b.0123456789abcdef.1.part",
            "it.0123456789abcdeg.1.part",
            "it.0123456789abcdef.x.part",
            "it.0123456789abcdef.1",
            "notes.txt",
        ] {
            assert_eq!(owner(stranger), None, "{stranger}");
        }
    }

    #[test]
    fn opening_a_store_sweeps_nothing() {
        let root = scratch("open");
        let temp = root.join(STATE_DIR).join(TEMP_DIR);
        fs::create_dir_all(&temp).unwrap();
        let planted = [
            plant(&temp, "4294967295-1.part", FRESH),
            plant(&temp, &format!("{}-1.part", std::process::id()), FRESH),
            plant(&temp, "t.fedcba9876543210.1.part", FRESH),
            plant(&temp, "fedcba9876543210.2.part", STALE),
        ];
        LocalStore::open(&root).unwrap();
        for p in &planted {
            assert!(p.exists(), "{p:?} was swept by open");
        }
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn the_lease_holder_sweeps_other_runs_of_its_tag_and_stale_files() {
        let root = scratch("sweep");
        let store = LocalStore::open(&root).unwrap();
        let temp = root.join(STATE_DIR).join(TEMP_DIR);
        let me = run_id();
        let other = "fedcba9876543210";
        let earlier = "00000000000000aa";
        let swept = [
            // The previous lease holder's, one from before it held the lease among them.
            plant(&temp, &format!("t.{earlier}.0.part"), FRESH),
            plant(&temp, &format!("{earlier}.0.part"), FRESH),
            plant(&temp, &format!("t.{other}.1.part"), FRESH),
            plant(&temp, &format!("u.{other}.2.part"), STALE),
            plant(&temp, &format!("{other}.3.part"), STALE),
            plant(&temp, "4294967295-4.part", STALE),
        ];
        let kept = [
            // Ours, even when a write of ours stalled.
            plant(&temp, &format!("t.{me}.5.part"), STALE),
            plant(&temp, &format!("{me}.6.part"), STALE),
            // Another tag's connector and a `check` at work.
            plant(&temp, &format!("u.{other}.7.part"), FRESH),
            plant(&temp, &format!("{other}.8.part"), FRESH),
            // An older version's name: a live process elsewhere, maybe.
            plant(&temp, &format!("{}-9.part", std::process::id()), FRESH),
        ];
        let untagged = store.temp_path();
        store.sweep_leftovers("t", Some(earlier));
        for p in &swept {
            assert!(!p.exists(), "{p:?} was not swept");
        }
        for p in &kept {
            assert!(p.exists(), "{p:?} was swept");
        }
        // From now on this run's temp files say whose lease they were written under.
        let tagged = store.temp_path();
        let name = |p: &Path| p.file_name().unwrap().to_string_lossy().to_string();
        assert!(
            name(&untagged).starts_with(&format!("{me}.")),
            "{untagged:?}"
        );
        assert!(name(&tagged).starts_with(&format!("t.{me}.")), "{tagged:?}");
        fs::remove_dir_all(root).unwrap();
    }

    /// A source that, halfway, runs `neighbour` on the store's root (another process
    /// removing files under a write).
    struct Meddled<F: FnMut(&Path)> {
        left: usize,
        root: PathBuf,
        neighbour: Option<F>,
    }

    impl<F: FnMut(&Path)> Read for Meddled<F> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.left <= 1000 {
                if let Some(mut meddle) = self.neighbour.take() {
                    meddle(&self.root);
                }
            }
            let n = buf.len().min(self.left).min(1000);
            buf[..n].fill(b'x');
            self.left -= n;
            Ok(n)
        }
    }

    fn meddled<F: FnMut(&Path)>(root: &Path, neighbour: F) -> Meddled<F> {
        Meddled {
            left: 5000,
            root: root.to_path_buf(),
            neighbour: Some(neighbour),
        }
    }

    fn temp_files(root: &Path) -> Vec<PathBuf> {
        fs::read_dir(root.join(STATE_DIR).join(TEMP_DIR))
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default()
    }

    #[test]
    fn a_temp_file_or_folder_removed_under_a_write_means_writing_again() {
        let root = scratch("vanish");
        // Transient errors are retried (forever in service mode); this one must not be.
        let store = LocalStore::open(&root)
            .unwrap()
            .with_budget(RetryBudget::tries(3));
        let remove_temp_file = |root: &Path| {
            for p in temp_files(root) {
                fs::remove_file(p).unwrap();
            }
        };
        let remove_temp_folder = |root: &Path| {
            fs::remove_dir_all(root.join(STATE_DIR).join(TEMP_DIR)).unwrap();
        };
        let err = store
            .put("a.ogg", &mut meddled(&root, remove_temp_file), None)
            .unwrap_err();
        assert_eq!(err.kind, StoreErrorKind::Restart, "{err}");
        assert!(err.message.contains("written again"), "{err}");
        let err = store
            .put("a.ogg", &mut meddled(&root, remove_temp_folder), None)
            .unwrap_err();
        assert_eq!(err.kind, StoreErrorKind::Restart, "{err}");
        assert!(!root.join("a.ogg").exists());
        // Transferred again: the temp folder is made again.
        assert_eq!(
            store
                .put("a.ogg", &mut meddled(&root, |_| {}), None)
                .unwrap(),
            5000
        );
        assert_eq!(fs::read(root.join("a.ogg")).unwrap(), vec![b'x'; 5000]);
        assert_eq!(temp_files(&root), Vec::<PathBuf>::new());
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn a_target_folder_removed_under_a_write_is_made_again() {
        let root = scratch("vanish-target");
        let store = LocalStore::open(&root).unwrap();
        let n = store
            .put(
                "2024/01/a.ogg",
                &mut meddled(&root, |root| fs::remove_dir_all(root.join("2024")).unwrap()),
                None,
            )
            .unwrap();
        assert_eq!(n, 5000);
        assert_eq!(fs::read(root.join("2024/01/a.ogg")).unwrap().len(), 5000);
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
