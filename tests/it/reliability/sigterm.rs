//! SIGTERM while large recordings go up in parts: a prompt, clean exit with nothing
//! partial visible, and the next run finishes the job.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use crate::common::harness::*;
use crate::common::providers::*;
use spinoco_connector::EmulatorConfig;

use super::env_for;

/// SIGTERM while large recordings go up in parts: exit 0 within 10 s, nothing
/// partial visible, and the next run finishes the job.
fn sigterm_during_large_upload(p: Provider) {
    let Some(t) = target(p, "sigterm") else {
        return;
    };
    let emu = emulator(EmulatorConfig {
        tasks: 3,
        seed: 8,
        recording_size: (20_000_000, 30_000_000),
        latency: Duration::from_millis(5),
        ..Default::default()
    });
    guard_via_store(&emu, &t);
    let e = env_for(&emu, &t);
    let log = scratch("sigterm-log").join("connector.log");
    let mut child = spawn(&e, &[], &log);
    wait_until("a recording download", Duration::from_secs(60), || {
        !emu.handed_out().is_empty()
    });
    std::thread::sleep(Duration::from_millis(700));
    let sent = Instant::now();
    signal(child.id(), "TERM");
    let status = child.wait().unwrap();
    let took = sent.elapsed();
    assert!(status.success(), "exit status {status:?}");
    assert!(took < Duration::from_secs(10), "took {took:?} to stop");
    let want = expected(&emu);
    let store = open_store(&t);
    for name in list_objects(&t) {
        if name.starts_with(".spinoco-connector/") {
            assert!(name.ends_with(".page.json"), "left behind: {name}");
            continue;
        }
        let bytes = emu.content(&want[&name]).unwrap();
        assert!(
            store.get(&name).unwrap().unwrap() == bytes,
            "{name} is partial"
        );
    }
    let out = run(&e, &["--once"]);
    assert!(out.status.success(), "{}", text(&out));
    let v = verify(&emu, &t, &BTreeSet::new());
    tally(&format!(
        "test=sigterm provider={} stop_secs={:.1} files={} files_lost=0 premature_deletes=0",
        p.name(),
        took.as_secs_f64(),
        v.files
    ));
}

/// [`sigterm_during_large_upload`] on S3, during multipart uploads.
#[test]
fn sigterm_during_s3_multipart_upload() {
    sigterm_during_large_upload(Provider::S3);
}

/// [`sigterm_during_large_upload`] on GCS, during resumable uploads.
#[test]
fn sigterm_during_gcs_resumable_upload() {
    sigterm_during_large_upload(Provider::Gcs);
}

/// [`sigterm_during_large_upload`] on Azure, during block uploads.
#[test]
fn sigterm_during_azure_block_upload() {
    sigterm_during_large_upload(Provider::Azure);
}
