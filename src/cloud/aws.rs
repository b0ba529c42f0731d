//! AWS: web identity (IRSA) credentials, the SDKs' endpoint and region variables, and
//! the S3 upload options bucket policies demand.
//!
//! Why here and not in rust-s3: EKS "IAM roles for service accounts" gives a pod no
//! key, only `AWS_ROLE_ARN` and a projected token in `AWS_WEB_IDENTITY_TOKEN_FILE`;
//! the SDKs trade that token at STS (`AssumeRoleWithWebIdentity`, an unsigned call)
//! for temporary credentials, re-reading the file at every refresh because the kubelet
//! rotates it. [`WebIdentity::fetch`] does exactly that on the shared agent; the
//! credential chain places it after the environment's keys, as the AWS SDKs do.
//!
//! The official connector's SDK also honours `AWS_ENDPOINT_URL_S3` / `AWS_ENDPOINT_URL`
//! and `AWS_REGION` / `AWS_DEFAULT_REGION`; a deployment that relied on them keeps
//! working through [`s3_endpoint`] and [`s3_region`]. References: "AssumeRoleWithWebIdentity"
//! (STS API reference), "Service-specific endpoints" and "AWS Region" in the AWS SDKs and
//! Tools reference guide, "Protecting data with server-side encryption" (S3 user guide).

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use super::{exchange, form, read_token_file, shorten, strip_query};
use crate::env::{ConfigError, Env, Secret};
use crate::store::{StoreError, StoreErrorKind};

/// The STS API version of `AssumeRoleWithWebIdentity`.
const STS_VERSION: &str = "2011-06-15";

/// Temporary credentials from STS. `Debug` masks every value.
#[derive(Debug, Clone)]
pub struct StsCredentials {
    pub access_key_id: Secret,
    pub secret_access_key: Secret,
    pub session_token: Secret,
    pub expires: SystemTime,
}

/// `AWS_ROLE_ARN` + `AWS_WEB_IDENTITY_TOKEN_FILE` (+ `AWS_ROLE_SESSION_NAME`), and the
/// STS endpoint they are sent to.
#[derive(Debug, Clone)]
pub struct WebIdentity {
    pub role_arn: String,
    pub token_file: PathBuf,
    pub session_name: String,
    /// `https://sts.<region>.amazonaws.com`, or `AWS_ENDPOINT_URL_STS` / `AWS_ENDPOINT_URL`.
    pub sts_endpoint: String,
}

