//! Google credentials for the GCS store: where an access token comes from, and
//! keeping it fresh.
//!
//! Apart from the store because it is its own protocol (OAuth 2.0) with its own
//! secrets. The sources are looked for in the order of Google's client libraries
//! ("Application Default Credentials"):
//! 1. `GOOGLE_APPLICATION_CREDENTIALS` naming a service-account key file (an RS256 JWT
//!    signed with its key is exchanged at the file's `token_uri`), an authorized-user
//!    file (its refresh token is exchanged) or an `external_account` file (workload
//!    identity federation: a subject token from a file or URL exchanged at Google STS,
//!    see [`super::identity`]);
//! 2. gcloud's well-known file, `$CLOUDSDK_CONFIG/application_default_credentials.json`
//!    or `~/.config/gcloud/application_default_credentials.json`;
//! 3. the metadata server of the machine (`GCE_METADATA_HOST` overrides its host).
//!
//! With an emulator endpoint only an explicit `GOOGLE_APPLICATION_CREDENTIALS` is used;
//! otherwise no `Authorization` is sent (fake-gcs-server has no authentication).
//! Tokens are cached in the shared token cache ([`crate::store::client::token`]).
//! Tokens, keys, refresh tokens and assertions never appear in a message or a `Debug`
//! output.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ring::rand::SystemRandom;
use ring::signature::{RsaKeyPair, RSA_PKCS1_SHA256};
use serde::Deserialize;

use super::identity::{ExternalAccount, STORAGE_SCOPE};
use crate::encoding::{base64_decode_loose, base64url};
use crate::env::{ConfigError, Env, Secret};
use crate::store::client::identity::form;
use crate::store::client::token::{Fetched, TokenCache};
use crate::store::{StoreError, StoreErrorKind};

pub const DEFAULT_TOKEN_URI: &str = "https://oauth2.googleapis.com/token";
pub const DEFAULT_METADATA_HOST: &str = "metadata.google.internal";
const METADATA_TOKEN_PATH: &str = "/computeMetadata/v1/instance/service-accounts/default/token";
/// Lifetime asked for in a service-account assertion (Google's maximum).
const ASSERTION_LIFETIME: u64 = 3600;

/// Where access tokens come from.
#[derive(Clone)]
pub enum Credentials {
    /// No `Authorization` at all (an emulator without credentials configured).
    Anonymous,
    ServiceAccount(ServiceAccount),
    AuthorizedUser(AuthorizedUser),
    /// Workload identity federation (`external_account`).
    ExternalAccount(Box<ExternalAccount>),
    /// The metadata server at `host` (`host[:port]`).
    Metadata {
        host: String,
    },
}

/// A service-account key file: a JWT signed with `key` buys a token at `token_uri`.
#[derive(Clone)]
pub struct ServiceAccount {
    pub client_email: String,
    pub token_uri: String,
    pub key_id: Option<String>,
    key: Arc<RsaKeyPair>,
    pub source: PathBuf,
}

/// A user's refresh token (from `gcloud auth application-default login`).
#[derive(Clone)]
pub struct AuthorizedUser {
    pub client_id: String,
    client_secret: Secret,
    refresh_token: Secret,
    pub token_uri: String,
    pub source: PathBuf,
}

impl Credentials {
    /// Finds the credentials in Google's order (see the module comment). Reads local
    /// files only; a file that is named but unusable is a configuration error.
    pub fn discover(env: &Env, emulator: bool) -> Result<Credentials, ConfigError> {
        let var = "GOOGLE_APPLICATION_CREDENTIALS";
        if let Some(path) = env.get(var) {
            return Credentials::from_file(Path::new(path))
                .map_err(|problem| ConfigError::new(var, Some(path), problem));
        }
        if emulator {
            return Ok(Credentials::Anonymous);
        }
        let well_known = match (env.get("CLOUDSDK_CONFIG"), env.get("HOME")) {
            (Some(dir), _) => Some(PathBuf::from(dir).join("application_default_credentials.json")),
            (None, Some(home)) => Some(
                PathBuf::from(home).join(".config/gcloud/application_default_credentials.json"),
            ),
            (None, None) => None,
        };
        if let Some(path) = well_known.filter(|p| p.is_file()) {
            let shown = path.display().to_string();
            return Credentials::from_file(&path).map_err(|problem| {
                ConfigError::new(
                    "CLOUDSDK_CONFIG",
                    Some(&shown),
                    format!("gcloud's credentials file: {problem}"),
                )
            });
        }
        let host = env
            .get("GCE_METADATA_HOST")
            .unwrap_or(DEFAULT_METADATA_HOST);
        if host.is_empty() || host.contains(['/', '?', '#', '@', ' ']) {
            return Err(ConfigError::new(
                "GCE_METADATA_HOST",
                Some(host),
                "must be host or host:port",
            ));
        }
        Ok(Credentials::Metadata {
            host: host.to_string(),
        })
    }

