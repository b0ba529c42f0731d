//! `spinoco-connector verify`: proves that the archive is there and intact.
//!
//! With `SP_TASK_SYNC_DELETE_DATA=Recordings` the storage holds the only copy of every
//! recording, and the platform's is gone. The engine records every file it stores
//! ([`manifest`]); `verify` reads those records (the manifests of the configured tag,
//! and the records still waiting in the journal entry) and checks each name by its
//! latest record: it is there with the recorded size (a HEAD or a stat), and with
//! `--deep` its bytes have the recorded CRC-32C (streamed, a bounded buffer per
//! thread). Only `--deep` finds a file of the right size with other bytes. The checks
//! run on `SP_TASK_SYNC_CONCURRENCY` threads.
//!
//! It only reads: no lease, no journal write, no temp file, nothing on the platform.
//! The journal entry is read before the manifests are listed, so records that a
//! running connector moves from one to the other meanwhile are seen at least once.

mod manifest;

use std::fmt;
use std::io::{IsTerminal, Read, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Mutex};
use std::time::Duration;

use crate::checksum::{crc32c_update, CRC32C_INIT};
use crate::config::{parse_iso_date, Config};
use crate::retry::RetryBudget;
use crate::store::{self, BlobStore, StoreError, StoreErrorKind};
use crate::template::iso_millis;
use manifest::{BadLine, Index, Place, Record};

/// The bad files and bad lines listed by name; the rest are counted.
const LISTED: usize = 100;
/// The buffer each thread reads a file through with `--deep`.
const READ_BUFFER: usize = 64 * 1024;
const DAY_MS: i64 = 24 * 60 * 60 * 1000;

/// `verify [--since DATE] [--until DATE] [--deep]`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Options {
    /// Unix milliseconds: files stored from then on.
    pub since: Option<i64>,
    /// Unix milliseconds: files stored until then (a bare date: to the end of that day).
    pub until: Option<i64>,
    pub deep: bool,
}

impl Options {
    /// Reads the arguments after `verify`; the error is a usage problem to show.
    pub fn parse(args: &[String]) -> Result<Options, String> {
        let mut opts = Options::default();
        let mut it = args.iter();
        while let Some(flag) = it.next() {
            match flag.as_str() {
                "--deep" => opts.deep = true,
                "--since" | "--until" => {
                    let value = it.next().ok_or(format!("{flag} needs a date"))?;
                    let start = parse_iso_date(value).ok_or(format!(
                        "{flag} {value:?} is not a date (YYYY-MM-DD or ISO-8601, e.g. 2024-09-09T15:45:47.277Z)"
                    ))?;
                    if flag == "--since" {
                        opts.since = Some(start);
                    } else if value.contains('T') {
                        opts.until = Some(start);
                    } else {
                        opts.until = Some(start + DAY_MS - 1);
                    }
                }
                _ => return Err(format!("unknown verify option {flag:?}")),
            }
        }
        if let (Some(since), Some(until)) = (opts.since, opts.until) {
            if since > until {
                return Err("--since is after --until, so nothing could be selected".into());
            }
        }
        Ok(opts)
    }
}

/// Why `verify` could not come to a verdict.
#[derive(Debug)]
pub enum VerifyError {
    /// The storage could not be opened or listed, or refused a read.
    Store(StoreError),
    /// No manifest and no record in the journal: nothing says what should be there.
    NothingRecorded { looked_in: String },
}

impl VerifyError {
    /// The storage refused the credentials or the permission (or has no such bucket).
    pub fn is_denied(&self) -> bool {
        matches!(self, VerifyError::Store(e) if e.kind == StoreErrorKind::Denied)
    }
}

impl fmt::Display for VerifyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VerifyError::Store(_) => f.write_str("verify could not read the archive"),
            VerifyError::NothingRecorded { looked_in } => write!(
                f,
                "nothing to verify: {looked_in} holds no manifest and the journal no record; \
                 check SP_TASK_SYNC_TAG and the storage settings (a connector records what it \
                 stores there)"
            ),
        }
    }
}

