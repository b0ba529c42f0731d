//! The S3 settings read from the environment: bucket, region and endpoint (the
//! connector's variables first, then the AWS SDKs'), addressing, part sizes, and what
//! the credential chain may look at. Every mistake is pushed, all of them at once.
//!
//! The official connector's SDK also honours `AWS_ENDPOINT_URL_S3` / `AWS_ENDPOINT_URL`
//! and `AWS_REGION` / `AWS_DEFAULT_REGION`; a deployment that relied on them keeps
//! working through [`s3_endpoint`] and [`s3_region`]. References: "Service-specific
//! endpoints" and "AWS Region" in the AWS SDKs and Tools reference guide.

use std::path::PathBuf;

use super::identity::{configured_endpoint, WebIdentity};
use super::options::S3Options;
use crate::env::{ConfigError, Env, Secret};
use crate::store::client::identity::is_loopback_host;

const MIB: u64 = 1024 * 1024;
/// The part size: every upload then holds at most one part buffer (a larger threshold
/// holds one buffer of the threshold size for objects between the two).
pub const DEFAULT_MULTIPART_THRESHOLD: u64 = 8 * MIB;
pub const DEFAULT_PART_SIZE: u64 = 8 * MIB;
/// S3's smallest part (all but the last).
pub const MIN_PART_SIZE: u64 = 5 * MIB;
/// S3's largest part, and largest single PUT.
pub const MAX_PART_SIZE: u64 = 5 * 1024 * MIB;
pub const DEFAULT_ECS_HOST: &str = "http://169.254.170.2";
pub const DEFAULT_IMDS_ENDPOINT: &str = "http://169.254.169.254";

/// The S3 settings from the environment.
#[derive(Debug, Clone)]
pub struct S3Settings {
    pub bucket: String,
    pub region: String,
    /// `http(s)://host[:port]` of an S3-compatible service, without a trailing slash.
    pub endpoint: Option<String>,
    /// Key prefix (`SP_TASK_SYNC_SAVE_TO`), may be empty.
    pub prefix: String,
    pub multipart_threshold: u64,
    pub part_size: u64,
    pub credentials: CredentialSettings,
    /// The variables the region and the endpoint came from (for `check`).
    pub region_from: &'static str,
    pub endpoint_from: &'static str,
    /// `SP_TASK_SYNC_S3_ADDRESSING`, or the default for the endpoint and bucket.
    pub addressing: Addressing,
    /// Encryption and storage class sent with every upload.
    pub options: S3Options,
}

