//! The file name template, and the check every name passes before it is used.
//!
//! `{{due_date|PATTERN}}` is not minijinja syntax (a pattern such as `yyyy/MM` would
//! parse as a division), so those placeholders are cut out first, each pattern parsed
//! into a [`DatePattern`], and replaced by a generated variable; minijinja renders the
//! rest, so `{% if call_from %}…{% endif %}` works as users expect.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;

use minijinja::{Environment, UndefinedBehavior, Value};
use time::OffsetDateTime;

use crate::date_pattern::{DatePattern, PatternError};
use crate::redact::is_format;

/// The placeholders a template may use.
pub const PLACEHOLDERS: [&str; 4] = ["due_date", "task_id", "call_from", "call_to"];
/// The first folder of every key the connector keeps for itself.
pub const RESERVED_PREFIX: &str = ".spinoco-connector";
/// Longest name accepted, in bytes (the smallest limit of S3, GCS and Azure).
pub const MAX_NAME_BYTES: usize = 1024;
/// Longest single folder or file name accepted, in bytes (common file systems).
pub const MAX_PART_BYTES: usize = 255;

const DATE_VAR: &str = "__due_date_";
const TEMPLATE_NAME: &str = "SP_TASK_SYNC_FILE_NAME_TEMPLATE";

/// A parsed, checked template.
#[derive(Clone)]
pub struct FileNameTemplate {
    env: Arc<Environment<'static>>,
    patterns: Vec<DatePattern>,
}

impl fmt::Debug for FileNameTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileNameTemplate")
            .field("patterns", &self.patterns.len())
            .finish()
    }
}

/// The task values a template is rendered with.
#[derive(Debug, Clone, Copy, Default)]
pub struct TaskFields<'a> {
    pub task_id: &'a str,
    /// Milliseconds since the epoch, UTC.
    pub due_date: Option<i64>,
    pub call_from: Option<&'a str>,
    pub call_to: Option<&'a str>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplateError {
    Pattern(PatternError),
    Syntax(JinjaError),
    UnknownPlaceholder(String),
    NoTaskId,
    UnsafeSample { name: String, problem: NameError },
    Render(JinjaError),
    DueDateOutOfRange(i64),
}

/// minijinja's error about the user's template, told in the template's own terms: its
/// internal name replaced by "template", and the line it is on.
#[derive(Debug, Clone)]
pub struct JinjaError(Arc<minijinja::Error>);

impl fmt::Display for JinjaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut msg = self.0.to_string();
        if let Some(line) = self.0.line() {
            msg = format!("{msg} (line {line})");
        }
        f.write_str(&msg.replace(TEMPLATE_NAME, "template"))
    }
}

impl std::error::Error for JinjaError {}

impl PartialEq for JinjaError {
    fn eq(&self, other: &Self) -> bool {
        self.to_string() == other.to_string()
    }
}

impl Eq for JinjaError {}

impl fmt::Display for TemplateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TemplateError::Pattern(e) => e.fmt(f),
            TemplateError::Syntax(_) => f.write_str("the template does not parse"),
            TemplateError::UnknownPlaceholder(name) => write!(
                f,
                "unknown placeholder {{{{{name}}}}}; the placeholders are {}",
                PLACEHOLDERS.map(|p| format!("{{{{{p}}}}}")).join(", ")
            ),
            TemplateError::NoTaskId => f.write_str(
                "the template must contain {{task_id}}: without it two tasks with the same \
                 date or numbers get the same name and one overwrites the other",
            ),
            TemplateError::UnsafeSample { name, .. } => {
                write!(
                    f,
                    "the template gives names like {name:?}, which cannot be used"
                )
            }
            TemplateError::Render(_) => f.write_str("the template failed to render"),
            TemplateError::DueDateOutOfRange(ms) => write!(f, "due date {ms} is out of range"),
        }
    }
}

impl std::error::Error for TemplateError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            TemplateError::Syntax(e) | TemplateError::Render(e) => Some(e),
            TemplateError::UnsafeSample { problem, .. } => Some(problem),
            // Shown as the pattern's own error.
            TemplateError::Pattern(e) => std::error::Error::source(e),
            TemplateError::UnknownPlaceholder(_)
            | TemplateError::NoTaskId
            | TemplateError::DueDateOutOfRange(_) => None,
        }
    }
}

