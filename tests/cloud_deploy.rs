//! Cloud-native deployments end to end: each workload identity ends in a real `--once`
//! sync into its storage test server, with the storage options a bucket policy demands
//! and the task's user metadata on every upload.
//!
//! The token endpoints are fakes started by the test (fake_http); the storage is always
//! the real test server. Where the server ignores a header (s3s-fs keeps no encryption
//! settings), a capturing proxy between the connector and the server shows that it was
//! sent, on which requests, and that it was not sent where S3 refuses it (UploadPart).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::capture::CaptureProxy;
use common::fake_http::{FakeServer, Request};
use common::harness::*;
use common::providers::*;
use spinoco_connector::emulator::EmulatorConfig;

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

fn form_field(r: &Request, name: &str) -> Option<String> {
    r.body.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == name).then(|| spinoco_connector::encoding::percent_decode(v).unwrap())
    })
}

fn in_an_hour() -> String {
    (time::OffsetDateTime::now_utc() + Duration::from_secs(3600))
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

fn token_file(name: &str, token: &str) -> String {
    let dir = scratch(name);
    let path = dir.join("token");
    std::fs::write(&path, token).unwrap();
    path.display().to_string()
}

/// `host:port` of an `http://host:port[/...]` URL.
fn authority(url: &str) -> String {
    url.trim_start_matches("http://").split('/').next().unwrap().to_string()
}

/// The task ids and data types the emulator handed out, by stored name.
fn handed_out_info(emu: &spinoco_connector::emulator::Emulator) -> BTreeMap<String, (String, String)> {
    let mut info = BTreeMap::new();
    for task in emu.handed_out() {
        let id = task["taskId"].as_str().unwrap().to_string();
        for g in task["get"].as_array().cloned().unwrap_or_default() {
            let data_type = g["dataType"].as_str().unwrap_or_default().to_string();
            info.insert(g["fileName"].as_str().unwrap().to_string(), (id.clone(), data_type));
        }
    }
    info
}

#[test]
fn s3_with_web_identity_encryption_class_and_metadata() {
    let Some(mut e) = target(Provider::S3, "irsa") else { return };
    let access_key = e.remove("AWS_ACCESS_KEY_ID").unwrap();
    let secret_key = e.remove("AWS_SECRET_ACCESS_KEY").unwrap();
    let role = "arn:aws:iam::123456789012:role/spinoco-connector";
    let token = token_file("irsa-token", "eyJirsa.projected.token");
    // STS trades the projected token for the server's keys and a session token.
    let sts = FakeServer::start(Box::new(move |r| {
        let ok = form_field(r, "Action").as_deref() == Some("AssumeRoleWithWebIdentity")
            && form_field(r, "RoleArn").as_deref() == Some(role)
            && form_field(r, "WebIdentityToken").as_deref() == Some("eyJirsa.projected.token");
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
        assert!(shown.contains(expected), "check shows {expected:?}:\n{shown}");
    }

    let out = run(&run_env, &["--once"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(!text(&out).contains("sts-session-token-1"), "the session token is not logged");
    assert!(!sts.requests().is_empty());

    // Everything arrived, read back with the server's keys directly.
    let mut direct = e.clone();
    direct.remove("AWS_ROLE_ARN");
    direct.remove("AWS_WEB_IDENTITY_TOKEN_FILE");
    direct.insert("AWS_ACCESS_KEY_ID".into(), server_var("SPINOCO_TEST_S3_ACCESS_KEY"));
    direct.insert("AWS_SECRET_ACCESS_KEY".into(), server_var("SPINOCO_TEST_S3_SECRET_KEY"));
    direct.insert("AWS_ENDPOINT_URL_S3".into(), server.clone());
    let verified = verify(&emu, &direct, &BTreeSet::new());
    assert!(verified.files > 0);

    let requests = proxy.requests();
    assert!(
        requests.iter().all(|r| r.header("x-amz-security-token") == Some("sts-session-token-1")),
        "every request is signed with the STS session"
    );
    let uploads: Vec<&Request> = requests
        .iter()
        .filter(|r| {
            (r.method == "PUT" && !r.target.contains("partNumber="))
                || (r.method == "POST" && r.target.contains("uploads"))
        })
        .collect();
    let parts: Vec<&Request> = requests.iter().filter(|r| r.target.contains("partNumber=")).collect();
    assert!(uploads.iter().any(|r| r.method == "POST"), "a multipart upload was started");
    assert!(!parts.is_empty());
    for r in &uploads {
        assert_eq!(r.header("x-amz-server-side-encryption"), Some("aws:kms"), "{} {}", r.method, r.target);
        assert_eq!(r.header("x-amz-server-side-encryption-aws-kms-key-id"), Some(kms_key));
        assert_eq!(r.header("x-amz-server-side-encryption-bucket-key-enabled"), Some("true"));
        assert_eq!(r.header("x-amz-storage-class"), Some("REDUCED_REDUNDANCY"));
    }
    for r in &parts {
        assert!(
            r.header("x-amz-server-side-encryption").is_none() && r.header("x-amz-storage-class").is_none(),
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
        let Some(name) = path.split_once(&format!("/{prefix}/")).map(|(_, n)| n) else { continue };
        let name = spinoco_connector::encoding::percent_decode(name).unwrap();
        if let Some((task, data_type)) = info.get(&name) {
            assert_eq!(r.header("x-amz-meta-task_id"), Some(task.as_str()), "{name}");
            assert_eq!(r.header("x-amz-meta-data_type"), Some(data_type.as_str()), "{name}");
            tagged += 1;
        } else {
            assert!(name.starts_with(".spinoco-connector/"), "{name}");
        }
    }
    assert!(tagged >= info.len(), "every data file was uploaded with its metadata ({tagged} of {})", info.len());
}

fn server_var(name: &str) -> String {
    std::env::var(name).unwrap()
}

/// A fake Google STS and IAM credentials: the subject token must be the one in the
/// file; the federated token buys the service account's token.
fn fake_google(subject: &'static str) -> FakeServer {
    FakeServer::start(Box::new(move |r| {
        if r.target == "/v1/token" {
            let ok = form_field(r, "grant_type").as_deref()
                == Some("urn:ietf:params:oauth:grant-type:token-exchange")
                && form_field(r, "subject_token").as_deref() == Some(subject);
            return if ok {
                (200, r#"{"access_token":"federated-1","token_type":"Bearer","expires_in":3600}"#.into())
            } else {
                (400, r#"{"error":"invalid_grant"}"#.into())
            };
        }
        if r.target.ends_with(":generateAccessToken") && r.header("authorization") == Some("Bearer federated-1") {
            return (200, format!(r#"{{"accessToken":"gcs-sa-token","expireTime":"{}"}}"#, in_an_hour()));
        }
        (403, r#"{"error":{"status":"PERMISSION_DENIED","message":"no"}}"#.into())
    }))
}

/// The object resource as fake-gcs-server keeps it.
fn gcs_object(endpoint: &str, bucket: &str, name: &str) -> serde_json::Value {
    let url = format!(
        "{endpoint}/storage/v1/b/{bucket}/o/{}",
        spinoco_connector::encoding::percent_encode(name, false)
    );
    let mut answer = spinoco_connector::http::agent(Duration::from_secs(10), 1).get(&url).call().unwrap();
    assert_eq!(answer.status().as_u16(), 200, "{url}");
    serde_json::from_str(&answer.body_mut().read_to_string().unwrap()).unwrap()
}

#[test]
fn gcs_with_workload_identity_federation_kms_key_class_and_metadata() {
    let Some(mut e) = target(Provider::Gcs, "wif") else { return };
    let subject = "eyJgke.or.eks.projected";
    let token = token_file("wif-subject", subject);
    let google = fake_google(subject);
    let creds = scratch("wif-creds").join("external-account.json");
    std::fs::write(
        &creds,
        serde_json::json!({
            "type": "external_account",
            "audience": "//iam.googleapis.com/projects/123/locations/global/workloadIdentityPools/k8s/providers/oidc",
            "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
            "token_url": format!("{}/v1/token", google.url),
            "service_account_impersonation_url": format!(
                "{}/v1/projects/-/serviceAccounts/connector@p.iam.gserviceaccount.com:generateAccessToken",
                google.url
            ),
            "credential_source": { "file": token },
        })
        .to_string(),
    )
    .unwrap();
    let server = e["SP_TASK_SYNC_GCS_ENDPOINT"].clone();
    let proxy = CaptureProxy::start(&authority(&server));
    let kms = "projects/spinoco-test/locations/europe-west3/keyRings/connector/cryptoKeys/recordings";
    for (k, v) in [
        ("SP_TASK_SYNC_GCS_ENDPOINT", proxy.url()),
        ("GOOGLE_APPLICATION_CREDENTIALS", creds.display().to_string()),
        ("SP_TASK_SYNC_GCS_KMS_KEY_NAME", kms.into()),
        ("SP_TASK_SYNC_GCS_STORAGE_CLASS", "NEARLINE".into()),
        ("SP_TASK_SYNC_GCS_CHUNK_SIZE", "1MiB".into()),
    ] {
        e.insert(k.into(), v);
    }
    let emu = emulator(account());
    let mut run_env = env(&emu, &scratch("unused"));
    run_env.extend(e.clone());
    let check = run(&run_env, &["check"]);
    let shown = text(&check);
    assert!(check.status.success(), "{shown}");
    for expected in ["workload identity federation from", "connector@p.iam.gserviceaccount.com", kms, "NEARLINE"] {
        assert!(shown.contains(expected), "check shows {expected:?}:\n{shown}");
    }
    let out = run(&run_env, &["--once"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(!text(&out).contains("gcs-sa-token") && !text(&out).contains(subject));

    let mut direct = e.clone();
    direct.insert("SP_TASK_SYNC_GCS_ENDPOINT".into(), server.clone());
    direct.remove("GOOGLE_APPLICATION_CREDENTIALS");
    let verified = verify(&emu, &direct, &BTreeSet::new());
    assert!(verified.files > 0);

    let requests = proxy.requests();
    assert!(
        requests.iter().all(|r| r.header("authorization") == Some("Bearer gcs-sa-token")),
        "every request carries the impersonated service account's token"
    );
    // The uploads' starts (the chunks go to the session's URL, which the key is not on).
    let uploads: Vec<&Request> = requests
        .iter()
        .filter(|r| r.method == "POST" && r.target.starts_with("/upload/"))
        .collect();
    assert!(uploads.iter().any(|r| r.target.contains("uploadType=resumable")), "a resumable upload ran");
    assert!(uploads.iter().any(|r| r.target.contains("uploadType=multipart")));
    let encoded_kms = spinoco_connector::encoding::percent_encode(kms, false);
    for r in &uploads {
        assert!(r.target.contains(&format!("kmsKeyName={encoded_kms}")), "{}", r.target);
        // fake-gcs-server keeps no class from a resumable start: it is checked as sent.
        assert!(r.body.contains(r#""storageClass":"NEARLINE""#), "{} {}", r.target, r.body);
    }
    // The metadata reached the server with every data file.
    let bucket = &e["SP_TASK_SYNC_GCS_BUCKET"];
    let prefix = &e["SP_TASK_SYNC_SAVE_TO"];
    for (name, (task, data_type)) in handed_out_info(&emu) {
        let o = gcs_object(&server, bucket, &format!("{prefix}/{name}"));
        assert_eq!(o["metadata"]["task_id"], task.as_str(), "{name}: {o}");
        assert_eq!(o["metadata"]["data_type"], data_type.as_str(), "{name}: {o}");
    }
}
