//! A minimal HTTP/1.1 server, just enough for the emulator.
//!
//! No async runtime and no server crate: one thread per connection, keep-alive,
//! request bodies by `Content-Length` only, and responses written either with a
//! `Content-Length` or chunked. It can also misbehave on purpose (cut a body short,
//! or stall mid-body), which is the point of an emulator used to test a client.
//! With a rustls server configuration it speaks HTTPS instead (each accepted socket
//! wrapped in a `rustls::StreamOwned`), so the client's TLS verification is tested too.

use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

const MAX_HEAD: usize = 64 * 1024;
const MAX_BODY: usize = 1024 * 1024;
const WRITE_BLOCK: usize = 64 * 1024;

/// A parsed request; header names are lower-case.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

pub enum Body {
    Bytes(Vec<u8>),
    /// A body produced while it is written (large recordings).
    Reader {
        len: u64,
        reader: Box<dyn Read + Send>,
    },
}

impl Body {
    pub fn len(&self) -> u64 {
        match self {
            Body::Bytes(b) => b.len() as u64,
            Body::Reader { len, .. } => *len,
        }
    }
}

/// How the body is to be spoiled, on purpose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFault {
    None,
    /// Send about half of the body, then close the connection.
    Drop,
    /// Send about half of the body, go silent for the duration, then close.
    Stall(Duration),
}

/// Bytes written to the socket as they are (status line, headers and body included,
/// so they can lie about anything), then `silence` without a word, then the connection
/// closes. A test uses it for broken and hostile answers.
#[derive(Debug, Clone, Default)]
pub struct RawReply {
    pub bytes: Vec<u8>,
    pub silence: Duration,
}

/// Called once the response is over: body bytes written, and whether all were.
pub type OnSent = Box<dyn FnOnce(u64, bool) + Send>;

pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Body,
    pub chunked: bool,
    pub fault: BodyFault,
    pub on_sent: Option<OnSent>,
    /// Sent instead of everything above when set.
    pub raw: Option<RawReply>,
}

impl Response {
    pub fn new(status: u16, content_type: &str, body: Vec<u8>) -> Response {
        Response {
            status,
            headers: vec![("Content-Type".into(), content_type.into())],
            body: Body::Bytes(body),
            chunked: false,
            fault: BodyFault::None,
            on_sent: None,
            raw: None,
        }
    }

    pub fn json(status: u16, value: &serde_json::Value) -> Response {
        Response::new(
            status,
            "application/json",
            serde_json::to_vec(value).unwrap_or_default(),
        )
    }

    /// A raw answer (see [`RawReply`]); the connection ends after it.
    pub fn raw(raw: RawReply) -> Response {
        Response {
            raw: Some(raw),
            ..Response::empty(200)
        }
    }

    pub fn empty(status: u16) -> Response {
        Response {
            headers: Vec::new(),
            ..Response::new(status, "", Vec::new())
        }
    }
}

pub type Handler = Arc<dyn Fn(&Request) -> Response + Send + Sync>;

/// A running server; [`Server::stop`] (or drop) closes every connection.
pub struct Server {
    addr: SocketAddr,
    stopping: Arc<AtomicBool>,
    conns: Arc<Mutex<HashMap<u64, TcpStream>>>,
    acceptor: Option<JoinHandle<()>>,
}

