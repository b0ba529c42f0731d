//! Azure: Entra ID tokens for Blob Storage from AKS workload identity or a managed
//! identity (with `SP_TASK_SYNC_AZURE_ACCOUNT_URL` instead of a connection string,
//! [`super::builder::account_url`]).
//!
//! Why: on AKS a pod gets no account key, only a federated token in
//! `AZURE_FEDERATED_TOKEN_FILE` (with `AZURE_CLIENT_ID` and `AZURE_TENANT_ID`, all set
//! by the workload identity webhook); on a VM, VM scale set or App Service it has a
//! managed identity. Either gives an OAuth 2.0 access token for
//! `https://storage.azure.com`, sent as `Authorization: Bearer` (which needs
//! `x-ms-version` 2017-11-09 or later, the oldest that accepts them).
//!
//! The sources and their order are those of the Azure Identity SDKs'
//! `DefaultAzureCredential` (leaving out the developer-tool and client-secret ones):
//! 1. workload identity (`WorkloadIdentityCredential`): the federated token is the
//!    `client_assertion` of a `client_credentials` grant at
//!    `{AZURE_AUTHORITY_HOST}{tenant}/oauth2/v2.0/token` (default authority
//!    `https://login.microsoftonline.com/`), read again at every fetch;
//! 2. managed identity (`ManagedIdentityCredential`): App Service and Container Apps
//!    when `IDENTITY_ENDPOINT` and `IDENTITY_HEADER` are set (API 2019-08-01), else the
//!    instance metadata service at `http://169.254.169.254` (API 2018-02-01), whose host
//!    the SDKs let `AZURE_POD_IDENTITY_AUTHORITY_HOST` replace (tests use it too);
//!    `AZURE_CLIENT_ID` picks a user-assigned identity.

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::encoding::percent_encode;
use crate::env::{ConfigError, Env, Secret};
use crate::store::client::identity::{
    check_token_file, check_url, exchange, form, is_loopback_host, oauth_error, read_token_file,
    refusal_kind, seconds_field, shown_url, strip_query, AccessToken, Answer,
    LOCAL_ENDPOINT_TIMEOUT,
};
use crate::store::StoreError;

/// What the token is for: Azure Storage, nothing else.
pub const STORAGE_SCOPE: &str = "https://storage.azure.com/.default";
/// The same as a managed identity `resource`.
pub const STORAGE_RESOURCE: &str = "https://storage.azure.com";
pub const DEFAULT_AUTHORITY_HOST: &str = "https://login.microsoftonline.com/";
pub const DEFAULT_IMDS_HOST: &str = "http://169.254.169.254";
const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// A token endpoint answer without a lifetime is taken as valid this long (the storage
/// answers 401 when it is not, and the token is then fetched again).
const DEFAULT_LIFETIME: Duration = Duration::from_secs(3600);

/// Where the storage token comes from.
#[derive(Debug, Clone)]
pub enum AzureIdentity {
    /// AKS workload identity: a federated token traded at Entra ID.
    Workload {
        client_id: String,
        tenant_id: String,
        token_file: PathBuf,
        /// `https://login.microsoftonline.com` without the trailing slash.
        authority: String,
    },
    /// A managed identity through the instance metadata service.
    Imds {
        /// `http://169.254.169.254`, or `AZURE_POD_IDENTITY_AUTHORITY_HOST`.
        host: String,
        client_id: Option<String>,
    },
    /// A managed identity of App Service, Functions or Container Apps.
    AppService {
        endpoint: String,
        header: Secret,
        client_id: Option<String>,
    },
}

