//! The metrics port: anyone who reaches `SP_METRICS_ADDR` can talk to it, so nothing
//! sent there may take the sync down, grow its memory or keep the probes out.
//!
//! The release-like static binary (`panic = "abort"`, as shipped) runs a service sync
//! from the emulator under `ulimit -n 256` while one client after another attacks its
//! endpoint: more idle connections than the process has descriptors, a 300 MB header
//! line, 50,000 pipelined requests never read, and an accept queue met with no
//! descriptor left. After each the process must be alive, `/healthz` must answer, and
//! at the end the peak RSS must be small and the sync must have gone on.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::harness::*;
use crate::common::static_build::static_binary;
use spinoco_connector::{Emulator, EmulatorConfig};

const FD_LIMIT: u32 = 256;
const PEAK_RSS_LIMIT_KB: u64 = 64 * 1024;
/// Well above what the connector runs (sync workers, journal writer, lease, probe,
/// endpoint), well below one thread per idle connection.
const THREAD_LIMIT: u64 = 64;

/// The connector under attack: the static binary started through `sh` for the limit.
struct Connector {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Connector {
    fn start(binary: &Path, emu: &Emulator, dir: &Path) -> Connector {
        let port = free_port();
        let mut env = env(emu, dir);
        env.insert("SP_METRICS_ADDR".into(), format!("127.0.0.1:{port}"));
        let log = dir.with_extension("log");
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new("/bin/sh")
            .arg("-c")
            .arg(format!("ulimit -n {FD_LIMIT} && exec \"$0\""))
            .arg(binary)
            .env_clear()
            .envs(&env)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .unwrap();
        Connector { child, port, log }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A field of /proc/<pid>/status in its unit (kB for memory).
    fn status(&self, field: &str) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn assert_alive(&mut self, after: &str) {
        if let Some(exit) = self.child.try_wait().unwrap() {
            panic!(
                "the connector died after {after} ({exit}); its log:\n{}",
                self.log_text()
            );
        }
    }

    fn healthz(&self) -> Option<(u16, String)> {
        get(&format!("http://127.0.0.1:{}/healthz", self.port))
    }

    /// `/healthz` answers 200 within `limit`, the process staying alive.
    fn assert_healthy_within(&mut self, when: &str, limit: Duration) {
        let start = Instant::now();
        loop {
            self.assert_alive(when);
            if self.healthz() == Some((200, "ok\n".into())) {
                return;
            }
            assert!(
                start.elapsed() < limit,
                "/healthz did not answer 200 within {limit:?} {when}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn figures(&self, when: &str) -> String {
        format!(
            "{when}: RSS {} kB (peak {} kB), {} threads, {} descriptors",
            self.status("VmRSS"),
            self.status("VmHWM"),
            self.status("Threads"),
            std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
                .map(|d| d.count())
                .unwrap_or(0)
        )
    }
}

impl Drop for Connector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends one request on a fresh connection and reads the answer to the end.
fn send_raw(port: u16, request: &[u8]) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(20)))?;
    stream.write_all(request)?;
    answer_of(stream)
}

fn answer_of(mut stream: TcpStream) -> std::io::Result<String> {
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer)?;
    Ok(String::from_utf8_lossy(&answer).into_owned())
}

/// The first attack: more idle connections, held open, than the process may hold
/// descriptors.
fn idle_connections(connector: &mut Connector) {
    let idle: Vec<TcpStream> = (0..400)
        .filter_map(|_| {
            let addr = ([127, 0, 0, 1], connector.port).into();
            TcpStream::connect_timeout(&addr, Duration::from_secs(3)).ok()
        })
        .collect();
    std::thread::sleep(Duration::from_secs(1));
    eprintln!(
        "{} ({} connections open)",
        connector.figures("400 idle connections held"),
        idle.len()
    );
    connector.assert_alive("400 idle connections");
    let threads = connector.status("Threads");
    assert!(
        threads < THREAD_LIMIT,
        "{threads} threads while 400 idle connections are held"
    );
    // The idle ones time out; a probe gets through while the client still holds them.
    connector.assert_healthy_within(
        "while 400 idle connections are held",
        Duration::from_secs(20),
    );
    drop(idle);
    connector.assert_healthy_within("after 400 idle connections", Duration::from_secs(5));
}

