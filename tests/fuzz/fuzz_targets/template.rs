//! Any template either parses or is refused with an error; a parsed one renders, for
//! any task values and due dates, to names that either pass the name check or are
//! refused by it — never a panic, never a name that escapes the root.
#![no_main]

use libfuzzer_sys::fuzz_target;
use spinoco_connector::DatePattern;
use spinoco_connector::{check_name, path_safe, FileNameTemplate, TaskFields};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    // The first line is the template, the rest the task's values.
    let mut lines = text.splitn(4, '\n');
    let source = lines.next().unwrap_or("");
    let task_id = lines.next().unwrap_or("b808d74e-84b2-11ef-b864-0242ac120002");
    let call_from = lines.next();
    let due = data.iter().fold(0i64, |acc, b| acc.wrapping_mul(31).wrapping_add(*b as i64)) % 253_402_300_799_000;
    if let Ok(pattern) = DatePattern::parse(source) {
        let t = time::OffsetDateTime::from_unix_timestamp(due.abs() / 1000).unwrap();
        let _ = pattern.format(t);
    }
    let safe = path_safe(task_id);
    assert!(!safe.contains('/') && !safe.contains('\\') && !safe.contains(".."));
    if let Ok(template) = FileNameTemplate::parse(source) {
        let fields = TaskFields { task_id, due_date: Some(due), call_from, call_to: None };
        if let Ok(name) = template.render(&fields) {
            if check_name(&name).is_ok() {
                assert!(!name.starts_with('/') && !name.split('/').any(|p| p == ".." || p.is_empty()));
            }
        }
    }
});
