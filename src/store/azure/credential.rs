//! Azure Storage connection strings and Shared Key request signing.
//!
//! Kept apart from the REST client so that the parts that must match Microsoft's
//! specification byte for byte (the string-to-sign, the canonicalized headers and
//! resource, base64, percent-encoding) are pure functions with their own tests.
//!
//! References: "Configure Azure Storage connection strings", "Authorize with Shared
//! Key" (version 2015-02-21 and later: a zero Content-Length signs as an empty line)
//! and "Create an account SAS" on learn.microsoft.com.
//!
//! What Shared Key signs of a request URL (`split_url`) is here too; a bearer token
//! from a workload or managed identity comes from [`super::identity`].

use std::fmt;

use ring::hmac;

use super::identity::AzureIdentity;
use crate::encoding::{base64, base64_decode, percent_encode};
use crate::env::Secret;

/// Azurite's (and the old storage emulator's) well-known development account.
pub const DEV_ACCOUNT: &str = "devstoreaccount1";
/// Its published key (Azurite README); not a secret.
pub const DEV_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
/// Where `UseDevelopmentStorage=true` points: path-style, account in the path.
pub const DEV_BLOB_ENDPOINT: &str = "http://127.0.0.1:10000/devstoreaccount1";

/// How requests are authorized.
#[derive(Clone)]
pub enum Credential {
    /// HMAC-SHA256 over the string-to-sign with the decoded account key (boxed:
    /// ring's key is a few hundred bytes and would bloat every settings enum).
    SharedKey(Box<hmac::Key>),
    /// A SAS token (without the leading `?`), appended to every request's query.
    Sas(Secret),
    /// An Entra ID token from a workload or managed identity, sent as
    /// `Authorization: Bearer` (with `SP_TASK_SYNC_AZURE_ACCOUNT_URL`).
    Identity(AzureIdentity),
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credential::SharedKey(_) => f.write_str("SharedKey(***)"),
            Credential::Sas(_) => f.write_str("Sas(***)"),
            Credential::Identity(id) => write!(f, "Identity({})", id.describe()),
        }
    }
}

/// A parsed connection string: where the blob service is and how to sign.
#[derive(Debug, Clone)]
pub struct AzureAccount {
    /// The account name; `None` only for the SAS form with a BlobEndpoint.
    pub account: Option<String>,
    /// The blob service base URL without a trailing slash, e.g.
    /// `https://acct.blob.core.windows.net` or `http://127.0.0.1:10000/devstoreaccount1`.
    pub endpoint: String,
    pub credential: Credential,
}

impl AzureAccount {
    /// `account X, endpoint Y, Shared Key` — for logs and `check`, no secret in it.
    pub fn summary(&self) -> String {
        let identity;
        let how = match &self.credential {
            Credential::SharedKey(_) => "Shared Key",
            Credential::Sas(_) => "SAS",
            Credential::Identity(id) => {
                identity = id.describe();
                identity.as_str()
            }
        };
        match &self.account {
            Some(a) => format!("account {a}, endpoint {}, {how}", self.endpoint),
            None => format!("endpoint {}, {how}", self.endpoint),
        }
    }

    /// The path part of the endpoint (`""` or `/devstoreaccount1`).
    pub fn endpoint_path(&self) -> &str {
        let after_scheme = self
            .endpoint
            .split_once("://")
            .map(|(_, r)| r)
            .unwrap_or(&self.endpoint);
        after_scheme
            .find('/')
            .map(|i| &after_scheme[i..])
            .unwrap_or("")
    }
}