impl S3Settings {
    /// Reads every S3 variable; all mistakes are pushed to `errors`.
    pub fn from_env(env: &Env, errors: &mut Vec<ConfigError>) -> Option<S3Settings> {
        let before = errors.len();
        let mut required = |var: &str, what: &str| match env.get(var) {
            Some(v) if v.contains(char::is_whitespace) || v.contains('/') => {
                errors.push(ConfigError::new(
                    var,
                    Some(v),
                    format!("is not a valid {what}"),
                ));
                String::new()
            }
            Some(v) => v.to_string(),
            None => {
                errors.push(ConfigError::new(
                    var,
                    None,
                    format!("is required for S3 storage: the {what}"),
                ));
                String::new()
            }
        };
        let bucket = required("SP_TASK_SYNC_S3_BUCKET", "bucket name");
        // The connector's variable first, then the AWS SDKs' (as the official
        // connector's SDK reads them).
        let (region_from, region) = match s3_region(env, errors) {
            Some((var, region)) => (var, region),
            None => {
                if !errors.iter().any(|e| e.var.ends_with("REGION")) {
                    errors.push(ConfigError::new(
                        "SP_TASK_SYNC_S3_REGION",
                        None,
                        "is required for S3 storage: the region (e.g. eu-central-1), or \
                         AWS_REGION / AWS_DEFAULT_REGION",
                    ));
                }
                ("SP_TASK_SYNC_S3_REGION", String::new())
            }
        };
        let (endpoint_from, endpoint) = match env.get("SP_TASK_SYNC_S3_ENDPOINT") {
            Some(raw) => match check_endpoint(raw) {
                Ok(e) => ("SP_TASK_SYNC_S3_ENDPOINT", Some(e)),
                Err(problem) => {
                    // A URL with user:password in it must not be echoed.
                    let shown = if raw.contains('@') { "***" } else { raw };
                    errors.push(ConfigError::new(
                        "SP_TASK_SYNC_S3_ENDPOINT",
                        Some(shown),
                        problem,
                    ));
                    ("SP_TASK_SYNC_S3_ENDPOINT", None)
                }
            },
            None => match s3_endpoint(env, errors) {
                Some((var, url)) => (var, Some(url)),
                None => ("SP_TASK_SYNC_S3_ENDPOINT", None),
            },
        };
        let addressing = s3_addressing(env, endpoint.as_deref(), &bucket, errors);
        let options = S3Options::from_env(env, errors);
        let mut size = |var: &str, default: u64| match env.get(var) {
            None => default,
            Some(raw) => match crate::env::parse_size(raw) {
                Some(n) if (MIN_PART_SIZE..=MAX_PART_SIZE).contains(&n) => n,
                _ => {
                    errors.push(ConfigError::new(
                        var,
                        Some(raw),
                        "must be a size from 5MiB to 5GiB, in bytes or with K, M, G",
                    ));
                    default
                }
            },
        };
        let multipart_threshold = size(
            "SP_TASK_SYNC_S3_MULTIPART_THRESHOLD",
            DEFAULT_MULTIPART_THRESHOLD,
        );
        let part_size = size("SP_TASK_SYNC_S3_PART_SIZE", DEFAULT_PART_SIZE);
        let credentials = CredentialSettings::from_env_in(
            env,
            Some(region.as_str()).filter(|r| !r.is_empty()),
            errors,
        );
        (errors.len() == before).then(|| S3Settings {
            bucket,
            region,
            endpoint,
            prefix: env
                .get("SP_TASK_SYNC_SAVE_TO")
                .unwrap_or("")
                .trim_matches('/')
                .to_string(),
            multipart_threshold,
            part_size,
            credentials,
            region_from,
            endpoint_from,
            addressing,
            options,
        })
    }

    /// `name = value` lines for `check` (no secrets).
    pub fn describe(&self) -> Vec<(&'static str, String)> {
        vec![
            ("SP_TASK_SYNC_S3_BUCKET", self.bucket.clone()),
            (self.region_from, self.region.clone()),
            (
                self.endpoint_from,
                self.endpoint.clone().unwrap_or_else(|| "- (AWS)".into()),
            ),
            (
                "SP_TASK_SYNC_S3_ADDRESSING",
                self.addressing.name().to_string(),
            ),
            (
                "SP_TASK_SYNC_SAVE_TO",
                if self.prefix.is_empty() {
                    "-".into()
                } else {
                    self.prefix.clone()
                },
            ),
            (
                "SP_TASK_SYNC_S3_MULTIPART_THRESHOLD",
                self.multipart_threshold.to_string(),
            ),
            ("SP_TASK_SYNC_S3_PART_SIZE", self.part_size.to_string()),
            ("AWS credentials", self.credentials.describe()),
        ]
        .into_iter()
        .chain(self.options.describe())
        .collect()
    }
}

fn check_endpoint(raw: &str) -> Result<String, &'static str> {
    let rest = raw
        .strip_prefix("https://")
        .or_else(|| raw.strip_prefix("http://"))
        .ok_or("must start with http:// or https://")?;
    let authority = rest.trim_end_matches('/');
    if authority.is_empty() || authority.contains(['?', '#', ' ']) {
        return Err("must be http(s)://host[:port]");
    }
    if authority.contains('@') {
        return Err("must not contain user:password (credentials come from the AWS variables)");
    }
    Ok(raw.trim_end_matches('/').to_string())
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

