//! Google workload identity federation (`external_account` credential files), one of
//! the credentials of [`super::credential`].
//!
//! Why: outside GKE's own metadata server (EKS, AKS, on-premises Kubernetes, or GKE
//! with a federated pool) a pod proves who it is with a token the platform mounts or
//! serves (the "subject token"), and `GOOGLE_APPLICATION_CREDENTIALS` names an
//! `external_account` file saying where that token is and how to trade it. The flow is
//! Google's (AIP-4117, as in google-auth-library): read the subject token from a file or
//! a URL (plain text, or a field of a JSON answer), again at every fetch; exchange it at
//! the file's `token_url` (Google STS, RFC 8693 token exchange) for a federated access
//! token; when the file has a `service_account_impersonation_url`, trade that for a
//! service account's token (IAM credentials `generateAccessToken`). Executable-sourced
//! and AWS-sourced (`environment_id`) subject tokens are not supported: they are
//! refused with the file, at start.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::encoding::base64;
use crate::env::{ConfigError, Env, Secret};
use crate::store::client::identity::{
    check_file_url, exchange, form, oauth_error, parse_rfc3339, refusal_kind, seconds_field,
    strip_query, AccessToken, LOCAL_ENDPOINT_TIMEOUT,
};
use crate::store::{StoreError, StoreErrorKind};

/// The scope of every storage token (federated, impersonated, or from the other
/// credentials of [`super::credential`]): read and write objects, nothing more.
pub const STORAGE_SCOPE: &str = "https://www.googleapis.com/auth/devstorage.read_write";
/// Asked of STS when the federated token only buys a service account's token: what the
/// Google libraries ask for (IAM limits it to what the bindings allow).
pub const CLOUD_PLATFORM_SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";
pub const DEFAULT_STS_URL: &str = "https://sts.googleapis.com/v1/token";
const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";
/// What an impersonated token is asked to live, unless the file says otherwise.
const DEFAULT_IMPERSONATION_LIFETIME: u64 = 3600;

/// Where the subject token is.
#[derive(Debug, Clone)]
pub enum SubjectSource {
    File(PathBuf),
    Url {
        url: String,
        /// Sent with the request (e.g. `Metadata: True`); values are kept secret.
        headers: Vec<(String, Secret)>,
    },
}

/// How the subject token is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubjectFormat {
    Text,
    /// The token is the string in this field of a JSON object.
    Json(String),
}

/// An `external_account` credentials file. `Debug` shows no secret.
#[derive(Debug, Clone)]
pub struct ExternalAccount {
    pub audience: String,
    pub subject_token_type: String,
    pub token_url: String,
    pub source: SubjectSource,
    pub format: SubjectFormat,
    pub impersonation_url: Option<String>,
    pub impersonation_lifetime: u64,
    /// `client_id` / `client_secret`: Basic authentication at the token URL.
    pub client: Option<(String, Secret)>,
    /// `workforce_pool_user_project`, sent as STS `options` without client auth.
    pub workforce_pool_user_project: Option<String>,
    /// The file it was read from, for messages.
    pub file: PathBuf,
}

#[derive(Deserialize)]
struct File {
    #[serde(rename = "type")]
    kind: Option<String>,
    audience: Option<String>,
    subject_token_type: Option<String>,
    token_url: Option<String>,
    service_account_impersonation_url: Option<String>,
    service_account_impersonation: Option<ImpersonationOptions>,
    client_id: Option<String>,
    client_secret: Option<String>,
    workforce_pool_user_project: Option<String>,
    credential_source: Option<Source>,
}

#[derive(Deserialize)]
struct ImpersonationOptions {
    token_lifetime_seconds: Option<u64>,
}

#[derive(Deserialize)]
struct Source {
    file: Option<String>,
    url: Option<String>,
    headers: Option<std::collections::BTreeMap<String, String>>,
    format: Option<Format>,
    executable: Option<serde_json::Value>,
    environment_id: Option<String>,
}