impl WebIdentity {
    /// Reads the web identity variables; `None` when they are not set. `fallback_region`
    /// (the bucket's) names the regional STS endpoint when neither `AWS_REGION` nor
    /// `AWS_DEFAULT_REGION` is set. Mistakes are pushed to `errors`, all of them.
    pub fn from_env(
        env: &Env,
        fallback_region: Option<&str>,
        errors: &mut Vec<ConfigError>,
    ) -> Option<WebIdentity> {
        let token_file = env.get("AWS_WEB_IDENTITY_TOKEN_FILE");
        let role_arn = env.get("AWS_ROLE_ARN");
        let (token_file, role_arn) = match (token_file, role_arn) {
            (None, None) => return None,
            (Some(_), None) => {
                errors.push(ConfigError::new(
                    "AWS_ROLE_ARN",
                    None,
                    "is required when AWS_WEB_IDENTITY_TOKEN_FILE is set: the role to assume \
                     with the token (eks.amazonaws.com/role-arn on the service account)",
                ));
                return None;
            }
            (None, Some(_)) => {
                errors.push(ConfigError::new(
                    "AWS_WEB_IDENTITY_TOKEN_FILE",
                    None,
                    "is required when AWS_ROLE_ARN is set: the projected service-account token \
                     (EKS sets both when the service account has a role)",
                ));
                return None;
            }
            (Some(f), Some(r)) => (f, r),
        };
        let before = errors.len();
        if !role_arn.starts_with("arn:") || !role_arn.contains(":role/") {
            errors.push(ConfigError::new(
                "AWS_ROLE_ARN",
                Some(role_arn),
                "is not a role ARN (arn:aws:iam::<account>:role/<name>)",
            ));
        }
        if let Err(problem) = super::check_token_file(std::path::Path::new(token_file)) {
            errors.push(ConfigError::new(
                "AWS_WEB_IDENTITY_TOKEN_FILE",
                Some(token_file),
                problem,
            ));
        }
        let session_name = match env.get("AWS_ROLE_SESSION_NAME") {
            Some(name) => {
                let ok = (2..=64).contains(&name.len())
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"_+=,.@-".contains(&b));
                if !ok {
                    errors.push(ConfigError::new(
                        "AWS_ROLE_SESSION_NAME",
                        Some(name),
                        "must be 2 to 64 letters, digits or _+=,.@-",
                    ));
                }
                name.to_string()
            }
            None => {
                let secs = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                format!("spinoco-connector-{secs}")
            }
        };
        let sts_endpoint = match configured_endpoint(env, "AWS_ENDPOINT_URL_STS", errors) {
            Some((_, url)) => url,
            None => {
                let region = env
                    .get("AWS_REGION")
                    .or_else(|| env.get("AWS_DEFAULT_REGION"))
                    .or(fallback_region);
                match region {
                    Some(r) if r.starts_with("cn-") => format!("https://sts.{r}.amazonaws.com.cn"),
                    Some(r) => format!("https://sts.{r}.amazonaws.com"),
                    // The global endpoint, as the SDKs' legacy default.
                    None => "https://sts.amazonaws.com".to_string(),
                }
            }
        };
        (errors.len() == before).then(|| WebIdentity {
            role_arn: role_arn.to_string(),
            token_file: PathBuf::from(token_file),
            session_name,
            sts_endpoint,
        })
    }

    /// One line for `check` (no secrets).
    pub fn describe(&self) -> String {
        format!(
            "web identity: role {} with the token in {} at {}",
            self.role_arn,
            self.token_file.display(),
            self.sts_endpoint
        )
    }

    /// Reads the token file (again: the kubelet rotates it) and trades it at STS for
    /// temporary credentials. A refused token or role is `Denied`, an unreachable or
    /// throttling STS `Transient`.
    pub fn fetch(&self, agent: &ureq::Agent) -> Result<StsCredentials, StoreError> {
        let token = read_token_file("AWS_WEB_IDENTITY_TOKEN_FILE", &self.token_file)?;
        let body = form(&[
            ("Action", "AssumeRoleWithWebIdentity"),
            ("Version", STS_VERSION),
            ("RoleArn", &self.role_arn),
            ("RoleSessionName", &self.session_name),
            ("WebIdentityToken", token.expose()),
        ]);
        let url = format!("{}/", self.sts_endpoint);
        let what = "AWS STS (AssumeRoleWithWebIdentity)";
        let answer = exchange(
            agent
                .post(&url)
                .header("content-type", "application/x-www-form-urlencoded")
                .header("accept", "application/xml")
                .send(body.as_bytes()),
            &url,
            what,
        )?;
        if answer.status != 200 {
            let (code, message) = sts_error(&answer.body);
            // The token may have been read just before the kubelet replaced it, and the
            // identity provider may be slow: both pass.
            let kind = match code.as_str() {
                "ExpiredTokenException" | "IDPCommunicationError" | "Throttling" => {
                    StoreErrorKind::Transient
                }
                _ => super::refusal_kind(answer.status),
            };
            let mut detail = format!("{code}: {message}");
            shorten(&mut detail);
            return Err(StoreError::new(
                kind,
                format!(
                    "{what} at {} refused role {} for the token in AWS_WEB_IDENTITY_TOKEN_FILE: HTTP {} {}",
                    strip_query(&self.sts_endpoint),
                    self.role_arn,
                    answer.status,
                    detail.trim_matches([' ', ':'])
                ),
            ));
        }
        parse_sts_credentials(&answer.body).map_err(|problem| {
            StoreError::transient(format!(
                "{what} at {} answered {problem}",
                self.sts_endpoint
            ))
        })
    }
}

/// The credentials of an `AssumeRoleWithWebIdentityResponse` (or any STS answer with a
/// `<Credentials>` element).
pub fn parse_sts_credentials(xml: &str) -> Result<StsCredentials, String> {
    let credentials = xml_element(xml, "Credentials").ok_or("without a <Credentials> element")?;
    let field = |name: &str| {
        xml_element(credentials, name)
            .map(xml_unescape)
            .filter(|v| !v.is_empty())
            .ok_or(format!("<Credentials> without <{name}>"))
    };
    let expiration = field("Expiration")?;
    let expires = super::parse_rfc3339(&expiration)
        .ok_or(format!("an unreadable <Expiration> {expiration:?}"))?;
    Ok(StsCredentials {
        access_key_id: Secret::new(field("AccessKeyId")?),
        secret_access_key: Secret::new(field("SecretAccessKey")?),
        session_token: Secret::new(field("SessionToken")?),
        expires,
    })
}

