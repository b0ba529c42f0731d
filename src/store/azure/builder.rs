//! The Azure settings read from the environment: the account (a connection string in
//! `SP_TASK_SYNC_AZURE_DSN`, or `SP_TASK_SYNC_AZURE_ACCOUNT_URL` with a workload or
//! managed identity), the container, the block size and the access tier bucket
//! policies demand. Every mistake is pushed, all of them at once.

use super::credential::{parse_connection_string, AzureAccount, Credential};
use super::identity::AzureIdentity;
use crate::env::{ConfigError, Env, Secret};
use crate::store::client::identity::{check_url, shown_url};

/// The block size of large uploads: also the one buffer a `put` holds.
pub const DEFAULT_BLOCK_SIZE: usize = 8 * 1024 * 1024;
/// Bounds of `SP_TASK_SYNC_AZURE_BLOCK_SIZE` (one block is held in memory).
pub const MIN_BLOCK_SIZE: usize = 64 * 1024;
pub const MAX_BLOCK_SIZE: usize = 1024 * 1024 * 1024;

/// The checked settings of the azure provider.
#[derive(Debug, Clone)]
pub struct AzureSettings {
    pub account: AzureAccount,
    /// SP_TASK_SYNC_AZURE_CLIENT_NAME: the container.
    pub container: String,
    /// SP_TASK_SYNC_SAVE_TO: prepended to every blob name (may be empty).
    pub prefix: String,
    pub block_size: usize,
    /// SP_TASK_SYNC_AZURE_ACCESS_TIER, set on every blob.
    pub access_tier: Option<AccessTier>,
}

impl AzureSettings {
    /// Reads SP_TASK_SYNC_AZURE_DSN, SP_TASK_SYNC_AZURE_CLIENT_NAME and
    /// SP_TASK_SYNC_SAVE_TO; every mistake is pushed to `errors`.
    pub fn from_env(env: &Env, errors: &mut Vec<ConfigError>) -> Option<AzureSettings> {
        let dsn_var = "SP_TASK_SYNC_AZURE_DSN";
        let url_var = "SP_TASK_SYNC_AZURE_ACCOUNT_URL";
        let account = match env.get(dsn_var) {
            None if env.get(url_var).is_some() => {
                let url = account_url(env, errors);
                let identity = AzureIdentity::from_env(env, errors);
                match (url, identity) {
                    (Some(url), Some(identity)) => Some(AzureAccount {
                        account: Some(url.account),
                        endpoint: url.endpoint,
                        credential: Credential::Identity(identity),
                    }),
                    _ => None,
                }
            }
            None => {
                errors.push(ConfigError::new(
                    dsn_var,
                    None,
                    "is required for azure storage: the storage account connection string \
                     (or SP_TASK_SYNC_AZURE_ACCOUNT_URL with a workload or managed identity)",
                ));
                None
            }
            Some(_) if env.get(url_var).is_some() => {
                // Reported once, under the account URL.
                account_url(env, errors);
                None
            }
            Some(dsn) => match parse_connection_string(dsn) {
                Ok(a) => Some(a),
                Err(problem) => {
                    errors.push(ConfigError::new(
                        dsn_var,
                        Some(&Secret::new(dsn).to_string()),
                        problem,
                    ));
                    None
                }
            },
        };
        let container_var = "SP_TASK_SYNC_AZURE_CLIENT_NAME";
        let container = match env.get(container_var) {
            None => {
                errors.push(ConfigError::new(
                    container_var,
                    None,
                    "is required for azure storage: the container",
                ));
                None
            }
            Some(c) if !valid_container_name(c) => {
                errors.push(ConfigError::new(
                    container_var,
                    Some(c),
                    "is not a container name: 3 to 63 lowercase letters, digits and single hyphens, \
                     starting and ending with a letter or digit",
                ));
                None
            }
            Some(c) => Some(c.to_string()),
        };
        let prefix = env
            .get("SP_TASK_SYNC_SAVE_TO")
            .unwrap_or("")
            .trim_matches('/')
            .to_string();
        let block_var = "SP_TASK_SYNC_AZURE_BLOCK_SIZE";
        let block_size = match env.get(block_var) {
            None => Some(DEFAULT_BLOCK_SIZE),
            Some(raw) => match crate::env::parse_size(raw) {
                Some(n) if (MIN_BLOCK_SIZE as u64..=MAX_BLOCK_SIZE as u64).contains(&n) => {
                    Some(n as usize)
                }
                _ => {
                    errors.push(ConfigError::new(
                        block_var,
                        Some(raw),
                        "must be a size from 64KiB to 1GiB (e.g. 8MiB), in bytes or with K, M, G",
                    ));
                    None
                }
            },
        };
        let before = errors.len();
        let access_tier = access_tier(env, errors);
        if errors.len() > before {
            return None;
        }
        Some(AzureSettings {
            account: account?,
            container: container?,
            prefix,
            block_size: block_size?,
            access_tier,
        })
    }

