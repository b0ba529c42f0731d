//! The scratch image as users get it, built with podman from the static binary
//! (`super::static_build`) once per run of the suite, and the podman the tests drive:
//! a configuration of their own, and everything a test creates removed when it ends.
//! Where podman cannot build or run a container here the tests skip (`super::skip`).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

use super::harness::{repo, scratch, stdout, text, unique, which, TEMPLATE};
use super::skip::skip;
use super::static_build::{host_triple, static_binary};

/// The image's user and group.
pub const USER: u32 = 10001;
/// What the image sets (the official image's defaults, and the metrics endpoint its
/// HEALTHCHECK asks).
pub const IMAGE_ENV: &[(&str, &str)] = &[
    ("SP_TASK_SYNC_SAVE_TO", "/data"),
    ("SP_TASK_SYNC_FILE_NAME_TEMPLATE", TEMPLATE),
    ("SP_TASK_SYNC_GET_DATA", "Recordings,Transcriptions"),
    ("SP_TASK_SYNC_STORAGE_PROVIDER", "local"),
    ("SP_METRICS_ADDR", "0.0.0.0:9464"),
];

/// Runs podman with a configuration of the test's own: the runc runtime where it is
/// installed (crun fails on the hybrid cgroups of the project's machines) and lowered
/// limits (without them both runtimes fail to set rlimits there). podman-compose gets
/// the same through the environment.
pub struct Podman {
    conf: PathBuf,
}

impl Podman {
    fn new() -> Podman {
        let dir = scratch("podman-conf");
        let conf = dir.join("containers.conf");
        let runtime = match which("runc") {
            Some(_) => "[engine]\nruntime = \"runc\"\n",
            None => "",
        };
        std::fs::write(
            &conf,
            format!(
                "[containers]\ndefault_ulimits = [\"nofile=1024:1024\", \"nproc=1024:1024\"]\n\n{runtime}"
            ),
        )
        .unwrap();
        Podman { conf }
    }

    pub fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.env("CONTAINERS_CONF", &self.conf).stdin(Stdio::null());
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd("podman").args(args).output().expect("podman runs")
    }

    /// Runs and requires success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "podman {args:?} failed ({}):\n{}",
            out.status,
            text(&out)
        );
        stdout(&out)
    }

    pub fn inspect(&self, what: &str, format: &str) -> String {
        self.ok(&["inspect", "--format", format, what])
            .trim()
            .to_string()
    }

    pub fn volume_path(&self, volume: &str) -> PathBuf {
        PathBuf::from(
            self.ok(&["volume", "inspect", "--format", "{{.Mountpoint}}", volume])
                .trim(),
        )
    }
}

/// Removes what a test created, even when it fails.
pub struct Cleanup<'a> {
    podman: &'a Podman,
    pub containers: Vec<String>,
    pub volumes: Vec<String>,
    pub networks: Vec<String>,
}

impl<'a> Cleanup<'a> {
    pub fn new(podman: &'a Podman) -> Cleanup<'a> {
        Cleanup {
            podman,
            containers: Vec::new(),
            volumes: Vec::new(),
            networks: Vec::new(),
        }
    }

    pub fn container(&mut self, what: &str) -> String {
        let name = unique(&format!("spinoco-it-{what}"));
        self.containers.push(name.clone());
        name
    }

    pub fn volume(&mut self, what: &str) -> String {
        let name = unique(&format!("spinoco-it-{what}"));
        self.podman.ok(&["volume", "create", &name]);
        self.volumes.push(name.clone());
        name
    }
}

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        for c in &self.containers {
            let _ = self.podman.run(&["rm", "-f", "-v", "-t", "0", c]);
        }
        for v in &self.volumes {
            let _ = self.podman.run(&["volume", "rm", "-f", v]);
        }
        for n in &self.networks {
            let _ = self.podman.run(&["network", "rm", "-f", n]);
        }
    }
}

/// The image, built once for the tests that use it.
pub struct Built {
    pub podman: Podman,
    /// Its tag.
    pub image: String,
    /// The static binary in it.
    pub binary: &'static Path,
}

