//! Log output: the human format by default, or one JSON object per line for shippers.
//!
//! Log shippers (Loki, Fluent Bit, CloudWatch, Stackdriver) parse JSON lines without
//! fragile patterns, so `SP_LOG_FORMAT=json` writes `{"ts","level","target","msg"}` per
//! line on stderr. Both formats cap the HTTP and TLS libraries at `warn`: at `trace`
//! they log raw header lines, and the API token or storage keys must never reach a log.

use std::io::Write;

use log::{LevelFilter, Log, Metadata, Record};

/// How log lines look (`SP_LOG_FORMAT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl LogFormat {
    pub fn parse(raw: &str) -> Option<LogFormat> {
        match raw.trim().to_ascii_lowercase().as_str() {
            "text" => Some(LogFormat::Text),
            "json" => Some(LogFormat::Json),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

/// Libraries whose logging is capped at `warn`, whatever the level: they log raw
/// request headers (the `Authorization` header among them) at `trace`/`debug`.
const CAPPED: [&str; 3] = ["ureq", "ureq_proto", "rustls"];

/// Installs the logger (once per process; later calls do nothing).
pub fn init(level: LevelFilter, format: LogFormat) {
    match format {
        LogFormat::Text => {
            let mut logger = simple_logger::SimpleLogger::new()
                .with_level(level)
                .with_utc_timestamps();
            for module in CAPPED {
                logger = logger.with_module_level(module, LevelFilter::Warn);
            }
            let _ = logger.init();
        }
        LogFormat::Json => {
            if log::set_boxed_logger(Box::new(JsonLogger { level })).is_ok() {
                log::set_max_level(level);
            }
        }
    }
}

/// One JSON object per line on stderr.
pub struct JsonLogger {
    pub level: LevelFilter,
}

impl JsonLogger {
    /// The line for `record`, without the newline.
    pub fn line(record: &Record) -> String {
        let ts = time::OffsetDateTime::now_utc()
            .format(time::macros::format_description!(
                "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
            ))
            .unwrap_or_default();
        // Built by hand only to keep the fields in reading order (ts first); each value
        // is escaped by serde_json.
        let text = |v: &str| serde_json::Value::from(v).to_string();
        format!(
            "{{\"ts\":{},\"level\":{},\"target\":{},\"msg\":{}}}",
            text(&ts),
            text(record.level().as_str()),
            text(record.target()),
            text(&record.args().to_string())
        )
    }
}

fn capped(target: &str) -> bool {
    CAPPED.iter().any(|m| {
        target == *m
            || target
                .strip_prefix(m)
                .is_some_and(|rest| rest.starts_with("::"))
    })
}

impl Log for JsonLogger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        let limit = if capped(metadata.target()) {
            self.level.min(LevelFilter::Warn)
        } else {
            self.level
        };
        metadata.level() <= limit
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let mut line = Self::line(record);
        line.push('\n');
        // One write per line, so lines of different threads never interleave.
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    fn flush(&self) {
        let _ = std::io::stderr().flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_lines_parse_and_carry_the_fields() {
        let line = JsonLogger::line(
            &Record::builder()
                .level(log::Level::Warn)
                .target("spinoco_connector::sync")
                .args(format_args!("a \"quoted\" message\nwith a newline"))
                .build(),
        );
        assert!(!line.contains('\n'), "one line: {line}");
        assert!(line.starts_with("{\"ts\":\""), "{line}");
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["level"], "WARN");
        assert_eq!(v["target"], "spinoco_connector::sync");
        assert_eq!(v["msg"], "a \"quoted\" message\nwith a newline");
        let ts = v["ts"].as_str().unwrap();
        assert!(crate::config::parse_iso_date(ts).is_some(), "{ts}");
    }

    #[test]
    fn http_libraries_are_capped_at_warn() {
        let logger = JsonLogger {
            level: LevelFilter::Trace,
        };
        let meta = |level, target| {
            Metadata::builder()
                .level(level)
                .target(target)
                .build()
                .to_owned()
        };
        assert!(logger.enabled(&meta(log::Level::Trace, "spinoco_connector::sync")));
        for target in [
            "ureq",
            "ureq::unversioned",
            "ureq_proto::client",
            "rustls::conn",
        ] {
            assert!(
                !logger.enabled(&meta(log::Level::Debug, target)),
                "{target}"
            );
            assert!(logger.enabled(&meta(log::Level::Warn, target)), "{target}");
        }
        assert!(logger.enabled(&meta(log::Level::Trace, "ureqx")));
    }

    #[test]
    fn formats() {
        assert_eq!(LogFormat::parse("JSON"), Some(LogFormat::Json));
        assert_eq!(LogFormat::parse("text"), Some(LogFormat::Text));
        assert_eq!(LogFormat::parse("logfmt"), None);
    }
}
