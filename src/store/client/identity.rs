//! What the workload identities of the three providers share: the token exchange and
//! how its answers and refusals are read, token files, URL checks.
//!
//! On Kubernetes in EKS, GKE and AKS the storage credentials are not keys but
//! short-lived tokens that the platform hands the pod (a projected service-account
//! token in a file) and that are exchanged at the cloud's token service: AWS STS
//! `AssumeRoleWithWebIdentity`, Google STS and IAM credentials for an
//! `external_account` file, Entra ID and the managed identity endpoints. These
//! exchanges are protocols of their own, apart from signing storage requests: each
//! provider's fetcher reads its settings with the rest of the configuration (every
//! mistake reported at once, before any network call), and each fetch returns a value
//! with its expiry for the one token cache ([`super::token`]), which decides when to
//! fetch again. The token files are read again on every fetch: the kubelet rotates them.
//!
//! Secrets (tokens, assertions, keys) are [`Secret`]s; a message names the source and
//! the variable, never a value.

use std::path::Path;
use std::time::{Duration, SystemTime};

use crate::encoding::percent_encode;
use crate::env::Secret;
use crate::store::{StoreError, StoreErrorKind};

/// The metadata and token endpoints on the local link (or a sidecar) answer fast or not
/// at all: a host without them must not stall the start for the whole HTTP timeout.
pub const LOCAL_ENDPOINT_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest token answer read (they are a few kilobytes).
const MAX_ANSWER: u64 = 256 * 1024;

/// A bearer token and the moment it stops being valid.
#[derive(Debug, Clone)]
pub struct AccessToken {
    pub token: Secret,
    pub expires: SystemTime,
}

impl AccessToken {
    /// A token valid for `lifetime` from now.
    pub fn valid_for(token: String, lifetime: Duration) -> AccessToken {
        AccessToken {
            token: Secret::new(token),
            expires: SystemTime::now() + lifetime,
        }
    }
}

/// An `application/x-www-form-urlencoded` body.
pub fn form(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", percent_encode(k, false), percent_encode(v, false)))
        .collect::<Vec<_>>()
        .join("&")
}

/// Reads a token file the platform projects into the pod (again on every fetch: the
/// kubelet replaces it before it expires). `var` names the variable that points at it.
pub fn read_token_file(var: &str, path: &Path) -> Result<Secret, StoreError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        StoreError::new(
            StoreErrorKind::Denied,
            format!("cannot read the token file {var}={}: {e}", path.display()),
        )
    })?;
    let token = text.trim();
    if token.is_empty() {
        return Err(StoreError::new(
            StoreErrorKind::Denied,
            format!("the token file {var}={} is empty", path.display()),
        ));
    }
    Ok(Secret::new(token))
}

/// Checks at start that a token file named by `var` can be read (its content is read
/// again at every fetch). The problem for a [`crate::env::ConfigError`].
pub fn check_token_file(path: &Path) -> Result<(), String> {
    match std::fs::read_to_string(path) {
        Ok(t) if t.trim().is_empty() => Err("the token file is empty".to_string()),
        Ok(_) => Ok(()),
        Err(e) => Err(format!("cannot read the token file: {e}")),
    }
}

/// Checks an endpoint URL from the configuration: `http(s)://host[:port][/path]`,
/// without user info, query or fragment (they could hold secrets and are not shown).
pub fn check_url(raw: &str) -> Result<String, &'static str> {
    let rest = raw
        .strip_prefix("https://")
        .or_else(|| raw.strip_prefix("http://"))
        .ok_or("must be an http:// or https:// URL")?;
    let host = rest.split('/').next().unwrap_or("");
    if host.is_empty() || rest.contains(['?', '#', ' ', '@']) {
        return Err("must be http(s)://host[:port][/path], without user info, query or fragment");
    }
    Ok(raw.trim_end_matches('/').to_string())
}

/// Checks a URL read from a credentials file, which may carry a path with `@` (a
/// service account's e-mail) and a query: only the scheme and the authority are
/// checked (a host, no user info).
pub fn check_file_url(raw: &str) -> Result<(), &'static str> {
    let rest = raw
        .strip_prefix("https://")
        .or_else(|| raw.strip_prefix("http://"))
        .ok_or("must be an http:// or https:// URL")?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if authority.is_empty() || authority.contains(['@', ' ']) {
        return Err("must be http(s)://host[:port]/..., without user info");
    }
    Ok(())
}

/// The value shown for a URL in a configuration error: one with user info or a query
/// could carry a secret.
pub fn shown_url(raw: &str) -> &str {
    if raw.contains(['@', '?']) {
        "***"
    } else {
        raw
    }
}

/// An answer of a token endpoint, read whole.
pub struct Answer {
    pub status: u16,
    pub body: String,
}

/// Sends a token request and reads the answer. A transport failure is `Transient`
/// (a refused TLS certificate `Denied`); `what` names the endpoint in messages.
pub fn exchange(
    answer: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    url: &str,
    what: &str,
) -> Result<Answer, StoreError> {
    let mut response = answer.map_err(|e| {
        let message = format!(
            "cannot reach {what} at {}: {}",
            strip_query(url),
            crate::http::error_message(strip_query(url), &e)
        );
        // A certificate that does not verify will not verify on the next try either.
        match crate::http::tls::verification_failure(&e) {
            Some(_) => StoreError::new(StoreErrorKind::Denied, message),
            None => StoreError::transient(message),
        }
    })?;
    let status = response.status().as_u16();
    let body = response
        .body_mut()
        .with_config()
        .limit(MAX_ANSWER)
        .read_to_string()
        .map_err(|e| {
            StoreError::transient(format!(
                "cannot read the answer of {what} at {}: {e}",
                strip_query(url)
            ))
        })?;
    Ok(Answer { status, body })
}

