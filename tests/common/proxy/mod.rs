//! A TCP proxy between the connector and a storage test server, which a test can
//! switch to "the server is down" (every connection refused and the open ones cut)
//! or "the server refuses us" (403 to every request) and back. fake-gcs-server and
//! Azurite keep their data in memory, so really restarting them would lose it.
//!
//! Both proxies pass answers on one at a time and rewrite a `Location` on the server's
//! origin to their own, as a reverse proxy does (nginx's `proxy_redirect`): GCS names
//! its resumable upload sessions that way, and the connector sends its credentials
//! only to the origin it was configured with. (fake-gcs-server names the session on
//! the origin of the request's `Host`, the proxy's, already; a server with a fixed
//! external URL names its own.)

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::mpsc::channel;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

mod wire;

use wire::{answer_pipe, forward_requests, inspect_pipe, Counters, PASS};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Mode {
    /// Bytes pass both ways.
    Pass = 0,
    /// Every new connection is closed at once and the open ones are cut.
    Down = 1,
    /// Every request gets `403 Forbidden`.
    Forbid = 2,
    /// Writes (PUT, and POST and DELETE: GCS uploads are POSTs) get `403 Forbidden`
    /// (S3 `AccessDenied`), reads pass: a credential that may read but not write.
    /// Needs [`TcpProxy::start_inspecting`].
    ForbidPut = 3,
    /// Every request gets S3's `404 NoSuchBucket` (s3s-fs creates a missing bucket
    /// instead of saying so).
    NoSuchBucket = 4,
}

pub struct TcpProxy {
    port: u16,
    mode: Arc<AtomicU8>,
    open: Arc<Mutex<Vec<TcpStream>>>,
    stop: Arc<AtomicBool>,
    /// Connections refused or cut while down, and requests answered 403.
    pub refused: Arc<AtomicUsize>,
    /// Connections accepted and forwarded (keep-alive shows as few of them).
    pub accepted: Arc<AtomicUsize>,
    /// Request bodies with one byte flipped ([`TcpProxy::corrupt_next_body`]).
    pub corrupted: Arc<AtomicUsize>,
    /// Connections cut by a rule ([`TcpProxy::cut_after`], [`TcpProxy::cut_body_after`]).
    pub cut: Arc<AtomicUsize>,
    rules: Arc<Rules>,
    locations: Arc<Locations>,
}

/// How answers' `Location` headers are rewritten.
struct Locations {
    /// `http://host:port` of the server and of the proxy.
    from: [String; 2],
    /// What those origins become: the proxy's own by default.
    to: Mutex<String>,
}

impl Locations {
    fn new(upstream: &str, own: String) -> Arc<Locations> {
        Arc::new(Locations {
            from: [format!("http://{upstream}"), own.clone()],
            to: Mutex::new(own),
        })
    }

    fn rewrite(&self, value: &str) -> String {
        for origin in &self.from {
            match value.strip_prefix(origin.as_str()) {
                Some(rest) if rest.is_empty() || rest.starts_with(['/', '?']) => {
                    return format!("{}{rest}", self.to.lock().unwrap())
                }
                _ => {}
            }
        }
        value.to_string()
    }
}

/// What an inspecting proxy does to requests (see [`TcpProxy::start_inspecting`]).
#[derive(Default)]
struct Rules {
    inspect: bool,
    /// Flip one byte in the middle of the next request body at least this long.
    corrupt_min: Mutex<Option<usize>>,
    /// Forward the next request whose line starts with the method and contains the
    /// text, then cut the connection without its answer.
    cut_after: Mutex<Option<(String, String)>>,
    /// Request body bytes still to forward before the connection is cut mid-body.
    cut_body_after: Mutex<Option<u64>>,
}

impl TcpProxy {
    /// Listens on a free port of 127.0.0.1 and forwards to `upstream` (`host:port`).
    pub fn start(upstream: &str) -> TcpProxy {
        Self::start_with(upstream, false)
    }

