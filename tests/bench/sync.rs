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
//! `cargo bench --bench sync -- [--scenario a,b,c] [--concurrency 1,4,8] [--size-mb N]
//! [--files N] [--page-size N] [--delete] [--dir DIR]`

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::raw::{c_int, c_long};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use spinoco_connector::emulator::{Emulator, EmulatorConfig};

const TOKEN: &str = "bench-token";
const TEMPLATE: &str =
    "{{due_date|yyyy}}/{{due_date|MM}}/{{due_date|dd}}/{{due_date|yyyyMMddHHmmss}}-{{task_id}}";
const ALL_TYPES: &str = "CallMetadata,Recordings,Transcriptions,ChatMetadata,ChatHistory,SMSMetadata,EmailMetadata,WorkflowMetadata";
const METADATA: &str = "CallMetadata,ChatMetadata,SMSMetadata,EmailMetadata,WorkflowMetadata";
const USAGE: &str = "usage: cargo bench --bench sync -- [--scenario a,b,c] [--concurrency 1,4,8] \
[--size-mb N] [--files N] [--page-size N] [--delete] [--dir DIR]
  a: backlog of 300 call tasks, recordings ~200 KB, 20 ms latency, every data type
  b: --files (20) recordings of --size-mb (50) MB, no latency, recordings only
  c: 2000 small tasks, metadata only, 20 ms latency
  --delete      also delete recordings on the emulator once stored (the limit never deletes)
  --page-size   SP_TASK_SYNC_PAGE_SIZE for the connector (default: the connector's)
  --dir         where the folders are written (default: the temp folder)";

struct Options {
    scenarios: Vec<char>,
    concurrency: Vec<usize>,
    size_mb: u64,
    files: usize,
    page_size: Option<usize>,
    delete: bool,
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
                if let Some(bad) = o.scenarios.iter().find(|s| !"abc".contains(**s)) {
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

/// Waits for the child and returns (exit code or -signal, CPU seconds of the child).
fn wait_with_usage(pid: u32) -> (i32, f64) {
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
    (code, secs(&usage.utime) + secs(&usage.stime))
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
    files: usize,
    bytes: u64,
    tasks: usize,
    requests: usize,
    cpu: f64,
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
        .map(|d| d.flatten().filter(|e| e.path().is_file()).count())
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

/// The connector: `--once` from a fresh emulator into a fresh folder.
fn run_connector(
    s: &Scenario,
    o: &Options,
    c: usize,
    dir: &Path,
) -> Result<(Figures, BTreeMap<String, String>), String> {
    let emu = Emulator::start(s.emulator.clone()).map_err(|e| e.to_string())?;
    let log = dir.with_extension("log");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_spinoco-connector"));
    cmd.env_clear()
        .env("SP_API_TOKEN", TOKEN)
        .env("SP_API_URL", emu.url())
        .env("SP_TASK_SYNC_TAG", "bench")
        .env("SP_TASK_SYNC_FILE_NAME_TEMPLATE", TEMPLATE)
        .env("SP_TASK_SYNC_GET_DATA", s.get)
        .env("SP_TASK_SYNC_SAVE_TO", dir)
        .env("SP_TASK_SYNC_CONCURRENCY", c.to_string())
        .env("SP_LOG_LEVEL", "warn")
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
    let (code, cpu, rss_kib) = std::thread::scope(|scope| {
        let poller = scope.spawn(|| poll_peak_rss(child.id(), &done));
        let (code, cpu) = wait_with_usage(child.id());
        done.store(true, Ordering::Relaxed);
        (code, cpu, poller.join().unwrap_or(0))
    });
    let wall = started.elapsed().as_secs_f64();
    if code != 0 {
        let text = fs::read_to_string(&log).unwrap_or_default();
        return Err(format!("the connector exited with {code}:\n{text}"));
    }
    let first_request_ms = emu
        .first_request_at()
        .map(|t| t.duration_since(started).as_secs_f64() * 1000.0);
    let files = expected(&emu);
    let bytes = verify(&emu, dir, &files)?;
    let _ = fs::remove_file(&log);
    Ok((
        Figures {
            wall,
            files: files.len(),
            bytes,
            tasks: emu.handed_out().len(),
            requests: emu.requests().len(),
            cpu,
            rss_kib,
            first_request_ms,
        },
        files,
    ))
}

/// The limit: the same files from an identical fresh emulator by N threads sharing one
/// agent (the connector's own agent settings), written to the same disk, nothing else.
fn run_limit(
    s: &Scenario,
    c: usize,
    dir: &Path,
    files: &BTreeMap<String, String>,
) -> Result<Figures, String> {
    let emu = Emulator::start(s.emulator.clone()).map_err(|e| e.to_string())?;
    let agent = spinoco_connector::http::agent(Duration::from_secs(30), c);
    let base = emu.url();
    let jobs: Vec<(&String, &String)> = files.iter().collect();
    let next = AtomicUsize::new(0);
    let bytes = AtomicU64::new(0);
    let started = Instant::now();
    let result: Result<(), String> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..c)
            .map(|_| {
                scope.spawn(|| -> Result<(), String> {
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        let Some((name, path)) = jobs.get(next.fetch_add(1, Ordering::Relaxed))
                        else {
                            return Ok(());
                        };
                        let target = dir.join(name);
                        fs::create_dir_all(target.parent().unwrap()).map_err(|e| e.to_string())?;
                        let response = agent
                            .get(format!("{base}{path}"))
                            .header("Authorization", format!("Bearer {TOKEN}"))
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
    Ok(Figures {
        wall: started.elapsed().as_secs_f64(),
        files: files.len(),
        bytes: bytes.into_inner(),
        tasks: 0,
        requests: emu.requests().len(),
        cpu: 0.0,
        rss_kib: 0,
        first_request_ms: None,
    })
}

fn mb_per_s(f: &Figures) -> f64 {
    f.bytes as f64 / 1e6 / f.wall
}

fn main() {
    let o = match parse_options() {
        Ok(o) => o,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("error: {e}");
            }
            eprintln!("{USAGE}");
            std::process::exit(if e.is_empty() { 0 } else { 2 });
        }
    };
    println!(
        "machine: {} CPU(s), {:.1} GB memory; writing under {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        memory_gb(),
        o.dir.display()
    );
    println!();
    println!("| scenario | conc. | wall s | limit wall s | wall / limit | tasks/s | files/s | MB/s | MB/s / limit | peak RSS MB | CPU s | CPU s/GB | requests/task | first request ms |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    let mut failed = false;
    for which in &o.scenarios {
        let s = scenario(*which, &o);
        for &c in &o.concurrency {
            let id = format!("spinoco-bench-{}-{which}-{c}", std::process::id());
            let (conn_dir, limit_dir) = (
                o.dir.join(format!("{id}-conn")),
                o.dir.join(format!("{id}-limit")),
            );
            // SAFETY: sync(2) takes no arguments and cannot fail.
            unsafe { sync() };
            let outcome = run_connector(&s, &o, c, &conn_dir).and_then(|(f, files)| {
                let _ = fs::remove_dir_all(&conn_dir);
                unsafe { sync() };
                let limit = run_limit(&s, c, &limit_dir, &files);
                let _ = fs::remove_dir_all(&limit_dir);
                limit.map(|l| (f, l))
            });
            match outcome {
                Ok((f, l)) => println!(
                    "| {} | {c} | {:.2} | {:.2} | {:.2}x | {:.0} | {:.0} | {:.1} | {:.0} % | {:.1} | {:.2} | {} | {:.2} | {} |",
                    s.name,
                    f.wall,
                    l.wall,
                    f.wall / l.wall,
                    f.tasks as f64 / f.wall,
                    f.files as f64 / f.wall,
                    mb_per_s(&f),
                    100.0 * mb_per_s(&f) / mb_per_s(&l),
                    f.rss_kib as f64 / 1024.0,
                    f.cpu,
                    if f.bytes >= 100_000_000 {
                        format!("{:.2}", f.cpu / (f.bytes as f64 / 1e9))
                    } else {
                        "-".into()
                    },
                    f.requests as f64 / f.tasks.max(1) as f64,
                    f.first_request_ms.map_or("-".into(), |m| format!("{m:.1}")),
                ),
                Err(e) => {
                    failed = true;
                    println!("| {} | {c} | FAILED: {} |", s.name, e.lines().next().unwrap_or(""));
                    eprintln!("{e}");
                }
            }
            let _ = fs::remove_dir_all(&conn_dir);
            let _ = fs::remove_dir_all(&limit_dir);
        }
    }
    if failed {
        std::process::exit(1);
    }
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
