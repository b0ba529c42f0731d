//! The workload-identity token flows against fake token endpoints on 127.0.0.1: AWS STS
//! AssumeRoleWithWebIdentity, Entra ID client credentials with a federated assertion,
//! the Azure managed identity endpoints, Google STS token exchange with service-account
//! impersonation. Each fake checks the request's shape (method, path, form fields,
//! headers) and answers only a correct one, the token files are rewritten between two
//! fetches to show that each fetch reads them again (the kubelet rotates them), and
//! refusals are checked for their kind and for secrets in their messages.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::common::fake_http::{FakeServer, Request};
use crate::common::harness::scratch;

use super::in_an_hour;

/// The scope of an Azure Storage token.
const AZURE_STORAGE_SCOPE: &str = "https://storage.azure.com/.default";
/// The scope of a Google Cloud Storage token that may read and write objects.
const GCS_SCOPE: &str = "https://www.googleapis.com/auth/devstorage.read_write";
use spinoco_connector::azure::AzureIdentity;
use spinoco_connector::gcs::ExternalAccount;
use spinoco_connector::s3::WebIdentity;
use spinoco_connector::Env;
use spinoco_connector::StoreErrorKind;

fn agent() -> ureq::Agent {
    spinoco_connector::agent(Duration::from_secs(5), 1)
}

