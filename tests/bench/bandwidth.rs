//! The bandwidth cap's benchmark: the release binary against the in-process platform
//! emulator, `--once` on 12 recordings of about 1 MB into a fresh folder, once under
//! `SP_TASK_SYNC_BANDWIDTH=1MiB/s` and once under a timetable that is off all day
//! (`00:00,off`), at full speed. It prints the rate each run achieved (the bytes over the
//! wall time from the start of the process to its exit, so the start and the first
//! second's burst are in it: 0.85–1.15 MiB/s is expected under the cap). It fails only
//! on a wrong or incomplete result, never on a time.
//!
//! `cargo bench --bench bandwidth -- [--rate 1MiB/s] [--files 12] [--size-kb 1000]
//! [--concurrency 4]`

mod cli;

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use spinoco_connector::{Emulator, EmulatorConfig};

const TOKEN: &str = "bench-token";
const MIB: f64 = 1024.0 * 1024.0;
const USAGE: &str = "usage: cargo bench --bench bandwidth -- [--rate 1MiB/s] [--files 12] \
[--size-kb 1000] [--concurrency 4]";

struct Options {
    rate: String,
    files: usize,
    size_kb: u64,
    concurrency: usize,
}

fn parse_options() -> Result<Options, String> {
    let mut o = Options {
        rate: "1MiB/s".into(),
        files: 12,
        size_kb: 1000,
        concurrency: 4,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        let number = |v: &str| v.parse().map_err(|_| format!("{flag}: cannot read {v:?}"));
        match flag.as_str() {
            // cargo bench passes --bench to every bench target.
            "--bench" => {}
            "--rate" => o.rate = value()?.clone(),
            "--files" => o.files = number(value()?)?,
            "--size-kb" => o.size_kb = number(value()?)? as u64,
            "--concurrency" => o.concurrency = number(value()?)?,
            "--help" | "-h" => return Err(String::new()),
            other => return Err(format!("unknown option {other:?}")),
        }
    }
    Ok(o)
}

/// One run's result.
struct Run {
    bytes: u64,
    wall: f64,
}

/// `--once` under `bandwidth` from a fresh emulator into a fresh folder; every handed-out
/// file is checked byte for byte.
fn run(o: &Options, bandwidth: &str) -> Result<Run, String> {
    let size = o.size_kb * 1000;
    let emu = Emulator::start(EmulatorConfig {
        token: TOKEN.into(),
        seed: 7,
        tasks: o.files,
        calls_only: true,
        recordings_per_call: Some(1),
        recording_size: (size * 95 / 100, size * 105 / 100),
        ..Default::default()
    })
    .map_err(|e| e.to_string())?;
    let dir = std::env::temp_dir().join(format!(
        "spinoco-bench-bandwidth-{}-{}",
        std::process::id(),
        bandwidth.replace(['/', ',', ':', ' '], "_")
    ));
    let _ = fs::remove_dir_all(&dir);
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_spinoco-connector"))
        .env_clear()
        .env("SP_API_TOKEN", TOKEN)
        .env("SP_API_URL", emu.url())
        .env("SP_TASK_SYNC_TAG", "bench")
        .env("SP_TASK_SYNC_FILE_NAME_TEMPLATE", "{{task_id}}")
        .env("SP_TASK_SYNC_GET_DATA", "Recordings")
        .env("SP_TASK_SYNC_SAVE_TO", &dir)
        .env("SP_TASK_SYNC_CONCURRENCY", o.concurrency.to_string())
        .env("SP_TASK_SYNC_BANDWIDTH", bandwidth)
        .env("SP_LOG_LEVEL", "warn")
        .arg("--once")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| e.to_string())?;
    let wall = started.elapsed().as_secs_f64();
    let checked = verify(&emu, &dir);
    let _ = fs::remove_dir_all(&dir);
    if !out.status.success() {
        return Err(format!(
            "the connector exited with {:?}:\n{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(Run {
        bytes: checked?,
        wall,
    })
}

/// Every handed-out file is in `dir` with the emulator's bytes; the bytes checked.
fn verify(emu: &Emulator, dir: &Path) -> Result<u64, String> {
    let mut bytes = 0;
    let mut files = 0;
    for task in emu.handed_out() {
        for get in task["get"].as_array().cloned().unwrap_or_default() {
            let (Some(name), Some(path)) = (get["fileName"].as_str(), get["path"].as_str()) else {
                return Err(format!("a get without fileName or path: {get}"));
            };
            let want = emu
                .content(path)
                .ok_or(format!("the emulator has no {path}"))?;
            let got = fs::read(dir.join(name)).map_err(|e| format!("{name}: {e}"))?;
            if got != want {
                return Err(format!("{name}: stored bytes differ from the platform's"));
            }
            bytes += got.len() as u64;
            files += 1;
        }
    }
    if files == 0 {
        return Err("the emulator handed out nothing".into());
    }
    Ok(bytes)
}

fn main() {
    let o = cli::options_or_exit(parse_options(), USAGE);
    println!(
        "{} recordings of about {} KB, concurrency {}, release binary, local storage",
        o.files, o.size_kb, o.concurrency
    );
    println!();
    println!("| SP_TASK_SYNC_BANDWIDTH | MiB stored | wall s | achieved MiB/s |");
    println!("|---|---|---|---|");
    let mut failed = false;
    for bandwidth in [o.rate.as_str(), "00:00,off"] {
        match run(&o, bandwidth) {
            Ok(r) => println!(
                "| `{bandwidth}` | {:.2} | {:.2} | {:.2} |",
                r.bytes as f64 / MIB,
                r.wall,
                r.bytes as f64 / MIB / r.wall
            ),
            Err(e) => {
                failed = true;
                println!(
                    "| `{bandwidth}` | FAILED: {} |",
                    e.lines().next().unwrap_or("")
                );
                eprintln!("{e}");
            }
        }
    }
    if failed {
        std::process::exit(1);
    }
}