impl AzureIdentity {
    /// The identity in the SDKs' order (see the module comment). Always one, unless a
    /// mistake was pushed to `errors` (all of them are).
    pub fn from_env(env: &Env, errors: &mut Vec<ConfigError>) -> Option<AzureIdentity> {
        let before = errors.len();
        let client_id = env.get("AZURE_CLIENT_ID");
        if let Some(id) = client_id {
            if !is_guid(id) {
                errors.push(ConfigError::new(
                    "AZURE_CLIENT_ID",
                    Some(id),
                    "is not a client id (a GUID such as 00000000-0000-0000-0000-000000000000)",
                ));
            }
        }
        if let Some(file) = env.get("AZURE_FEDERATED_TOKEN_FILE") {
            if client_id.is_none() {
                errors.push(ConfigError::new(
                    "AZURE_CLIENT_ID",
                    None,
                    "is required with AZURE_FEDERATED_TOKEN_FILE: the client id of the managed \
                     identity or app registration the federated credential belongs to \
                     (azure.workload.identity/client-id on the service account)",
                ));
            }
            let tenant_id = env.get("AZURE_TENANT_ID");
            match tenant_id {
                None => errors.push(ConfigError::new(
                    "AZURE_TENANT_ID",
                    None,
                    "is required with AZURE_FEDERATED_TOKEN_FILE: the Entra ID tenant",
                )),
                Some(t)
                    if !t
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.') =>
                {
                    errors.push(ConfigError::new(
                        "AZURE_TENANT_ID",
                        Some(t),
                        "is not a tenant id (a GUID or a domain such as contoso.onmicrosoft.com)",
                    ))
                }
                Some(_) => {}
            }
            if let Err(problem) = check_token_file(std::path::Path::new(file)) {
                errors.push(ConfigError::new(
                    "AZURE_FEDERATED_TOKEN_FILE",
                    Some(file),
                    problem,
                ));
            }
            let authority = endpoint_var(
                env,
                "AZURE_AUTHORITY_HOST",
                DEFAULT_AUTHORITY_HOST,
                true,
                errors,
            );
            return (errors.len() == before).then(|| AzureIdentity::Workload {
                client_id: client_id.unwrap_or_default().to_string(),
                tenant_id: tenant_id.unwrap_or_default().to_string(),
                token_file: PathBuf::from(file),
                authority,
            });
        }
        if env.get("IDENTITY_SERVER_THUMBPRINT").is_some() {
            errors.push(ConfigError::new(
                "IDENTITY_SERVER_THUMBPRINT",
                None,
                "Service Fabric managed identities are not supported; use workload identity or \
                 the connection string (SP_TASK_SYNC_AZURE_DSN)",
            ));
            return None;
        }
        match (env.get("IDENTITY_ENDPOINT"), env.get("IDENTITY_HEADER")) {
            (Some(endpoint), Some(header)) => {
                let endpoint = match check_url(endpoint) {
                    Ok(url) => url,
                    Err(problem) => {
                        errors.push(ConfigError::new(
                            "IDENTITY_ENDPOINT",
                            Some(shown_url(endpoint)),
                            problem,
                        ));
                        String::new()
                    }
                };
                (errors.len() == before).then(|| AzureIdentity::AppService {
                    endpoint,
                    header: Secret::new(header),
                    client_id: client_id.map(str::to_string),
                })
            }
            (Some(_), None) if env.get("IMDS_ENDPOINT").is_some() => {
                errors.push(ConfigError::new(
                    "IDENTITY_ENDPOINT",
                    None,
                    "with IMDS_ENDPOINT names an Azure Arc managed identity, which is not \
                     supported; use workload identity or the connection string (SP_TASK_SYNC_AZURE_DSN)",
                ));
                None
            }
            _ => {
                // The metadata service speaks plain http wherever it is.
                let host = endpoint_var(
                    env,
                    "AZURE_POD_IDENTITY_AUTHORITY_HOST",
                    DEFAULT_IMDS_HOST,
                    false,
                    errors,
                );
                (errors.len() == before).then(|| AzureIdentity::Imds {
                    host,
                    client_id: client_id.map(str::to_string),
                })
            }
        }
    }

    /// One line for `check` (no secrets).
    pub fn describe(&self) -> String {
        match self {
            AzureIdentity::Workload {
                client_id,
                tenant_id,
                token_file,
                authority,
            } => format!(
                "workload identity: client {client_id} in tenant {tenant_id} with the token in {} at {authority}",
                token_file.display()
            ),
            AzureIdentity::Imds { host, client_id } => format!(
                "managed identity{} from the instance metadata service {host}",
                client_id.as_ref().map(|c| format!(" {c}")).unwrap_or_else(|| " (system-assigned)".into())
            ),
            AzureIdentity::AppService { endpoint, client_id, .. } => format!(
                "managed identity{} from IDENTITY_ENDPOINT {endpoint}",
                client_id.as_ref().map(|c| format!(" {c}")).unwrap_or_else(|| " (system-assigned)".into())
            ),
        }
    }