/// A URL without its query, for messages.
pub fn strip_query(url: &str) -> &str {
    url.split('?').next().unwrap_or(url)
}

/// How a refusal of a token endpoint is treated: the throttles and server errors may
/// pass, anything else says the identity or its configuration is wrong.
pub fn refusal_kind(status: u16) -> StoreErrorKind {
    match status {
        408 | 410 | 429 | 500..=599 => StoreErrorKind::Transient,
        _ => StoreErrorKind::Denied,
    }
}

/// `error: error_description` of an OAuth 2.0 error answer (RFC 6749 section 5.2), or
/// of Google's `{"error": {"message": ..}}`, shortened; "" when the body is neither.
pub fn oauth_error(body: &str) -> String {
    let Ok(json) = serde_json::from_str::<serde_json::Value>(body) else {
        return String::new();
    };
    let text = |v: Option<&serde_json::Value>| v.and_then(|v| v.as_str()).unwrap_or("").to_string();
    let mut detail = match json.get("error") {
        Some(serde_json::Value::Object(o)) => {
            let status = text(o.get("status"));
            let message = text(o.get("message"));
            [status, message]
                .into_iter()
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>()
                .join(": ")
        }
        other => {
            let error = text(other);
            let description = text(json.get("error_description"));
            [error, description]
                .into_iter()
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>()
                .join(": ")
        }
    };
    shorten(&mut detail);
    detail
}

/// Keeps a server's message to one readable line.
pub fn shorten(text: &mut String) {
    let one_line: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(300)
        .collect();
    *text = one_line.trim().to_string();
}

/// `expires_in` as a JSON number or a string of digits (Azure's managed identity
/// endpoints send strings, Entra ID and Google numbers).
pub fn seconds_field(json: &serde_json::Value, name: &str) -> Option<u64> {
    match json.get(name)? {
        serde_json::Value::Number(n) => n.as_u64(),
        serde_json::Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// An RFC 3339 time (`2030-01-01T00:00:00Z`, fractions allowed).
pub fn parse_rfc3339(raw: &str) -> Option<SystemTime> {
    use time::format_description::well_known::Rfc3339;
    let t = time::OffsetDateTime::parse(raw.trim(), &Rfc3339).ok()?;
    Some(SystemTime::from(t))
}

/// Whether `host` (without port) is the local host, where plain http is acceptable for
/// a token endpoint.
pub fn is_loopback_host(authority: &str) -> bool {
    let host = match authority.rsplit_once(':') {
        Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) => h,
        _ => authority,
    };
    host == "localhost" || host == "[::1]" || host.starts_with("127.")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oauth_errors_in_both_shapes() {
        assert_eq!(
            oauth_error(r#"{"error":"invalid_grant","error_description":"AADSTS700024: Client assertion is not within its valid time range.\r\nTrace ID: x"}"#),
            "invalid_grant: AADSTS700024: Client assertion is not within its valid time range.  Trace ID: x"
        );
        assert_eq!(
            oauth_error(
                r#"{"error":{"code":403,"status":"PERMISSION_DENIED","message":"Permission 'iam.serviceAccounts.getAccessToken' denied"}}"#
            ),
            "PERMISSION_DENIED: Permission 'iam.serviceAccounts.getAccessToken' denied"
        );
        assert_eq!(oauth_error("<html>"), "");
    }

    #[test]
    fn seconds_as_number_or_string() {
        let json: serde_json::Value =
            serde_json::from_str(r#"{"a":3599,"b":"86399","c":"soon","d":-1}"#).unwrap();
        assert_eq!(seconds_field(&json, "a"), Some(3599));
        assert_eq!(seconds_field(&json, "b"), Some(86399));
        assert_eq!(seconds_field(&json, "c"), None);
        assert_eq!(seconds_field(&json, "d"), None);
        assert_eq!(seconds_field(&json, "e"), None);
    }

    #[test]
    fn urls_with_secrets_are_refused_and_not_shown() {
        assert_eq!(
            check_url("https://sts.example/").unwrap(),
            "https://sts.example"
        );
        assert!(check_url("https://user:pw@sts.example").is_err());
        assert!(check_url("https://sts.example/?sig=1").is_err());
        assert!(check_url("ftp://sts.example").is_err());
        assert_eq!(shown_url("https://user:pw@sts.example"), "***");
        assert!(is_loopback_host("127.0.0.1:8080") && is_loopback_host("localhost"));
        assert!(!is_loopback_host("169.254.169.254"));
    }

    #[test]
    fn token_files_are_read_trimmed_and_named_in_errors() {
        let dir = std::env::temp_dir().join(format!("spinoco-identity-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("token");
        std::fs::write(&file, "eyJ.token.sig\n").unwrap();
        assert_eq!(
            read_token_file("X_FILE", &file).unwrap().expose(),
            "eyJ.token.sig"
        );
        assert!(check_token_file(&file).is_ok());
        std::fs::write(&file, " \n").unwrap();
        let err = read_token_file("X_FILE", &file).unwrap_err();
        assert!(
            err.message.contains("X_FILE") && err.message.contains("empty"),
            "{}",
            err.message
        );
        assert!(check_token_file(&dir.join("missing")).is_err());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
