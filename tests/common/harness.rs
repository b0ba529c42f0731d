//! Runs the real binary against the platform emulator and checks what it stored, with
//! the small things most tests need: fresh folders and unique names, signals, waiting,
//! and reading `/proc`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use spinoco_connector::{Emulator, EmulatorConfig};

pub const TOKEN: &str = "test-token-5ecr3t-value";
pub const TEMPLATE: &str =
    "{{due_date|yyyy}}/{{due_date|MM}}/{{due_date|dd}}/{{due_date|yyyyMMddHHmmss}}-{{task_id}}";
pub const ALL_TYPES: &str =
    "CallMetadata,Recordings,Transcriptions,ChatMetadata,ChatHistory,SMSMetadata,EmailMetadata,WorkflowMetadata";

pub fn emulator(cfg: EmulatorConfig) -> Emulator {
    Emulator::start(EmulatorConfig {
        token: TOKEN.into(),
        ..cfg
    })
    .expect("emulator starts")
}

/// A name no other test and no earlier run uses: `prefix`, this process and a count
/// of this process's names, and the time.
pub fn unique(prefix: &str) -> String {
    static NAMES: AtomicUsize = AtomicUsize::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let n = NAMES.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}-{}-{n}-{nanos}", std::process::id())
}

/// A fresh folder for one test.
pub fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(unique(&format!("spinoco-it-{name}")));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The connector's environment for a sync from `emu` into `dir`.
pub fn env(emu: &Emulator, dir: &Path) -> BTreeMap<String, String> {
    env_for_url(&emu.url(), dir)
}

