//! Google token flows against fake endpoints on 127.0.0.1 (no server script needed).
//!
//! The fake token endpoint checks the JWT's RS256 signature with the test key's public
//! key (tests/data/gcs-test-key.pub.pem, made by openssl, not by this code) and its
//! claims, so a service-account file with a wrong key is refused: proof that a real
//! signature is produced.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::common::codec::base64_decode;
use crate::common::fake_http::{FakeServer, Request};
use ring::signature::{UnparsedPublicKey, RSA_PKCS1_2048_8192_SHA256};
use spinoco_connector::gcs::{Credentials, TokenSource};
use spinoco_connector::gcs::{GcsSettings, GcsStore};
use spinoco_connector::Env;
use spinoco_connector::RetryBudget;
use spinoco_connector::{BlobStore, StoreErrorKind};

const EMAIL: &str = "connector-test@spinoco-test.iam.gserviceaccount.com";
/// The scope of a Google Cloud Storage token that may read and write objects.
const SCOPE: &str = "https://www.googleapis.com/auth/devstorage.read_write";

fn data(name: &str) -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data")
            .join(name),
    )
    .unwrap()
}

/// The DER inside a PEM text.
fn pem_body(pem: &str) -> Vec<u8> {
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    base64_decode(&body).expect("PEM holds base64")
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// What Google's token endpoint checks: the RS256 signature and the claims.
fn check_assertion(assertion: &str, public_der: &[u8], token_uri: &str) -> Result<(), String> {
    let parts: Vec<&str> = assertion.split('.').collect();
    if parts.len() != 3 {
        return Err("not a JWT".into());
    }
    let json = |p: &str| -> Result<serde_json::Value, String> {
        serde_json::from_slice(&base64_decode(p).ok_or("bad base64")?).map_err(|e| e.to_string())
    };
    let header = json(parts[0])?;
    if header["alg"] != "RS256" || header["typ"] != "JWT" {
        return Err(format!("bad header {header}"));
    }
    let signature = base64_decode(parts[2]).ok_or("bad signature encoding")?;
    let signed = format!("{}.{}", parts[0], parts[1]);
    UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, public_der)
        .verify(signed.as_bytes(), &signature)
        .map_err(|_| "Invalid JWT Signature.".to_string())?;
    let claims = json(parts[1])?;
    let (iat, exp) = (
        claims["iat"].as_u64().ok_or("no iat")?,
        claims["exp"].as_u64().ok_or("no exp")?,
    );
    let ok = claims["iss"] == EMAIL
        && claims["scope"] == SCOPE
        && claims["aud"] == token_uri
        && iat.abs_diff(now()) <= 60
        && exp > iat
        && exp - iat <= 3600;
    if ok {
        Ok(())
    } else {
        Err(format!("bad claims {claims}"))
    }
}

