//! Network settings shared by every HTTPS connection: extra trusted CAs and proxies.
//!
//! Edge boxes and air-gapped servers reach the platform and the cloud storages only
//! through a forward proxy, or through an inspecting gateway with a private CA; the
//! image is FROM scratch, so there is no OS certificate store to add that CA to.
//! These settings are read from the environment with the rest of the configuration,
//! before any network call, and every mistake is reported with the others.
//!
//! - Extra CAs: `SSL_CERT_FILE` (the OpenSSL convention) and `SP_TLS_CA_FILE`, PEM
//!   bundles ADDED to the roots compiled into the binary. Verification cannot be
//!   turned off.
//! - Proxies: `https_proxy`/`HTTPS_PROXY` for https targets, `http_proxy`/`HTTP_PROXY`
//!   for plain-http targets (lower-case first, as curl does), `all_proxy`/`ALL_PROXY`
//!   as a fallback for both, and `no_proxy`/`NO_PROXY` for the hosts reached directly.
//!
//! Every request (the platform, the three cloud storages, their token endpoints) goes
//! through the shared agent ([`super::Http`]), which applies these settings.

use std::fmt;
use std::path::PathBuf;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

use crate::env::{ConfigError, Env, Secret};

/// A PEM bundle of extra trusted CAs, loaded and checked.
#[derive(Clone)]
pub struct CaFile {
    /// The variable that named it.
    pub var: &'static str,
    pub path: PathBuf,
    pub certs: Vec<CertificateDer<'static>>,
}

impl fmt::Debug for CaFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}={} ({} certificate(s))",
            self.var,
            self.path.display(),
            self.certs.len()
        )
    }
}

/// One forward proxy (HTTP CONNECT, spoken to in plain HTTP or in TLS).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxySetting {
    /// The variable that set it.
    pub var: String,
    /// TLS to the proxy itself (`https://proxy`).
    pub tls: bool,
    pub host: String,
    pub port: u16,
    pub user: Option<String>,
    pub password: Option<Secret>,
}

impl ProxySetting {
    /// `http://user:***@host:port`: the password is never shown.
    pub fn masked_url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        let auth = match (&self.user, &self.password) {
            (Some(u), Some(_)) => format!("{u}:***@"),
            (Some(u), None) => format!("{u}@"),
            (None, _) => String::new(),
        };
        format!("{scheme}://{auth}{}:{}", self.host, self.port)
    }

    /// The proxy for ureq (credentials included: ureq sends them as
    /// `Proxy-Authorization: Basic` on the CONNECT and never logs them).
    pub fn to_ureq(&self) -> Result<ureq::Proxy, ureq::Error> {
        let protocol = if self.tls {
            ureq::ProxyProtocol::Https
        } else {
            ureq::ProxyProtocol::Http
        };
        let mut b = ureq::Proxy::builder(protocol)
            .host(&self.host)
            .port(self.port);
        if let Some(u) = &self.user {
            b = b.username(u);
        }
        if let Some(p) = &self.password {
            b = b.password(p.expose());
        }
        b.build()
    }
}

/// One `NO_PROXY` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
enum NoProxyEntry {
    /// `*`
    All,
    /// `example.com` (itself and every subdomain), `.example.com` or `*.example.com`
    /// (subdomains only), an IP; optionally only on one port (`host:port`).
    Host {
        name: String,
        subdomains_only: bool,
        port: Option<u16>,
    },
}

/// The hosts reached directly, never through a proxy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NoProxy {
    entries: Vec<NoProxyEntry>,
}

impl NoProxy {
    /// Parses a comma- (or space-) separated list; `None` names a malformed entry.
    pub fn parse(raw: &str) -> Result<NoProxy, String> {
        let mut entries = Vec::new();
        for item in raw.split([',', ' ', '\t']).filter(|s| !s.is_empty()) {
            if item == "*" {
                entries.push(NoProxyEntry::All);
                continue;
            }
            let (host, port) = split_host_port(item).ok_or_else(|| item.to_string())?;
            let (name, subdomains_only) =
                match host.strip_prefix("*.").or_else(|| host.strip_prefix('.')) {
                    Some(rest) => (rest, true),
                    None => (host, false),
                };
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            if name.is_empty() || name.contains(['*', '/', '@']) {
                return Err(item.to_string());
            }
            entries.push(NoProxyEntry::Host {
                name,
                subdomains_only,
                port,
            });
        }
        Ok(NoProxy { entries })
    }

