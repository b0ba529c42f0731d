//! The integration suite, one binary: the real binary against the platform emulator,
//! a hostile platform and the real storage servers, grouped by scenario family.
//! `cargo test --test it <filter>` selects by module path (`store::s3`,
//! `reliability::kill`, a test's name); `tests/run.sh` starts the storage servers first.

#[path = "../common/mod.rs"]
mod common;

mod archive;
mod boundary;
mod cloud;
mod ops;
mod reliability;
mod store;
mod sync;
