//! Configuration from the environment, checked whole before any network call.
//!
//! The variable names are the official Node.js connector's, so a deployment can
//! switch connectors without edits. Every mistake is collected, so a user sees all
//! of them at once, each naming the variable and the bad value (secrets masked).

use std::path::PathBuf;
use std::time::Duration;

use crate::env::{parse_duration, ConfigError, ConfigErrors, Env, Secret};
use crate::report::Report;
use crate::store::StorageSettings;
use crate::task::{join_types, DataType, NameSource};
use crate::template::FileNameTemplate;

mod api;
mod bandwidth;
mod filters;

use api::parse_api;
pub use api::ApiEndpoint;
pub use filters::Filters;

/// The whole, checked configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub token: Secret,
    pub api: ApiEndpoint,
    pub tag: String,
    pub template_source: String,
    pub template: FileNameTemplate,
    pub get: Vec<DataType>,
    pub delete: Vec<DataType>,
    /// Milliseconds since the epoch.
    pub start_from: Option<i64>,
    pub filters: Filters,
    pub log_level: log::LevelFilter,
    pub poll_interval: Duration,
    pub concurrency: usize,
    pub page_size: u32,
    /// Longest silence accepted from a server while waiting for or reading an answer.
    pub http_timeout: Duration,
    /// `SP_TASK_SYNC_RETRY_TIMEOUT`: how long one operation keeps retrying a transient
    /// failure in `--once` mode (service mode retries until it works).
    pub retry_timeout: Duration,
    /// `SP_TASK_SYNC_MAX_FILE_SIZE`: the largest download stored, in bytes; a larger
    /// one (announced or grown) is rejected.
    pub max_file_size: u64,
    /// `SP_TASK_SYNC_NAMES`: which name wins when the template's and the platform's differ.
    pub names: NameSource,
    /// `SP_TASK_SYNC_LEASE_TTL`: how long the journal lease lasts without renewal.
    pub lease_ttl: Duration,
    /// `SP_TASK_SYNC_BANDWIDTH` in `SP_TASK_SYNC_BANDWIDTH_TZ`: the cap on download
    /// bytes at each time of day.
    pub bandwidth: crate::bandwidth::Timetable,
    pub storage: StorageSettings,
    /// Extra trusted CAs and proxies (`crate::http::proxy`).
    pub network: crate::http::proxy::Network,
    /// `SP_METRICS_ADDR`: where `/metrics`, `/healthz` and `/readyz` are served (opt-in).
    pub metrics_addr: Option<std::net::SocketAddr>,
    pub log_format: crate::logging::LogFormat,
}

pub const DEFAULT_GET_DATA: &str = "Recordings,Transcriptions";
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(60);
pub const DEFAULT_CONCURRENCY: usize = 4;
pub const DEFAULT_PAGE_SIZE: u32 = 50;
pub const DEFAULT_HTTP_TIMEOUT: Duration = Duration::from_secs(30);
/// The largest download stored by default: 4 GiB, hours of audio.
pub const DEFAULT_MAX_FILE_SIZE: u64 = 4 << 30;
/// How long the journal lease lasts without renewal (`crate::lease`).
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(60);