    /// Whether `host` (a name or an IP, IPv6 with or without brackets) on `port` is
    /// reached directly.
    pub fn matches(&self, host: &str, port: u16) -> bool {
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .trim_end_matches('.')
            .to_ascii_lowercase();
        self.entries.iter().any(|e| match e {
            NoProxyEntry::All => true,
            NoProxyEntry::Host {
                name,
                subdomains_only,
                port: want,
            } => {
                let sub = host.len() > name.len()
                    && host.ends_with(name.as_str())
                    && host.as_bytes()[host.len() - name.len() - 1] == b'.';
                let hit = sub || (!subdomains_only && host == *name);
                hit && want.is_none_or(|p| p == port)
            }
        })
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// `host`, `host:port`, `[v6]`, `[v6]:port` or a bare IPv6 address.
fn split_host_port(item: &str) -> Option<(&str, Option<u16>)> {
    if let Some(rest) = item.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        return match after {
            "" => Some((host, None)),
            p => Some((host, Some(p.strip_prefix(':')?.parse().ok()?))),
        };
    }
    match item.matches(':').count() {
        0 => Some((item, None)),
        1 => {
            let (h, p) = item.split_once(':')?;
            Some((h, Some(p.parse().ok()?)))
        }
        _ => Some((item, None)), // IPv6 without brackets
    }
}

/// The TLS trust and proxy settings, checked.
#[derive(Debug, Clone, Default)]
pub struct Network {
    /// Extra CA bundles, in addition to the built-in roots.
    pub ca_files: Vec<CaFile>,
    pub https_proxy: Option<ProxySetting>,
    pub http_proxy: Option<ProxySetting>,
    pub no_proxy: NoProxy,
    /// The variable `no_proxy` came from and its value, for `check`.
    pub no_proxy_source: Option<(&'static str, String)>,
}

/// The variables read here, in the order curl prefers them.
pub const CA_VARS: [&str; 2] = ["SSL_CERT_FILE", "SP_TLS_CA_FILE"];
const HTTPS_PROXY_VARS: [&str; 4] = ["https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"];
const HTTP_PROXY_VARS: [&str; 4] = ["http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"];
const NO_PROXY_VARS: [&str; 2] = ["no_proxy", "NO_PROXY"];

impl Network {
    /// Reads and checks every network variable; problems go to `errors`.
    pub fn from_env(env: &Env, errors: &mut Vec<ConfigError>) -> Network {
        let mut net = Network::default();
        for var in CA_VARS {
            if let Some(path) = env.get(var) {
                match load_ca_file(path) {
                    Ok(certs) => net.ca_files.push(CaFile {
                        var,
                        path: PathBuf::from(path),
                        certs,
                    }),
                    Err(problem) => errors.push(ConfigError::new(var, Some(path), problem)),
                }
            }
        }
        net.https_proxy = proxy_from(env, &HTTPS_PROXY_VARS, errors);
        net.http_proxy = proxy_from(env, &HTTP_PROXY_VARS, errors);
        if let Some(var) = NO_PROXY_VARS.into_iter().find(|v| env.get(v).is_some()) {
            let raw = env.get(var).unwrap_or_default();
            match NoProxy::parse(raw) {
                Ok(np) => {
                    net.no_proxy = np;
                    net.no_proxy_source = Some((var, raw.to_string()));
                }
                Err(item) => errors.push(ConfigError::new(
                    var,
                    Some(raw),
                    format!("entry {item:?} is not a host, .domain, *.domain, IP, host:port or *"),
                )),
            }
        }
        net
    }

    /// The proxy a request to `scheme://host:port` goes through; `None` for direct.
    pub fn proxy_for(&self, scheme: &str, host: &str, port: u16) -> Option<&ProxySetting> {
        if self.no_proxy.matches(host, port) {
            return None;
        }
        if scheme.eq_ignore_ascii_case("https") {
            self.https_proxy.as_ref()
        } else {
            self.http_proxy.as_ref()
        }
    }

    /// Every extra trusted CA certificate (DER), for clients outside the shared agent.
    pub fn extra_ca_certs(&self) -> Vec<CertificateDer<'static>> {
        self.ca_files
            .iter()
            .flat_map(|f| f.certs.iter().cloned())
            .collect()
    }