impl FileNameTemplate {
    pub fn parse(source: &str) -> Result<FileNameTemplate, TemplateError> {
        let (jinja, patterns) = extract_date_patterns(source).map_err(TemplateError::Pattern)?;
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env.add_template_owned(TEMPLATE_NAME, jinja)
            .map_err(|e| TemplateError::Syntax(JinjaError(Arc::new(e))))?;
        let template = env.get_template(TEMPLATE_NAME).expect("just added");
        let used: BTreeSet<String> = template.undeclared_variables(false).into_iter().collect();
        if let Some(unknown) = used
            .iter()
            .find(|v| !PLACEHOLDERS.contains(&v.as_str()) && !v.starts_with(DATE_VAR))
        {
            return Err(TemplateError::UnknownPlaceholder(unknown.clone()));
        }
        if !used.contains("task_id") {
            return Err(TemplateError::NoTaskId);
        }
        let parsed = FileNameTemplate {
            env: Arc::new(env),
            patterns,
        };
        let sample = TaskFields {
            task_id: "b808d74e-84b2-11ef-b864-0242ac120002",
            due_date: Some(1_101_902_400_000),
            call_from: Some("420123456789"),
            call_to: Some("420987654321"),
        };
        let name = parsed.render(&sample)?;
        check_name(&format!("{name}.meta.json"))
            .map_err(|problem| TemplateError::UnsafeSample { name, problem })?;
        Ok(parsed)
    }

    /// Renders the name of a task, without the data type's suffix. Values from the
    /// platform are made path-safe first; the caller checks the final name.
    pub fn render(&self, task: &TaskFields) -> Result<String, TemplateError> {
        let when = match task.due_date {
            Some(ms) => Some(
                OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
                    .map_err(|_| TemplateError::DueDateOutOfRange(ms))?,
            ),
            None => None,
        };
        let mut ctx: Vec<(String, Value)> = vec![
            ("task_id".into(), Value::from(path_safe(task.task_id))),
            (
                "call_from".into(),
                Value::from(path_safe(task.call_from.unwrap_or(""))),
            ),
            (
                "call_to".into(),
                Value::from(path_safe(task.call_to.unwrap_or(""))),
            ),
            (
                "due_date".into(),
                Value::from(when.map(iso).unwrap_or_default()),
            ),
        ];
        for (i, p) in self.patterns.iter().enumerate() {
            ctx.push((
                format!("{DATE_VAR}{i}"),
                Value::from(when.map(|t| p.format(t)).unwrap_or_default()),
            ));
        }
        let ctx: Value = ctx.into_iter().collect();
        self.env
            .get_template(TEMPLATE_NAME)
            .and_then(|t| t.render(ctx))
            .map_err(|e| TemplateError::Render(JinjaError(Arc::new(e))))
    }
}

/// Cuts each `{{ due_date | PATTERN }}` out of the template and replaces it with a
/// generated variable, returning the minijinja source and the parsed patterns.
fn extract_date_patterns(source: &str) -> Result<(String, Vec<DatePattern>), PatternError> {
    let mut out = String::with_capacity(source.len());
    let mut patterns = Vec::new();
    let mut rest = source;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            out.push_str(&rest[start..]);
            rest = "";
            break;
        };
        let inner = &after[..end];
        let date_filter = inner
            .trim()
            .strip_prefix("due_date")
            .map(str::trim_start)
            .and_then(|s| s.strip_prefix('|'));
        match date_filter {
            Some(pattern) => {
                patterns.push(DatePattern::parse(pattern.trim())?);
                out.push_str(&format!("{{{{ {DATE_VAR}{} }}}}", patterns.len() - 1));
            }
            None => {
                out.push_str("{{");
                out.push_str(inner);
                out.push_str("}}");
            }
        }
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok((out, patterns))
}

