//! The connector under systemd: the units in `deploy/systemd/` pass `systemd-analyze`
//! (verify, and an exposure of at most 2.0 in its offline security review), the service
//! speaks `sd_notify` to a `$NOTIFY_SOCKET` of the test's own (READY once the lease is
//! held, the watchdog fed at the interval asked for, through a storage outage too, a
//! status after each round, STOPPING on SIGTERM), and its log lines carry the syslog
//! priority journald reads when stderr is the stream `$JOURNAL_STREAM` names.
//!
//! `systemd-analyze` works without systemd running (both are static analyses of the unit
//! files); `tests/run.sh` installs it where it is missing.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use spinoco_connector::{Emulator, EmulatorConfig, Faults};

use crate::common::harness::{
    command, emulator, env, expected, scratch, signal, spawn, text, wait_until,
};

const UNITS: [&str; 3] = [
    "spinoco-connector.service",
    "spinoco-connector-once.service",
    "spinoco-connector-once.timer",
];
const INSTALLED_BINARY: &str = "/usr/local/bin/spinoco-connector";

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/systemd")
}

fn required() -> bool {
    matches!(std::env::var("CI").as_deref(), Ok("true" | "1"))
        || std::env::var("SPINOCO_TEST_REQUIRE_SERVERS").as_deref() == Ok("1")
}

/// `systemd-analyze`, or `None` (the test skipped, or failed where it is required).
fn systemd_analyze(test: &str) -> Option<PathBuf> {
    let found = ["/usr/bin", "/bin", "/usr/local/bin", "/usr/sbin"]
        .iter()
        .map(|d| Path::new(d).join("systemd-analyze"))
        .find(|p| p.is_file());
    if found.is_none() {
        assert!(
            !required(),
            "{test} cannot run: systemd-analyze is missing (tests/run.sh installs it)"
        );
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED {test}: systemd-analyze is missing"
        );
    }
    found
}

/// The units copied into a fresh folder with `ExecStart=` pointed at the built binary.
fn units_with_the_built_binary() -> PathBuf {
    let dir = scratch("systemd-units");
    let binary = env!("CARGO_BIN_EXE_spinoco-connector");
    for unit in UNITS {
        let text = std::fs::read_to_string(deploy_dir().join(unit)).unwrap();
        std::fs::write(dir.join(unit), text.replace(INSTALLED_BINARY, binary)).unwrap();
    }
    dir
}

/// The values of the `key=` lines of a unit (any section), in order.
fn directive(unit: &str, key: &str) -> Vec<String> {
    let text = std::fs::read_to_string(deploy_dir().join(unit)).unwrap();
    text.lines()
        .filter_map(|l| l.trim().strip_prefix(key)?.strip_prefix('='))
        .map(str::to_string)
        .collect()
}

#[test]
fn units_pass_systemd_analyze_verify() {
    let Some(analyze) = systemd_analyze("units_pass_systemd_analyze_verify") else {
        return;
    };
    let dir = units_with_the_built_binary();
    let out = Command::new(&analyze)
        .args(["verify", "--man=no"])
        .args(UNITS.iter().map(|u| dir.join(u)))
        .output()
        .unwrap();
    // verify exits 0 on an unknown or misspelt key: only a silent run is clean.
    assert!(
        out.status.success() && text(&out).trim().is_empty(),
        "systemd-analyze verify ({}):\n{}",
        out.status,
        text(&out)
    );
}

#[test]
fn services_are_hardened_to_an_exposure_of_at_most_2() {
    let Some(analyze) = systemd_analyze("services_are_hardened_to_an_exposure_of_at_most_2") else {
        return;
    };
    let dir = units_with_the_built_binary();
    for unit in &UNITS[..2] {
        let out = Command::new(&analyze)
            .args(["security", "--offline=true", "--no-pager"])
            .arg(dir.join(unit))
            .output()
            .unwrap();
        let said = text(&out);
        assert!(out.status.success(), "{unit}: {said}");
        let exposure: f64 = said
            .lines()
            .find_map(|l| {
                l.split_once("Overall exposure level for ")?
                    .1
                    .split_once(": ")
            })
            .and_then(|(_, rest)| rest.split_whitespace().next()?.parse().ok())
            .unwrap_or_else(|| panic!("{unit}: no overall exposure in:\n{said}"));
        let _ = writeln!(std::io::stderr(), "{unit}: exposure {exposure}");
        assert!(exposure <= 2.0, "{unit}: exposure {exposure}:\n{said}");
    }
}