impl Config {
    /// Reads and checks everything; returns every problem found.
    pub fn from_env(env: &Env) -> Result<Config, ConfigErrors> {
        let mut errors = Vec::new();
        let required = |name: &str, errors: &mut Vec<ConfigError>| -> String {
            match env.get(name) {
                Some(v) => v.to_string(),
                None => {
                    errors.push(ConfigError::new(name, None, "is required but not set"));
                    String::new()
                }
            }
        };

        let token = Secret::new(required("SP_API_TOKEN", &mut errors));
        let tag = required("SP_TASK_SYNC_TAG", &mut errors);
        if tag.chars().count() > 64 {
            errors.push(ConfigError::new(
                "SP_TASK_SYNC_TAG",
                Some(&tag),
                format!(
                    "is {} characters long; the platform allows at most 64",
                    tag.chars().count()
                ),
            ));
        }
        let template_source = required("SP_TASK_SYNC_FILE_NAME_TEMPLATE", &mut errors);
        let template = if template_source.is_empty() {
            None
        } else {
            match FileNameTemplate::parse(&template_source) {
                Ok(t) => Some(t),
                Err(e) => {
                    errors.push(ConfigError::new(
                        "SP_TASK_SYNC_FILE_NAME_TEMPLATE",
                        Some(&template_source),
                        Report(&e).to_string(),
                    ));
                    None
                }
            }
        };

        let get = parse_types(
            env,
            "SP_TASK_SYNC_GET_DATA",
            Some(DEFAULT_GET_DATA),
            &mut errors,
        );
        let delete = parse_types(env, "SP_TASK_SYNC_DELETE_DATA", None, &mut errors);
        if let Some(bad) = delete.iter().find(|t| **t != DataType::Recordings) {
            errors.push(ConfigError::new(
                "SP_TASK_SYNC_DELETE_DATA",
                env.get("SP_TASK_SYNC_DELETE_DATA"),
                format!(
                    "only Recordings can be deleted from the platform, not {}",
                    bad.name()
                ),
            ));
        } else if !delete.is_empty() && !get.contains(&DataType::Recordings) {
            errors.push(ConfigError::new(
                "SP_TASK_SYNC_DELETE_DATA",
                env.get("SP_TASK_SYNC_DELETE_DATA"),
                "deletes recordings that SP_TASK_SYNC_GET_DATA does not download, so they \
                 would be lost; add Recordings to SP_TASK_SYNC_GET_DATA",
            ));
        }

        let start_from = parse_start_from(env, &mut errors);
        let filters = Filters::from_env(env, &mut errors);

        let log_level = match env.get("SP_LOG_LEVEL") {
            None => log::LevelFilter::Info,
            Some(v) => match v.to_ascii_lowercase().as_str() {
                "error" => log::LevelFilter::Error,
                "warn" | "warning" => log::LevelFilter::Warn,
                "info" => log::LevelFilter::Info,
                "debug" => log::LevelFilter::Debug,
                "trace" => log::LevelFilter::Trace,
                _ => {
                    errors.push(ConfigError::new(
                        "SP_LOG_LEVEL",
                        Some(v),
                        "must be one of error, warn, info, debug, trace",
                    ));
                    log::LevelFilter::Info
                }
            },
        };

        let api = parse_api(env, &mut errors);
        let poll_interval = parse_duration_var(
            env,
            "SP_TASK_SYNC_POLL_INTERVAL",
            DEFAULT_POLL_INTERVAL,
            &mut errors,
        );
        let http_timeout =
            parse_duration_var(env, "SP_HTTP_TIMEOUT", DEFAULT_HTTP_TIMEOUT, &mut errors);
        let retry_timeout = parse_duration_var(
            env,
            "SP_TASK_SYNC_RETRY_TIMEOUT",
            crate::retry::DEFAULT_RETRY_TIMEOUT,
            &mut errors,
        );
        let max_file_size = parse_size_var(
            env,
            "SP_TASK_SYNC_MAX_FILE_SIZE",
            DEFAULT_MAX_FILE_SIZE,
            &mut errors,
        );
        let names = match env.get("SP_TASK_SYNC_NAMES") {
            None => NameSource::default(),
            Some(raw) => NameSource::parse(raw).unwrap_or_else(|| {
                errors.push(ConfigError::new(
                    "SP_TASK_SYNC_NAMES",
                    Some(raw),
                    "must be template (the names SP_TASK_SYNC_FILE_NAME_TEMPLATE gives) or platform (the platform's own fileName, as the official connector uses)",
                ));
                NameSource::default()
            }),
        };
        let lease_ttl = parse_duration_var(
            env,
            "SP_TASK_SYNC_LEASE_TTL",
            DEFAULT_LEASE_TTL,
            &mut errors,
        );
        if lease_ttl < std::time::Duration::from_secs(2) {
            errors.push(ConfigError::new(
                "SP_TASK_SYNC_LEASE_TTL",
                env.get("SP_TASK_SYNC_LEASE_TTL"),
                "must be at least 2s: the lease is renewed every quarter of it",
            ));
        }
        let concurrency = parse_number(
            env,
            "SP_TASK_SYNC_CONCURRENCY",
            DEFAULT_CONCURRENCY as u64,
            1,
            64,
            &mut errors,
        ) as usize;
        let page_size = parse_number(
            env,
            "SP_TASK_SYNC_PAGE_SIZE",
            DEFAULT_PAGE_SIZE as u64,
            1,
            100,
            &mut errors,
        ) as u32;
        let bandwidth = bandwidth::from_env(env, &mut errors);
        let storage = parse_storage(env, &mut errors);
        let network = crate::http::proxy::Network::from_env(env, &mut errors);
        let metrics_addr = parse_metrics_addr(env, &mut errors);
        let log_format = parse_log_format(env, &mut errors);

        match (errors.is_empty(), template, storage) {
            (true, Some(template), Some(storage)) => Ok(Config {
                token,
                api,
                tag,
                template_source,
                template,
                get,
                delete,
                start_from,
                filters,
                log_level,
                poll_interval,
                concurrency,
                page_size,
                http_timeout,
                retry_timeout,
                max_file_size,
                names,
                lease_ttl,
                bandwidth,
                storage,
                network,
                metrics_addr,
                log_format,
            }),
            _ => Err(ConfigErrors(errors)),
        }
    }