    /// Like [`TcpProxy::start`], but reads each request (head and `Content-Length`
    /// body) on its way to the server, so that it can answer PUTs with 403
    /// ([`Mode::ForbidPut`]), flip a byte of a body, or cut a connection after a
    /// given request was forwarded.
    pub fn start_inspecting(upstream: &str) -> TcpProxy {
        Self::start_with(upstream, true)
    }

    /// Flips one byte in the middle of the next request body of at least `min_len`
    /// bytes (once).
    pub fn corrupt_next_body(&self, min_len: usize) {
        assert!(self.rules.inspect, "start_inspecting is needed");
        *self.rules.corrupt_min.lock().unwrap() = Some(min_len);
    }

    /// Forwards the next request whose request line starts with `method` and contains
    /// `text`, lets the server handle it, and cuts the connection before its answer
    /// reaches the client (once): an answer lost in flight.
    pub fn cut_after(&self, method: &str, text: &str) {
        assert!(self.rules.inspect, "start_inspecting is needed");
        *self.rules.cut_after.lock().unwrap() = Some((method.to_string(), text.to_string()));
    }

    /// Cuts the connection once in the middle of a request body, when `bytes` bytes of
    /// request bodies (of every connection, from now on) have gone to the server: a
    /// network that drops an upload half-way.
    pub fn cut_body_after(&self, bytes: u64) {
        assert!(self.rules.inspect, "start_inspecting is needed");
        *self.rules.cut_body_after.lock().unwrap() = Some(bytes);
    }

    /// Rewrites a `Location` on the server's or the proxy's origin to `origin`
    /// (`http://host:port`) instead of the proxy's own: a server (or a front end)
    /// naming a place on another origin.
    pub fn set_location_origin(&self, origin: &str) {
        *self.locations.to.lock().unwrap() = origin.to_string();
    }

    fn start_with(upstream: &str, inspect: bool) -> TcpProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let proxy = TcpProxy {
            port,
            mode: Arc::new(AtomicU8::new(Mode::Pass as u8)),
            open: Arc::default(),
            stop: Arc::default(),
            refused: Arc::default(),
            accepted: Arc::default(),
            corrupted: Arc::default(),
            cut: Arc::default(),
            rules: Arc::new(Rules {
                inspect,
                ..Default::default()
            }),
            locations: Locations::new(upstream, format!("http://127.0.0.1:{port}")),
        };
        let (mode, open, stop, refused) = (
            proxy.mode.clone(),
            proxy.open.clone(),
            proxy.stop.clone(),
            proxy.refused.clone(),
        );
        let (accepted, corrupted, cut, rules, locations) = (
            proxy.accepted.clone(),
            proxy.corrupted.clone(),
            proxy.cut.clone(),
            proxy.rules.clone(),
            proxy.locations.clone(),
        );
        let upstream = upstream.to_string();
        thread::spawn(move || {
            for client in listener.incoming() {
                if stop.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(client) = client else { continue };
                match mode.load(Ordering::SeqCst) {
                    m @ (0 | 3) if m == 0 || rules.inspect => {
                        let Ok(server) = TcpStream::connect(&upstream) else {
                            continue;
                        };
                        accepted.fetch_add(1, Ordering::SeqCst);
                        let mut o = open.lock().unwrap();
                        o.push(client.try_clone().unwrap());
                        o.push(server.try_clone().unwrap());
                        drop(o);
                        let (methods, answered) = channel();
                        let muted = Arc::new(AtomicU8::new(PASS));
                        if rules.inspect {
                            let counters = Counters {
                                mode: mode.clone(),
                                refused: refused.clone(),
                                corrupted: corrupted.clone(),
                                cut: cut.clone(),
                            };
                            inspect_pipe(
                                client.try_clone().unwrap(),
                                server.try_clone().unwrap(),
                                muted.clone(),
                                rules.clone(),
                                counters,
                                methods,
                            );
                        } else {
                            let (client, server) =
                                (client.try_clone().unwrap(), server.try_clone().unwrap());
                            thread::spawn(move || {
                                let _ = forward_requests(
                                    client,
                                    server,
                                    Duration::ZERO,
                                    &Mutex::default(),
                                    &methods,
                                );
                            });
                        }
                        answer_pipe(server, client, answered, locations.clone(), muted);
                    }
                    1 => {
                        refused.fetch_add(1, Ordering::SeqCst);
                        let _ = client.shutdown(Shutdown::Both);
                    }
                    4 => {
                        refused.fetch_add(1, Ordering::SeqCst);
                        thread::spawn(move || {
                            answer_all(
                                client,
                                "404 Not Found",
                                "application/xml",
                                b"<?xml version=\"1.0\"?><Error><Code>NoSuchBucket</Code><Message>The specified bucket does not exist</Message></Error>",
                            )
                        });
                    }
                    _ => {
                        refused.fetch_add(1, Ordering::SeqCst);
                        thread::spawn(move || forbid(client));
                    }
                }
            }
        });
        proxy
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn set(&self, mode: Mode) {
        self.mode.store(mode as u8, Ordering::SeqCst);
        if mode != Mode::Pass && mode != Mode::ForbidPut {
            for c in self.open.lock().unwrap().drain(..) {
                if c.shutdown(Shutdown::Both).is_ok() {
                    self.refused.fetch_add(1, Ordering::SeqCst);
                }
            }
        }
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        for c in self.open.lock().unwrap().drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
    }
}