/// A token endpoint at `/token` handing out `tok-1`, `tok-2`, … valid `expires_in`.
fn token_endpoint(expires_in: u64) -> FakeServer {
    let public = pem_body(&data("gcs-test-key.pub.pem"));
    let issued = AtomicUsize::new(0);
    let uri = Arc::new(Mutex::new(String::new()));
    let uri2 = uri.clone();
    let fake = FakeServer::start(Box::new(move |r: &Request| {
        let token_uri = uri2.lock().unwrap().clone();
        let grant = r.field("grant_type").unwrap_or_default();
        if r.method != "POST"
            || r.target != "/token"
            || grant != "urn:ietf:params:oauth:grant-type:jwt-bearer"
        {
            return (400, r#"{"error":"unsupported_grant_type"}"#.into());
        }
        match check_assertion(
            &r.field("assertion").unwrap_or_default(),
            &public,
            &token_uri,
        ) {
            Ok(()) => {
                let n = issued.fetch_add(1, Ordering::SeqCst) + 1;
                (
                    200,
                    format!(
                        r#"{{"access_token":"tok-{n}","expires_in":{expires_in},"token_type":"Bearer"}}"#
                    ),
                )
            }
            Err(why) => (
                400,
                serde_json::json!({"error": "invalid_grant", "error_description": why}).to_string(),
            ),
        }
    }));
    *uri.lock().unwrap() = format!("{}/token", fake.url);
    fake
}

fn service_account(key_file: &str, token_uri: &str) -> Credentials {
    let file = serde_json::json!({
        "type": "service_account",
        "project_id": "spinoco-test",
        "private_key_id": "test-key-1",
        "private_key": data(key_file),
        "client_email": EMAIL,
        "token_uri": token_uri,
    });
    Credentials::from_json(&file.to_string(), Path::new("/test/service-account.json")).unwrap()
}

fn agent() -> ureq::Agent {
    spinoco_connector::agent(Duration::from_secs(5), 2)
}

/// A service account's JWT passes the endpoint's signature and claim checks, and the
/// token it buys is reused.
#[test]
fn service_account_token_is_signed_checked_and_cached() {
    let endpoint = token_endpoint(3600);
    let tokens = TokenSource::new(service_account(
        "gcs-test-key.pem",
        &format!("{}/token", endpoint.url),
    ));
    let agent = agent();
    assert_eq!(
        tokens.authorization(&agent).unwrap().as_deref(),
        Some("Bearer tok-1")
    );
    assert_eq!(
        tokens.authorization(&agent).unwrap().as_deref(),
        Some("Bearer tok-1"),
        "cached"
    );
    let seen = endpoint.requests();
    assert_eq!(seen.len(), 1, "one token request for two uses");
    assert_eq!(
        seen[0].header("content-type"),
        Some("application/x-www-form-urlencoded")
    );
}

/// A token inside the refresh margin is fetched again at the next use.
#[test]
fn short_lived_token_is_refreshed_on_next_use() {
    // 60 s is inside the 5-minute refresh margin: the token counts as expiring.
    let endpoint = token_endpoint(60);
    let tokens = TokenSource::new(service_account(
        "gcs-test-key.pem",
        &format!("{}/token", endpoint.url),
    ));
    let agent = agent();
    assert_eq!(
        tokens.authorization(&agent).unwrap().as_deref(),
        Some("Bearer tok-1")
    );
    assert_eq!(
        tokens.authorization(&agent).unwrap().as_deref(),
        Some("Bearer tok-2")
    );
    assert_eq!(endpoint.requests().len(), 2);
}

/// A service-account file with the wrong key is refused by the endpoint's signature
/// check: Denied, with neither the assertion nor the key in the message.
#[test]
fn wrong_key_is_rejected_by_the_token_endpoint() {
    let endpoint = token_endpoint(3600);
    let tokens = TokenSource::new(service_account(
        "gcs-wrong-test-key.pem",
        &format!("{}/token", endpoint.url),
    ));
    let err = tokens.authorization(&agent()).unwrap_err();
    assert_eq!(err.kind, StoreErrorKind::Denied, "{err}");
    assert!(
        err.message.contains("invalid_grant") && err.message.contains("Invalid JWT Signature"),
        "{err}"
    );
    let assertion = endpoint.requests()[0].field("assertion").unwrap();
    assert!(
        !err.message.contains(&assertion[assertion.len() - 20..]),
        "the assertion leaked: {err}"
    );
    assert!(!err.message.contains("PRIVATE KEY"), "{err}");
}

/// On GCE or GKE the metadata server's token is asked for with its `Metadata-Flavor`
/// header.
#[test]
fn metadata_server_token_needs_the_flavor_header() {
    let fake = FakeServer::start(Box::new(|r: &Request| {
        if r.target != "/computeMetadata/v1/instance/service-accounts/default/token" {
            return (404, "{}".into());
        }
        match r.header("metadata-flavor") {
            Some("Google") => (
                200,
                r#"{"access_token":"meta-1","expires_in":3599,"token_type":"Bearer"}"#.into(),
            ),
            _ => (403, "{}".into()),
        }
    }));
    let host = fake.url.trim_start_matches("http://").to_string();
    let env = Env::from_pairs([
        ("HOME", "/nonexistent"),
        ("GCE_METADATA_HOST", host.as_str()),
    ]);
    let credentials = Credentials::discover(&env, false).unwrap();
    assert!(
        matches!(credentials, Credentials::Metadata { .. }),
        "{credentials:?}"
    );
    let tokens = TokenSource::new(credentials);
    assert_eq!(
        tokens.authorization(&agent()).unwrap().as_deref(),
        Some("Bearer meta-1")
    );
    let seen = fake.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].method, "GET");
}

