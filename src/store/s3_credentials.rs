//! AWS credentials for the S3 store, looked up in the order the AWS SDKs use.
//!
//! The chain is ours rather than rust-s3's (`aws-creds`) so that it runs on the shared
//! ureq agent, its endpoints can be pointed at a test server, and temporary
//! credentials are refreshed before they expire instead of after a request failed:
//!
//! 1. `AWS_ACCESS_KEY_ID` + `AWS_SECRET_ACCESS_KEY` (+ `AWS_SESSION_TOKEN`);
//! 2. web identity (EKS IRSA): `AWS_ROLE_ARN` + `AWS_WEB_IDENTITY_TOKEN_FILE` traded at
//!    STS ([`crate::cloud::aws::WebIdentity`]). Placed as the Java SDK v2 and botocore
//!    place it, before the shared file (the Rust and Go SDKs look at the profile first;
//!    this chain reads only static keys from the file, which a pod rarely has);
//! 3. the shared credentials file (`AWS_SHARED_CREDENTIALS_FILE`, else
//!    `~/.aws/credentials`), profile `AWS_PROFILE` or `default`;
//! 4. the ECS/EKS container endpoint: `AWS_CONTAINER_CREDENTIALS_RELATIVE_URI` (against
//!    `http://169.254.170.2`) or `AWS_CONTAINER_CREDENTIALS_FULL_URI` (ECS on Fargate,
//!    EKS Pod Identity), with `AWS_CONTAINER_AUTHORIZATION_TOKEN` (or `_TOKEN_FILE`,
//!    read at every fetch) as `Authorization`;
//! 5. EC2 instance metadata, IMDSv2 (a PUT for a session token, then the role and its
//!    credentials), at `AWS_EC2_METADATA_SERVICE_ENDPOINT` (default
//!    `http://169.254.169.254`) unless `AWS_EC2_METADATA_DISABLED=true`.
//!
//! Every value is kept in a [`Secret`]; errors and logs name the source, never a value.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use serde::Deserialize;

use super::client::token::{Fetched, TokenCache};
use super::{StoreError, StoreErrorKind};
use crate::env::{ConfigError, Env, Secret};

pub const DEFAULT_ECS_HOST: &str = "http://169.254.170.2";
pub const DEFAULT_IMDS_ENDPOINT: &str = "http://169.254.169.254";
/// The metadata services are on the local link: a host without them must not stall
/// the start for the whole HTTP timeout.
const METADATA_TIMEOUT: Duration = Duration::from_secs(3);
const IMDS_TOKEN_TTL_SECONDS: &str = "21600";

/// Where the credentials came from (for logs and `check`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Environment,
    WebIdentity,
    SharedFile,
    Container,
    InstanceMetadata,
}

impl Source {
    pub fn name(self) -> &'static str {
        match self {
            Source::Environment => "environment (AWS_ACCESS_KEY_ID)",
            Source::WebIdentity => "web identity (AWS_ROLE_ARN, AWS_WEB_IDENTITY_TOKEN_FILE)",
            Source::SharedFile => "shared credentials file",
            Source::Container => "container credentials endpoint",
            Source::InstanceMetadata => "EC2 instance metadata (IMDSv2)",
        }
    }
}

/// One set of credentials. `Debug` masks every value.
#[derive(Debug, Clone)]
pub struct AwsCredentials {
    pub access_key_id: Secret,
    pub secret_access_key: Secret,
    pub session_token: Option<Secret>,
    /// `None` for long-lived keys.
    pub expires: Option<SystemTime>,
    pub source: Source,
}

impl AwsCredentials {
    #[cfg(test)]
    fn needs_refresh(&self, now: SystemTime) -> bool {
        use super::client::token::REFRESH_MARGIN;
        self.expires.is_some_and(|t| now + REFRESH_MARGIN >= t)
    }

    #[cfg(test)]
    fn expired(&self, now: SystemTime) -> bool {
        self.expires.is_some_and(|t| now >= t)
    }
}

