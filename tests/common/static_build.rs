//! The fully static binary (the release settings, `crt-static`) that
//! `ops::static_binary` runs in an empty root, `ops::image` puts into the scratch image
//! and `boundary::metrics_port` attacks: built once per run of the suite, in a target
//! folder of its own.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use super::skip::skip;

/// The glibc target of this machine (the tests are built for the host); `None` on any
/// other host.
pub fn host_triple() -> Option<String> {
    cfg!(all(target_os = "linux", target_env = "gnu"))
        .then(|| format!("{}-unknown-linux-gnu", std::env::consts::ARCH))
}

/// The static binary, built at the first call; `None` (the test skipped) on a host
/// that is not a glibc Linux.
pub fn static_binary() -> Option<&'static Path> {
    static BUILT: OnceLock<Option<PathBuf>> = OnceLock::new();
    let built = BUILT.get_or_init(|| host_triple().map(|triple| build(&triple)));
    if built.is_none() {
        skip("the host is not a glibc Linux (the static binary is built for it)");
    }
    built.as_deref()
}

/// Builds the static binary into its own target folder and returns its path.
fn build(triple: &str) -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let target_dir = manifest.join("target").join("static-check");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(manifest)
        .args(["build", "--locked", "--profile", "static-check"])
        .args(["--bin", "spinoco-connector", "--target", triple])
        .arg("--target-dir")
        .arg(&target_dir)
        // --target keeps these flags off build scripts and proc macros.
        .env(
            "RUSTFLAGS",
            "-C target-feature=+crt-static -C relocation-model=static",
        )
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_BUILD_RUSTFLAGS")
        .output()
        .expect("cargo runs");
    assert!(
        out.status.success(),
        "the static build failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    target_dir
        .join(triple)
        .join("static-check")
        .join("spinoco-connector")
}
