//! The image as users get it, and the files that deploy and watch it.
//!
//! - The final stage of `Dockerfile.scratch`, built with podman from the static binary
//!   (the very build `tests/static_binary.rs` makes): its configuration and contents,
//!   a `--once` sync into a named volume, a service run (healthcheck, `/metrics`,
//!   `podman stop`), `check` and `render`.
//! - `docker-compose-example.yml` under podman-compose: its first service against the
//!   emulator, with only the API endpoint and the token set by the test (and the image:
//!   the one built here).
//! - `deploy/kubernetes/`: kubernetes-validate, the settings that matter, and the
//!   configuration each Deployment gives the connector.
//! - `deploy/prometheus/` and `deploy/grafana/`: promtool on the rules and their unit
//!   tests, `promtool check metrics` on a live scrape, and every metric they name
//!   against that scrape.
//!
//! Each test skips with the reason when its tool (podman, podman-compose, promtool,
//! kubernetes-validate) is missing or cannot run here; under `tests/run.sh`
//! (`SPINOCO_TEST_REQUIRE_SERVERS=1`, which installs them) or with `CI=true` it fails instead.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::common::harness::*;
use crate::common::static_build::{build_static, host_triple};
use serde_json::Value;
use spinoco_connector::emulator::{Emulator, EmulatorConfig};

/// The image's user and group.
const USER: u32 = 10001;
/// The bound on the image: the binary plus a few kilobytes of metadata.
const MAX_IMAGE_BYTES: u64 = 6_000_000;
/// What the image sets (the official image's defaults, and the metrics endpoint its
/// HEALTHCHECK asks).
const IMAGE_ENV: &[(&str, &str)] = &[
    ("SP_TASK_SYNC_SAVE_TO", "/data"),
    ("SP_TASK_SYNC_FILE_NAME_TEMPLATE", TEMPLATE),
    ("SP_TASK_SYNC_GET_DATA", "Recordings,Transcriptions"),
    ("SP_TASK_SYNC_STORAGE_PROVIDER", "local"),
    ("SP_METRICS_ADDR", "0.0.0.0:9464"),
];

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn required() -> bool {
    matches!(std::env::var("CI").as_deref(), Ok("true" | "1"))
        || std::env::var("SPINOCO_TEST_REQUIRE_SERVERS").as_deref() == Ok("1")
}

/// Skips with the reason, or fails where the test is required.
fn skip_or_fail(test: &str, reason: &str) {
    if required() {
        panic!("{test} cannot run: {reason} (required with CI=true or SPINOCO_TEST_REQUIRE_SERVERS=1; tests/run.sh installs the tools)");
    }
    say(&format!("SKIPPED {test}: {reason}"));
}

/// A line on the real stderr: the test harness captures `eprintln!` of passing tests,
/// and a skip or a measured figure must be seen in the suite's output.
fn say(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

fn out_text(out: &Output) -> String {
    text(out)
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// A program on PATH or in the usual places.
fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .chain(["/usr/sbin", "/usr/bin", "/sbin", "/bin", "/usr/local/bin"])
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file());
    found
}

fn unique(what: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!(
        "spinoco-it-{what}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

// ------------------------------------------------------------------------------------
// podman

/// Runs podman with a configuration of the test's own: the runc runtime where it is
/// installed (crun fails on the hybrid cgroups of the project's machines) and lowered
/// limits (without them both runtimes fail to set rlimits there). podman-compose gets
/// the same through the environment.
struct Podman {
    conf: PathBuf,
}

impl Podman {
    fn new() -> Podman {
        let dir = scratch("podman-conf");
        let conf = dir.join("containers.conf");
        let runtime = match which("runc") {
            Some(_) => "[engine]\nruntime = \"runc\"\n",
            None => "",
        };
        std::fs::write(
            &conf,
            format!(
                "[containers]\ndefault_ulimits = [\"nofile=1024:1024\", \"nproc=1024:1024\"]\n\n{runtime}"
            ),
        )
        .unwrap();
        Podman { conf }
    }

    fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.env("CONTAINERS_CONF", &self.conf).stdin(Stdio::null());
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd("podman").args(args).output().expect("podman runs")
    }

    /// Runs and requires success; returns stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "podman {args:?} failed ({}):\n{}",
            out.status,
            out_text(&out)
        );
        stdout(&out)
    }

    fn inspect(&self, what: &str, format: &str) -> String {
        self.ok(&["inspect", "--format", format, what])
            .trim()
            .to_string()
    }

    fn volume_path(&self, volume: &str) -> PathBuf {
        PathBuf::from(
            self.ok(&["volume", "inspect", "--format", "{{.Mountpoint}}", volume])
                .trim(),
        )
    }
}

/// Removes what a test created, even when it fails.
struct Cleanup<'a> {
    podman: &'a Podman,
    containers: Vec<String>,
    volumes: Vec<String>,
    networks: Vec<String>,
}