/// What the units promise about readiness, the watchdog and restarts, against the
/// binary's own exit codes (README "Exit codes").
#[test]
fn units_notify_restart_on_failure_and_not_on_refusals() {
    for (unit, exec, prevent) in [
        ("spinoco-connector.service", "", "3 4 5"),
        ("spinoco-connector-once.service", " --once", "3 4 5 7"),
    ] {
        assert_eq!(directive(unit, "Type"), ["notify"], "{unit}");
        assert_eq!(directive(unit, "WatchdogSec"), ["2min"], "{unit}");
        assert_eq!(directive(unit, "Restart"), ["on-failure"], "{unit}");
        assert_eq!(
            directive(unit, "RestartPreventExitStatus"),
            [prevent],
            "{unit}"
        );
        assert_eq!(
            directive(unit, "ExecStart"),
            [format!("{INSTALLED_BINARY}{exec}")],
            "{unit}"
        );
        assert_eq!(
            directive(unit, "StateDirectory"),
            ["spinoco-connector"],
            "{unit}"
        );
        assert_eq!(
            directive(unit, "Environment"),
            ["SP_TASK_SYNC_SAVE_TO=/var/lib/spinoco-connector"],
            "{unit}"
        );
    }
    // A configuration error is exit 3, which no restart can cure.
    let out = command(&BTreeMap::new(), &[]).output().unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert_eq!(
        directive("spinoco-connector-once.timer", "Persistent"),
        ["true"]
    );
}

/// The environment file, read as the README's `check` line reads it (a shell with
/// `set -a`), is a valid configuration once it has a token: the units need nothing else.
#[test]
fn the_environment_file_example_is_a_valid_configuration() {
    let example = std::fs::read_to_string(deploy_dir().join("spinoco-connector.env.example"))
        .unwrap()
        .replace("SP_API_TOKEN=replace-me", "SP_API_TOKEN=a-token");
    let file = scratch("systemd-env").join("spinoco-connector.env");
    std::fs::write(&file, example).unwrap();
    let out = Command::new("sh")
        .arg("-c")
        .arg(r#"set -a; . "$1"; exec "$2" check"#)
        .args(["sh", file.to_str().unwrap()])
        .arg(env!("CARGO_BIN_EXE_spinoco-connector"))
        .env_clear()
        .output()
        .unwrap();
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains("SP_TASK_SYNC_SAVE_TO             /var/lib/spinoco-connector"),
        "{said}"
    );
}

// ------------------------------------------------------------------------ sd_notify

/// The datagrams a `$NOTIFY_SOCKET` of the test's own received, each with when it came
/// and whether the journal lease existed then.
struct NotifySocket {
    path: PathBuf,
    received: Arc<Mutex<Vec<Message>>>,
    /// Ends the listening thread.
    done: Arc<AtomicBool>,
}

#[derive(Clone, Debug)]
struct Message {
    at: Instant,
    text: String,
    lease_existed: bool,
}