/// Parses the three connection string forms. The message of an error names the
/// missing or bad part and never contains the key or the SAS.
pub fn parse_connection_string(dsn: &str) -> Result<AzureAccount, String> {
    let mut account = None;
    let mut key = None;
    let mut sas = None;
    let mut protocol = None;
    let mut suffix = None;
    let mut blob_endpoint = None;
    let mut dev = false;
    for (i, part) in dsn.split(';').map(str::trim).enumerate() {
        if part.is_empty() {
            continue;
        }
        let Some((name, value)) = part.split_once('=') else {
            // The part is not shown: it could be a key pasted without its name.
            return Err(format!(
                "part {} of the connection string is not Name=value",
                i + 1
            ));
        };
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "accountname" => account = Some(value.to_string()),
            "accountkey" => key = Some(value.to_string()),
            "sharedaccesssignature" => sas = Some(value.trim_start_matches('?').to_string()),
            "defaultendpointsprotocol" => protocol = Some(value.to_ascii_lowercase()),
            "endpointsuffix" => suffix = Some(value.trim_matches('.').to_string()),
            "blobendpoint" => blob_endpoint = Some(value.trim_end_matches('/').to_string()),
            "usedevelopmentstorage" => dev = value.eq_ignore_ascii_case("true"),
            // Other services' settings, valid but not ours.
            "queueendpoint"
            | "tableendpoint"
            | "fileendpoint"
            | "blobsecondaryendpoint"
            | "queuesecondaryendpoint"
            | "tablesecondaryendpoint"
            | "filesecondaryendpoint"
            | "developmentstorageproxyuri" => {}
            _ => {
                // A short alphabetic name is a typo worth showing; anything else could
                // be a pasted key and is not shown.
                let name = name.trim();
                let shown = if name.len() <= 32 && name.bytes().all(|b| b.is_ascii_alphabetic()) {
                    format!(" {name:?}")
                } else {
                    String::new()
                };
                return Err(format!(
                    "part {} of the connection string has an unknown name{shown}",
                    i + 1
                ));
            }
        }
    }

    if dev {
        return Ok(AzureAccount {
            account: Some(DEV_ACCOUNT.to_string()),
            endpoint: DEV_BLOB_ENDPOINT.to_string(),
            credential: Credential::SharedKey(
                hmac_key(DEV_KEY).expect("the dev key is valid base64"),
            ),
        });
    }

    if let Some(p) = &protocol {
        if p != "https" && p != "http" {
            return Err(format!(
                "DefaultEndpointsProtocol must be https or http, not {p:?}"
            ));
        }
    }
    if let Some(a) = &account {
        let ok = (3..=24).contains(&a.len())
            && a.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        if !ok {
            return Err(format!(
                "AccountName {a:?} is not a storage account name (3 to 24 lowercase letters and digits)"
            ));
        }
    }
    if let Some(e) = &blob_endpoint {
        check_endpoint(e)?;
    }

    let credential = match (key, sas) {
        (Some(key), _) => {
            if account.is_none() {
                return Err("the connection string has AccountKey but no AccountName".to_string());
            }
            // Only its HMAC is kept, so the log's secret registry learns it here.
            crate::redact::register(&key);
            let key = hmac_key(&key).ok_or("AccountKey is not valid base64")?;
            Credential::SharedKey(key)
        }
        (None, Some(sas)) => {
            if !sas.split('&').any(|p| p.starts_with("sig=")) {
                return Err("SharedAccessSignature has no sig= part".to_string());
            }
            Credential::Sas(Secret::new(sas))
        }
        (None, None) => {
            return Err(
                "the connection string has neither AccountKey nor SharedAccessSignature \
                        (nor UseDevelopmentStorage=true)"
                    .to_string(),
            )
        }
    };

    let endpoint = match (blob_endpoint, &account) {
        (Some(e), _) => e,
        (None, Some(a)) => format!(
            "{}://{a}.blob.{}",
            protocol.as_deref().unwrap_or("https"),
            suffix.as_deref().unwrap_or("core.windows.net")
        ),
        (None, None) => {
            return Err(
                "the connection string has SharedAccessSignature but neither BlobEndpoint \
                        nor AccountName"
                    .to_string(),
            )
        }
    };
    Ok(AzureAccount {
        account,
        endpoint,
        credential,
    })
}