impl std::error::Error for VerifyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            VerifyError::Store(e) => Some(e),
            VerifyError::NothingRecorded { .. } => None,
        }
    }
}

impl From<StoreError> for VerifyError {
    fn from(e: StoreError) -> Self {
        VerifyError::Store(e)
    }
}

/// What is wrong with a file.
#[derive(Debug, Clone, PartialEq)]
pub enum Problem {
    Missing,
    WrongSize {
        stored: u64,
    },
    WrongChecksum {
        stored: u32,
    },
    /// It could not be checked (the storage kept failing): the reason.
    Unreadable(String),
}

/// A file that is not as recorded.
#[derive(Debug, Clone)]
pub struct BadFile {
    pub record: Record,
    pub problem: Problem,
}

impl BadFile {
    /// A recording deleted on the platform that is not as recorded: gone for good.
    fn unrecoverable(&self) -> bool {
        !matches!(self.problem, Problem::Unreadable(_)) && self.record.deleted_at.is_some()
    }
}

impl fmt::Display for BadFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = &self.record;
        match &self.problem {
            Problem::Missing => write!(f, "missing         {}", r.name)?,
            Problem::WrongSize { stored } => write!(
                f,
                "wrong size      {} ({} bytes recorded, {stored} stored)",
                r.name, r.size
            )?,
            Problem::WrongChecksum { stored } => write!(
                f,
                "wrong checksum  {} (CRC-32C {:08x} recorded, {stored:08x} stored)",
                r.name, r.crc32c
            )?,
            Problem::Unreadable(why) => write!(f, "not checked     {} ({why})", r.name)?,
        }
        if let Some(deleted) = r.deleted_at {
            let recording = r.recording_id.as_deref().unwrap_or("?");
            write!(
                f,
                " [recording {recording} deleted on the platform {}{}]",
                iso_millis(deleted),
                if self.unrecoverable() {
                    ": unrecoverable"
                } else {
                    ""
                }
            )?;
        }
        Ok(())
    }
}

/// What `verify` found.
#[derive(Debug, Default)]
pub struct Findings {
    pub deep: bool,
    pub manifests: usize,
    /// Names with a record, before `--since`/`--until`.
    pub recorded: usize,
    pub checked: u64,
    /// The recorded sizes of the files checked.
    pub bytes: u64,
    /// By name.
    pub bad: Vec<BadFile>,
    pub bad_lines: Vec<BadLine>,
}

impl Findings {
    /// Everything selected is there as recorded, and every record could be read.
    pub fn holds(&self) -> bool {
        self.bad.is_empty() && self.bad_lines.is_empty()
    }

    fn count(&self, which: fn(&Problem) -> bool) -> usize {
        self.bad.iter().filter(|b| which(&b.problem)).count()
    }
}

impl fmt::Display for Findings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = if self.deep {
            "there, with the recorded size and CRC-32C"
        } else {
            "there, with the recorded size"
        };
        writeln!(
            f,
            "verify: {} name(s) recorded in {} manifest(s) and the journal; {} file(s) checked, {} bytes",
            self.recorded, self.manifests, self.checked, self.bytes
        )?;
        let lines = [
            ("missing", self.count(|p| *p == Problem::Missing)),
            (
                "wrong size",
                self.count(|p| matches!(p, Problem::WrongSize { .. })),
            ),
            (
                "wrong checksum",
                self.count(|p| matches!(p, Problem::WrongChecksum { .. })),
            ),
            (
                "not checked (the storage failed)",
                self.count(|p| matches!(p, Problem::Unreadable(_))),
            ),
            ("unreadable manifest lines", self.bad_lines.len()),
            (
                "unrecoverable (recordings deleted on the platform among the bad files)",
                self.bad.iter().filter(|b| b.unrecoverable()).count(),
            ),
        ];
        for (label, n) in lines {
            writeln!(f, "  {label}: {n}")?;
        }
        list(f, "bad files", &self.bad)?;
        list(f, "unreadable manifest lines", &self.bad_lines)?;
        if self.holds() {
            writeln!(f, "OK: every file checked is {what}")
        } else {
            writeln!(
                f,
                "FAILED: {} file(s) not as recorded, {} manifest line(s) unreadable",
                self.bad.len(),
                self.bad_lines.len()
            )
        }
    }
}

