//! What the benchmarks (`sync.rs`, `bandwidth.rs`) share: their command line's end.

/// The options, or the usage on stderr and the exit: 0 for `--help` (an empty error),
/// 2 for a bad option.
pub fn options_or_exit<T>(parsed: Result<T, String>, usage: &str) -> T {
    parsed.unwrap_or_else(|e| {
        if !e.is_empty() {
            eprintln!("error: {e}");
        }
        eprintln!("{usage}");
        std::process::exit(if e.is_empty() { 0 } else { 2 });
    })
}