    /// A token for Azure Storage. A refused identity is `Denied`; an unreachable,
    /// throttling or failing endpoint `Transient`.
    pub fn fetch(&self, agent: &ureq::Agent) -> Result<AccessToken, StoreError> {
        match self {
            AzureIdentity::Workload {
                client_id,
                tenant_id,
                token_file,
                authority,
            } => {
                let assertion = read_token_file("AZURE_FEDERATED_TOKEN_FILE", token_file)?;
                let url = format!("{authority}/{tenant_id}/oauth2/v2.0/token");
                let body = form(&[
                    ("client_id", client_id),
                    ("scope", STORAGE_SCOPE),
                    ("grant_type", "client_credentials"),
                    ("client_assertion_type", JWT_BEARER),
                    ("client_assertion", assertion.expose()),
                ]);
                let answer = exchange(
                    agent
                        .post(&url)
                        .header("content-type", "application/x-www-form-urlencoded")
                        .header("accept", "application/json")
                        .send(body.as_bytes()),
                    &url,
                    "Entra ID",
                )?;
                let who =
                    format!("workload identity {client_id} (token in AZURE_FEDERATED_TOKEN_FILE)");
                read_token(answer, &url, &who)
            }
            AzureIdentity::Imds { host, client_id } => {
                let mut url = format!(
                    "{host}/metadata/identity/oauth2/token?api-version=2018-02-01&resource={}",
                    percent_encode(STORAGE_RESOURCE, false)
                );
                if let Some(id) = client_id {
                    url.push_str(&format!("&client_id={}", percent_encode(id, false)));
                }
                let answer = exchange(
                    agent
                        .get(&url)
                        .header("metadata", "true")
                        .config()
                        .timeout_global(Some(LOCAL_ENDPOINT_TIMEOUT))
                        .build()
                        .call(),
                    &url,
                    "the Azure instance metadata service (for a managed identity; outside Azure VMs and nodes, use AKS workload identity or SP_TASK_SYNC_AZURE_DSN)",
                )?;
                read_token(answer, &url, &managed_who(client_id))
            }
            AzureIdentity::AppService {
                endpoint,
                header,
                client_id,
            } => {
                let mut url = format!(
                    "{endpoint}?api-version=2019-08-01&resource={}",
                    percent_encode(STORAGE_RESOURCE, false)
                );
                if let Some(id) = client_id {
                    url.push_str(&format!("&client_id={}", percent_encode(id, false)));
                }
                let answer = exchange(
                    agent
                        .get(&url)
                        .header("x-identity-header", header.expose())
                        .config()
                        .timeout_global(Some(LOCAL_ENDPOINT_TIMEOUT))
                        .build()
                        .call(),
                    &url,
                    "the managed identity endpoint (IDENTITY_ENDPOINT)",
                )?;
                read_token(answer, &url, &managed_who(client_id))
            }
        }
    }
}

fn managed_who(client_id: &Option<String>) -> String {
    match client_id {
        Some(id) => format!("managed identity {id} (AZURE_CLIENT_ID)"),
        None => "the system-assigned managed identity".to_string(),
    }
}

/// `http(s)://host[:port]` from `var` (default `default`), without the trailing slash;
/// with `https_only`, plain http only to the local host (a test's token endpoint).
fn endpoint_var(
    env: &Env,
    var: &str,
    default: &str,
    https_only: bool,
    errors: &mut Vec<ConfigError>,
) -> String {
    let raw = env.get(var).unwrap_or(default);
    match check_url(raw) {
        Ok(url) => {
            let authority = url
                .split("://")
                .nth(1)
                .unwrap_or("")
                .split('/')
                .next()
                .unwrap_or("");
            if https_only && url.starts_with("http://") && !is_loopback_host(authority) {
                errors.push(ConfigError::new(
                    var,
                    Some(raw),
                    "must be https:// (the federated token is sent to it; plain http only to the local host)",
                ));
            }
            url
        }
        Err(problem) => {
            errors.push(ConfigError::new(var, Some(shown_url(raw)), problem));
            String::new()
        }
    }
}

/// Reads an access token answer: Entra ID's (`expires_in` a number) or a managed
/// identity endpoint's (`expires_in` / `expires_on` as strings).
fn read_token(answer: Answer, url: &str, who: &str) -> Result<AccessToken, StoreError> {
    let shown = strip_query(url);
    if answer.status != 200 {
        let detail = oauth_error(&answer.body);
        let hint = match answer.status {
            400 if url.contains("/metadata/identity/") => {
                " (is a managed identity assigned to this machine, and is AZURE_CLIENT_ID right?)"
            }
            _ => "",
        };
        return Err(StoreError::new(
            refusal_kind(answer.status),
            format!(
                "{shown} refused a storage token for {who}: HTTP {} {detail}{hint}",
                answer.status
            )
            .replace("  ", " "),
        ));
    }
    let json: serde_json::Value = serde_json::from_str(&answer.body).map_err(|_| {
        StoreError::transient(format!(
            "{shown} answered for {who} with something that is not JSON"
        ))
    })?;
    let Some(token) = json
        .get("access_token")
        .and_then(|t| t.as_str())
        .filter(|t| !t.is_empty())
    else {
        return Err(StoreError::transient(format!(
            "{shown} answered for {who} without an access_token"
        )));
    };
    let expires = match (
        seconds_field(&json, "expires_in"),
        seconds_field(&json, "expires_on"),
    ) {
        (Some(secs), _) => SystemTime::now() + Duration::from_secs(secs),
        (None, Some(epoch)) => UNIX_EPOCH + Duration::from_secs(epoch),
        (None, None) => SystemTime::now() + DEFAULT_LIFETIME,
    };
    Ok(AccessToken {
        token: Secret::new(token),
        expires,
    })
}

