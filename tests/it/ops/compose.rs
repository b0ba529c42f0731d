//! `docker-compose-example.yml` under podman-compose: the podman commands it makes,
//! and its first service for real against the emulator, with only the API endpoint and
//! the token set by the test (and the image: the one built from this checkout).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::common::harness::*;
use crate::common::podman::{image, Cleanup};
use crate::common::skip::skip;
use serde_json::Value;
use spinoco_connector::EmulatorConfig;

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

/// The compose example runs hardened (read-only, no capabilities, a memory limit),
/// refuses to start without `SP_API_TOKEN`, and its first service syncs from the
/// emulator, healthy, with JSON logs, until a clean stop.
#[test]
fn compose_example_parses_and_its_first_service_syncs_from_the_emulator() {
    let Some(compose) = which("podman-compose") else {
        return skip("podman-compose is not installed");
    };
    let Some(b) = image() else {
        return;
    };
    if TcpListener::bind("127.0.0.1:9464").is_err() {
        return skip("127.0.0.1:9464, which the compose example publishes, is in use");
    }
    let p = &b.podman;
    let mut c = Cleanup::new(p);
    let project = unique("spinoco-it-compose");
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
    let said = text(&dry);
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
        text(&unset)
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
    assert!(up.status.success(), "{}", text(&up));
    relay(
        relay_at,
        format!("127.0.0.1:{}", emu.port()).parse().unwrap(),
    );

    let logs = || text(&p.run(&["logs", &container]));
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
    assert!(down.status.success(), "{}", text(&down));
}
