//! Log output: the human format by default, or one JSON object per line for shippers.
//!
//! Log shippers (Loki, Fluent Bit, CloudWatch, Stackdriver) parse JSON lines without
//! fragile patterns, so `SP_LOG_FORMAT=json` writes `{"ts","level","target","msg"}` per
//! line on stderr; the text format is `TIMESTAMP LEVEL [target] message`. Both formats
//! cap the HTTP and TLS libraries at `warn` (at `trace` they log raw header lines, and
//! the API token or storage keys must never reach a log), mask the secrets the process
//! holds, and escape control and format characters in every message: a platform value
//! cannot start a forged line, colour the terminal or turn text around.

use std::io::Write;
use std::sync::OnceLock;

use log::{LevelFilter, Log, Metadata, Record};

use crate::redact;

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
    static LOGGER: OnceLock<Logger> = OnceLock::new();
    if log::set_logger(LOGGER.get_or_init(|| Logger { level, format })).is_ok() {
        log::set_max_level(level);
    }
}

/// One line per message on stderr, in either format.
pub struct Logger {
    pub level: LevelFilter,
    pub format: LogFormat,
}

impl Logger {
    /// The line for `record`, without the newline. The message is made safe first: a
    /// secret in it is masked, and a control or format character (a newline and a
    /// forged line after it, a terminal escape, a bidi override in a platform value)
    /// is shown escaped, so that every message stays one line that reads as it is.
    pub fn line(&self, record: &Record) -> String {
        let ts = time::OffsetDateTime::now_utc()
            .format(time::macros::format_description!(
                "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
            ))
            .unwrap_or_default();
        let message = record.args().to_string();
        let message = redact::escape(&redact::scrub(&message)).into_owned();
        let target = match record.target() {
            "" => record.module_path().unwrap_or_default(),
            target => target,
        };
        match self.format {
            LogFormat::Text => format!("{ts} {:<5} [{target}] {message}", record.level().as_str()),
            // Built by hand only to keep the fields in reading order (ts first); each
            // value is escaped by serde_json.
            LogFormat::Json => {
                let text = |v: &str| serde_json::Value::from(v).to_string();
                format!(
                    "{{\"ts\":{},\"level\":{},\"target\":{},\"msg\":{}}}",
                    text(&ts),
                    text(record.level().as_str()),
                    text(target),
                    text(&message)
                )
            }
        }
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

impl Log for Logger {
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
        let mut line = self.line(record);
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

    fn line(format: LogFormat, message: std::fmt::Arguments) -> String {
        let logger = Logger {
            level: LevelFilter::Info,
            format,
        };
        logger.line(
            &Record::builder()
                .level(log::Level::Warn)
                .target("spinoco_connector::sync")
                .args(message)
                .build(),
        )
    }

    #[test]
    fn json_lines_parse_and_carry_the_fields() {
        let line = line(LogFormat::Json, format_args!("a \"quoted\" message"));
        assert!(line.starts_with("{\"ts\":\""), "{line}");
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["level"], "WARN");
        assert_eq!(v["target"], "spinoco_connector::sync");
        assert_eq!(v["msg"], "a \"quoted\" message");
        let ts = v["ts"].as_str().unwrap();
        assert!(crate::config::parse_iso_date(ts).is_some(), "{ts}");
    }

    #[test]
    fn text_lines_keep_the_simple_logger_format() {
        let line = line(LogFormat::Text, format_args!("page 1: 40 tasks"));
        let (ts, rest) = line.split_once(' ').unwrap();
        assert!(crate::config::parse_iso_date(ts).is_some(), "{ts}");
        assert_eq!(ts.len(), "2026-11-26T05:27:06.148Z".len(), "{ts}");
        assert_eq!(rest, "WARN  [spinoco_connector::sync] page 1: 40 tasks");
    }

    #[test]
    fn remote_text_in_a_message_is_escaped_and_masked_in_both_formats() {
        let id =
            "t1\n2026-01-01T00:00:00.000Z ERROR [spinoco_connector] forged\x1b[31m\u{202e}\u{200b}";
        for format in [LogFormat::Text, LogFormat::Json] {
            let line = line(
                format,
                format_args!("task {id} failed: Authorization: Bearer abc.def-123"),
            );
            for raw in ['\n', '\x1b', '\u{202e}', '\u{200b}'] {
                assert!(!line.contains(raw), "{format:?}: {raw:?} in {line}");
            }
            assert!(!line.contains("abc.def-123"), "{line}");
            let msg = match format {
                LogFormat::Json => serde_json::from_str::<serde_json::Value>(&line).unwrap()["msg"]
                    .as_str()
                    .unwrap()
                    .to_string(),
                LogFormat::Text => line.split_once("] ").unwrap().1.to_string(),
            };
            assert_eq!(
                msg,
                "task t1\\n2026-01-01T00:00:00.000Z ERROR [spinoco_connector] forged\\u{1b}[31m\\u{202e}\\u{200b} failed: Authorization: Bearer ***"
            );
        }
    }

    #[test]
    fn http_libraries_are_capped_at_warn() {
        let logger = Logger {
            level: LevelFilter::Trace,
            format: LogFormat::Json,
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