/// What the chain may look at, read from the environment with the configuration.
#[derive(Debug, Clone)]
pub struct CredentialSettings {
    pub access_key_id: Option<Secret>,
    pub secret_access_key: Option<Secret>,
    pub session_token: Option<Secret>,
    /// `AWS_ROLE_ARN` + `AWS_WEB_IDENTITY_TOKEN_FILE` (EKS IRSA).
    pub web_identity: Option<crate::cloud::aws::WebIdentity>,
    /// `AWS_SHARED_CREDENTIALS_FILE`, else `$HOME/.aws/credentials` (if HOME is set).
    pub shared_file: Option<PathBuf>,
    pub profile: String,
    pub ecs_relative_uri: Option<String>,
    pub ecs_full_uri: Option<String>,
    pub ecs_token: Option<Secret>,
    pub ecs_token_file: Option<PathBuf>,
    /// Base for the relative URI; only tests change it.
    pub ecs_host: String,
    pub imds_endpoint: String,
    pub imds_disabled: bool,
}

impl CredentialSettings {
    /// Reads the AWS variables; mistakes are pushed to `errors` (values masked).
    pub fn from_env(env: &Env, errors: &mut Vec<ConfigError>) -> CredentialSettings {
        CredentialSettings::from_env_in(env, None, errors)
    }

    /// [`CredentialSettings::from_env`] for a bucket in `region`: the regional STS
    /// endpoint of web identity when `AWS_REGION` / `AWS_DEFAULT_REGION` are unset.
    pub fn from_env_in(
        env: &Env,
        region: Option<&str>,
        errors: &mut Vec<ConfigError>,
    ) -> CredentialSettings {
        let secret = |name: &str| env.get(name).map(Secret::new);
        let access_key_id = secret("AWS_ACCESS_KEY_ID");
        let secret_access_key = secret("AWS_SECRET_ACCESS_KEY");
        match (&access_key_id, &secret_access_key) {
            (Some(_), None) => errors.push(ConfigError::new(
                "AWS_SECRET_ACCESS_KEY",
                None,
                "is required when AWS_ACCESS_KEY_ID is set",
            )),
            (None, Some(_)) => errors.push(ConfigError::new(
                "AWS_ACCESS_KEY_ID",
                None,
                "is required when AWS_SECRET_ACCESS_KEY is set",
            )),
            _ => {}
        }
        let shared_file = env
            .get("AWS_SHARED_CREDENTIALS_FILE")
            .map(PathBuf::from)
            .or_else(|| {
                env.get("HOME")
                    .map(|h| PathBuf::from(h).join(".aws").join("credentials"))
            });
        let ecs_full_uri = env
            .get("AWS_CONTAINER_CREDENTIALS_FULL_URI")
            .map(str::to_string);
        if let Some(uri) = &ecs_full_uri {
            if let Err(problem) = check_full_uri(uri) {
                errors.push(ConfigError::new(
                    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                    Some(uri),
                    problem,
                ));
            }
        }
        let imds_endpoint = env
            .get("AWS_EC2_METADATA_SERVICE_ENDPOINT")
            .unwrap_or(DEFAULT_IMDS_ENDPOINT)
            .trim_end_matches('/')
            .to_string();
        if !(imds_endpoint.starts_with("http://") || imds_endpoint.starts_with("https://")) {
            errors.push(ConfigError::new(
                "AWS_EC2_METADATA_SERVICE_ENDPOINT",
                Some(&imds_endpoint),
                "must be an http:// or https:// URL",
            ));
        }
        CredentialSettings {
            access_key_id,
            secret_access_key,
            session_token: secret("AWS_SESSION_TOKEN"),
            web_identity: crate::cloud::aws::WebIdentity::from_env(env, region, errors),
            shared_file,
            profile: env.get("AWS_PROFILE").unwrap_or("default").to_string(),
            ecs_relative_uri: env
                .get("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI")
                .map(str::to_string),
            ecs_full_uri,
            ecs_token: secret("AWS_CONTAINER_AUTHORIZATION_TOKEN"),
            ecs_token_file: env
                .get("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE")
                .map(PathBuf::from),
            ecs_host: DEFAULT_ECS_HOST.to_string(),
            imds_endpoint,
            imds_disabled: env
                .get("AWS_EC2_METADATA_DISABLED")
                .is_some_and(|v| v.eq_ignore_ascii_case("true")),
        }
    }

