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
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

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

/// The shared counters an inspecting pipe updates.
struct Counters {
    mode: Arc<AtomicU8>,
    refused: Arc<AtomicUsize>,
    corrupted: Arc<AtomicUsize>,
    cut: Arc<AtomicUsize>,
}

/// What a muted pipe does with the server's answer: passes it, drops it, or dropped some.
const PASS: u8 = 0;
const MUTED: u8 = 1;
const ANSWER_DROPPED: u8 = 2;

/// The client's side of the answers: drops everything once `muted` is set (and says so).
struct Muted {
    to: TcpStream,
    muted: Arc<AtomicU8>,
}

impl Write for Muted {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.muted.load(Ordering::SeqCst) != PASS {
            self.muted.store(ANSWER_DROPPED, Ordering::SeqCst);
            return Ok(buf.len());
        }
        self.to.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.to.flush()
    }
}

/// Server to client, one answer at a time: its head is read and its `Location`
/// rewritten (see the module comment), its body passed on as framed. `methods` names
/// the request of each answer, in order (the answer to a HEAD has no body).
fn answer_pipe(
    from: TcpStream,
    to: TcpStream,
    methods: Receiver<String>,
    locations: Arc<Locations>,
    muted: Arc<AtomicU8>,
) {
    thread::spawn(move || {
        let mut out = Muted {
            to: to.try_clone().unwrap(),
            muted,
        };
        let _ = forward_answers(&mut BufReader::new(from), &mut out, &methods, &locations);
        let _ = to.shutdown(Shutdown::Write);
    });
}

fn forward_answers(
    from: &mut BufReader<TcpStream>,
    out: &mut impl Write,
    methods: &Receiver<String>,
    locations: &Locations,
) -> std::io::Result<()> {
    loop {
        let mut head = Vec::new();
        let (mut len, mut chunked) = (None::<u64>, false);
        loop {
            let mut line = Vec::new();
            if from.read_until(b'\n', &mut line)? == 0 {
                return Ok(());
            }
            let text = String::from_utf8_lossy(&line).into_owned();
            let end = text.trim().is_empty();
            match text.split_once(':') {
                Some((n, v)) if n.eq_ignore_ascii_case("location") && !head.is_empty() => {
                    line = format!("{n}: {}\r\n", locations.rewrite(v.trim())).into_bytes();
                }
                Some((n, v)) if n.eq_ignore_ascii_case("content-length") => {
                    len = v.trim().parse().ok();
                }
                Some((n, v)) if n.eq_ignore_ascii_case("transfer-encoding") => {
                    chunked = v.to_ascii_lowercase().contains("chunked");
                }
                _ => {}
            }
            head.extend_from_slice(&line);
            if end {
                break;
            }
        }
        out.write_all(&head)?;
        let status: u16 = String::from_utf8_lossy(&head)
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        if (100..200).contains(&status) {
            continue; // an interim answer: the request's own follows
        }
        let method = methods.recv().unwrap_or_default();
        if method == "HEAD" || status == 204 || status == 304 {
            continue;
        }
        if chunked {
            copy_chunks(from, out)?;
        } else if let Some(n) = len {
            std::io::copy(&mut from.take(n), out)?;
        } else {
            std::io::copy(from, out)?;
            return Ok(());
        }
    }
}

/// Copies a chunked body, its trailers included.
fn copy_chunks(from: &mut impl BufRead, out: &mut impl Write) -> std::io::Result<()> {
    loop {
        let mut size_line = String::new();
        from.read_line(&mut size_line)?;
        out.write_all(size_line.as_bytes())?;
        let size =
            u64::from_str_radix(size_line.trim().split(';').next().unwrap_or("0"), 16).unwrap_or(0);
        if size == 0 {
            loop {
                let mut t = String::new();
                from.read_line(&mut t)?;
                out.write_all(t.as_bytes())?;
                if t == "\r\n" || t == "\n" || t.is_empty() {
                    return Ok(());
                }
            }
        }
        std::io::copy(&mut from.take(size + 2), out)?;
    }
}