/// The connector's environment for a sync from the platform at `url` into `dir`.
pub fn env_for_url(url: &str, dir: &Path) -> BTreeMap<String, String> {
    [
        ("SP_API_TOKEN", TOKEN.to_string()),
        ("SP_API_URL", url.to_string()),
        ("SP_TASK_SYNC_TAG", "it".to_string()),
        ("SP_TASK_SYNC_FILE_NAME_TEMPLATE", TEMPLATE.to_string()),
        ("SP_TASK_SYNC_GET_DATA", ALL_TYPES.to_string()),
        ("SP_TASK_SYNC_DELETE_DATA", "Recordings".to_string()),
        ("SP_TASK_SYNC_SAVE_TO", dir.display().to_string()),
        ("SP_TASK_SYNC_POLL_INTERVAL", "1s".to_string()),
        ("SP_HTTP_TIMEOUT", "3s".to_string()),
        ("SP_LOG_LEVEL", "info".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

pub fn command(env: &BTreeMap<String, String>, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_spinoco-connector"));
    cmd.env_clear().envs(env).args(args).stdin(Stdio::null());
    cmd
}

/// Runs to the end and returns the output (with a generous time limit).
pub fn run(env: &BTreeMap<String, String>, args: &[&str]) -> Output {
    let mut child = command(env, args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(300);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the connector did not finish in time");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// Starts the connector in the background, its log appended to `log`.
pub fn spawn(env: &BTreeMap<String, String>, args: &[&str], log: &Path) -> Child {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    command(env, args)
        .stdout(Stdio::null())
        .stderr(file)
        .spawn()
        .unwrap()
}

/// The checkout: the files the tests check (README, Dockerfile, deploy/) are in it.
pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A program on PATH or in the usual places.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .chain(["/usr/sbin", "/usr/bin", "/sbin", "/bin", "/usr/local/bin"])
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file());
    found
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Standard output and standard error, one after the other.
pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Every file below `dir` except the connector's own folder, as relative names.
pub fn files_in(dir: &Path) -> BTreeSet<String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeSet<String>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().to_string();
            if rel == ".spinoco-connector" {
                continue;
            }
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                out.insert(rel);
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(dir, dir, &mut out);
    out
}

/// The (fileName, path) of every file the emulator handed out, latest first wins.
pub fn expected(emu: &Emulator) -> BTreeMap<String, String> {
    let mut map = BTreeMap::new();
    for task in emu.handed_out() {
        for g in task["get"].as_array().cloned().unwrap_or_default() {
            map.entry(g["fileName"].as_str().unwrap().to_string())
                .or_insert(g["path"].as_str().unwrap().to_string());
        }
    }
    map
}

/// The tasks the emulator handed out of which no file is in `dir`: those a lost answer
/// to the feed's query took (the contract's one window; see [`verify_complete_except`]).
pub fn tasks_not_stored(emu: &Emulator, dir: &Path) -> BTreeSet<String> {
    let present = files_in(dir);
    emu.handed_out()
        .iter()
        .filter(|t| {
            let gets = t["get"].as_array().cloned().unwrap_or_default();
            !gets.is_empty()
                && gets
                    .iter()
                    .all(|g| !present.contains(g["fileName"].as_str().unwrap_or("")))
        })
        .map(|t| t["taskId"].as_str().unwrap_or("").to_string())
        .collect()
}

/// Checks that `dir` holds exactly the handed-out files with the platform's bytes,
/// that no temp file or journal is left, and that no delete came too early.
pub fn verify_complete(emu: &Emulator, dir: &Path) -> usize {
    verify_complete_except(emu, dir, &BTreeSet::new())
}

/// [`verify_complete`], but for the files of the tasks in `lost`.
pub fn verify_complete_except(emu: &Emulator, dir: &Path, lost: &BTreeSet<String>) -> usize {
    let mut expected = expected(emu);
    assert!(!expected.is_empty(), "the emulator handed out nothing");
    for task in emu.handed_out() {
        if lost.contains(task["taskId"].as_str().unwrap_or("")) {
            for g in task["get"].as_array().cloned().unwrap_or_default() {
                expected.remove(g["fileName"].as_str().unwrap_or(""));
            }
        }
    }
    let present = files_in(dir);
    let want: BTreeSet<String> = expected.keys().cloned().collect();
    let missing: Vec<_> = want.difference(&present).collect();
    let extra: Vec<_> = present.difference(&want).collect();
    assert!(
        missing.is_empty(),
        "{} files missing, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    assert!(
        extra.is_empty(),
        "unexpected files: {:?}",
        &extra[..extra.len().min(5)]
    );
    for (name, path) in &expected {
        let want = emu
            .content(path)
            .unwrap_or_else(|| panic!("emulator has no content for {path}"));
        let got = std::fs::read(dir.join(name)).unwrap();
        assert!(
            got == want,
            "{name}: {} bytes stored, {} expected (or content differs)",
            got.len(),
            want.len()
        );
    }
    let state = dir.join(".spinoco-connector");
    let tmp: Vec<_> = std::fs::read_dir(state.join("tmp"))
        .map(|d| d.flatten().collect())
        .unwrap_or_default();
    assert!(tmp.is_empty(), "temp files left: {tmp:?}");
    let journals: Vec<_> = std::fs::read_dir(&state)
        .map(|d| {
            d.flatten()
                .filter(|e| e.path().is_file())
                .filter(|e| {
                    let name = e.file_name().to_string_lossy().to_string();
                    !name.ends_with(".lease.json") && name != "cas.lock"
                })
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default();
    assert!(journals.is_empty(), "journal left behind: {journals:?}");
    assert_eq!(emu.violations(), Vec::<String>::new(), "premature deletes");
    let manifests: Vec<(String, Vec<u8>)> = std::fs::read_dir(state.join("manifest"))
        .map(|_| walk_files(&state.join("manifest")))
        .unwrap_or_default()
        .into_iter()
        .map(|p| {
            let key = p.strip_prefix(dir).unwrap().to_string_lossy().to_string();
            (key, std::fs::read(&p).unwrap())
        })
        .collect();
    super::archive::check(&manifests, |n| std::fs::read(dir.join(n)).ok(), emu);
    expected.len()
}

/// Every file below `dir`, as paths.
fn walk_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk_files(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// Installs a delete guard: at each DELETE every file of the task must already be in
/// `dir` with the platform's bytes.
pub fn guard_deletes(emu: &Emulator, dir: &Path) {
    let dir = dir.to_path_buf();
    guard_deletes_with(emu, move |name| std::fs::read(dir.join(name)).ok());
}

/// Installs a delete guard: at each DELETE, `stored(name)` must give the platform's
/// bytes for every file of the task.
pub fn guard_deletes_with(
    emu: &Emulator,
    stored: impl Fn(&str) -> Option<Vec<u8>> + Send + Sync + 'static,
) {
    let contents = emu.content_source();
    emu.set_delete_guard(Box::new(move |task: &Value| {
        task["get"].as_array().is_some_and(|gets| {
            gets.iter().all(|g| {
                let name = g["fileName"].as_str().unwrap_or("");
                let path = g["path"].as_str().unwrap_or("");
                matches!((stored(name), contents(path)), (Some(got), Some(want)) if got == want)
            })
        })
    }));
}

/// Recording paths of handed-out tasks that should have been deleted.
pub fn recording_deletes(emu: &Emulator) -> BTreeSet<String> {
    emu.handed_out()
        .iter()
        .flat_map(|t| t["delete"].as_array().cloned().unwrap_or_default())
        .map(|d| d["path"].as_str().unwrap().to_string())
        .collect()
}

/// Stops a service with SIGTERM; it must exit 0.
pub fn stop(mut child: Child) {
    signal(child.id(), "TERM");
    let status = child.wait().unwrap();
    assert!(status.success(), "exit status {status:?}");
}

/// A field of `/proc/<pid>/status` (`pid` a number or `self`) in its unit: kB for the
/// memory fields (`VmRSS:`, `VmHWM:`), a count for `Threads:`; `None` when the
/// process or the field is not there.
pub fn proc_status(pid: &str, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Sends a signal (`TERM`, `STOP`, `CONT`, …) to a process.
pub fn signal(pid: u32, name: &str) {
    let ok = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(ok.success(), "kill -{name} {pid} failed");
}

/// Polls `cond` every 20 ms; fails the test after `limit`.
pub fn wait_until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// GET `url`: the status and the body (any status; `None` when nothing answers).
pub fn get(url: &str) -> Option<(u16, String)> {
    let agent = spinoco_connector::agent(Duration::from_secs(5), 1);
    let mut response = agent.get(url).call().ok()?;
    let status = response.status().as_u16();
    Some((status, response.body_mut().read_to_string().unwrap()))
}
