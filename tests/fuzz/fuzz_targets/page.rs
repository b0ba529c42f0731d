//! Any bytes as a feed page: decoded or refused, and every task of a decoded page either
//! gives checked names or is refused — never a panic, never a name outside the root.
#![no_main]

use libfuzzer_sys::fuzz_target;
use spinoco_connector::decode_page;
use spinoco_connector::Task;
use spinoco_connector::FileNameTemplate;

fuzz_target!(|data: &[u8]| {
    let Ok(page) = decode_page(data) else { return };
    let template = FileNameTemplate::parse(
        "{{due_date|yyyy}}/{{due_date|MM}}/{{due_date|dd}}/{{due_date|yyyyMMddHHmmss}}-{{task_id}}",
    )
    .unwrap();
    for raw in &page.tasks {
        let Ok(task) = Task::from_value(raw) else { continue };
        if let Ok(files) = task.files(&template, spinoco_connector::NameSource::Template) {
            for f in files {
                assert!(!f.name.starts_with('/'), "{}", f.name);
                assert!(!f.name.split('/').any(|p| p == ".." || p == "." || p.is_empty()), "{}", f.name);
                assert!(!f.name.contains('\\') && !f.name.chars().any(char::is_control), "{}", f.name);
            }
        }
    }
});