fn is_guid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLIENT: &str = "6f1c6a0e-1d2b-4a5c-9e8f-0a1b2c3d4e5f";

    fn env(pairs: &[(&str, &str)]) -> Env {
        Env::from_pairs(pairs.iter().copied())
    }

    #[test]
    fn identity_order_workload_then_app_service_then_imds() {
        let dir = std::env::temp_dir().join(format!("spinoco-az-id-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let token = dir.join("azure-identity-token");
        std::fs::write(&token, "eyJ.fed.sig").unwrap();
        let token = token.to_str().unwrap();
        let mut errors = Vec::new();
        let all = [
            ("AZURE_CLIENT_ID", CLIENT),
            ("AZURE_TENANT_ID", "contoso.onmicrosoft.com"),
            ("AZURE_FEDERATED_TOKEN_FILE", token),
            ("IDENTITY_ENDPOINT", "http://127.0.0.1:41741/msi/token"),
            ("IDENTITY_HEADER", "hdr-secret"),
        ];
        match AzureIdentity::from_env(&env(&all), &mut errors).unwrap() {
            AzureIdentity::Workload {
                authority,
                tenant_id,
                ..
            } => {
                assert_eq!(authority, "https://login.microsoftonline.com");
                assert_eq!(tenant_id, "contoso.onmicrosoft.com");
            }
            other => panic!("{other:?}"),
        }
        let app = AzureIdentity::from_env(
            &env(&all[..1]
                .iter()
                .chain(&all[3..])
                .copied()
                .collect::<Vec<_>>()),
            &mut errors,
        )
        .unwrap();
        assert!(
            matches!(
                &app,
                AzureIdentity::AppService {
                    client_id: Some(_),
                    ..
                }
            ),
            "{app:?}"
        );
        assert!(!format!("{app:?} {}", app.describe()).contains("hdr-secret"));
        match AzureIdentity::from_env(&env(&[]), &mut errors).unwrap() {
            AzureIdentity::Imds {
                host,
                client_id: None,
            } => assert_eq!(host, DEFAULT_IMDS_HOST),
            other => panic!("{other:?}"),
        }
        match AzureIdentity::from_env(
            &env(&[("AZURE_POD_IDENTITY_AUTHORITY_HOST", "http://127.0.0.1:9/")]),
            &mut errors,
        )
        .unwrap()
        {
            AzureIdentity::Imds { host, .. } => assert_eq!(host, "http://127.0.0.1:9"),
            other => panic!("{other:?}"),
        }
        assert!(errors.is_empty(), "{errors:?}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn identity_mistakes_all_at_once() {
        let mut errors = Vec::new();
        let none = AzureIdentity::from_env(
            &env(&[
                ("AZURE_FEDERATED_TOKEN_FILE", "/nonexistent/token"),
                ("AZURE_AUTHORITY_HOST", "http://login.example"),
            ]),
            &mut errors,
        );
        assert!(none.is_none());
        let vars: Vec<&str> = errors.iter().map(|e| e.var.as_str()).collect();
        assert_eq!(
            vars,
            [
                "AZURE_CLIENT_ID",
                "AZURE_TENANT_ID",
                "AZURE_FEDERATED_TOKEN_FILE",
                "AZURE_AUTHORITY_HOST"
            ]
        );
        errors.clear();
        AzureIdentity::from_env(&env(&[("AZURE_CLIENT_ID", "my-app")]), &mut errors);
        assert_eq!(errors[0].var, "AZURE_CLIENT_ID");
        errors.clear();
        AzureIdentity::from_env(
            &env(&[
                ("IDENTITY_ENDPOINT", "http://x"),
                ("IMDS_ENDPOINT", "http://y"),
            ]),
            &mut errors,
        );
        assert!(errors[0].problem.contains("Arc"), "{}", errors[0]);
    }
}