    /// Lines for `check`: the connection string itself is never shown.
    pub fn describe(&self) -> Vec<(&'static str, String)> {
        let account = match &self.account.credential {
            Credential::Identity(_) => ("SP_TASK_SYNC_AZURE_ACCOUNT_URL", self.account.summary()),
            _ => (
                "SP_TASK_SYNC_AZURE_DSN",
                format!("*** ({})", self.account.summary()),
            ),
        };
        vec![
            account,
            (
                "SP_TASK_SYNC_AZURE_ACCESS_TIER",
                self.access_tier
                    .map(|t| t.header_value().to_string())
                    .unwrap_or_else(|| "- (the account's default)".into()),
            ),
            ("SP_TASK_SYNC_AZURE_CLIENT_NAME", self.container.clone()),
            (
                "SP_TASK_SYNC_SAVE_TO",
                if self.prefix.is_empty() {
                    "-".into()
                } else {
                    self.prefix.clone()
                },
            ),
        ]
    }
}

/// Azure's container naming rules.
pub fn valid_container_name(name: &str) -> bool {
    let b = name.as_bytes();
    (3..=63).contains(&b.len())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
        && !name.contains("--")
}

/// `SP_TASK_SYNC_AZURE_ACCOUNT_URL`: the blob service of the account, used with a token
/// instead of a connection string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountUrl {
    /// Without a trailing slash: `https://acct.blob.core.windows.net`, or path-style
    /// `https://127.0.0.1:10000/devstoreaccount1` (Azurite).
    pub endpoint: String,
    /// From the host's first label, or the path for a path-style URL.
    pub account: String,
}

/// Reads `SP_TASK_SYNC_AZURE_ACCOUNT_URL`; `None` when it is unset or wrong (pushed to
/// `errors`). It and `SP_TASK_SYNC_AZURE_DSN` exclude each other. Only https: the
/// storage refuses bearer tokens over plain http.
pub fn account_url(env: &Env, errors: &mut Vec<ConfigError>) -> Option<AccountUrl> {
    const VAR: &str = "SP_TASK_SYNC_AZURE_ACCOUNT_URL";
    let raw = env.get(VAR)?;
    if env.get("SP_TASK_SYNC_AZURE_DSN").is_some() {
        errors.push(ConfigError::new(
            VAR,
            Some(shown_url(raw)),
            "and SP_TASK_SYNC_AZURE_DSN are both set: use the DSN for an account key or SAS, the \
             account URL for a workload or managed identity, not both",
        ));
        return None;
    }
    if raw.contains('?') {
        errors.push(ConfigError::new(
            VAR,
            Some("***"),
            "must not have a query: a SAS goes into SP_TASK_SYNC_AZURE_DSN \
             (BlobEndpoint=...;SharedAccessSignature=...)",
        ));
        return None;
    }
    let endpoint = match check_url(raw) {
        Ok(u) if u.starts_with("https://") => u,
        Ok(_) => {
            errors.push(ConfigError::new(
                VAR,
                Some(raw),
                "must be https://: Azure Storage accepts bearer tokens only over https",
            ));
            return None;
        }
        Err(problem) => {
            errors.push(ConfigError::new(VAR, Some(shown_url(raw)), problem));
            return None;
        }
    };
    let rest = &endpoint["https://".len()..];
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let host_name = host.rsplit_once(':').map_or(host, |(h, _)| h);
    let account = if !path.is_empty() {
        path.split('/').next().unwrap_or("").to_string()
    } else if host_name.parse::<std::net::IpAddr>().is_ok() || host_name == "localhost" {
        String::new()
    } else {
        host_name.split('.').next().unwrap_or("").to_string()
    };
    let valid = (3..=24).contains(&account.len())
        && account
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if !valid {
        errors.push(ConfigError::new(
            VAR,
            Some(raw),
            "names no storage account: expected https://<account>.blob.core.windows.net (or \
             https://host:port/<account> for an emulator), the account 3 to 24 lowercase letters and digits",
        ));
        return None;
    }
    Some(AccountUrl { endpoint, account })
}

