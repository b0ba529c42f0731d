//! The S3 upload options a bucket policy may demand: server-side encryption and
//! storage class, sent with PutObject and CreateMultipartUpload, never with UploadPart.
//! Reference: "Protecting data with server-side encryption" (S3 user guide).

use crate::env::{ConfigError, Env};

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

    fn env(pairs: &[(&str, &str)]) -> Env {
        Env::from_pairs(pairs.iter().copied())
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