/// The first [`LISTED`] of `items` under `title`, and how many more there are.
fn list<T: fmt::Display>(f: &mut fmt::Formatter<'_>, title: &str, items: &[T]) -> fmt::Result {
    if items.is_empty() {
        return Ok(());
    }
    writeln!(f, "{title}:")?;
    for item in items.iter().take(LISTED) {
        writeln!(f, "  {item}")?;
    }
    if items.len() > LISTED {
        writeln!(f, "  ... and {} more", items.len() - LISTED)?;
    }
    Ok(())
}

/// Reads the records of `cfg`'s tag and checks the files they name.
pub fn run(cfg: &Config, opts: &Options) -> Result<Findings, VerifyError> {
    let agent = crate::http::Http::new(cfg.http_timeout, cfg.concurrency, &cfg.network).agent;
    let budget = RetryBudget::within(cfg.retry_timeout);
    let store = store::open_existing(&cfg.storage, &agent, budget)?;
    let store = store.as_ref();
    let threads = cfg.concurrency.max(1);
    let recorded = read_records(store, &cfg.tag, threads)?;
    let mut findings = Findings {
        deep: opts.deep,
        manifests: recorded.manifests,
        recorded: recorded.index.len(),
        bad_lines: recorded.bad_lines,
        ..Findings::default()
    };
    let records = recorded.index.select(opts.since, opts.until);
    log::info!(
        "verify: checking {} of {} recorded file(s) in {}{}",
        records.len(),
        findings.recorded,
        store.describe(),
        if opts.deep {
            ", their bytes too (--deep)"
        } else {
            ""
        }
    );
    let progress = Progress::new(&records, opts.deep);
    let bad = std::thread::scope(|s| {
        let (done, stop) = mpsc::channel::<()>();
        s.spawn(|| progress.show(stop));
        let bad = check_all(store, &records, opts.deep, threads, &progress);
        drop(done);
        bad
    })?;
    findings.checked = records.len() as u64;
    findings.bytes = records.iter().map(|r| r.size).sum();
    findings.bad = bad;
    Ok(findings)
}

/// What the journal entry and the manifests of a tag record.
struct Recorded {
    /// The latest record of every name.
    index: Index,
    manifests: usize,
    /// What could not be read, by where it is.
    bad_lines: Vec<BadLine>,
}

