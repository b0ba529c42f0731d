//! The real binary against the emulator over HTTPS with a private CA, directly and
//! through a forward proxy: every certificate failure gives its clear message, the CA
//! is trusted only through SSL_CERT_FILE / SP_TLS_CA_FILE, the proxy carries the whole
//! sync (counted CONNECTs), NO_PROXY bypasses it, its password never shows.
//!
//! Certificates are made at test time by the `openssl` command into a temp folder.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::thread;

use crate::common::harness::*;
use crate::common::pki::Pki;
use spinoco_connector::{Emulator, EmulatorConfig, EmulatorTls};

const PROXY_USER: &str = "edge";
const PROXY_PASSWORD: &str = "pr0xy-pa55word-xyz";
/// What a client must send the proxy: Basic with base64 of `edge:pr0xy-pa55word-xyz`.
const PROXY_AUTHORIZATION: &str = "Basic ZWRnZTpwcjB4eS1wYTU1d29yZC14eXo=";

fn https_emulator(tls: EmulatorTls) -> Emulator {
    emulator(EmulatorConfig {
        tasks: 25,
        seed: 23,
        recording_size: (2_000, 40_000),
        tls: Some(tls),
        ..Default::default()
    })
}

/// A forward proxy speaking CONNECT that asks for a `Proxy-Authorization` when given
/// one; it records the target of every CONNECT it accepted and counts the ones it
/// refused.
struct Proxy {
    port: u16,
    tunnels: Arc<Mutex<Vec<String>>>,
    refused: Arc<Mutex<u32>>,
}

impl Proxy {
    fn start(authorization: Option<&str>) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let expected = authorization.map(str::to_string);
        let tunnels: Arc<Mutex<Vec<String>>> = Arc::default();
        let refused: Arc<Mutex<u32>> = Arc::default();
        let (t, r) = (tunnels.clone(), refused.clone());
        thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let (expected, t, r) = (expected.clone(), t.clone(), r.clone());
                thread::spawn(move || tunnel(client, expected, &t, &r));
            }
        });
        Proxy {
            port,
            tunnels,
            refused,
        }
    }

    fn url(&self, credentials: Option<(&str, &str)>) -> String {
        match credentials {
            Some((u, p)) => format!("http://{u}:{p}@127.0.0.1:{}", self.port),
            None => format!("http://127.0.0.1:{}", self.port),
        }
    }

    fn tunnels(&self) -> Vec<String> {
        self.tunnels.lock().unwrap().clone()
    }
}

