//! Cloud-native deployments end to end: each workload identity ends in a real `--once`
//! sync into its storage test server, with the storage options a bucket policy demands
//! and the task's user metadata on every upload.
//!
//! The token endpoints are fakes started by the test (`common::fake_http`); the storage
//! is always the real test server: s3s-fs (which takes STS keys with a session token),
//! fake-gcs-server (no authentication: the token is checked on the wire), and an
//! Azurite of the test's own with OAuth over https (`common::azurite`), which checks a
//! bearer token's audience, issuer and lifetime (not its signature) and refuses one for
//! another audience. Where the server
//! ignores a header (s3s-fs keeps no encryption settings, fake-gcs-server no KMS key or
//! class of a resumable upload), a capturing proxy between the connector and the server
//! shows that it was sent, on which requests, and that it was not sent where the
//! service refuses it (UploadPart, Put Block).

use std::collections::BTreeMap;

use crate::common::harness::*;
use spinoco_connector::{Emulator, EmulatorConfig};

mod azure;
mod gcs;
mod s3;

/// A few calls with one recording each, larger than a 5 MiB part so that
/// every provider's multi-part upload path runs.
fn account() -> EmulatorConfig {
    EmulatorConfig {
        tasks: 4,
        seed: 41,
        calls_only: true,
        recordings_per_call: Some(1),
        recording_size: (5_300_000, 5_500_000),
        ..Default::default()
    }
}

fn token_file(name: &str, token: &str) -> String {
    let dir = scratch(name);
    let path = dir.join("token");
    std::fs::write(&path, token).unwrap();
    path.display().to_string()
}

/// `host:port` of an `http://host:port[/...]` URL.
fn authority(url: &str) -> String {
    url.trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap()
        .to_string()
}

/// The task ids and data types the emulator handed out, by stored name.
fn handed_out_info(emu: &Emulator) -> BTreeMap<String, (String, String)> {
    let mut info = BTreeMap::new();
    for task in emu.handed_out() {
        let id = task["taskId"].as_str().unwrap().to_string();
        for g in task["get"].as_array().cloned().unwrap_or_default() {
            let data_type = g["dataType"].as_str().unwrap_or_default().to_string();
            info.insert(
                g["fileName"].as_str().unwrap().to_string(),
                (id.clone(), data_type),
            );
        }
    }
    info
}

/// The `n`-th fenced block of `lang` after the README heading `heading`.
fn readme_block(heading: &str, lang: &str, n: usize) -> String {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let at = readme
        .find(&format!("\n{heading}\n"))
        .unwrap_or_else(|| panic!("README has {heading:?}"));
    let mut rest = &readme[at..];
    let fence = format!("```{lang}\n");
    for _ in 0..n {
        rest = &rest[rest.find(&fence).expect("the block") + fence.len()..];
    }
    let start = rest.find(&fence).expect("the block") + fence.len();
    let end = start + rest[start..].find("```").unwrap();
    rest[start..end].to_string()
}

/// The actions of every statement of an IAM policy document, and their resources.
fn policy_actions(policy: &serde_json::Value, key: &str) -> BTreeMap<String, Vec<String>> {
    let as_list = |v: &serde_json::Value| -> Vec<String> {
        match v {
            serde_json::Value::String(s) => vec![s.clone()],
            serde_json::Value::Array(a) => {
                a.iter().map(|x| x.as_str().unwrap().to_string()).collect()
            }
            _ => Vec::new(),
        }
    };
    let mut out = BTreeMap::new();
    for st in policy["Statement"].as_array().unwrap() {
        for a in as_list(&st[key]) {
            out.insert(a, as_list(&st["Resource"]));
        }
    }
    out
}

/// Every mistake in the S3, Azure and GCS settings is reported by `check --connect` at
/// once (exit 3), before any network call.
#[test]
fn cloud_configuration_mistakes_are_all_reported_before_any_network_call() {
    let emu = emulator(account());
    type Case<'a> = (&'a [(&'a str, &'a str)], &'a [&'a str]);
    let cases: [Case; 3] = [
        (
            &[
                ("SP_TASK_SYNC_STORAGE_PROVIDER", "s3"),
                ("SP_TASK_SYNC_S3_BUCKET", "calls"),
                ("AWS_REGION", "eu-central-1"),
                ("AWS_ROLE_ARN", "arn:aws:iam::123456789012:role/x"),
                ("SP_TASK_SYNC_S3_SSE", "kms"),
                ("SP_TASK_SYNC_S3_STORAGE_CLASS", "GLACIER"),
                ("SP_TASK_SYNC_S3_ADDRESSING", "host"),
            ],
            &[
                "AWS_WEB_IDENTITY_TOKEN_FILE",
                "SP_TASK_SYNC_S3_SSE=\"kms\"",
                "SP_TASK_SYNC_S3_STORAGE_CLASS=\"GLACIER\"",
                "SP_TASK_SYNC_S3_ADDRESSING=\"host\"",
            ],
        ),
        (
            &[
                ("SP_TASK_SYNC_STORAGE_PROVIDER", "azure"),
                ("SP_TASK_SYNC_AZURE_CLIENT_NAME", "calls"),
                (
                    "SP_TASK_SYNC_AZURE_ACCOUNT_URL",
                    "http://acct.blob.core.windows.net",
                ),
                ("AZURE_FEDERATED_TOKEN_FILE", "/nonexistent/token"),
                ("SP_TASK_SYNC_AZURE_ACCESS_TIER", "Archive"),
            ],
            &[
                "SP_TASK_SYNC_AZURE_ACCOUNT_URL",
                "AZURE_CLIENT_ID",
                "AZURE_TENANT_ID",
                "AZURE_FEDERATED_TOKEN_FILE",
                "SP_TASK_SYNC_AZURE_ACCESS_TIER",
            ],
        ),
        (
            &[
                ("SP_TASK_SYNC_STORAGE_PROVIDER", "gcs"),
                ("SP_TASK_SYNC_GCS_BUCKET", "calls"),
                ("SP_TASK_SYNC_GCS_PROJECT", "p"),
                ("SP_TASK_SYNC_GCS_STORAGE_CLASS", "COLD"),
                ("SP_TASK_SYNC_GCS_KMS_KEY_NAME", "my-key"),
            ],
            &[
                "SP_TASK_SYNC_GCS_STORAGE_CLASS",
                "SP_TASK_SYNC_GCS_KMS_KEY_NAME",
            ],
        ),
    ];
    for (pairs, expected) in cases {
        let mut e = env(&emu, &scratch("unused"));
        e.remove("SP_TASK_SYNC_SAVE_TO");
        e.extend(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let out = run(&e, &["check", "--connect"]);
        let shown = text(&out);
        assert_eq!(out.status.code(), Some(3), "{shown}");
        for var in expected {
            assert!(
                shown.contains(&format!("  - {var}")),
                "{var} is reported:\n{shown}"
            );
        }
    }
    assert!(emu.requests().is_empty(), "no network call was made");
}