fn check_endpoint(e: &str) -> Result<(), String> {
    if e.contains(['?', '@']) {
        // Not shown: a query could be a SAS, user info a password.
        return Err(
            "BlobEndpoint must be a plain http(s)://host[:port][/path] URL, without a query \
                    or user info (a SAS goes in SharedAccessSignature)"
                .to_string(),
        );
    }
    let rest = e
        .strip_prefix("https://")
        .or_else(|| e.strip_prefix("http://"));
    let host = rest.map(|r| r.split('/').next().unwrap_or(""));
    match host {
        Some(h) if !h.is_empty() && !e.contains(['?', '#', ' ', '@']) => Ok(()),
        _ => Err(format!(
            "BlobEndpoint {e:?} is not an http(s)://host[:port][/path] URL"
        )),
    }
}

fn hmac_key(b64: &str) -> Option<Box<hmac::Key>> {
    let bytes = base64_decode(b64)?;
    (!bytes.is_empty()).then(|| Box::new(hmac::Key::new(hmac::HMAC_SHA256, &bytes)))
}

/// The Shared Key string-to-sign of a Blob service request (version 2015-02-21+).
///
/// `headers` are all the headers the request carries (names in any case);
/// `path` is the URL path exactly as sent (percent-encoded, starting with `/`);
/// `query` holds the query parameters with their values NOT encoded.
pub fn string_to_sign(
    method: &str,
    headers: &[(&str, &str)],
    account: &str,
    path: &str,
    query: &[(&str, &str)],
) -> String {
    let header = |name: &str| -> &str {
        let value = headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim())
            .unwrap_or("");
        if name == "Content-Length" && value == "0" {
            ""
        } else {
            value
        }
    };
    let mut out = String::new();
    out.push_str(&method.to_ascii_uppercase());
    out.push('\n');
    for name in [
        "Content-Encoding",
        "Content-Language",
        "Content-Length",
        "Content-MD5",
        "Content-Type",
        "Date",
        "If-Modified-Since",
        "If-Match",
        "If-None-Match",
        "If-Unmodified-Since",
        "Range",
    ] {
        out.push_str(header(name));
        out.push('\n');
    }
    out.push_str(&canonicalized_headers(headers));
    out.push_str(&canonicalized_resource(account, path, query));
    out
}

/// The `x-ms-*` headers: lowercase names, sorted, values with runs of whitespace
/// folded to one space, each line ending in `\n`.
pub fn canonicalized_headers(headers: &[(&str, &str)]) -> String {
    let mut ms: Vec<(String, String)> = headers
        .iter()
        .filter(|(n, _)| n.to_ascii_lowercase().starts_with("x-ms-"))
        .map(|(n, v)| {
            (
                n.trim().to_ascii_lowercase(),
                v.split_whitespace().collect::<Vec<_>>().join(" "),
            )
        })
        .collect();
    ms.sort();
    ms.iter().map(|(n, v)| format!("{n}:{v}\n")).collect()
}

/// `/<account><path>` then, per query parameter sorted by lowercase name,
/// `\nname:value` (values of a repeated name sorted and joined with commas).
pub fn canonicalized_resource(account: &str, path: &str, query: &[(&str, &str)]) -> String {
    let mut out = format!("/{account}{}", if path.is_empty() { "/" } else { path });
    let mut params: Vec<(String, Vec<&str>)> = Vec::new();
    for (name, value) in query {
        let name = name.to_ascii_lowercase();
        match params.iter_mut().find(|(n, _)| *n == name) {
            Some((_, values)) => values.push(value),
            None => params.push((name, vec![value])),
        }
    }
    params.sort();
    for (name, mut values) in params {
        values.sort();
        out.push_str(&format!("\n{name}:{}", values.join(",")));
    }
    out
}

/// base64(HMAC-SHA256(key, string_to_sign)).
pub fn sign(key: &hmac::Key, string_to_sign: &str) -> String {
    base64(hmac::sign(key, string_to_sign.as_bytes()).as_ref())
}

