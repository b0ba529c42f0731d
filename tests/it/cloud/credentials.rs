//! The AWS credential chain against fake STS, ECS and IMDS endpoints on 127.0.0.1: the
//! order (environment, web identity, file, container, instance metadata), the IMDSv2
//! token handshake, EKS Pod Identity's rotated token file, the token cache behind the
//! provider (refresh before expiry, a failed refresh, credentials dropped after a
//! refusal), and errors without secrets.

use std::net::TcpListener;
use std::sync::Mutex;
use std::time::Duration;

use crate::common::fake_http::FakeServer;
use crate::common::harness::scratch;
use spinoco_connector::s3::CredentialSettings;
use spinoco_connector::s3::{CredentialProvider, Source};
use spinoco_connector::Env;
use spinoco_connector::StoreErrorKind;

use super::{in_an_hour, rfc3339_from_now};

fn creds_json(key: &str, expires_in: Duration) -> String {
    let expiration = rfc3339_from_now(expires_in);
    format!(
        r#"{{"Code":"Success","AccessKeyId":"{key}","SecretAccessKey":"secret-of-{key}","Token":"token-of-{key}","Expiration":"{expiration}"}}"#
    )
}

const IMDS_TOKEN: &str = "imds-session-token-123";

/// How the fake IMDS answers one request for the role's credentials.
#[derive(Clone, Copy)]
enum Answer {
    /// Keys named after `key`, expiring `life` from now.
    Keys(&'static str, Duration),
    /// `500`: the endpoint is down for a moment.
    Fails,
}

/// A fake IMDSv2: hands out a session token on PUT and insists on it for the GETs.
/// The `answers` go to the credentials requests one after another, the last one
/// repeated.
fn fake_imds(answers: Vec<Answer>) -> FakeServer {
    let next = Mutex::new(0usize);
    FakeServer::start(Box::new(move |r| {
        match (r.method.as_str(), r.target.as_str()) {
            ("PUT", "/latest/api/token")
                if r.header("x-aws-ec2-metadata-token-ttl-seconds").is_some() =>
            {
                (200, IMDS_TOKEN.to_string())
            }
            (_, p)
                if p.starts_with("/latest/meta-data/")
                    && r.header("x-aws-ec2-metadata-token") != Some(IMDS_TOKEN) =>
            {
                (401, String::new())
            }
            ("GET", "/latest/meta-data/iam/security-credentials/") => {
                (200, "spinoco-role\n".to_string())
            }
            ("GET", "/latest/meta-data/iam/security-credentials/spinoco-role") => {
                let mut n = next.lock().unwrap();
                let answer = answers[(*n).min(answers.len() - 1)];
                *n += 1;
                match answer {
                    Answer::Keys(key, life) => (200, creds_json(key, life)),
                    Answer::Fails => (500, String::new()),
                }
            }
            _ => (404, String::new()),
        }
    }))
}

fn fake_ecs() -> FakeServer {
    FakeServer::start(Box::new(|r| {
        match (r.target.as_str(), r.header("authorization")) {
            ("/v2/credentials/task", Some("ecs-auth-token")) => {
                (200, creds_json("AK_ECS", Duration::from_secs(3600)))
            }
            _ => (403, String::new()),
        }
    }))
}

fn provider(pairs: &[(&str, &str)], ecs_host: Option<&str>) -> CredentialProvider {
    let mut errors = Vec::new();
    let mut settings =
        CredentialSettings::from_env(&Env::from_pairs(pairs.iter().copied()), &mut errors);
    assert!(errors.is_empty(), "{errors:?}");
    if let Some(host) = ecs_host {
        settings.ecs_host = host.to_string();
    }
    let agent = spinoco_connector::agent(Duration::from_secs(5), 1);
    CredentialProvider::new(settings, agent)
}

/// The chain takes the first source that has credentials: the environment, then the
/// shared file (no network), then the container endpoint (relative and full URI), then
/// IMDSv2 with its session-token handshake.
#[test]
fn chain_order_env_file_container_imds() {
    let dir = scratch("aws-creds");
    let file = dir.join("credentials");
    std::fs::write(
        &file,
        "[default]\naws_access_key_id = AK_DEFAULT\naws_secret_access_key = s\n\
         [work]\naws_access_key_id = AK_FILE\naws_secret_access_key = secret-file\n",
    )
    .unwrap();
    let file_str = file.to_str().unwrap().to_string();
    let missing = dir.join("missing").to_str().unwrap().to_string();
    let ecs = fake_ecs();
    let imds = fake_imds(vec![Answer::Keys("AK_IMDS", Duration::from_secs(3600))]);

    let env_vars = [
        ("AWS_ACCESS_KEY_ID", "AK_ENV"),
        ("AWS_SECRET_ACCESS_KEY", "secret-env"),
    ];
    let file_vars = [
        ("AWS_SHARED_CREDENTIALS_FILE", file_str.as_str()),
        ("AWS_PROFILE", "work"),
    ];
    let ecs_vars = [
        (
            "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
            "/v2/credentials/task",
        ),
        ("AWS_CONTAINER_AUTHORIZATION_TOKEN", "ecs-auth-token"),
    ];
    let imds_vars = [("AWS_EC2_METADATA_SERVICE_ENDPOINT", imds.url.as_str())];

    let all: Vec<(&str, &str)> = [&env_vars[..], &file_vars, &ecs_vars, &imds_vars].concat();
    let c = provider(&all, Some(&ecs.url)).current().unwrap();
    assert_eq!(
        (c.source, c.access_key_id.expose()),
        (Source::Environment, "AK_ENV")
    );

    let no_env: Vec<(&str, &str)> = [&file_vars[..], &ecs_vars, &imds_vars].concat();
    let c = provider(&no_env, Some(&ecs.url)).current().unwrap();
    assert_eq!(
        (c.source, c.access_key_id.expose()),
        (Source::SharedFile, "AK_FILE")
    );
    assert_eq!(c.secret_access_key.expose(), "secret-file");
    assert!(
        ecs.requests().is_empty() && imds.requests().is_empty(),
        "env and file need no network"
    );

    let no_file: Vec<(&str, &str)> = [
        &[("AWS_SHARED_CREDENTIALS_FILE", missing.as_str())][..],
        &ecs_vars,
        &imds_vars,
    ]
    .concat();
    let c = provider(&no_file, Some(&ecs.url)).current().unwrap();
    assert_eq!(
        (c.source, c.access_key_id.expose()),
        (Source::Container, "AK_ECS")
    );
    assert_eq!(c.session_token.unwrap().expose(), "token-of-AK_ECS");
    assert!(c.expires.is_some());
    assert_eq!(ecs.requests().len(), 1);
    assert!(
        imds.requests().is_empty(),
        "the container endpoint comes before IMDS"
    );

    // The full URI form, as ECS on Fargate or EKS Pod Identity set it.
    let full = format!("{}/v2/credentials/task", ecs.url);
    let full_vars = [
        ("AWS_SHARED_CREDENTIALS_FILE", missing.as_str()),
        ("AWS_CONTAINER_CREDENTIALS_FULL_URI", full.as_str()),
        ("AWS_CONTAINER_AUTHORIZATION_TOKEN", "ecs-auth-token"),
    ];
    let c = provider(&full_vars, None).current().unwrap();
    assert_eq!(c.access_key_id.expose(), "AK_ECS");

    let only_imds: Vec<(&str, &str)> = [
        &[("AWS_SHARED_CREDENTIALS_FILE", missing.as_str())][..],
        &imds_vars,
    ]
    .concat();
    let c = provider(&only_imds, None).current().unwrap();
    assert_eq!(
        (c.source, c.access_key_id.expose()),
        (Source::InstanceMetadata, "AK_IMDS")
    );
    assert_eq!(c.secret_access_key.expose(), "secret-of-AK_IMDS");
    let asked: Vec<(String, String)> = imds
        .requests()
        .into_iter()
        .map(|r| (r.method, r.target))
        .collect();
    let expected = [
        ("PUT", "/latest/api/token"),
        ("GET", "/latest/meta-data/iam/security-credentials/"),
        (
            "GET",
            "/latest/meta-data/iam/security-credentials/spinoco-role",
        ),
    ];
    assert_eq!(
        asked,
        expected.map(|(m, p)| (m.to_string(), p.to_string())),
        "IMDSv2 handshake"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

/// Credentials within the refresh margin of their expiry are fetched again; valid ones
/// are kept, not fetched per request; dropped ones are fetched again.
#[test]
fn temporary_credentials_are_refreshed_before_expiry() {
    // The first set expires within the refresh margin (5 min), the second in an hour.
    let imds = fake_imds(vec![
        Answer::Keys("AK_SHORT", Duration::from_secs(120)),
        Answer::Keys("AK_LONG", Duration::from_secs(3600)),
    ]);
    let p = provider(
        &[
            ("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/credentials"),
            ("AWS_EC2_METADATA_SERVICE_ENDPOINT", &imds.url),
        ],
        None,
    );
    assert_eq!(p.current().unwrap().access_key_id.expose(), "AK_SHORT");
    assert_eq!(imds.requests().len(), 3);
    assert_eq!(
        p.current().unwrap().access_key_id.expose(),
        "AK_LONG",
        "near expiry: fetched again"
    );
    assert_eq!(imds.requests().len(), 6);
    assert_eq!(p.current().unwrap().access_key_id.expose(), "AK_LONG");
    assert_eq!(
        imds.requests().len(),
        6,
        "valid credentials are kept, not fetched per request"
    );
    // The server said they expired: the next call fetches again.
    p.invalidate();
    p.current().unwrap();
    assert_eq!(imds.requests().len(), 9);
}

/// The token cache behind the provider: keys inside the refresh margin are fetched
/// again, a refresh that fails keeps serving them while they are still valid, and keys
/// dropped after the storage refused them are never served again.
#[test]
fn a_failed_refresh_keeps_valid_credentials_and_dropped_ones_are_gone() {
    let imds = fake_imds(vec![
        Answer::Keys("AK_SHORT", Duration::from_secs(120)),
        Answer::Fails,
        Answer::Keys("AK_LONG", Duration::from_secs(3600)),
        Answer::Fails,
    ]);
    let p = provider(
        &[
            ("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/credentials"),
            ("AWS_EC2_METADATA_SERVICE_ENDPOINT", &imds.url),
        ],
        None,
    );
    let fetches = || {
        imds.requests()
            .iter()
            .filter(|r| r.target.ends_with("/spinoco-role"))
            .count()
    };
    assert_eq!(p.current().unwrap().access_key_id.expose(), "AK_SHORT");
    assert_eq!(
        p.current().unwrap().access_key_id.expose(),
        "AK_SHORT",
        "valid for two more minutes: kept while the refresh fails"
    );
    assert_eq!(fetches(), 2, "the refresh was tried");
    assert_eq!(
        p.current().unwrap().access_key_id.expose(),
        "AK_LONG",
        "the next refresh replaces them"
    );
    assert_eq!(fetches(), 3);
    // The storage refused them: dropped, and with the endpoint down nothing is served.
    assert!(p.invalidate());
    let err = p.current().unwrap_err();
    assert_eq!(err.kind, StoreErrorKind::Transient, "{err}");
    assert!(err.message.contains("HTTP 500"), "{err}");
    assert_eq!(fetches(), 4);
}

/// No credentials anywhere, and a container endpoint refusing the token: Denied, with a
/// message that names neither token.
#[test]
fn failures_are_denied_and_name_no_secret() {
    // Nothing listens on the IMDS port: no credentials anywhere.
    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let endpoint = format!("http://{closed}");
    let p = provider(
        &[
            ("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/credentials"),
            ("AWS_EC2_METADATA_SERVICE_ENDPOINT", &endpoint),
        ],
        None,
    );
    let err = p.current().unwrap_err();
    assert_eq!(err.kind, StoreErrorKind::Denied, "{err}");
    assert!(err.message.contains("no AWS credentials found"), "{err}");

    // A container endpoint that refuses the (wrong) token.
    let ecs = fake_ecs();
    let p = provider(
        &[
            ("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/credentials"),
            (
                "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
                "/v2/credentials/task",
            ),
            ("AWS_CONTAINER_AUTHORIZATION_TOKEN", "wrong-token-XYZ"),
            ("AWS_EC2_METADATA_DISABLED", "true"),
        ],
        Some(&ecs.url),
    );
    let err = p.current().unwrap_err();
    assert_eq!(err.kind, StoreErrorKind::Denied, "{err}");
    assert!(
        err.message.contains("403") && !err.message.contains("wrong-token-XYZ"),
        "{err}"
    );
    assert_eq!(
        ecs.requests()[0].header("authorization"),
        Some("wrong-token-XYZ")
    );
}

/// A fake STS answering AssumeRoleWithWebIdentity with keys named after the token.
fn fake_sts() -> FakeServer {
    FakeServer::start(Box::new(|r| {
        let token = r
            .body
            .split('&')
            .find_map(|p| p.strip_prefix("WebIdentityToken="))
            .unwrap_or_default()
            .to_string();
        let expiration = in_an_hour();
        (
            200,
            format!(
                "<AssumeRoleWithWebIdentityResponse><AssumeRoleWithWebIdentityResult><Credentials>\
                 <AccessKeyId>AK_WI_{token}</AccessKeyId><SecretAccessKey>s</SecretAccessKey>\
                 <SessionToken>t</SessionToken><Expiration>{expiration}</Expiration>\
                 </Credentials></AssumeRoleWithWebIdentityResult></AssumeRoleWithWebIdentityResponse>"
            ),
        )
    }))
}

/// Web identity (IRSA) comes after keys in the environment and before every other
/// source, and a dropped set of credentials is fetched again with the rotated token
/// file.
#[test]
fn web_identity_comes_after_the_environment_and_before_file_container_and_imds() {
    let dir = scratch("aws-wi-chain");
    let file = dir.join("credentials");
    std::fs::write(
        &file,
        "[default]\naws_access_key_id = AK_FILE\naws_secret_access_key = s\n",
    )
    .unwrap();
    let token = dir.join("token");
    std::fs::write(&token, "one").unwrap();
    let (file, token) = (
        file.to_str().unwrap().to_string(),
        token.to_str().unwrap().to_string(),
    );
    let sts = fake_sts();
    let ecs = fake_ecs();
    let imds = fake_imds(vec![Answer::Keys("AK_IMDS", Duration::from_secs(3600))]);
    let everything_else = [
        ("AWS_SHARED_CREDENTIALS_FILE", file.as_str()),
        (
            "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
            "/v2/credentials/task",
        ),
        ("AWS_CONTAINER_AUTHORIZATION_TOKEN", "ecs-auth-token"),
        ("AWS_EC2_METADATA_SERVICE_ENDPOINT", imds.url.as_str()),
    ];
    let web = [
        ("AWS_ROLE_ARN", "arn:aws:iam::123456789012:role/spinoco"),
        ("AWS_WEB_IDENTITY_TOKEN_FILE", token.as_str()),
        ("AWS_ENDPOINT_URL_STS", sts.url.as_str()),
    ];
    let keys = [
        ("AWS_ACCESS_KEY_ID", "AK_ENV"),
        ("AWS_SECRET_ACCESS_KEY", "s"),
    ];

    let all: Vec<(&str, &str)> = [&keys[..], &web, &everything_else].concat();
    let c = provider(&all, Some(&ecs.url)).current().unwrap();
    assert_eq!(c.source, Source::Environment);
    assert!(sts.requests().is_empty());

    let no_keys: Vec<(&str, &str)> = [&web[..], &everything_else].concat();
    let p = provider(&no_keys, Some(&ecs.url));
    let c = p.current().unwrap();
    assert_eq!(
        (c.source, c.access_key_id.expose()),
        (Source::WebIdentity, "AK_WI_one")
    );
    assert_eq!(c.session_token.unwrap().expose(), "t");
    assert!(
        ecs.requests().is_empty() && imds.requests().is_empty(),
        "nothing after it was asked"
    );
    // A refusal drops the credentials: the next fetch reads the rotated token file.
    std::fs::write(&token, "two").unwrap();
    assert_eq!(
        p.current().unwrap().access_key_id.expose(),
        "AK_WI_one",
        "cached"
    );
    assert!(p.invalidate());
    assert_eq!(p.current().unwrap().access_key_id.expose(), "AK_WI_two");
    std::fs::remove_dir_all(dir).unwrap();
}

/// EKS Pod Identity: the token file wins over the variable and is read again at every
/// fetch, and the agent's refusal of a rotated token names no token.
#[test]
fn eks_pod_identity_reads_its_token_file_at_every_fetch() {
    // EKS Pod Identity: a full URI on the agent's link-local address (here 127.0.0.1)
    // and the authorization token in a file the kubelet rotates.
    let dir = scratch("eks-pod-id");
    let token = dir.join("eks-pod-identity-token");
    std::fs::write(&token, "ecs-auth-token\n").unwrap();
    let ecs = fake_ecs();
    let full = format!("{}/v2/credentials/task", ecs.url);
    let p = provider(
        &[
            ("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/credentials"),
            ("AWS_CONTAINER_CREDENTIALS_FULL_URI", full.as_str()),
            (
                "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
                token.to_str().unwrap(),
            ),
            // The file wins over a token in the variable, as in the SDKs.
            ("AWS_CONTAINER_AUTHORIZATION_TOKEN", "stale-variable-token"),
        ],
        None,
    );
    let c = p.current().unwrap();
    assert_eq!(
        (c.source, c.access_key_id.expose()),
        (Source::Container, "AK_ECS")
    );
    assert_eq!(
        ecs.requests()[0].header("authorization"),
        Some("ecs-auth-token")
    );
    // Rotated to a token the agent refuses: the next fetch sends it (and is refused).
    std::fs::write(&token, "rotated-token").unwrap();
    p.invalidate();
    let err = p.current().unwrap_err();
    assert_eq!(err.kind, StoreErrorKind::Denied);
    assert_eq!(
        ecs.requests()[1].header("authorization"),
        Some("rotated-token")
    );
    assert!(!err.message.contains("rotated-token"), "{err}");
    std::fs::remove_dir_all(dir).unwrap();
}