    /// The settings as `name = value` lines for `check`, secrets masked.
    pub fn describe(&self) -> Vec<(&'static str, String)> {
        let list = |v: &[String]| {
            if v.is_empty() {
                "-".to_string()
            } else {
                v.join(",")
            }
        };
        let mut out = vec![
            (
                "SP_API_TOKEN",
                format!(
                    "{} ({} characters)",
                    self.token,
                    self.token.expose().chars().count()
                ),
            ),
            ("platform", self.api.base_url()),
            ("SP_TASK_SYNC_TAG", self.tag.clone()),
            (
                "SP_TASK_SYNC_FILE_NAME_TEMPLATE",
                self.template_source.clone(),
            ),
            ("SP_TASK_SYNC_GET_DATA", join_types(&self.get)),
            (
                "SP_TASK_SYNC_DELETE_DATA",
                if self.delete.is_empty() {
                    "-".into()
                } else {
                    join_types(&self.delete)
                },
            ),
            (
                "SP_TASK_SYNC_START_FROM",
                self.start_from
                    .map(|ms| format!("{ms} ({})", crate::template::iso_millis(ms)))
                    .unwrap_or("-".into()),
            ),
            ("SP_TASK_SYNC_SKILLS_MUST", list(&self.filters.skills_must)),
            (
                "SP_TASK_SYNC_SKILLS_SHOULD",
                list(&self.filters.skills_should),
            ),
            (
                "SP_TASK_SYNC_SKILLS_MUSTNOT",
                list(&self.filters.skills_must_not),
            ),
            (
                "SP_TASK_SYNC_HASHTAGS_MUST",
                list(&self.filters.hashtags_must),
            ),
            (
                "SP_TASK_SYNC_HASHTAGS_SHOULD",
                list(&self.filters.hashtags_should),
            ),
            (
                "SP_TASK_SYNC_HASHTAGS_MUSTNOT",
                list(&self.filters.hashtags_must_not),
            ),
            (
                "SP_TASK_SYNC_POLL_INTERVAL",
                format!("{:?}", self.poll_interval),
            ),
            ("SP_TASK_SYNC_CONCURRENCY", self.concurrency.to_string()),
            ("SP_TASK_SYNC_PAGE_SIZE", self.page_size.to_string()),
            ("SP_HTTP_TIMEOUT", format!("{:?}", self.http_timeout)),
            ("SP_TASK_SYNC_NAMES", self.names.name().to_string()),
            (
                "SP_TASK_SYNC_LEASE_TTL",
                format!("{:?} (renewed every quarter of it)", self.lease_ttl),
            ),
            (
                "SP_TASK_SYNC_RETRY_TIMEOUT",
                format!("{:?} per operation in --once", self.retry_timeout),
            ),
            (
                "SP_TASK_SYNC_MAX_FILE_SIZE",
                format!("{} bytes", self.max_file_size),
            ),
            ("SP_TASK_SYNC_BANDWIDTH", self.bandwidth.to_string()),
            ("SP_LOG_LEVEL", self.log_level.to_string().to_lowercase()),
            ("SP_LOG_FORMAT", self.log_format.name().to_string()),
            (
                "SP_METRICS_ADDR",
                self.metrics_addr
                    .map_or("- (no metrics endpoint)".to_string(), |a| a.to_string()),
            ),
            (
                "SP_TASK_SYNC_STORAGE_PROVIDER",
                self.storage.provider().to_string(),
            ),
        ];
        match &self.storage {
            StorageSettings::Local { root } => {
                out.push(("SP_TASK_SYNC_SAVE_TO", root.display().to_string()))
            }
            StorageSettings::Gcs(gcs) => out.extend(gcs.describe()),
            StorageSettings::Azure(s) => out.extend(s.describe()),
            StorageSettings::S3(s) => out.extend(s.describe()),
        }
        out.extend(self.network.describe());
        out
    }
}