/// What the chain may look at, read from the environment with the configuration.
#[derive(Debug, Clone)]
pub struct CredentialSettings {
    pub access_key_id: Option<Secret>,
    pub secret_access_key: Option<Secret>,
    pub session_token: Option<Secret>,
    /// `AWS_ROLE_ARN` + `AWS_WEB_IDENTITY_TOKEN_FILE` (EKS IRSA).
    pub web_identity: Option<WebIdentity>,
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
            web_identity: WebIdentity::from_env(env, region, errors),
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
    let allowed = is_loopback_host(authority)
        || ["169.254.170.2", "169.254.170.23", "[fd00:ec2::23]"].contains(&host);
    if allowed {
        Ok(())
    } else {
        Err("plain http is only allowed to the local host or the ECS/EKS credential addresses")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Env {
        Env::from_pairs(pairs.iter().copied())
    }

    #[test]
    fn required_settings_are_named() {
        let mut errors = Vec::new();
        assert!(S3Settings::from_env(&env(&[]), &mut errors).is_none());
        let vars: Vec<&str> = errors.iter().map(|e| e.var.as_str()).collect();
        assert_eq!(vars, ["SP_TASK_SYNC_S3_BUCKET", "SP_TASK_SYNC_S3_REGION"]);
    }

    #[test]
    fn settings_parse() {
        let mut errors = Vec::new();
        let s = S3Settings::from_env(
            &env(&[
                ("SP_TASK_SYNC_S3_BUCKET", "calls"),
                ("SP_TASK_SYNC_S3_REGION", "eu-central-1"),
                ("SP_TASK_SYNC_S3_ENDPOINT", "http://127.0.0.1:9000/"),
                ("SP_TASK_SYNC_SAVE_TO", "/spinoco/"),
                ("SP_TASK_SYNC_S3_MULTIPART_THRESHOLD", "32MiB"),
                ("SP_TASK_SYNC_S3_PART_SIZE", "5242880"),
                ("AWS_ACCESS_KEY_ID", "AKIDSECRETISH"),
                ("AWS_SECRET_ACCESS_KEY", "very-secret"),
            ]),
            &mut errors,
        )
        .unwrap();
        assert!(errors.is_empty());
        assert_eq!(s.endpoint.as_deref(), Some("http://127.0.0.1:9000"));
        assert_eq!(s.prefix, "spinoco");
        assert_eq!((s.multipart_threshold, s.part_size), (32 * MIB, 5 * MIB));
        let shown = format!("{s:?} {:?}", s.describe());
        assert!(
            !shown.contains("very-secret") && !shown.contains("AKIDSECRETISH"),
            "{shown}"
        );
    }

    #[test]
    fn bad_values_are_reported_and_masked() {
        let mut errors = Vec::new();
        let e = env(&[
            ("SP_TASK_SYNC_S3_BUCKET", "a bucket"),
            ("SP_TASK_SYNC_S3_REGION", "eu-central-1"),
            ("SP_TASK_SYNC_S3_ENDPOINT", "https://user:pw@minio.local"),
            ("SP_TASK_SYNC_S3_PART_SIZE", "1MiB"),
            ("SP_TASK_SYNC_S3_MULTIPART_THRESHOLD", "lots"),
        ]);
        assert!(S3Settings::from_env(&e, &mut errors).is_none());
        let vars: Vec<&str> = errors.iter().map(|e| e.var.as_str()).collect();
        assert_eq!(
            vars,
            [
                "SP_TASK_SYNC_S3_BUCKET",
                "SP_TASK_SYNC_S3_ENDPOINT",
                "SP_TASK_SYNC_S3_MULTIPART_THRESHOLD",
                "SP_TASK_SYNC_S3_PART_SIZE"
            ]
        );
        assert!(!format!("{errors:?}").contains("pw@"));
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