    /// Reads a service-account or authorized-user JSON file. The error says what is
    /// wrong without quoting the file.
    pub fn from_file(path: &Path) -> Result<Credentials, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read the credentials file: {e}"))?;
        Credentials::from_json(&text, path)
    }

    /// Parses the text of a credentials file found at `source`.
    pub fn from_json(text: &str, source: &Path) -> Result<Credentials, String> {
        if ExternalAccount::is_external_account(text) {
            return ExternalAccount::from_json(text, source)
                .map(|a| Credentials::ExternalAccount(Box::new(a)));
        }
        #[derive(Deserialize)]
        struct File {
            #[serde(rename = "type")]
            kind: Option<String>,
            client_email: Option<String>,
            private_key: Option<String>,
            private_key_id: Option<String>,
            token_uri: Option<String>,
            client_id: Option<String>,
            client_secret: Option<String>,
            refresh_token: Option<String>,
        }
        let file: File = serde_json::from_str(text).map_err(|e| {
            format!(
                "is not a Google credentials JSON file (line {}, column {})",
                e.line(),
                e.column()
            )
        })?;
        let token_uri = file
            .token_uri
            .filter(|u| !u.is_empty())
            .unwrap_or_else(|| DEFAULT_TOKEN_URI.to_string());
        let missing =
            |field: &str, kind: &str| format!("the {kind} credentials file has no {field:?}");
        match file.kind.as_deref() {
            Some("service_account") => {
                let client_email = file
                    .client_email
                    .ok_or_else(|| missing("client_email", "service_account"))?;
                let pem = file
                    .private_key
                    .ok_or_else(|| missing("private_key", "service_account"))?;
                let der = pem_to_der(&pem, "PRIVATE KEY")
                    .ok_or("the service account's private_key is not a PEM \"PRIVATE KEY\" (PKCS#8) block")?;
                let key = RsaKeyPair::from_pkcs8(&der)
                    .map_err(|e| format!("the service account's private_key is not a usable RSA key: {e}"))?;
                Ok(Credentials::ServiceAccount(ServiceAccount {
                    client_email,
                    token_uri,
                    key_id: file.private_key_id,
                    key: Arc::new(key),
                    source: source.to_path_buf(),
                }))
            }
            Some("authorized_user") => Ok(Credentials::AuthorizedUser(AuthorizedUser {
                client_id: file.client_id.ok_or_else(|| missing("client_id", "authorized_user"))?,
                client_secret: Secret::new(
                    file.client_secret
                        .ok_or_else(|| missing("client_secret", "authorized_user"))?,
                ),
                refresh_token: Secret::new(
                    file.refresh_token
                        .ok_or_else(|| missing("refresh_token", "authorized_user"))?,
                ),
                token_uri,
                source: source.to_path_buf(),
            })),
            Some(other) => Err(format!(
                "credentials of type {other:?} are not supported; use a service_account, authorized_user or external_account file"
            )),
            None => Err("has no \"type\"; expected a service_account or authorized_user file".to_string()),
        }
    }

    /// One line for logs and `check` (never a secret).
    pub fn describe(&self) -> String {
        match self {
            Credentials::Anonymous => "none (emulator)".to_string(),
            Credentials::ServiceAccount(sa) => {
                format!(
                    "service account {} from {}",
                    sa.client_email,
                    sa.source.display()
                )
            }
            Credentials::AuthorizedUser(u) => {
                format!("user credentials from {}", u.source.display())
            }
            Credentials::ExternalAccount(a) => a.describe(),
            Credentials::Metadata { host } => format!("metadata server {host}"),
        }
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
    }
}

impl ServiceAccount {
    /// The signed JWT asking `token_uri` for a token with [`STORAGE_SCOPE`], issued at `now`
    /// (seconds since the epoch).
    pub fn assertion(&self, now: u64) -> Result<String, String> {
        let mut header = serde_json::json!({ "alg": "RS256", "typ": "JWT" });
        if let Some(kid) = &self.key_id {
            header["kid"] = serde_json::Value::String(kid.clone());
        }
        let claims = serde_json::json!({
            "iss": self.client_email,
            "scope": STORAGE_SCOPE,
            "aud": self.token_uri,
            "iat": now,
            "exp": now + ASSERTION_LIFETIME,
        });
        let signing_input = format!(
            "{}.{}",
            base64url(header.to_string().as_bytes()),
            base64url(claims.to_string().as_bytes())
        );
        let mut signature = vec![0u8; self.key.public().modulus_len()];
        self.key
            .sign(
                &RSA_PKCS1_SHA256,
                &SystemRandom::new(),
                signing_input.as_bytes(),
                &mut signature,
            )
            .map_err(|_| "cannot sign the service-account assertion".to_string())?;
        Ok(format!("{signing_input}.{}", base64url(&signature)))
    }
}