#[derive(Deserialize)]
struct Format {
    #[serde(rename = "type")]
    kind: Option<String>,
    subject_token_field_name: Option<String>,
}

impl ExternalAccount {
    /// Parses an `external_account` file read from `file`. The problem says what is
    /// missing or wrong without quoting a secret.
    pub fn from_json(text: &str, file: &Path) -> Result<ExternalAccount, String> {
        let f: File = serde_json::from_str(text).map_err(|e| {
            format!(
                "is not a Google credentials JSON file (line {}, column {})",
                e.line(),
                e.column()
            )
        })?;
        if f.kind.as_deref() != Some("external_account") {
            return Err("is not an external_account credentials file".to_string());
        }
        let missing = |field: &str| format!("the external_account file has no {field:?}");
        let audience = f
            .audience
            .filter(|a| !a.is_empty())
            .ok_or_else(|| missing("audience"))?;
        let subject_token_type = f
            .subject_token_type
            .filter(|t| !t.is_empty())
            .ok_or_else(|| missing("subject_token_type"))?;
        let url_field = |name: &str, raw: String| {
            check_file_url(&raw).map_err(|problem| format!("its {name} {problem}"))?;
            Ok::<String, String>(raw)
        };
        let token_url = url_field(
            "token_url",
            f.token_url.unwrap_or_else(|| DEFAULT_STS_URL.to_string()),
        )?;
        let impersonation_url = f
            .service_account_impersonation_url
            .filter(|u| !u.is_empty())
            .map(|u| url_field("service_account_impersonation_url", u))
            .transpose()?;
        let impersonation_lifetime = f
            .service_account_impersonation
            .and_then(|o| o.token_lifetime_seconds)
            .unwrap_or(DEFAULT_IMPERSONATION_LIFETIME);
        if !(600..=43200).contains(&impersonation_lifetime) {
            return Err(
                "its service_account_impersonation.token_lifetime_seconds must be from 600 to 43200"
                    .to_string(),
            );
        }
        let source = f
            .credential_source
            .ok_or_else(|| missing("credential_source"))?;
        if source.executable.is_some() {
            return Err(
                "has an executable-sourced credential_source, which is not supported (the \
                 connector runs no programs); use a file- or url-sourced one"
                    .to_string(),
            );
        }
        if let Some(id) = &source.environment_id {
            return Err(format!(
                "has a credential_source for environment {id:?} (AWS-sourced), which is not \
                 supported; use a file- or url-sourced one"
            ));
        }
        let subject = match (source.file, source.url) {
            (Some(path), None) => SubjectSource::File(PathBuf::from(path)),
            (None, Some(url)) => SubjectSource::Url {
                url: url_field("credential_source.url", url)?,
                headers: source
                    .headers
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, Secret::new(v)))
                    .collect(),
            },
            (Some(_), Some(_)) => {
                return Err("its credential_source has both a file and a url; give one".to_string())
            }
            (None, None) => {
                return Err("its credential_source has neither a file nor a url".to_string())
            }
        };
        let format = match source.format {
            None => SubjectFormat::Text,
            Some(fmt) => match fmt.kind.as_deref() {
                None | Some("text") => SubjectFormat::Text,
                Some("json") => SubjectFormat::Json(
                    fmt.subject_token_field_name
                        .filter(|n| !n.is_empty())
                        .ok_or(
                        "its credential_source.format is json but has no subject_token_field_name",
                    )?,
                ),
                Some(other) => {
                    return Err(format!(
                        "its credential_source.format.type {other:?} is neither text nor json"
                    ))
                }
            },
        };
        let client = match (f.client_id, f.client_secret) {
            (Some(id), secret) => Some((id, Secret::new(secret.unwrap_or_default()))),
            (None, Some(_)) => return Err("has a client_secret but no client_id".to_string()),
            (None, None) => None,
        };
        Ok(ExternalAccount {
            audience,
            subject_token_type,
            token_url,
            source: subject,
            format,
            impersonation_url,
            impersonation_lifetime,
            client,
            workforce_pool_user_project: f.workforce_pool_user_project.filter(|p| !p.is_empty()),
            file: file.to_path_buf(),
        })
    }

    /// Whether a file's text is an `external_account` one (so that the caller can route
    /// it here and keep its own types for the others).
    pub fn is_external_account(text: &str) -> bool {
        #[derive(Deserialize)]
        struct Kind {
            #[serde(rename = "type")]
            kind: Option<String>,
        }
        serde_json::from_str::<Kind>(text)
            .is_ok_and(|k| k.kind.as_deref() == Some("external_account"))
    }

    /// The service account impersonated, from the URL (`.../serviceAccounts/EMAIL:generateAccessToken`).
    pub fn service_account(&self) -> Option<&str> {
        let url = self.impersonation_url.as_deref()?;
        let after = url.rsplit_once("/serviceAccounts/")?.1;
        Some(after.split(':').next().unwrap_or(after))
    }

    /// One line for `check` (no secrets).
    pub fn describe(&self) -> String {
        let source = match &self.source {
            SubjectSource::File(p) => format!("token file {}", p.display()),
            SubjectSource::Url { url, .. } => format!("token URL {}", strip_query(url)),
        };
        let mut line = format!(
            "workload identity federation from {} ({source}, audience {})",
            self.file.display(),
            self.audience
        );
        if let Some(sa) = self.service_account() {
            line.push_str(&format!(", as service account {sa}"));
        }
        line
    }

    /// A storage access token: the subject token read again, exchanged at STS, and,
    /// with impersonation, traded for the service account's token. A refusal is
    /// `Denied`; an unreachable or failing endpoint `Transient`.
    pub fn fetch(&self, agent: &ureq::Agent) -> Result<AccessToken, StoreError> {
        let subject = self.subject_token(agent)?;
        let scope = if self.impersonation_url.is_some() {
            CLOUD_PLATFORM_SCOPE
        } else {
            STORAGE_SCOPE
        };
        let options = match (&self.workforce_pool_user_project, &self.client) {
            (Some(project), None) => {
                Some(serde_json::json!({ "userProject": project }).to_string())
            }
            _ => None,
        };
        let mut fields = vec![
            ("grant_type", TOKEN_EXCHANGE),
            ("audience", self.audience.as_str()),
            ("scope", scope),
            ("requested_token_type", ACCESS_TOKEN_TYPE),
            ("subject_token", subject.expose()),
            ("subject_token_type", self.subject_token_type.as_str()),
        ];
        if let Some(o) = &options {
            fields.push(("options", o));
        }
        let body = form(&fields);
        let mut request = agent
            .post(&self.token_url)
            .header("content-type", "application/x-www-form-urlencoded");
        if let Some((id, secret)) = &self.client {
            let basic = base64(format!("{id}:{}", secret.expose()).as_bytes());
            request = request.header("authorization", format!("Basic {basic}"));
        }
        let answer = exchange(request.send(body.as_bytes()), &self.token_url, "Google STS")?;
        let who = format!("the external account of {}", self.file.display());
        if answer.status != 200 {
            return Err(refused(&self.token_url, &who, answer.status, &answer.body));
        }
        let json = parse_json(&answer.body, &self.token_url, &who)?;
        let Some(federated) = json
            .get("access_token")
            .and_then(|t| t.as_str())
            .filter(|t| !t.is_empty())
        else {
            return Err(StoreError::transient(format!(
                "{} answered for {who} without an access_token",
                self.token_url
            )));
        };
        let Some(impersonation_url) = &self.impersonation_url else {
            let lifetime = seconds_field(&json, "expires_in").unwrap_or(3600);
            return Ok(AccessToken::valid_for(
                federated.to_string(),
                Duration::from_secs(lifetime),
            ));
        };
        let who = format!(
            "service account {} (impersonated by {who})",
            self.service_account().unwrap_or("?")
        );
        let body = serde_json::json!({
            "scope": [STORAGE_SCOPE],
            "lifetime": format!("{}s", self.impersonation_lifetime),
        })
        .to_string();
        let answer = exchange(
            agent
                .post(impersonation_url)
                .header("content-type", "application/json")
                .header("authorization", format!("Bearer {federated}"))
                .send(body.as_bytes()),
            impersonation_url,
            "Google IAM credentials (generateAccessToken)",
        )?;
        if answer.status != 200 {
            return Err(refused(
                impersonation_url,
                &who,
                answer.status,
                &answer.body,
            ));
        }
        let json = parse_json(&answer.body, impersonation_url, &who)?;
        let token = json
            .get("accessToken")
            .and_then(|t| t.as_str())
            .filter(|t| !t.is_empty());
        let expires = json
            .get("expireTime")
            .and_then(|t| t.as_str())
            .and_then(parse_rfc3339);
        match (token, expires) {
            (Some(token), Some(expires)) => Ok(AccessToken {
                token: Secret::new(token),
                expires,
            }),
            _ => Err(StoreError::transient(format!(
                "{impersonation_url} answered for {who} without accessToken and expireTime"
            ))),
        }
    }

    /// The subject token, read now from its file or URL.
    fn subject_token(&self, agent: &ureq::Agent) -> Result<Secret, StoreError> {
        let (text, from) = match &self.source {
            SubjectSource::File(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    StoreError::new(
                        StoreErrorKind::Denied,
                        format!(
                            "cannot read the subject token file {} named in {}: {e}",
                            path.display(),
                            self.file.display()
                        ),
                    )
                })?;
                (text, path.display().to_string())
            }
            SubjectSource::Url { url, headers } => {
                let mut request = agent.get(url);
                for (name, value) in headers {
                    request = request.header(name.as_str(), value.expose());
                }
                let answer = exchange(
                    request
                        .config()
                        .timeout_global(Some(LOCAL_ENDPOINT_TIMEOUT))
                        .build()
                        .call(),
                    url,
                    "the subject token URL",
                )?;
                if answer.status != 200 {
                    return Err(StoreError::new(
                        refusal_kind(answer.status),
                        format!(
                            "the subject token URL {} named in {} answered HTTP {}",
                            strip_query(url),
                            self.file.display(),
                            answer.status
                        ),
                    ));
                }
                (answer.body, strip_query(url).to_string())
            }
        };
        let token = match &self.format {
            SubjectFormat::Text => text.trim().to_string(),
            SubjectFormat::Json(field) => serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|j| j.get(field).and_then(|v| v.as_str()).map(str::to_string))
                .ok_or_else(|| {
                    StoreError::new(
                        StoreErrorKind::Denied,
                        format!("the subject token from {from} is not JSON with a string field {field:?}"),
                    )
                })?,
        };
        if token.is_empty() {
            return Err(StoreError::new(
                StoreErrorKind::Denied,
                format!("the subject token from {from} is empty"),
            ));
        }
        Ok(Secret::new(token))
    }
}