impl NotifySocket {
    /// Listens in `dir`; `lease` is the lease file whose existence each message records.
    fn bind(dir: &Path, lease: PathBuf) -> NotifySocket {
        let path = dir.join("notify.sock");
        let socket = UnixDatagram::bind(&path).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let done = Arc::new(AtomicBool::new(false));
        let (sink, stop) = (received.clone(), done.clone());
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 4096];
            while !stop.load(Ordering::Relaxed) {
                let Ok(n) = socket.recv(&mut buf) else {
                    continue;
                };
                let message = Message {
                    at: Instant::now(),
                    text: String::from_utf8_lossy(&buf[..n]).into_owned(),
                    lease_existed: lease.exists(),
                };
                sink.lock().unwrap().push(message);
            }
        });
        NotifySocket {
            path,
            received,
            done,
        }
    }

    fn messages(&self) -> Vec<Message> {
        self.received.lock().unwrap().clone()
    }

    /// The first message with `line` among its lines.
    fn find(&self, line: &str) -> Option<Message> {
        self.messages()
            .into_iter()
            .find(|m| m.text.lines().any(|l| l == line))
    }

    fn wait_for(&self, line: &str, limit: Duration) -> Message {
        wait_until(line, limit, || self.find(line).is_some());
        self.find(line).unwrap()
    }

    /// `WATCHDOG=1` pings that came in `from..to`.
    fn pings(&self, from: Instant, to: Instant) -> usize {
        self.messages()
            .iter()
            .filter(|m| m.at >= from && m.at < to && m.text.lines().any(|l| l == "WATCHDOG=1"))
            .count()
    }

    /// The `STATUS=` lines so far.
    fn statuses(&self) -> Vec<String> {
        self.messages()
            .iter()
            .flat_map(|m| m.text.lines().map(str::to_string).collect::<Vec<_>>())
            .filter_map(|l| l.strip_prefix("STATUS=").map(str::to_string))
            .collect()
    }
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        self.done.store(true, Ordering::Relaxed);
    }
}

/// A running connector, killed if the test fails before it stops it.
struct Service(Child);

impl Drop for Service {
    fn drop(&mut self) {
        if self.0.try_wait().is_ok_and(|s| s.is_none()) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// The service against `emu` into `dir`, told to notify `socket` with a watchdog of
/// one second (a ping about every half second).
fn notifying_service(emu: &Emulator, dir: &Path, socket: &NotifySocket, log: &Path) -> Service {
    let mut e = env(emu, dir);
    e.insert("NOTIFY_SOCKET".into(), socket.path.display().to_string());
    e.insert("WATCHDOG_USEC".into(), "1000000".into());
    Service(spawn(&e, &[], log))
}

/// Counts the pings of a `window` from now: about two per second are asked for; the
/// bounds are loose (a loaded machine delays pings, never adds them).
fn assert_pinged_through(
    socket: &NotifySocket,
    window: Duration,
    service: &mut Service,
    log: &Path,
) {
    let from = Instant::now();
    std::thread::sleep(window);
    let pings = socket.pings(from, Instant::now());
    let expected = window.as_secs_f64() * 2.0;
    assert!(
        service.0.try_wait().unwrap().is_none(),
        "the service exited: {}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
    assert!(
        pings as f64 >= expected / 2.0 && pings as f64 <= expected + 1.0,
        "{pings} pings in {window:?} (about {expected} asked for): {:?}",
        socket.messages()
    );
}

fn stop_and_expect_stopping(socket: &NotifySocket, mut service: Service) {
    assert!(
        socket.find("STOPPING=1").is_none(),
        "STOPPING=1 before SIGTERM"
    );
    signal(service.0.id(), "TERM");
    let status = service.0.wait().unwrap();
    assert!(status.success(), "exit status {status:?}");
    // The datagram was sent before the exit; give the listener a moment to read it.
    socket.wait_for("STOPPING=1", Duration::from_secs(5));
}

/// READY once the lease is held; the watchdog fed while a slow round works (by the
/// round's own waits: no poll sleep comes in between); a status after each round;
/// STOPPING on SIGTERM.
#[test]
fn the_service_says_ready_after_the_lease_feeds_the_watchdog_and_says_stopping() {
    let emu = emulator(EmulatorConfig {
        tasks: 40,
        seed: 3,
        recording_size: (1_000, 20_000),
        latency: Duration::from_millis(300),
        ..Default::default()
    });
    let dir = scratch("notify");
    let state = scratch("notify-socket");
    let socket = NotifySocket::bind(&state, dir.join(".spinoco-connector/it.lease.json"));
    let log = state.join("connector.log");
    let mut service = notifying_service(&emu, &dir, &socket, &log);

    let ready = socket.wait_for("READY=1", Duration::from_secs(30));
    assert!(ready.lease_existed, "READY=1 before the lease was held");
    assert_pinged_through(&socket, Duration::from_secs(3), &mut service, &log);
    assert!(
        socket.statuses().is_empty(),
        "the first round ended within the window, so it did not show the round's waits: {:?}",
        socket.statuses()
    );

    wait_until("the first round's status", Duration::from_secs(60), || {
        !socket.statuses().is_empty()
    });
    let status = &socket.statuses()[0];
    let stored = format!(
        ": {} files stored since the start, 0 error(s)",
        expected(&emu).len()
    );
    assert!(
        status.starts_with("round 1 done at ") && status.ends_with(&stored),
        "{status}"
    );
    wait_until("the second round's status", Duration::from_secs(30), || {
        socket
            .statuses()
            .iter()
            .any(|s| s.starts_with("round 2 done"))
    });
    let readies = socket
        .messages()
        .iter()
        .filter(|m| m.text.lines().any(|l| l == "READY=1"))
        .count();
    assert_eq!(readies, 1);
    stop_and_expect_stopping(&socket, service);
}

/// A tmpfs mounted on a fresh folder, unmounted on drop (`None`: not root, skipped).
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(name: &str, options: &str) -> Option<Tmpfs> {
        let dir = scratch(name);
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "tmpfs"])
            .arg(&dir)
            .status()
            .is_ok_and(|s| s.success());
        if !mounted {
            let root = Command::new("id")
                .arg("-u")
                .output()
                .is_ok_and(|o| o.stdout.starts_with(b"0\n"));
            assert!(!root, "running as root but cannot mount a tmpfs on {dir:?}");
            eprintln!("skipped: cannot mount a tmpfs here (needs root)");
            return None;
        }
        Some(Tmpfs(dir))
    }

