//! AWS web identity (EKS "IAM roles for service accounts"): one link of the
//! credential chain ([`super::credential`]).
//!
//! EKS gives a pod no key, only `AWS_ROLE_ARN` and a projected token in
//! `AWS_WEB_IDENTITY_TOKEN_FILE`; the SDKs trade that token at STS
//! (`AssumeRoleWithWebIdentity`, an unsigned call) for temporary credentials,
//! re-reading the file at every refresh because the kubelet rotates it.
//! [`WebIdentity::fetch`] does exactly that on the shared agent, with the helpers every
//! workload identity shares ([`crate::store::client::identity`]). Reference:
//! "AssumeRoleWithWebIdentity" (STS API reference).

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::env::{ConfigError, Env, Secret};
use crate::store::client::identity::{
    check_token_file, check_url, exchange, form, parse_rfc3339, read_token_file, refusal_kind,
    shorten, shown_url, strip_query,
};
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
        if let Err(problem) = check_token_file(std::path::Path::new(token_file)) {
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
                _ => refusal_kind(answer.status),
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
    let expires =
        parse_rfc3339(&expiration).ok_or(format!("an unreadable <Expiration> {expiration:?}"))?;
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
/// the URL without a trailing slash; a malformed URL is pushed to `errors`. STS's here,
/// S3's in [`super::builder::s3_endpoint`].
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
            return match check_url(raw) {
                Ok(url) => Some((var, url)),
                Err(problem) => {
                    errors.push(ConfigError::new(var, Some(shown_url(raw)), problem));
                    None
                }
            };
        }
    }
    None
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
}
