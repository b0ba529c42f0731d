//! GCS with workload identity federation (an `external_account` file: Google STS and
//! service-account impersonation), a KMS key, a storage class, the task's metadata on
//! every object, and the README's custom roles checked against the requests.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::common::capture::CaptureProxy;
use crate::common::codec::percent_encode;
use crate::common::fake_http::{FakeServer, Request};
use crate::common::harness::*;
use crate::common::providers::*;

use super::super::in_an_hour;
use super::{account, authority, handed_out_info, readme_block, token_file};

/// A fake Google STS and IAM credentials: the subject token must be the one in the
/// file; the federated token buys the service account's token.
fn fake_google(subject: &'static str) -> FakeServer {
    FakeServer::start(Box::new(move |r| {
        if r.target == "/v1/token" {
            let ok = r.field("grant_type").as_deref()
                == Some("urn:ietf:params:oauth:grant-type:token-exchange")
                && r.field("subject_token").as_deref() == Some(subject);
            return if ok {
                (
                    200,
                    r#"{"access_token":"federated-1","token_type":"Bearer","expires_in":3600}"#
                        .into(),
                )
            } else {
                (400, r#"{"error":"invalid_grant"}"#.into())
            };
        }
        if r.target.ends_with(":generateAccessToken")
            && r.header("authorization") == Some("Bearer federated-1")
        {
            return (
                200,
                format!(
                    r#"{{"accessToken":"gcs-sa-token","expireTime":"{}"}}"#,
                    in_an_hour()
                ),
            );
        }
        (
            403,
            r#"{"error":{"status":"PERMISSION_DENIED","message":"no"}}"#.into(),
        )
    }))
}

/// The object resource as fake-gcs-server keeps it.
fn gcs_object(endpoint: &str, bucket: &str, name: &str) -> serde_json::Value {
    let url = format!(
        "{endpoint}/storage/v1/b/{bucket}/o/{}",
        percent_encode(name)
    );
    let mut answer = spinoco_connector::agent(Duration::from_secs(10), 1)
        .get(&url)
        .call()
        .unwrap();
    assert_eq!(answer.status().as_u16(), 200, "{url}");
    serde_json::from_str(&answer.body_mut().read_to_string().unwrap()).unwrap()
}

/// Workload identity federation with impersonation syncs fully; every upload names the
/// KMS key and the storage class, every object carries its task's metadata, and the
/// README's roles are exactly the permissions the sync used.
#[test]
fn gcs_with_workload_identity_federation_kms_key_class_and_metadata() {
    let Some(mut e) = target(Provider::Gcs, "wif") else {
        return;
    };
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
    let kms =
        "projects/spinoco-test/locations/europe-west3/keyRings/connector/cryptoKeys/recordings";
    for (k, v) in [
        ("SP_TASK_SYNC_GCS_ENDPOINT", proxy.url()),
        (
            "GOOGLE_APPLICATION_CREDENTIALS",
            creds.display().to_string(),
        ),
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
    for expected in [
        "workload identity federation from",
        "connector@p.iam.gserviceaccount.com",
        kms,
        "NEARLINE",
    ] {
        assert!(
            shown.contains(expected),
            "check shows {expected:?}:\n{shown}"
        );
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
        requests
            .iter()
            .all(|r| r.header("authorization") == Some("Bearer gcs-sa-token")),
        "every request carries the impersonated service account's token"
    );
    // The uploads' starts (the chunks go to the session's URL, which the key is not on).
    let uploads: Vec<&Request> = requests
        .iter()
        .filter(|r| r.method == "POST" && r.target.starts_with("/upload/"))
        .collect();
    assert!(
        uploads
            .iter()
            .any(|r| r.target.contains("uploadType=resumable")),
        "a resumable upload ran"
    );
    assert!(uploads
        .iter()
        .any(|r| r.target.contains("uploadType=multipart")));
    let encoded_kms = "projects%2Fspinoco-test%2Flocations%2Feurope-west3%2FkeyRings%2Fconnector%2FcryptoKeys%2Frecordings";
    for r in &uploads {
        assert!(
            r.target.contains(&format!("kmsKeyName={encoded_kms}")),
            "{}",
            r.target
        );
        // fake-gcs-server keeps no class from a resumable start: it is checked as sent.
        assert!(
            r.body.contains(r#""storageClass":"NEARLINE""#),
            "{} {}",
            r.target,
            r.body
        );
    }
    // The metadata reached the server with every data file.
    let bucket = &e["SP_TASK_SYNC_GCS_BUCKET"];
    let prefix = &e["SP_TASK_SYNC_SAVE_TO"];
    for (name, (task, data_type)) in handed_out_info(&emu) {
        let o = gcs_object(&server, bucket, &format!("{prefix}/{name}"));
        assert_eq!(o["metadata"]["task-id"], task.as_str(), "{name}: {o}");
        assert_eq!(
            o["metadata"]["data-type"],
            data_type.as_str(),
            "{name}: {o}"
        );
    }

    // The README's custom roles hold every permission this sync needed, and no other.
    let mut used = BTreeSet::new();
    let mut uploaded = BTreeSet::new();
    let mut overwritten = false;
    let object = format!("/storage/v1/b/{bucket}/o/");
    for r in &requests {
        assert!(
            r.target.contains("userProject=") || r.target.contains("upload_id="),
            "userProject on {}",
            r.target
        );
        let path = r.target.split('?').next().unwrap();
        if r.target.starts_with("/upload/") {
            if r.method == "POST" {
                let name = r
                    .target
                    .split("name=")
                    .nth(1)
                    .unwrap()
                    .split('&')
                    .next()
                    .unwrap();
                assert!(name.starts_with(&format!("{prefix}%2F")), "{}", r.target);
                overwritten |= !uploaded.insert(name.to_string());
            }
            used.insert("storage.objects.create");
        } else if let Some(name) = path.strip_prefix(&object) {
            assert!(name.starts_with(&format!("{prefix}%2F")), "{}", r.target);
            used.insert(if r.method == "DELETE" {
                "storage.objects.delete"
            } else {
                "storage.objects.get"
            });
        } else if path == format!("/storage/v1/b/{bucket}") {
            used.insert("storage.buckets.get");
        } else {
            panic!(
                "a GCS request the roles do not know: {} {}",
                r.method, r.target
            );
        }
    }
    assert!(
        overwritten,
        "the journal is rewritten, which GCS counts as a delete too"
    );
    used.insert("storage.objects.delete");
    let commands = readme_block("#### GKE with workload identity", "sh", 0);
    let granted: BTreeSet<&str> = commands
        .split("--permissions=")
        .skip(1)
        .flat_map(|p| p.split_whitespace().next().unwrap().split(','))
        .collect();
    assert_eq!(
        granted, used,
        "the README's roles are exactly what the connector used"
    );
    assert!(
        commands.contains("roles/serviceusage.serviceUsageConsumer"),
        "for userProject"
    );
    assert!(commands.contains(
        r#"resource.name.startsWith("projects/_/buckets/spinoco-recordings/objects/calls/")"#
    ));
}
