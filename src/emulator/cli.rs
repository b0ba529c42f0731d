//! `spinoco-connector emulator ...`: the emulator alone, for benchmarks and manual tests.

use std::time::Duration;

use super::{Emulator, EmulatorConfig, EmulatorTls};

fn parse_arg<T: std::str::FromStr>(flag: &str, value: Option<&String>) -> Result<T, String> {
    let v = value.ok_or_else(|| format!("{flag} needs a value"))?;
    v.parse().map_err(|_| format!("{flag}: cannot read {v:?}"))
}

const USAGE: &str =
    "usage: spinoco-connector emulator [--port N] [--tasks N] [--seed N] [--token T] \
[--latency-ms N] [--recording-kb MIN-MAX] [--calls-only] [--recordings-per-call N] [--redeliver P] [--old-platform P] [--chunked P] \
[--start-due-ms N] [--server-error P] [--too-many P] [--retry-after S] [--drop-body P] \
[--stall-body P] [--stall-ms N] [--spike P] [--spike-ms N] [--tls-cert PEM --tls-key PEM]";

/// Reads the command line of `spinoco-connector emulator ...` (the subcommand itself may
/// be the first argument or already removed).
pub fn parse_cli(args: &[String]) -> Result<EmulatorConfig, String> {
    let mut cfg = EmulatorConfig::default();
    let mut it = args.iter().skip_while(|a| *a == "emulator");
    while let Some(flag) = it.next() {
        let f = &mut cfg.faults;
        match flag.as_str() {
            "--port" => cfg.port = parse_arg(flag, it.next())?,
            "--tasks" => cfg.tasks = parse_arg(flag, it.next())?,
            "--seed" => cfg.seed = parse_arg(flag, it.next())?,
            "--token" => cfg.token = parse_arg(flag, it.next())?,
            "--latency-ms" => cfg.latency = Duration::from_millis(parse_arg(flag, it.next())?),
            "--recording-kb" => {
                let v: String = parse_arg(flag, it.next())?;
                let (lo, hi) = v
                    .split_once('-')
                    .ok_or_else(|| format!("--recording-kb wants MIN-MAX, not {v:?}"))?;
                let kb = |s: &str| {
                    s.trim()
                        .parse::<u64>()
                        .map_err(|_| format!("--recording-kb: cannot read {v:?}"))
                };
                cfg.recording_size = (kb(lo)? * 1024, kb(hi)? * 1024);
                if cfg.recording_size.0 > cfg.recording_size.1 {
                    return Err(format!("--recording-kb {v}: MIN is larger than MAX"));
                }
            }
            "--calls-only" => cfg.calls_only = true,
            "--recordings-per-call" => cfg.recordings_per_call = Some(parse_arg(flag, it.next())?),
            "--redeliver" => cfg.redeliver = parse_arg(flag, it.next())?,
            "--old-platform" => cfg.old_platform = parse_arg(flag, it.next())?,
            "--chunked" => cfg.chunked = parse_arg(flag, it.next())?,
            "--start-due-ms" => cfg.start_due_ms = parse_arg(flag, it.next())?,
            "--server-error" => f.server_error = parse_arg(flag, it.next())?,
            "--too-many" => f.too_many = parse_arg(flag, it.next())?,
            "--retry-after" => f.retry_after_secs = parse_arg(flag, it.next())?,
            "--drop-body" => f.drop_body = parse_arg(flag, it.next())?,
            "--stall-body" => f.stall_body = parse_arg(flag, it.next())?,
            "--stall-ms" => f.stall_for = Duration::from_millis(parse_arg(flag, it.next())?),
            "--spike" => f.spike = parse_arg(flag, it.next())?,
            "--spike-ms" => f.spike_latency = Duration::from_millis(parse_arg(flag, it.next())?),
            "--tls-cert" | "--tls-key" => {
                let path: String = parse_arg(flag, it.next())?;
                let pem = std::fs::read(&path).map_err(|e| format!("{flag} {path}: {e}"))?;
                let tls = cfg.tls.get_or_insert(EmulatorTls {
                    cert_chain_pem: Vec::new(),
                    key_pem: Vec::new(),
                });
                if flag == "--tls-cert" {
                    tls.cert_chain_pem = pem;
                } else {
                    tls.key_pem = pem;
                }
            }
            other => return Err(format!("unknown option {other:?}")),
        }
    }
    Ok(cfg)
}

/// `spinoco-connector emulator ...`: starts, prints the URL on stdout, serves until killed.
pub fn run_cli(args: &[String]) -> i32 {
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("{USAGE}");
        return 0;
    }
    let cfg = match parse_cli(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("emulator: {e}\n{USAGE}");
            return 2;
        }
    };
    match Emulator::start(cfg) {
        Ok(emu) => {
            println!("{}", emu.url());
            let _ = std::io::Write::flush(&mut std::io::stdout());
            loop {
                std::thread::park();
            }
        }
        Err(e) => {
            eprintln!("emulator: cannot listen: {e}");
            1
        }
    }
}
