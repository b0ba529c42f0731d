//! Azure with the workload identity of AKS (Entra ID with a federated token) and a
//! managed identity (the instance metadata service) into an Azurite of the test's own
//! with OAuth over https, a token Azurite refuses (expired, another audience), and the
//! connection string with an access tier, the task's metadata and the README's role
//! checked against the requests.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use crate::common::azurite::OAuthAzurite;
use crate::common::capture::CaptureProxy;
use crate::common::codec::{base64url, percent_decode};
use crate::common::fake_http::{FakeServer, Request};
use crate::common::harness::*;
use crate::common::providers::*;
use spinoco_connector::BlobStore;
use spinoco_connector::EmulatorConfig;

use super::{account, authority, handed_out_info, readme_block, token_file};

/// An unsigned JWT with the claims Azurite checks, issued `ago` seconds ago and
/// valid for `life` seconds from then.
fn entra_jwt(aud: &str, ago: i64, life: i64) -> String {
    let b64 = |v: Value| base64url(v.to_string().as_bytes());
    let iat = time::OffsetDateTime::now_utc().unix_timestamp() - ago;
    format!(
        "{}.{}.{}",
        b64(json!({"typ": "JWT", "alg": "RS256"})),
        b64(json!({
            "aud": aud, "iss": "https://sts.windows.net/72f988bf-86f1-41af-91ab-2d7cd011db47/",
            "iat": iat, "nbf": iat, "exp": iat + life, "oid": "spinoco-connector",
        })),
        base64url(b"not-checked"),
    )
}

/// A token valid for the coming hour.
fn fresh_jwt(aud: &str) -> String {
    entra_jwt(aud, 60, 3660)
}

/// A Shared Key store over https to `endpoint` that trusts `ca`: for creating the
/// container and reading back what the connector stored.
fn key_store(
    endpoint: &str,
    ca: &std::path::Path,
    container: &str,
) -> spinoco_connector::azure::AzureStore {
    use spinoco_connector::azure::{AzureSettings, AzureStore};
    let env = spinoco_connector::Env::from_pairs([("SP_TLS_CA_FILE", ca.to_str().unwrap())]);
    let mut errors = Vec::new();
    let network = spinoco_connector::Network::from_env(&env, &mut errors);
    assert!(errors.is_empty(), "{errors:?}");
    let http = spinoco_connector::Http::new(Duration::from_secs(10), 2, &network);
    let dsn =
        format!("AccountName=devstoreaccount1;AccountKey={AZURITE_KEY};BlobEndpoint={endpoint}");
    let settings = AzureSettings {
        account: spinoco_connector::azure::parse_connection_string(&dsn).unwrap(),
        container: container.into(),
        prefix: String::new(),
        block_size: 8 << 20,
        access_tier: None,
    };
    AzureStore::new(
        settings,
        http.agent,
        spinoco_connector::RetryBudget::tries(3),
    )
}

/// AKS workload identity and a managed identity each sync fully into Azurite with
/// OAuth; an expired token is dropped and replaced, and a token for another audience
/// stops the run (exit 5) before the feed hands out more.
#[test]
fn azure_workload_and_managed_identity_tokens_into_azurite_with_oauth() {
    let Some(azurite) = OAuthAzurite::start() else {
        return;
    };
    let ca = azurite.ca();
    let container = "spinoco-wi";
    let admin = key_store(&azurite.blob_endpoint(), &ca, container);
    admin.ensure_container().unwrap();

    let tenant = "72f988bf-86f1-41af-91ab-2d7cd011db47";
    let client = "6f1c6a0e-1d2b-4a5c-9e8f-0a1b2c3d4e5f";
    let entra = FakeServer::start(Box::new(move |r| {
        if r.target != format!("/{tenant}/oauth2/v2.0/token")
            || r.field("client_id").as_deref() != Some(client)
            || r.field("scope").as_deref() != Some("https://storage.azure.com/.default")
        {
            return (400, r#"{"error":"invalid_request"}"#.into());
        }
        let aud = match r.field("client_assertion").as_deref() {
            Some("eyJaks.federated") => "https://storage.azure.com",
            // A token for another resource: the storage must refuse it.
            _ => "https://vault.azure.net",
        };
        (
            200,
            format!(
                r#"{{"token_type":"Bearer","expires_in":3599,"access_token":"{}"}}"#,
                fresh_jwt(aud)
            ),
        )
    }));
    let token = token_file("aks-wi", "eyJaks.federated");
    let prefix = unique("aks");
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
        let jwt = fresh_jwt("https://storage.azure.com");
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
    let prefix2 = unique("vm");
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
    let asked = Arc::new(AtomicUsize::new(0));
    let counted = asked.clone();
    let entra3 = FakeServer::start(Box::new(move |_| {
        let jwt = if counted.fetch_add(1, Ordering::SeqCst) == 0 {
            // Expired a minute ago.
            entra_jwt("https://storage.azure.com", 3600, 3540)
        } else {
            fresh_jwt("https://storage.azure.com")
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
    let prefix3 = unique("expired");
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
        asked.load(Ordering::SeqCst),
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

/// A connection string with an access tier: the tier and the task's metadata on every
/// commit (none on the blocks), and the README's role holds exactly the data actions
/// the sync used.
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
        let path = percent_decode(r.target.split('?').next().unwrap());
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