    /// How the extra CAs are named in messages: `SSL_CERT_FILE=/etc/ca.pem`.
    pub fn ca_source(&self) -> String {
        self.ca_files
            .iter()
            .map(|f| format!("{}={}", f.var, f.path.display()))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// `name = value` lines for `check`, the proxy password masked.
    pub fn describe(&self) -> Vec<(&'static str, String)> {
        let ca = if self.ca_files.is_empty() {
            "built-in roots only".to_string()
        } else {
            let files: Vec<String> = self
                .ca_files
                .iter()
                .map(|f| {
                    format!(
                        "{}={} ({} certificate(s))",
                        f.var,
                        f.path.display(),
                        f.certs.len()
                    )
                })
                .collect();
            format!("built-in roots + {}", files.join(" + "))
        };
        let proxy = |p: &Option<ProxySetting>| match p {
            Some(p) => format!("{} (from {})", p.masked_url(), p.var),
            None => "direct".to_string(),
        };
        vec![
            ("TLS trust", ca),
            ("proxy for https", proxy(&self.https_proxy)),
            ("proxy for http", proxy(&self.http_proxy)),
        ]
        .into_iter()
        .chain(
            self.no_proxy_source
                .as_ref()
                .map(|(var, raw)| ("no proxy", format!("{raw} (from {var})"))),
        )
        .collect()
    }
}

/// Reads a PEM bundle: every `CERTIFICATE` block, each a valid trust anchor.
fn load_ca_file(path: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read the CA bundle: {e}"))?;
    let mut certs = Vec::new();
    for (i, item) in CertificateDer::pem_slice_iter(&bytes).enumerate() {
        let cert = item.map_err(|e| format!("certificate {} is not valid PEM: {e}", i + 1))?;
        rustls::RootCertStore::empty()
            .add(cert.clone())
            .map_err(|e| format!("certificate {} cannot be used as a trusted CA: {e}", i + 1))?;
        certs.push(cert);
    }
    if certs.is_empty() {
        return Err("holds no PEM certificate (-----BEGIN CERTIFICATE-----)".into());
    }
    Ok(certs)
}

/// The first proxy variable set among `vars`, parsed.
fn proxy_from(
    env: &Env,
    vars: &[&'static str],
    errors: &mut Vec<ConfigError>,
) -> Option<ProxySetting> {
    let var = vars.iter().find(|v| env.get(v).is_some())?;
    let raw = env.get(var)?;
    match parse_proxy(var, raw) {
        Ok(p) => Some(p),
        Err(problem) => {
            // Never echo a password: show the URL with it masked when one is there.
            let shown = mask_url_password(raw);
            // The same variable may be the fallback for both schemes: report once.
            if !errors.iter().any(|e| e.var == *var) {
                errors.push(ConfigError::new(var, Some(&shown), problem));
            }
            None
        }
    }
}

/// `[http://|https://][user[:password]@]host[:port][/]`
pub fn parse_proxy(var: &str, raw: &str) -> Result<ProxySetting, String> {
    let (tls, rest) = match raw.split_once("://") {
        None => (false, raw),
        Some((scheme, rest)) => match scheme.to_ascii_lowercase().as_str() {
            "http" => (false, rest),
            "https" => (true, rest),
            other => {
                return Err(format!(
                    "the proxy scheme {other:?} is not supported; use http:// or https:// (an HTTP CONNECT proxy)"
                ))
            }
        },
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let (userinfo, hostport) = match rest.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, rest),
    };
    let (user, password) = match userinfo {
        None => (None, None),
        Some(u) => {
            let (name, pass) = match u.split_once(':') {
                Some((n, p)) => (n, Some(p)),
                None => (u, None),
            };
            let name =
                crate::encoding::percent_decode(name).ok_or("the user name has a bad %-escape")?;
            let pass = pass
                .map(|p| {
                    crate::encoding::percent_decode(p).ok_or("the password has a bad %-escape")
                })
                .transpose()?;
            (Some(name), pass.map(Secret::new))
        }
    };
    let bad_host = || {
        "must be a proxy URL such as http://proxy.example:3128 or http://user:password@proxy.example:3128".to_string()
    };
    if hostport.contains(['/', '?', '#', ' ']) {
        return Err(bad_host());
    }
    let (host, port) = split_host_port(hostport).ok_or_else(bad_host)?;
    if host.is_empty() {
        return Err(bad_host());
    }
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    };
    Ok(ProxySetting {
        var: var.to_string(),
        tls,
        host,
        port: port.unwrap_or(if tls { 443 } else { 80 }),
        user,
        password,
    })
}

/// The URL with whatever sits between `:` and `@` in its user part replaced by `***`.
pub fn mask_url_password(raw: &str) -> String {
    let (scheme, rest) = match raw.split_once("://") {
        Some((s, r)) => (format!("{s}://"), r),
        None => (String::new(), raw),
    };
    match rest.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{scheme}{user}:***@{host}"),
            None => raw.to_string(),
        },
        None => raw.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_proxy_forms() {
        let np = NoProxy::parse(
            "localhost, .internal.example,*.corp, example.org,10.0.0.7,host.b:8443,[::1]:9000",
        )
        .unwrap();
        assert!(np.matches("localhost", 443));
        assert!(np.matches("LOCALHOST.", 80));
        assert!(!np.matches("mylocalhost", 443));
        assert!(np.matches("a.internal.example", 443));
        assert!(np.matches("a.b.internal.example", 443));
        assert!(
            !np.matches("internal.example", 443),
            ".domain: subdomains only"
        );
        assert!(np.matches("x.corp", 443));
        assert!(!np.matches("corp", 443));
        assert!(np.matches("example.org", 443), "domain: itself");
        assert!(np.matches("api.example.org", 443), "domain: and subdomains");
        assert!(!np.matches("badexample.org", 443));
        assert!(np.matches("10.0.0.7", 443));
        assert!(!np.matches("110.0.0.7", 443));
        assert!(np.matches("host.b", 8443));
        assert!(!np.matches("host.b", 443), "host:port only on that port");
        assert!(np.matches("[::1]", 9000));
        assert!(np.matches("::1", 9000));
        assert!(!np.matches("::1", 9001));
        assert!(NoProxy::parse("*").unwrap().matches("anything", 1));
        assert!(NoProxy::parse("a/b").is_err());
        assert!(NoProxy::parse("h:notaport").is_err());
    }

