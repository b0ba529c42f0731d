//! Where the platform API is: `SP_API_URL`, `SP_API_PORT`, `SP_API_SECURE`, and the
//! warning for a token sent in clear text.

use crate::env::{ConfigError, Env};

/// Where the platform API is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiEndpoint {
    pub secure: bool,
    pub host: String,
    pub port: u16,
}

impl ApiEndpoint {
    /// `scheme://host:port`, without a trailing slash.
    pub fn base_url(&self) -> String {
        let scheme = if self.secure { "https" } else { "http" };
        format!("{scheme}://{}:{}", self.host, self.port)
    }

    /// The warning for plain HTTP towards another machine, where the token crosses the
    /// network in clear; `None` with TLS or towards loopback (127.0.0.0/8, `::1`,
    /// `localhost`), where a test platform or a local TLS proxy is the usual reason.
    pub fn clear_text_warning(&self) -> Option<String> {
        if self.secure || is_loopback(&self.host) {
            return None;
        }
        Some(format!(
            "SP_API_SECURE=false: the API token is sent to {} in clear text (plain HTTP, no \
             TLS), where anyone on the network path can read and reuse it; use HTTPS, or plain \
             HTTP only towards this machine",
            self.host
        ))
    }
}

/// `127.0.0.0/8`, `::1` (also IPv4-mapped), `localhost`: names and addresses that
/// never leave the machine.
fn is_loopback(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    match bare.parse::<std::net::IpAddr>() {
        Ok(ip) => ip.to_canonical().is_loopback(),
        Err(_) => {
            let name = bare.strip_suffix('.').unwrap_or(bare);
            name.eq_ignore_ascii_case("localhost")
        }
    }
}

/// Reads `SP_API_URL`, `SP_API_PORT` and `SP_API_SECURE`; every mistake is pushed.
pub(super) fn parse_api(env: &Env, errors: &mut Vec<ConfigError>) -> ApiEndpoint {
    let secure_var = env.get("SP_API_SECURE");
    let mut secure = match secure_var.map(str::to_ascii_lowercase).as_deref() {
        None => None,
        Some("true" | "1" | "yes") => Some(true),
        Some("false" | "0" | "no") => Some(false),
        Some(_) => {
            errors.push(ConfigError::new(
                "SP_API_SECURE",
                secure_var,
                "must be true or false",
            ));
            None
        }
    };
    let raw = env.get("SP_API_URL").unwrap_or("api.spinoco.com");
    let mut rest = raw;
    for (scheme, is_secure) in [("https://", true), ("http://", false)] {
        if let Some(r) = raw.strip_prefix(scheme) {
            if secure.is_some_and(|s| s != is_secure) {
                errors.push(ConfigError::new(
                    "SP_API_SECURE",
                    secure_var,
                    format!("contradicts the scheme of SP_API_URL={raw:?}"),
                ));
            }
            secure = Some(is_secure);
            rest = r;
        }
    }
    let secure = secure.unwrap_or(true);
    let rest = rest.trim_end_matches('/');
    let (host, url_port) = match rest.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || rest.starts_with('[') => match p.parse::<u16>() {
            Ok(p) => (h, Some(p)),
            Err(_) => (rest, None),
        },
        _ => (rest, None),
    };
    if host.is_empty() || host.contains(['/', '?', '#', '@', ' ']) {
        errors.push(ConfigError::new(
            "SP_API_URL",
            Some(raw),
            "must be a host name or IP, or http(s)://host[:port] without a path",
        ));
    }
    let port = match env.get("SP_API_PORT") {
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 => n,
            _ => {
                errors.push(ConfigError::new(
                    "SP_API_PORT",
                    Some(p),
                    "must be a TCP port from 1 to 65535",
                ));
                0
            }
        },
        None => url_port.unwrap_or(if secure { 443 } else { 80 }),
    };
    ApiEndpoint {
        secure,
        host: host.to_string(),
        port,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_towards_another_machine_is_warned_about() {
        let endpoint = |secure: bool, host: &str| ApiEndpoint {
            secure,
            host: host.to_string(),
            port: 80,
        };
        for host in [
            "example.com",
            "10.0.0.7",
            "[2001:db8::1]",
            "localhost.example",
            "127.0.0.1.nip.io",
        ] {
            let warning = endpoint(false, host).clear_text_warning();
            assert!(
                warning
                    .as_deref()
                    .is_some_and(|w| w.contains(host) && w.contains("in clear text")),
                "{host}: {warning:?}"
            );
            assert_eq!(endpoint(true, host).clear_text_warning(), None, "{host}");
        }
        for host in [
            "127.0.0.1",
            "127.8.9.10",
            "[::1]",
            "::1",
            "localhost",
            "LocalHost",
            "localhost.",
            "[::ffff:127.0.0.1]",
        ] {
            assert_eq!(endpoint(false, host).clear_text_warning(), None, "{host}");
        }
    }
}
