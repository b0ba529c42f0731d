//! A tmpfs of the test's own: a file system that can be filled to the last byte or
//! turned read-only (which stops root too, unlike `chmod`). Mounting needs root, so
//! without it the test skips (`super::skip`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::harness::scratch;
use super::skip::skip;

/// A mounted tmpfs, unmounted on drop.
pub struct Tmpfs(PathBuf);

impl Tmpfs {
    /// A tmpfs with `options` (`size=16m`, `size=1m,ro`) on a fresh folder.
    pub fn mount(name: &str, options: &str) -> Option<Tmpfs> {
        Tmpfs::mount_on(scratch(name), options)
    }

    /// A tmpfs with `options` on the existing folder `dir`.
    pub fn mount_on(dir: PathBuf, options: &str) -> Option<Tmpfs> {
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "tmpfs"])
            .arg(&dir)
            .status()
            .is_ok_and(|s| s.success());
        if !mounted {
            skip(&format!("cannot mount a tmpfs on {dir:?} (needs root)"));
            return None;
        }
        Some(Tmpfs(dir))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Remounts it `ro` or `rw`.
    pub fn remount(&self, mode: &str) {
        let ok = Command::new("mount")
            .args(["-o", &format!("remount,{mode}")])
            .arg(&self.0)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "cannot remount {:?} {mode}", self.0);
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// Fills the file system holding `dir` to the last byte with one ballast file, and
/// returns its path (remove it to give the space back).
pub fn fill(dir: &Path) -> PathBuf {
    let path = dir.join("ballast.bin");
    let mut f = std::fs::File::create(&path).unwrap();
    let block = vec![0u8; 64 * 1024];
    loop {
        if let Err(e) = f.write_all(&block) {
            assert_eq!(e.raw_os_error(), Some(28), "not a full disk: {e}");
            break;
        }
    }
    while f.write_all(&[0]).is_ok() {}
    path
}