    #[test]
    fn proxy_urls() {
        let p = parse_proxy("HTTPS_PROXY", "http://us%40er:p%3Ass@proxy.local:3128/").unwrap();
        assert_eq!(p.host, "proxy.local");
        assert_eq!(p.port, 3128);
        assert_eq!(p.user.as_deref(), Some("us@er"));
        assert_eq!(p.password.as_ref().unwrap().expose(), "p:ss");
        assert!(!p.masked_url().contains("p:ss"));
        assert_eq!(p.masked_url(), "http://us@er:***@proxy.local:3128");
        let p = parse_proxy("x", "proxy.local").unwrap();
        assert_eq!((p.tls, p.port), (false, 80));
        let p = parse_proxy("x", "https://[fd00::1]:8443").unwrap();
        assert_eq!((p.tls, p.host.as_str(), p.port), (true, "[fd00::1]", 8443));
        assert!(parse_proxy("x", "socks5://proxy:1080").is_err());
        assert!(parse_proxy("x", "http://proxy:99999").is_err());
        assert!(parse_proxy("x", "http://proxy/path").is_err());
        assert_eq!(
            mask_url_password("http://u:topsecret@h:1"),
            "http://u:***@h:1"
        );
    }

    #[test]
    fn precedence_and_masking() {
        let env = Env::from_pairs([
            ("http_proxy", "http://lower:1"),
            ("HTTP_PROXY", "http://upper:2"),
            ("HTTPS_PROXY", "http://u:hunter2@secure:3"),
            ("NO_PROXY", "localhost"),
        ]);
        let mut errors = Vec::new();
        let net = Network::from_env(&env, &mut errors);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(net.http_proxy.as_ref().unwrap().host, "lower");
        assert_eq!(net.https_proxy.as_ref().unwrap().host, "secure");
        assert!(net.proxy_for("https", "localhost", 443).is_none());
        assert_eq!(
            net.proxy_for("https", "api.spinoco.com", 443).unwrap().port,
            3
        );
        let shown = format!("{net:?} {:?}", net.describe());
        assert!(!shown.contains("hunter2"), "{shown}");

        let env = Env::from_pairs([("https_proxy", "ftp://u:hunter2@x")]);
        let mut errors = Vec::new();
        Network::from_env(&env, &mut errors);
        assert_eq!(errors.len(), 1);
        assert!(!errors[0].to_string().contains("hunter2"), "{}", errors[0]);
    }

    #[test]
    fn ca_files_missing_empty_or_bad() {
        let dir = std::env::temp_dir().join(format!("spinoco-net-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "no certificates here\n").unwrap();
        let bad = dir.join("bad.pem");
        std::fs::write(
            &bad,
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let env = Env::from_pairs([
            ("SSL_CERT_FILE", empty.to_str().unwrap()),
            ("SP_TLS_CA_FILE", "/nonexistent/ca.pem"),
        ]);
        let mut errors = Vec::new();
        Network::from_env(&env, &mut errors);
        let vars: Vec<&str> = errors.iter().map(|e| e.var.as_str()).collect();
        assert_eq!(vars, ["SSL_CERT_FILE", "SP_TLS_CA_FILE"], "{errors:?}");
        assert!(errors[0].problem.contains("no PEM certificate"));
        assert!(errors[1].problem.contains("cannot read"));
        let env = Env::from_pairs([("SP_TLS_CA_FILE", bad.to_str().unwrap())]);
        let mut errors = Vec::new();
        Network::from_env(&env, &mut errors);
        assert_eq!(errors.len(), 1, "{errors:?}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
