//! Cloud-native deployments end to end: each workload identity ends in a real `--once`
//! sync into its storage test server, with the storage options a bucket policy demands
//! and the task's user metadata on every upload.
//!
//! The token endpoints are fakes started by the test (fake_http); the storage is always
//! the real test server: s3s-fs (which takes STS keys with a session token), fake-gcs-
//! server (no authentication: the token is checked on the wire), and an Azurite of the
//! test's own with OAuth over https, which checks a bearer token's audience, issuer and
//! lifetime (not its signature) and refuses one for another audience. Where the server
//! ignores a header (s3s-fs keeps no encryption settings, fake-gcs-server no KMS key or
//! class of a resumable upload), a capturing proxy between the connector and the server
//! shows that it was sent, on which requests, and that it was not sent where the
//! service refuses it (UploadPart, Put Block).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::common::capture::CaptureProxy;
use crate::common::fake_http::{FakeServer, Request};
use crate::common::harness::*;
use crate::common::providers::*;
use spinoco_connector::emulator::EmulatorConfig;
use spinoco_connector::store::BlobStore;

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
    url.trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap()
        .to_string()
}

/// The task ids and data types the emulator handed out, by stored name.
fn handed_out_info(
    emu: &spinoco_connector::emulator::Emulator,
) -> BTreeMap<String, (String, String)> {
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
        let name = spinoco_connector::encoding::percent_decode(name).unwrap();
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

/// The `n`-th fenced block of `lang` after the README heading `heading`.
fn readme_block(heading: &str, lang: &str, n: usize) -> String {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
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
        spinoco_connector::encoding::percent_encode(name, false)
    );
    let mut answer = spinoco_connector::http::agent(Duration::from_secs(10), 1)
        .get(&url)
        .call()
        .unwrap();
    assert_eq!(answer.status().as_u16(), 200, "{url}");
    serde_json::from_str(&answer.body_mut().read_to_string().unwrap()).unwrap()
}

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
    let encoded_kms = spinoco_connector::encoding::percent_encode(kms, false);
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

// ---------------------------------------------------------------- Azure

/// A private CA and a certificate for 127.0.0.1 signed by it: the folder holds ca.pem,
/// server.pem and server.key.
fn pki() -> std::path::PathBuf {
    let pki = crate::common::pki::Pki::new("azurite");
    pki.server("server", "IP:127.0.0.1", 30);
    pki.dir
}

/// An Azurite blob service of its own with OAuth on (it accepts bearer tokens only over
/// https): it checks a token's audience, issuer and lifetime, not its signature.
struct OAuthAzurite {
    child: std::process::Child,
    port: u16,
}

