//! The binary is self-contained: built fully static, it syncs from an empty root.
//!
//! The Docker image is `FROM scratch` with nothing but the binary, and air-gapped or
//! edge boxes may lack any shared library. The musl target cannot be installed here,
//! so this builds the glibc target with `crt-static` (non-PIE, so `ldd` says "not a
//! dynamic executable"), copies it alone into an empty folder, and runs a full
//! `--once` sync inside it with `chroot` as user 10001, the image's user: no /etc, no
//! /dev, no /proc, no NSS modules, no CA files. 127.0.0.1 must therefore need no name
//! service, and the stored files must be complete.
//!
//! Skipped (with the reason, `common::skip`) when chroot is not possible, for example
//! when not run as root.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::harness::*;
use crate::common::podman::USER;
use crate::common::skip::skip;
use crate::common::static_build::{host_triple, static_binary};
use spinoco_connector::EmulatorConfig;

fn find(candidates: &[&str]) -> Option<PathBuf> {
    candidates.iter().map(PathBuf::from).find(|p| p.exists())
}

/// The static binary, alone in an empty root and run as the image's user, syncs
/// everything with the platform's bytes.
#[test]
fn static_binary_syncs_in_an_empty_root_as_an_unprivileged_user() {
    if host_triple().is_none() {
        return skip("the host is not a glibc Linux (the static binary is built for it)");
    }
    let Some(chroot) = find(&["/usr/sbin/chroot", "/usr/bin/chroot", "/sbin/chroot"]) else {
        return skip("no chroot command");
    };
    let Some(ldd) = find(&["/usr/bin/ldd", "/bin/ldd"]) else {
        return skip("no ldd command");
    };
    if let Some(t) = find(&["/bin/true", "/usr/bin/true"]) {
        let probe = Command::new(&chroot).arg("/").arg(t).output().unwrap();
        if !probe.status.success() {
            return skip(&format!(
                "chroot is not permitted (not root?): {}",
                String::from_utf8_lossy(&probe.stderr).trim()
            ));
        }
    }

    let Some(binary) = static_binary() else {
        return;
    };
    let ldd_out = Command::new(ldd).arg(binary).output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&ldd_out.stdout),
        String::from_utf8_lossy(&ldd_out.stderr)
    );
    assert!(
        said.contains("not a dynamic executable"),
        "ldd says: {said}"
    );

    // The whole root: the binary and an empty /data owned by the image's user.
    let root = scratch("static-root");
    std::fs::copy(binary, root.join("spinoco-connector")).unwrap();
    let data = root.join("data");
    std::fs::create_dir(&data).unwrap();
    std::os::unix::fs::chown(&data, Some(USER), Some(USER)).unwrap();

    let emu = emulator(EmulatorConfig {
        tasks: 30,
        seed: 21,
        recording_size: (2_000, 80_000),
        ..Default::default()
    });
    guard_deletes(&emu, &data);
    let mut env = env(&emu, Path::new("/data"));
    assert!(env["SP_API_URL"].starts_with("http://127.0.0.1:"));
    env.insert("SP_LOG_LEVEL".into(), "debug".into());
    let out = Command::new(&chroot)
        .arg(format!("--userspec={USER}:{USER}"))
        .arg(&root)
        .args(["/spinoco-connector", "--once"])
        .env_clear()
        .envs(&env)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));

    let files = verify_complete(&emu, &data);
    assert!(files > 20, "only {files} files");
    assert!(!recording_deletes(&emu).is_empty());
    assert_eq!(emu.deletes().len(), recording_deletes(&emu).len());
    let one = data.join(expected(&emu).keys().next().unwrap());
    let owner = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(&one).unwrap());
    assert_eq!(owner, USER, "the sync did not run as the image's user");
    let top: Vec<_> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    assert_eq!(
        top.len(),
        2,
        "the root held more than the binary and /data: {top:?}"
    );
    let _ = std::fs::remove_dir_all(&root);
}
