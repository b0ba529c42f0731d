//! The `spinoco-connector` command line: parses the arguments, reads the configuration,
//! runs the command and maps every outcome to an exit code the README documents.

use std::sync::Arc;

use log::{error, info, warn, LevelFilter};

use crate::config::Config;
use crate::env::Env;
use crate::lease::{self, Lease, LeaseError, WhenHeld};
use crate::logging::{self, LogFormat};
use crate::platform::{Platform, PlatformError};
use crate::report::Report;
use crate::retry::{self, RetryBudget};
use crate::store::{self, BlobStore, StoreErrorKind};
use crate::sync::{Engine, Mode, SyncError};
use crate::{demo, endpoint, http, metrics, notify, shutdown, verify};

/// Exit codes (README: "Exit codes").
mod exit {
    pub const OK: u8 = 0;
    /// Something could not be stored or deleted, or a service stayed unreachable.
    pub const FAILURE: u8 = 1;
    pub const USAGE: u8 = 2;
    pub const CONFIG: u8 = 3;
    /// The platform refused the API token (401/403).
    pub const PLATFORM_AUTH: u8 = 4;
    /// The storage refused the credentials or permissions.
    pub const STORAGE_DENIED: u8 = 5;
    /// Stopped while a page the platform handed out was not yet journaled: its tasks
    /// (logged at error) may exist nowhere else.
    pub const DATA_AT_RISK: u8 = 6;
    /// `--once`: another connector works on this tag (it holds the journal lease).
    pub const TAG_HELD: u8 = 7;
}

const USAGE: &str = "\
spinoco-connector — copies recordings, transcriptions and metadata from the Spinoco
platform into local disk or cloud storage. Configured by environment variables (README).

Usage:
  spinoco-connector              run as a service: sync rounds forever
  spinoco-connector --once       drain the feed, finish everything, exit
  spinoco-connector check [--connect]
                                 validate and print the configuration (secrets masked);
                                 --connect also calls the platform and probes the storage
  spinoco-connector render [--due-date ISO] [--task-id UUID] [--call-from N] [--call-to N]
                           [--file-name NAME]
                                 print the names SP_TASK_SYNC_FILE_NAME_TEMPLATE gives
                                 (and compare them with a platform fileName)
  spinoco-connector demo [--dir DIR]
                                 sync from a built-in platform emulator into DIR (./demo-data)
  spinoco-connector verify [--since DATE] [--until DATE] [--deep]
                                 check that every file the manifests record is in the
                                 storage with its size (--deep: and its CRC-32C); dates
                                 YYYY-MM-DD or ISO-8601, both included, select by the
                                 date a file was stored; exit 0 only if all holds
  spinoco-connector health [--live]
                                 ask the running connector's SP_METRICS_ADDR endpoint for
                                 /readyz (or /healthz with --live); exit 0 if it answers 200
  spinoco-connector emulator [--help]
                                 run the platform emulator alone (tests, benchmark)
  spinoco-connector --help | --version

Exit codes: 0 ok, 1 not everything stored, 2 usage, 3 configuration error,
4 platform refused the token, 5 storage refused access, 6 stopped with a received
page not journaled (data at risk), 7 another connector works on this tag (--once).
";

/// Runs the command `args` (without the program name) and says its exit code.
pub fn run(args: &[String]) -> u8 {
    let first = args.first().map(String::as_str);
    match first {
        None => sync(Mode::Service),
        Some("--once") if args.len() == 1 => sync(Mode::Once),
        Some("--help" | "-h" | "help") => {
            print!("{USAGE}");
            exit::OK
        }
        Some("--version" | "-V") => {
            println!("spinoco-connector {}", env!("CARGO_PKG_VERSION"));
            exit::OK
        }
        Some("check") => match &args[1..] {
            [] => check(false),
            [flag] if flag == "--connect" => check(true),
            _ => usage("check takes only --connect"),
        },
        Some("render") => render(&args[1..]),
        Some("verify") => verify_cmd(&args[1..]),
        Some("health") => match &args[1..] {
            [] => health(false),
            [flag] if flag == "--live" => health(true),
            _ => usage("health takes only --live"),
        },
        Some("demo") => match &args[1..] {
            [] => demo_cmd("demo-data"),
            [flag, dir] if flag == "--dir" => demo_cmd(dir),
            _ => usage("demo takes only --dir DIR"),
        },
        Some("emulator") => crate::emulator::run_cli(&args[1..]).clamp(0, 255) as u8,
        Some(other) => usage(&format!("unknown argument {other:?}")),
    }
}

