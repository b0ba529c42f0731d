//! The benchmark: the release binary against the in-process platform emulator, next to
//! the physical limit measured in the same run.
//!
//! A figure alone says little on a shared two-core machine, so every scenario is run
//! twice against identical emulated accounts: once by the connector (`--once` into a
//! fresh folder, verified byte for byte afterwards) and once by the plainest possible
//! download of the very same files (one ureq agent shared by N threads, written to the
//! same disk, nothing else). The connector's figures are printed as a ratio of that
//! limit. It prints; it never fails on a time (only on a wrong or incomplete result).
//!
//! The limit comes in two figures: the downloads alone, and the same requests the
//! connector must make (the same downloads, as many feed requests, and the same
//! deletes after them), both by N threads with nothing else to do.
//!
//! Cloud storages (`--storage s3,gcs,azure`) are the test servers of `tests/servers/`
//! (started here with `.cache/` when the test script has not), reached through a TCP
//! proxy that holds every request `--storage-delay-ms` before forwarding it (a store
//! in the same region answers in 10–30 ms; the test servers on 127.0.0.1 in well under
//! one), which also counts the storage requests.
//!
//! Each figure is the median of `--runs` runs (3), the limits measured in the same runs,
//! so that one run disturbed by the machine's other work does not decide it. `--binary`
//! measures another build of the connector (an older commit's, for before and after).
//!
//! `cargo bench --bench sync -- [--scenario a,b,c,d,e] [--concurrency 1,4,8] [--size-mb N]
//! [--files N] [--page-size N] [--delete] [--storage local,s3,gcs,azure]
//! [--storage-delay-ms 10,30] [--runs N] [--binary PATH] [--dir DIR]`

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::raw::{c_int, c_long};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use spinoco_connector::{Emulator, EmulatorConfig};

mod cli;

// The integration tests' helpers, of which the benchmark uses the providers and a proxy.
#[path = "../common/mod.rs"]
#[allow(dead_code)]
mod common;

use common::providers::{self, Provider};
use common::proxy::DelayingProxy;

const TOKEN: &str = "bench-token";
const TEMPLATE: &str =
    "{{due_date|yyyy}}/{{due_date|MM}}/{{due_date|dd}}/{{due_date|yyyyMMddHHmmss}}-{{task_id}}";