/// `SP_METRICS_ADDR`: an IP socket address (`0.0.0.0:9464`, `127.0.0.1:9464`, `[::]:9464`).
fn parse_metrics_addr(env: &Env, errors: &mut Vec<ConfigError>) -> Option<std::net::SocketAddr> {
    let raw = env.get("SP_METRICS_ADDR")?;
    match raw.parse() {
        Ok(addr) => Some(addr),
        Err(_) => {
            errors.push(ConfigError::new(
                "SP_METRICS_ADDR",
                Some(raw),
                "must be an IP address and port to listen on, e.g. 0.0.0.0:9464 or 127.0.0.1:9464",
            ));
            None
        }
    }
}

/// `SP_LOG_FORMAT`: `text` (default) or `json`.
fn parse_log_format(env: &Env, errors: &mut Vec<ConfigError>) -> crate::logging::LogFormat {
    let raw = env.get("SP_LOG_FORMAT");
    match raw.map(crate::logging::LogFormat::parse) {
        None => crate::logging::LogFormat::Text,
        Some(Some(format)) => format,
        Some(None) => {
            errors.push(ConfigError::new(
                "SP_LOG_FORMAT",
                raw,
                "must be text or json",
            ));
            crate::logging::LogFormat::Text
        }
    }
}

/// Just the naming settings (template and data types), for `render`: designing a
/// template should not need a token or a storage.
pub fn naming_from_env(env: &Env) -> Result<(FileNameTemplate, Vec<DataType>), ConfigErrors> {
    let mut errors = Vec::new();
    let var = "SP_TASK_SYNC_FILE_NAME_TEMPLATE";
    let template = match env.get(var) {
        None => {
            errors.push(ConfigError::new(var, None, "is required but not set"));
            None
        }
        Some(src) => FileNameTemplate::parse(src)
            .map_err(|e| errors.push(ConfigError::new(var, Some(src), Report(&e).to_string())))
            .ok(),
    };
    let get = parse_types(
        env,
        "SP_TASK_SYNC_GET_DATA",
        Some(DEFAULT_GET_DATA),
        &mut errors,
    );
    match template {
        Some(t) if errors.is_empty() => Ok((t, get)),
        _ => Err(ConfigErrors(errors)),
    }
}