impl OAuthAzurite {
    fn start(pki: &std::path::Path) -> Option<OAuthAzurite> {
        // Installed by tests/servers/azurite.sh, which the test script runs.
        let bin = crate::common::behaviour::server("SPINOCO_TEST_AZURITE_BIN")?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log = std::fs::File::create(pki.join("azurite.log")).unwrap();
        let child = std::process::Command::new(bin)
            .args([
                "--blobHost",
                "127.0.0.1",
                "--blobPort",
                &port.to_string(),
                "--inMemoryPersistence",
            ])
            .args([
                "--skipApiVersionCheck",
                "--loose",
                "--disableTelemetry",
                "--oauth",
                "basic",
            ])
            .arg("--cert")
            .arg(pki.join("server.pem"))
            .arg("--key")
            .arg(pki.join("server.key"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let a = OAuthAzurite { child, port };
        wait_until(
            "azurite with OAuth listens",
            Duration::from_secs(30),
            || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(),
        );
        Some(a)
    }

    fn blob_endpoint(&self) -> String {
        format!("https://127.0.0.1:{}/devstoreaccount1", self.port)
    }
}

impl Drop for OAuthAzurite {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An unsigned JWT with the claims Azurite checks.
fn entra_jwt(aud: &str) -> String {
    let b64 =
        |v: serde_json::Value| spinoco_connector::encoding::base64url(v.to_string().as_bytes());
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    format!(
        "{}.{}.{}",
        b64(serde_json::json!({"typ": "JWT", "alg": "RS256"})),
        b64(serde_json::json!({
            "aud": aud, "iss": "https://sts.windows.net/72f988bf-86f1-41af-91ab-2d7cd011db47/",
            "iat": now - 60, "nbf": now - 60, "exp": now + 3600, "oid": "spinoco-connector",
        })),
        spinoco_connector::encoding::base64url(b"not-checked"),
    )
}

/// Like [`entra_jwt`], but expired a minute ago.
fn expired_jwt(aud: &str) -> String {
    let b64 =
        |v: serde_json::Value| spinoco_connector::encoding::base64url(v.to_string().as_bytes());
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    format!(
        "{}.{}.{}",
        b64(serde_json::json!({"typ": "JWT", "alg": "RS256"})),
        b64(serde_json::json!({
            "aud": aud, "iss": "https://sts.windows.net/72f988bf-86f1-41af-91ab-2d7cd011db47/",
            "iat": now - 3600, "nbf": now - 3600, "exp": now - 60,
        })),
        spinoco_connector::encoding::base64url(b"not-checked"),
    )
}

/// A Shared Key store over https to `endpoint` that trusts `ca`: for creating the
/// container and reading back what the connector stored.
fn key_store(
    endpoint: &str,
    ca: &std::path::Path,
    container: &str,
) -> spinoco_connector::store::azure::AzureStore {
    use spinoco_connector::store::azure::{AzureSettings, AzureStore};
    let env = spinoco_connector::env::Env::from_pairs([("SP_TLS_CA_FILE", ca.to_str().unwrap())]);
    let mut errors = Vec::new();
    let network = spinoco_connector::net::Network::from_env(&env, &mut errors);
    assert!(errors.is_empty(), "{errors:?}");
    let http = spinoco_connector::http::Http::new(Duration::from_secs(10), 2, &network);
    let dsn =
        format!("AccountName=devstoreaccount1;AccountKey={AZURITE_KEY};BlobEndpoint={endpoint}");
    let settings = AzureSettings {
        account: spinoco_connector::store::azure_auth::parse_connection_string(&dsn).unwrap(),
        container: container.into(),
        prefix: String::new(),
        block_size: 8 << 20,
        access_tier: None,
    };
    AzureStore::new(
        settings,
        http.agent,
        spinoco_connector::retry::RetryBudget::tries(3),
    )
}

#[test]
fn azure_workload_and_managed_identity_tokens_into_azurite_with_oauth() {
    let pki = pki();
    let Some(azurite) = OAuthAzurite::start(&pki) else {
        return;
    };
    let ca = pki.join("ca.pem");
    let container = "spinoco-wi";
    let admin = key_store(&azurite.blob_endpoint(), &ca, container);
    admin.ensure_container().unwrap();

    let tenant = "72f988bf-86f1-41af-91ab-2d7cd011db47";
    let client = "6f1c6a0e-1d2b-4a5c-9e8f-0a1b2c3d4e5f";
    let entra = FakeServer::start(Box::new(move |r| {
        if r.target != format!("/{tenant}/oauth2/v2.0/token")
            || form_field(r, "client_id").as_deref() != Some(client)
            || form_field(r, "scope").as_deref() != Some("https://storage.azure.com/.default")
        {
            return (400, r#"{"error":"invalid_request"}"#.into());
        }
        let aud = match form_field(r, "client_assertion").as_deref() {
            Some("eyJaks.federated") => "https://storage.azure.com",
            // A token for another resource: the storage must refuse it.
            _ => "https://vault.azure.net",
        };
        (
            200,
            format!(
                r#"{{"token_type":"Bearer","expires_in":3599,"access_token":"{}"}}"#,
                entra_jwt(aud)
            ),
        )
    }));
    let token = token_file("aks-wi", "eyJaks.federated");
    let prefix = crate::common::behaviour::unique("aks");
    let emu = emulator(account());
    let mut e = env(&emu, &scratch("unused"));
    for (k, v) in [
        ("SP_TASK_SYNC_STORAGE_PROVIDER", "azure".to_string()),
        ("SP_TASK_SYNC_AZURE_ACCOUNT_URL", azurite.blob_endpoint()),
        ("SP_TASK_SYNC_AZURE_CLIENT_NAME", container.into()),
        ("SP_TASK_SYNC_SAVE_TO", prefix.clone()),
        ("SP_TASK_SYNC_AZURE_BLOCK_SIZE", "1MiB".into()),
        ("SP_TASK_SYNC_AZURE_ACCESS_TIER", "Cool".into()),
        ("AZURE_CLIENT_ID", client.into()),
        ("AZURE_TENANT_ID", tenant.into()),
        ("AZURE_FEDERATED_TOKEN_FILE", token.clone()),
        ("AZURE_AUTHORITY_HOST", format!("{}/", entra.url)),
        ("SSL_CERT_FILE", ca.display().to_string()),
    ] {
        e.insert(k.into(), v);
    }
    let check = run(&e, &["check"]);
    let shown = text(&check);
    assert!(check.status.success(), "{shown}");
    assert!(
        shown.contains("workload identity: client 6f1c6a0e-1d2b-4a5c-9e8f-0a1b2c3d4e5f"),
        "{shown}"
    );
    assert!(
        shown.contains("SP_TASK_SYNC_AZURE_ACCESS_TIER") && shown.contains("Cool"),
        "{shown}"
    );

    let out = run(&e, &["--once"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(!entra.requests().is_empty());
    // Neither the federated token nor the access token (a JWT: `eyJ0eXAi...`) is logged.
    assert!(
        !text(&out).contains("eyJaks") && !text(&out).contains("eyJ0eXAi"),
        "{}",
        text(&out)
    );
    let want = expected(&emu);
    assert!(!want.is_empty());
    for (name, path) in &want {
        let got = admin.get(&format!("{prefix}/{name}")).unwrap();
        assert!(
            got == emu.content(path),
            "{name} stored with the platform's bytes"
        );
    }

    // A user-assigned managed identity through the instance metadata service (its host
    // replaced as the Azure SDKs allow), into a fresh prefix from a fresh account.
    let imds = FakeServer::start(Box::new(move |r| {
        let ok = r.target.starts_with("/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https%3A%2F%2Fstorage.azure.com")
            && r.target.contains(&format!("client_id={client}"))
            && r.header("metadata") == Some("true");
        if !ok {
            return (
                400,
                r#"{"error":"invalid_request","error_description":"Identity not found"}"#.into(),
            );
        }
        let jwt = entra_jwt("https://storage.azure.com");
        (
            200,
            format!(
                r#"{{"access_token":"{jwt}","expires_in":"86399","resource":"https://storage.azure.com","token_type":"Bearer"}}"#
            ),
        )
    }));
    let emu2 = emulator(EmulatorConfig {
        seed: 43,
        recording_size: (3_000, 60_000),
        ..account()
    });
    let prefix2 = crate::common::behaviour::unique("vm");
    let mut e2 = env(&emu2, &scratch("unused"));
    e2.extend(e.clone().into_iter().filter(|(k, _)| {
        !k.starts_with("AZURE_") && k != "SP_TASK_SYNC_SAVE_TO" && !k.starts_with("SP_API")
    }));
    e2.insert("SP_TASK_SYNC_SAVE_TO".into(), prefix2.clone());
    e2.insert("AZURE_CLIENT_ID".into(), client.into());
    e2.insert("AZURE_POD_IDENTITY_AUTHORITY_HOST".into(), imds.url.clone());
    let out = run(&e2, &["--once"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(!imds.requests().is_empty());
    for (name, path) in &expected(&emu2) {
        assert!(
            admin.get(&format!("{prefix2}/{name}")).unwrap() == emu2.content(path),
            "{name}"
        );
    }

    // The first token Entra hands out has already expired (while its expires_in says an
    // hour): Azurite refuses it, the token is dropped, a fresh one is fetched, and the
    // sync goes on.
    let asked = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = asked.clone();
    let entra3 = FakeServer::start(Box::new(move |_| {
        let jwt = if counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
            expired_jwt("https://storage.azure.com")
        } else {
            entra_jwt("https://storage.azure.com")
        };
        (
            200,
            format!(r#"{{"token_type":"Bearer","expires_in":3599,"access_token":"{jwt}"}}"#),
        )
    }));
    let emu3 = emulator(EmulatorConfig {
        seed: 44,
        recording_size: (3_000, 60_000),
        ..account()
    });
    let prefix3 = crate::common::behaviour::unique("expired");
    let mut e3 = env(&emu3, &scratch("unused"));
    e3.extend(
        e.clone()
            .into_iter()
            .filter(|(k, _)| k != "SP_TASK_SYNC_SAVE_TO" && !k.starts_with("SP_API")),
    );
    e3.insert("SP_TASK_SYNC_SAVE_TO".into(), prefix3.clone());
    e3.insert("AZURE_AUTHORITY_HOST".into(), format!("{}/", entra3.url));
    let out = run(&e3, &["--once"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        asked.load(std::sync::atomic::Ordering::SeqCst),
        2,
        "one refused token, one fresh"
    );
    for (name, path) in &expected(&emu3) {
        assert!(
            admin.get(&format!("{prefix3}/{name}")).unwrap() == emu3.content(path),
            "{name}"
        );
    }

    // A token for another audience: Azurite refuses it, the run stops (exit 5) before
    // the feed hands out anything more.
    std::fs::write(&token, "eyJaks.someone-else").unwrap();
    let before = emu.handed_out().len();
    e.insert("SP_TASK_SYNC_TAG".into(), "other-tag".into());
    let refused = run(&e, &["--once"]);
    assert_eq!(refused.status.code(), Some(5), "{}", text(&refused));
    assert!(
        text(&refused).contains("403") || text(&refused).contains("401"),
        "{}",
        text(&refused)
    );
    assert_eq!(
        emu.handed_out().len(),
        before,
        "nothing handed out without a usable storage"
    );
}

#[test]
fn azure_connection_string_keeps_working_with_access_tier_and_metadata() {
    let Some(mut e) = target(Provider::Azure, "tier") else {
        return;
    };
    let server = endpoint(&e).unwrap();
    let proxy = CaptureProxy::start(&authority(&server));
    e = with_endpoint(&e, &proxy.url());
    e.insert("SP_TASK_SYNC_AZURE_ACCESS_TIER".into(), "Cold".into());
    e.insert("SP_TASK_SYNC_AZURE_BLOCK_SIZE".into(), "1MiB".into());
    let emu = emulator(account());
    let mut run_env = env(&emu, &scratch("unused"));
    run_env.extend(e.clone());
    let out = run(&run_env, &["--once"]);
    assert!(out.status.success(), "{}", text(&out));
    let verified = verify(&emu, &with_endpoint(&e, &server), &BTreeSet::new());
    assert!(verified.files > 0);

    let requests = proxy.requests();
    let commits: Vec<&Request> = requests
        .iter()
        .filter(|r| {
            r.method == "PUT"
                && (!r.target.contains("comp=") || r.target.contains("comp=blocklist"))
        })
        .filter(|r| !r.target.contains("restype=container"))
        .collect();
    let blocks: Vec<&Request> = requests
        .iter()
        .filter(|r| r.target.contains("comp=block&"))
        .collect();
    assert!(
        commits.iter().any(|r| r.target.contains("comp=blocklist")),
        "a block upload was committed"
    );
    assert!(!blocks.is_empty());
    for r in &commits {
        assert_eq!(r.header("x-ms-access-tier"), Some("Cold"), "{}", r.target);
        // Cold needs a newer REST version than the default.
        assert_eq!(r.header("x-ms-version"), Some("2021-12-02"), "{}", r.target);
    }
    for r in &blocks {
        assert!(
            r.header("x-ms-access-tier").is_none() && r.header("x-ms-meta-task_id").is_none(),
            "{}",
            r.target
        );
    }
    let info = handed_out_info(&emu);
    let mut tagged = 0;
    for r in &commits {
        let path = spinoco_connector::encoding::percent_decode(r.target.split('?').next().unwrap())
            .unwrap();
        if let Some((_, (task, data_type))) = info
            .iter()
            .find(|(name, _)| path.ends_with(&format!("/{name}")))
        {
            assert_eq!(r.header("x-ms-meta-task_id"), Some(task.as_str()), "{path}");
            assert_eq!(
                r.header("x-ms-meta-data_type"),
                Some(data_type.as_str()),
                "{path}"
            );
            tagged += 1;
        }
    }
    assert!(
        tagged >= info.len(),
        "{tagged} of {} files committed with their metadata",
        info.len()
    );

    // The README's role holds exactly the data actions this sync used.
    let prefix = &e["SP_TASK_SYNC_SAVE_TO"];
    let mut used = BTreeSet::new();
    for r in &requests {
        let path = r.target.split('?').next().unwrap();
        assert!(
            path.starts_with(&format!("/devstoreaccount1/{AZURE_CONTAINER}/{prefix}/")),
            "{}",
            r.target
        );
        used.insert(match r.method.as_str() {
            "PUT" => "Microsoft.Storage/storageAccounts/blobServices/containers/blobs/write",
            "GET" | "HEAD" => {
                "Microsoft.Storage/storageAccounts/blobServices/containers/blobs/read"
            }
            "DELETE" => "Microsoft.Storage/storageAccounts/blobServices/containers/blobs/delete",
            m => panic!("an Azure request the role does not know: {m} {}", r.target),
        });
    }
    let role: serde_json::Value =
        serde_json::from_str(&readme_block("#### AKS with workload identity", "json", 0)).unwrap();
    let granted: BTreeSet<&str> = role["DataActions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(granted, used);
    assert_eq!(
        role["Actions"],
        serde_json::json!([]),
        "no control-plane rights"
    );
}

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