const ALL_TYPES: &str = "CallMetadata,Recordings,Transcriptions,ChatMetadata,ChatHistory,SMSMetadata,EmailMetadata,WorkflowMetadata";
const METADATA: &str = "CallMetadata,ChatMetadata,SMSMetadata,EmailMetadata,WorkflowMetadata";
const USAGE: &str =
    "usage: cargo bench --bench sync -- [--scenario a,b,c,d,e] [--concurrency 1,4,8] \
[--size-mb N] [--files N] [--page-size N] [--delete] [--runs N] [--binary PATH] [--dir DIR]
  a: backlog of 300 call tasks, recordings ~200 KB, 20 ms latency, every data type
  b: --files (20) recordings of --size-mb (50) MB, no latency, recordings only
  c: 2000 small tasks, metadata only, 20 ms latency
  d: a with 3000 call tasks
  e: 12 recordings of 6-18 MB, no latency, recordings only
  --delete      also delete recordings on the emulator once stored (the limit never deletes)
  --page-size   SP_TASK_SYNC_PAGE_SIZE for the connector (default: the connector's)
  --storage     local (default), s3, gcs, azure: the cloud ones through a delaying proxy
  --storage-delay-ms  delays per storage request for the cloud storages (default 10,30)
  --runs        runs of each measurement; every figure is their median (default 3)
  --binary      the connector binary to measure (default: this build's)
  --dir         where the folders are written (default: the temp folder)";

struct Options {
    scenarios: Vec<char>,
    concurrency: Vec<usize>,
    size_mb: u64,
    files: usize,
    page_size: Option<usize>,
    delete: bool,
    storages: Vec<Provider>,
    delays_ms: Vec<u64>,
    runs: usize,
    binary: PathBuf,
    dir: PathBuf,
}

fn parse_options() -> Result<Options, String> {
    let mut o = Options {
        scenarios: vec!['a', 'b', 'c'],
        concurrency: vec![1, 4, 8],
        size_mb: 50,
        files: 20,
        page_size: None,
        delete: false,
        storages: vec![Provider::Local],
        delays_ms: vec![10, 30],
        runs: 3,
        binary: PathBuf::from(env!("CARGO_BIN_EXE_spinoco-connector")),
        dir: std::env::temp_dir(),
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            // cargo bench passes --bench to every bench target.
            "--bench" => {}
            "--scenario" => {
                o.scenarios = value()?
                    .split(',')
                    .filter_map(|s| s.trim().chars().next())
                    .collect();
                if let Some(bad) = o.scenarios.iter().find(|s| !"abcde".contains(**s)) {
                    return Err(format!("unknown scenario {bad:?}"));
                }
            }
            "--concurrency" => {
                o.concurrency = value()?
                    .split(',')
                    .map(|s| {
                        s.trim()
                            .parse()
                            .map_err(|_| format!("--concurrency: cannot read {s:?}"))
                    })
                    .collect::<Result<_, _>>()?
            }
            "--size-mb" => o.size_mb = number(flag, value()?)?,
            "--files" => o.files = number(flag, value()?)?,
            "--page-size" => o.page_size = Some(number(flag, value()?)?),
            "--delete" => o.delete = true,
            "--storage" => {
                o.storages = value()?
                    .split(',')
                    .map(|s| match s.trim() {
                        "local" => Ok(Provider::Local),
                        "s3" => Ok(Provider::S3),
                        "gcs" => Ok(Provider::Gcs),
                        "azure" => Ok(Provider::Azure),
                        other => Err(format!("--storage: unknown storage {other:?}")),
                    })
                    .collect::<Result<_, _>>()?
            }
            "--storage-delay-ms" => {
                o.delays_ms = value()?
                    .split(',')
                    .map(|s| number("--storage-delay-ms", s.trim()))
                    .collect::<Result<_, _>>()?
            }
            "--runs" => o.runs = number::<usize>(flag, value()?)?.max(1),
            "--binary" => o.binary = PathBuf::from(value()?),
            "--dir" => o.dir = PathBuf::from(value()?),
            "--help" | "-h" => return Err(String::new()),
            other => return Err(format!("unknown option {other:?}")),
        }
    }
    Ok(o)
}

fn number<T: std::str::FromStr>(flag: &str, v: &str) -> Result<T, String> {
    v.parse().map_err(|_| format!("{flag}: cannot read {v:?}"))
}

/// One scenario: the emulated account and what the connector asks for.
struct Scenario {
    name: String,
    emulator: EmulatorConfig,
    get: &'static str,
}

fn scenario(which: char, o: &Options) -> Scenario {
    let base = EmulatorConfig {
        token: TOKEN.into(),
        seed: 5,
        ..Default::default()
    };
    match which {
        'a' => Scenario {
            name: "a: 300 calls, ~200 KB, 20 ms".into(),
            emulator: EmulatorConfig {
                tasks: 300,
                calls_only: true,
                recording_size: (180_000, 220_000),
                latency: Duration::from_millis(20),
                ..base
            },
            get: ALL_TYPES,
        },
        'd' => Scenario {
            name: "d: 3000 calls, ~200 KB, 20 ms".into(),
            emulator: EmulatorConfig {
                tasks: 3000,
                calls_only: true,
                recording_size: (180_000, 220_000),
                latency: Duration::from_millis(20),
                ..base
            },
            get: ALL_TYPES,
        },
        'e' => Scenario {
            name: "e: 12 x 6-18 MB, 0 ms".into(),
            emulator: EmulatorConfig {
                tasks: 12,
                calls_only: true,
                recordings_per_call: Some(1),
                recording_size: (6_000_000, 18_000_000),
                ..base
            },
            get: "Recordings",
        },
        'b' => {
            let size = o.size_mb * 1_000_000;
            Scenario {
                name: format!("b: {} x {} MB, 0 ms", o.files, o.size_mb),
                emulator: EmulatorConfig {
                    tasks: o.files,
                    calls_only: true,
                    recordings_per_call: Some(1),
                    recording_size: (size, size),
                    ..base
                },
                get: "Recordings",
            }
        }
        _ => Scenario {
            name: "c: 2000 small tasks, 20 ms".into(),
            emulator: EmulatorConfig {
                tasks: 2000,
                latency: Duration::from_millis(20),
                ..base
            },
            get: METADATA,
        },
    }
}

// --- the child's resource use, by wait4(2) (no crate for one call) ---

#[repr(C)]
#[derive(Default)]
struct Timeval {
    sec: c_long,
    usec: c_long,
}

#[repr(C)]
#[derive(Default)]
struct Rusage {
    utime: Timeval,
    stime: Timeval,
    rest: [c_long; 14],
}

extern "C" {
    /// sync(2): flushes the dirty pages of earlier runs so they do not land in this one.
    fn sync();
    fn wait4(pid: c_int, status: *mut c_int, options: c_int, rusage: *mut Rusage) -> c_int;
}

/// How a child ended: its exit code (or -signal) and its CPU seconds.
struct ChildEnd {
    code: i32,
    cpu: f64,
    /// The part of `cpu` in user space (the rest is the kernel's: on this machine mostly
    /// writing to the page cache and fsync).
    cpu_user: f64,
}

/// Waits for the child and says how it ended.
fn wait_with_usage(pid: u32) -> ChildEnd {
    let mut status: c_int = 0;
    let mut usage = Rusage::default();
    loop {
        // SAFETY: both pointers are valid for the call; the child is ours and not yet reaped.
        let r = unsafe { wait4(pid as c_int, &mut status, 0, &mut usage) };
        if r == pid as c_int {
            break;
        }
        let e = io::Error::last_os_error();
        assert_eq!(e.kind(), io::ErrorKind::Interrupted, "wait4 failed: {e}");
    }
    let code = if status & 0x7f == 0 {
        (status >> 8) & 0xff
    } else {
        -(status & 0x7f)
    };
    let secs = |t: &Timeval| t.sec as f64 + t.usec as f64 / 1e6;
    ChildEnd {
        code,
        cpu: secs(&usage.utime) + secs(&usage.stime),
        cpu_user: secs(&usage.utime),
    }
}

/// Peak RSS in KiB, by polling `VmHWM` of /proc/<pid>/status until `done`.
///
/// Not `ru_maxrss`: the kernel carries the parent's RSS at fork into the child's
/// `ru_maxrss` (the bench process holds the emulator and verification buffers), so it
/// would report the bench, not the connector. `VmHWM` is the high-water mark of the
/// exec'ed image itself and never goes down, so only a peak in the last few
/// milliseconds before exit could be missed.
fn poll_peak_rss(pid: u32, done: &AtomicBool) -> u64 {
    let path = format!("/proc/{pid}/status");
    let mut peak = 0;
    while !done.load(Ordering::Relaxed) {
        let hwm = fs::read_to_string(&path).ok().and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        });
        peak = peak.max(hwm.unwrap_or(0));
        std::thread::sleep(Duration::from_millis(2));
    }
    peak
}