/// Hands out the `Authorization` header value through the shared token cache
/// ([`crate::store::client::token`]): fetched when missing or near its expiry, the old
/// one served while still valid when a refresh fails, and dropped when the storage
/// answers 401. Shared by all workers; one fetch at a time.
pub struct TokenSource {
    credentials: Credentials,
    cache: TokenCache<Secret>,
}

impl TokenSource {
    pub fn new(credentials: Credentials) -> TokenSource {
        TokenSource {
            credentials,
            cache: TokenCache::new(),
        }
    }

    pub fn credentials(&self) -> &Credentials {
        &self.credentials
    }

    /// `Bearer <token>`, or `None` for anonymous access. Errors are `Denied` when the
    /// token endpoint refuses the credentials and `Transient` when it is unreachable.
    pub fn authorization(&self, agent: &ureq::Agent) -> Result<Option<String>, StoreError> {
        if let Credentials::Anonymous = self.credentials {
            return Ok(None);
        }
        let header = self.cache.get(|| {
            let (token, lifetime) = self.fetch(agent)?;
            Ok(Fetched {
                value: Secret::new(format!("Bearer {token}")),
                expires: Some(SystemTime::now() + lifetime),
            })
        })?;
        Ok(Some(header.expose().to_string()))
    }

    /// Forgets the cached token (the storage refused it); `true` when a new one can be
    /// fetched.
    pub fn invalidate(&self) -> bool {
        self.cache.invalidate();
        !matches!(self.credentials, Credentials::Anonymous)
    }

    fn fetch(&self, agent: &ureq::Agent) -> Result<(String, Duration), StoreError> {
        match &self.credentials {
            Credentials::Anonymous => unreachable!("anonymous access needs no token"),
            Credentials::ExternalAccount(a) => {
                let t = a.fetch(agent)?;
                let lifetime = t
                    .expires
                    .duration_since(SystemTime::now())
                    .unwrap_or(Duration::ZERO);
                Ok((t.token.expose().to_string(), lifetime))
            }
            Credentials::ServiceAccount(sa) => {
                let assertion = sa
                    .assertion(unix_now())
                    .map_err(|m| StoreError::new(StoreErrorKind::Denied, m))?;
                let body = form(&[
                    ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
                    ("assertion", &assertion),
                ]);
                let who = format!("service account {}", sa.client_email);
                let request = agent
                    .post(&sa.token_uri)
                    .header("content-type", "application/x-www-form-urlencoded");
                read_token(request.send(body.as_bytes()), &sa.token_uri, &who)
            }
            Credentials::AuthorizedUser(u) => {
                let body = form(&[
                    ("grant_type", "refresh_token"),
                    ("client_id", &u.client_id),
                    ("client_secret", u.client_secret.expose()),
                    ("refresh_token", u.refresh_token.expose()),
                ]);
                let who = format!("user credentials from {}", u.source.display());
                let request = agent
                    .post(&u.token_uri)
                    .header("content-type", "application/x-www-form-urlencoded");
                read_token(request.send(body.as_bytes()), &u.token_uri, &who)
            }
            Credentials::Metadata { host } => {
                let url = format!("http://{host}{METADATA_TOKEN_PATH}");
                let answer = agent.get(&url).header("metadata-flavor", "Google").call();
                if let Err(ureq::Error::HostNotFound) = answer {
                    return Err(StoreError::new(
                        StoreErrorKind::Denied,
                        format!(
                            "no Google credentials found: GOOGLE_APPLICATION_CREDENTIALS is not set, there is no \
                             gcloud credentials file, and the metadata server {host} does not exist here"
                        ),
                    ));
                }
                read_token(answer, &url, "the metadata server")
            }
        }
    }
}

