//! The GCS settings read from the environment: bucket, project, endpoint (or
//! `STORAGE_EMULATOR_HOST`), chunk size, the credentials found ([`super::credential`]),
//! and the upload options bucket policies demand. Every mistake is pushed, all of them
//! at once.

use super::credential::Credentials;
use crate::env::{ConfigError, Env};

pub const DEFAULT_ENDPOINT: &str = "https://storage.googleapis.com";
/// Resumable chunks (except the last) must be a multiple of this.
pub const CHUNK_GRANULARITY: usize = 256 * 1024;
pub const DEFAULT_CHUNK_SIZE: usize = 8 * 1024 * 1024;
/// The largest `SP_TASK_SYNC_GCS_CHUNK_SIZE` accepted (one chunk is held in memory).
pub const MAX_CHUNK_SIZE: usize = 1024 * 1024 * 1024;

/// The checked `SP_TASK_SYNC_GCS_*` settings.
#[derive(Debug, Clone)]
pub struct GcsSettings {
    pub bucket: String,
    /// Sent as `userProject` (billed for requester-pays buckets).
    pub project: String,
    /// `SP_TASK_SYNC_SAVE_TO`: the object name prefix.
    pub prefix: String,
    /// Base URL without a trailing slash.
    pub endpoint: String,
    pub credentials: Credentials,
    /// Resumable chunk size; a multiple of [`CHUNK_GRANULARITY`].
    pub chunk_size: usize,
    /// The KMS key and storage class of every upload.
    pub options: GcsOptions,
}

impl GcsSettings {
    /// Reads the settings; every mistake is pushed to `errors`. Reads local files (the
    /// credentials), never the network.
    pub fn from_env(env: &Env, errors: &mut Vec<ConfigError>) -> Option<GcsSettings> {
        let before = errors.len();
        let bucket = env
            .get("SP_TASK_SYNC_GCS_BUCKET")
            .unwrap_or_default()
            .to_string();
        if bucket.is_empty() {
            errors.push(ConfigError::new(
                "SP_TASK_SYNC_GCS_BUCKET",
                None,
                "is required for gcs storage",
            ));
        } else if !valid_bucket(&bucket) {
            errors.push(ConfigError::new(
                "SP_TASK_SYNC_GCS_BUCKET",
                Some(&bucket),
                "is not a bucket name: 3 to 222 characters of a-z, 0-9, '-', '_' and '.', \
                 starting and ending with a letter or digit",
            ));
        }
        let project = env
            .get("SP_TASK_SYNC_GCS_PROJECT")
            .unwrap_or_default()
            .to_string();
        if project.is_empty() {
            errors.push(ConfigError::new(
                "SP_TASK_SYNC_GCS_PROJECT",
                None,
                "is required for gcs storage: the project billed for requests (userProject)",
            ));
        }
        let (endpoint_var, raw_endpoint) = match (
            env.get("SP_TASK_SYNC_GCS_ENDPOINT"),
            env.get("STORAGE_EMULATOR_HOST"),
        ) {
            (Some(e), _) => ("SP_TASK_SYNC_GCS_ENDPOINT", Some(e)),
            (None, Some(e)) => ("STORAGE_EMULATOR_HOST", Some(e)),
            (None, None) => ("", None),
        };
        let emulator = raw_endpoint.is_some();
        let endpoint = match raw_endpoint {
            None => DEFAULT_ENDPOINT.to_string(),
            Some(raw) => {
                // Google's libraries take STORAGE_EMULATOR_HOST as host:port, plain HTTP.
                let url = if raw.contains("://") {
                    raw.to_string()
                } else {
                    format!("http://{raw}")
                };
                let url = url.trim_end_matches('/').to_string();
                let rest = url
                    .strip_prefix("http://")
                    .or_else(|| url.strip_prefix("https://"));
                if rest.is_none_or(|r| r.is_empty() || r.contains(['?', '#', '@', ' '])) {
                    errors.push(ConfigError::new(
                        endpoint_var,
                        Some(raw),
                        "must be http(s)://host[:port] or host:port",
                    ));
                }
                url
            }
        };
        let chunk_var = "SP_TASK_SYNC_GCS_CHUNK_SIZE";
        let chunk_size = match env.get(chunk_var) {
            None => DEFAULT_CHUNK_SIZE,
            Some(raw) => match crate::env::parse_size(raw) {
                Some(n)
                    if n > 0 && n % CHUNK_GRANULARITY as u64 == 0 && n <= MAX_CHUNK_SIZE as u64 =>
                {
                    n as usize
                }
                _ => {
                    errors.push(ConfigError::new(
                        chunk_var,
                        Some(raw),
                        "must be a multiple of 256KiB up to 1GiB (e.g. 8MiB): GCS takes \
                         resumable chunks only in such sizes",
                    ));
                    DEFAULT_CHUNK_SIZE
                }
            },
        };
        let options = GcsOptions::from_env(env, errors);
        let credentials = match Credentials::discover(env, emulator) {
            Ok(c) => c,
            Err(e) => {
                errors.push(e);
                Credentials::Anonymous
            }
        };
        (errors.len() == before).then(|| GcsSettings {
            bucket,
            project,
            prefix: env
                .get("SP_TASK_SYNC_SAVE_TO")
                .unwrap_or_default()
                .trim_matches('/')
                .to_string(),
            endpoint,
            credentials,
            chunk_size,
            options,
        })
    }

