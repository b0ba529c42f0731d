//! The `spinoco-connector` binary: the command line is the library's
//! ([`spinoco_connector::run`]), which says the exit code the README documents.

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    ExitCode::from(spinoco_connector::run(&args))
}
