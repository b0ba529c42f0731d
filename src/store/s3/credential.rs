//! AWS credentials for the S3 store, looked up in the order the AWS SDKs use, and the
//! SigV4 signature made with them ([`sign`]).
//!
//! The chain is ours rather than rust-s3's (`aws-creds`) so that it runs on the shared
//! ureq agent, its endpoints can be pointed at a test server, and temporary
//! credentials are refreshed before they expire instead of after a request failed:
//!
//! 1. `AWS_ACCESS_KEY_ID` + `AWS_SECRET_ACCESS_KEY` (+ `AWS_SESSION_TOKEN`);
//! 2. web identity (EKS IRSA): `AWS_ROLE_ARN` + `AWS_WEB_IDENTITY_TOKEN_FILE` traded at
//!    STS ([`super::identity::WebIdentity`]). Placed as the Java SDK v2 and botocore
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
//!
//! What the chain may look at is read with the rest of the settings
//! ([`super::builder::CredentialSettings`]).

use std::time::{Duration, SystemTime};

use s3::Region;
use serde::Deserialize;

use super::builder::CredentialSettings;
use crate::env::Secret;
use crate::store::client::identity::parse_rfc3339;
use crate::store::client::token::{Fetched, TokenCache};
use crate::store::client::Request;
use crate::store::{StoreError, StoreErrorKind};

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
        use crate::store::client::token::REFRESH_MARGIN;
        self.expires.is_some_and(|t| now + REFRESH_MARGIN >= t)
    }

    #[cfg(test)]
    fn expired(&self, now: SystemTime) -> bool {
        self.expires.is_some_and(|t| now >= t)
    }
}