fn usage(problem: &str) -> u8 {
    eprintln!("error: {problem}\n\n{USAGE}");
    exit::USAGE
}

fn init_logging(level: LevelFilter, format: LogFormat) {
    // Both formats cap the HTTP stack at warn: it logs raw header lines at trace
    // level, and the token must never reach the log, whatever SP_LOG_LEVEL says.
    logging::init(level, format);
}

fn load_config() -> Result<Config, u8> {
    Config::from_env(&Env::from_process()).map_err(|errors| {
        eprint!("{errors}");
        exit::CONFIG
    })
}

fn sync(mode: Mode) -> u8 {
    let cfg = match load_config() {
        Ok(c) => c,
        Err(code) => return code,
    };
    init_logging(cfg.log_level, cfg.log_format);
    if let Some(warning) = cfg.api.clear_text_warning() {
        warn!("{warning}");
    }
    shutdown::install();
    crate::heap::limit_arenas();
    retry::observe(|side, reason| metrics::global().retry(side, reason));
    metrics::global().bandwidth(&cfg.bandwidth);
    let agent = http::Http::new(cfg.http_timeout, cfg.concurrency, &cfg.network).agent;
    // The storage client retries each of its requests itself: within the retry
    // timeout in --once, forever in service mode (README "Retries").
    let budget = mode.budget(cfg.retry_timeout);
    let store: Arc<dyn BlobStore> = match store::open(&cfg.storage, &agent, budget) {
        Ok(s) => Arc::from(s),
        Err(e) => {
            error!("cannot open the storage: {}", Report(&e));
            return if e.kind == StoreErrorKind::Denied {
                exit::STORAGE_DENIED
            } else {
                exit::FAILURE
            };
        }
    };
    if let Some(addr) = cfg.metrics_addr {
        // Ready while a round finished (or a file was stored) within three poll
        // intervals, plus one HTTP timeout for the request that may be under way.
        let window = 3 * cfg.poll_interval + cfg.http_timeout;
        let probe_every = std::time::Duration::from_secs(10);
        // The probe tries once: the run's store retries each request for as long as
        // the mode allows (forever in service mode), which would hide an outage.
        let probe: Arc<dyn BlobStore> =
            match store::open(&cfg.storage, &agent, RetryBudget::tries(1)) {
                Ok(s) => Arc::from(s),
                Err(_) => store.clone(),
            };
        if let Err(e) = endpoint::serve(addr, probe, window, probe_every) {
            error!("cannot serve metrics on SP_METRICS_ADDR={addr}: {e}");
            return exit::FAILURE;
        }
    }
    // One connector per journal: wait for (service) or refuse (--once) a tag another
    // connector works on, before the journal is touched.
    let when_held = match mode {
        Mode::Once => WhenHeld::GiveUp,
        Mode::Service => WhenHeld::Wait,
    };
    let lease = match Lease::acquire(store.clone(), &cfg.tag, cfg.lease_ttl, when_held) {
        Ok(lease) => lease,
        Err(LeaseError::Stopped) => return exit::OK,
        Err(e) => {
            error!("{}", Report(&e));
            return match e {
                LeaseError::Held { .. } => exit::TAG_HELD,
                LeaseError::Store(s) if s.kind == StoreErrorKind::Denied => exit::STORAGE_DENIED,
                _ => exit::FAILURE,
            };
        }
    };
    lease.keep_renewed();
    // Only the lease holder may clean up after earlier runs of the tag: a `check` or a
    // second connector on the same volume cannot tell a live process's temp files from
    // a dead one's (process ids say nothing across containers).
    let earlier_run = lease.predecessor().map(|p| p.run_id.as_str());
    store.sweep_leftovers(&cfg.tag, earlier_run.filter(|r| !r.is_empty()));
    let platform =
        Platform::new(agent, &cfg.api.base_url(), cfg.token.clone()).paced(&cfg.bandwidth);
    // Started for systemd: the lease is held and the first round begins.
    notify::ready();
    let outcome = Engine::new(&cfg, platform, store.as_ref(), mode).run();
    lease.release();
    if lease.lost() {
        error!("stopped because the journal lease was lost; the journal keeps what was done");
        return exit::FAILURE;
    }
    match outcome {
        Ok(summary) => {
            info!("done: {summary}");
            exit::OK
        }
        Err(e) => {
            error!("{}", Report(&e));
            code_of(&e)
        }
    }
}