impl<'a> Cleanup<'a> {
    fn new(podman: &'a Podman) -> Cleanup<'a> {
        Cleanup {
            podman,
            containers: Vec::new(),
            volumes: Vec::new(),
            networks: Vec::new(),
        }
    }

    fn container(&mut self, what: &str) -> String {
        let name = unique(what);
        self.containers.push(name.clone());
        name
    }

    fn volume(&mut self, what: &str) -> String {
        let name = unique(what);
        self.podman.ok(&["volume", "create", &name]);
        self.volumes.push(name.clone());
        name
    }
}

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        for c in &self.containers {
            let _ = self.podman.run(&["rm", "-f", "-v", "-t", "0", c]);
        }
        for v in &self.volumes {
            let _ = self.podman.run(&["volume", "rm", "-f", v]);
        }
        for n in &self.networks {
            let _ = self.podman.run(&["network", "rm", "-f", n]);
        }
    }
}

/// The image built once for the tests of this file.
struct Built {
    podman: Podman,
    image: String,
    binary: PathBuf,
}

/// Builds the static binary and the image's final stage from it; `Err` says why podman
/// cannot do that here (a failure of the Dockerfile itself fails the test instead).
fn built() -> Result<&'static Built, String> {
    static BUILT: OnceLock<Result<Built, String>> = OnceLock::new();
    BUILT
        .get_or_init(build_image)
        .as_ref()
        .map_err(Clone::clone)
}

fn build_image() -> Result<Built, String> {
    let Some(triple) = host_triple() else {
        return Err("the host is not a glibc Linux (the static binary is built for it)".into());
    };
    match Command::new("podman").arg("--version").output() {
        Ok(out) if out.status.success() => {}
        Ok(out) => return Err(format!("podman --version failed: {}", out_text(&out))),
        Err(e) => return Err(format!("podman is not installed ({e})")),
    }
    // Rootless podman maps the image's user to a sub-uid of the host: the volume's
    // owner could not be checked from here.
    let uid = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self").unwrap());
    if uid != 0 {
        return Err(format!(
            "not root (uid {uid}): rootless podman maps user 10001 to a sub-uid, so the volume cannot be checked from the host"
        ));
    }
    let podman = Podman::new();
    let info = podman.run(&["info", "--format", "{{.Host.OCIRuntime.Name}}"]);
    if !info.status.success() {
        return Err(format!("podman info failed: {}", out_text(&info)));
    }

    let binary = build_static(&triple);
    // The build context: a folder holding only the binary (README "Scratch image").
    let context = scratch("image-context");
    std::fs::copy(&binary, context.join("spinoco-connector")).unwrap();

    // Can podman run a container at all here? A one-line image of the same binary.
    let probe_file = context.with_extension("probe");
    std::fs::write(
        &probe_file,
        "FROM scratch\nCOPY spinoco-connector /spinoco-connector\nENTRYPOINT [\"/spinoco-connector\"]\n",
    )
    .unwrap();
    let probe_tag = format!("localhost/{}", unique("probe"));
    let probe = podman.run(&[
        "build",
        "-q",
        "-f",
        probe_file.to_str().unwrap(),
        "-t",
        &probe_tag,
        context.to_str().unwrap(),
    ]);
    if !probe.status.success() {
        return Err(format!(
            "podman cannot build a FROM scratch image here: {}",
            out_text(&probe)
        ));
    }
    let ran = podman.run(&["run", "--rm", "--network", "host", &probe_tag, "--version"]);
    let _ = podman.run(&["rmi", "-f", &probe_tag]);
    let _ = std::fs::remove_file(&probe_file);
    if !ran.status.success() || !stdout(&ran).starts_with("spinoco-connector ") {
        return Err(format!(
            "podman cannot run a container here: {}",
            out_text(&ran)
        ));
    }

    // One tag per checkout, replaced on every run.
    let mut hash = 0u64;
    for b in repo().to_string_lossy().bytes() {
        hash = hash.wrapping_mul(31).wrapping_add(b as u64);
    }
    let image = format!("localhost/spinoco-connector-test:{:08x}", hash as u32);
    // The `prebuilt` stage is tagged too (the full build reuses it from the layer
    // cache), so that removing both tags on the next run leaves no untagged image.
    let stage = format!("{image}-binary");
    let _ = podman.run(&["rmi", "-f", &image, &stage]);
    let dockerfile = repo().join("Dockerfile.scratch");
    for (target, tag) in [(Some("prebuilt"), &stage), (None, &image)] {
        let mut args = vec![
            "build",
            "-q",
            "--format",
            "docker", // the OCI format has no HEALTHCHECK
            "-f",
            dockerfile.to_str().unwrap(),
            "--build-arg",
            "BINARY_FROM=prebuilt",
            "-t",
            tag,
        ];
        if let Some(t) = target {
            args.extend(["--target", t]);
        }
        args.push(context.to_str().unwrap());
        podman.ok(&args);
    }
    let _ = std::fs::remove_dir_all(&context);
    Ok(Built {
        podman,
        image,
        binary,
    })
}

fn image_or_skip(test: &str) -> Option<&'static Built> {
    match built() {
        Ok(b) => Some(b),
        Err(reason) => {
            skip_or_fail(test, &reason);
            None
        }
    }
}

/// `-e NAME=value` pairs.
fn env_args(env: &[(&str, String)]) -> Vec<String> {
    env.iter()
        .flat_map(|(k, v)| ["-e".to_string(), format!("{k}={v}")])
        .collect()
}