/// Client to server, one request at a time (the connector never pipelines).
fn inspect_pipe(
    client: TcpStream,
    server: TcpStream,
    muted: Arc<AtomicU8>,
    rules: Arc<Rules>,
    counters: Counters,
    methods: Sender<String>,
) {
    thread::spawn(move || {
        let mut reader = BufReader::new(client.try_clone().unwrap());
        let mut back = client;
        let mut to = server;
        loop {
            let mut head = String::new();
            let mut len = 0usize;
            loop {
                let mut line = String::new();
                match reader.read_line(&mut line) {
                    Ok(0) | Err(_) => {
                        let _ = to.shutdown(Shutdown::Write);
                        return;
                    }
                    Ok(_) => {}
                }
                if let Some((n, v)) = line.split_once(':') {
                    if n.eq_ignore_ascii_case("content-length") {
                        len = v.trim().parse().unwrap_or(0);
                    }
                }
                let end = line == "\r\n" || line == "\n";
                head.push_str(&line);
                if end {
                    break;
                }
            }
            let request_line = head.lines().next().unwrap_or_default().to_string();
            if counters.mode.load(Ordering::SeqCst) == Mode::ForbidPut as u8
                && ["PUT ", "POST ", "DELETE "]
                    .iter()
                    .any(|m| request_line.starts_with(m))
            {
                let mut body = vec![0u8; len];
                if reader.read_exact(&mut body).is_err() {
                    return;
                }
                counters.refused.fetch_add(1, Ordering::SeqCst);
                let msg = b"<?xml version=\"1.0\"?><Error><Code>AccessDenied</Code><Message>Forbidden (test proxy)</Message></Error>";
                let answer = format!(
                    "HTTP/1.1 403 Forbidden\r\nContent-Type: application/xml\r\nx-ms-error-code: AuthorizationPermissionMismatch\r\nContent-Length: {}\r\n\r\n",
                    msg.len()
                );
                if back.write_all(answer.as_bytes()).is_err() || back.write_all(msg).is_err() {
                    return;
                }
                continue;
            }
            let cut = {
                let mut rule = rules.cut_after.lock().unwrap();
                let hit = rule.as_ref().is_some_and(|(m, t)| {
                    request_line.starts_with(m.as_str()) && request_line.contains(t.as_str())
                });
                if hit {
                    *rule = None;
                }
                hit
            };
            if cut {
                muted.store(MUTED, Ordering::SeqCst);
            }
            let flip_at = {
                let mut min = rules.corrupt_min.lock().unwrap();
                match *min {
                    Some(m) if len >= m && len > 0 => {
                        *min = None;
                        counters.corrupted.fetch_add(1, Ordering::SeqCst);
                        Some(len / 2)
                    }
                    _ => None,
                }
            };
            let method = request_line.split(' ').next().unwrap_or_default();
            let _ = methods.send(method.to_string());
            if to.write_all(head.as_bytes()).is_err() {
                return;
            }
            let mut left = len;
            let mut offset = 0usize;
            let mut buf = vec![0u8; 64 * 1024];
            while left > 0 {
                let n = left.min(buf.len());
                if reader.read_exact(&mut buf[..n]).is_err() {
                    let _ = to.shutdown(Shutdown::Write);
                    return;
                }
                if let Some(at) = flip_at {
                    if (offset..offset + n).contains(&at) {
                        buf[at - offset] ^= 0x01;
                    }
                }
                let cut_at = {
                    let mut rule = rules.cut_body_after.lock().unwrap();
                    match rule.as_mut() {
                        Some(rest) if *rest < n as u64 => {
                            let at = *rest as usize;
                            *rule = None;
                            Some(at)
                        }
                        Some(rest) => {
                            *rest -= n as u64;
                            None
                        }
                        None => None,
                    }
                };
                if let Some(at) = cut_at {
                    let _ = to.write_all(&buf[..at]);
                    counters.cut.fetch_add(1, Ordering::SeqCst);
                    let _ = back.shutdown(Shutdown::Both);
                    let _ = to.shutdown(Shutdown::Both);
                    return;
                }
                if to.write_all(&buf[..n]).is_err() {
                    return;
                }
                offset += n;
                left -= n;
            }
            if cut {
                // Let the server act on it (its answer arrived and was dropped; a
                // server may cancel a request whose connection goes away before it
                // answers), then lose the connection.
                let waited = std::time::Instant::now();
                while muted.load(Ordering::SeqCst) != ANSWER_DROPPED
                    && waited.elapsed() < Duration::from_secs(60)
                {
                    thread::sleep(Duration::from_millis(5));
                }
                counters.cut.fetch_add(1, Ordering::SeqCst);
                let _ = back.shutdown(Shutdown::Both);
                let _ = to.shutdown(Shutdown::Both);
                return;
            }
        }
    });
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

/// Client to server, one request at a time: logs its method and target, names its
/// method to the answers' side, holds it `delay` and forwards it.
fn forward_requests(
    client: TcpStream,
    mut server: TcpStream,
    delay: Duration,
    log: &Mutex<Vec<(String, String)>>,
    methods: &Sender<String>,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(client);
    loop {
        let mut head = Vec::new();
        let (mut len, mut chunked) = (0u64, false);
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line)? == 0 {
                let _ = server.shutdown(Shutdown::Write);
                return Ok(());
            }
            if head.is_empty() && line.trim().is_empty() {
                continue;
            }
            head.extend_from_slice(line.as_bytes());
            if line == "\r\n" || line == "\n" {
                break;
            }
            if let Some((n, v)) = line.split_once(':') {
                if n.eq_ignore_ascii_case("content-length") {
                    len = v.trim().parse().unwrap_or(0);
                } else if n.eq_ignore_ascii_case("transfer-encoding") {
                    chunked = v.to_ascii_lowercase().contains("chunked");
                }
            }
        }
        let first = String::from_utf8_lossy(&head);
        let mut parts = first.split_whitespace();
        let method = parts.next().unwrap_or("").to_string();
        let target = parts.next().unwrap_or("").to_string();
        let _ = methods.send(method.clone());
        log.lock().unwrap().push((method, target));
        thread::sleep(delay);
        server.write_all(&head)?;
        if chunked {
            copy_chunks(&mut reader, &mut server)?;
        } else if len > 0 {
            std::io::copy(&mut (&mut reader).take(len), &mut server)?;
        }
    }
}