/// An `authorized_user` file trades its refresh token, with the client's id and secret,
/// for a token.
#[test]
fn authorized_user_refresh_token_grant() {
    let fake = FakeServer::start(Box::new(|r: &Request| {
        let ok = r.target == "/token"
            && r.field("grant_type").as_deref() == Some("refresh_token")
            && r.field("refresh_token").as_deref() == Some("1//refresh+me/please")
            && r.field("client_id").as_deref() == Some("client-1.apps.googleusercontent.com")
            && r.field("client_secret").as_deref() == Some("very secret");
        if ok {
            (200, r#"{"access_token":"user-1","expires_in":3599}"#.into())
        } else {
            (400, r#"{"error":"invalid_grant"}"#.into())
        }
    }));
    let file = serde_json::json!({
        "type": "authorized_user",
        "client_id": "client-1.apps.googleusercontent.com",
        "client_secret": "very secret",
        "refresh_token": "1//refresh+me/please",
        "token_uri": format!("{}/token", fake.url),
    });
    let tokens = TokenSource::new(
        Credentials::from_json(&file.to_string(), Path::new("/test/adc.json")).unwrap(),
    );
    assert_eq!(
        tokens.authorization(&agent()).unwrap().as_deref(),
        Some("Bearer user-1")
    );
}

/// The store sends the bearer token and `userProject`, reads a missing object as none,
/// and takes a 403 as Denied at once, naming the object and not the token.
#[test]
fn store_sends_the_token_and_user_project_and_maps_403_to_denied() {
    let endpoint = token_endpoint(3600);
    let storage = FakeServer::start(Box::new(|r: &Request| {
        if r.header("authorization") != Some("Bearer tok-1") {
            return (
                401,
                r#"{"error":{"code":401,"message":"Invalid Credentials"}}"#.into(),
            );
        }
        match r.target.as_str() {
            "/storage/v1/b/bkt/o/calls%2Fa%20b.json?userProject=proj-9&alt=media" => {
                (200, "hello".into())
            }
            "/storage/v1/b/bkt/o/calls%2Fforbidden?userProject=proj-9&alt=media" => (
                403,
                r#"{"error":{"code":403,"message":"does not have storage.objects.get access"}}"#
                    .into(),
            ),
            _ => (404, "{}".into()),
        }
    }));
    let settings = GcsSettings {
        bucket: "bkt".into(),
        project: "proj-9".into(),
        prefix: "calls".into(),
        endpoint: storage.url.clone(),
        credentials: service_account("gcs-test-key.pem", &format!("{}/token", endpoint.url)),
        chunk_size: 256 * 1024,
        options: Default::default(),
    };
    let store = GcsStore::open(&settings, &agent(), RetryBudget::tries(4)).unwrap();
    assert_eq!(
        store.get("a b.json").unwrap().as_deref(),
        Some(&b"hello"[..])
    );
    assert_eq!(store.get("missing").unwrap(), None);
    let err = store.get("forbidden").unwrap_err();
    assert_eq!(err.kind, StoreErrorKind::Denied, "{err}");
    assert!(
        err.message.contains("gs://bkt/calls/forbidden") && err.message.contains("403"),
        "{err}"
    );
    assert!(!err.message.contains("tok-1"), "{err}");
    assert_eq!(storage.requests().len(), 3, "403 is not retried");
    assert_eq!(endpoint.requests().len(), 1, "the token is reused");
}

/// A 401 with a cached token drops it and fetches a new one once; a second 401 with the
/// fresh token is a refusal (exit 5), not a loop.
#[test]
fn a_401_fetches_a_new_token_once() {
    let endpoint = token_endpoint(3600);
    // The storage takes only the second token: the first was revoked.
    let storage = FakeServer::start(Box::new(|r: &Request| {
        match (r.header("authorization"), r.target.as_str()) {
            (Some("Bearer tok-2"), t) if t.contains("/o/ok?") => (200, "fresh".into()),
            _ => (
                401,
                r#"{"error":{"code":401,"message":"Invalid Credentials"}}"#.into(),
            ),
        }
    }));
    let settings = GcsSettings {
        bucket: "bkt".into(),
        project: "p".into(),
        prefix: String::new(),
        endpoint: storage.url.clone(),
        credentials: service_account("gcs-test-key.pem", &format!("{}/token", endpoint.url)),
        chunk_size: 256 * 1024,
        options: Default::default(),
    };
    let store = GcsStore::open(&settings, &agent(), RetryBudget::tries(4)).unwrap();
    assert_eq!(store.get("ok").unwrap().as_deref(), Some(&b"fresh"[..]));
    assert_eq!(endpoint.requests().len(), 2, "a new token after the 401");
    assert_eq!(storage.requests().len(), 2);
    let err = store.get("refused").unwrap_err();
    assert_eq!(err.kind, StoreErrorKind::Denied, "{err}");
    assert!(
        err.message.contains("401") && !err.message.contains("tok-"),
        "{err}"
    );
    assert_eq!(
        storage.requests().len(),
        4,
        "one more try with a fresh token, no loop"
    );
    assert_eq!(endpoint.requests().len(), 3);
}