    /// A one-line summary for `check` (no values).
    pub fn describe(&self) -> String {
        if self.access_key_id.is_some() {
            return "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (***)".to_string();
        }
        if let Some(w) = &self.web_identity {
            return w.describe();
        }
        let mut chain = Vec::new();
        if let Some(f) = &self.shared_file {
            chain.push(format!("file {} [{}]", f.display(), self.profile));
        }
        if self.ecs_relative_uri.is_some() || self.ecs_full_uri.is_some() {
            chain.push("container endpoint".to_string());
        } else if !self.imds_disabled {
            chain.push(format!("instance metadata {}", self.imds_endpoint));
        }
        format!("looked up in: {}", chain.join(", then "))
    }
}

/// The AWS SDKs accept a full container URI over plain HTTP only on the local host or
/// the ECS/EKS link-local addresses.
fn check_full_uri(uri: &str) -> Result<(), &'static str> {
    if uri.starts_with("https://") {
        return Ok(());
    }
    let Some(rest) = uri.strip_prefix("http://") else {
        return Err("must be an http:// or https:// URL");
    };
    let authority = rest.split('/').next().unwrap_or("");
    let host = match authority.rsplit_once(':') {
        Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) => h,
        _ => authority,
    };
    let allowed = host == "localhost"
        || host == "[::1]"
        || host.starts_with("127.")
        || host == "169.254.170.2"
        || host == "169.254.170.23"
        || host == "[fd00:ec2::23]";
    if allowed {
        Ok(())
    } else {
        Err("plain http is only allowed to the local host or the ECS/EKS credential addresses")
    }
}

/// Finds credentials once, keeps them, and replaces temporary ones before they expire,
/// through the shared token cache ([`super::client::token`]): a failed refresh keeps
/// serving the current ones until they expire, and a refusal drops them.
/// Parallel workers share it; one of them refreshes while the others wait.
pub struct CredentialProvider {
    settings: CredentialSettings,
    agent: ureq::Agent,
    cache: TokenCache<AwsCredentials>,
}

impl CredentialProvider {
    pub fn new(settings: CredentialSettings, agent: ureq::Agent) -> CredentialProvider {
        CredentialProvider {
            settings,
            agent,
            cache: TokenCache::new(),
        }
    }

    /// Valid credentials, fetched anew when the kept ones are near their expiry.
    pub fn current(&self) -> Result<AwsCredentials, StoreError> {
        self.cache.get(|| {
            let fresh = self.resolve()?;
            log::info!("S3 credentials from the {}", fresh.source.name());
            Ok(Fetched {
                expires: fresh.expires,
                value: fresh,
            })
        })
    }

    /// Forgets the kept credentials (the server refused them or said they expired).
    /// Returns whether there were any.
    pub fn invalidate(&self) -> bool {
        self.cache.invalidate()
    }