/// Reads requests (head and `Content-Length` body) and answers each with 403.
fn forbid(client: TcpStream) {
    answer_all(
        client,
        "403 Forbidden",
        "application/json",
        br#"{"error":{"code":403,"message":"Forbidden (test proxy)"}}"#,
    )
}

/// Reads requests (head and `Content-Length` body) and answers each the same way.
fn answer_all(client: TcpStream, status: &str, content_type: &str, msg: &[u8]) {
    let _ = client.set_read_timeout(Some(Duration::from_secs(2)));
    let mut reader = BufReader::new(client.try_clone().unwrap());
    let mut out = client;
    loop {
        let mut len = 0usize;
        let mut first = true;
        loop {
            let mut line = String::new();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            if line == "\r\n" || line == "\n" {
                break;
            }
            first = false;
            if let Some((n, v)) = line.split_once(':') {
                if n.eq_ignore_ascii_case("content-length") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
        }
        if first {
            return;
        }
        let mut body = vec![0; len];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let head = format!(
            "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
            msg.len()
        );
        if out.write_all(head.as_bytes()).is_err() || out.write_all(msg).is_err() {
            return;
        }
    }
}

/// A TCP proxy that holds every HTTP request `delay` before forwarding it, as a store
/// a network hop away would (the benchmark's "30 ms per storage request"), and logs
/// each request's method and target. It reads request heads and bodies
/// (`Content-Length` or chunked) to find where each request begins; answers pass as
/// they come.
pub struct DelayingProxy {
    port: u16,
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<Vec<(String, String)>>>,
}

impl DelayingProxy {
    pub fn start(upstream: &str, delay: Duration) -> DelayingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let proxy = DelayingProxy {
            port,
            stop: Arc::default(),
            log: Arc::default(),
        };
        let (stop, log) = (proxy.stop.clone(), proxy.log.clone());
        let locations = Locations::new(upstream, proxy.url());
        let upstream = upstream.to_string();
        thread::spawn(move || {
            for client in listener.incoming() {
                if stop.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(&upstream) else {
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let (methods, answered) = channel();
                answer_pipe(
                    server.try_clone().unwrap(),
                    client.try_clone().unwrap(),
                    answered,
                    locations.clone(),
                    Arc::new(AtomicU8::new(PASS)),
                );
                let log = log.clone();
                thread::spawn(move || {
                    let _ = forward_requests(client, server, delay, &log, &methods);
                });
            }
        });
        proxy
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// (method, target) of every request forwarded so far.
    pub fn requests(&self) -> Vec<(String, String)> {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for DelayingProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}