/// `Code` and `Message` of an STS `<ErrorResponse>` (empty when absent).
fn sts_error(xml: &str) -> (String, String) {
    let error = xml_element(xml, "Error").unwrap_or("");
    let get = |n| xml_element(error, n).map(xml_unescape).unwrap_or_default();
    (get("Code"), get("Message"))
}

/// The text inside the first `<name>...</name>` (or `<name attr..>`), not unescaped.
fn xml_element<'a>(xml: &'a str, name: &str) -> Option<&'a str> {
    let mut from = 0;
    loop {
        let start = from + xml[from..].find(&format!("<{name}"))?;
        let after_name = start + 1 + name.len();
        let rest = &xml[after_name..];
        // `<CredentialsX>` is another element.
        match rest.chars().next() {
            Some('>') | Some(' ') | Some('\t') | Some('\n') | Some('\r') => {}
            _ => {
                from = after_name;
                continue;
            }
        }
        let open_end = after_name + rest.find('>')? + 1;
        let close = format!("</{name}>");
        let end = open_end + xml[open_end..].find(&close)?;
        return Some(&xml[open_end..end]);
    }
}

/// The five predefined entities and numeric references.
fn xml_unescape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text.trim();
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        let tail = &rest[amp..];
        let Some(semi) = tail.find(';') else {
            out.push_str(tail);
            return out;
        };
        let entity = &tail[1..semi];
        let decoded = match entity {
            "amp" => Some('&'),
            "lt" => Some('<'),
            "gt" => Some('>'),
            "quot" => Some('"'),
            "apos" => Some('\''),
            e if e.starts_with("#x") => u32::from_str_radix(&e[2..], 16)
                .ok()
                .and_then(char::from_u32),
            e if e.starts_with('#') => e[1..].parse().ok().and_then(char::from_u32),
            _ => None,
        };
        match decoded {
            Some(c) => out.push(c),
            None => out.push_str(&tail[..=semi]),
        }
        rest = &tail[semi + 1..];
    }
    out.push_str(rest);
    out
}

/// A service endpoint from the SDKs' variables: the service's own (`service_var`, e.g.
/// `AWS_ENDPOINT_URL_S3`), else `AWS_ENDPOINT_URL`, unless
/// `AWS_IGNORE_CONFIGURED_ENDPOINT_URLS=true`. Returns the variable it came from and
/// the URL without a trailing slash; a malformed URL is pushed to `errors`.
pub fn configured_endpoint(
    env: &Env,
    service_var: &'static str,
    errors: &mut Vec<ConfigError>,
) -> Option<(&'static str, String)> {
    if env
        .get("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS")
        .is_some_and(|v| v.eq_ignore_ascii_case("true"))
    {
        return None;
    }
    for var in [service_var, "AWS_ENDPOINT_URL"] {
        if let Some(raw) = env.get(var) {
            return match super::check_url(raw) {
                Ok(url) => Some((var, url)),
                Err(problem) => {
                    errors.push(ConfigError::new(var, Some(super::shown_url(raw)), problem));
                    None
                }
            };
        }
    }
    None
}

/// The S3 endpoint when `SP_TASK_SYNC_S3_ENDPOINT` is unset: `AWS_ENDPOINT_URL_S3`, then
/// `AWS_ENDPOINT_URL` (the variable it came from is returned for `check` and errors).
pub fn s3_endpoint(env: &Env, errors: &mut Vec<ConfigError>) -> Option<(&'static str, String)> {
    configured_endpoint(env, "AWS_ENDPOINT_URL_S3", errors)
}

/// The region: `SP_TASK_SYNC_S3_REGION`, else `AWS_REGION`, else `AWS_DEFAULT_REGION`
/// (the order of the AWS SDKs after the connector's own variable). The variable it came
/// from is returned; `None` when none is set. A value that cannot be a region is pushed
/// to `errors` under its variable.
pub fn s3_region(env: &Env, errors: &mut Vec<ConfigError>) -> Option<(&'static str, String)> {
    for var in ["SP_TASK_SYNC_S3_REGION", "AWS_REGION", "AWS_DEFAULT_REGION"] {
        if let Some(raw) = env.get(var) {
            let ok = raw
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if !ok {
                errors.push(ConfigError::new(
                    var,
                    Some(raw),
                    "is not a region name (e.g. eu-central-1)",
                ));
                return None;
            }
            return Some((var, raw.to_string()));
        }
    }
    None
}

/// How the bucket is put into request URLs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Addressing {
    /// `https://endpoint/bucket/key`
    Path,
    /// `https://bucket.endpoint/key`
    Virtual,
}