    fn resolve(&self) -> Result<AwsCredentials, StoreError> {
        let s = &self.settings;
        if let (Some(id), Some(secret)) = (&s.access_key_id, &s.secret_access_key) {
            return Ok(AwsCredentials {
                access_key_id: id.clone(),
                secret_access_key: secret.clone(),
                session_token: s.session_token.clone(),
                expires: None,
                source: Source::Environment,
            });
        }
        let mut tried = vec!["environment".to_string()];
        if let Some(wi) = &s.web_identity {
            // Configured explicitly: its failure is the answer, not a reason to look on.
            let c = wi.fetch(&self.agent)?;
            return Ok(AwsCredentials {
                access_key_id: c.access_key_id,
                secret_access_key: c.secret_access_key,
                session_token: Some(c.session_token),
                expires: Some(c.expires),
                source: Source::WebIdentity,
            });
        }
        if let Some(path) = &s.shared_file {
            match std::fs::read_to_string(path) {
                Ok(text) => {
                    if let Some(c) = from_shared_file(&text, &s.profile) {
                        return Ok(c);
                    }
                    tried.push(format!(
                        "{} has no profile [{}] with keys",
                        path.display(),
                        s.profile
                    ));
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    tried.push(format!("no file {}", path.display()))
                }
                Err(e) => {
                    return Err(denied(format!(
                        "cannot read the AWS credentials file {}: {e}",
                        path.display()
                    )))
                }
            }
        }
        if let Some(url) = self.container_url() {
            return self.fetch_container(&url);
        }
        if s.imds_disabled {
            tried.push("instance metadata disabled".to_string());
        } else {
            match self.fetch_imds() {
                Ok(c) => return Ok(c),
                Err(Imds::Unreachable(why)) => tried.push(format!(
                    "no instance metadata at {} ({why})",
                    s.imds_endpoint
                )),
                Err(Imds::Failed(e)) => return Err(e),
            }
        }
        Err(denied(format!(
            "no AWS credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, a shared \
             credentials file, AWS_ROLE_ARN and AWS_WEB_IDENTITY_TOKEN_FILE (EKS IAM roles for service accounts), or run with an ECS task role, EKS Pod Identity or an EC2 instance role (tried: {})",
            tried.join("; ")
        )))
    }

    fn container_url(&self) -> Option<String> {
        let s = &self.settings;
        match (&s.ecs_relative_uri, &s.ecs_full_uri) {
            (Some(rel), _) => Some(format!(
                "{}/{}",
                s.ecs_host.trim_end_matches('/'),
                rel.trim_start_matches('/')
            )),
            (None, Some(full)) => Some(full.clone()),
            (None, None) => None,
        }
    }

    fn fetch_container(&self, url: &str) -> Result<AwsCredentials, StoreError> {
        let what = "the container credentials endpoint";
        let token = match (&self.settings.ecs_token_file, &self.settings.ecs_token) {
            (Some(path), _) => Some(Secret::new(
                std::fs::read_to_string(path)
                    .map_err(|e| {
                        denied(format!(
                            "cannot read AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE {}: {e}",
                            path.display()
                        ))
                    })?
                    .trim()
                    .to_string(),
            )),
            (None, token) => token.clone(),
        };
        let mut request = self.agent.get(url).header("Accept", "application/json");
        if let Some(t) = &token {
            request = request.header("Authorization", t.expose());
        }
        let mut response = request
            .config()
            .timeout_global(Some(METADATA_TIMEOUT * 2))
            .build()
            .call()
            .map_err(|e| StoreError::transient(format!("cannot reach {what}: {e}")))?;
        let status = response.status().as_u16();
        if status != 200 {
            return Err(http_failure(what, status));
        }
        let body = read_body(&mut response, what)?;
        parse_credentials_json(&body, what, Source::Container)
    }