fn refused(url: &str, who: &str, status: u16, body: &str) -> StoreError {
    StoreError::new(
        refusal_kind(status),
        format!(
            "{} refused a token for {who}: HTTP {status} {}",
            strip_query(url),
            oauth_error(body)
        )
        .trim_end()
        .to_string(),
    )
}

fn parse_json(body: &str, url: &str, who: &str) -> Result<serde_json::Value, StoreError> {
    serde_json::from_str(body).map_err(|_| {
        StoreError::transient(format!(
            "{} answered for {who} with something that is not JSON",
            strip_query(url)
        ))
    })
}

/// `GOOGLE_APPLICATION_CREDENTIALS` read as an external account, if it is one: `None`
/// when the variable is unset or the file is of another type (the caller reads those).
pub fn external_account_from_env(env: &Env) -> Result<Option<ExternalAccount>, ConfigError> {
    const VAR: &str = "GOOGLE_APPLICATION_CREDENTIALS";
    let Some(path) = env.get(VAR) else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigError::new(
            VAR,
            Some(path),
            format!("cannot read the credentials file: {e}"),
        )
    })?;
    if !ExternalAccount::is_external_account(&text) {
        return Ok(None);
    }
    ExternalAccount::from_json(&text, Path::new(path))
        .map(Some)
        .map_err(|problem| ConfigError::new(VAR, Some(path), problem))
}

