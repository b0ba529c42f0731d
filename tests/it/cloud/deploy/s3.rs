//! S3 with the workload identities of EKS: IRSA (web identity through STS) with
//! SSE-KMS, a bucket key, a storage class and the README's IAM policy checked against
//! the requests; EKS Pod Identity through the container credentials endpoint.

use std::collections::BTreeSet;

use crate::common::capture::CaptureProxy;
use crate::common::codec::percent_decode;
use crate::common::fake_http::{FakeServer, Request};
use crate::common::harness::*;
use crate::common::providers::*;
use spinoco_connector::EmulatorConfig;

use super::super::in_an_hour;
use super::{account, authority, handed_out_info, policy_actions, readme_block, token_file};

/// IRSA syncs fully with the STS session on every request; SSE-KMS, the bucket key and
/// the storage class on every upload (none on the parts), the task's metadata on every
/// data file, and the README's IAM policy allows what the sync used and, beyond it, only
/// the two actions it explains.
#[test]
fn s3_with_web_identity_encryption_class_and_metadata() {
    let Some(mut e) = target(Provider::S3, "irsa") else {
        return;
    };
    let access_key = e.remove("AWS_ACCESS_KEY_ID").unwrap();
    let secret_key = e.remove("AWS_SECRET_ACCESS_KEY").unwrap();
    let role = "arn:aws:iam::123456789012:role/spinoco-connector";
    let token = token_file("irsa-token", "eyJirsa.projected.token");
    // STS trades the projected token for the server's keys and a session token.
    let sts = FakeServer::start(Box::new(move |r| {
        let ok = r.field("Action").as_deref() == Some("AssumeRoleWithWebIdentity")
            && r.field("RoleArn").as_deref() == Some(role)
            && r.field("WebIdentityToken").as_deref() == Some("eyJirsa.projected.token");
        if !ok {
            return (400, "<ErrorResponse><Error><Code>InvalidIdentityToken</Code><Message>no</Message></Error></ErrorResponse>".into());
        }
        (
            200,
            format!(
                "<AssumeRoleWithWebIdentityResponse><AssumeRoleWithWebIdentityResult><Credentials>\
                 <AccessKeyId>{access_key}</AccessKeyId><SecretAccessKey>{secret_key}</SecretAccessKey>\
                 <SessionToken>sts-session-token-1</SessionToken><Expiration>{}</Expiration>\
                 </Credentials></AssumeRoleWithWebIdentityResult></AssumeRoleWithWebIdentityResponse>",
                in_an_hour()
            ),
        )
    }));
    let server = e["SP_TASK_SYNC_S3_ENDPOINT"].clone();
    let proxy = CaptureProxy::start(&authority(&server));
    let kms_key = "arn:aws:kms:eu-central-1:123456789012:key/0a1b2c3d-spinoco";
    for (k, v) in [
        ("AWS_ROLE_ARN", role.to_string()),
        ("AWS_WEB_IDENTITY_TOKEN_FILE", token),
        ("AWS_ENDPOINT_URL_STS", sts.url.clone()),
        ("AWS_EC2_METADATA_DISABLED", "true".into()),
        // The SDK's variable instead of the connector's: the endpoint and the region.
        ("AWS_ENDPOINT_URL_S3", proxy.url()),
        ("AWS_REGION", "us-east-1".into()),
        ("SP_TASK_SYNC_S3_SSE", "aws:kms".into()),
        ("SP_TASK_SYNC_S3_SSE_KMS_KEY_ID", kms_key.into()),
        ("SP_TASK_SYNC_S3_BUCKET_KEY", "true".into()),
        // s3s-fs refuses the classes it does not know (STANDARD_IA: InvalidStorageClass).
        ("SP_TASK_SYNC_S3_STORAGE_CLASS", "REDUCED_REDUNDANCY".into()),
        ("SP_TASK_SYNC_S3_MULTIPART_THRESHOLD", "5MiB".into()),
        ("SP_TASK_SYNC_S3_PART_SIZE", "5MiB".into()),
    ] {
        e.insert(k.into(), v);
    }
    e.remove("SP_TASK_SYNC_S3_ENDPOINT");
    e.remove("SP_TASK_SYNC_S3_REGION");

    let emu = emulator(account());
    let mut run_env = env(&emu, &scratch("unused"));
    run_env.extend(e.clone());
    let check = run(&run_env, &["check"]);
    let shown = text(&check);
    assert!(check.status.success(), "{shown}");
    for expected in [
        "web identity: role arn:aws:iam::123456789012:role/spinoco-connector",
        "AWS_ENDPOINT_URL_S3",
        "AWS_REGION",
        "aws:kms, key arn:aws:kms:eu-central-1:123456789012:key/0a1b2c3d-spinoco, bucket key on",
        "REDUCED_REDUNDANCY",
    ] {
        assert!(
            shown.contains(expected),
            "check shows {expected:?}:\n{shown}"
        );
    }

    let out = run(&run_env, &["--once"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        !text(&out).contains("sts-session-token-1"),
        "the session token is not logged"
    );
    assert!(!sts.requests().is_empty());

    // Everything arrived, read back with the server's keys directly.
    let mut direct = e.clone();
    direct.remove("AWS_ROLE_ARN");
    direct.remove("AWS_WEB_IDENTITY_TOKEN_FILE");
    direct.insert(
        "AWS_ACCESS_KEY_ID".into(),
        server_var("SPINOCO_TEST_S3_ACCESS_KEY"),
    );
    direct.insert(
        "AWS_SECRET_ACCESS_KEY".into(),
        server_var("SPINOCO_TEST_S3_SECRET_KEY"),
    );
    direct.insert("AWS_ENDPOINT_URL_S3".into(), server.clone());
    let verified = verify(&emu, &direct, &BTreeSet::new());
    assert!(verified.files > 0);

    let requests = proxy.requests();
    assert!(
        requests
            .iter()
            .all(|r| r.header("x-amz-security-token") == Some("sts-session-token-1")),
        "every request is signed with the STS session"
    );
    let uploads: Vec<&Request> = requests
        .iter()
        .filter(|r| {
            (r.method == "PUT" && !r.target.contains("partNumber="))
                || (r.method == "POST" && r.target.contains("uploads"))
        })
        .collect();
    let parts: Vec<&Request> = requests
        .iter()
        .filter(|r| r.target.contains("partNumber="))
        .collect();
    assert!(
        uploads.iter().any(|r| r.method == "POST"),
        "a multipart upload was started"
    );
    assert!(!parts.is_empty());
    for r in &uploads {
        assert_eq!(
            r.header("x-amz-server-side-encryption"),
            Some("aws:kms"),
            "{} {}",
            r.method,
            r.target
        );
        assert_eq!(
            r.header("x-amz-server-side-encryption-aws-kms-key-id"),
            Some(kms_key)
        );
        assert_eq!(
            r.header("x-amz-server-side-encryption-bucket-key-enabled"),
            Some("true")
        );
        assert_eq!(r.header("x-amz-storage-class"), Some("REDUCED_REDUNDANCY"));
    }
    for r in &parts {
        assert!(
            r.header("x-amz-server-side-encryption").is_none()
                && r.header("x-amz-storage-class").is_none(),
            "UploadPart takes no encryption or class headers: {}",
            r.target
        );
    }
    // The task id and data type on every data file, on its single PUT or its initiation.
    let info = handed_out_info(&emu);
    let prefix = e["SP_TASK_SYNC_SAVE_TO"].clone();
    let mut tagged = 0;
    for r in &uploads {
        let path = r.target.split('?').next().unwrap();
        let Some(name) = path.split_once(&format!("/{prefix}/")).map(|(_, n)| n) else {
            continue;
        };
        let name = percent_decode(name);
        if let Some((task, data_type)) = info.get(&name) {
            assert_eq!(
                r.header("x-amz-meta-task-id"),
                Some(task.as_str()),
                "{name}"
            );
            assert_eq!(
                r.header("x-amz-meta-data-type"),
                Some(data_type.as_str()),
                "{name}"
            );
            tagged += 1;
        } else {
            assert!(name.starts_with(".spinoco-connector/"), "{name}");
        }
    }
    assert!(
        tagged >= info.len(),
        "every data file was uploaded with its metadata ({tagged} of {})",
        info.len()
    );

    // The README's IAM policy allows every action this sync used, and nothing more than
    // those plus the two it explains (abort after a failure, list for 404s).
    let bucket = e["SP_TASK_SYNC_S3_BUCKET"].clone();
    let mut used = BTreeSet::new();
    for r in &requests {
        let path = r.target.split('?').next().unwrap();
        assert!(
            path.starts_with(&format!("/{bucket}/{prefix}/")),
            "every request is for an object under the prefix: {} {}",
            r.method,
            r.target
        );
        used.insert(match (r.method.as_str(), r.target.contains("uploadId=")) {
            ("PUT" | "POST", _) => "s3:PutObject",
            ("GET" | "HEAD", _) => "s3:GetObject",
            ("DELETE", true) => "s3:AbortMultipartUpload",
            ("DELETE", false) => "s3:DeleteObject",
            (m, _) => panic!("an S3 request the policy does not know: {m} {}", r.target),
        });
    }
    assert!(
        used.contains("s3:DeleteObject"),
        "the journal is removed: {used:?}"
    );
    let heading = "#### EKS with IAM roles for service accounts (IRSA)";
    let policy: serde_json::Value =
        serde_json::from_str(&readme_block(heading, "json", 0)).unwrap();
    let allowed = policy_actions(&policy, "Action");
    for a in &used {
        let resources = allowed
            .get(*a)
            .unwrap_or_else(|| panic!("the README policy lacks {a}"));
        assert_eq!(
            resources,
            &["arn:aws:s3:::spinoco-recordings/calls/*"],
            "{a} only under the prefix"
        );
    }
    let extra: BTreeSet<&str> = allowed
        .keys()
        .map(String::as_str)
        .filter(|a| !used.contains(a))
        .collect();
    assert!(
        extra
            .iter()
            .all(|a| ["s3:AbortMultipartUpload", "s3:ListBucket"].contains(a)),
        "the policy allows nothing else: {extra:?}"
    );
    assert_eq!(
        allowed["s3:ListBucket"],
        ["arn:aws:s3:::spinoco-recordings"]
    );
    let trust: serde_json::Value = serde_json::from_str(&readme_block(heading, "json", 1)).unwrap();
    assert_eq!(
        trust["Statement"][0]["Action"],
        "sts:AssumeRoleWithWebIdentity"
    );
}

/// EKS Pod Identity: credentials from the agent with the token from its file, and a
/// full sync with them.
#[test]
fn s3_with_eks_pod_identity() {
    let Some(mut e) = target(Provider::S3, "podid") else {
        return;
    };
    let access_key = e.remove("AWS_ACCESS_KEY_ID").unwrap();
    let secret_key = e.remove("AWS_SECRET_ACCESS_KEY").unwrap();
    let token = token_file("pod-identity", "pod-identity-agent-token");
    // The EKS Pod Identity agent: answers the container credentials request when it
    // carries the token from the file.
    let agent = FakeServer::start(Box::new(move |r| {
        if r.target != "/v1/credentials"
            || r.header("authorization") != Some("pod-identity-agent-token")
        {
            return (403, r#"{"Code":"AccessDenied"}"#.into());
        }
        (
            200,
            format!(
                r#"{{"AccessKeyId":"{access_key}","SecretAccessKey":"{secret_key}","Token":"pod-identity-session","Expiration":"{}"}}"#,
                in_an_hour()
            ),
        )
    }));
    for (k, v) in [
        (
            "AWS_CONTAINER_CREDENTIALS_FULL_URI",
            format!("{}/v1/credentials", agent.url),
        ),
        ("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", token),
        ("AWS_EC2_METADATA_DISABLED", "true".into()),
    ] {
        e.insert(k.into(), v);
    }
    let emu = emulator(EmulatorConfig {
        recording_size: (3_000, 60_000),
        ..account()
    });
    let mut run_env = env(&emu, &scratch("unused"));
    run_env.extend(e.clone());
    let out = run(&run_env, &["--once"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("container credentials endpoint"),
        "{}",
        text(&out)
    );
    assert!(!agent.requests().is_empty());
    let mut direct = e.clone();
    direct.insert(
        "AWS_ACCESS_KEY_ID".into(),
        server_var("SPINOCO_TEST_S3_ACCESS_KEY"),
    );
    direct.insert(
        "AWS_SECRET_ACCESS_KEY".into(),
        server_var("SPINOCO_TEST_S3_SECRET_KEY"),
    );
    assert!(verify(&emu, &direct, &BTreeSet::new()).files > 0);
}

fn server_var(name: &str) -> String {
    std::env::var(name).unwrap()
}