fn parse_types(
    env: &Env,
    var: &str,
    default: Option<&str>,
    errors: &mut Vec<ConfigError>,
) -> Vec<DataType> {
    let Some(raw) = env.get(var).or(default) else {
        return Vec::new();
    };
    let mut types = Vec::new();
    for item in raw.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        match DataType::parse(item) {
            Some(t) if !types.contains(&t) => types.push(t),
            Some(_) => {}
            None => errors.push(ConfigError::new(
                var,
                Some(raw),
                format!(
                    "unknown data type {item:?}; known types are {}",
                    join_types(&DataType::ALL)
                ),
            )),
        }
    }
    if types.is_empty() && default.is_some() {
        errors.push(ConfigError::new(
            var,
            Some(raw),
            "names no data type to download",
        ));
    }
    types
}

fn parse_start_from(env: &Env, errors: &mut Vec<ConfigError>) -> Option<i64> {
    // The official connector documents SP_TASK_START_FROM; the issue names
    // SP_TASK_SYNC_START_FROM. Both are read, the latter wins.
    let (var, raw) = match (
        env.get("SP_TASK_SYNC_START_FROM"),
        env.get("SP_TASK_START_FROM"),
    ) {
        (Some(v), _) => ("SP_TASK_SYNC_START_FROM", v),
        (None, Some(v)) => ("SP_TASK_START_FROM", v),
        (None, None) => return None,
    };
    match parse_iso_date(raw) {
        Some(ms) => Some(ms),
        None => {
            errors.push(ConfigError::new(
                var,
                Some(raw),
                "is not an ISO-8601 date such as 2024-09-09T15:45:47.277Z or 2024-09-09",
            ));
            None
        }
    }
}

/// Parses RFC 3339 (`2024-09-09T15:45:47.277Z`, `…+02:00`) or a bare date (UTC
/// midnight) into milliseconds since the epoch.
pub fn parse_iso_date(raw: &str) -> Option<i64> {
    use time::format_description::well_known::Rfc3339;
    use time::{Date, OffsetDateTime};
    if let Ok(t) = OffsetDateTime::parse(raw, &Rfc3339) {
        return Some((t.unix_timestamp_nanos() / 1_000_000) as i64);
    }
    let date_only = time::macros::format_description!("[year]-[month]-[day]");
    Date::parse(raw, &date_only)
        .ok()
        .map(|d| d.midnight().assume_utc().unix_timestamp() * 1000)
}

fn parse_duration_var(
    env: &Env,
    var: &str,
    default: Duration,
    errors: &mut Vec<ConfigError>,
) -> Duration {
    match env.get(var) {
        None => default,
        Some(raw) => parse_duration(raw).unwrap_or_else(|| {
            errors.push(ConfigError::new(
                var,
                Some(raw),
                "must be a positive duration such as 90, 30s, 500ms, 5m or 1h",
            ));
            default
        }),
    }
}

fn parse_size_var(env: &Env, var: &str, default: u64, errors: &mut Vec<ConfigError>) -> u64 {
    match env.get(var) {
        None => default,
        Some(raw) => match crate::env::parse_size(raw) {
            Some(n) if n > 0 => n,
            _ => {
                errors.push(ConfigError::new(
                    var,
                    Some(raw),
                    "must be a positive size such as 4GiB, 500MiB or 1048576 (bytes)",
                ));
                default
            }
        },
    }
}

fn parse_number(
    env: &Env,
    var: &str,
    default: u64,
    min: u64,
    max: u64,
    errors: &mut Vec<ConfigError>,
) -> u64 {
    match env.get(var) {
        None => default,
        Some(raw) => match raw.parse::<u64>() {
            Ok(n) if (min..=max).contains(&n) => n,
            _ => {
                errors.push(ConfigError::new(
                    var,
                    Some(raw),
                    format!("must be a whole number from {min} to {max}"),
                ));
                default
            }
        },
    }
}