/// An account SAS for the blob service (version 2020-12-06+ string-to-sign, with the
/// empty encryption scope line), as a query string without `?`. `expiry` is
/// `YYYY-MM-DDThh:mm:ssZ`; `permissions` e.g. `rwdlac`. The tests use it to mint a
/// token for Azurite's dev account; operators get theirs from the portal.
pub fn account_sas(
    account: &str,
    key_b64: &str,
    permissions: &str,
    expiry: &str,
    version: &str,
) -> Option<String> {
    let key = hmac_key(key_b64)?;
    let (services, resource_types, protocol) = ("b", "sco", "https,http");
    let to_sign =
        format!("{account}\n{permissions}\n{services}\n{resource_types}\n\n{expiry}\n\n{protocol}\n{version}\n\n");
    let sig = sign(&key, &to_sign);
    Some(format!(
        "sv={version}&ss={services}&srt={resource_types}&sp={permissions}&se={}&spr={}&sig={}",
        encode_query_value(expiry),
        encode_query_value(protocol),
        encode_query_value(&sig)
    ))
}

/// Percent-encodes a blob name for the URL path, keeping `/` as the separator.
pub fn encode_path(name: &str) -> String {
    percent_encode(name, true)
}

/// Percent-encodes a query parameter value (`+`, `/` and `=` of base64 included).
pub fn encode_query_value(value: &str) -> String {
    percent_encode(value, false)
}

/// What Shared Key signs of a URL.
pub(super) struct SignedParts {
    /// The encoded path.
    pub(super) path: String,
    /// The query pairs, values decoded.
    pub(super) query: Vec<(String, String)>,
}