/// Reads the records of `tag`: the journal entry's, then every manifest's.
fn read_records(store: &dyn BlobStore, tag: &str, threads: usize) -> Result<Recorded, VerifyError> {
    let mut index = Index::default();
    // The journal first: see the module comment.
    let journal_key = manifest::journal_key(tag);
    let journal = match store.get(&journal_key)? {
        Some(bytes) => manifest::journal_records(&bytes, &journal_key),
        None => Default::default(),
    };
    let in_journal = journal.records.len();
    for (line, record) in journal.records.into_iter().enumerate() {
        index.add(record, Place { source: 0, line });
    }
    let bad_lines = journal.bad;
    let prefix = manifest::manifest_prefix(tag);
    let mut keys = store.list(&prefix)?;
    keys.retain(|key| {
        let ok = key.strip_prefix(&prefix).is_some_and(manifest::is_manifest);
        if !ok {
            log::warn!(
                "verify: {} is not a manifest (YYYY/MM/DD/<16 hex digits>.jsonl); passed over",
                crate::redact::remote(key, 300)
            );
        }
        ok
    });
    keys.sort();
    if keys.is_empty() && in_journal == 0 && bad_lines.is_empty() {
        return Err(VerifyError::NothingRecorded {
            looked_in: format!("{prefix} in {}", store.describe()),
        });
    }
    log::info!(
        "verify: reading {} manifest(s) and {in_journal} record(s) of the journal in {}",
        keys.len(),
        store.describe()
    );
    let shared = Mutex::new(Recorded {
        index,
        manifests: keys.len(),
        bad_lines,
    });
    in_parallel(threads, &keys, |source, key, _| {
        let manifest = match store.stream(key) {
            Ok(Some(src)) => manifest::read_manifest(std::io::BufReader::new(src), key)
                .map_err(|e| StoreError::of_io(&format!("cannot read {key}"), e)),
            Ok(None) => Err(StoreError::transient(format!(
                "{key} was listed, but is gone"
            ))),
            Err(e) => Err(e),
        };
        let mut shared = shared.lock().unwrap_or_else(|e| e.into_inner());
        match manifest {
            Ok(m) => {
                for (line, record) in m.records.into_iter().enumerate() {
                    shared.index.add(
                        record,
                        Place {
                            source: source + 1,
                            line,
                        },
                    );
                }
                shared.bad_lines.extend(m.bad);
            }
            Err(e) if e.kind == StoreErrorKind::Denied => return Err(e),
            Err(e) => shared
                .bad_lines
                .push(BadLine::new(key.clone(), &e.report())),
        }
        Ok(())
    })?;
    let mut recorded = shared.into_inner().unwrap_or_else(|e| e.into_inner());
    recorded.bad_lines.sort_by(|a, b| a.at.cmp(&b.at));
    Ok(recorded)
}

/// Checks every record on `threads` threads; the storage refusing access stops all.
fn check_all(
    store: &dyn BlobStore,
    records: &[Record],
    deep: bool,
    threads: usize,
    progress: &Progress,
) -> Result<Vec<BadFile>, StoreError> {
    let bad = Mutex::new(Vec::new());
    in_parallel(threads, records, |_, record, buf| {
        let problem = match check(store, record, deep, buf, progress) {
            Ok(problem) => problem,
            Err(e) if e.kind == StoreErrorKind::Denied => return Err(e),
            Err(e) => Some(Problem::Unreadable(e.report())),
        };
        progress.done(record, deep);
        if let Some(problem) = problem {
            let file = BadFile {
                record: record.clone(),
                problem,
            };
            bad.lock().unwrap_or_else(|e| e.into_inner()).push(file);
        }
        Ok(())
    })?;
    let mut bad = bad.into_inner().unwrap_or_else(|e| e.into_inner());
    bad.sort_by(|a, b| a.record.name.cmp(&b.record.name));
    Ok(bad)
}

/// What is wrong with the file of `record`, if anything.
fn check(
    store: &dyn BlobStore,
    record: &Record,
    deep: bool,
    buf: &mut [u8],
    progress: &Progress,
) -> Result<Option<Problem>, StoreError> {
    let Some(size) = store.size(&record.name)? else {
        return Ok(Some(Problem::Missing));
    };
    if size != record.size {
        return Ok(Some(Problem::WrongSize { stored: size }));
    }
    if !deep {
        return Ok(None);
    }
    let Some(mut src) = store.stream(&record.name)? else {
        return Ok(Some(Problem::Missing));
    };
    let mut crc = CRC32C_INIT;
    let mut read = 0u64;
    loop {
        let n = match src.read(buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(StoreError::of_io(
                    &format!("cannot read {}", record.name),
                    e,
                ))
            }
        };
        crc = crc32c_update(crc, &buf[..n]);
        read += n as u64;
        progress.read(n as u64);
    }
    let crc = crc ^ CRC32C_INIT;
    Ok(if read != record.size {
        Some(Problem::WrongSize { stored: read })
    } else if crc != record.crc32c {
        Some(Problem::WrongChecksum { stored: crc })
    } else {
        None
    })
}