    /// Fills it to the last byte with one ballast file.
    fn fill(&self) -> PathBuf {
        let path = self.0.join("ballast.bin");
        let mut f = std::fs::File::create(&path).unwrap();
        let block = vec![0u8; 64 * 1024];
        while f.write_all(&block).is_ok() {}
        while f.write_all(&[0u8]).is_ok() {}
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// A full disk is an outage a restart cannot cure: the service retries, and its waits
/// keep feeding the watchdog, so systemd leaves it alone.
#[test]
fn the_watchdog_is_fed_through_a_storage_outage() {
    let Some(fs) = Tmpfs::mount("notify-outage", "size=8m") else {
        return;
    };
    let dir = fs.0.join("root");
    std::fs::create_dir_all(&dir).unwrap();
    let emu = emulator(EmulatorConfig {
        tasks: 6,
        seed: 11,
        recording_size: (1_000, 20_000),
        ..Default::default()
    });
    let state = scratch("notify-outage-socket");
    let socket = NotifySocket::bind(&state, dir.join(".spinoco-connector/it.lease.json"));
    let log = state.join("connector.log");
    let mut service = notifying_service(&emu, &dir, &socket, &log);
    wait_until("the first round's status", Duration::from_secs(30), || {
        !socket.statuses().is_empty()
    });

    let ballast = fs.fill();
    let logged = || std::fs::read_to_string(&log).unwrap_or_default();
    wait_until("the full disk retried", Duration::from_secs(30), || {
        logged().contains("No space left on device") && logged().contains("retrying in")
    });
    let rounds_before = socket.statuses().len();
    assert_pinged_through(&socket, Duration::from_secs(3), &mut service, &log);
    assert_eq!(
        socket.statuses().len(),
        rounds_before,
        "a round finished while the disk was full: {}",
        logged()
    );

    std::fs::remove_file(&ballast).unwrap();
    wait_until("a round after the outage", Duration::from_secs(60), || {
        socket.statuses().len() > rounds_before
    });
    stop_and_expect_stopping(&socket, service);
}

// -------------------------------------------------------------------------- journald

/// `--once` with stderr into a file of its own, `JOURNAL_STREAM` set by `journal` from
/// that file's device and inode; returns the exit code and the lines.
fn once_with_stderr_file(
    env: &BTreeMap<String, String>,
    journal: impl Fn(u64, u64) -> Option<String>,
) -> (Option<i32>, Vec<String>) {
    use std::os::unix::fs::MetadataExt;
    let path = scratch("journal-stream").join("stderr.log");
    let file = std::fs::File::create(&path).unwrap();
    let meta = file.metadata().unwrap();
    let mut cmd = command(env, &["--once"]);
    if let Some(value) = journal(meta.dev(), meta.ino()) {
        cmd.env("JOURNAL_STREAM", value);
    }
    let status = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::from(file))
        .status()
        .unwrap();
    let lines = std::fs::read_to_string(&path)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    (status.code(), lines)
}

/// The runs whose lines the journald tests read: a sync at debug level with transient
/// server errors (warnings), and a refused token (errors).
fn journal_runs(journal: impl Fn(u64, u64) -> Option<String> + Copy) -> Vec<String> {
    let (emu, mut e) = journal_platform();
    let (code, mut lines) = once_with_stderr_file(&e, journal);
    assert_eq!(code, Some(0), "{lines:#?}");
    assert!(!emu.deletes().is_empty(), "nothing synced: {lines:#?}");
    e.insert("SP_API_TOKEN".into(), "a-token-the-platform-refuses".into());
    let (code, refused) = once_with_stderr_file(&e, journal);
    assert_eq!(code, Some(4), "{refused:#?}");
    lines.extend(refused);
    lines
}

/// The emulator of [`journal_runs`] and the connector's environment for it.
fn journal_platform() -> (Emulator, BTreeMap<String, String>) {
    let emu = emulator(EmulatorConfig {
        tasks: 8,
        seed: 21,
        recording_size: (1_000, 10_000),
        faults: Faults {
            server_error: 0.3,
            ..Default::default()
        },
        ..Default::default()
    });
    let mut e = env(&emu, &scratch("journal-sync"));
    e.insert("SP_LOG_LEVEL".into(), "debug".into());
    (emu, e)
}

fn starts_with_timestamp(line: &str) -> bool {
    let b = line.as_bytes();
    b.len() > 24 && b[4] == b'-' && b[7] == b'-' && b[10] == b'T' && b[23] == b'Z'
}

#[test]
fn lines_into_the_journal_stream_lead_with_their_priority_and_no_timestamp() {
    let lines = journal_runs(|dev, ino| Some(format!("{dev}:{ino}")));
    let mut seen = BTreeSet::new();
    for line in &lines {
        let (priority, level) = match line.get(..4) {
            Some("<3>E") => ("<3>", "ERROR"),
            Some("<4>W") => ("<4>", "WARN "),
            Some("<6>I") => ("<6>", "INFO "),
            Some("<7>D") => ("<7>", "DEBUG"),
            _ => panic!("no syslog priority: {line:?}"),
        };
        assert!(
            line[priority.len()..].starts_with(level),
            "{priority} on a line of another level: {line:?}"
        );
        assert!(
            !starts_with_timestamp(&line[priority.len()..]),
            "a timestamp of our own: {line:?}"
        );
        seen.insert(priority);
    }
    assert_eq!(
        seen,
        BTreeSet::from(["<3>", "<4>", "<6>", "<7>"]),
        "{lines:#?}"
    );
}

#[test]
fn lines_keep_the_usual_format_unless_stderr_is_the_journal_stream() {
    let (_emu, e) = journal_platform();
    for (case, journal) in [
        ("unset", (|_, _| None) as fn(u64, u64) -> Option<String>),
        ("another inode", |dev, ino| {
            Some(format!("{dev}:{}", ino + 1))
        }),
        ("another device", |dev, ino| {
            Some(format!("{}:{ino}", dev + 1))
        }),
    ] {
        let (code, lines) = once_with_stderr_file(&e, journal);
        assert_eq!(code, Some(0), "{case}: {lines:#?}");
        assert!(!lines.is_empty(), "{case}");
        for line in &lines {
            assert!(
                starts_with_timestamp(line) && !line.starts_with('<'),
                "{case}: {line:?}"
            );
        }
    }
}