/// Reads `{"access_token": .., "expires_in": ..}` from a token endpoint's answer.
fn read_token(
    answer: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    url: &str,
    who: &str,
) -> Result<(String, Duration), StoreError> {
    let mut response = answer.map_err(|e| {
        StoreError::transient(format!("cannot get a token for {who} from {url}: {e}"))
    })?;
    let status = response.status().as_u16();
    let body = response
        .body_mut()
        .with_config()
        .limit(64 * 1024)
        .read_to_string();
    let body = body.map_err(|e| {
        StoreError::transient(format!("cannot read the token for {who} from {url}: {e}"))
    })?;
    if status != 200 {
        #[derive(Deserialize)]
        struct OAuthError {
            error: Option<String>,
            error_description: Option<String>,
        }
        let detail = serde_json::from_str::<OAuthError>(&body)
            .map(|e| {
                let mut d = e.error.unwrap_or_default();
                if let Some(desc) = e.error_description {
                    d = format!("{d}: {}", desc.chars().take(200).collect::<String>());
                }
                d
            })
            .unwrap_or_default();
        let kind = match status {
            400 | 401 | 403 => StoreErrorKind::Denied,
            _ => StoreErrorKind::Transient,
        };
        return Err(StoreError::new(
            kind,
            format!("{url} refused a token for {who}: HTTP {status} {detail}")
                .trim_end()
                .to_string(),
        ));
    }
    #[derive(Deserialize)]
    struct Token {
        access_token: String,
        expires_in: Option<u64>,
    }
    let token: Token = serde_json::from_str(&body).map_err(|_| {
        StoreError::transient(format!("{url} answered without an access_token for {who}"))
    })?;
    Ok((
        token.access_token,
        Duration::from_secs(token.expires_in.unwrap_or(3600)),
    ))
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The DER bytes of the first PEM block labelled `label`.
pub fn pem_to_der(pem: &str, label: &str) -> Option<Vec<u8>> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let start = pem.find(&begin)? + begin.len();
    let stop = start + pem[start..].find(&end)?;
    base64_decode_loose(&pem[start..stop]).filter(|der| !der.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_block_is_found() {
        let pem = "junk\n-----BEGIN PRIVATE KEY-----\nTWFu\nTWE=\n-----END PRIVATE KEY-----\n";
        assert_eq!(pem_to_der(pem, "PRIVATE KEY").unwrap(), b"ManMa");
        assert_eq!(pem_to_der(pem, "RSA PRIVATE KEY"), None);
    }

    #[test]
    fn bad_files_say_why_without_quoting_secrets() {
        let p = Path::new("/x/creds.json");
        let err = Credentials::from_json(
            r#"{"type":"service_account","client_email":"a@b","private_key":"hunter2"}"#,
            p,
        )
        .unwrap_err();
        assert!(err.contains("PEM") && !err.contains("hunter2"), "{err}");
        let err = Credentials::from_json(r#"{"type":"external_account"}"#, p).unwrap_err();
        assert!(err.contains("external_account"), "{err}");
        let err = Credentials::from_json("not json", p).unwrap_err();
        assert!(err.contains("not a Google credentials"), "{err}");
        let user = Credentials::from_json(
            r#"{"type":"authorized_user","client_id":"id","client_secret":"s3cr3t","refresh_token":"r3fr3sh"}"#,
            p,
        )
        .unwrap();
        let shown = format!("{user:?} {}", user.describe());
        assert!(
            !shown.contains("s3cr3t") && !shown.contains("r3fr3sh"),
            "{shown}"
        );
        match user {
            Credentials::AuthorizedUser(u) => assert_eq!(u.token_uri, DEFAULT_TOKEN_URI),
            _ => panic!("not a user"),
        }
    }

    #[test]
    fn discovery_order() {
        let dir = std::env::temp_dir().join(format!("spinoco-gcs-auth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("application_default_credentials.json");
        std::fs::write(
            &file,
            r#"{"type":"authorized_user","client_id":"i","client_secret":"s","refresh_token":"r"}"#,
        )
        .unwrap();
        let dir_s = dir.to_str().unwrap();

        let env = Env::from_pairs([("CLOUDSDK_CONFIG", dir_s)]);
        assert!(matches!(
            Credentials::discover(&env, false).unwrap(),
            Credentials::AuthorizedUser(_)
        ));
        // An emulator ignores ambient credentials.
        assert!(matches!(
            Credentials::discover(&env, true).unwrap(),
            Credentials::Anonymous
        ));
        // No file: the metadata server, whose host can be overridden.
        let env = Env::from_pairs([
            ("HOME", "/nonexistent"),
            ("GCE_METADATA_HOST", "127.0.0.1:9"),
        ]);
        match Credentials::discover(&env, false).unwrap() {
            Credentials::Metadata { host } => assert_eq!(host, "127.0.0.1:9"),
            other => panic!("{other:?}"),
        }
        // An explicit file wins, even with an emulator; a broken one names the variable.
        let env = Env::from_pairs([("GOOGLE_APPLICATION_CREDENTIALS", file.to_str().unwrap())]);
        assert!(matches!(
            Credentials::discover(&env, true).unwrap(),
            Credentials::AuthorizedUser(_)
        ));
        let env = Env::from_pairs([("GOOGLE_APPLICATION_CREDENTIALS", "/nonexistent/key.json")]);
        assert_eq!(
            Credentials::discover(&env, false).unwrap_err().var,
            "GOOGLE_APPLICATION_CREDENTIALS"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