/// What one run measured.
struct Figures {
    wall: f64,
    bytes: u64,
    tasks: usize,
    /// Requests the emulator answered (feed, downloads, deletes).
    requests: usize,
    feed_requests: usize,
    /// Requests the storage proxy forwarded (cloud storages only).
    storage_requests: Option<usize>,
    journal_writes: Option<u64>,
    cpu: f64,
    cpu_user: f64,
    rss_kib: u64,
    first_request_ms: Option<f64>,
}

/// The files the emulator handed out: name → path (the first handed out wins).
fn expected(emu: &Emulator) -> BTreeMap<String, String> {
    let mut map = BTreeMap::new();
    for task in emu.handed_out() {
        for g in task["get"].as_array().cloned().unwrap_or_default() {
            if let (Some(name), Some(path)) = (g["fileName"].as_str(), g["path"].as_str()) {
                map.entry(name.to_string()).or_insert(path.to_string());
            }
        }
    }
    map
}

/// Every handed-out file is in `dir` with the emulator's bytes, nothing else is, and the
/// connector left neither temp files nor a journal. Returns the bytes checked.
fn verify(emu: &Emulator, dir: &Path, files: &BTreeMap<String, String>) -> Result<u64, String> {
    let mut total = 0;
    for (name, path) in files {
        let want = emu
            .content(path)
            .ok_or(format!("the emulator has no {path}"))?;
        let mut f = File::open(dir.join(name)).map_err(|e| format!("{name}: {e}"))?;
        let mut got = vec![0u8; 1 << 20];
        let mut at = 0;
        loop {
            let n = f.read(&mut got).map_err(|e| format!("{name}: {e}"))?;
            if n == 0 {
                break;
            }
            if at + n > want.len() || got[..n] != want[at..at + n] {
                return Err(format!("{name}: content differs at byte {at}"));
            }
            at += n;
        }
        if at != want.len() {
            return Err(format!(
                "{name}: {at} bytes stored, {} expected",
                want.len()
            ));
        }
        total += at as u64;
    }
    let stored = count_files(dir, dir);
    if stored != files.len() {
        return Err(format!("{stored} files stored, {} handed out", files.len()));
    }
    let state = dir.join(".spinoco-connector");
    let left = fs::read_dir(&state)
        .map(|d| {
            d.flatten()
                .filter(|e| e.path().is_file())
                // The released journal lease and the local store's lock stay by design.
                .filter(|e| {
                    let name = e.file_name().to_string_lossy().to_string();
                    !name.ends_with(".lease.json") && name != "cas.lock"
                })
                .count()
        })
        .unwrap_or(0)
        + fs::read_dir(state.join("tmp"))
            .map(|d| d.count())
            .unwrap_or(0);
    if left > 0 {
        return Err(format!(
            "{left} journal or temp file(s) left in {}",
            state.display()
        ));
    }
    Ok(total)
}