fn owner(path: &Path) -> u32 {
    std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(path).unwrap())
}

/// The peak resident memory of a running process, in kB.
fn peak_rss_kb(pid: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/PID/status")
}

/// Every file below `dir` (the connector's folder excepted) holds the bytes the
/// emulator has for its name: nothing partial, nothing unknown. Returns how many.
fn nothing_partial(emu: &Emulator, dir: &Path) -> usize {
    let expected = expected(emu);
    let present = files_in(dir);
    for name in &present {
        let path = expected
            .get(name)
            .unwrap_or_else(|| panic!("{name}: not a file the emulator handed out"));
        let got = std::fs::read(dir.join(name)).unwrap();
        assert!(
            Some(&got) == emu.content(path).as_ref(),
            "{name}: {} bytes, not the platform's",
            got.len()
        );
    }
    let tmp: Vec<_> = std::fs::read_dir(dir.join(".spinoco-connector").join("tmp"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(tmp.is_empty(), "temp files left: {tmp:?}");
    present.len()
}

/// The memory request of the local-storage Deployment, in bytes (`NNMi`).
fn deployment_memory_request() -> u64 {
    let yaml = std::fs::read_to_string(repo().join("deploy/kubernetes/deployment.yaml")).unwrap();
    let line = yaml
        .lines()
        .find(|l| l.trim_start().starts_with("requests:"))
        .expect("a requests: line in deploy/kubernetes/deployment.yaml");
    let mi = line
        .split("memory:")
        .nth(1)
        .and_then(|rest| rest.trim().split("Mi").next())
        .and_then(|n| n.trim().parse::<u64>().ok())
        .unwrap_or_else(|| panic!("no memory: NNMi in {line:?}"));
    mi * 1024 * 1024
}

#[test]
fn image_is_configured_as_documented_and_holds_only_the_binary() {
    let Some(b) = image_or_skip("the image inspection") else {
        return;
    };
    let p = &b.podman;
    let inspected: Value = serde_json::from_str(&p.ok(&["image", "inspect", &b.image])).unwrap();
    let img = &inspected[0];
    let config = &img["Config"];
    assert_eq!(
        config["Entrypoint"],
        serde_json::json!(["/spinoco-connector"])
    );
    assert!(config["Cmd"].is_null(), "{}", config["Cmd"]);
    assert_eq!(config["User"], "10001:10001");
    let env: BTreeMap<String, String> = config["Env"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e.as_str()?.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    for (name, value) in IMAGE_ENV {
        assert_eq!(env.get(*name).map(String::as_str), Some(*value), "{name}");
    }
    let sp: Vec<_> = env.keys().filter(|k| k.starts_with("SP_")).collect();
    assert_eq!(sp.len(), IMAGE_ENV.len(), "unexpected defaults: {sp:?}");
    assert_eq!(config["ExposedPorts"], serde_json::json!({"9464/tcp": {}}));
    assert_eq!(config["Volumes"], serde_json::json!({"/data": {}}));
    let health = &img["Healthcheck"];
    assert_eq!(
        health["Test"],
        serde_json::json!(["CMD", "/spinoco-connector", "health"]),
        "{img}"
    );
    assert_eq!(health["Interval"], 30_000_000_000u64);
    assert_eq!(health["StartPeriod"], 60_000_000_000u64);

    let size = img["Size"].as_u64().unwrap();
    let binary = std::fs::metadata(&b.binary).unwrap().len();
    say(&format!("image: {size} B (the binary: {binary} B)"));
    assert!(size < MAX_IMAGE_BYTES, "the image is {size} bytes");
    assert!(
        size >= binary && size - binary < 64 * 1024,
        "{size} vs {binary}"
    );

    // The file system: the binary and an empty /data of the image's user, nothing else.
    let mut c = Cleanup::new(p);
    let name = c.container("export");
    p.ok(&["create", "--name", &name, &b.image]);
    let export_dir = scratch("export");
    let tar = export_dir.join("root.tar");
    p.ok(&["export", "-o", tar.to_str().unwrap(), &name]);
    let listing = Command::new("tar")
        .args(["-tvf", tar.to_str().unwrap(), "--numeric-owner"])
        .output()
        .unwrap();
    assert!(listing.status.success(), "{}", out_text(&listing));
    let _ = std::fs::remove_dir_all(&export_dir);
    let entries: Vec<(String, String)> = stdout(&listing)
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f[f.len() - 1].to_string(), f[1].to_string())
        })
        .collect();
    assert_eq!(
        entries,
        [
            ("data/".to_string(), "10001/10001".to_string()),
            ("spinoco-connector".to_string(), "0/0".to_string()),
        ],
        "{}",
        stdout(&listing)
    );
    // No shell: the binary is the only command.
    let sh = p.run(&[
        "run",
        "--rm",
        "--entrypoint",
        "/bin/sh",
        &b.image,
        "-c",
        "true",
    ]);
    assert!(!sh.status.success(), "a shell ran: {}", out_text(&sh));
}