impl Addressing {
    pub fn name(self) -> &'static str {
        match self {
            Addressing::Path => "path",
            Addressing::Virtual => "virtual",
        }
    }
}

/// `SP_TASK_SYNC_S3_ADDRESSING=path|virtual`. Unset (or `auto`): path-style for a custom
/// endpoint (what S3-compatible services expect, and what the connector always did) and
/// for bucket names with dots (a virtual host `a.b.s3...` is not covered by the
/// certificate), virtual-hosted on AWS. An explicit choice that cannot work is a
/// configuration error: virtual-hosted style needs a host name, not an IP address, and
/// a bucket name with dots cannot be a virtual host over https.
pub fn s3_addressing(
    env: &Env,
    endpoint: Option<&str>,
    bucket: &str,
    errors: &mut Vec<ConfigError>,
) -> Addressing {
    const VAR: &str = "SP_TASK_SYNC_S3_ADDRESSING";
    let default = if endpoint.is_some() || bucket.contains('.') {
        Addressing::Path
    } else {
        Addressing::Virtual
    };
    let Some(raw) = env.get(VAR) else {
        return default;
    };
    match raw.to_ascii_lowercase().as_str() {
        "auto" => default,
        "path" => Addressing::Path,
        "virtual" => {
            let host = endpoint
                .and_then(|e| e.split_once("://"))
                .map(|(_, rest)| rest.split('/').next().unwrap_or(""));
            let https = endpoint.is_none_or(|e| e.starts_with("https://"));
            if let Some(host) = host {
                let name = match host.rsplit_once(':') {
                    Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) => h,
                    _ => host,
                };
                if name.parse::<std::net::IpAddr>().is_ok() || name.starts_with('[') {
                    errors.push(ConfigError::new(
                        VAR,
                        Some(raw),
                        format!(
                            "virtual-hosted addressing puts the bucket into the host name, which \
                             the endpoint {host} (an IP address) cannot have; use path"
                        ),
                    ));
                    return Addressing::Path;
                }
            }
            if https && bucket.contains('.') {
                errors.push(ConfigError::new(
                    VAR,
                    Some(raw),
                    format!(
                        "the bucket {bucket:?} has dots, so as a virtual host over https its name \
                         is not covered by the server's certificate; use path"
                    ),
                ));
                return Addressing::Path;
            }
            Addressing::Virtual
        }
        _ => {
            errors.push(ConfigError::new(
                VAR,
                Some(raw),
                "must be path, virtual or auto",
            ));
            default
        }
    }
}

/// Server-side encryption asked for on every upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sse {
    /// `AES256`: keys managed by S3 (SSE-S3).
    Aes256,
    /// `aws:kms` (or `aws:kms:dsse`, dual-layer) with an optional key (the bucket's or
    /// the account's default key when `None`) and the S3 Bucket Key flag.
    Kms {
        algorithm: &'static str,
        key_id: Option<String>,
        bucket_key: Option<bool>,
    },
}

/// The S3 upload options a bucket policy may demand: encryption and storage class.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct S3Options {
    pub sse: Option<Sse>,
    pub storage_class: Option<String>,
}

/// Storage classes an upload may name. GLACIER and DEEP_ARCHIVE are left out on
/// purpose (see [`S3Options::from_env`]).
const STORAGE_CLASSES: &[&str] = &[
    "STANDARD",
    "REDUCED_REDUNDANCY",
    "STANDARD_IA",
    "ONEZONE_IA",
    "INTELLIGENT_TIERING",
    "GLACIER_IR",
    "OUTPOSTS",
    "EXPRESS_ONEZONE",
];