fn count_files(root: &Path, dir: &Path) -> usize {
    let mut n = 0;
    for e in fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p == root.join(".spinoco-connector") {
            continue;
        }
        n += if p.is_dir() { count_files(root, &p) } else { 1 };
    }
    n
}

/// Where the connector stores: a fresh folder, or a fresh prefix of a cloud test
/// server behind a delaying proxy.
struct Storage {
    provider: Provider,
    /// The variables the connector gets (through the proxy).
    env: BTreeMap<String, String>,
    /// The same, straight to the server (for verifying).
    direct: BTreeMap<String, String>,
    proxy: Option<DelayingProxy>,
}

impl Storage {
    fn open(provider: Provider, delay_ms: u64, dir: &Path) -> Storage {
        if provider == Provider::Local {
            let env: BTreeMap<String, String> = [(
                "SP_TASK_SYNC_SAVE_TO".to_string(),
                dir.display().to_string(),
            )]
            .into();
            return Storage {
                provider,
                direct: env.clone(),
                env,
                proxy: None,
            };
        }
        let direct = providers::target(provider, "bench").expect("the test server runs");
        let upstream = providers::endpoint(&direct).unwrap();
        let proxy = DelayingProxy::start(
            upstream.trim_start_matches("http://"),
            Duration::from_millis(delay_ms),
        );
        Storage {
            provider,
            env: providers::with_endpoint(&direct, &proxy.url()),
            direct,
            proxy: Some(proxy),
        }
    }

    fn label_of(provider: Provider, delay_ms: u64) -> String {
        match provider {
            Provider::Local => "local".into(),
            p => format!("{} +{delay_ms} ms", p.name()),
        }
    }
}

/// A connector run's figures, the files it was handed (name → path) and its deletes.
type ConnectorRun = (Figures, BTreeMap<String, String>, Vec<String>);

