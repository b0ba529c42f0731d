//! What reaches the log is what it seems: error pages that echo the request (the
//! `Authorization` header, an S3 session token, an Azure SAS signature) leave no secret
//! in it, platform strings with newlines, terminal escapes or bidi overrides show
//! escaped, names that only look like others are refused, and plain HTTP towards
//! another machine is called out.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Output;
use std::time::Duration;

use serde_json::json;

use crate::common::fake_http::{FakeServer, Request};
use crate::common::harness::{env_for_url, files_in, run, scratch, spawn, wait_until, TOKEN};
use crate::common::hostile::{DownloadMode, FeedMode, HostilePlatform};

const FORMATS: [&str; 2] = ["text", "json"];

/// `--once` against `platform` into a fresh folder, in log format `format`, with a
/// short retry budget (the echoing answers are transient ones).
fn once(platform: &HostilePlatform, name: &str, format: &str) -> Output {
    let mut env = env_for_url(&platform.url, &scratch(name));
    env.insert("SP_LOG_FORMAT".into(), format.into());
    env.insert("SP_TASK_SYNC_RETRY_TIMEOUT".into(), "2s".into());
    run(&env, &["--once"])
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Fails when the API token, or `Bearer` with anything but the mask after it, is in
/// `log`; and checks that the echo did reach the log, masked (else the test proves
/// nothing).
fn assert_token_masked(log: &str, format: &str) {
    assert!(
        !log.contains(TOKEN),
        "{format}: the token is in the log:\n{log}"
    );
    for (at, _) in log.match_indices("Bearer ") {
        assert!(
            log[at..].starts_with("Bearer ***"),
            "{format}: an unmasked Bearer value:\n{log}"
        );
    }
    assert!(
        log.contains("authorization: Bearer ***"),
        "{format}: the echoed header is not in the log:\n{log}"
    );
}

fn assert_json_lines(log: &str) {
    for line in log.lines() {
        assert!(
            serde_json::from_str::<serde_json::Value>(line).is_ok(),
            "not a JSON line: {line}"
        );
    }
}

#[test]
fn a_feed_error_page_echoing_the_token_leaves_no_secret_in_the_log() {
    for format in FORMATS {
        let platform = HostilePlatform::start();
        platform.set_feed_mode(FeedMode::EchoHeaders(503));
        let out = once(&platform, "echo-feed", format);
        let log = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{log}");
        assert_token_masked(&log, format);
        assert!(
            !log.contains("in clear text"),
            "plain HTTP to loopback is not warned about:\n{log}"
        );
        if format == "json" {
            assert_json_lines(&log);
        }
    }
}

#[test]
fn a_download_error_page_echoing_the_token_leaves_no_secret_in_the_log() {
    for format in FORMATS {
        let platform = HostilePlatform::start();
        // A short path, so that the echoed header comes early in the error page.
        let recording = "/r/c1".to_string();
        let task = json!({
            "taskId": "c1",
            "get": [{"dataType": "Recordings", "recordingId": "r1", "path": recording, "fileName": "c1.ogg"}],
            "delete": [{"path": "/recording/c1/r1"}]
        });
        platform.add_task(task, vec![(recording.clone(), b"OggS".to_vec())]);
        platform.set_download_mode(&recording, DownloadMode::EchoHeaders(400));
        let out = once(&platform, "echo-download", format);
        let log = stderr(&out);
        assert_token_masked(&log, format);
        assert!(
            platform.deletes().is_empty(),
            "nothing deleted of a task with a refused file"
        );
        if format == "json" {
            assert_json_lines(&log);
        }
    }
}

/// A storage's error document (S3 and Azure XML, GCS JSON) whose message repeats the
/// request: its line, so a SAS in the query, and its headers, credentials first (so
/// that they come before any cut of a long message).
fn echoing_storage(json_errors: bool) -> FakeServer {
    FakeServer::start(Box::new(move |r: &Request| {
        let mut said = format!("Request blocked: {} {} with ", r.method, r.target);
        let mut headers = r.headers.clone();
        headers.sort_by_key(|(name, _)| {
            !["authorization", "x-amz-security-token"].contains(&name.to_ascii_lowercase().as_str())
        });
        for (name, value) in &headers {
            said.push_str(&format!("{}: {value}; ", name.to_ascii_lowercase()));
        }
        let body = if json_errors {
            json!({"error": {"code": 403, "message": said, "errors": [{"reason": "forbidden"}]}})
                .to_string()
        } else {
            let said = said.replace('&', "&amp;");
            format!("<?xml version=\"1.0\"?><Error><Code>AccessDenied</Code><Message>{said}</Message></Error>")
        };
        (403, body)
    }))
}

/// A provider's variables, the secrets it holds, and how the echoed one shows masked.
struct StorageCase {
    provider: &'static str,
    vars: Vec<(&'static str, String)>,
    secrets: &'static [&'static str],
    masked: &'static str,
}

#[test]
fn a_storage_error_page_echoing_credentials_leaves_no_secret_in_the_log() {
    const SESSION: &str = "FwoGZXIvYXdzEBYaDSessionTokenSecret0123";
    const SIG: &str = "c2FzU2lnbmF0dXJlU2VjcmV0%2Bx%3D";
    const GOOGLE: &str = "ya29.a0AfB_byGoogleAccessTokenSecret";
    let platform = HostilePlatform::start();
    let s3 = echoing_storage(false);
    let azure = echoing_storage(false);
    let gcs = echoing_storage(true);
    let gcs_token = FakeServer::start(Box::new(|_: &Request| {
        (
            200,
            json!({"access_token": GOOGLE, "expires_in": 3600}).to_string(),
        )
    }));
    let gcs_credentials = scratch("echo-storage-gcs").join("authorized_user.json");
    let file = json!({
        "type": "authorized_user",
        "client_id": "connector",
        "client_secret": "client-secret-of-the-test",
        "refresh_token": "refresh-token-of-the-test",
        "token_uri": format!("{}/token", gcs_token.url),
    });
    std::fs::write(&gcs_credentials, file.to_string()).unwrap();
    let cases: [StorageCase; 3] = [
        StorageCase {
            provider: "s3",
            vars: vec![
                ("SP_TASK_SYNC_S3_ENDPOINT", s3.url.clone()),
                ("SP_TASK_SYNC_S3_BUCKET", "calls".into()),
                ("SP_TASK_SYNC_S3_REGION", "us-east-1".into()),
                ("AWS_ACCESS_KEY_ID", "ASIAEXAMPLEKEYID".into()),
                ("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI/K7MDENG/SecretKey".into()),
                ("AWS_SESSION_TOKEN", SESSION.into()),
            ],
            secrets: &[SESSION, "ASIAEXAMPLEKEYID"],
            masked: "x-amz-security-token: ***",
        },
        StorageCase {
            provider: "azure",
            vars: vec![
                (
                    "SP_TASK_SYNC_AZURE_DSN",
                    format!(
                        "BlobEndpoint={}/acct;SharedAccessSignature=sv=2021-08-06&ss=b&srt=co&sp=rwdlac&se=2099-01-01T00:00:00Z&sig={SIG}",
                        azure.url
                    ),
                ),
                ("SP_TASK_SYNC_AZURE_CLIENT_NAME", "calls".into()),
            ],
            secrets: &[SIG, "c2FzU2lnbmF0dXJlU2VjcmV0"],
            masked: "&amp;sig=***",
        },
        StorageCase {
            provider: "gcs",
            vars: vec![
                ("SP_TASK_SYNC_GCS_ENDPOINT", gcs.url.clone()),
                ("SP_TASK_SYNC_GCS_BUCKET", "calls".into()),
                ("SP_TASK_SYNC_GCS_PROJECT", "test-project".into()),
                ("GOOGLE_APPLICATION_CREDENTIALS", gcs_credentials.display().to_string()),
            ],
            secrets: &[GOOGLE],
            masked: "authorization: Bearer ***",
        },
    ];
    for StorageCase {
        provider,
        vars,
        secrets,
        masked,
    } in cases
    {
        for format in FORMATS {
            let mut env = env_for_url(&platform.url, &scratch("echo-storage"));
            env.insert("SP_TASK_SYNC_STORAGE_PROVIDER".into(), provider.into());
            env.insert("SP_TASK_SYNC_SAVE_TO".into(), "prefix".into());
            env.insert("SP_LOG_FORMAT".into(), format.into());
            env.insert("SP_TASK_SYNC_RETRY_TIMEOUT".into(), "2s".into());
            env.extend(vars.iter().map(|(k, v)| (k.to_string(), v.clone())));
            let out = run(&env, &["--once"]);
            let log = stderr(&out);
            assert_eq!(out.status.code(), Some(5), "{provider} {format}: {log}");
            for secret in secrets {
                assert!(
                    !log.contains(secret),
                    "{provider} {format}: {secret} is in the log:\n{log}"
                );
            }
            assert!(
                log.contains(masked),
                "{provider} {format}: the echoed credential is not in the log, masked:\n{log}"
            );
        }
    }
}

const FORGED: &str = "2026-01-01T00:00:00.000Z ERROR [spinoco_connector::sync] forged";

#[test]
fn a_task_id_with_a_forged_line_a_terminal_escape_and_a_bidi_override_shows_escaped() {
    let id = format!("c0ffee02\n{FORGED}\x1b[31m\u{202e}gpj.exe");
    for format in FORMATS {
        let platform = HostilePlatform::start();
        let meta = "/task/c0ffee02/meta".to_string();
        // The recording is missing (404): its warning names the task.
        let task = json!({
            "taskId": id,
            "dueDate": 1_101_902_400_000i64,
            "get": [
                {"dataType": "CallMetadata", "path": meta, "fileName": "x.meta.json"},
                {"dataType": "Recordings", "recordingId": "r1", "path": "/recording-direct/c0ffee02/r1", "fileName": "x.ogg"}
            ],
            "delete": [{"path": "/recording/c0ffee02/r1"}]
        });
        platform.add_task(task, vec![(meta, b"{}".to_vec())]);
        let dir = scratch("forged-id");
        let mut env = env_for_url(&platform.url, &dir);
        env.insert("SP_LOG_FORMAT".into(), format.into());
        let out = run(&env, &["--once"]);
        let log = stderr(&out);
        for raw in ['\x1b', '\u{202e}'] {
            assert!(
                !log.contains(raw),
                "{format}: raw {raw:?} in the log:\n{log}"
            );
        }
        assert!(
            !log.lines().any(|l| l.starts_with(FORGED)),
            "{format}: a forged line:\n{log}"
        );
        let escaped = format!("c0ffee02\\n{FORGED}\\u{{1b}}[31m\\u{{202e}}gpj.exe");
        let shown = match format {
            "json" => {
                assert_json_lines(&log);
                log.lines()
                    .map(|l| {
                        serde_json::from_str::<serde_json::Value>(l).unwrap()["msg"].to_string()
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
                    // The JSON string's own escaping of the backslash.
                    .replace("\\\\", "\\")
            }
            _ => log.clone(),
        };
        assert!(
            shown.contains(&escaped),
            "{format}: the task id is not shown escaped:\n{log}"
        );
        assert!(platform.deletes().is_empty(), "{:?}", platform.deletes());
        let stored = files_in(&dir);
        assert!(
            stored
                .iter()
                .all(|name| !name.contains(['\n', '\x1b', '\u{202e}'])),
            "{stored:?}"
        );
    }
}

/// A task without `dueDate` (the platform's `fileName` is used) with one recording.
fn named_task(id: &str, file_name: &str) -> (serde_json::Value, Vec<(String, Vec<u8>)>) {
    let rec = format!("/recording-direct/{id}/r1");
    let task = json!({
        "taskId": id,
        "get": [{"dataType": "Recordings", "recordingId": "r1", "path": rec, "fileName": file_name}],
        "delete": [{"path": format!("/recording/{id}/r1")}]
    });
    (task, vec![(rec, b"OggS-recording".to_vec())])
}

#[test]
fn names_that_look_like_others_or_reach_the_journal_folder_are_refused() {
    let platform = HostilePlatform::start();
    let hostile = [
        ("c0ffee10", "calls/invoice\u{202e}ggo.exe.ogg", "invisible"),
        ("c0ffee11", "calls/a\u{200b}b.ogg", "invisible"),
        (
            "c0ffee12",
            ".SPINOCO-CONNECTOR/x.page.json",
            "connector's own",
        ),
        ("c0ffee13", "a/.Spinoco-Connector/tmp/x", "connector's own"),
    ];
    for (id, name, _) in hostile {
        let (task, contents) = named_task(id, name);
        platform.add_task(task, contents);
    }
    let (good, contents) = named_task("c0ffee19", "calls/good.ogg");
    platform.add_task(good, contents);
    let dir = scratch("lookalike-names");
    let out = run(&env_for_url(&platform.url, &dir), &["--once"]);
    let log = stderr(&out);
    assert_eq!(
        files_in(&dir),
        BTreeSet::from(["calls/good.ogg".to_string()]),
        "{log}"
    );
    assert_eq!(
        platform.deletes(),
        ["/recording/c0ffee19/r1"],
        "only the stored task is deleted:\n{log}"
    );
    for (id, _, why) in hostile {
        let line = log
            .lines()
            .find(|l| l.contains(id))
            .unwrap_or_else(|| panic!("{id} is not reported:\n{log}"));
        assert!(line.contains(why), "{line}");
        assert!(
            platform.downloads_of(&format!("/recording-direct/{id}/r1")) == 0,
            "{id} was downloaded"
        );
    }
    let own: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.eq_ignore_ascii_case(".spinoco-connector") && n != ".spinoco-connector")
        .collect();
    assert!(own.is_empty(), "{own:?}");
}

fn check_env(url: &str) -> BTreeMap<String, String> {
    let mut env = env_for_url(url, &scratch("clear-text"));
    env.insert("SP_API_SECURE".into(), "false".into());
    env
}

#[test]
fn plain_http_towards_another_machine_is_warned_about_and_loopback_is_not() {
    let out = run(&check_env("example.com"), &["check"]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{said}");
    assert!(
        said.lines().any(|l| l.starts_with("warning: ")
            && l.contains("example.com")
            && l.contains("in clear text")),
        "{said}"
    );
    for quiet in ["127.0.0.1", "localhost", "[::1]"] {
        let out = run(&check_env(quiet), &["check"]);
        let said = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "{said}");
        assert!(!said.contains("warning"), "{quiet}: {said}");
    }
    // The service says it at start too (TEST-NET-1: nothing answers there).
    let dir = scratch("clear-text-service");
    let log = dir.join("connector.log");
    let mut service = spawn(&check_env("192.0.2.1:9"), &[], &log);
    let read = || std::fs::read_to_string(&log).unwrap_or_default();
    wait_until("the clear-text warning", Duration::from_secs(20), || {
        read().contains("in clear text")
    });
    service.kill().unwrap();
    service.wait().unwrap();
    let line = read()
        .lines()
        .find(|l| l.contains("in clear text"))
        .unwrap()
        .to_string();
    assert!(
        line.contains(" WARN ") && line.contains("192.0.2.1"),
        "{line}"
    );
}