fn code_of(e: &SyncError) -> u8 {
    match e {
        SyncError::Auth(_) => exit::PLATFORM_AUTH,
        SyncError::StorageDenied(_) => exit::STORAGE_DENIED,
        SyncError::DataAtRisk { .. } => exit::DATA_AT_RISK,
        _ => exit::FAILURE,
    }
}

fn check(connect: bool) -> u8 {
    let cfg = match load_config() {
        Ok(c) => c,
        Err(code) => return code,
    };
    println!("configuration is valid:");
    for (name, value) in cfg.describe() {
        println!("  {name:<32} {value}");
    }
    let now = crate::bandwidth::unix_now();
    println!("bandwidth: {}", cfg.bandwidth.outlook(now));
    if let Some(warning) = cfg.api.clear_text_warning() {
        println!("warning: {warning}");
    }
    if !connect {
        return exit::OK;
    }
    let http = http::Http::new(cfg.http_timeout, cfg.concurrency, &cfg.network);
    let agent = http.agent.clone();
    let platform = Platform::new(agent.clone(), &cfg.api.base_url(), cfg.token.clone());
    // A page token the platform never issued: a 400 proves the token was accepted,
    // and, unlike a query, it cannot move the tag's cursor.
    let probe = serde_json::json!({ "page": "spinoco-connector-check", "count": 1 });
    let platform_code = match platform.feed(&probe) {
        Ok(_) | Err(PlatformError::PageExpired) => {
            println!(
                "platform: {} reachable, token accepted ({})",
                cfg.api.base_url(),
                connection(&http, &cfg.api.base_url(), &cfg.api.host)
            );
            exit::OK
        }
        Err(e @ PlatformError::Auth { .. }) => {
            println!("platform: {e}");
            exit::PLATFORM_AUTH
        }
        Err(e) => {
            println!(
                "platform: {} failed ({}): {e}",
                cfg.api.base_url(),
                http.route(&cfg.api.base_url())
            );
            exit::FAILURE
        }
    };
    let storage_code =
        // A few tries, not the run's budget: `check` answers within seconds.
        match store::open(&cfg.storage, &agent, RetryBudget::tries(3))
            .and_then(|s| probe_storage(s.as_ref()).map(|described| (described, s)))
        {
            Ok((described, store)) => {
                let how = storage_endpoint(&cfg.storage)
                    .map(|url| format!(" ({})", connection(&http, &url, host_of(&url))))
                    .unwrap_or_default();
                println!("storage: {described}: wrote, read back and removed a probe object{how}");
                match lease::holder(store.as_ref(), &cfg.tag) {
                    Ok(Some(h)) if !h.released => {
                        println!("journal lease: held by {}", h.describe())
                    }
                    Ok(_) => println!(
                        "journal lease: free (no connector works on tag {:?})",
                        cfg.tag
                    ),
                    Err(e) => println!("journal lease: cannot be read: {}", Report(&e)),
                }
                exit::OK
            }
            Err(e) => {
                println!("storage: {}", Report(&e));
                if e.kind == StoreErrorKind::Denied {
                    exit::STORAGE_DENIED
                } else {
                    exit::FAILURE
                }
            }
        };
    if platform_code != exit::OK {
        platform_code
    } else {
        storage_code
    }
}

/// `direct, TLS verified by the built-in CA roots` and the like, for `check --connect`.
fn connection(http: &http::Http, url: &str, host: &str) -> String {
    let route = http.route(url);
    match http.verified_by(host) {
        Some(source) => format!("{route}, TLS verified by {source}"),
        None if url.starts_with("https:") => format!("{route}, TLS"),
        None => format!("{route}, plain HTTP without TLS"),
    }
}