/// Finds credentials once, keeps them, and replaces temporary ones before they expire,
/// through the shared token cache ([`crate::store::client::token`]): a failed refresh keeps
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
        Some(raw) => Some(parse_rfc3339(raw).ok_or_else(|| {
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

/// `x-amz-date`'s format (also what rust-s3's string to sign uses).
const LONG_DATE: &[time::format_description::BorrowedFormatItem<'static>] =
    time::macros::format_description!("[year][month][day]T[hour][minute][second]Z");
/// The SHA-256 of an empty payload.
pub const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// Signs `req` for `region` with SigV4 at `now`: the payload hash comes from the
/// request's own `x-amz-content-sha256` (computed while the part was read), the
/// canonical request, string to sign, signing key and `Authorization` header from
/// rust-s3's `s3::signing`, the HMAC from ring.
pub fn sign(
    req: &mut Request,
    region: &Region,
    access_key: &str,
    secret_key: &str,
    session_token: Option<&str>,
    now: time::OffsetDateTime,
) -> Result<(), StoreError> {
    use ureq::http::{HeaderName, HeaderValue};
    let bad = |what: &str| {
        StoreError::new(
            StoreErrorKind::Rejected,
            format!("cannot sign the S3 request: {what}"),
        )
    };
    let url = url::Url::parse(&req.url).map_err(|_| bad("the URL does not parse"))?;
    let host = match (url.host_str(), url.port()) {
        (Some(h), Some(p)) => format!("{h}:{p}"),
        (Some(h), None) => h.to_string(),
        (None, _) => return Err(bad("the URL has no host")),
    };
    let date = now.format(LONG_DATE).map_err(|_| bad("the date"))?;
    if !req.headers.iter().any(|(n, _)| n == "x-amz-content-sha256") {
        req.headers
            .push(("x-amz-content-sha256".into(), EMPTY_SHA256.into()));
    }
    req.headers
        .retain(|(n, _)| n != "host" && n != "x-amz-date");
    req.headers.push(("host".into(), host));
    req.headers.push(("x-amz-date".into(), date));
    if let Some(token) = session_token {
        req.headers
            .push(("x-amz-security-token".into(), token.to_string()));
    }
    let mut headers = ureq::http::HeaderMap::new();
    for (n, v) in &req.headers {
        let name = HeaderName::from_bytes(n.as_bytes()).map_err(|_| bad("a header name"))?;
        let value = HeaderValue::from_str(v).map_err(|_| bad("a header value"))?;
        headers.insert(name, value);
    }
    let payload = req
        .headers
        .iter()
        .find(|(n, _)| n == "x-amz-content-sha256")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    let fail = |e: s3::error::S3Error| bad(&e.to_string());
    let canonical = canonical_request(req.method, &url, &headers, &payload)?;
    let to_sign = s3::signing::string_to_sign(&now, region, &canonical).map_err(fail)?;
    let key = s3::signing::signing_key(&now, secret_key, region, "s3").map_err(fail)?;
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &key);
    let signature = crate::checksum::hex(ring::hmac::sign(&key, to_sign.as_bytes()).as_ref());
    let signed = s3::signing::signed_header_string(&headers);
    let authorization =
        s3::signing::authorization_header(access_key, &now, region, &signed, &signature)
            .map_err(fail)?;
    req.headers.push(("authorization".into(), authorization));
    Ok(())
}

/// SigV4's canonical request. The URI and query are rust-s3's; the headers are sorted
/// here by name, as the specification says: rust-s3 0.38 sorts whole `name:value`
/// lines, which puts `x-amz-server-side-encryption-aws-kms-key-id:...` before
/// `x-amz-server-side-encryption:...` (`-` sorts before `:`) and so signs a request
/// with a KMS key id in a way no server accepts (s3s-fs answered
/// SignatureDoesNotMatch).
pub fn canonical_request(
    method: &str,
    url: &url::Url,
    headers: &ureq::http::HeaderMap,
    payload_sha256: &str,
) -> Result<String, StoreError> {
    let mut lines: Vec<(String, String)> = Vec::with_capacity(headers.len());
    for (name, value) in headers {
        let value = value.to_str().map_err(|_| {
            StoreError::new(
                StoreErrorKind::Rejected,
                format!("cannot sign the S3 request: the header {name} is not text"),
            )
        })?;
        lines.push((name.as_str().to_ascii_lowercase(), value.trim().to_string()));
    }
    lines.sort();
    let canonical_headers: Vec<String> = lines.iter().map(|(n, v)| format!("{n}:{v}")).collect();
    let signed: Vec<&str> = lines.iter().map(|(n, _)| n.as_str()).collect();
    Ok(format!(
        "{method}\n{}\n{}\n{}\n\n{}\n{payload_sha256}",
        s3::signing::canonical_uri_string(url),
        s3::signing::canonical_query_string(url),
        canonical_headers.join("\n"),
        signed.join(";"),
    ))
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
        use crate::store::client::token::REFRESH_MARGIN;
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
    fn canonical_headers_sort_by_name_even_when_one_name_prefixes_another() {
        let mut headers = ureq::http::HeaderMap::new();
        for (n, v) in [
            (
                "x-amz-server-side-encryption-aws-kms-key-id",
                "arn:aws:kms:k",
            ),
            ("x-amz-server-side-encryption", "aws:kms"),
            ("host", "s3.local"),
        ] {
            headers.insert(
                ureq::http::HeaderName::from_static(n),
                ureq::http::HeaderValue::from_static(v),
            );
        }
        let url = url::Url::parse("https://s3.local/b/k?uploads").unwrap();
        let c = canonical_request("POST", &url, &headers, EMPTY_SHA256).unwrap();
        assert_eq!(
            c,
            format!(
                "POST\n/b/k\nuploads=\nhost:s3.local\nx-amz-server-side-encryption:aws:kms\n\
                 x-amz-server-side-encryption-aws-kms-key-id:arn:aws:kms:k\n\n\
                 host;x-amz-server-side-encryption;x-amz-server-side-encryption-aws-kms-key-id\n{EMPTY_SHA256}"
            )
        );
    }

    /// AWS's published SigV4 example "GET Object" (S3 API reference, "Signature
    /// Calculations for the Authorization Header: Transferring Payload in a Single
    /// Chunk"): the first 10 bytes of examplebucket/test.txt, 2013-05-24.
    #[test]
    fn signature_matches_the_aws_test_vector() {
        let mut req = Request::new(
            "GET",
            "https://examplebucket.s3.amazonaws.com/test.txt".into(),
        )
        .header("range", "bytes=0-9");
        let now = time::macros::datetime!(2013-05-24 0:00 UTC);
        let region = Region::Custom {
            region: "us-east-1".into(),
            endpoint: "https://s3.amazonaws.com".into(),
        };
        sign(
            &mut req,
            &region,
            "AKIAIOSFODNN7EXAMPLE",
            "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
            None,
            now,
        )
        .unwrap();
        let auth = &req
            .headers
            .iter()
            .find(|(n, _)| n == "authorization")
            .unwrap()
            .1;
        assert_eq!(
            auth,
            "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request,\
             SignedHeaders=host;range;x-amz-content-sha256;x-amz-date,\
             Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
        );
    }
}