#[test]
fn image_syncs_into_a_named_volume_runs_healthy_and_stops_on_sigterm() {
    let Some(b) = image_or_skip("the image run") else {
        return;
    };
    let p = &b.podman;
    let mut c = Cleanup::new(p);

    // A full --once sync into a fresh named volume, with the image's defaults: only the
    // platform, the token, the tag, deletes and a free metrics port are set.
    let emu = emulator(EmulatorConfig {
        tasks: 30,
        seed: 16,
        recording_size: (2_000, 200_000),
        ..Default::default()
    });
    let volume = c.volume("once");
    let data = p.volume_path(&volume);
    guard_deletes(&emu, &data);
    let env = |emu: &Emulator, metrics_port: u16| {
        env_args(&[
            ("SP_API_TOKEN", TOKEN.to_string()),
            ("SP_API_URL", emu.url()),
            ("SP_TASK_SYNC_TAG", "image".to_string()),
            ("SP_TASK_SYNC_DELETE_DATA", "Recordings".to_string()),
            ("SP_METRICS_ADDR", format!("127.0.0.1:{metrics_port}")),
        ])
    };
    let mut args = vec!["run", "--rm", "--network", "host", "-v"];
    let mount = format!("{volume}:/data");
    args.push(&mount);
    let e = env(&emu, free_port());
    args.extend(e.iter().map(String::as_str));
    args.extend([b.image.as_str(), "--once"]);
    let out = p.run(&args);
    assert!(out.status.success(), "{}", out_text(&out));
    let files = verify_complete(&emu, &data);
    assert!(files > 20, "only {files} files");
    assert_eq!(emu.deletes().len(), recording_deletes(&emu).len());
    assert!(!recording_deletes(&emu).is_empty());
    assert_eq!(owner(&data), USER, "the volume's root");
    for name in expected(&emu).keys() {
        assert_eq!(owner(&data.join(name)), USER, "{name}");
    }

    // check, check --connect and render, in the image.
    let check = p.run(&[
        "run",
        "--rm",
        "-e",
        &format!("SP_API_TOKEN={TOKEN}"),
        "-e",
        "SP_TASK_SYNC_TAG=image",
        &b.image,
        "check",
    ]);
    let said = out_text(&check);
    assert!(check.status.success(), "{said}");
    assert!(said.contains("configuration is valid"), "{said}");
    assert!(!said.contains(TOKEN), "the token was printed: {said}");
    for line in [
        "SP_TASK_SYNC_SAVE_TO             /data",
        "SP_METRICS_ADDR                  0.0.0.0:9464",
        "SP_TASK_SYNC_GET_DATA            Recordings,Transcriptions",
        "SP_TASK_SYNC_STORAGE_PROVIDER    local",
    ] {
        assert!(said.contains(line), "{line:?} not in\n{said}");
    }
    let mut args = vec!["run", "--rm", "--network", "host", "-v", &mount];
    args.extend(e.iter().map(String::as_str));
    args.extend([b.image.as_str(), "check", "--connect"]);
    let connect = p.run(&args);
    let said = out_text(&connect);
    assert!(connect.status.success(), "{said}");
    assert!(said.contains("token accepted"), "{said}");
    assert!(said.contains("storage: "), "{said}");
    let render = p.run(&[
        "run",
        "--rm",
        &b.image,
        "render",
        "--due-date",
        "2024-09-09T15:45:47.277Z",
        "--task-id",
        "5f1d7a10-6e8b-11ef-8000-0242ac120002",
    ]);
    assert!(render.status.success(), "{}", out_text(&render));
    let first = stdout(&render)
        .lines()
        .next()
        .unwrap_or_default()
        .to_string();
    assert!(
        first.starts_with("2024/09/09/20240909154547-5f1d7a10-6e8b-11ef-8000-0242ac120002.ogg "),
        "{}",
        out_text(&render)
    );
    let bad = p.run(&["run", "--rm", &b.image, "render", "--due-date", "tomorrow"]);
    assert_eq!(bad.status.code(), Some(2), "{}", out_text(&bad));

    // As a service: larger recordings and some latency, so that transfers are under
    // way when it is stopped.
    let emu = emulator(EmulatorConfig {
        tasks: 60,
        seed: 17,
        recording_size: (100_000, 1_500_000),
        latency: Duration::from_millis(100),
        ..Default::default()
    });
    let volume = c.volume("service");
    let data = p.volume_path(&volume);
    guard_deletes(&emu, &data);
    let port = free_port();
    let name = c.container("service");
    let mount = format!("{volume}:/data");
    let e = env(&emu, port);
    let mut args = vec![
        "run",
        "-d",
        "--name",
        &name,
        "--network",
        "host",
        "-v",
        &mount,
    ];
    args.extend(e.iter().map(String::as_str));
    args.push(&b.image);
    let started = Instant::now();
    p.ok(&args);
    let logs = || out_text(&p.run(&["logs", &name]));
    loop {
        let h = p.run(&["healthcheck", "run", &name]);
        if h.status.success() {
            break;
        }
        let state = p.inspect(&name, "{{.State.Status}}");
        assert_eq!(state, "running", "the container stopped:\n{}", logs());
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "never healthy: {}\n{}",
            out_text(&h),
            logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let to_healthy = started.elapsed();
    assert_eq!(p.inspect(&name, "{{.State.Health.Status}}"), "healthy");
    let (status, page) = get(&format!("http://127.0.0.1:{port}/metrics")).expect("/metrics");
    assert_eq!(status, 200);
    assert!(page.contains("\nspinoco_files_total "), "{page}");
    assert_eq!(
        get(&format!("http://127.0.0.1:{port}/healthz")).unwrap().0,
        200
    );
    let pid = p.inspect(&name, "{{.State.Pid}}");
    let rss_kb = peak_rss_kb(&pid);

    let stop = Instant::now();
    p.ok(&["stop", "-t", "10", &name]);
    let stopping = stop.elapsed();
    assert_eq!(
        p.inspect(&name, "{{.State.ExitCode}}"),
        "0",
        "not a clean exit on SIGTERM:\n{}",
        logs()
    );
    assert!(
        stopping < Duration::from_secs(10),
        "podman stop took {stopping:?}:\n{}",
        logs()
    );
    let at_stop = nothing_partial(&emu, &data);
    say(&format!(
        "image run: healthy after {:.1}s, peak RSS {rss_kb} kB, stopped in {:.2}s with {at_stop} of {} files stored",
        to_healthy.as_secs_f64(),
        stopping.as_secs_f64(),
        expected(&emu).len()
    ));
    assert!(
        rss_kb * 1024 < deployment_memory_request(),
        "peak RSS {rss_kb} kB is above deploy/kubernetes/deployment.yaml's memory request"
    );

    // The next start finishes what the stop left.
    let mut args = vec!["run", "--rm", "--network", "host", "-v", &mount];
    args.extend(e.iter().map(String::as_str));
    args.extend([b.image.as_str(), "--once"]);
    let out = p.run(&args);
    assert!(out.status.success(), "{}", out_text(&out));
    verify_complete(&emu, &data);
    assert_eq!(emu.deletes().len(), recording_deletes(&emu).len());
}

// ------------------------------------------------------------------------------------
// compose

/// Forwards connections to `listen` (once it can be bound) to `to`, in background
/// threads: the containers of a compose network reach the host's 127.0.0.1 this way.
fn relay(listen: SocketAddr, to: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let listener = loop {
        match TcpListener::bind(listen) {
            Ok(l) => break l,
            Err(e) => {
                assert!(Instant::now() < deadline, "cannot listen on {listen}: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    };
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            let Ok(server) = TcpStream::connect(to) else {
                continue;
            };
            let pipe = |mut from: TcpStream, mut into: TcpStream| {
                std::thread::spawn(move || {
                    let mut buf = [0u8; 64 * 1024];
                    while let Ok(n) = from.read(&mut buf) {
                        if n == 0 || into.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = into.shutdown(std::net::Shutdown::Write);
                });
            };
            pipe(client.try_clone().unwrap(), server.try_clone().unwrap());
            pipe(server, client);
        }
    });
}

#[test]
fn compose_example_parses_and_its_first_service_syncs_from_the_emulator() {
    let test = "the compose example";
    let Some(compose) = which("podman-compose") else {
        return skip_or_fail(test, "podman-compose is not installed");
    };
    let Some(b) = image_or_skip(test) else {
        return;
    };
    if TcpListener::bind("127.0.0.1:9464").is_err() {
        return skip_or_fail(
            test,
            "127.0.0.1:9464, which the compose example publishes, is in use",
        );
    }
    let p = &b.podman;
    let mut c = Cleanup::new(p);
    let project = unique("compose");
    let file = repo().join("docker-compose-example.yml");
    let compose_cmd = |extra: &[&Path], args: &[&str]| {
        let mut cmd = p.cmd(compose.to_str().unwrap());
        cmd.args(["-p", &project, "-f", file.to_str().unwrap()]);
        for f in extra {
            cmd.arg("-f").arg(f);
        }
        cmd.args(args)
            .env("SP_API_TOKEN", TOKEN)
            .current_dir(repo())
            .output()
            .unwrap()
    };

    // The example as podman-compose reads it (1.0.x has no `config`: a dry run prints
    // the podman commands it would run).
    let dry = compose_cmd(&[], &["--dry-run", "up", "-d"]);
    // A dry run still creates the named volumes and the network.
    for v in ["recordings", "gcs-unused"] {
        c.volumes.push(format!("{project}_{v}"));
    }
    let network = format!("{project}_default");
    c.networks.push(network.clone());
    let said = out_text(&dry);
    assert!(dry.status.success(), "{said}");
    let runs: Vec<&str> = said
        .lines()
        .filter(|l| l.starts_with("podman run "))
        .collect();
    assert_eq!(runs.len(), 2, "{said}");
    for flag in [
        "--read-only",
        "--cap-drop ALL",
        "--security-opt no-new-privileges:true",
        "-m 64m",
        "--restart unless-stopped",
        &format!("-v {project}_recordings:/data"),
        "-p 127.0.0.1:9464:9464",
        &format!("-e SP_API_TOKEN={TOKEN}"),
    ] {
        assert!(runs[0].contains(flag), "{flag:?} not in {}", runs[0]);
    }
    let unset = {
        let mut cmd = p.cmd(compose.to_str().unwrap());
        cmd.args(["-p", &project, "-f", file.to_str().unwrap()])
            .args(["--dry-run", "up", "-d"])
            .env_remove("SP_API_TOKEN")
            .current_dir(repo());
        cmd.output().unwrap()
    };
    assert!(
        !stdout(&unset).contains("podman run "),
        "ran without SP_API_TOKEN: {}",
        out_text(&unset)
    );

    // The first service for real. Its network, made first so that its gateway (the
    // host, as the containers see it) is known; the emulator is reached through a relay
    // there.
    if !p.run(&["network", "exists", &network]).status.success() {
        p.ok(&["network", "create", &network]);
    }
    let gateway = p.ok(&[
        "network",
        "inspect",
        "--format",
        "{{range .Subnets}}{{.Gateway}}{{end}}",
        &network,
    ]);
    let gateway: std::net::IpAddr = gateway
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("no gateway: {gateway:?}"));
    let emu = emulator(EmulatorConfig {
        tasks: 25,
        seed: 18,
        recording_size: (2_000, 100_000),
        ..Default::default()
    });
    let relay_at = SocketAddr::new(gateway, free_port());
    let dir = scratch("compose");
    // The only overrides: the API endpoint (here) and the token (SP_API_TOKEN above);
    // and the image, the one built from this checkout.
    let overrides = dir.join("override.yml");
    std::fs::write(
        &overrides,
        format!(
            "services:\n  connector-local:\n    image: {}\n    environment:\n      SP_API_URL: http://{relay_at}\n",
            b.image
        ),
    )
    .unwrap();
    let up = compose_cmd(&[&overrides], &["up", "-d", "connector-local"]);
    let container = format!("{project}_connector-local_1");
    c.containers.push(container.clone());
    assert!(up.status.success(), "{}", out_text(&up));
    relay(
        relay_at,
        format!("127.0.0.1:{}", emu.port()).parse().unwrap(),
    );

    let logs = || out_text(&p.run(&["logs", &container]));
    let started = Instant::now();
    while !p.run(&["healthcheck", "run", &container]).status.success() {
        assert_eq!(
            p.inspect(&container, "{{.State.Status}}"),
            "running",
            "{}",
            logs()
        );
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "never healthy:\n{}",
            logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // The published port; healthy may mean "a file was stored": wait for the round.
    loop {
        let (status, page) = get("http://127.0.0.1:9464/metrics").expect("/metrics on 9464");
        assert_eq!(status, 200);
        if page.contains("\nspinoco_rounds_total 1\n") {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no round finished:\n{page}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // JSON logs, as the example asks.
    let log = logs();
    let first = log.lines().find(|l| l.starts_with('{')).unwrap_or_default();
    let v: Value = serde_json::from_str(first).unwrap_or_else(|e| panic!("{e}: {log}"));
    assert!(v["msg"].is_string(), "{first}");
    p.ok(&["stop", "-t", "10", &container]);
    assert_eq!(
        p.inspect(&container, "{{.State.ExitCode}}"),
        "0",
        "{}",
        logs()
    );

    let volume = format!("{project}_recordings");
    let data = p.volume_path(&volume);
    let files = verify_complete(&emu, &data);
    assert!(files > 10, "{files} files");
    assert!(emu.deletes().is_empty(), "the example deletes nothing");
    let down = compose_cmd(&[&overrides], &["down", "-v"]);
    assert!(down.status.success(), "{}", out_text(&down));
}

// ------------------------------------------------------------------------------------
// Kubernetes

/// kubernetes-validate and the Python of its venv (PyYAML comes with it).
fn kubernetes_validate() -> Option<(PathBuf, PathBuf)> {
    let venv = repo().join(".cache/kubernetes-validate/venv/bin");
    let tool = venv.join("kubernetes-validate");
    let python = venv.join("python3");
    if tool.is_file() && python.is_file() {
        return Some((tool, python));
    }
    None
}

fn manifests() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo().join("deploy/kubernetes"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    files
}

#[test]
fn kubernetes_manifests_validate_and_configure_the_connector() {
    let test = "the Kubernetes manifests";
    let Some((tool, python)) = kubernetes_validate() else {
        return skip_or_fail(
            test,
            "kubernetes-validate is not in .cache/kubernetes-validate/venv (tests/run.sh installs it)",
        );
    };
    let files = manifests();
    assert!(files.len() >= 4, "{files:?}");
    let out = Command::new(&tool)
        .arg("--strict")
        .args(&files)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", out_text(&out));
    for f in &files {
        let name = f.file_name().unwrap().to_string_lossy().to_string();
        assert!(
            stdout(&out).contains(&format!("{name} passed")),
            "{name} was not validated:\n{}",
            out_text(&out)
        );
    }
    // And it does reject a broken one.
    let broken = scratch("k8s").join("broken.yaml");
    let deployment = std::fs::read_to_string(repo().join("deploy/kubernetes/deployment.yaml"))
        .unwrap()
        .replacen("replicas: 1 ", "replicas: one ", 1);
    assert!(deployment.contains("replicas: one "));
    std::fs::write(&broken, deployment).unwrap();
    let out = Command::new(&tool)
        .arg("--strict")
        .arg(&broken)
        .output()
        .unwrap();
    assert!(!out.status.success(), "{}", out_text(&out));

    let mut docs: Vec<(String, Value)> = Vec::new();
    for f in &files {
        let out = Command::new(&python)
            .args([
                "-c",
                "import json, sys, yaml; print(json.dumps([d for d in yaml.safe_load_all(open(sys.argv[1])) if d]))",
            ])
            .arg(f)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", out_text(&out));
        let name = f.file_name().unwrap().to_string_lossy().to_string();
        for d in serde_json::from_slice::<Vec<Value>>(&out.stdout).unwrap() {
            docs.push((name.clone(), d));
        }
    }
    let of_kind = |kind: &str| -> Vec<&(String, Value)> {
        docs.iter().filter(|(_, d)| d["kind"] == kind).collect()
    };
    let secrets = of_kind("Secret");
    assert_eq!(secrets.len(), 1);
    let secret = &secrets[0].1;
    let claims: BTreeSet<&str> = of_kind("PersistentVolumeClaim")
        .iter()
        .map(|(_, d)| d["metadata"]["name"].as_str().unwrap())
        .collect();
    let accounts: BTreeSet<&str> = of_kind("ServiceAccount")
        .iter()
        .map(|(_, d)| d["metadata"]["name"].as_str().unwrap())
        .collect();
    let deployments = of_kind("Deployment");
    assert!(deployments.len() >= 3, "one per storage kind");
    let mut tags = BTreeSet::new();
    for (file, d) in deployments {
        let spec = &d["spec"];
        assert_eq!(spec["replicas"], 1, "{file}");
        assert_eq!(spec["strategy"]["type"], "Recreate", "{file}");
        let pod = &spec["template"]["spec"];
        let sc = &pod["securityContext"];
        assert_eq!(sc["runAsNonRoot"], true, "{file}");
        assert_eq!(sc["runAsUser"], USER, "{file}");
        assert_eq!(sc["runAsGroup"], USER, "{file}");
        if let Some(sa) = pod["serviceAccountName"].as_str() {
            assert!(accounts.contains(sa), "{file}: no ServiceAccount {sa}");
        }
        let containers = pod["containers"].as_array().unwrap();
        assert_eq!(containers.len(), 1, "{file}");
        let ct = &containers[0];
        let csc = &ct["securityContext"];
        assert_eq!(csc["readOnlyRootFilesystem"], true, "{file}");
        assert_eq!(csc["allowPrivilegeEscalation"], false, "{file}");
        assert_eq!(
            csc["capabilities"]["drop"],
            serde_json::json!(["ALL"]),
            "{file}"
        );
        assert_eq!(
            ct["ports"][0]["containerPort"], 9464,
            "{file}: the image's SP_METRICS_ADDR port"
        );
        let port_name = ct["ports"][0]["name"].clone();
        for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
            assert_eq!(ct[probe]["httpGet"]["path"], path, "{file} {probe}");
            assert_eq!(ct[probe]["httpGet"]["port"], port_name, "{file} {probe}");
        }
        let res = &ct["resources"];
        for (kind, field) in [
            ("requests", "memory"),
            ("requests", "cpu"),
            ("limits", "memory"),
        ] {
            assert!(
                res[kind][field].is_string(),
                "{file}: resources.{kind}.{field}"
            );
        }
        let mi = |v: &Value| {
            v.as_str()
                .and_then(|s| s.strip_suffix("Mi"))
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or_else(|| panic!("{file}: {v} is not NNMi"))
        };
        assert!(mi(&res["limits"]["memory"]) > mi(&res["requests"]["memory"]));
        let secret_name = &ct["envFrom"][0]["secretRef"]["name"];
        assert_eq!(*secret_name, secret["metadata"]["name"], "{file}");

        // The configuration the connector gets: the image's defaults, the container's
        // env and the Secret; `check` must accept it.
        let mut env: BTreeMap<String, String> = IMAGE_ENV
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        for e in ct["env"].as_array().unwrap() {
            env.insert(
                e["name"].as_str().unwrap().into(),
                e["value"].as_str().unwrap().into(),
            );
        }
        for (k, v) in secret["stringData"].as_object().unwrap() {
            env.insert(k.clone(), v.as_str().unwrap().into());
        }
        let tag = env.get("SP_TASK_SYNC_TAG").cloned().unwrap_or_default();
        assert!(
            tags.insert(tag.clone()),
            "{file}: two Deployments on tag {tag:?}"
        );
        let out = run(&env, &["check"]);
        assert!(out.status.success(), "{file}: {}", out_text(&out));
        let provider = env["SP_TASK_SYNC_STORAGE_PROVIDER"].clone();
        let mounts = ct["volumeMounts"].as_array().cloned().unwrap_or_default();
        if provider == "local" {
            // The local store writes /data: a mounted claim, writable by the user.
            assert_eq!(mounts.len(), 1, "{file}");
            assert_eq!(mounts[0]["mountPath"], env["SP_TASK_SYNC_SAVE_TO"].as_str());
            let volume = pod["volumes"]
                .as_array()
                .unwrap()
                .iter()
                .find(|v| v["name"] == mounts[0]["name"])
                .unwrap();
            let claim = volume["persistentVolumeClaim"]["claimName"]
                .as_str()
                .unwrap();
            assert!(claims.contains(claim), "{file}: no claim {claim}");
            assert_eq!(sc["fsGroup"], USER, "{file}: the volume must be writable");
        }
    }
}

// ------------------------------------------------------------------------------------
// Prometheus and Grafana

/// Metric names (`spinoco_…`) in a text.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("spinoco_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        // Not a part of a longer word (e.g. a label value spinoco-connector is not).
        let before = rest[..i].chars().last();
        if !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            out.insert(tail[..end].to_string());
        }
        rest = &tail[end..];
    }
    out
}

/// A live scrape of the connector running as a service against the emulator, after a
/// round with retries.
fn live_scrape() -> String {
    let emu = emulator(EmulatorConfig {
        tasks: 20,
        seed: 19,
        recording_size: (2_000, 20_000),
        faults: spinoco_connector::emulator::Faults {
            server_error: 0.1,
            ..Default::default()
        },
        ..Default::default()
    });
    let dir = scratch("scrape");
    let port = free_port();
    let mut e = env(&emu, &dir);
    e.insert("SP_METRICS_ADDR".into(), format!("127.0.0.1:{port}"));
    let log = dir.with_extension("log");
    let mut child = spawn(&e, &[], &log);
    let url = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(60);
    while get(&format!("{url}/readyz")).map(|(s, _)| s) != Some(200) {
        assert!(
            child.try_wait().unwrap().is_none(),
            "{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        assert!(Instant::now() < deadline, "never ready");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (status, page) = get(&format!("{url}/metrics")).unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(status, 200);
    page
}

#[test]
fn alert_rules_and_dashboard_name_only_exported_metrics() {
    let test = "the Prometheus rules and the Grafana dashboard";
    let Some(promtool) = which("promtool") else {
        return skip_or_fail(
            test,
            "promtool is not installed (Debian package prometheus)",
        );
    };
    let prom = repo().join("deploy/prometheus");
    let rules = prom.join("spinoco-connector.rules.yml");
    let rule_tests = prom.join("spinoco-connector.rules.test.yml");
    let promtool_ok = |args: &[&Path]| {
        let mut cmd = Command::new(&promtool);
        for a in args {
            cmd.arg(a);
        }
        let out = cmd.current_dir(&prom).output().unwrap();
        assert!(
            out.status.success(),
            "promtool {args:?}:\n{}",
            out_text(&out)
        );
        stdout(&out)
    };
    let said = promtool_ok(&[Path::new("check"), Path::new("rules"), &rules]);
    assert!(said.contains("SUCCESS"), "{said}");
    let said = promtool_ok(&[Path::new("test"), Path::new("rules"), &rule_tests]);
    assert!(said.contains("SUCCESS"), "{said}");

    // The live page passes promtool's lint.
    let page = live_scrape();
    let mut lint = Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    lint.stdin
        .take()
        .unwrap()
        .write_all(page.as_bytes())
        .unwrap();
    let out = lint.wait_with_output().unwrap();
    assert!(out.status.success(), "{}\n{page}", out_text(&out));
    let exported: BTreeSet<String> = page
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .map(|l| l.split(' ').next().unwrap().to_string())
        .collect();
    assert!(exported.contains("spinoco_retries_total"), "{page}");
    assert!(
        page.lines()
            .any(|l| l.starts_with("spinoco_retries_total") && !l.ends_with(" 0")),
        "the faults caused no retry:\n{page}"
    );

    // Every name in the rules, their tests and the dashboard is on the page.
    let dashboard_file = repo().join("deploy/grafana/spinoco-connector.json");
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(&dashboard_file).unwrap()).unwrap();
    let mut queries = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{}", panel["title"]);
        for t in targets {
            queries.push((
                panel["title"].to_string(),
                t["expr"].as_str().unwrap().to_string(),
            ));
        }
    }
    for var in dashboard["templating"]["list"].as_array().unwrap() {
        if let Some(q) = var["definition"].as_str() {
            queries.push((var["name"].to_string(), q.to_string()));
        }
    }
    let mut named = BTreeSet::new();
    for (title, q) in &queries {
        let names = metric_names(q);
        assert!(!names.is_empty(), "{title}: {q} names no connector metric");
        named.extend(names);
    }
    // The panels: files and bytes per second, retries by side, rounds,
    // transfers in flight, journal age.
    for must in [
        "spinoco_files_total",
        "spinoco_bytes_total",
        "spinoco_retries_total",
        "spinoco_rounds_total",
        "spinoco_transfers_in_flight",
        "spinoco_journaled_page_timestamp_seconds",
    ] {
        assert!(named.contains(must), "the dashboard has no {must}");
    }
    assert!(queries
        .iter()
        .any(|(_, q)| q.contains("spinoco_retries_total") && q.contains("by (instance, side)")));
    let rule_text = std::fs::read_to_string(&rules).unwrap();
    let test_text = std::fs::read_to_string(&rule_tests).unwrap();
    named.extend(metric_names(&rule_text));
    let in_tests = metric_names(&test_text);
    assert!(in_tests.len() >= 6, "{in_tests:?}");
    named.extend(in_tests);
    let unknown: Vec<_> = named.difference(&exported).collect();
    assert!(
        unknown.is_empty(),
        "named but not exported: {unknown:?}\nexported: {exported:?}"
    );
}