/// The connector: `--once` from a fresh emulator into a fresh folder or prefix.
fn run_connector(
    s: &Scenario,
    o: &Options,
    c: usize,
    storage: &Storage,
) -> Result<ConnectorRun, String> {
    let emu = Emulator::start(s.emulator.clone()).map_err(|e| e.to_string())?;
    let log = o
        .dir
        .join(format!("spinoco-bench-{}.log", std::process::id()));
    let mut cmd = Command::new(&o.binary);
    cmd.env_clear()
        .env("SP_API_TOKEN", TOKEN)
        .env("SP_API_URL", emu.url())
        .env("SP_TASK_SYNC_TAG", "bench")
        .env("SP_TASK_SYNC_FILE_NAME_TEMPLATE", TEMPLATE)
        .env("SP_TASK_SYNC_GET_DATA", s.get)
        .envs(&storage.env)
        .env("SP_TASK_SYNC_CONCURRENCY", c.to_string())
        // A line per page and the summary (with the journal writes): nothing per file.
        .env("SP_LOG_LEVEL", "info")
        .arg("--once")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(File::create(&log).map_err(|e| e.to_string())?);
    if let Some(p) = o.page_size {
        cmd.env("SP_TASK_SYNC_PAGE_SIZE", p.to_string());
    }
    if o.delete && s.get.contains("Recordings") {
        cmd.env("SP_TASK_SYNC_DELETE_DATA", "Recordings");
    }
    let started = Instant::now();
    let child = cmd.spawn().map_err(|e| e.to_string())?;
    let done = AtomicBool::new(false);
    let (end, rss_kib) = std::thread::scope(|scope| {
        let poller = scope.spawn(|| poll_peak_rss(child.id(), &done));
        let end = wait_with_usage(child.id());
        done.store(true, Ordering::Relaxed);
        (end, poller.join().unwrap_or(0))
    });
    let ChildEnd {
        code,
        cpu,
        cpu_user,
    } = end;
    let wall = started.elapsed().as_secs_f64();
    let text = fs::read_to_string(&log).unwrap_or_default();
    let _ = fs::remove_file(&log);
    if code != 0 {
        return Err(format!("the connector exited with {code}:\n{text}"));
    }
    let journal_writes = text.lines().find_map(|l| {
        l.split("; ")
            .last()?
            .strip_suffix(" journal writes")?
            .parse()
            .ok()
    });
    let first_request_ms = emu
        .first_request_at()
        .map(|t| t.duration_since(started).as_secs_f64() * 1000.0);
    let files = expected(&emu);
    let bytes = match storage.provider {
        Provider::Local => verify(
            &emu,
            Path::new(&storage.env["SP_TASK_SYNC_SAVE_TO"]),
            &files,
        )?,
        _ => {
            providers::verify(&emu, &storage.direct, &Default::default());
            files
                .values()
                .map(|p| emu.content(p).map_or(0, |c| c.len() as u64))
                .sum()
        }
    };
    let requests = emu.requests();
    Ok((
        Figures {
            wall,
            bytes,
            tasks: emu.handed_out().len(),
            requests: requests.len(),
            feed_requests: requests
                .iter()
                .filter(|r| r.path.starts_with("/task/sync"))
                .count(),
            storage_requests: storage.proxy.as_ref().map(|p| p.requests().len()),
            // Through a proxy, counted on the wire (any version of the connector).
            journal_writes: storage
                .proxy
                .as_ref()
                .map(|p| {
                    p.requests()
                        .iter()
                        .filter(|(m, t)| {
                            m != "GET" && m != "HEAD" && t.contains("spinoco-connector")
                        })
                        .count() as u64
                })
                .or(journal_writes),
            cpu,
            cpu_user,
            rss_kib,
            first_request_ms,
        },
        files,
        emu.deletes(),
    ))
}

/// What the limit does besides the downloads, for the "same requests" figure.
struct SameRequests<'r> {
    feed: usize,
    deletes: &'r [String],
    query: String,
}