/// A folder for token files, removed at the end of the test.
struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Dir {
        Dir(scratch(name))
    }
    fn file(&self, name: &str, text: &str) -> String {
        let p = self.0.join(name);
        std::fs::write(&p, text).unwrap();
        p.to_str().unwrap().to_string()
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// ---------------------------------------------------------------- AWS

const ROLE: &str = "arn:aws:iam::123456789012:role/spinoco-connector";

/// A fake STS: answers AssumeRoleWithWebIdentity with credentials named after the
/// token it was sent, when the request is well-formed; else the STS error.
fn fake_sts() -> FakeServer {
    FakeServer::start(Box::new(|r| {
        let well_formed = r.method == "POST"
            && r.target == "/"
            && r.header("content-type") == Some("application/x-www-form-urlencoded")
            && r.header("authorization").is_none()
            && r.field("Action").as_deref() == Some("AssumeRoleWithWebIdentity")
            && r.field("Version").as_deref() == Some("2011-06-15")
            && r.field("RoleArn").as_deref() == Some(ROLE)
            && r.field("RoleSessionName").as_deref() == Some("pod-7");
        let token = r.field("WebIdentityToken").unwrap_or_default();
        if !well_formed {
            return (400, "<ErrorResponse><Error><Code>MalformedQueryString</Code><Message>bad</Message></Error></ErrorResponse>".into());
        }
        match token.as_str() {
            "throttled" => (
                400,
                "<ErrorResponse><Error><Type>Sender</Type><Code>IDPCommunicationError</Code><Message>try again</Message></Error></ErrorResponse>".into(),
            ),
            t if t.starts_with("eyJ") => (
                200,
                format!(
                    "<AssumeRoleWithWebIdentityResponse><AssumeRoleWithWebIdentityResult><Credentials>\
                     <AccessKeyId>ASIA-{t}</AccessKeyId><SecretAccessKey>secret-{t}</SecretAccessKey>\
                     <SessionToken>session-{t}</SessionToken><Expiration>{}</Expiration>\
                     </Credentials></AssumeRoleWithWebIdentityResult></AssumeRoleWithWebIdentityResponse>",
                    in_an_hour()
                ),
            ),
            _ => (
                400,
                "<ErrorResponse><Error><Type>Sender</Type><Code>InvalidIdentityToken</Code><Message>Couldn't retrieve verification key from your identity provider</Message></Error></ErrorResponse>".into(),
            ),
        }
    }))
}

fn web_identity(token_file: &str, sts: &str) -> WebIdentity {
    let mut errors = Vec::new();
    let wi = WebIdentity::from_env(
        &Env::from_pairs([
            ("AWS_ROLE_ARN", ROLE),
            ("AWS_WEB_IDENTITY_TOKEN_FILE", token_file),
            ("AWS_ROLE_SESSION_NAME", "pod-7"),
            ("AWS_ENDPOINT_URL_STS", sts),
            ("AWS_REGION", "eu-central-1"),
        ]),
        None,
        &mut errors,
    );
    assert!(errors.is_empty(), "{errors:?}");
    wi.unwrap()
}

/// AWS web identity sends STS a well-formed AssumeRoleWithWebIdentity with the token
/// file as it is at each fetch.
#[test]
fn aws_web_identity_sends_the_current_token_file_to_sts() {
    let dir = Dir::new("irsa");
    let file = dir.file("token", "eyJfirst\n");
    let sts = fake_sts();
    let wi = web_identity(&file, &sts.url);

    let c = wi.fetch(&agent()).unwrap();
    assert_eq!(c.access_key_id.expose(), "ASIA-eyJfirst");
    assert_eq!(c.secret_access_key.expose(), "secret-eyJfirst");
    assert_eq!(c.session_token.expose(), "session-eyJfirst");
    let left = c.expires.duration_since(SystemTime::now()).unwrap();
    assert!(
        left > Duration::from_secs(3000) && left <= Duration::from_secs(3600),
        "{left:?}"
    );

    // The kubelet rotated the token: the next fetch sends the new one.
    std::fs::write(&file, "eyJsecond").unwrap();
    assert_eq!(
        wi.fetch(&agent()).unwrap().access_key_id.expose(),
        "ASIA-eyJsecond"
    );
    let sent: Vec<String> = sts
        .requests()
        .iter()
        .filter_map(|r| r.field("WebIdentityToken"))
        .collect();
    assert_eq!(sent, ["eyJfirst", "eyJsecond"]);
}

/// STS refusals: an invalid token is Denied (naming the role, not the token), an IdP
/// hiccup is Transient, and a token file gone is Denied naming its variable.
#[test]
fn aws_web_identity_refusals_are_denied_or_transient_and_keep_the_token_secret() {
    let dir = Dir::new("irsa-refused");
    let sts = fake_sts();
    let file = dir.file("token", "not-a-jwt-but-secret");
    let err = web_identity(&file, &sts.url).fetch(&agent()).unwrap_err();
    assert_eq!(err.kind, StoreErrorKind::Denied, "{}", err.message);
    assert!(
        err.message.contains("InvalidIdentityToken") && err.message.contains(ROLE),
        "{}",
        err.message
    );
    assert!(
        !err.message.contains("not-a-jwt-but-secret"),
        "{}",
        err.message
    );

    std::fs::write(&file, "throttled").unwrap();
    let err = web_identity(&file, &sts.url).fetch(&agent()).unwrap_err();
    assert_eq!(err.kind, StoreErrorKind::Transient, "{}", err.message);

    // The file disappeared after start (a broken projection): Denied, naming the variable.
    std::fs::remove_file(&file).unwrap();
    let err = web_identity(&dir.file("token2", "eyJx"), &sts.url);
    std::fs::remove_file(dir.0.join("token2")).unwrap();
    let err = err.fetch(&agent()).unwrap_err();
    assert_eq!(err.kind, StoreErrorKind::Denied);
    assert!(
        err.message.contains("AWS_WEB_IDENTITY_TOKEN_FILE"),
        "{}",
        err.message
    );
}

// ---------------------------------------------------------------- Azure

const CLIENT: &str = "6f1c6a0e-1d2b-4a5c-9e8f-0a1b2c3d4e5f";
const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";

fn entra() -> FakeServer {
    FakeServer::start(Box::new(|r| {
        let well_formed = r.method == "POST"
            && r.target == format!("/{TENANT}/oauth2/v2.0/token")
            && r.header("content-type") == Some("application/x-www-form-urlencoded")
            && r.field("client_id").as_deref() == Some(CLIENT)
            && r.field("scope").as_deref() == Some(AZURE_STORAGE_SCOPE)
            && r.field("grant_type").as_deref() == Some("client_credentials")
            && r.field("client_assertion_type").as_deref()
                == Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer");
        let assertion = r.field("client_assertion").unwrap_or_default();
        if well_formed && assertion.starts_with("eyJ") {
            (
                200,
                format!(
                    r#"{{"token_type":"Bearer","expires_in":3599,"ext_expires_in":3599,"access_token":"at-{assertion}"}}"#
                ),
            )
        } else {
            (400, r#"{"error":"invalid_client","error_description":"AADSTS700211: No matching federated identity record found for presented assertion issuer.","error_codes":[700211]}"#.into())
        }
    }))
}

fn workload(file: &str, authority: &str) -> AzureIdentity {
    let mut errors = Vec::new();
    let id = AzureIdentity::from_env(
        &Env::from_pairs([
            ("AZURE_CLIENT_ID", CLIENT),
            ("AZURE_TENANT_ID", TENANT),
            ("AZURE_FEDERATED_TOKEN_FILE", file),
            ("AZURE_AUTHORITY_HOST", authority),
        ]),
        &mut errors,
    );
    assert!(errors.is_empty(), "{errors:?}");
    id.unwrap()
}

/// Azure workload identity sends Entra ID the federated token as it is at each fetch; a
/// refusal is Denied without the token.
#[test]
fn azure_workload_identity_sends_the_current_federated_token() {
    let dir = Dir::new("aks-wi");
    let file = dir.file("azure-identity-token", "eyJone");
    let server = entra();
    // The authority with its trailing slash, as the webhook sets it.
    let id = workload(&file, &format!("{}/", server.url));
    let t = id.fetch(&agent()).unwrap();
    assert_eq!(t.token.expose(), "at-eyJone");
    assert!(t.expires > SystemTime::now() + Duration::from_secs(3500));
    std::fs::write(&file, "eyJtwo").unwrap();
    assert_eq!(id.fetch(&agent()).unwrap().token.expose(), "at-eyJtwo");
    assert_eq!(server.requests().len(), 2);

    std::fs::write(&file, "secret-but-not-federated").unwrap();
    let err = id.fetch(&agent()).unwrap_err();
    assert_eq!(err.kind, StoreErrorKind::Denied);
    assert!(
        err.message.contains("AADSTS700211") && err.message.contains(CLIENT),
        "{}",
        err.message
    );
    assert!(
        !err.message.contains("secret-but-not-federated"),
        "{}",
        err.message
    );
}

/// An Azure managed identity from the instance metadata service, with a user-assigned
/// client id; without one on the machine, Denied with a hint.
#[test]
fn azure_managed_identity_from_imds_with_a_user_assigned_client_id() {
    let hits = Arc::new(AtomicUsize::new(0));
    let counted = hits.clone();
    let imds = FakeServer::start(Box::new(move |r| {
        counted.fetch_add(1, Ordering::SeqCst);
        let ok = r.method == "GET"
            && r.target.starts_with("/metadata/identity/oauth2/token?")
            && r.header("metadata") == Some("true")
            && r.query("api-version").as_deref() == Some("2018-02-01")
            && r.query("resource").as_deref() == Some("https://storage.azure.com");
        match (ok, r.query("client_id")) {
            (true, Some(id)) if id == CLIENT => (
                200,
                r#"{"access_token":"imds-token","expires_in":"86399","expires_on":"1999999999","resource":"https://storage.azure.com","token_type":"Bearer"}"#.into(),
            ),
            (true, _) => (400, r#"{"error":"invalid_request","error_description":"Identity not found"}"#.into()),
            (false, _) => (400, r#"{"error":"bad_request"}"#.into()),
        }
    }));
    let identity = |pairs: &[(&str, &str)]| {
        let mut errors = Vec::new();
        let mut all = vec![("AZURE_POD_IDENTITY_AUTHORITY_HOST", imds.url.as_str())];
        all.extend_from_slice(pairs);
        let id = AzureIdentity::from_env(&Env::from_pairs(all), &mut errors).unwrap();
        assert!(errors.is_empty(), "{errors:?}");
        id
    };
    let t = identity(&[("AZURE_CLIENT_ID", CLIENT)])
        .fetch(&agent())
        .unwrap();
    assert_eq!(t.token.expose(), "imds-token");
    let left = t.expires.duration_since(SystemTime::now()).unwrap();
    assert!(
        left > Duration::from_secs(86000),
        "expires_in as a string: {left:?}"
    );

    // No user-assigned identity on this machine: Denied, with a hint.
    let err = identity(&[]).fetch(&agent()).unwrap_err();
    assert_eq!(err.kind, StoreErrorKind::Denied);
    assert!(
        err.message.contains("Identity not found") && err.message.contains("AZURE_CLIENT_ID"),
        "{}",
        err.message
    );
    assert_eq!(hits.load(Ordering::SeqCst), 2);
}

/// App Service's managed identity endpoint gets its identity header; a 500 is Transient
/// and names no header value.
#[test]
fn azure_managed_identity_of_app_service_sends_the_identity_header() {
    let server = FakeServer::start(Box::new(|r| {
        let ok = r.target.starts_with("/msi/token?")
            && r.header("x-identity-header") == Some("hdr-5ecret")
            && r.query("api-version").as_deref() == Some("2019-08-01")
            && r.query("resource").as_deref() == Some("https://storage.azure.com");
        if ok {
            (200, r#"{"access_token":"app-token","expires_on":"1999999999","resource":"https://storage.azure.com","token_type":"Bearer"}"#.into())
        } else {
            (500, r#"{"statusCode":500,"message":"An unexpected error occured while fetching the AAD Token."}"#.into())
        }
    }));
    let endpoint = format!("{}/msi/token", server.url);
    let mut errors = Vec::new();
    let env = Env::from_pairs([
        ("IDENTITY_ENDPOINT", endpoint.as_str()),
        ("IDENTITY_HEADER", "hdr-5ecret"),
    ]);
    let id = AzureIdentity::from_env(&env, &mut errors).unwrap();
    let t = id.fetch(&agent()).unwrap();
    assert_eq!(t.token.expose(), "app-token");
    assert_eq!(
        t.expires,
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_999_999_999),
        "expires_on as epoch seconds"
    );

    let env = Env::from_pairs([
        ("IDENTITY_ENDPOINT", endpoint.as_str()),
        ("IDENTITY_HEADER", "wrong"),
    ]);
    let err = AzureIdentity::from_env(&env, &mut errors)
        .unwrap()
        .fetch(&agent())
        .unwrap_err();
    assert_eq!(
        err.kind,
        StoreErrorKind::Transient,
        "a 500 may pass: {}",
        err.message
    );
    assert!(
        !err.message.contains("wrong") && !err.message.contains("hdr-5ecret"),
        "{}",
        err.message
    );
}

// ---------------------------------------------------------------- Google

const AUDIENCE: &str =
    "//iam.googleapis.com/projects/123456/locations/global/workloadIdentityPools/eks/providers/oidc";
const SA: &str = "connector@spinoco-test.iam.gserviceaccount.com";

/// A fake Google STS and IAM credentials on one port: STS answers a well-formed token
/// exchange with `federated-<subject>`, IAM answers generateAccessToken for [`SA`]
/// when called with such a token.
fn fake_google() -> FakeServer {
    FakeServer::start(Box::new(|r| {
        if r.target == "/v1/token" {
            let mut ok = r.method == "POST"
                && r.header("content-type") == Some("application/x-www-form-urlencoded")
                && r.field("grant_type").as_deref()
                    == Some("urn:ietf:params:oauth:grant-type:token-exchange")
                && r.field("audience").as_deref() == Some(AUDIENCE)
                && r.field("requested_token_type").as_deref()
                    == Some("urn:ietf:params:oauth:token-type:access_token")
                && r.field("subject_token_type").as_deref()
                    == Some("urn:ietf:params:oauth:token-type:jwt");
            // With client credentials, they must be Basic auth (base64 of cid:csecret).
            if let Some(auth) = r.header("authorization") {
                ok &= auth == "Basic Y2lkOmNzZWNyZXQ=";
            }
            let subject = r.field("subject_token").unwrap_or_default();
            return if ok && subject.starts_with("eyJ") {
                (
                    200,
                    format!(
                        r#"{{"access_token":"federated-{subject}","issued_token_type":"urn:ietf:params:oauth:token-type:access_token","token_type":"Bearer","expires_in":3600}}"#
                    ),
                )
            } else {
                (400, r#"{"error":"invalid_grant","error_description":"The audience in ID Token does not match the expected audience."}"#.into())
            };
        }
        if r.target == format!("/v1/projects/-/serviceAccounts/{SA}:generateAccessToken") {
            let body: serde_json::Value = serde_json::from_str(&r.body).unwrap_or_default();
            let ok = r.method == "POST"
                && r.header("authorization")
                    .is_some_and(|a| a.starts_with("Bearer federated-eyJ"))
                && body["scope"] == serde_json::json!([GCS_SCOPE])
                && body["lifetime"] == "1200s";
            return if ok {
                (
                    200,
                    format!(
                        r#"{{"accessToken":"sa-token","expireTime":"{}"}}"#,
                        in_an_hour()
                    ),
                )
            } else {
                (403, r#"{"error":{"code":403,"message":"Permission 'iam.serviceAccounts.getAccessToken' denied on resource (or it may not exist).","status":"PERMISSION_DENIED"}}"#.into())
            };
        }
        (404, String::new())
    }))
}

/// A file-sourced external account: Google STS with the subject token as it is at each
/// fetch, then impersonation for the storage scope; a refused subject token is Denied
/// without it.
#[test]
fn gcs_external_account_file_sourced_with_impersonation() {
    let dir = Dir::new("gcp-wif");
    let subject = dir.file("token", "eyJsubject1\n");
    let google = fake_google();
    let creds = dir.file(
        "creds.json",
        &serde_json::json!({
            "type": "external_account",
            "audience": AUDIENCE,
            "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
            "token_url": format!("{}/v1/token", google.url),
            "service_account_impersonation_url": format!("{}/v1/projects/-/serviceAccounts/{SA}:generateAccessToken", google.url),
            "service_account_impersonation": { "token_lifetime_seconds": 1200 },
            "credential_source": { "file": subject, "format": { "type": "text" } },
        })
        .to_string(),
    );
    let account = spinoco_connector::gcs::external_account_from_env(&Env::from_pairs([(
        "GOOGLE_APPLICATION_CREDENTIALS",
        creds.as_str(),
    )]))
    .unwrap()
    .expect("an external account");
    let t = account.fetch(&agent()).unwrap();
    assert_eq!(t.token.expose(), "sa-token");
    assert!(t.expires > SystemTime::now() + Duration::from_secs(3000));

    // Impersonation: STS is asked for cloud-platform, the service account for storage.
    let sts: Vec<Request> = google
        .requests()
        .into_iter()
        .filter(|r| r.target == "/v1/token")
        .collect();
    assert_eq!(
        sts[0].field("scope").as_deref(),
        Some("https://www.googleapis.com/auth/cloud-platform")
    );
    assert_eq!(
        sts[0].field("subject_token").as_deref(),
        Some("eyJsubject1")
    );

    std::fs::write(&subject, "eyJsubject2").unwrap();
    account.fetch(&agent()).unwrap();
    let subjects: Vec<String> = google
        .requests()
        .iter()
        .filter(|r| r.target == "/v1/token")
        .filter_map(|r| r.field("subject_token"))
        .collect();
    assert_eq!(
        subjects,
        ["eyJsubject1", "eyJsubject2"],
        "the subject token file is read at every fetch"
    );

    // A subject token the pool refuses: Denied, with Google's reason, without the token.
    std::fs::write(&subject, "bad-subject-secret").unwrap();
    let err = account.fetch(&agent()).unwrap_err();
    assert_eq!(err.kind, StoreErrorKind::Denied);
    assert!(
        err.message.contains("invalid_grant") && !err.message.contains("bad-subject-secret"),
        "{}",
        err.message
    );
}

/// A url-sourced external account with a JSON subject token and client credentials
/// (Basic), without impersonation: STS is asked for the storage scope itself.
#[test]
fn gcs_external_account_url_sourced_json_with_client_auth_and_no_impersonation() {
    let dir = Dir::new("gcp-wif-url");
    let google = fake_google();
    let subject_server = FakeServer::start(Box::new(|r| match r.header("metadata") {
        Some("True") => (
            200,
            r#"{"access_token":"eyJfromurl","expires_in":"3599"}"#.into(),
        ),
        _ => (400, r#"{"error":"missing Metadata header"}"#.into()),
    }));
    let creds = dir.file(
        "creds.json",
        &serde_json::json!({
            "type": "external_account",
            "audience": AUDIENCE,
            "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
            "token_url": format!("{}/v1/token", google.url),
            "client_id": "cid",
            "client_secret": "csecret",
            "credential_source": {
                "url": format!("{}/metadata/identity/oauth2/token?api-version=2018-02-01&resource=api://gcp", subject_server.url),
                "headers": { "Metadata": "True" },
                "format": { "type": "json", "subject_token_field_name": "access_token" }
            },
        })
        .to_string(),
    );
    let account = ExternalAccount::from_json(
        &std::fs::read_to_string(&creds).unwrap(),
        std::path::Path::new(&creds),
    )
    .unwrap();
    let t = account.fetch(&agent()).unwrap();
    assert_eq!(t.token.expose(), "federated-eyJfromurl");
    let sts = &google.requests()[0];
    assert!(sts.header("authorization").is_some());
    assert_eq!(
        sts.field("scope").as_deref(),
        Some(GCS_SCOPE),
        "without impersonation the token is for storage"
    );
    assert_eq!(subject_server.requests().len(), 1);
    assert!(subject_server.requests()[0]
        .target
        .contains("resource=api://gcp"));
}