/// The storage endpoint whose route `check --connect` describes: GCS's only (S3's and
/// Azure's probes say nothing of the route).
fn storage_endpoint(storage: &crate::store::StorageSettings) -> Option<String> {
    use crate::store::StorageSettings;
    match storage {
        StorageSettings::Gcs(gcs) => Some(gcs.endpoint.clone()),
        _ => None,
    }
}

fn host_of(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split('/').next().unwrap_or(rest);
    match authority.rsplit_once(':') {
        Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) && !h.is_empty() => h,
        _ => authority,
    }
}

fn probe_storage(store: &dyn BlobStore) -> Result<String, store::StoreError> {
    // Named by the run, not the pid: `check` in a container is pid 1, in every container.
    let key = format!(".spinoco-connector/probe-{}", crate::process::run_id());
    let body = b"spinoco-connector check --connect";
    store::put_bytes(store, &key, body)?;
    let read = store.get(&key)?;
    store.delete(&key)?;
    if read.as_deref() != Some(&body[..]) {
        return Err(store::StoreError::transient(format!(
            "{}: the probe object read back differently",
            store.describe()
        )));
    }
    Ok(store.describe())
}

/// `verify`: exit 0 when every selected file is there as recorded, 1 when not (or the
/// archive could not be read), 5 when the storage refuses access.
fn verify_cmd(args: &[String]) -> u8 {
    let opts = match verify::Options::parse(args) {
        Ok(o) => o,
        Err(problem) => return usage(&problem),
    };
    let cfg = match load_config() {
        Ok(c) => c,
        Err(code) => return code,
    };
    init_logging(cfg.log_level, cfg.log_format);
    match verify::run(&cfg, &opts) {
        Ok(findings) => {
            print!("{findings}");
            if findings.holds() {
                exit::OK
            } else {
                exit::FAILURE
            }
        }
        Err(e) => {
            error!("{}", Report(&e));
            if e.is_denied() {
                exit::STORAGE_DENIED
            } else {
                exit::FAILURE
            }
        }
    }
}

fn render(args: &[String]) -> u8 {
    let mut opts = demo::RenderOptions::default();
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let Some(value) = it.next() else {
            return usage(&format!("{flag} needs a value"));
        };
        match flag.as_str() {
            "--due-date" => match crate::config::parse_iso_date(value) {
                Some(ms) => opts.due_date = Some(ms),
                None => return usage(&format!("--due-date {value:?} is not an ISO-8601 date")),
            },
            "--task-id" => opts.task_id = Some(value.clone()),
            "--call-from" => opts.call_from = Some(value.clone()),
            "--call-to" => opts.call_to = Some(value.clone()),
            "--file-name" => opts.file_name = Some(value.clone()),
            _ => return usage(&format!("unknown render option {flag:?}")),
        }
    }
    match demo::render_names(&Env::from_process(), &opts) {
        Ok(lines) => {
            for line in lines {
                println!("{line}");
            }
            exit::OK
        }
        Err(errors) => {
            eprint!("{errors}");
            exit::CONFIG
        }
    }
}

/// `health [--live]`: for Docker's HEALTHCHECK in an image without a shell. Exits 0 or
/// 1 only (Docker reserves 2).
fn health(live: bool) -> u8 {
    let env = Env::from_process();
    let Some(raw) = env.get("SP_METRICS_ADDR") else {
        println!(
            "health: SP_METRICS_ADDR is not set, so the connector serves no health endpoint to ask"
        );
        return exit::FAILURE;
    };
    let Ok(addr) = raw.parse() else {
        println!("health: SP_METRICS_ADDR={raw:?} is not an IP address and port");
        return exit::FAILURE;
    };
    match endpoint::check_health(addr, live) {
        Ok(said) => {
            println!("healthy: {said}");
            exit::OK
        }
        Err(said) => {
            println!("unhealthy: {said}");
            exit::FAILURE
        }
    }
}

fn demo_cmd(dir: &str) -> u8 {
    init_logging(LevelFilter::Info, LogFormat::Text);
    shutdown::install();
    match demo::run(std::path::Path::new(dir)) {
        Ok(()) => exit::OK,
        Err(e) => {
            error!("demo failed: {}", Report(e.as_ref()));
            exit::FAILURE
        }
    }
}