/// The access tier set on every blob (`x-ms-access-tier` on Put Blob and Put Block List).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessTier {
    Hot,
    Cool,
    Cold,
}

impl AccessTier {
    pub fn header_value(self) -> &'static str {
        match self {
            AccessTier::Hot => "Hot",
            AccessTier::Cool => "Cool",
            AccessTier::Cold => "Cold",
        }
    }

    /// The oldest `x-ms-version` that knows the tier.
    pub fn min_version(self) -> &'static str {
        match self {
            AccessTier::Cold => "2021-12-02",
            _ => "2018-11-09",
        }
    }
}

/// `SP_TASK_SYNC_AZURE_ACCESS_TIER=Hot|Cool|Cold` (any case). Archive is refused: an
/// archived blob cannot be read without rehydrating it, and the connector reads its
/// journal back at every round start (a lifecycle rule can archive recordings).
pub fn access_tier(env: &Env, errors: &mut Vec<ConfigError>) -> Option<AccessTier> {
    const VAR: &str = "SP_TASK_SYNC_AZURE_ACCESS_TIER";
    let raw = env.get(VAR)?;
    match raw.to_ascii_lowercase().as_str() {
        "hot" => Some(AccessTier::Hot),
        "cool" => Some(AccessTier::Cool),
        "cold" => Some(AccessTier::Cold),
        "archive" => {
            errors.push(ConfigError::new(
                VAR,
                Some(raw),
                "archived blobs cannot be read back without rehydrating them, and the connector \
                 reads its journal back at every round start; upload Hot, Cool or Cold and let a \
                 lifecycle management rule archive the recordings",
            ));
            None
        }
        _ => {
            errors.push(ConfigError::new(
                VAR,
                Some(raw),
                "must be Hot, Cool or Cold",
            ));
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Env {
        Env::from_pairs(pairs.iter().copied())
    }

    #[test]
    fn container_names() {
        for ok in ["abc", "my-container-1", &"a".repeat(63)] {
            assert!(valid_container_name(ok), "{ok}");
        }
        for bad in ["ab", "-abc", "abc-", "a--b", "ABC", "a_b", &"a".repeat(64)] {
            assert!(!valid_container_name(bad), "{bad}");
        }
    }

    #[test]
    fn settings_from_env_mask_the_dsn() {
        let secret = "AccountName=acct;AccountKey=U3VwZXJTZWNyZXQ=;EndpointSuffix=core.windows.net";
        let mut errors = Vec::new();
        let s = AzureSettings::from_env(
            &env(&[
                ("SP_TASK_SYNC_AZURE_DSN", secret),
                ("SP_TASK_SYNC_AZURE_CLIENT_NAME", "calls"),
                ("SP_TASK_SYNC_SAVE_TO", "/spinoco/"),
            ]),
            &mut errors,
        )
        .unwrap();
        assert!(errors.is_empty());
        assert_eq!(s.prefix, "spinoco");
        let shown = format!("{s:?} {:?}", s.describe());
        assert!(!shown.contains("U3VwZXJTZWNyZXQ"), "{shown}");
        assert!(shown.contains("account acct"), "{shown}");

        let mut errors = Vec::new();
        let bad = "AccountName=acct;SharedAccessSignature=sv=1&se=SuperSecret";
        let s = AzureSettings::from_env(
            &env(&[
                ("SP_TASK_SYNC_AZURE_DSN", bad),
                ("SP_TASK_SYNC_AZURE_CLIENT_NAME", "No_Such"),
            ]),
            &mut errors,
        );
        assert!(s.is_none());
        let vars: Vec<&str> = errors.iter().map(|e| e.var.as_str()).collect();
        assert_eq!(
            vars,
            ["SP_TASK_SYNC_AZURE_DSN", "SP_TASK_SYNC_AZURE_CLIENT_NAME"]
        );
        let text = format!("{errors:?}");
        assert!(!text.contains("SuperSecret"), "{text}");
        assert!(text.contains("sig="), "{text}");
    }

    #[test]
    fn block_size_can_be_set_and_is_checked() {
        let dsn = "AccountName=acct;AccountKey=U3VwZXJTZWNyZXQ=;EndpointSuffix=core.windows.net";
        let with = |size: &'static str| {
            let mut errors = Vec::new();
            let s = AzureSettings::from_env(
                &env(&[
                    ("SP_TASK_SYNC_AZURE_DSN", dsn),
                    ("SP_TASK_SYNC_AZURE_CLIENT_NAME", "calls"),
                    ("SP_TASK_SYNC_AZURE_BLOCK_SIZE", size),
                ]),
                &mut errors,
            );
            (s.map(|s| s.block_size), errors)
        };
        assert_eq!(with("256K").0, Some(256 * 1024));
        assert_eq!(with("16MiB").0, Some(16 << 20));
        for bad in ["1K", "2G", "lots", "-5"] {
            let (s, errors) = with(bad);
            assert!(s.is_none(), "{bad}");
            assert_eq!(errors[0].var, "SP_TASK_SYNC_AZURE_BLOCK_SIZE", "{bad}");
        }
    }

    #[test]
    fn missing_settings_are_named() {
        let mut errors = Vec::new();
        assert!(AzureSettings::from_env(&env(&[]), &mut errors).is_none());
        let vars: Vec<&str> = errors.iter().map(|e| e.var.as_str()).collect();
        assert_eq!(
            vars,
            ["SP_TASK_SYNC_AZURE_DSN", "SP_TASK_SYNC_AZURE_CLIENT_NAME"]
        );
    }

    #[test]
    fn config_selects_azure_and_masks_the_dsn_in_describe() {
        let key = super::super::credential::DEV_KEY;
        let dsn = format!("AccountName=acct;AccountKey={key}");
        let env = Env::from_pairs([
            ("SP_API_TOKEN", "t"),
            ("SP_TASK_SYNC_TAG", "tag"),
            ("SP_TASK_SYNC_FILE_NAME_TEMPLATE", "{{task_id}}"),
            ("SP_TASK_SYNC_STORAGE_PROVIDER", "Azure"),
            ("SP_TASK_SYNC_AZURE_DSN", dsn.as_str()),
            ("SP_TASK_SYNC_AZURE_CLIENT_NAME", "calls"),
        ]);
        let config = crate::config::Config::from_env(&env).unwrap();
        assert_eq!(config.storage.provider(), "azure");
        let lines = format!("{:?} {config:?}", config.describe());
        assert!(!lines.contains(&key[..20]), "{lines}");
        assert!(
            lines.contains("https://acct.blob.core.windows.net") && lines.contains("calls"),
            "{lines}"
        );
    }

    #[test]
    fn account_url_forms_and_mistakes() {
        let mut errors = Vec::new();
        let u = |raw: &str, errors: &mut Vec<ConfigError>| {
            account_url(&env(&[("SP_TASK_SYNC_AZURE_ACCOUNT_URL", raw)]), errors)
        };
        assert_eq!(
            u("https://spinocorec.blob.core.windows.net/", &mut errors).unwrap(),
            AccountUrl {
                endpoint: "https://spinocorec.blob.core.windows.net".into(),
                account: "spinocorec".into()
            }
        );
        assert_eq!(
            u("https://127.0.0.1:10000/devstoreaccount1", &mut errors)
                .unwrap()
                .account,
            "devstoreaccount1"
        );
        assert!(errors.is_empty());
        assert!(u("http://acct.blob.core.windows.net", &mut errors).is_none());
        assert!(u(
            "https://acct.blob.core.windows.net/?sv=2022&sig=abc",
            &mut errors
        )
        .is_none());
        assert!(u("https://127.0.0.1:10000", &mut errors).is_none());
        assert_eq!(errors.len(), 3);
        assert!(errors[0].problem.contains("https"));
        assert_eq!(
            errors[1].value.as_deref(),
            Some("***"),
            "a SAS is not shown"
        );
        errors.clear();
        let both = env(&[
            (
                "SP_TASK_SYNC_AZURE_ACCOUNT_URL",
                "https://a1b.blob.core.windows.net",
            ),
            ("SP_TASK_SYNC_AZURE_DSN", "UseDevelopmentStorage=true"),
        ]);
        assert!(account_url(&both, &mut errors).is_none());
        assert!(errors[0].problem.contains("both"));
    }

    #[test]
    fn access_tiers() {
        let mut errors = Vec::new();
        let t = |raw: &str, errors: &mut Vec<ConfigError>| {
            access_tier(&env(&[("SP_TASK_SYNC_AZURE_ACCESS_TIER", raw)]), errors)
        };
        assert_eq!(t("cool", &mut errors), Some(AccessTier::Cool));
        assert_eq!(t("Cold", &mut errors).unwrap().min_version(), "2021-12-02");
        assert!(errors.is_empty());
        assert_eq!(t("Archive", &mut errors), None);
        assert_eq!(t("Premium", &mut errors), None);
        assert!(errors[0].problem.contains("journal") && errors.len() == 2);
    }
}