    /// `name = value` lines for `check` (no secrets: credentials are described).
    pub fn describe(&self) -> Vec<(&'static str, String)> {
        vec![
            ("SP_TASK_SYNC_GCS_BUCKET", self.bucket.clone()),
            ("SP_TASK_SYNC_GCS_PROJECT", self.project.clone()),
            (
                "SP_TASK_SYNC_SAVE_TO",
                if self.prefix.is_empty() {
                    "-".into()
                } else {
                    self.prefix.clone()
                },
            ),
            ("SP_TASK_SYNC_GCS_ENDPOINT", self.endpoint.clone()),
            ("GCS credentials", self.credentials.describe()),
        ]
        .into_iter()
        .chain(self.options.describe())
        .collect()
    }
}

/// Bucket naming rules, loosely: lowercase letters, digits, `-`, `_`, `.`.
fn valid_bucket(name: &str) -> bool {
    let bytes = name.as_bytes();
    (3..=222).contains(&bytes.len())
        && bytes.iter().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.')
        })
        && bytes[0].is_ascii_alphanumeric()
        && bytes[bytes.len() - 1].is_ascii_alphanumeric()
}

/// The GCS upload options a bucket policy may demand.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcsOptions {
    /// `projects/P/locations/L/keyRings/R/cryptoKeys/K`: the Cloud KMS key of every
    /// object (sent as the `kmsKeyName` parameter of each upload).
    pub kms_key_name: Option<String>,
    /// `STANDARD`, `NEARLINE`, `COLDLINE` or `ARCHIVE`: the `storageClass` of every
    /// object's metadata.
    pub storage_class: Option<String>,
}

impl GcsOptions {
    /// `SP_TASK_SYNC_GCS_KMS_KEY_NAME` and `SP_TASK_SYNC_GCS_STORAGE_CLASS`; every
    /// mistake is pushed. (Every GCS class is read at once, so none is refused; the
    /// colder ones bill a minimum storage duration and each read.)
    pub fn from_env(env: &Env, errors: &mut Vec<ConfigError>) -> GcsOptions {
        let kms_key_name = env.get("SP_TASK_SYNC_GCS_KMS_KEY_NAME").and_then(|raw| {
            let parts: Vec<&str> = raw.split('/').collect();
            let ok = parts.len() == 8
                && parts[0] == "projects"
                && parts[2] == "locations"
                && parts[4] == "keyRings"
                && parts[6] == "cryptoKeys"
                && parts.iter().all(|p| {
                    !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
                });
            if ok {
                Some(raw.to_string())
            } else {
                errors.push(ConfigError::new(
                    "SP_TASK_SYNC_GCS_KMS_KEY_NAME",
                    Some(raw),
                    "must be projects/<project>/locations/<location>/keyRings/<ring>/cryptoKeys/<key>",
                ));
                None
            }
        });
        let storage_class = env.get("SP_TASK_SYNC_GCS_STORAGE_CLASS").and_then(|raw| {
            let upper = raw.to_ascii_uppercase();
            if ["STANDARD", "NEARLINE", "COLDLINE", "ARCHIVE"].contains(&upper.as_str()) {
                Some(upper)
            } else {
                errors.push(ConfigError::new(
                    "SP_TASK_SYNC_GCS_STORAGE_CLASS",
                    Some(raw),
                    "must be STANDARD, NEARLINE, COLDLINE or ARCHIVE",
                ));
                None
            }
        });
        GcsOptions {
            kms_key_name,
            storage_class,
        }
    }