/// Builds the static binary and the image's final stage from it; `Err` says why podman
/// cannot do that here (a failure of the Dockerfile itself fails the test instead).
fn built() -> Result<&'static Built, String> {
    static BUILT: OnceLock<Result<Built, String>> = OnceLock::new();
    BUILT
        .get_or_init(build_image)
        .as_ref()
        .map_err(Clone::clone)
}

fn build_image() -> Result<Built, String> {
    if host_triple().is_none() {
        return Err("the host is not a glibc Linux (the static binary is built for it)".into());
    }
    match Command::new("podman").arg("--version").output() {
        Ok(out) if out.status.success() => {}
        Ok(out) => return Err(format!("podman --version failed: {}", text(&out))),
        Err(e) => return Err(format!("podman is not installed ({e})")),
    }
    // Rootless podman maps the image's user to a sub-uid of the host: the volume's
    // owner could not be checked from here.
    let uid = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self").unwrap());
    if uid != 0 {
        return Err(format!(
            "not root (uid {uid}): rootless podman maps user 10001 to a sub-uid, so the volume cannot be checked from the host"
        ));
    }
    let podman = Podman::new();
    let info = podman.run(&["info", "--format", "{{.Host.OCIRuntime.Name}}"]);
    if !info.status.success() {
        return Err(format!("podman info failed: {}", text(&info)));
    }

    let binary = static_binary().expect("a glibc Linux host");
    // The build context: a folder holding only the binary (README "Scratch image").
    let context = scratch("image-context");
    std::fs::copy(binary, context.join("spinoco-connector")).unwrap();

    // Can podman run a container at all here? A one-line image of the same binary.
    let probe_file = context.with_extension("probe");
    std::fs::write(
        &probe_file,
        "FROM scratch\nCOPY spinoco-connector /spinoco-connector\nENTRYPOINT [\"/spinoco-connector\"]\n",
    )
    .unwrap();
    let probe_tag = format!("localhost/{}", unique("spinoco-it-probe"));
    let probe = podman.run(&[
        "build",
        "-q",
        "-f",
        probe_file.to_str().unwrap(),
        "-t",
        &probe_tag,
        context.to_str().unwrap(),
    ]);
    if !probe.status.success() {
        return Err(format!(
            "podman cannot build a FROM scratch image here: {}",
            text(&probe)
        ));
    }
    let ran = podman.run(&["run", "--rm", "--network", "host", &probe_tag, "--version"]);
    let _ = podman.run(&["rmi", "-f", &probe_tag]);
    let _ = std::fs::remove_file(&probe_file);
    if !ran.status.success() || !stdout(&ran).starts_with("spinoco-connector ") {
        return Err(format!(
            "podman cannot run a container here: {}",
            text(&ran)
        ));
    }

    // One tag per checkout, replaced on every run.
    let mut hash = 0u64;
    for b in repo().to_string_lossy().bytes() {
        hash = hash.wrapping_mul(31).wrapping_add(b as u64);
    }
    let image = format!("localhost/spinoco-connector-test:{:08x}", hash as u32);
    // The `prebuilt` stage is tagged too (the full build reuses it from the layer
    // cache), so that removing both tags on the next run leaves no untagged image.
    let stage = format!("{image}-binary");
    let _ = podman.run(&["rmi", "-f", &image, &stage]);
    let dockerfile = repo().join("Dockerfile.scratch");
    for (target, tag) in [(Some("prebuilt"), &stage), (None, &image)] {
        let mut args = vec![
            "build",
            "-q",
            "--format",
            "docker", // the OCI format has no HEALTHCHECK
            "-f",
            dockerfile.to_str().unwrap(),
            "--build-arg",
            "BINARY_FROM=prebuilt",
            "-t",
            tag,
        ];
        if let Some(t) = target {
            args.extend(["--target", t]);
        }
        args.push(context.to_str().unwrap());
        podman.ok(&args);
    }
    let _ = std::fs::remove_dir_all(&context);
    Ok(Built {
        podman,
        image,
        binary,
    })
}

/// The image, built at the first call; `None` (the test skipped) where podman cannot
/// build or run it here.
pub fn image() -> Option<&'static Built> {
    match built() {
        Ok(b) => Some(b),
        Err(reason) => {
            skip(&reason);
            None
        }
    }
}