fn parse_storage(env: &Env, errors: &mut Vec<ConfigError>) -> Option<StorageSettings> {
    let var = "SP_TASK_SYNC_STORAGE_PROVIDER";
    let provider = env.get(var).map(str::to_ascii_lowercase);
    match provider.as_deref() {
        None | Some("local") => match env.get("SP_TASK_SYNC_SAVE_TO") {
            Some(root) => Some(StorageSettings::Local {
                root: PathBuf::from(root),
            }),
            None => {
                errors.push(ConfigError::new(
                    "SP_TASK_SYNC_SAVE_TO",
                    None,
                    "is required for local storage: the folder the files go to",
                ));
                None
            }
        },
        Some("gcs") => crate::store::gcs::GcsSettings::from_env(env, errors)
            .map(|s| StorageSettings::Gcs(Box::new(s))),
        Some("azure") => {
            crate::store::azure::AzureSettings::from_env(env, errors).map(StorageSettings::Azure)
        }
        Some("s3") => crate::store::s3::S3Settings::from_env(env, errors)
            .map(|s| StorageSettings::S3(Box::new(s))),
        Some(_) => {
            errors.push(ConfigError::new(
                var,
                env.get(var),
                "must be one of local, s3, gcs, azure",
            ));
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Env {
        Env::from_pairs([
            ("SP_API_TOKEN", "tok-secret-123"),
            ("SP_TASK_SYNC_TAG", "tag1"),
            (
                "SP_TASK_SYNC_FILE_NAME_TEMPLATE",
                "{{due_date|yyyy}}/{{task_id}}",
            ),
            ("SP_TASK_SYNC_SAVE_TO", "/tmp/x"),
        ])
    }

    fn errors_of(env: &Env) -> Vec<ConfigError> {
        Config::from_env(env).expect_err("should fail").0
    }

    #[test]
    fn defaults() {
        let c = Config::from_env(&base()).unwrap();
        assert_eq!(c.api.base_url(), "https://api.spinoco.com:443");
        assert_eq!(c.get, vec![DataType::Recordings, DataType::Transcriptions]);
        assert!(c.delete.is_empty());
        assert_eq!(c.poll_interval, Duration::from_secs(60));
        assert_eq!(c.concurrency, 4);
        assert_eq!(c.page_size, 50);
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let mut env = Env::from_pairs([
            ("SP_TASK_SYNC_GET_DATA", "recordings, Movies"),
            ("SP_TASK_SYNC_DELETE_DATA", "Transcriptions"),
            ("SP_TASK_SYNC_SKILLS_MUST", "SK1,TOOLONG"),
            (
                "SP_TASK_SYNC_HASHTAGS_SHOULD",
                "1d4de98c-c130-41ef-9cd2-0242ac120002",
            ),
            ("SP_TASK_SYNC_START_FROM", "yesterday"),
            ("SP_TASK_SYNC_STORAGE_PROVIDER", "ftp"),
            ("SP_TASK_SYNC_PAGE_SIZE", "500"),
            ("SP_TASK_SYNC_POLL_INTERVAL", "soon"),
            ("SP_LOG_LEVEL", "loud"),
            ("SP_TASK_SYNC_BANDWIDTH", "Sat-08:00,2M"),
        ]);
        env.set("SP_TASK_SYNC_FILE_NAME_TEMPLATE", "{{due_date|yyyy}}");
        let errs = errors_of(&env);
        let vars: Vec<&str> = errs.iter().map(|e| e.var.as_str()).collect();
        for v in [
            "SP_API_TOKEN",
            "SP_TASK_SYNC_TAG",
            "SP_TASK_SYNC_FILE_NAME_TEMPLATE",
            "SP_TASK_SYNC_GET_DATA",
            "SP_TASK_SYNC_DELETE_DATA",
            "SP_TASK_SYNC_SKILLS_MUST",
            "SP_TASK_SYNC_HASHTAGS_SHOULD",
            "SP_TASK_SYNC_START_FROM",
            "SP_TASK_SYNC_STORAGE_PROVIDER",
            "SP_TASK_SYNC_PAGE_SIZE",
            "SP_TASK_SYNC_POLL_INTERVAL",
            "SP_LOG_LEVEL",
            "SP_TASK_SYNC_BANDWIDTH",
        ] {
            assert!(vars.contains(&v), "{v} missing from {errs:#?}");
        }
        let text = ConfigErrors(errs).to_string();
        assert!(text.contains("\"Movies\""), "{text}");
        assert!(text.contains("TOOLONG"), "{text}");
    }

    #[test]
    fn token_never_printed() {
        let c = Config::from_env(&base()).unwrap();
        let all = format!("{c:?} {:?}", c.describe());
        assert!(!all.contains("tok-secret-123"), "{all}");
    }

    #[test]
    fn api_url_forms() {
        let mut env = base();
        env.set("SP_API_URL", "http://127.0.0.1:8080/");
        assert_eq!(
            Config::from_env(&env).unwrap().api.base_url(),
            "http://127.0.0.1:8080"
        );
        env.set("SP_API_URL", "localhost");
        env.set("SP_API_SECURE", "false");
        env.set("SP_API_PORT", "9000");
        assert_eq!(
            Config::from_env(&env).unwrap().api.base_url(),
            "http://localhost:9000"
        );
        env.set("SP_API_URL", "https://x.example");
        let errs = errors_of(&env);
        assert_eq!(errs[0].var, "SP_API_SECURE");
    }

    #[test]
    fn dates() {
        assert_eq!(
            parse_iso_date("2024-09-09T15:45:47.277Z"),
            Some(1725896747277)
        );
        assert_eq!(parse_iso_date("1970-01-02"), Some(86_400_000));
        assert_eq!(parse_iso_date("2024-13-01"), None);
    }

    #[test]
    fn metrics_addr_and_log_format() {
        let c = Config::from_env(&base()).unwrap();
        assert_eq!(c.metrics_addr, None);
        assert_eq!(c.log_format, crate::logging::LogFormat::Text);
        let mut env = base();
        env.set("SP_METRICS_ADDR", "0.0.0.0:9464");
        env.set("SP_LOG_FORMAT", "JSON");
        let c = Config::from_env(&env).unwrap();
        assert_eq!(c.metrics_addr, Some("0.0.0.0:9464".parse().unwrap()));
        assert_eq!(c.log_format, crate::logging::LogFormat::Json);
        env.set("SP_METRICS_ADDR", "localhost:9464");
        env.set("SP_LOG_FORMAT", "logfmt");
        env.set("SP_TASK_SYNC_TAG", "");
        let vars: Vec<String> = errors_of(&env).into_iter().map(|e| e.var).collect();
        assert_eq!(
            vars,
            ["SP_TASK_SYNC_TAG", "SP_METRICS_ADDR", "SP_LOG_FORMAT"],
            "reported with the other problems"
        );
    }

    #[test]
    fn max_file_size() {
        let c = Config::from_env(&base()).unwrap();
        assert_eq!(c.max_file_size, 4 << 30);
        let mut env = base();
        env.set("SP_TASK_SYNC_MAX_FILE_SIZE", "1MiB");
        assert_eq!(Config::from_env(&env).unwrap().max_file_size, 1 << 20);
        for bad in ["lots", "0", "-1", "5 parsecs"] {
            env.set("SP_TASK_SYNC_MAX_FILE_SIZE", bad);
            let errs = errors_of(&env);
            assert_eq!(errs.len(), 1, "{errs:?}");
            let shown = errs[0].to_string();
            assert!(
                shown.starts_with(&format!(
                    "SP_TASK_SYNC_MAX_FILE_SIZE={bad:?}: must be a positive size"
                )),
                "{shown}"
            );
        }
    }

    #[test]
    fn delete_without_download_is_refused() {
        let mut env = base();
        env.set("SP_TASK_SYNC_GET_DATA", "CallMetadata");
        env.set("SP_TASK_SYNC_DELETE_DATA", "recordings");
        assert_eq!(errors_of(&env)[0].var, "SP_TASK_SYNC_DELETE_DATA");
    }
}