    /// `name = value` lines for `check`.
    pub fn describe(&self) -> Vec<(&'static str, String)> {
        vec![
            (
                "SP_TASK_SYNC_GCS_KMS_KEY_NAME",
                self.kms_key_name
                    .clone()
                    .unwrap_or_else(|| "- (the bucket's default)".into()),
            ),
            (
                "SP_TASK_SYNC_GCS_STORAGE_CLASS",
                self.storage_class
                    .clone()
                    .unwrap_or_else(|| "- (the bucket's default)".into()),
            ),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Env {
        Env::from_pairs(pairs.iter().copied())
    }

    #[test]
    fn chunk_size_can_be_set_and_is_checked() {
        let with = |size: &str| {
            let mut errors = Vec::new();
            let s = GcsSettings::from_env(
                &env(&[
                    ("SP_TASK_SYNC_GCS_BUCKET", "my-bucket"),
                    ("SP_TASK_SYNC_GCS_PROJECT", "p"),
                    ("STORAGE_EMULATOR_HOST", "localhost:4443"),
                    ("SP_TASK_SYNC_GCS_CHUNK_SIZE", size),
                ]),
                &mut errors,
            );
            (s.map(|s| s.chunk_size), errors)
        };
        assert_eq!(with("256K").0, Some(256 * 1024));
        assert_eq!(with("16MiB").0, Some(16 << 20));
        for bad in ["100K", "0", "2G", "big"] {
            let (s, errors) = with(bad);
            assert!(s.is_none(), "{bad}");
            assert_eq!(errors[0].var, "SP_TASK_SYNC_GCS_CHUNK_SIZE", "{bad}");
        }
    }

    #[test]
    fn settings_are_checked() {
        let mut errors = Vec::new();
        let s = GcsSettings::from_env(
            &env(&[
                ("SP_TASK_SYNC_GCS_BUCKET", "my-bucket"),
                ("SP_TASK_SYNC_GCS_PROJECT", "proj-1"),
                ("SP_TASK_SYNC_SAVE_TO", "/calls/"),
                ("STORAGE_EMULATOR_HOST", "localhost:4443"),
            ]),
            &mut errors,
        )
        .unwrap();
        assert!(errors.is_empty());
        assert_eq!(s.endpoint, "http://localhost:4443");
        assert_eq!(s.prefix, "calls");
        assert!(matches!(s.credentials, Credentials::Anonymous));

        let s = GcsSettings::from_env(
            &env(&[
                ("SP_TASK_SYNC_GCS_BUCKET", "b.example"),
                ("SP_TASK_SYNC_GCS_PROJECT", "p"),
                ("HOME", "/nonexistent"),
            ]),
            &mut errors,
        )
        .unwrap();
        assert_eq!(s.endpoint, DEFAULT_ENDPOINT);
        assert!(matches!(s.credentials, Credentials::Metadata { .. }));

        let mut errors = Vec::new();
        let s = GcsSettings::from_env(
            &env(&[
                ("SP_TASK_SYNC_GCS_BUCKET", "Bad_Bucket!"),
                ("SP_TASK_SYNC_GCS_ENDPOINT", "ftp://x"),
            ]),
            &mut errors,
        );
        assert!(s.is_none());
        let vars: Vec<&str> = errors.iter().map(|e| e.var.as_str()).collect();
        assert_eq!(
            vars,
            [
                "SP_TASK_SYNC_GCS_BUCKET",
                "SP_TASK_SYNC_GCS_PROJECT",
                "SP_TASK_SYNC_GCS_ENDPOINT"
            ]
        );
        assert_eq!(errors[0].value.as_deref(), Some("Bad_Bucket!"));
    }

    #[test]
    fn bucket_names() {
        assert!(valid_bucket("abc") && valid_bucket("a.b-c_d1"));
        assert!(
            !valid_bucket("ab")
                && !valid_bucket("-ab")
                && !valid_bucket("ABC")
                && !valid_bucket("a/b")
        );
    }

    #[test]
    fn storage_options() {
        let mut errors = Vec::new();
        let o = GcsOptions::from_env(
            &Env::from_pairs([
                (
                    "SP_TASK_SYNC_GCS_KMS_KEY_NAME",
                    "projects/p-1/locations/europe-west3/keyRings/r/cryptoKeys/k",
                ),
                ("SP_TASK_SYNC_GCS_STORAGE_CLASS", "nearline"),
            ]),
            &mut errors,
        );
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(o.storage_class.as_deref(), Some("NEARLINE"));
        GcsOptions::from_env(
            &Env::from_pairs([
                (
                    "SP_TASK_SYNC_GCS_KMS_KEY_NAME",
                    "projects/p/keyRings/r/cryptoKeys/k",
                ),
                ("SP_TASK_SYNC_GCS_STORAGE_CLASS", "GLACIER"),
            ]),
            &mut errors,
        );
        let vars: Vec<&str> = errors.iter().map(|e| e.var.as_str()).collect();
        assert_eq!(
            vars,
            [
                "SP_TASK_SYNC_GCS_KMS_KEY_NAME",
                "SP_TASK_SYNC_GCS_STORAGE_CLASS"
            ]
        );
    }
}