#[cfg(test)]
mod tests {
    use super::*;

    const AUDIENCE: &str = "//iam.googleapis.com/projects/123/locations/global/workloadIdentityPools/eks/providers/oidc";

    fn parse(json: &str) -> Result<ExternalAccount, String> {
        ExternalAccount::from_json(json, Path::new("/etc/gcp/creds.json"))
    }

    #[test]
    fn file_and_url_sourced_files() {
        let a = parse(&format!(
            r#"{{"type":"external_account","audience":"{AUDIENCE}","subject_token_type":"urn:ietf:params:oauth:token-type:jwt",
               "token_url":"https://sts.googleapis.com/v1/token",
               "service_account_impersonation_url":"https://iamcredentials.googleapis.com/v1/projects/-/serviceAccounts/conn@p.iam.gserviceaccount.com:generateAccessToken",
               "credential_source":{{"file":"/var/run/secrets/tokens/gcp-token"}}}}"#
        ))
        .unwrap();
        assert!(
            matches!(&a.source, SubjectSource::File(p) if p == Path::new("/var/run/secrets/tokens/gcp-token"))
        );
        assert_eq!(a.format, SubjectFormat::Text);
        assert_eq!(a.service_account(), Some("conn@p.iam.gserviceaccount.com"));
        assert!(a.describe().contains("conn@p.iam.gserviceaccount.com"));

        let b = parse(&format!(
            r#"{{"type":"external_account","audience":"{AUDIENCE}","subject_token_type":"urn:ietf:params:oauth:token-type:jwt",
               "credential_source":{{"url":"http://169.254.169.254/metadata/identity/oauth2/token?api-version=2018-02-01","headers":{{"Metadata":"True"}},
               "format":{{"type":"json","subject_token_field_name":"access_token"}}}},
               "client_id":"cid","client_secret":"csecret-123"}}"#
        ))
        .unwrap();
        assert_eq!(b.token_url, DEFAULT_STS_URL);
        assert_eq!(b.format, SubjectFormat::Json("access_token".into()));
        assert!(b.impersonation_url.is_none() && b.client.is_some());
        assert!(!format!("{b:?}").contains("csecret-123"));
    }

    #[test]
    fn unsupported_and_broken_files_say_why() {
        let base = format!(
            r#""type":"external_account","audience":"{AUDIENCE}","subject_token_type":"t""#
        );
        let cases = [
            (
                format!(r#"{{{base},"credential_source":{{"executable":{{"command":"x"}}}}}}"#),
                "executable",
            ),
            (
                format!(r#"{{{base},"credential_source":{{"environment_id":"aws1"}}}}"#),
                "aws1",
            ),
            (
                format!(r#"{{{base},"credential_source":{{}}}}"#),
                "neither a file nor a url",
            ),
            (
                format!(
                    r#"{{{base},"credential_source":{{"file":"f","format":{{"type":"json"}}}}}}"#
                ),
                "subject_token_field_name",
            ),
            (format!(r#"{{{base}}}"#), "credential_source"),
            (
                format!(r#"{{{base},"token_url":"sts","credential_source":{{"file":"f"}}}}"#),
                "token_url",
            ),
            (
                r#"{"type":"external_account","credential_source":{"file":"f"}}"#.to_string(),
                "audience",
            ),
        ];
        for (json, expected) in cases {
            let err = parse(&json).unwrap_err();
            assert!(err.contains(expected), "{json}: {err}");
        }
        assert!(ExternalAccount::is_external_account(
            r#"{"type":"external_account"}"#
        ));
        assert!(!ExternalAccount::is_external_account(
            r#"{"type":"service_account"}"#
        ));
    }
}