pub(super) fn split_url(url: &str) -> SignedParts {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let path_and_query = rest.find('/').map_or("/", |i| &rest[i..]);
    let (path, query) = path_and_query
        .split_once('?')
        .unwrap_or((path_and_query, ""));
    let pairs = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (n, v) = p.split_once('=').unwrap_or((p, ""));
            let v = crate::encoding::percent_decode(v).unwrap_or_else(|| v.to_string());
            (n.to_string(), v)
        })
        .collect();
    SignedParts {
        path: path.to_string(),
        query: pairs,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "c2VjcmV0LWtleS1mb3ItdGVzdHMtb25seS0xMjM0NTY3ODkw";

    fn key_of(a: &AzureAccount) -> bool {
        matches!(a.credential, Credential::SharedKey(_))
    }

    #[test]
    fn account_key_form() {
        let dsn = format!(
            "DefaultEndpointsProtocol=https;AccountName=myaccount;AccountKey={KEY};EndpointSuffix=core.chinacloudapi.cn"
        );
        let a = parse_connection_string(&dsn).unwrap();
        assert_eq!(a.account.as_deref(), Some("myaccount"));
        assert_eq!(a.endpoint, "https://myaccount.blob.core.chinacloudapi.cn");
        assert_eq!(a.endpoint_path(), "");
        assert!(key_of(&a));

        let a =
            parse_connection_string(&format!("AccountName=myaccount;AccountKey={KEY}")).unwrap();
        assert_eq!(a.endpoint, "https://myaccount.blob.core.windows.net");

        let dsn = format!(
            "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={DEV_KEY};BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1/;"
        );
        let a = parse_connection_string(&dsn).unwrap();
        assert_eq!(a.endpoint, "http://127.0.0.1:10000/devstoreaccount1");
        assert_eq!(a.endpoint_path(), "/devstoreaccount1");
        let shown = format!("{a:?} {}", a.summary());
        assert!(
            !shown.contains(DEV_KEY) && !shown.contains("Eby8"),
            "{shown}"
        );
    }

    #[test]
    fn sas_form() {
        let dsn = "BlobEndpoint=https://acct.blob.core.windows.net;SharedAccessSignature=sv=2021-08-06&ss=b&sig=abc%2Bdef";
        let a = parse_connection_string(dsn).unwrap();
        assert_eq!(a.account, None);
        assert_eq!(a.endpoint, "https://acct.blob.core.windows.net");
        match &a.credential {
            Credential::Sas(t) => assert_eq!(t.expose(), "sv=2021-08-06&ss=b&sig=abc%2Bdef"),
            other => panic!("{other:?}"),
        }
        let shown = format!("{a:?} {}", a.summary());
        assert!(!shown.contains("sig="), "{shown}");
        // AccountName is enough to find the endpoint.
        let a =
            parse_connection_string("AccountName=acct;SharedAccessSignature=?sv=x&sig=y").unwrap();
        assert_eq!(a.endpoint, "https://acct.blob.core.windows.net");
    }

    #[test]
    fn development_storage_form() {
        let a = parse_connection_string("UseDevelopmentStorage=true").unwrap();
        assert_eq!(a.account.as_deref(), Some(DEV_ACCOUNT));
        assert_eq!(a.endpoint, DEV_BLOB_ENDPOINT);
        assert!(key_of(&a));
    }

    #[test]
    fn every_missing_part_is_named_and_no_secret_is_echoed() {
        let secret_key = "U3VwZXJTZWNyZXRLZXlWYWx1ZQ==";
        let cases = [
            (format!("AccountKey={secret_key}"), "no AccountName"),
            (
                "AccountName=acct".to_string(),
                "neither AccountKey nor SharedAccessSignature",
            ),
            (
                "AccountName=acct;AccountKey=not*base64".to_string(),
                "AccountKey is not valid base64",
            ),
            (
                "SharedAccessSignature=sv=1&sig=SuperSecretSig".to_string(),
                "neither BlobEndpoint nor AccountName",
            ),
            (
                "BlobEndpoint=https://x;SharedAccessSignature=sv=1&se=SuperSecret".to_string(),
                "no sig= part",
            ),
            (
                format!("AccountName=acct;AccountKey={secret_key};BlobEndpoint=ftp://x"),
                "BlobEndpoint",
            ),
            (
                format!("AccountName=acct;AccountKey={secret_key};DefaultEndpointsProtocol=gopher"),
                "https or http",
            ),
            (
                format!("AccountName=Bad_Name;AccountKey={secret_key}"),
                "AccountName",
            ),
            (
                format!("AccountName=acct;{secret_key}"),
                "part 2 of the connection string",
            ),
            (String::new(), "neither AccountKey"),
            (
                "BlobEndpoint=https://x.blob.core.windows.net/?sv=1&sig=SuperSecretSig".to_string(),
                "without a query",
            ),
            (
                format!("AccountName=acct;AcountKey={secret_key}"),
                "unknown name \"AcountKey\"",
            ),
        ];
        for (dsn, expected) in cases {
            let err = parse_connection_string(&dsn).unwrap_err();
            assert!(
                err.contains(expected),
                "{dsn:?} gave {err:?}, expected {expected:?}"
            );
            for secret in [secret_key, "SuperSecret", "U3VwZXJ"] {
                assert!(!err.contains(secret), "{err:?} leaks a secret");
            }
        }
    }

    /// The example of "Authorize with Shared Key" (learn.microsoft.com): Get Container
    /// Metadata against the emulator's path-style address, where the account appears
    /// twice in the canonicalized resource.
    #[test]
    fn string_to_sign_matches_microsoft_example() {
        let headers = [
            ("x-ms-version", "2009-09-19"),
            ("x-ms-date", "Sun, 11 Oct 2009 21:49:13 GMT"),
        ];
        let sts = string_to_sign(
            "GET",
            &headers,
            "myaccount",
            "/myaccount/mycontainer",
            &[
                ("restype", "container"),
                ("comp", "metadata"),
                ("timeout", "20"),
            ],
        );
        let expected = "GET\n\n\n\n\n\n\n\n\n\n\n\n\
                        x-ms-date:Sun, 11 Oct 2009 21:49:13 GMT\nx-ms-version:2009-09-19\n\
                        /myaccount/myaccount/mycontainer\ncomp:metadata\nrestype:container\ntimeout:20";
        assert_eq!(sts, expected);
    }

    /// "Authorize with Shared Key", canonicalized resource examples: repeated query
    /// names are sorted and joined with commas.
    #[test]
    fn canonicalized_resource_examples() {
        assert_eq!(
            canonicalized_resource(
                "myaccount",
                "/mycontainer",
                &[
                    ("restype", "container"),
                    ("comp", "list"),
                    ("include", "snapshots"),
                    ("include", "metadata"),
                    ("include", "uncommittedblobs"),
                ]
            ),
            "/myaccount/mycontainer\ncomp:list\ninclude:metadata,snapshots,uncommittedblobs\nrestype:container"
        );
        assert_eq!(
            canonicalized_resource("myaccount", "/mycontainer/myblob", &[]),
            "/myaccount/mycontainer/myblob"
        );
    }

    #[test]
    fn put_block_string_to_sign_has_length_type_and_blockid() {
        let headers = [
            ("Content-Length", "11"),
            ("Content-Type", "audio/ogg"),
            ("X-MS-Date", "Fri, 26 Jun 2015 23:39:12 GMT"),
            ("x-ms-version", "2021-08-06"),
            ("x-ms-meta-m1", "  a   b "),
        ];
        let sts = string_to_sign(
            "put",
            &headers,
            "devstoreaccount1",
            "/devstoreaccount1/c/a%20b.ogg",
            &[("comp", "block"), ("blockid", "MDAw+/==")],
        );
        assert_eq!(
            sts,
            "PUT\n\n\n11\n\naudio/ogg\n\n\n\n\n\n\n\
             x-ms-date:Fri, 26 Jun 2015 23:39:12 GMT\nx-ms-meta-m1:a b\nx-ms-version:2021-08-06\n\
             /devstoreaccount1/devstoreaccount1/c/a%20b.ogg\nblockid:MDAw+/==\ncomp:block"
        );
        // A zero Content-Length signs as an empty line (version 2015-02-21+).
        let sts = string_to_sign("PUT", &[("Content-Length", "0")], "a", "/c", &[]);
        assert!(sts.starts_with("PUT\n\n\n\n"), "{sts:?}");
    }

    /// RFC 4231 test case 2 through our base64: HMAC-SHA256("Jefe", ...).
    #[test]
    fn signature_is_base64_hmac_sha256() {
        let key = hmac::Key::new(hmac::HMAC_SHA256, b"Jefe");
        let hex = "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843";
        let bytes: Vec<u8> = (0..32)
            .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap())
            .collect();
        assert_eq!(sign(&key, "what do ya want for nothing?"), base64(&bytes));
    }

    #[test]
    fn names_are_percent_encoded_keeping_slashes() {
        assert_eq!(
            encode_path("a/ž/ü file (1).ogg"),
            "a/%C5%BE/%C3%BC%20file%20%281%29.ogg"
        );
        assert_eq!(encode_query_value("ab+/="), "ab%2B%2F%3D");
    }

    #[test]
    fn account_sas_has_the_documented_fields() {
        let sas = account_sas(
            DEV_ACCOUNT,
            DEV_KEY,
            "rwdlac",
            "2030-01-01T00:00:00Z",
            "2021-08-06",
        )
        .unwrap();
        assert!(sas.starts_with("sv=2021-08-06&ss=b&srt=sco&sp=rwdlac&se=2030-01-01T00%3A00%3A00Z&spr=https%2Chttp&sig="));
        let key = hmac_key(DEV_KEY).unwrap();
        let expected = sign(
            &key,
            "devstoreaccount1\nrwdlac\nb\nsco\n\n2030-01-01T00:00:00Z\n\nhttps,http\n2021-08-06\n\n",
        );
        assert!(sas.ends_with(&encode_query_value(&expected)));
    }
}