fn tunnel(
    client: TcpStream,
    expected_auth: Option<String>,
    tunnels: &Mutex<Vec<String>>,
    refused: &Mutex<u32>,
) {
    let mut reader = BufReader::new(client.try_clone().unwrap());
    let mut head = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        if line == "\r\n" {
            break;
        }
        head.push(line.trim_end().to_string());
    }
    let mut client_w = client;
    let parts: Vec<&str> = head[0].split(' ').collect();
    if parts.len() != 3 || parts[0] != "CONNECT" {
        let _ = client_w.write_all(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n");
        return;
    }
    let auth = head.iter().find_map(|h| {
        let (n, v) = h.split_once(':')?;
        n.eq_ignore_ascii_case("proxy-authorization")
            .then(|| v.trim().to_string())
    });
    if expected_auth.is_some() && auth != expected_auth {
        *refused.lock().unwrap() += 1;
        let _ = client_w.write_all(
            b"HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm=\"test\"\r\nContent-Length: 0\r\n\r\n",
        );
        return;
    }
    let Ok(upstream) = TcpStream::connect(parts[1]) else {
        let _ = client_w.write_all(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n");
        return;
    };
    tunnels.lock().unwrap().push(parts[1].to_string());
    client_w
        .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
        .unwrap();
    // Bytes the reader already buffered belong to the tunnel (none with a TLS client,
    // which waits for the 200, but forward them anyway).
    let buffered = reader.buffer().to_vec();
    let mut up_w = upstream.try_clone().unwrap();
    let _ = up_w.write_all(&buffered);
    let mut up_r = upstream;
    let mut down_w = client_w.try_clone().unwrap();
    let pump = thread::spawn(move || {
        let _ = std::io::copy(&mut up_r, &mut down_w);
        let _ = down_w.shutdown(Shutdown::Both);
    });
    let mut client_r = reader.into_inner();
    let _ = std::io::copy(&mut client_r, &mut up_w);
    let _ = up_w.shutdown(Shutdown::Both);
    let _ = pump.join();
}

fn tls_env(emu: &Emulator, dir: &Path) -> BTreeMap<String, String> {
    let mut e = env(emu, dir);
    assert!(emu.url().starts_with("https://"), "{}", emu.url());
    e.insert("SP_LOG_LEVEL".into(), "trace".into());
    e
}

/// Without the CA the run stops at once naming the unknown issuer, not retried; with it
/// in `SSL_CERT_FILE` a full sync, and `check` says which bundle verified with
/// `SP_TLS_CA_FILE`.
#[test]
fn the_private_ca_is_trusted_only_through_the_configured_bundle() {
    let Some(pki) = Pki::new("ca") else {
        return;
    };
    let emu = https_emulator(pki.server("server", "DNS:localhost,IP:127.0.0.1", 30));

    // Without the CA: the run stops at once, naming the host and the unknown issuer.
    let dir = scratch("tls-unknown");
    let out = run(&tls_env(&emu, &dir), &["--once"]);
    let log = text(&out);
    assert_eq!(out.status.code(), Some(1), "{log}");
    assert!(log.contains("127.0.0.1"), "{log}");
    assert!(log.contains("issuer is unknown"), "{log}");
    assert!(
        !log.contains("; retrying in"),
        "a refused certificate is not retried: {log}"
    );
    assert!(files_in(&dir).is_empty());
    let out = run(&tls_env(&emu, &dir), &["check", "--connect"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("issuer is unknown"), "{}", text(&out));

    // With it in SSL_CERT_FILE: a full sync, every byte verified.
    let dir = scratch("tls-ok");
    let mut e = tls_env(&emu, &dir);
    e.insert("SSL_CERT_FILE".into(), pki.ca().display().to_string());
    guard_deletes(&emu, &dir);
    let out = run(&e, &["--once"]);
    assert!(out.status.success(), "{}", text(&out));
    verify_complete(&emu, &dir);

    // SP_TLS_CA_FILE works the same, and check says which CA verified and how.
    let mut e = tls_env(&emu, &dir);
    e.insert("SP_TLS_CA_FILE".into(), pki.ca().display().to_string());
    let out = run(&e, &["check", "--connect"]);
    let shown = text(&out);
    assert!(out.status.success(), "{shown}");
    assert!(
        shown.contains("direct, TLS verified by the extra CA bundle (SP_TLS_CA_FILE="),
        "{shown}"
    );
}

/// A certificate for another name and an expired one are refused with their reasons;
/// the same certificate reached by its own name is accepted.
#[test]
fn wrong_names_and_expired_certificates_are_refused() {
    let Some(pki) = Pki::new("bad") else {
        return;
    };
    let e_for = |emu: &Emulator, name: &str| {
        let dir = scratch(name);
        let mut e = tls_env(emu, &dir);
        e.insert("SSL_CERT_FILE".into(), pki.ca().display().to_string());
        e
    };

    // A valid certificate for localhost only, reached as 127.0.0.1.
    let emu = https_emulator(pki.server("localhost-only", "DNS:localhost", 30));
    let out = run(&e_for(&emu, "tls-name"), &["--once"]);
    let log = text(&out);
    assert_eq!(out.status.code(), Some(1), "{log}");
    assert!(log.contains("127.0.0.1"), "{log}");
    assert!(log.contains("wrong name"), "{log}");
    assert!(log.contains("localhost"), "{log}");

    // The same certificate reached as localhost: accepted.
    let mut e = e_for(&emu, "tls-name-ok");
    e.insert(
        "SP_API_URL".into(),
        format!("https://localhost:{}", emu.port()),
    );
    let out = run(&e, &["check", "--connect"]);
    assert!(out.status.success(), "{}", text(&out));

    // An expired one.
    let emu = https_emulator(pki.server("expired", "DNS:localhost,IP:127.0.0.1", -1));
    let out = run(&e_for(&emu, "tls-expired"), &["--once"]);
    let log = text(&out);
    assert_eq!(out.status.code(), Some(1), "{log}");
    assert!(log.contains("expired"), "{log}");
}

/// A full sync goes through the CONNECT proxy with Basic credentials, `NO_PROXY`
/// bypasses it, and a wrong password is refused (407); the password is never shown.
#[test]
fn a_full_sync_goes_through_an_authenticating_proxy_and_no_proxy_bypasses_it() {
    let Some(pki) = Pki::new("proxy") else {
        return;
    };
    let emu = https_emulator(pki.server("server", "DNS:localhost,IP:127.0.0.1", 30));
    let creds = Some((PROXY_USER, PROXY_PASSWORD));
    let proxy = Proxy::start(Some(PROXY_AUTHORIZATION));

    let dir = scratch("tls-proxy");
    let mut e = tls_env(&emu, &dir);
    e.insert("SSL_CERT_FILE".into(), pki.ca().display().to_string());
    e.insert("HTTPS_PROXY".into(), proxy.url(creds));
    guard_deletes(&emu, &dir);
    let out = run(&e, &["--once"]);
    let log = text(&out);
    assert!(out.status.success(), "{log}");
    verify_complete(&emu, &dir);
    let tunnels = proxy.tunnels();
    assert!(!tunnels.is_empty(), "nothing went through the proxy");
    let target = format!("127.0.0.1:{}", emu.port());
    assert!(tunnels.iter().all(|t| *t == target), "{tunnels:?}");
    assert_eq!(*proxy.refused.lock().unwrap(), 0);
    assert!(
        !log.contains(PROXY_PASSWORD),
        "the proxy password leaked: {log}"
    );

    let out = run(&e, &["check", "--connect"]);
    let shown = text(&out);
    assert!(out.status.success(), "{shown}");
    assert!(!shown.contains(PROXY_PASSWORD), "{shown}");
    assert!(
        shown.contains(&format!(
            "through proxy http://{PROXY_USER}:***@127.0.0.1:{}, TLS verified by the extra CA bundle (SSL_CERT_FILE=",
            proxy.port
        )),
        "{shown}"
    );

    // NO_PROXY names the platform: straight there, the proxy sees nothing.
    let before = proxy.tunnels().len();
    let dir = scratch("tls-noproxy");
    let mut e2 = e.clone();
    e2.insert("SP_TASK_SYNC_SAVE_TO".into(), dir.display().to_string());
    e2.insert("SP_TASK_SYNC_TAG".into(), "noproxy".into());
    e2.insert("NO_PROXY".into(), "localhost,127.0.0.1".into());
    let out = run(&e2, &["check", "--connect"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("direct, TLS verified"),
        "{}",
        text(&out)
    );
    assert_eq!(proxy.tunnels().len(), before, "NO_PROXY was not honoured");

    // A wrong proxy password: refused by the proxy, said so, the password unshown.
    let wrong = "not-the-pa55word";
    let mut e3 = e.clone();
    e3.insert("HTTPS_PROXY".into(), proxy.url(Some((PROXY_USER, wrong))));
    let out = run(&e3, &["check", "--connect"]);
    let shown = text(&out);
    assert_eq!(out.status.code(), Some(1), "{shown}");
    assert!(shown.contains("407"), "{shown}");
    assert!(!shown.contains(wrong), "{shown}");
    assert!(*proxy.refused.lock().unwrap() > 0);
}

type Case = (&'static str, Vec<(&'static str, String)>, &'static str);

/// A storage endpoint whose certificate does not verify stops the run (exit 5) with a
/// clear message, on every provider: retrying cannot make it verify. S3 goes through
/// rust-s3's own transport, where this once was a panic over the choice of crypto
/// provider.
#[test]
fn storage_over_https_with_an_untrusted_certificate_stops_cleanly() {
    let Some(pki) = Pki::new("storageca") else {
        return;
    };
    let storage = https_emulator(pki.server("server", "DNS:localhost,IP:127.0.0.1", 30));
    let platform = emulator(EmulatorConfig {
        tasks: 2,
        seed: 5,
        ..Default::default()
    });
    let key =
        "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
    // (provider, its variables, what the error must say)
    let providers: [Case; 3] = [
        (
            "s3",
            vec![
                ("SP_TASK_SYNC_S3_BUCKET", "bucket".into()),
                ("SP_TASK_SYNC_S3_REGION", "us-east-1".into()),
                ("SP_TASK_SYNC_S3_ENDPOINT", storage.url()),
                ("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE".into()),
                ("AWS_SECRET_ACCESS_KEY", "secret-example-value".into()),
            ],
            // S3 goes through the shared agent now: the same words as the others.
            "issuer is unknown",
        ),
        (
            "gcs",
            vec![
                ("SP_TASK_SYNC_GCS_BUCKET", "bucket".into()),
                ("SP_TASK_SYNC_GCS_PROJECT", "project".into()),
                ("SP_TASK_SYNC_GCS_ENDPOINT", storage.url()),
            ],
            "issuer is unknown",
        ),
        (
            "azure",
            vec![
                (
                    "SP_TASK_SYNC_AZURE_DSN",
                    format!("AccountName=devstoreaccount1;AccountKey={key};BlobEndpoint={}/devstoreaccount1", storage.url()),
                ),
                ("SP_TASK_SYNC_AZURE_CLIENT_NAME", "container".into()),
            ],
            "issuer is unknown",
        ),
    ];
    for (provider, vars, said) in providers {
        let dir = scratch(&format!("{provider}-https"));
        let mut e = env(&platform, &dir);
        e.insert("SP_TASK_SYNC_STORAGE_PROVIDER".into(), provider.into());
        for (k, v) in vars {
            e.insert(k.into(), v);
        }
        let out = run(&e, &["--once"]);
        let log = text(&out);
        assert!(!log.contains("panicked"), "{provider}: {log}");
        assert_eq!(
            out.status.code(),
            Some(5),
            "{provider}: a refused certificate stops the run: {log}"
        );
        assert!(log.contains(said), "{provider}: {log}");
        assert!(
            !log.contains("; retrying in"),
            "{provider}: a refused certificate is not retried: {log}"
        );
        assert!(
            !log.contains("secret-example-value") && !log.contains(key),
            "{provider}: {log}"
        );
    }
    assert!(platform.deletes().is_empty());
}

/// A TLS-terminating front for a plain-HTTP test server (s3s-fs), with a certificate
/// of the test's private CA. One thread per connection, polling both sides.
fn tls_front(tls: &EmulatorTls, upstream: String) -> u16 {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use std::io::Read;
    use std::time::Duration;
    let chain = CertificateDer::pem_slice_iter(&tls.cert_chain_pem)
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(&tls.key_pem).unwrap();
    let config = Arc::new(
        rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap(),
    );
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    thread::spawn(move || {
        for client in listener.incoming().flatten() {
            let (config, upstream) = (config.clone(), upstream.clone());
            thread::spawn(move || {
                let tick = Some(Duration::from_millis(5));
                client.set_read_timeout(tick).unwrap();
                let Ok(mut server) = TcpStream::connect(&upstream) else {
                    return;
                };
                server.set_read_timeout(tick).unwrap();
                let conn = rustls::ServerConnection::new(config).unwrap();
                let mut tls = rustls::StreamOwned::new(conn, client);
                let mut buf = vec![0u8; 64 * 1024];
                let timed_out = |e: &std::io::Error| {
                    matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    )
                };
                loop {
                    match tls.read(&mut buf) {
                        Ok(0) => return,
                        Ok(n) => {
                            if server.write_all(&buf[..n]).is_err() {
                                return;
                            }
                        }
                        Err(e) if timed_out(&e) => {}
                        Err(_) => return,
                    }
                    match server.read(&mut buf) {
                        Ok(0) => return,
                        Ok(n) => {
                            if tls.write_all(&buf[..n]).and_then(|_| tls.flush()).is_err() {
                                return;
                            }
                        }
                        Err(e) if timed_out(&e) => {}
                        Err(_) => return,
                    }
                }
            });
        }
    });
    port
}

/// S3 over HTTPS with a private CA that only SP_TLS_CA_FILE names syncs fully; without
/// the CA the certificate error names the host and the reason; through the CONNECT
/// proxy with HTTPS_PROXY the S3 traffic is tunnelled, and NO_PROXY bypasses it, as for
/// the platform and the other providers.
#[test]
fn s3_over_https_with_a_private_ca_and_through_the_proxy() {
    use crate::common::providers::{endpoint, target, verify, with_endpoint, Provider};
    let Some(direct) = target(Provider::S3, "s3-tls") else {
        return;
    };
    let Some(pki) = Pki::new("s3") else {
        return;
    };
    let upstream = endpoint(&direct).unwrap();
    let front = tls_front(
        &pki.server("s3", "DNS:localhost,IP:127.0.0.1", 30),
        upstream.trim_start_matches("http://").to_string(),
    );
    let https = with_endpoint(&direct, &format!("https://127.0.0.1:{front}"));
    let platform = emulator(EmulatorConfig {
        tasks: 6,
        seed: 77,
        recording_size: (2_000, 40_000),
        ..Default::default()
    });
    crate::common::providers::guard_via_store(&platform, &direct);
    let mut e = env(&platform, &scratch("unused"));
    e.extend(https.clone());

    let out = run(&e, &["--once"]);
    let log = text(&out);
    assert_eq!(out.status.code(), Some(5), "{log}");
    assert!(
        log.contains(&format!("TLS certificate of 127.0.0.1:{front} refused"))
            && log.contains("issuer is unknown"),
        "{log}"
    );

    e.insert("SP_TLS_CA_FILE".into(), pki.ca().display().to_string());
    let proxy = Proxy::start(None);
    e.insert("HTTPS_PROXY".into(), proxy.url(None));
    let out = run(&e, &["--once"]);
    let log = text(&out);
    assert!(out.status.success(), "{log}");
    verify(&platform, &direct, &std::collections::BTreeSet::new());
    let tunnels = proxy.tunnels();
    assert!(!tunnels.is_empty(), "S3 did not go through the proxy");
    assert!(
        tunnels.iter().all(|t| *t == format!("127.0.0.1:{front}")),
        "{tunnels:?}"
    );

    // NO_PROXY names the S3 host: a second run goes straight there.
    let before = proxy.tunnels().len();
    e.insert("NO_PROXY".into(), "127.0.0.1".into());
    e.insert("SP_TASK_SYNC_TAG".into(), "noproxy".into());
    let out = run(&e, &["--once"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(proxy.tunnels().len(), before, "NO_PROXY was not honoured");
}