    fn fetch_imds(&self) -> Result<AwsCredentials, Imds> {
        let base = &self.settings.imds_endpoint;
        let what = "EC2 instance metadata";
        let config = |r: ureq::RequestBuilder<ureq::typestate::WithBody>| {
            r.config().timeout_global(Some(METADATA_TIMEOUT)).build()
        };
        let mut response = config(self.agent.put(format!("{base}/latest/api/token")).header(
            "X-aws-ec2-metadata-token-ttl-seconds",
            IMDS_TOKEN_TTL_SECONDS,
        ))
        .send_empty()
        .map_err(|e| Imds::Unreachable(e.to_string()))?;
        let status = response.status().as_u16();
        if status != 200 {
            // Something answers, but not IMDSv2: IMDSv1 is not used (it is insecure).
            return Err(Imds::Unreachable(format!(
                "the session token request got HTTP {status}"
            )));
        }
        let token = Secret::new(
            read_body(&mut response, what)
                .map_err(Imds::Failed)?
                .trim()
                .to_string(),
        );
        let get = |path: &str| -> Result<String, StoreError> {
            let mut response = self
                .agent
                .get(format!(
                    "{base}/latest/meta-data/iam/security-credentials/{path}"
                ))
                .header("X-aws-ec2-metadata-token", token.expose())
                .config()
                .timeout_global(Some(METADATA_TIMEOUT))
                .build()
                .call()
                .map_err(|e| StoreError::transient(format!("cannot reach {what}: {e}")))?;
            match response.status().as_u16() {
                200 => read_body(&mut response, what),
                404 => Err(denied(format!("{what} has no IAM role for this instance"))),
                status => Err(http_failure(what, status)),
            }
        };
        let roles = get("").map_err(Imds::Failed)?;
        let role = roles
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .ok_or_else(|| {
                Imds::Failed(denied(format!(
                    "{what} lists no IAM role for this instance"
                )))
            })?;
        let body = get(role).map_err(Imds::Failed)?;
        parse_credentials_json(&body, what, Source::InstanceMetadata).map_err(Imds::Failed)
    }
}

enum Imds {
    /// Nothing (or no IMDSv2) answers: not on EC2, try to explain and stop the chain.
    Unreachable(String),
    Failed(StoreError),
}

fn denied(message: String) -> StoreError {
    StoreError::new(StoreErrorKind::Denied, message)
}

fn http_failure(what: &str, status: u16) -> StoreError {
    let message = format!("{what} answered HTTP {status} when asked for credentials");
    match status {
        401 | 403 | 404 => denied(message),
        _ => StoreError::transient(message),
    }
}

