//! The fully static binary that `tests/static_binary.rs` runs in an empty root and
//! `tests/image.rs` puts into the scratch image: one build, shared, so whichever test
//! runs second finds it done.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The glibc target of this machine (the tests are built for the host).
pub fn host_triple() -> Option<String> {
    cfg!(all(target_os = "linux", target_env = "gnu"))
        .then(|| format!("{}-unknown-linux-gnu", std::env::consts::ARCH))
}

/// Builds the static binary into its own target folder and returns its path.
pub fn build_static(triple: &str) -> PathBuf {
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