/// The limit: the same files from an identical fresh emulator by N threads sharing one
/// agent (the connector's own agent settings), written to the same disk, nothing else.
/// With `same`, the threads also make as many feed requests (among the downloads) and,
/// once every download is done, the same deletes.
fn run_limit(
    s: &Scenario,
    c: usize,
    dir: &Path,
    files: &BTreeMap<String, String>,
    same: Option<SameRequests>,
) -> Result<Figures, String> {
    enum Req<'j> {
        Feed,
        Get(&'j String, &'j String),
        Delete(&'j String),
    }
    let emu = Emulator::start(s.emulator.clone()).map_err(|e| e.to_string())?;
    let agent = spinoco_connector::agent(Duration::from_secs(30), c);
    let base = emu.url();
    let mut first: Vec<Req> = files.iter().map(|(n, p)| Req::Get(n, p)).collect();
    let mut then: Vec<Req> = Vec::new();
    if let Some(same) = &same {
        // Spread the feed requests over the downloads, as the connector's window does.
        let every = (first.len() / same.feed.max(1)).max(1);
        for i in 0..same.feed {
            first.insert((i * (every + 1)).min(first.len()), Req::Feed);
        }
        then.extend(same.deletes.iter().map(Req::Delete));
    }
    let bytes = AtomicU64::new(0);
    let started = Instant::now();
    for jobs in [first, then] {
        let next = AtomicUsize::new(0);
        let result: Result<(), String> = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..c)
                .map(|_| {
                    scope.spawn(|| -> Result<(), String> {
                        let mut buf = vec![0u8; 64 * 1024];
                        loop {
                            let Some(job) = jobs.get(next.fetch_add(1, Ordering::Relaxed)) else {
                                return Ok(());
                            };
                            let auth = format!("Bearer {TOKEN}");
                            let (name, path) = match job {
                                Req::Feed => {
                                    let query = &same.as_ref().unwrap().query;
                                    let mut r = agent
                                        .post(format!("{base}/task/sync/"))
                                        .header("Authorization", &auth)
                                        .header("Content-Type", "application/json")
                                        .send(query.as_bytes())
                                        .map_err(|e| format!("feed: {e}"))?;
                                    r.body_mut().read_to_vec().map_err(|e| e.to_string())?;
                                    continue;
                                }
                                Req::Delete(path) => {
                                    agent
                                        .delete(format!("{base}{path}"))
                                        .header("Authorization", &auth)
                                        .call()
                                        .map_err(|e| format!("{path}: {e}"))?;
                                    continue;
                                }
                                Req::Get(name, path) => (name, path),
                            };
                            let target = dir.join(name);
                            fs::create_dir_all(target.parent().unwrap())
                                .map_err(|e| e.to_string())?;
                            let response = agent
                                .get(format!("{base}{path}"))
                                .header("Authorization", &auth)
                                .call()
                                .map_err(|e| format!("{path}: {e}"))?;
                            if response.status() != 200 {
                                return Err(format!("{path}: HTTP {}", response.status()));
                            }
                            let mut body = response.into_body().into_reader();
                            let mut out = File::create(&target).map_err(|e| e.to_string())?;
                            loop {
                                let n = body.read(&mut buf).map_err(|e| e.to_string())?;
                                if n == 0 {
                                    break;
                                }
                                out.write_all(&buf[..n]).map_err(|e| e.to_string())?;
                                bytes.fetch_add(n as u64, Ordering::Relaxed);
                            }
                        }
                    })
                })
                .collect();
            workers
                .into_iter()
                .try_for_each(|w| w.join().unwrap_or(Err("a download thread panicked".into())))
        });
        result?;
    }
    Ok(Figures {
        wall: started.elapsed().as_secs_f64(),
        bytes: bytes.into_inner(),
        tasks: 0,
        requests: emu.requests().len(),
        feed_requests: 0,
        storage_requests: None,
        journal_writes: None,
        cpu: 0.0,
        cpu_user: 0.0,
        rss_kib: 0,
        first_request_ms: None,
    })
}

/// The connector's first feed request, for the limit's feed requests.
fn query_of(s: &Scenario, o: &Options) -> String {
    let delete = if o.delete && s.get.contains("Recordings") {
        "Recordings"
    } else {
        ""
    };
    serde_json::json!({
        "query": {
            "tag": "bench-limit", "get": s.get, "delete": delete, "fileNameTemplate": TEMPLATE,
            "skillsMust": [], "skillsShould": [], "skillsMustNot": [],
            "hashTagsMust": [], "hashTagsShould": [], "hashTagsMustNot": []
        },
        "count": o.page_size.unwrap_or(50)
    })
    .to_string()
}

fn mb_per_s(f: &Figures) -> f64 {
    f.bytes as f64 / 1e6 / f.wall
}

/// The medians of `--runs` runs of the connector and of the two limits.
struct Measured {
    connector: Figures,
    downloads: Figures,
    same: Figures,
    /// The connector's fastest and slowest wall time.
    wall_range: (f64, f64),
}

