//! Log output: the human format by default, or one JSON object per line for shippers.
//!
//! Log shippers (Loki, Fluent Bit, CloudWatch, Stackdriver) parse JSON lines without
//! fragile patterns, so `SP_LOG_FORMAT=json` writes `{"ts","level","target","msg"}` per
//! line on stderr; the text format is `TIMESTAMP LEVEL [target] message`. Both formats
//! cap the HTTP and TLS libraries at `warn` (at `trace` they log raw header lines, and
//! the API token or storage keys must never reach a log), mask the secrets the process
//! holds, and escape control and format characters in every message: a platform value
//! cannot start a forged line, colour the terminal or turn text around.
//!
//! Under systemd, stderr is a stream into journald, which stores every line at the
//! stream's level unless the line starts with a syslog priority (`<4>` for a warning).
//! When `$JOURNAL_STREAM` names the device and inode of our stderr, text lines start
//! with their priority and carry no timestamp (journald stamps each line itself), so
//! `journalctl -p warning` finds the warnings. JSON lines stay as they are.

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
    let logger = LOGGER.get_or_init(|| Logger {
        level,
        format,
        journal: stderr_is_journal(std::env::var("JOURNAL_STREAM").ok().as_deref()),
    });
    if log::set_logger(logger).is_ok() {
        log::set_max_level(level);
    }
}

/// Whether stderr is the journald stream `$JOURNAL_STREAM` (`<device>:<inode>`) names:
/// systemd sets it for the service's own stderr, and a process started from there
/// inherits it with another stderr (a pipe, a file), which must get the usual lines.
fn stderr_is_journal(journal_stream: Option<&str>) -> bool {
    use std::os::fd::AsFd;
    use std::os::unix::fs::MetadataExt;
    let Some((device, inode)) = journal_stream.and_then(|v| v.trim().split_once(':')) else {
        return false;
    };
    let stderr = std::io::stderr()
        .as_fd()
        .try_clone_to_owned()
        .and_then(|fd| std::fs::File::from(fd).metadata());
    stderr.is_ok_and(|m| device.parse() == Ok(m.dev()) && inode.parse() == Ok(m.ino()))
}

/// One line per message on stderr, in either format.
pub struct Logger {
    pub level: LevelFilter,
    pub format: LogFormat,
    /// Stderr goes to journald: text lines lead with their syslog priority instead of
    /// a timestamp.
    pub journal: bool,
}

/// The syslog priority journald reads from the start of a line.
fn priority(level: log::Level) -> u8 {
    match level {
        log::Level::Error => 3,
        log::Level::Warn => 4,
        log::Level::Info => 6,
        log::Level::Debug | log::Level::Trace => 7,
    }
}

impl Logger {
    /// The line for `record`, without the newline. The message is made safe first: a
    /// secret in it is masked, and a control or format character (a newline and a
    /// forged line after it, a terminal escape, a bidi override in a platform value)
    /// is shown escaped, so that every message stays one line that reads as it is.
    pub fn line(&self, record: &Record) -> String {
        let ts = || {
            time::OffsetDateTime::now_utc()
                .format(time::macros::format_description!(
                    "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
                ))
                .unwrap_or_default()
        };
        let message = record.args().to_string();
        let message = redact::escape(&redact::scrub(&message)).into_owned();
        let target = match record.target() {
            "" => record.module_path().unwrap_or_default(),
            target => target,
        };
        match self.format {
            LogFormat::Text if self.journal => format!(
                "<{}>{:<5} [{target}] {message}",
                priority(record.level()),
                record.level().as_str()
            ),
            LogFormat::Text => format!(
                "{} {:<5} [{target}] {message}",
                ts(),
                record.level().as_str()
            ),
            // Built by hand only to keep the fields in reading order (ts first); each
            // value is escaped by serde_json.
            LogFormat::Json => {
                let text = |v: &str| serde_json::Value::from(v).to_string();
                format!(
                    "{{\"ts\":{},\"level\":{},\"target\":{},\"msg\":{}}}",
                    text(&ts()),
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
        line_at(format, false, log::Level::Warn, message)
    }

    fn line_at(
        format: LogFormat,
        journal: bool,
        level: log::Level,
        message: std::fmt::Arguments,
    ) -> String {
        let logger = Logger {
            level: LevelFilter::Trace,
            format,
            journal,
        };
        logger.line(
            &Record::builder()
                .level(level)
                .target("spinoco_connector::sync")
                .args(message)
                .build(),
        )
    }

    #[test]
    fn journal_lines_lead_with_the_syslog_priority_and_no_timestamp() {
        use log::Level::*;
        for (level, want) in [
            (Error, "<3>ERROR [spinoco_connector::sync] page 1: 40 tasks"),
            (Warn, "<4>WARN  [spinoco_connector::sync] page 1: 40 tasks"),
            (Info, "<6>INFO  [spinoco_connector::sync] page 1: 40 tasks"),
            (Debug, "<7>DEBUG [spinoco_connector::sync] page 1: 40 tasks"),
            (Trace, "<7>TRACE [spinoco_connector::sync] page 1: 40 tasks"),
        ] {
            let line = line_at(
                LogFormat::Text,
                true,
                level,
                format_args!("page 1: 40 tasks"),
            );
            assert_eq!(line, want);
        }
        // A forged priority in remote text stays inside its own line.
        let line = line_at(
            LogFormat::Text,
            true,
            Info,
            format_args!("task t1\n<3>forged: Bearer abc.def-123"),
        );
        assert_eq!(
            line,
            "<6>INFO  [spinoco_connector::sync] task t1\\n<3>forged: Bearer ***"
        );
        // JSON lines are the same whatever stderr is.
        let json = line_at(LogFormat::Json, true, Warn, format_args!("x"));
        assert!(json.starts_with("{\"ts\":\""), "{json}");
    }

    #[test]
    fn the_journal_is_told_by_the_device_and_inode_of_stderr() {
        use std::os::fd::AsFd;
        use std::os::unix::fs::MetadataExt;
        let fd = std::io::stderr().as_fd().try_clone_to_owned().unwrap();
        let m = std::fs::File::from(fd).metadata().unwrap();
        let (dev, ino) = (m.dev(), m.ino());
        assert!(stderr_is_journal(Some(&format!("{dev}:{ino}"))));
        assert!(!stderr_is_journal(Some(&format!("{dev}:{}", ino + 1))));
        assert!(!stderr_is_journal(Some(&format!("{}:{ino}", dev + 1))));
        assert!(!stderr_is_journal(Some(&format!("{dev}{ino}"))));
        assert!(!stderr_is_journal(Some("")));
        assert!(!stderr_is_journal(None));
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
            journal: false,
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