/// ISO-8601 with milliseconds in UTC: `2004-12-01T12:00:00.000Z`.
pub fn iso(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        t.month() as u8,
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

/// [`iso`] of milliseconds since the epoch (the raw number when out of range).
pub fn iso_millis(ms: i64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .map(iso)
        .unwrap_or_else(|_| ms.to_string())
}

/// Makes a tag usable as one file name: letters, digits, `-` and `_` stay, every other
/// byte becomes `~xx`, so two tags never share an entry.
pub fn escape_tag(tag: &str) -> String {
    let mut out = String::new();
    for b in tag.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
            out.push(b as char);
        } else {
            out.push_str(&format!("~{b:02x}"));
        }
    }
    out
}

/// Makes a platform value safe inside a name: `/`, `\`, control and format characters
/// (bidi controls, zero-width characters) become `_`, and every run of two or more
/// dots becomes `_`.
pub fn path_safe(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let mut dots = 0;
    for c in value.chars() {
        if c == '.' {
            dots += 1;
            continue;
        }
        flush_dots(&mut out, dots);
        dots = 0;
        out.push(if c == '/' || c == '\\' || c.is_control() || is_format(c) {
            '_'
        } else {
            c
        });
    }
    flush_dots(&mut out, dots);
    out
}

fn flush_dots(out: &mut String, dots: usize) {
    match dots {
        0 => {}
        1 => out.push('.'),
        _ => out.push('_'),
    }
}

/// Why a name cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NameError {
    Empty,
    Absolute,
    EmptyPart,
    DotDot,
    DotPart,
    Backslash,
    Control,
    /// A Unicode format character (bidi control, zero-width character, ...).
    Invisible,
    Reserved,
    TooLong(usize),
    PartTooLong(usize),
}

impl fmt::Display for NameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NameError::Empty => f.write_str("the name is empty"),
            NameError::Absolute => f.write_str("the name is absolute (starts with /)"),
            NameError::EmptyPart => {
                f.write_str("the name has an empty folder (// or a trailing /)")
            }
            NameError::DotDot => f.write_str("the name contains '..'"),
            NameError::DotPart => f.write_str("the name has a '.' folder"),
            NameError::Backslash => f.write_str("the name contains a backslash"),
            NameError::Control => f.write_str("the name contains a control character"),
            NameError::Invisible => f.write_str(
                "the name contains an invisible formatting character (a bidi control or a \
                 zero-width character), which makes a name look like another",
            ),
            NameError::Reserved => write!(
                f,
                "names under {RESERVED_PREFIX}/ (in any letter case, at any depth) are the \
                 connector's own"
            ),
            NameError::TooLong(n) => {
                write!(f, "the name is {n} bytes long; at most {MAX_NAME_BYTES}")
            }
            NameError::PartTooLong(n) => {
                write!(
                    f,
                    "a folder or file name is {n} bytes long; at most {MAX_PART_BYTES}"
                )
            }
        }
    }
}

impl std::error::Error for NameError {}

/// The check every final name passes before anything is written under it: a relative
/// path with no `..`, no empty, `.` or absolute part, no control or format character,
/// no backslash, no part that is the connector's own folder, and of a length every
/// storage takes.
pub fn check_name(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.starts_with('/') {
        return Err(NameError::Absolute);
    }
    if name.contains('\\') {
        return Err(NameError::Backslash);
    }
    for c in name.chars() {
        if c.is_control() {
            return Err(NameError::Control);
        }
        if is_format(c) {
            return Err(NameError::Invisible);
        }
    }
    if name.contains("..") {
        return Err(NameError::DotDot);
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(NameError::TooLong(name.len()));
    }
    for part in name.split('/') {
        if part.is_empty() {
            return Err(NameError::EmptyPart);
        }
        if part == "." {
            return Err(NameError::DotPart);
        }
        if part.len() > MAX_PART_BYTES {
            return Err(NameError::PartTooLong(part.len()));
        }
        if is_reserved(part) {
            return Err(NameError::Reserved);
        }
    }
    Ok(())
}

