//! The integration suite: the real binary against the platform emulator, a hostile
//! platform and real storage servers.

#[path = "../common/mod.rs"]
mod common;

mod boundary;
mod systemd;