impl Server {
    /// Serves plain HTTP, or HTTPS when `tls` is given.
    pub fn start(
        port: u16,
        handler: Handler,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> io::Result<Server> {
        let listener = TcpListener::bind(("127.0.0.1", port))?;
        let addr = listener.local_addr()?;
        let stopping = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<HashMap<u64, TcpStream>>> = Arc::default();
        let (stop2, conns2) = (stopping.clone(), conns.clone());
        let acceptor = thread::Builder::new()
            .name("emulator-accept".into())
            .spawn(move || {
                let next_id = AtomicU64::new(0);
                for stream in listener.incoming() {
                    if stop2.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    let id = next_id.fetch_add(1, Ordering::SeqCst);
                    if let Ok(clone) = stream.try_clone() {
                        lock(&conns2).insert(id, clone);
                    }
                    let (handler, conns3, tls) = (handler.clone(), conns2.clone(), tls.clone());
                    let spawned =
                        thread::Builder::new()
                            .name("emulator-conn".into())
                            .spawn(move || {
                                serve_connection(stream, &handler, tls);
                                lock(&conns3).remove(&id);
                            });
                    if spawned.is_err() {
                        lock(&conns2).remove(&id);
                    }
                }
            })?;
        Ok(Server {
            addr,
            stopping,
            conns,
            acceptor: Some(acceptor),
        })
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn stop(&mut self) {
        if self.stopping.swap(true, Ordering::SeqCst) {
            return;
        }
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(t) = self.acceptor.take() {
            let _ = t.join();
        }
        for (_, c) in lock(&self.conns).drain() {
            let _ = c.shutdown(Shutdown::Both);
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Locks a mutex, going on with the data even if another thread panicked holding it.
pub fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

enum ReadOutcome {
    Request(Request),
    Closed,
    Bad(u16, String),
}

/// One client connection, plain or TLS.
enum Stream {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ServerConnection, TcpStream>>),
}

impl Stream {
    /// Ends the connection (after a TLS close_notify).
    fn close(&mut self) {
        let sock = match self {
            Stream::Plain(s) => s,
            Stream::Tls(t) => {
                t.conn.send_close_notify();
                let _ = t.flush();
                &t.sock
            }
        };
        let _ = sock.shutdown(Shutdown::Both);
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(t) => t.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Tls(t) => t.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Tls(t) => t.flush(),
        }
    }
}

fn serve_connection(stream: TcpStream, handler: &Handler, tls: Option<Arc<rustls::ServerConfig>>) {
    let _ = stream.set_nodelay(true);
    let stream = match tls {
        None => Stream::Plain(stream),
        Some(config) => match rustls::ServerConnection::new(config) {
            Ok(conn) => Stream::Tls(Box::new(rustls::StreamOwned::new(conn, stream))),
            Err(_) => return,
        },
    };
    let mut reader = BufReader::new(stream);
    loop {
        let (response, keep_alive) = match read_request(&mut reader) {
            ReadOutcome::Closed => return,
            ReadOutcome::Bad(status, msg) => (
                Response::json(
                    status,
                    &serde_json::json!({"error": "bad request", "message": msg}),
                ),
                false,
            ),
            ReadOutcome::Request(req) => {
                let close = req
                    .header("connection")
                    .is_some_and(|v| v.eq_ignore_ascii_case("close"));
                (handler(&req), !close)
            }
        };
        let writer = reader.get_mut();
        if !write_response(writer, response, keep_alive) || !keep_alive {
            let _ = writer.flush();
            writer.close();
            return;
        }
    }
}

fn read_line(
    reader: &mut BufReader<Stream>,
    head_len: &mut usize,
) -> Result<Option<String>, String> {
    let mut line = Vec::new();
    let limit = (MAX_HEAD - *head_len) as u64 + 1;
    match reader.by_ref().take(limit).read_until(b'\n', &mut line) {
        Ok(0) => return Ok(None),
        Ok(n) => *head_len += n,
        Err(e) => return Err(format!("reading the request failed: {e}")),
    }
    if *head_len > MAX_HEAD {
        return Err(format!("the request head is longer than {MAX_HEAD} bytes"));
    }
    if !line.ends_with(b"\n") {
        return Err("the connection closed in the middle of the request head".into());
    }
    while line.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        line.pop();
    }
    String::from_utf8(line)
        .map(Some)
        .map_err(|_| "the request head is not UTF-8".into())
}

fn read_request(reader: &mut BufReader<Stream>) -> ReadOutcome {
    let mut head_len = 0;
    let first = match read_line(reader, &mut head_len) {
        Ok(Some(l)) => l,
        Ok(None) => return ReadOutcome::Closed,
        Err(e) => return ReadOutcome::Bad(400, e),
    };
    let parts: Vec<&str> = first.split(' ').collect();
    if parts.len() != 3 || !parts[2].starts_with("HTTP/1.") || !parts[1].starts_with('/') {
        return ReadOutcome::Bad(400, format!("malformed request line {first:?}"));
    }
    let mut headers = Vec::new();
    loop {
        match read_line(reader, &mut head_len) {
            Ok(Some(l)) if l.is_empty() => break,
            Ok(Some(l)) => match l.split_once(':') {
                Some((n, v)) => headers.push((n.trim().to_ascii_lowercase(), v.trim().to_string())),
                None => return ReadOutcome::Bad(400, format!("malformed header line {l:?}")),
            },
            Ok(None) => {
                return ReadOutcome::Bad(400, "the connection closed in the request head".into())
            }
            Err(e) => return ReadOutcome::Bad(400, e),
        }
    }
    let mut req = Request {
        method: parts[0].to_string(),
        path: parts[1].to_string(),
        headers,
        body: Vec::new(),
    };
    if req.header("transfer-encoding").is_some() {
        return ReadOutcome::Bad(
            400,
            "chunked request bodies are not supported; send Content-Length".into(),
        );
    }
    let len = match req.header("content-length").map(|v| v.parse::<usize>()) {
        None => 0,
        Some(Ok(n)) => n,
        Some(Err(_)) => return ReadOutcome::Bad(400, "Content-Length is not a number".into()),
    };
    if len > MAX_BODY {
        return ReadOutcome::Bad(
            413,
            format!("the request body is {len} bytes; at most {MAX_BODY}"),
        );
    }
    req.body = vec![0; len];
    if let Err(e) = reader.read_exact(&mut req.body) {
        return ReadOutcome::Bad(
            400,
            format!("the request body is shorter than its Content-Length: {e}"),
        );
    }
    ReadOutcome::Request(req)
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        413 => "Payload Too Large",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// Writes one response; false when the connection must (or did) end.
///
/// The last byte is held back until `on_sent` has run: a client cannot see a whole
/// body (and send its next request) before the emulator has recorded it as delivered.
fn write_response(w: &mut Stream, mut resp: Response, keep_alive: bool) -> bool {
    let mut on_sent = resp.on_sent.take();
    if let Some(raw) = resp.raw.take() {
        let _ = w.write_all(&raw.bytes).and_then(|_| w.flush());
        thread::sleep(raw.silence);
        if let Some(f) = on_sent {
            f(raw.bytes.len() as u64, false);
        }
        return false;
    }
    let (sent, complete) = write_all_parts(w, &mut resp, keep_alive, &mut on_sent);
    if let Some(f) = on_sent {
        f(sent, complete);
    }
    complete && resp.fault == BodyFault::None
}

fn write_all_parts(
    w: &mut Stream,
    resp: &mut Response,
    keep_alive: bool,
    on_sent: &mut Option<OnSent>,
) -> (u64, bool) {
    let len = resp.body.len();
    let no_body = resp.status == 204 || resp.status == 304;
    let mut head = format!("HTTP/1.1 {} {}\r\n", resp.status, reason(resp.status));
    for (n, v) in &resp.headers {
        head.push_str(&format!("{n}: {v}\r\n"));
    }
    if !no_body {
        if resp.chunked {
            head.push_str("Transfer-Encoding: chunked\r\n");
        } else {
            head.push_str(&format!("Content-Length: {len}\r\n"));
        }
    }
    if !keep_alive || resp.fault != BodyFault::None {
        head.push_str("Connection: close\r\n");
    }
    head.push_str("\r\n");
    if no_body && resp.fault != BodyFault::None {
        // A faulted answer without a body: the client never hears back.
        finish_fault(w, resp.fault);
        return (0, false);
    }
    // Headers and a small body go out in one write.
    let mut out = head.into_bytes();
    let limit = match (no_body, resp.fault) {
        (true, _) => 0,
        (false, BodyFault::None) => len,
        (false, _) => len / 2,
    };
    let mut sent = 0u64;
    let mut buf = vec![0u8; WRITE_BLOCK];
    loop {
        let want = (limit - sent).min(WRITE_BLOCK as u64) as usize;
        let n = if want == 0 {
            0
        } else {
            match &mut resp.body {
                Body::Bytes(b) => {
                    buf[..want].copy_from_slice(&b[sent as usize..sent as usize + want]);
                    want
                }
                Body::Reader { reader, .. } => reader.read(&mut buf[..want]).unwrap_or(0),
            }
        };
        if n == 0 {
            break;
        }
        if resp.chunked {
            out.extend_from_slice(format!("{n:x}\r\n").as_bytes());
            out.extend_from_slice(&buf[..n]);
            out.extend_from_slice(b"\r\n");
        } else {
            out.extend_from_slice(&buf[..n]);
        }
        // Keep the last byte back (see write_response).
        let held = out.pop();
        if w.write_all(&out).is_err() {
            return (sent, false);
        }
        out.clear();
        out.extend(held);
        sent += n as u64;
    }
    if resp.fault != BodyFault::None || sent != limit {
        let _ = w.write_all(&out);
        finish_fault(w, resp.fault);
        return (sent, false);
    }
    if resp.chunked && !no_body {
        out.extend_from_slice(b"0\r\n\r\n");
    }
    let last = out.split_off(out.len().saturating_sub(1));
    if w.write_all(&out).is_err() {
        return (sent, false);
    }
    if let Some(f) = on_sent.take() {
        f(sent, true);
    }
    let _ = w.write_all(&last).and_then(|_| w.flush());
    (sent, true)
}

fn finish_fault(w: &mut Stream, fault: BodyFault) {
    let _ = w.flush();
    if let BodyFault::Stall(d) = fault {
        thread::sleep(d);
    }
    w.close();
}