/// The second attack: a header line of 300 MB, streamed; the endpoint must cut it off,
/// not buffer it.
fn long_header_line(connector: &mut Connector) {
    const LINE: usize = 300 << 20;
    let mut stream = TcpStream::connect(("127.0.0.1", connector.port)).unwrap();
    stream
        .set_write_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let chunk = vec![b'a'; 1 << 20];
    let mut sent = 0;
    let mut cut_off = stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Long: ")
        .is_err();
    while !cut_off && sent < LINE {
        match stream.write(&chunk) {
            Ok(n) => sent += n,
            Err(_) => cut_off = true,
        }
    }
    drop(stream);
    eprintln!(
        "{} ({} MB of the header line taken before the cut)",
        connector.figures("after a 300 MB header line"),
        sent >> 20
    );
    connector.assert_alive("a 300 MB header line");
    assert!(
        cut_off,
        "the endpoint took all 300 MB of one header line instead of cutting it off"
    );
    // A head just over the limit, sent whole, is told why.
    let mut head = b"GET /healthz HTTP/1.1\r\nX-Long: ".to_vec();
    head.resize(head.len() + (16 << 10), b'a');
    head.extend_from_slice(b"\r\n\r\n");
    let answer = send_raw(connector.port, &head).unwrap();
    assert!(answer.starts_with("HTTP/1.1 431 "), "{answer:?}");
    connector.assert_healthy_within("after a 300 MB header line", Duration::from_secs(5));
}

/// The third attack: 50,000 pipelined requests written without ever reading an answer.
fn pipelined_requests(connector: &mut Connector) {
    let request = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
    let all: Vec<u8> = request.repeat(50_000);
    let stream = TcpStream::connect(("127.0.0.1", connector.port)).unwrap();
    stream
        .set_write_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut writer = stream.try_clone().unwrap();
    let pipeliner = std::thread::spawn(move || writer.write_all(&all));
    std::thread::sleep(Duration::from_millis(500));
    connector.assert_healthy_within(
        "while the pipelining client is connected",
        Duration::from_secs(10),
    );
    let written = pipeliner.join().unwrap();
    eprintln!(
        "{} (the client's writes: {written:?})",
        connector.figures("after 50,000 pipelined requests")
    );
    drop(stream);
    connector.assert_alive("50,000 pipelined requests");
    connector.assert_healthy_within("after 50,000 pipelined requests", Duration::from_secs(5));
}

/// The fourth attack: no descriptor left when a probe comes. Accept fails (EMFILE)
/// until descriptors are back, and the probe waiting in the listen queue is answered then.
fn descriptors_exhausted(connector: &mut Connector) {
    let pid = connector.pid();
    let prlimit = |soft: u32| {
        let ok = Command::new("prlimit")
            .arg(format!("--pid={pid}"))
            .arg(format!("--nofile={soft}:{FD_LIMIT}"))
            .status()
            .expect("prlimit (util-linux) runs");
        assert!(ok.success(), "prlimit --nofile={soft}");
    };
    prlimit(4);
    let mut probe = TcpStream::connect(("127.0.0.1", connector.port)).unwrap();
    probe
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    probe
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    connector.assert_alive("accept failed for want of descriptors");
    prlimit(FD_LIMIT);
    let answer = answer_of(probe).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer:?}");
    assert!(answer.ends_with("\r\n\r\nok\n"), "{answer:?}");
    let logged = connector
        .log_text()
        .lines()
        .filter(|l| l.contains("metrics endpoint cannot accept"))
        .count();
    assert_eq!(
        logged,
        1,
        "one warning for the failing accepts, not one per attempt:\n{}",
        connector.log_text()
    );
}

#[test]
fn the_metrics_port_cannot_take_the_connector_down() {
    let Some(binary) = static_binary() else {
        return;
    };
    let emu = emulator(EmulatorConfig {
        tasks: 20,
        seed: 64,
        recording_size: (2_000, 30_000),
        ..Default::default()
    });
    let dir = scratch("metrics-port");
    let mut connector = Connector::start(binary, &emu, &dir);
    connector.assert_healthy_within("after the start", Duration::from_secs(60));
    // Every file of at least `tasks` handed-out tasks is in the folder.
    let stored = |tasks: usize| {
        let handed_out = emu.handed_out().len();
        handed_out >= tasks && expected(&emu).keys().all(|f| dir.join(f).exists())
    };
    wait_until("the first tasks stored", Duration::from_secs(60), || {
        stored(20)
    });
    eprintln!("{}", connector.figures("before the attacks"));

    idle_connections(&mut connector);
    long_header_line(&mut connector);
    pipelined_requests(&mut connector);
    descriptors_exhausted(&mut connector);

    let peak = connector.status("VmHWM");
    assert!(
        peak < PEAK_RSS_LIMIT_KB,
        "peak RSS {peak} kB under attack (limit {PEAK_RSS_LIMIT_KB} kB)"
    );
    // The sync went on: tasks added now are stored.
    emu.add_tasks(10);
    wait_until(
        "the tasks added after the attacks stored",
        Duration::from_secs(60),
        || stored(30),
    );
    connector.assert_alive("the attacks");
    let log = connector.log_text();
    assert!(!log.contains("panicked"), "{log}");
    drop(connector);
    for (name, path) in expected(&emu) {
        let stored = std::fs::read(dir.join(&name)).unwrap();
        assert!(emu.content(&path) == Some(stored), "{name} differs");
    }
    assert_eq!(emu.violations(), Vec::<String>::new(), "premature deletes");
}
