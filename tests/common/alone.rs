//! A test in a process of its own: what it measures of the process (the peak resident
//! memory) is then its own, not that of the tests running beside it in this binary.

use std::process::Command;

/// Set in the process that runs the test alone, to the test's name.
const ALONE: &str = "SPINOCO_TEST_ALONE";

/// Whether the caller runs the test body: `true` in the process of its own. Elsewhere it
/// runs this binary again with only the test `name` of the calling `module`
/// (`module_path!()`), fails if that run fails, and returns `false`.
pub fn in_own_process(module: &str, name: &str) -> bool {
    // `module_path!()` starts with the crate: the test binary's name.
    let path = match module.split_once("::") {
        Some((_, inner)) => format!("{inner}::{name}"),
        None => name.to_string(),
    };
    if std::env::var(ALONE).as_deref() == Ok(path.as_str()) {
        return true;
    }
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            path.as_str(),
            "--exact",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(ALONE, &path)
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprint!("{said}");
    assert!(out.status.success(), "{path} alone: {said}");
    assert!(
        said.contains(" 1 passed;"),
        "{path} did not run alone: {said}"
    );
    false
}