/// Runs the connector and then the two limits, `--runs` times, each run in fresh
/// folders (or a fresh prefix), and takes the median of every figure.
fn measure(
    s: &Scenario,
    o: &Options,
    which: char,
    c: usize,
    provider: Provider,
    delay: u64,
) -> Result<Measured, String> {
    let mut runs = Vec::new();
    for run in 0..o.runs {
        let id = format!("spinoco-bench-{}-{which}-{c}-{run}", std::process::id());
        let (conn_dir, limit_dir) = (
            o.dir.join(format!("{id}-conn")),
            o.dir.join(format!("{id}-limit")),
        );
        let storage = Storage::open(provider, delay, &conn_dir);
        // SAFETY: sync(2) takes no arguments and cannot fail.
        unsafe { sync() };
        let outcome = run_connector(s, o, c, &storage).and_then(|(f, files, deletes)| {
            let _ = fs::remove_dir_all(&conn_dir);
            unsafe { sync() };
            let limit = run_limit(s, c, &limit_dir, &files, None);
            let _ = fs::remove_dir_all(&limit_dir);
            let same = SameRequests {
                feed: f.feed_requests,
                deletes: &deletes,
                query: query_of(s, o),
            };
            unsafe { sync() };
            let same = run_limit(s, c, &limit_dir, &files, Some(same));
            let _ = fs::remove_dir_all(&limit_dir);
            Ok((f, limit?, same?))
        });
        let _ = fs::remove_dir_all(&conn_dir);
        let _ = fs::remove_dir_all(&limit_dir);
        runs.push(outcome?);
    }
    let walls: Vec<f64> = runs.iter().map(|r| r.0.wall).collect();
    let (connector, downloads, same): (Vec<_>, Vec<_>, Vec<_>) =
        runs.into_iter()
            .fold((vec![], vec![], vec![]), |mut acc, (f, l, s)| {
                acc.0.push(f);
                acc.1.push(l);
                acc.2.push(s);
                acc
            });
    Ok(Measured {
        connector: median_of(&connector),
        downloads: median_of(&downloads),
        same: median_of(&same),
        wall_range: (
            walls.iter().copied().fold(f64::INFINITY, f64::min),
            walls.iter().copied().fold(0.0, f64::max),
        ),
    })
}

/// The median of a figure over runs (the upper one of an even count).
fn median<T: PartialOrd + Copy>(mut values: Vec<T>) -> T {
    values.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    values[values.len() / 2]
}

/// Every figure the median of its runs'.
fn median_of(runs: &[Figures]) -> Figures {
    let m_f64 = |f: fn(&Figures) -> f64| median(runs.iter().map(f).collect());
    let m_u64 = |f: fn(&Figures) -> u64| median(runs.iter().map(f).collect());
    let m_usize = |f: fn(&Figures) -> usize| median(runs.iter().map(f).collect());
    let m_opt = |f: fn(&Figures) -> Option<f64>| {
        let some: Vec<f64> = runs.iter().filter_map(f).collect();
        (!some.is_empty()).then(|| median(some))
    };
    Figures {
        wall: m_f64(|f| f.wall),
        bytes: m_u64(|f| f.bytes),
        tasks: m_usize(|f| f.tasks),
        requests: m_usize(|f| f.requests),
        feed_requests: m_usize(|f| f.feed_requests),
        storage_requests: m_opt(|f| f.storage_requests.map(|n| n as f64)).map(|n| n as usize),
        journal_writes: m_opt(|f| f.journal_writes.map(|n| n as f64)).map(|n| n as u64),
        cpu: m_f64(|f| f.cpu),
        cpu_user: m_f64(|f| f.cpu_user),
        rss_kib: m_u64(|f| f.rss_kib),
        first_request_ms: m_opt(|f| f.first_request_ms),
    }
}

