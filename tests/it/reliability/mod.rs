//! The reliability suite: the storage going away and coming back, the storage refusing
//! us, `kill -9` at random instants and SIGTERM during large uploads on every back-end,
//! and hostile answers from the platform. Every test ends with the same check
//! (`providers::verify`): every handed-out file complete with the platform's bytes,
//! nothing else visible, no delete before its task's files were stored, every delete
//! done. Each prints (and appends to the tally `tests/run.sh` prints at its end) a
//! `RELIABILITY ...` figure line. Platform-side faults per provider are in
//! `sync::providers`; the soak run is the ignored `soak::soak`.

use std::collections::BTreeMap;

use crate::common::harness::{env, expected, recording_deletes, scratch};
use crate::common::providers::list_objects;
use spinoco_connector::Emulator;

mod hostile;
mod kill;
mod outage;
mod received_page;
mod refusal;
mod sigterm;
mod soak;

/// Whether the longer variants run (`SPINOCO_LONG_TESTS=1`).
fn long() -> bool {
    std::env::var("SPINOCO_LONG_TESTS").as_deref() == Ok("1")
}

/// The connector's environment for `emu` into the target `t`.
fn env_for(emu: &Emulator, t: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    let mut e = env(emu, &scratch("unused"));
    e.extend(t.clone());
    e
}

/// Everything handed out so far is stored and the round is over (no journal).
fn caught_up(emu: &Emulator, e: &BTreeMap<String, String>, tasks: usize) -> bool {
    let listed = list_objects(e);
    emu.handed_out().len() >= tasks
        && expected(emu).keys().all(|n| listed.contains(n))
        && !listed.iter().any(|n| n.starts_with(".spinoco-connector/"))
        && emu.deletes().len() >= recording_deletes(emu).len()
}

/// How often the sync feed was asked (each ask may move the platform's cursor).
fn feed_requests(emu: &Emulator) -> usize {
    emu.requests()
        .iter()
        .filter(|r| r.path.starts_with("/task/sync"))
        .count()
}