/// Whether a folder or file name is the connector's own folder on some volume: in any
/// ASCII letter case, with `ſ` (U+017F, which case-folds to `s`) for `s`, and with
/// trailing dots and spaces (which Windows drops), as case-insensitive SMB, macOS and
/// Windows volumes would see it. The local store keeps one below every mount point,
/// so a part at any depth counts.
fn is_reserved(part: &str) -> bool {
    if !part.starts_with('.') || part.len() < RESERVED_PREFIX.len() {
        return false;
    }
    let mut chars = part.trim_end_matches(['.', ' ']).chars();
    RESERVED_PREFIX.chars().all(|want| {
        chars
            .next()
            .is_some_and(|c| c.to_ascii_lowercase() == want || (want == 's' && c == '\u{17F}'))
    }) && chars.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_errors_read_with_their_causes() {
        let report = |src: &str| {
            crate::report::Report(&FileNameTemplate::parse(src).unwrap_err()).to_string()
        };
        assert_eq!(
            report("{{ task_id"),
            "the template does not parse: syntax error: unexpected end of input, expected end of variable block (in template:1) (line 1)"
        );
        assert_eq!(
            report("{{task_id}}/.."),
            "the template gives names like \"b808d74e-84b2-11ef-b864-0242ac120002/..\", which cannot be used: the name contains '..'"
        );
        assert_eq!(
            report("{{ task_id | nofilter }}"),
            "the template failed to render: unknown filter: filter nofilter is unknown (in template:1) (line 1)"
        );
    }

    #[test]
    fn tags_escape_to_distinct_safe_names() {
        assert_eq!(escape_tag("my_sync-tag1"), "my_sync-tag1");
        assert_eq!(escape_tag("../a/b"), "~2e~2e~2fa~2fb");
        assert_ne!(escape_tag("a~2fb"), escape_tag("a/b"));
        assert_eq!(escape_tag("ž"), "~c5~be");
    }

    const ID: &str = "b808d74e-84b2-11ef-b864-0242ac120002";

    fn task(due: Option<i64>) -> TaskFields<'static> {
        TaskFields {
            task_id: ID,
            due_date: due,
            call_from: Some("420123456789"),
            call_to: Some("420987654321"),
        }
    }

    #[test]
    fn contract_example() {
        let t = FileNameTemplate::parse(
            "{{due_date|yyyy}}/{{due_date|MM}}/{{due_date|dd}}/{{due_date|yyyyMMddHHmmss}}-{{task_id}}",
        )
        .unwrap();
        assert_eq!(
            t.render(&task(Some(1101902400000))).unwrap(),
            "2004/12/01/20041201120000-b808d74e-84b2-11ef-b864-0242ac120002"
        );
    }

    #[test]
    fn slash_in_pattern_makes_folders_and_plain_due_date_is_iso() {
        let t =
            FileNameTemplate::parse("{{ due_date | yyyy/MM }}/{{due_date}}_{{task_id}}").unwrap();
        assert_eq!(
            t.render(&task(Some(1101902400000))).unwrap(),
            format!("2004/12/2004-12-01T12:00:00.000Z_{ID}")
        );
    }

    #[test]
    fn jinja_conditions_work() {
        let t = FileNameTemplate::parse("{% if call_from %}{{call_from}}-{% endif %}{{task_id}}")
            .unwrap();
        assert_eq!(t.render(&task(None)).unwrap(), format!("420123456789-{ID}"));
        let chat = TaskFields {
            task_id: ID,
            ..Default::default()
        };
        assert_eq!(t.render(&chat).unwrap(), ID);
    }

    #[test]
    fn template_errors_are_precise() {
        assert_eq!(
            FileNameTemplate::parse("{{due_date|yyyy}}").unwrap_err(),
            TemplateError::NoTaskId
        );
        assert_eq!(
            FileNameTemplate::parse("{{task_id}}-{{caller}}").unwrap_err(),
            TemplateError::UnknownPlaceholder("caller".into())
        );
        assert!(matches!(
            FileNameTemplate::parse("{{due_date|yyyy-QQ}}/{{task_id}}").unwrap_err(),
            TemplateError::Pattern(PatternError::UnknownLetter { letter: 'Q', .. })
        ));
        assert!(matches!(
            FileNameTemplate::parse("{% if %}{{task_id}}").unwrap_err(),
            TemplateError::Syntax(_)
        ));
        assert!(matches!(
            FileNameTemplate::parse("/{{task_id}}").unwrap_err(),
            TemplateError::UnsafeSample {
                problem: NameError::Absolute,
                ..
            }
        ));
        assert!(matches!(
            FileNameTemplate::parse("../{{task_id}}").unwrap_err(),
            TemplateError::UnsafeSample {
                problem: NameError::DotDot,
                ..
            }
        ));
    }

    #[test]
    fn platform_values_are_made_path_safe() {
        assert_eq!(path_safe("../../etc/passwd"), "____etc_passwd");
        assert_eq!(path_safe("a\\b\u{0}c\nd"), "a_b_c_d");
        assert_eq!(path_safe("v1.2...3"), "v1.2_3");
        let t = FileNameTemplate::parse("{{call_from}}/{{task_id}}").unwrap();
        let hostile = TaskFields {
            task_id: "..",
            call_from: Some("/abs"),
            ..Default::default()
        };
        let name = t.render(&hostile).unwrap();
        assert_eq!(name, "_abs/_");
        assert!(check_name(&name).is_ok());
    }

    #[test]
    fn name_check() {
        assert!(check_name("2004/12/01/x.ogg").is_ok());
        assert!(check_name("ž/ü file.ogg").is_ok());
        assert_eq!(check_name(""), Err(NameError::Empty));
        assert_eq!(check_name("/etc/x"), Err(NameError::Absolute));
        assert_eq!(check_name("a/../b"), Err(NameError::DotDot));
        assert_eq!(check_name("a//b"), Err(NameError::EmptyPart));
        assert_eq!(check_name("a/"), Err(NameError::EmptyPart));
        assert_eq!(check_name("./a"), Err(NameError::DotPart));
        assert_eq!(check_name("a\\b"), Err(NameError::Backslash));
        assert_eq!(check_name("a\u{7}b"), Err(NameError::Control));
        assert_eq!(check_name("a\u{85}b"), Err(NameError::Control));
        assert_eq!(
            check_name(".spinoco-connector/x.page.json"),
            Err(NameError::Reserved)
        );
        assert_eq!(check_name(&"a".repeat(2000)), Err(NameError::TooLong(2000)));
        assert_eq!(
            check_name(&"a".repeat(300)),
            Err(NameError::PartTooLong(300))
        );
    }

    #[test]
    fn invisible_formatting_characters_are_refused_and_made_safe() {
        for c in [
            '\u{202E}',
            '\u{202A}',
            '\u{2066}',
            '\u{200B}',
            '\u{200D}',
            '\u{FEFF}',
            '\u{AD}',
            '\u{2060}',
            '\u{E0041}',
            '\u{061C}',
        ] {
            let name = format!("2024/invoice{c}gpj.exe.ogg");
            assert_eq!(check_name(&name), Err(NameError::Invisible), "{name:?}");
            assert_eq!(path_safe(&format!("a{c}b")), "a_b", "{:x}", c as u32);
        }
        assert!(check_name("2024/\u{5d0}\u{5d1}-arabic-\u{628}.ogg").is_ok());
    }

    #[test]
    fn the_connectors_folder_is_refused_in_any_case_at_any_depth() {
        for name in [
            ".spinoco-connector/x.page.json",
            ".SPINOCO-CONNECTOR/x.page.json",
            ".Spinoco-Connector/it.lease.json",
            "a/.Spinoco-Connector/tmp/x",
            "mnt/disk/.spinoco-connector/tmp/x.ogg",
            ".\u{17F}pinoco-connector/x",
            ".spinoco-conneCtor./x",
            ".spinoco-connector /x",
            "a/.spinoco-connector",
        ] {
            assert_eq!(check_name(name), Err(NameError::Reserved), "{name:?}");
        }
        for name in [
            ".spinoco-connector.meta.json",
            "a/.spinoco-connectors/x",
            "spinoco-connector/x",
            "a/x.spinoco-connector",
            ".spinoco-connecto/x",
        ] {
            assert!(check_name(name).is_ok(), "{name:?}");
        }
    }

    #[test]
    fn name_errors_read_as_advice() {
        assert_eq!(
            NameError::Reserved.to_string(),
            "names under .spinoco-connector/ (in any letter case, at any depth) are the connector's own"
        );
        assert!(NameError::Invisible.to_string().contains("bidi control"));
    }
}
