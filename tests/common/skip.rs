//! The one skip policy. A test whose server or tool is missing here skips, saying why,
//! when run by hand; under the test script (`tests/run.sh` sets
//! `SPINOCO_TEST_REQUIRE_SERVERS=1` after installing and starting everything) and in
//! CI (`CI=true`) nothing may be skipped, so the same test fails instead.

use std::io::Write;

/// Whether every test must run: under the test script or in CI.
pub fn required() -> bool {
    std::env::var("SPINOCO_TEST_REQUIRE_SERVERS").as_deref() == Ok("1")
        || matches!(std::env::var("CI").as_deref(), Ok("true" | "1"))
}

/// Skips the running test for `reason` (the caller returns), or fails it where every
/// test must run.
pub fn skip(reason: &str) {
    let test = std::thread::current()
        .name()
        .unwrap_or("a test")
        .to_string();
    assert!(
        !required(),
        "{test} cannot run: {reason} (the test script installs and starts what the tests need)"
    );
    say(&format!("SKIPPED {test}: {reason}"));
}

/// The value of `var`, which the test script sets for a server it started; `None`
/// (the test skipped) without it.
pub fn server(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => Some(v),
        _ => {
            skip(&format!(
                "{var} is not set (tests/run.sh starts the storage servers and sets it)"
            ));
            None
        }
    }
}

/// A line on the real stderr: the harness keeps the `eprintln!` of a passing test to
/// itself, and a skip or a measured figure must show in the suite's output.
pub fn say(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}