impl S3Options {
    /// `SP_TASK_SYNC_S3_SSE` (`AES256`, `aws:kms`, `aws:kms:dsse`),
    /// `SP_TASK_SYNC_S3_SSE_KMS_KEY_ID` and `SP_TASK_SYNC_S3_BUCKET_KEY` (`true`/`false`,
    /// both only with KMS), `SP_TASK_SYNC_S3_STORAGE_CLASS`. Every mistake is pushed.
    ///
    /// GLACIER and DEEP_ARCHIVE are refused: such an object cannot be read without a
    /// restore, and the connector reads its journal back at each round start; move
    /// recordings there with a lifecycle rule instead.
    pub fn from_env(env: &Env, errors: &mut Vec<ConfigError>) -> S3Options {
        let key_id = env.get("SP_TASK_SYNC_S3_SSE_KMS_KEY_ID");
        if let Some(k) = key_id {
            if k.len() > 2048 || k.contains(|c: char| c.is_whitespace() || c.is_control()) {
                errors.push(ConfigError::new(
                    "SP_TASK_SYNC_S3_SSE_KMS_KEY_ID",
                    Some(k),
                    "is not a KMS key id, key ARN, alias or alias ARN",
                ));
            }
        }
        let bucket_key = env.get("SP_TASK_SYNC_S3_BUCKET_KEY").and_then(|raw| {
            match raw.to_ascii_lowercase().as_str() {
                "true" => Some(true),
                "false" => Some(false),
                _ => {
                    errors.push(ConfigError::new(
                        "SP_TASK_SYNC_S3_BUCKET_KEY",
                        Some(raw),
                        "must be true or false",
                    ));
                    None
                }
            }
        });
        let sse = match env.get("SP_TASK_SYNC_S3_SSE") {
            None => None,
            Some(raw) => match raw.to_ascii_lowercase().as_str() {
                "aes256" => Some(Sse::Aes256),
                "aws:kms" => Some(Sse::Kms {
                    algorithm: "aws:kms",
                    key_id: key_id.map(str::to_string),
                    bucket_key,
                }),
                "aws:kms:dsse" => Some(Sse::Kms {
                    algorithm: "aws:kms:dsse",
                    key_id: key_id.map(str::to_string),
                    bucket_key,
                }),
                _ => {
                    errors.push(ConfigError::new(
                        "SP_TASK_SYNC_S3_SSE",
                        Some(raw),
                        "must be AES256, aws:kms or aws:kms:dsse",
                    ));
                    None
                }
            },
        };
        let kms = matches!(sse, Some(Sse::Kms { .. }));
        let wrong_sse = env.get("SP_TASK_SYNC_S3_SSE").is_some() && sse.is_none();
        if !kms && !wrong_sse {
            for (var, value) in [
                ("SP_TASK_SYNC_S3_SSE_KMS_KEY_ID", key_id),
                // A value that is not true/false was reported already.
                (
                    "SP_TASK_SYNC_S3_BUCKET_KEY",
                    bucket_key.and(env.get("SP_TASK_SYNC_S3_BUCKET_KEY")),
                ),
            ] {
                if let Some(v) = value {
                    errors.push(ConfigError::new(
                        var,
                        Some(v),
                        "applies only with SP_TASK_SYNC_S3_SSE=aws:kms (or aws:kms:dsse)",
                    ));
                }
            }
        }
        let storage_class = env.get("SP_TASK_SYNC_S3_STORAGE_CLASS").and_then(|raw| {
            let upper = raw.to_ascii_uppercase();
            if STORAGE_CLASSES.contains(&upper.as_str()) {
                Some(upper)
            } else if upper == "GLACIER" || upper == "DEEP_ARCHIVE" {
                errors.push(ConfigError::new(
                    "SP_TASK_SYNC_S3_STORAGE_CLASS",
                    Some(raw),
                    "objects in this class cannot be read back without a restore, and the \
                     connector reads its journal back at every round start; upload to \
                     STANDARD (or GLACIER_IR) and let a lifecycle rule move the recordings",
                ));
                None
            } else {
                errors.push(ConfigError::new(
                    "SP_TASK_SYNC_S3_STORAGE_CLASS",
                    Some(raw),
                    format!("must be one of {}", STORAGE_CLASSES.join(", ")),
                ));
                None
            }
        });
        S3Options { sse, storage_class }
    }