/// Runs `work(index, item, buffer)` for every item on `threads` threads, each with a
/// read buffer of its own; the first error stops them all and is returned.
fn in_parallel<T: Sync>(
    threads: usize,
    items: &[T],
    work: impl Fn(usize, &T, &mut [u8]) -> Result<(), StoreError> + Sync,
) -> Result<(), StoreError> {
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let error = Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..threads.min(items.len()) {
            s.spawn(|| {
                let mut buf = vec![0u8; READ_BUFFER];
                while !failed.load(Ordering::Relaxed) {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(item) = items.get(i) else { return };
                    if let Err(e) = work(i, item, &mut buf) {
                        failed.store(true, Ordering::Relaxed);
                        error
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .get_or_insert(e);
                    }
                }
            });
        }
    });
    match error.into_inner().unwrap_or_else(|e| e.into_inner()) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// How far the checks are, shown on stderr: a line redrawn in place on a terminal,
/// else a log line every few seconds.
struct Progress {
    files: AtomicU64,
    bytes: AtomicU64,
    total_files: u64,
    total_bytes: u64,
    deep: bool,
}

impl Progress {
    fn new(records: &[Record], deep: bool) -> Progress {
        Progress {
            files: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            total_files: records.len() as u64,
            total_bytes: records.iter().map(|r| r.size).sum(),
            deep,
        }
    }

    /// A file checked (its recorded size counts as checked, unless read with `--deep`).
    fn done(&self, record: &Record, deep: bool) {
        self.files.fetch_add(1, Ordering::Relaxed);
        if !deep {
            self.bytes.fetch_add(record.size, Ordering::Relaxed);
        }
    }

    fn read(&self, n: u64) {
        self.bytes.fetch_add(n, Ordering::Relaxed);
    }

    fn line(&self) -> String {
        format!(
            "{} of {} file(s), {} of {} MB{}",
            self.files.load(Ordering::Relaxed),
            self.total_files,
            self.bytes.load(Ordering::Relaxed) / 1_000_000,
            self.total_bytes / 1_000_000,
            if self.deep { " read" } else { "" }
        )
    }

    /// Shows the progress until `stop` is closed.
    fn show(&self, stop: mpsc::Receiver<()>) {
        let terminal = std::io::stderr().is_terminal();
        let every = if terminal {
            Duration::from_millis(250)
        } else {
            Duration::from_secs(5)
        };
        while let Err(mpsc::RecvTimeoutError::Timeout) = stop.recv_timeout(every) {
            if terminal {
                let _ = write!(std::io::stderr(), "\r\x1b[Kverify: {}", self.line());
            } else {
                log::info!("verify: {}", self.line());
            }
        }
        if terminal {
            let _ = write!(std::io::stderr(), "\r\x1b[K");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn options_read_dates_inclusive() {
        let o = Options::parse(&args(&[
            "--since",
            "2024-09-09",
            "--until",
            "2024-09-10",
            "--deep",
        ]))
        .unwrap();
        assert_eq!(o.since, parse_iso_date("2024-09-09"));
        assert_eq!(
            o.until,
            parse_iso_date("2024-09-10T23:59:59.999Z"),
            "the whole day"
        );
        assert!(o.deep);
        let o = Options::parse(&args(&["--until", "2024-09-10T12:00:00Z"])).unwrap();
        assert_eq!(o.until, parse_iso_date("2024-09-10T12:00:00.000Z"));
        assert_eq!(Options::parse(&[]).unwrap(), Options::default());
        for bad in [
            &["--since"][..],
            &["--since", "yesterday"],
            &["--until", "2024-13-01"],
            &["--since", "2024-09-10", "--until", "2024-09-09"],
            &["--fast"],
        ] {
            assert!(Options::parse(&args(bad)).is_err(), "{bad:?}");
        }
    }
}
