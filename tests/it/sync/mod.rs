//! A sync as users run it: the real binary against the platform emulator, into a local
//! folder and into each cloud provider's test server.

use spinoco_connector::EmulatorConfig;

mod bandwidth;
mod commands;
mod journal;
mod local;
mod providers;

/// An account of `tasks` tasks with small recordings.
fn small(tasks: usize) -> EmulatorConfig {
    EmulatorConfig {
        tasks,
        seed: 11,
        recording_size: (2_000, 60_000),
        ..Default::default()
    }
}