    /// The headers of every upload: PutObject and CreateMultipartUpload (never the
    /// parts: S3 takes these only when an upload starts).
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        let mut h = Vec::new();
        match &self.sse {
            None => {}
            Some(Sse::Aes256) => h.push(("x-amz-server-side-encryption", "AES256".to_string())),
            Some(Sse::Kms {
                algorithm,
                key_id,
                bucket_key,
            }) => {
                h.push(("x-amz-server-side-encryption", algorithm.to_string()));
                if let Some(k) = key_id {
                    h.push(("x-amz-server-side-encryption-aws-kms-key-id", k.clone()));
                }
                if let Some(b) = bucket_key {
                    h.push((
                        "x-amz-server-side-encryption-bucket-key-enabled",
                        b.to_string(),
                    ));
                }
            }
        }
        if let Some(c) = &self.storage_class {
            h.push(("x-amz-storage-class", c.clone()));
        }
        h
    }

    /// `name = value` lines for `check`.
    pub fn describe(&self) -> Vec<(&'static str, String)> {
        let sse = match &self.sse {
            None => "- (the bucket's default)".to_string(),
            Some(Sse::Aes256) => "AES256".to_string(),
            Some(Sse::Kms {
                algorithm,
                key_id,
                bucket_key,
            }) => format!(
                "{algorithm}, key {}, bucket key {}",
                key_id.as_deref().unwrap_or("- (the default aws/s3 key)"),
                match bucket_key {
                    None => "- (the bucket's setting)",
                    Some(true) => "on",
                    Some(false) => "off",
                }
            ),
        };
        vec![
            ("SP_TASK_SYNC_S3_SSE", sse),
            (
                "SP_TASK_SYNC_S3_STORAGE_CLASS",
                self.storage_class
                    .clone()
                    .unwrap_or_else(|| "- (STANDARD)".to_string()),
            ),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ANSWER: &str = r#"<AssumeRoleWithWebIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <AssumeRoleWithWebIdentityResult>
    <SubjectFromWebIdentityToken>system:serviceaccount:spinoco:connector</SubjectFromWebIdentityToken>
    <AssumedRoleUser>
      <Arn>arn:aws:sts::123456789012:assumed-role/spinoco/s</Arn>
      <AssumedRoleId>AROA:s</AssumedRoleId>
    </AssumedRoleUser>
    <Credentials>
      <SessionToken>FwoGZX&amp;IvYXdz==</SessionToken>
      <SecretAccessKey>wJalrXUtnFEMI/K7MDENG</SecretAccessKey>
      <Expiration>2030-01-01T00:00:00Z</Expiration>
      <AccessKeyId>ASIAEXAMPLE</AccessKeyId>
    </Credentials>
    <Audience>sts.amazonaws.com</Audience>
  </AssumeRoleWithWebIdentityResult>
</AssumeRoleWithWebIdentityResponse>"#;

    #[test]
    fn sts_answer_is_parsed_and_masked() {
        let c = parse_sts_credentials(ANSWER).unwrap();
        assert_eq!(c.access_key_id.expose(), "ASIAEXAMPLE");
        assert_eq!(c.secret_access_key.expose(), "wJalrXUtnFEMI/K7MDENG");
        assert_eq!(c.session_token.expose(), "FwoGZX&IvYXdz==");
        assert_eq!(
            c.expires,
            UNIX_EPOCH + std::time::Duration::from_secs(1_893_456_000)
        );
        let shown = format!("{c:?}");
        assert!(
            !shown.contains("ASIAEXAMPLE") && !shown.contains("wJalr"),
            "{shown}"
        );
        let err = parse_sts_credentials(
            &ANSWER.replace("<Expiration>2030-01-01T00:00:00Z</Expiration>", ""),
        )
        .unwrap_err();
        assert!(err.contains("Expiration"), "{err}");
        assert!(parse_sts_credentials("<html/>").is_err());
    }

    #[test]
    fn sts_error_code_and_message() {
        let xml = "<ErrorResponse><Error><Type>Sender</Type><Code>InvalidIdentityToken</Code>\
                   <Message>No OpenIDConnect provider found &quot;x&quot;</Message></Error></ErrorResponse>";
        assert_eq!(
            sts_error(xml),
            (
                "InvalidIdentityToken".into(),
                "No OpenIDConnect provider found \"x\"".into()
            )
        );
        assert_eq!(xml_element("<A><AB>1</AB><A2>2</A2></A>", "AB"), Some("1"));
        assert_eq!(xml_element("<AB>1</AB><A>2</A>", "A"), Some("2"));
        assert_eq!(xml_unescape("a&#65;&#x42;&bogus;&"), "aAB&bogus;&");
    }

    fn env(pairs: &[(&str, &str)]) -> Env {
        Env::from_pairs(pairs.iter().copied())
    }

    #[test]
    fn web_identity_settings_and_their_mistakes() {
        let dir = std::env::temp_dir().join(format!("spinoco-aws-wi-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let token = dir.join("token");
        std::fs::write(&token, "eyJhbGciOi.x.y").unwrap();
        let token = token.to_str().unwrap();
        let role = "arn:aws:iam::123456789012:role/spinoco";

        let mut errors = Vec::new();
        assert!(WebIdentity::from_env(&env(&[]), None, &mut errors).is_none());
        assert!(errors.is_empty());

        let wi = WebIdentity::from_env(
            &env(&[
                ("AWS_ROLE_ARN", role),
                ("AWS_WEB_IDENTITY_TOKEN_FILE", token),
                ("AWS_REGION", "eu-central-1"),
            ]),
            Some("us-east-1"),
            &mut errors,
        )
        .unwrap();
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(wi.sts_endpoint, "https://sts.eu-central-1.amazonaws.com");
        assert!(wi.session_name.starts_with("spinoco-connector-"));
        let wi = WebIdentity::from_env(
            &env(&[
                ("AWS_ROLE_ARN", role),
                ("AWS_WEB_IDENTITY_TOKEN_FILE", token),
            ]),
            Some("cn-north-1"),
            &mut errors,
        )
        .unwrap();
        assert_eq!(wi.sts_endpoint, "https://sts.cn-north-1.amazonaws.com.cn");
        let wi = WebIdentity::from_env(
            &env(&[
                ("AWS_ROLE_ARN", role),
                ("AWS_WEB_IDENTITY_TOKEN_FILE", token),
                ("AWS_ENDPOINT_URL", "http://127.0.0.1:1"),
                ("AWS_ENDPOINT_URL_STS", "http://127.0.0.1:2/"),
                ("AWS_ROLE_SESSION_NAME", "pod-a"),
            ]),
            None,
            &mut errors,
        )
        .unwrap();
        assert_eq!(
            (wi.sts_endpoint.as_str(), wi.session_name.as_str()),
            ("http://127.0.0.1:2", "pod-a")
        );

        // Every mistake at once, each under its variable.
        let none = WebIdentity::from_env(
            &env(&[
                ("AWS_ROLE_ARN", "spinoco"),
                ("AWS_WEB_IDENTITY_TOKEN_FILE", "/nonexistent/token"),
                ("AWS_ROLE_SESSION_NAME", "a b"),
                ("AWS_ENDPOINT_URL_STS", "sts.local"),
            ]),
            None,
            &mut errors,
        );
        assert!(none.is_none());
        let vars: Vec<&str> = errors.iter().map(|e| e.var.as_str()).collect();
        assert_eq!(
            vars,
            [
                "AWS_ROLE_ARN",
                "AWS_WEB_IDENTITY_TOKEN_FILE",
                "AWS_ROLE_SESSION_NAME",
                "AWS_ENDPOINT_URL_STS"
            ]
        );
        errors.clear();
        WebIdentity::from_env(
            &env(&[("AWS_WEB_IDENTITY_TOKEN_FILE", token)]),
            None,
            &mut errors,
        );
        assert_eq!(errors[0].var, "AWS_ROLE_ARN");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn endpoint_and_region_follow_the_sdk_variables() {
        let mut errors = Vec::new();
        let e = env(&[
            ("AWS_ENDPOINT_URL", "https://minio.local:9000/"),
            ("AWS_ENDPOINT_URL_S3", "https://s3.local"),
        ]);
        assert_eq!(
            s3_endpoint(&e, &mut errors),
            Some(("AWS_ENDPOINT_URL_S3", "https://s3.local".into()))
        );
        let e = env(&[("AWS_ENDPOINT_URL", "https://minio.local:9000/")]);
        assert_eq!(
            s3_endpoint(&e, &mut errors),
            Some(("AWS_ENDPOINT_URL", "https://minio.local:9000".into()))
        );
        let e = env(&[
            ("AWS_ENDPOINT_URL", "https://minio.local"),
            ("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "true"),
        ]);
        assert_eq!(s3_endpoint(&e, &mut errors), None);
        assert!(errors.is_empty());
        let e = env(&[("AWS_ENDPOINT_URL_S3", "https://key:secret@s3.local")]);
        assert_eq!(s3_endpoint(&e, &mut errors), None);
        assert_eq!(errors[0].var, "AWS_ENDPOINT_URL_S3");
        assert_eq!(errors[0].value.as_deref(), Some("***"));
        errors.clear();

        let e = env(&[
            ("AWS_REGION", "eu-west-1"),
            ("AWS_DEFAULT_REGION", "us-east-1"),
        ]);
        assert_eq!(
            s3_region(&e, &mut errors),
            Some(("AWS_REGION", "eu-west-1".into()))
        );
        let e = env(&[("AWS_DEFAULT_REGION", "us-east-1")]);
        assert_eq!(
            s3_region(&e, &mut errors),
            Some(("AWS_DEFAULT_REGION", "us-east-1".into()))
        );
        let e = env(&[
            ("SP_TASK_SYNC_S3_REGION", "eu-central-1"),
            ("AWS_REGION", "eu-west-1"),
        ]);
        assert_eq!(
            s3_region(&e, &mut errors),
            Some(("SP_TASK_SYNC_S3_REGION", "eu-central-1".into()))
        );
        assert_eq!(s3_region(&env(&[]), &mut errors), None);
        assert!(errors.is_empty());
        assert_eq!(
            s3_region(&env(&[("AWS_REGION", "eu central")]), &mut errors),
            None
        );
        assert_eq!(errors[0].var, "AWS_REGION");
    }

    #[test]
    fn addressing_defaults_and_impossible_choices() {
        let mut errors = Vec::new();
        let a = |pairs: &[(&str, &str)], endpoint, bucket, errors: &mut Vec<ConfigError>| {
            s3_addressing(&env(pairs), endpoint, bucket, errors)
        };
        assert_eq!(a(&[], None, "calls", &mut errors), Addressing::Virtual);
        assert_eq!(
            a(&[], None, "calls.example.com", &mut errors),
            Addressing::Path
        );
        assert_eq!(
            a(&[], Some("http://127.0.0.1:9000"), "calls", &mut errors),
            Addressing::Path
        );
        let virt = [("SP_TASK_SYNC_S3_ADDRESSING", "virtual")];
        assert_eq!(
            a(
                &virt,
                Some("https://minio.local:9000"),
                "calls",
                &mut errors
            ),
            Addressing::Virtual
        );
        assert_eq!(
            a(
                &[("SP_TASK_SYNC_S3_ADDRESSING", "PATH")],
                None,
                "calls",
                &mut errors
            ),
            Addressing::Path
        );
        assert!(errors.is_empty(), "{errors:?}");
        a(&virt, Some("http://127.0.0.1:9000"), "calls", &mut errors);
        a(&virt, None, "calls.example.com", &mut errors);
        a(
            &[("SP_TASK_SYNC_S3_ADDRESSING", "host")],
            None,
            "calls",
            &mut errors,
        );
        assert_eq!(errors.len(), 3);
        assert!(errors[0].problem.contains("IP address"), "{}", errors[0]);
        assert!(errors[1].problem.contains("dots"), "{}", errors[1]);
        assert!(errors.iter().all(|e| e.var == "SP_TASK_SYNC_S3_ADDRESSING"));
    }

    #[test]
    fn encryption_and_storage_class_headers() {
        let mut errors = Vec::new();
        let o = S3Options::from_env(
            &env(&[
                ("SP_TASK_SYNC_S3_SSE", "aws:kms"),
                (
                    "SP_TASK_SYNC_S3_SSE_KMS_KEY_ID",
                    "arn:aws:kms:eu-central-1:123456789012:key/1234abcd",
                ),
                ("SP_TASK_SYNC_S3_BUCKET_KEY", "true"),
                ("SP_TASK_SYNC_S3_STORAGE_CLASS", "intelligent_tiering"),
            ]),
            &mut errors,
        );
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(
            o.headers(),
            [
                ("x-amz-server-side-encryption", "aws:kms".to_string()),
                (
                    "x-amz-server-side-encryption-aws-kms-key-id",
                    "arn:aws:kms:eu-central-1:123456789012:key/1234abcd".to_string()
                ),
                (
                    "x-amz-server-side-encryption-bucket-key-enabled",
                    "true".to_string()
                ),
                ("x-amz-storage-class", "INTELLIGENT_TIERING".to_string()),
            ]
        );
        let o = S3Options::from_env(&env(&[("SP_TASK_SYNC_S3_SSE", "AES256")]), &mut errors);
        assert_eq!(
            o.headers(),
            [("x-amz-server-side-encryption", "AES256".to_string())]
        );
        assert!(S3Options::from_env(&env(&[]), &mut errors)
            .headers()
            .is_empty());
        assert!(errors.is_empty());

        S3Options::from_env(
            &env(&[
                ("SP_TASK_SYNC_S3_SSE", "AES256"),
                ("SP_TASK_SYNC_S3_SSE_KMS_KEY_ID", "k"),
                ("SP_TASK_SYNC_S3_BUCKET_KEY", "yes"),
                ("SP_TASK_SYNC_S3_STORAGE_CLASS", "DEEP_ARCHIVE"),
            ]),
            &mut errors,
        );
        let vars: Vec<&str> = errors.iter().map(|e| e.var.as_str()).collect();
        assert_eq!(
            vars,
            [
                "SP_TASK_SYNC_S3_BUCKET_KEY",
                "SP_TASK_SYNC_S3_SSE_KMS_KEY_ID",
                "SP_TASK_SYNC_S3_STORAGE_CLASS"
            ]
        );
        assert!(errors[1].problem.contains("aws:kms"), "{}", errors[1]);
        assert!(errors[2].problem.contains("journal"), "{}", errors[2]);
        errors.clear();
        S3Options::from_env(&env(&[("SP_TASK_SYNC_S3_SSE", "kms")]), &mut errors);
        assert_eq!(errors.len(), 1, "{errors:?}");
    }
}