fn main() {
    let o = cli::options_or_exit(parse_options(), USAGE);
    println!(
        "machine: {} CPU(s), {:.1} GB memory; writing under {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        memory_gb(),
        o.dir.display()
    );
    let servers = start_servers(&o.storages);
    println!();
    println!("| scenario | storage | conc. | wall s | wall s (range) | limit s (downloads) | limit s (same requests) | wall / limit (same requests) | wall / local | ms / task | MB/s | MB/s / limit | peak RSS MB | CPU s | CPU s user | CPU s/GB | CPU s / 1000 requests | platform requests/task | storage requests/task | journal writes/task | first request ms |");
    println!(
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    let mut failed = false;
    for which in &o.scenarios {
        let s = scenario(*which, &o);
        let mut local_wall: BTreeMap<usize, f64> = BTreeMap::new();
        for &provider in &o.storages {
            let delays = if provider == Provider::Local {
                vec![0]
            } else {
                o.delays_ms.clone()
            };
            for &delay in &delays {
                for &c in &o.concurrency {
                    let label = Storage::label_of(provider, delay);
                    match measure(&s, &o, *which, c, provider, delay) {
                        Ok(m) => {
                            let (f, l, same) = (&m.connector, &m.downloads, &m.same);
                            if provider == Provider::Local {
                                local_wall.insert(c, f.wall);
                            }
                            let per_task = |n: f64| format!("{:.2}", n / f.tasks.max(1) as f64);
                            let all_requests = f.requests + f.storage_requests.unwrap_or(0);
                            println!(
                                "| {} | {label} | {c} | {:.2} | {:.2}–{:.2} | {:.2} | {:.2} | {:.2}x | {} | {:.2} | {:.1} | {:.0} % | {:.1} | {:.2} | {:.2} | {} | {:.2} | {} | {} | {} | {} |",
                                s.name,
                                f.wall,
                                m.wall_range.0,
                                m.wall_range.1,
                                l.wall,
                                same.wall,
                                f.wall / same.wall,
                                match (provider, local_wall.get(&c)) {
                                    (Provider::Local, _) | (_, None) => "-".to_string(),
                                    (_, Some(local)) => format!("{:.2}x", f.wall / local),
                                },
                                f.wall * 1000.0 / f.tasks.max(1) as f64,
                                mb_per_s(f),
                                100.0 * mb_per_s(f) / mb_per_s(l),
                                f.rss_kib as f64 / 1024.0,
                                f.cpu,
                                f.cpu_user,
                                if f.bytes >= 100_000_000 {
                                    format!("{:.2}", f.cpu / (f.bytes as f64 / 1e9))
                                } else {
                                    "-".into()
                                },
                                f.cpu * 1000.0 / all_requests.max(1) as f64,
                                per_task(f.requests as f64),
                                f.storage_requests.map_or("-".into(), |n| per_task(n as f64)),
                                f.journal_writes.map_or("-".into(), |n| per_task(n as f64)),
                                f.first_request_ms.map_or("-".into(), |m| format!("{m:.1}")),
                            )
                        }
                        Err(e) => {
                            failed = true;
                            println!(
                                "| {} | {label} | {c} | FAILED: {} |",
                                s.name,
                                e.lines().next().unwrap_or("")
                            );
                            eprintln!("{e}");
                        }
                    }
                }
            }
        }
    }
    for pid in servers {
        let _ = Command::new("kill").arg(pid.to_string()).status();
    }
    if failed {
        std::process::exit(1);
    }
}

/// Starts the cloud test servers `storages` need, with `tests/servers/*.sh` and the
/// repository's `.cache/` (as `tests/run.sh` does), unless the environment already
/// names them. Returns the pids to stop.
fn start_servers(storages: &[Provider]) -> Vec<u32> {
    let mut pids = Vec::new();
    for p in storages {
        let (script, var) = match p {
            Provider::Local => continue,
            Provider::S3 => ("s3", "SPINOCO_TEST_S3_ENDPOINT"),
            Provider::Gcs => ("gcs", "SPINOCO_TEST_GCS_ENDPOINT"),
            Provider::Azure => ("azurite", "SPINOCO_TEST_AZURITE_DSN"),
        };
        if std::env::var(var).is_ok_and(|v| !v.is_empty()) {
            continue;
        }
        let root = env!("CARGO_MANIFEST_DIR");
        let out = Command::new("bash")
            .arg(format!("{root}/tests/servers/{script}.sh"))
            .arg(format!("{root}/.cache"))
            .stderr(Stdio::inherit())
            .output()
            .expect("bash runs");
        assert!(out.status.success(), "tests/servers/{script}.sh failed");
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            if let Some(pid) = line.strip_prefix("SERVER_PID=") {
                pids.extend(pid.trim().parse::<u32>().ok());
            } else if let Some((k, v)) =
                line.strip_prefix("export ").and_then(|l| l.split_once('='))
            {
                std::env::set_var(k, v.trim_matches('\''));
            }
        }
    }
    pids
}

fn memory_gb() -> f64 {
    fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0 / 1024.0)
}