fn read_body(
    response: &mut ureq::http::Response<ureq::Body>,
    what: &str,
) -> Result<String, StoreError> {
    response
        .body_mut()
        .with_config()
        .limit(64 * 1024)
        .read_to_string()
        .map_err(|e| StoreError::transient(format!("cannot read the answer of {what}: {e}")))
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct CredentialsJson {
    code: Option<String>,
    access_key_id: Option<String>,
    secret_access_key: Option<String>,
    token: Option<String>,
    expiration: Option<String>,
}

/// The JSON that both ECS and IMDS return.
fn parse_credentials_json(
    body: &str,
    what: &str,
    source: Source,
) -> Result<AwsCredentials, StoreError> {
    // serde's message could quote a value: only the position is reported.
    let json: CredentialsJson = serde_json::from_str(body).map_err(|e| {
        StoreError::transient(format!(
            "{what} answered with unexpected JSON (line {}, column {})",
            e.line(),
            e.column()
        ))
    })?;
    if let Some(code) = json.code.as_deref().filter(|c| *c != "Success") {
        return Err(StoreError::transient(format!(
            "{what} answered with code {code:?}"
        )));
    }
    let (Some(id), Some(secret)) = (json.access_key_id, json.secret_access_key) else {
        return Err(StoreError::transient(format!(
            "{what} answered without AccessKeyId/SecretAccessKey"
        )));
    };
    let expires = match json.expiration.as_deref() {
        None => None,
        Some(raw) => Some(parse_expiration(raw).ok_or_else(|| {
            StoreError::transient(format!(
                "{what} answered with an unreadable Expiration {raw:?}"
            ))
        })?),
    };
    Ok(AwsCredentials {
        access_key_id: Secret::new(id),
        secret_access_key: Secret::new(secret),
        session_token: json.token.map(Secret::new),
        expires,
        source,
    })
}

fn parse_expiration(raw: &str) -> Option<SystemTime> {
    use time::format_description::well_known::Rfc3339;
    let t = time::OffsetDateTime::parse(raw.trim(), &Rfc3339).ok()?;
    Some(SystemTime::from(t))
}

/// Reads `[profile]` from an INI credentials file (a `profile ` prefix is tolerated).
fn from_shared_file(text: &str, profile: &str) -> Option<AwsCredentials> {
    let mut in_section = false;
    let (mut id, mut secret, mut token) = (None, None, None);
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            let name = name.trim();
            in_section =
                name == profile || name.strip_prefix("profile ").map(str::trim) == Some(profile);
            continue;
        }
        if !in_section {
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            let v = Some(Secret::new(v.trim()));
            match k.trim().to_ascii_lowercase().as_str() {
                "aws_access_key_id" => id = v,
                "aws_secret_access_key" => secret = v,
                "aws_session_token" => token = v,
                _ => {}
            }
        }
    }
    Some(AwsCredentials {
        access_key_id: id?,
        secret_access_key: secret?,
        session_token: token,
        expires: None,
        source: Source::SharedFile,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_file_profiles() {
        let text = "[default]\naws_access_key_id = AK1\naws_secret_access_key=SK1\n\n\
                    # comment\n[profile work]\naws_access_key_id=AK2\naws_secret_access_key = SK2\naws_session_token = T2\n";
        let d = from_shared_file(text, "default").unwrap();
        assert_eq!(
            (d.access_key_id.expose(), d.secret_access_key.expose()),
            ("AK1", "SK1")
        );
        assert!(d.session_token.is_none());
        let w = from_shared_file(text, "work").unwrap();
        assert_eq!(w.session_token.unwrap().expose(), "T2");
        assert!(from_shared_file(text, "other").is_none());
    }

    #[test]
    fn json_with_expiry_and_no_leaks() {
        let body = r#"{"Code":"Success","AccessKeyId":"ASIAX","SecretAccessKey":"sek-Q1","Token":"tok-Q2","Expiration":"2030-01-01T00:00:00Z"}"#;
        let c = parse_credentials_json(body, "x", Source::Container).unwrap();
        assert_eq!(
            c.expires,
            Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_893_456_000))
        );
        let shown = format!("{c:?}");
        assert!(
            !shown.contains("sek-Q1") && !shown.contains("tok-Q2") && !shown.contains("ASIAX"),
            "{shown}"
        );
        let bad = r#"{"AccessKeyId":"ASIAX","SecretAccessKey":12345}"#;
        let err = parse_credentials_json(bad, "x", Source::Container).unwrap_err();
        assert!(!err.message.contains("12345"), "{}", err.message);
    }

    #[test]
    fn refresh_margin() {
        use super::super::client::token::REFRESH_MARGIN;
        let now = SystemTime::now();
        let mut c = parse_credentials_json(
            r#"{"AccessKeyId":"a","SecretAccessKey":"b"}"#,
            "x",
            Source::Container,
        )
        .unwrap();
        assert!(!c.needs_refresh(now));
        c.expires = Some(now + REFRESH_MARGIN + Duration::from_secs(60));
        assert!(!c.needs_refresh(now));
        c.expires = Some(now + REFRESH_MARGIN - Duration::from_secs(1));
        assert!(c.needs_refresh(now) && !c.expired(now));
    }

    #[test]
    fn full_uri_rules() {
        assert!(check_full_uri("http://127.0.0.1:8080/creds").is_ok());
        assert!(check_full_uri("http://169.254.170.23/v1/credentials").is_ok());
        assert!(check_full_uri("https://anything.example/creds").is_ok());
        assert!(check_full_uri("http://evil.example/creds").is_err());
        assert!(check_full_uri("ftp://127.0.0.1/").is_err());
    }

    #[test]
    fn half_a_key_pair_is_a_config_error() {
        let mut errors = Vec::new();
        CredentialSettings::from_env(&Env::from_pairs([("AWS_ACCESS_KEY_ID", "AK")]), &mut errors);
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].var, "AWS_SECRET_ACCESS_KEY");
    }
}
