//! The upload stage in front of a cloud store, attacked on the network: a staged file
//! whose upload the store did not keep is sent again from the stage's buffer, never
//! downloaded from the platform a second time, and its task's recording is deleted only
//! once the file is stored whole.

use crate::common::harness::{self, env_for_url, scratch};
use crate::common::hostile::{call_task, HostilePlatform};
use crate::common::providers::{endpoint, open_store, target, with_endpoint, Provider};
use crate::common::proxy::TcpProxy;

const TASK: &str = "2f0c7d8e-5b1a-4c3e-9d2f-6a7b8c9d0e1f";

/// GCS through a proxy that flips one byte of the recording's upload: fake-gcs-server
/// (which checks no hash, unlike GCS) stores what came and answers with its CRC32C,
/// which is not the recording's, so the store reports the upload lost (`Restart`). The
/// recording fits one request, so it was staged: the stage sends it again from its
/// buffer, and the platform sees one download of it.
#[test]
fn a_lost_upload_of_a_staged_file_is_sent_again_without_a_second_download() {
    let Some(direct) = target(Provider::Gcs, "stage-resend") else {
        return;
    };
    let upstream = endpoint(&direct).unwrap();
    let proxy = TcpProxy::start_inspecting(upstream.trim_start_matches("http://"));
    let platform = HostilePlatform::start();
    let recording: Vec<u8> = (0..300_000u32).map(|i| (i * 31 % 251) as u8).collect();
    let (task, contents) = call_task(TASK, "call", &recording);
    platform.add_task(task, contents);
    let dir = scratch("stage-resend");
    let mut env = env_for_url(&platform.url, &dir);
    env.extend(with_endpoint(&direct, &proxy.url()));
    env.insert(
        "SP_TASK_SYNC_GET_DATA".into(),
        "CallMetadata,Recordings".into(),
    );
    env.insert("SP_TASK_SYNC_NAMES".into(), "platform".into());
    // The only body of 200 KB or more is the recording's upload.
    proxy.corrupt_next_body(200_000);

    let out = harness::run(&env, &["--once"]);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "--once failed: {log}");
    assert_eq!(
        proxy.corrupted.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "the upload was not corrupted: {log}"
    );
    let stored = open_store(&direct).get("call.ogg").unwrap();
    assert!(
        stored.as_deref() == Some(&recording[..]),
        "the store holds other bytes than the recording: {log}"
    );
    assert_eq!(
        platform.downloads_of(&format!("/recording-direct/{TASK}/r1")),
        1,
        "the recording was downloaded again: {log}"
    );
    assert_eq!(platform.deletes(), [format!("/recording/{TASK}/r1")]);
}
