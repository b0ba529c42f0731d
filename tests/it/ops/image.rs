//! The image as users get it: the final stage of `Dockerfile.scratch`, built with podman
//! from the static binary (`common::podman`): its configuration and contents, a `--once`
//! sync into a named volume, a service run (healthcheck, `/metrics`, `podman stop`),
//! `check` and `render`.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::harness::*;
use crate::common::podman::{image, Cleanup, IMAGE_ENV, USER};
use crate::common::skip::say;
use serde_json::Value;
use spinoco_connector::{Emulator, EmulatorConfig};

/// The bound on the image: the binary plus a few kilobytes of metadata.
const MAX_IMAGE_BYTES: u64 = 6_000_000;

/// `-e NAME=value` pairs.
fn env_args(env: &[(&str, String)]) -> Vec<String> {
    env.iter()
        .flat_map(|(k, v)| ["-e".to_string(), format!("{k}={v}")])
        .collect()
}

fn owner(path: &Path) -> u32 {
    std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(path).unwrap())
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

/// The image's entrypoint, user, defaults, port, volume and healthcheck are the
/// documented ones, it is the binary plus a few kilobytes, and its file system holds
/// the binary and /data only, no shell.
#[test]
fn image_is_configured_as_documented_and_holds_only_the_binary() {
    let Some(b) = image() else {
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
    let binary = std::fs::metadata(b.binary).unwrap().len();
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
    assert!(listing.status.success(), "{}", text(&listing));
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
    assert!(!sh.status.success(), "a shell ran: {}", text(&sh));
}

/// In the image: a `--once` sync into a named volume owned by the image's user,
/// `check`, `render`, a service run that turns healthy and serves /metrics, a `podman
/// stop` with exit 0 and nothing partial, and a next run that finishes the job.
#[test]
fn image_syncs_into_a_named_volume_runs_healthy_and_stops_on_sigterm() {
    let Some(b) = image() else {
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
    assert!(out.status.success(), "{}", text(&out));
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
    let said = text(&check);
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
    let said = text(&connect);
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
    assert!(render.status.success(), "{}", text(&render));
    let first = stdout(&render)
        .lines()
        .next()
        .unwrap_or_default()
        .to_string();
    assert!(
        first.starts_with("2024/09/09/20240909154547-5f1d7a10-6e8b-11ef-8000-0242ac120002.ogg "),
        "{}",
        text(&render)
    );
    let bad = p.run(&["run", "--rm", &b.image, "render", "--due-date", "tomorrow"]);
    assert_eq!(bad.status.code(), Some(2), "{}", text(&bad));

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
    let logs = || text(&p.run(&["logs", &name]));
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
            text(&h),
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
    let rss_kb = proc_status(&pid, "VmHWM:").expect("VmHWM in /proc/PID/status");

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
    assert!(out.status.success(), "{}", text(&out));
    verify_complete(&emu, &data);
    assert_eq!(emu.deletes().len(), recording_deletes(&emu).len());
}
