//! The opt-in HTTP endpoint (`SP_METRICS_ADDR`): `/healthz`, `/readyz` and `/metrics`,
//! the storage probe behind `/readyz`, and the `health` command that asks it.
//!
//! Anyone who reaches the port can talk to it, and nothing said there may take the sync
//! down, so this is a small server of our own over `std::net` whose every limit is
//! ours: at most [`MAX_CONNECTIONS`] connections are served at once, each on its own
//! thread (more are accepted and closed at once, so the listen queue never fills and a
//! probe never waits behind them); a request head longer than [`MAX_HEAD`] is answered
//! 431 and never buffered; every read and write waits at most [`IO_TIMEOUT`] and a
//! connection lives at most [`CONNECTION_DEADLINE`]; one request per connection
//! (`Connection: close`), so pipelined requests are never read; and an accept that
//! fails (no descriptor left) is retried after a pause and warned of at most once a
//! minute, never the end of the loop. None of its threads is one of the sync's.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{info, warn};

use crate::metrics::{self, Metrics};
use crate::store::BlobStore;

/// Connections served at once; more are closed as soon as they are accepted.
pub const MAX_CONNECTIONS: usize = 16;
/// The longest request head (request line and headers) read; longer ones get 431.
pub const MAX_HEAD: usize = 8 * 1024;
/// The longest any one read or write of a connection waits.
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest a connection is served, from accept to close, however it trickles.
pub const CONNECTION_DEADLINE: Duration = Duration::from_secs(10);
/// After an answer, what the client still sends is read (and dropped) for at most this
/// long and this many bytes before the connection closes.
const LINGER: Duration = Duration::from_secs(1);
const LINGER_BYTES: usize = 64 * 1024;
/// The pause after a failed accept, so a loop without descriptors does not spin.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);
const WARN_EVERY: Duration = Duration::from_secs(60);

/// The key the storage probe reads; it never exists, a "not found" is the healthy answer.
const PROBE_KEY: &str = ".spinoco-connector/readyz-probe";

/// Serves `/healthz`, `/readyz` and `/metrics` on `addr` from background threads, and
/// probes the storage every `probe_every` from another. Fails only when `addr`
/// cannot be bound or a thread cannot be started.
pub fn serve(
    addr: SocketAddr,
    store: Arc<dyn BlobStore>,
    ready_window: Duration,
    probe_every: Duration,
) -> io::Result<()> {
    let listener = TcpListener::bind(addr)?;
    let metrics = metrics::global();
    metrics.endpoint_started(ready_window);
    info!("metrics on http://{addr}/metrics (also /healthz, /readyz)");
    std::thread::Builder::new()
        .name("storage-probe".into())
        .spawn(move || loop {
            let reachable = match store.get(PROBE_KEY) {
                Ok(_) => true,
                Err(e) => {
                    warn!("readiness probe of the storage failed: {}", e.report());
                    false
                }
            };
            metrics.storage_probed(reachable);
            std::thread::sleep(probe_every);
        })?;
    std::thread::Builder::new()
        .name("endpoint".into())
        .spawn(move || accept_loop(&listener, metrics, ready_window))?;
    Ok(())
}

/// Accepts connections for good: at most [`MAX_CONNECTIONS`] served at once.
fn accept_loop(listener: &TcpListener, metrics: &'static Metrics, ready_window: Duration) {
    let busy = Arc::new(AtomicUsize::new(0));
    let mut warning = Throttle::new(WARN_EVERY);
    loop {
        let stream = match listener.accept() {
            Ok((stream, _)) => stream,
            // A connection reset before it was accepted: gone, the next may be fine.
            Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => continue,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            // EMFILE, ENFILE, ENOBUFS: the connection waits in the listen queue until
            // a descriptor is free again.
            Err(e) => {
                if warning.ready(Instant::now()) {
                    warn!(
                        "metrics endpoint cannot accept connections: {e}; trying again every {}ms (warned at most once a minute)",
                        ACCEPT_PAUSE.as_millis()
                    );
                }
                std::thread::sleep(ACCEPT_PAUSE);
                continue;
            }
        };
        // Beyond the cap the stream is dropped here: closed at once.
        let Some(slot) = Slot::take(&busy) else {
            continue;
        };
        let spawned = std::thread::Builder::new()
            .name("endpoint-conn".into())
            .spawn(move || {
                serve_connection(stream, metrics, ready_window);
                drop(slot);
            });
        // A thread that cannot start drops the stream and the slot with its closure.
        if let Err(e) = spawned {
            if warning.ready(Instant::now()) {
                warn!("metrics endpoint cannot start a thread for a connection: {e}");
            }
        }
    }
}

/// One of the [`MAX_CONNECTIONS`] places, given back when dropped.
struct Slot(Arc<AtomicUsize>);

impl Slot {
    fn take(busy: &Arc<AtomicUsize>) -> Option<Slot> {
        busy.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < MAX_CONNECTIONS).then_some(n + 1)
        })
        .ok()
        .map(|_| Slot(busy.clone()))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Lets a repeated warning through at most once per period.
struct Throttle {
    every: Duration,
    last: Option<Instant>,
}

impl Throttle {
    fn new(every: Duration) -> Throttle {
        Throttle { every, last: None }
    }

    fn ready(&mut self, now: Instant) -> bool {
        let due = self
            .last
            .is_none_or(|last| now.saturating_duration_since(last) >= self.every);
        if due {
            self.last = Some(now);
        }
        due
    }
}

/// A connection whose every read and write waits at most [`IO_TIMEOUT`], and never
/// past its deadline.
struct Connection {
    stream: TcpStream,
    deadline: Instant,
}

impl Connection {
    /// Sets the socket's timeout (by `set`) to what is left, or fails when nothing is.
    fn arm(&self, set: fn(&TcpStream, Option<Duration>) -> io::Result<()>) -> io::Result<()> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        set(&self.stream, Some(left.min(IO_TIMEOUT)))
    }
}

impl Read for Connection {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.arm(TcpStream::set_read_timeout)?;
        self.stream.read(buf)
    }
}

impl Write for Connection {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.arm(TcpStream::set_write_timeout)?;
        self.stream.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.stream.flush()
    }
}

/// Reads one request head, answers it, and closes the connection.
fn serve_connection(stream: TcpStream, metrics: &Metrics, ready_window: Duration) {
    let mut conn = Connection {
        stream,
        deadline: Instant::now() + CONNECTION_DEADLINE,
    };
    let mut buf = [0u8; MAX_HEAD];
    let reply = match read_head(&mut conn, &mut buf).and_then(|len| parse_head(&buf[..len])) {
        Ok(request) => answer(metrics, &request, ready_window),
        Err(HeadError::Incomplete) => return,
        Err(e) => Reply::text(e.status(), format!("{e}\n")),
    };
    if conn.write_all(&reply.to_bytes()).is_ok() {
        linger(conn, &mut buf);
    }
}

/// Ends the answer (FIN), then reads what the client still sends for a moment: closing
/// with unread bytes (pipelined requests, the rest of a long head) makes the kernel
/// reset the connection, which can discard the answer before the client reads it.
fn linger(mut conn: Connection, buf: &mut [u8]) {
    let _ = conn.stream.shutdown(Shutdown::Write);
    conn.deadline = conn.deadline.min(Instant::now() + LINGER);
    let mut drained = 0;
    while drained < LINGER_BYTES {
        match conn.read(buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => drained += n,
        }
    }
}

/// Why a request head was not answered as asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HeadError {
    /// Longer than [`MAX_HEAD`].
    TooLong,
    /// Not an HTTP/1 request line.
    Malformed,
    /// The connection closed, failed or timed out first: nobody to answer.
    Incomplete,
}

impl HeadError {
    fn status(self) -> u16 {
        match self {
            HeadError::TooLong => 431,
            HeadError::Malformed | HeadError::Incomplete => 400,
        }
    }
}

impl fmt::Display for HeadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HeadError::TooLong => write!(f, "request head longer than {MAX_HEAD} bytes"),
            HeadError::Malformed => f.write_str("not an HTTP/1 request; try GET /metrics"),
            HeadError::Incomplete => f.write_str("the request head did not arrive in time"),
        }
    }
}

/// Reads into `buf` up to the empty line that ends a request head and returns the
/// head's length. Bytes after it (a body, pipelined requests) are never looked at.
fn read_head(reader: &mut impl Read, buf: &mut [u8; MAX_HEAD]) -> Result<usize, HeadError> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => return Err(HeadError::Incomplete),
            Ok(n) => {
                // An end that straddles two reads begins at most two bytes back.
                let from = filled.saturating_sub(2);
                filled += n;
                if let Some(end) = head_end(&buf[..filled], from) {
                    return Ok(end);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Err(HeadError::Incomplete),
        }
    }
    Err(HeadError::TooLong)
}

/// Where the first empty line (`\n\r\n` or a bare `\n\n`) at or after `from` ends.
fn head_end(bytes: &[u8], from: usize) -> Option<usize> {
    (from..bytes.len()).find_map(|i| match &bytes[i..] {
        [b'\n', b'\n', ..] => Some(i + 2),
        [b'\n', b'\r', b'\n', ..] => Some(i + 3),
        _ => None,
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Method {
    Get,
    Head,
    Other,
}

/// What a request asks, as far as the endpoint cares (its headers do not matter).
#[derive(Debug, PartialEq, Eq)]
struct Request<'a> {
    method: Method,
    target: &'a str,
}

/// The request line of `head`: `METHOD SP target SP HTTP/1.x`.
fn parse_head(head: &[u8]) -> Result<Request<'_>, HeadError> {
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let line = std::str::from_utf8(line).map_err(|_| HeadError::Malformed)?;
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(HeadError::Malformed);
    };
    let token = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_graphic());
    if !token(method) || !token(target) || !version.starts_with("HTTP/1.") {
        return Err(HeadError::Malformed);
    }
    let method = match method {
        "GET" => Method::Get,
        "HEAD" => Method::Head,
        _ => Method::Other,
    };
    Ok(Request { method, target })
}

/// An answer: status, content type and body (left out for HEAD).
#[derive(Debug)]
struct Reply {
    status: u16,
    content_type: &'static str,
    body: String,
    head_only: bool,
}

const TEXT: &str = "text/plain; charset=utf-8";
const PROMETHEUS: &str = "text/plain; version=0.0.4; charset=utf-8";

impl Reply {
    fn text(status: u16, body: String) -> Reply {
        Reply {
            status,
            content_type: TEXT,
            body,
            head_only: false,
        }
    }

    fn to_bytes(&self) -> Vec<u8> {
        let reason = match self.status {
            200 => "OK",
            400 => "Bad Request",
            404 => "Not Found",
            405 => "Method Not Allowed",
            431 => "Request Header Fields Too Large",
            503 => "Service Unavailable",
            _ => "",
        };
        let allow = if self.status == 405 {
            "Allow: GET, HEAD\r\n"
        } else {
            ""
        };
        let mut out = format!(
            "HTTP/1.1 {} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\n{allow}Connection: close\r\n\r\n",
            self.status,
            self.content_type,
            self.body.len()
        )
        .into_bytes();
        if !self.head_only {
            out.extend_from_slice(self.body.as_bytes());
        }
        out
    }
}

fn answer(metrics: &Metrics, request: &Request, ready_window: Duration) -> Reply {
    let (status, body) = if request.method == Method::Other {
        (405, "only GET\n".into())
    } else {
        match request.target {
            "/healthz" => (200, "ok\n".into()),
            "/readyz" => match metrics.readiness(ready_window) {
                Ok(()) => (200, "ready\n".into()),
                Err(reason) => (503, format!("not ready: {reason}\n")),
            },
            "/metrics" => (200, metrics.render()),
            _ => (404, "not found; try /metrics, /healthz or /readyz\n".into()),
        }
    };
    Reply {
        status,
        content_type: if request.target == "/metrics" {
            PROMETHEUS
        } else {
            TEXT
        },
        body,
        head_only: request.method == Method::Head,
    }
}

/// `spinoco-connector health [--live]`: asks the running connector's endpoint at
/// `addr` (a wildcard address is asked on loopback) for `/readyz`, or `/healthz` with
/// `live`. Returns whether it answered 200, with what it said.
pub fn check_health(addr: SocketAddr, live: bool) -> Result<String, String> {
    let mut target = addr;
    if target.ip().is_unspecified() {
        target.set_ip(match addr {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    let path = if live { "/healthz" } else { "/readyz" };
    let url = format!("http://{target}{path}");
    let agent = crate::http::agent(Duration::from_secs(3), 1);
    match agent.get(&url).call() {
        Ok(mut response) => {
            let status = response.status().as_u16();
            let body = response
                .body_mut()
                .read_to_string()
                .unwrap_or_default()
                .trim()
                .to_string();
            if status == 200 {
                Ok(format!("{url}: {body}"))
            } else {
                Err(format!("{url}: {status} {body}"))
            }
        }
        Err(e) => Err(format!("{url}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hands out its bytes `step` at a time, then says the connection closed.
    struct Trickle<'a> {
        bytes: &'a [u8],
        step: usize,
        read: usize,
    }

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.step.min(buf.len()).min(self.bytes.len() - self.read);
            buf[..n].copy_from_slice(&self.bytes[self.read..self.read + n]);
            self.read += n;
            Ok(n)
        }
    }

    fn head_of(bytes: &[u8], step: usize) -> Result<String, HeadError> {
        let mut reader = Trickle {
            bytes,
            step,
            read: 0,
        };
        let mut buf = [0u8; MAX_HEAD];
        let len = read_head(&mut reader, &mut buf)?;
        Ok(String::from_utf8_lossy(&buf[..len]).into_owned())
    }

    #[test]
    fn a_head_ends_at_the_first_empty_line_however_it_arrives() {
        let head = "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n";
        let pipelined = format!("{head}GET /readyz HTTP/1.1\r\n\r\n");
        for step in [1, 2, 3, 7, MAX_HEAD] {
            assert_eq!(head_of(pipelined.as_bytes(), step).as_deref(), Ok(head));
        }
        let bare = "GET /healthz HTTP/1.0\n\nbody";
        assert_eq!(
            head_of(bare.as_bytes(), 1).as_deref(),
            Ok("GET /healthz HTTP/1.0\n\n")
        );
        assert_eq!(
            head_of(b"GET /healthz HTTP/1.1\r\nHost: x\r\n", 4),
            Err(HeadError::Incomplete),
            "closed before the empty line"
        );
        assert_eq!(head_of(b"", 4), Err(HeadError::Incomplete));
    }

    #[test]
    fn a_head_longer_than_the_limit_is_refused_without_reading_on() {
        let mut exact = b"GET /healthz HTTP/1.1\r\nX: ".to_vec();
        exact.resize(MAX_HEAD - 4, b'a');
        exact.extend_from_slice(b"\r\n\r\n");
        assert_eq!(head_of(&exact, 1000).map(|h| h.len()), Ok(MAX_HEAD));

        let mut endless = b"GET /healthz HTTP/1.1\r\nX: ".to_vec();
        endless.resize(100 * MAX_HEAD, b'a');
        let mut reader = Trickle {
            bytes: &endless,
            step: 1000,
            read: 0,
        };
        let mut buf = [0u8; MAX_HEAD];
        assert_eq!(read_head(&mut reader, &mut buf), Err(HeadError::TooLong));
        assert_eq!(reader.read, MAX_HEAD, "read past the limit");
        assert_eq!(HeadError::TooLong.status(), 431);
    }

    #[test]
    fn the_request_line_gives_method_and_target() {
        let parsed = |line: &[u8]| parse_head(line).map(|r| (r.method, r.target.to_string()));
        assert_eq!(
            parsed(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            Ok((Method::Get, "/metrics".into()))
        );
        assert_eq!(
            parsed(b"HEAD /readyz HTTP/1.0\n\n"),
            Ok((Method::Head, "/readyz".into()))
        );
        for method in ["POST", "PUT", "DELETE", "get", "OPTIONS"] {
            let line = format!("{method} /healthz HTTP/1.1\r\n\r\n");
            assert_eq!(
                parsed(line.as_bytes()),
                Ok((Method::Other, "/healthz".into()))
            );
        }
        for bad in [
            &b"GET /healthz\r\n\r\n"[..],
            b"GET /healthz HTTP/2.0\r\n\r\n",
            b"GET  /healthz HTTP/1.1\r\n\r\n",
            b"GET /healthz HTTP/1.1 extra\r\n\r\n",
            b"GET /heal\x7fthz HTTP/1.1\r\n\r\n",
            b"GET /\xff HTTP/1.1\r\n\r\n",
            b"\r\n\r\n",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
        ] {
            assert_eq!(parsed(bad), Err(HeadError::Malformed), "{bad:?}");
        }
    }

    fn reply(metrics: &Metrics, line: &str) -> String {
        let request = parse_head(line.as_bytes()).unwrap();
        let bytes = answer(metrics, &request, Duration::from_secs(60)).to_bytes();
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn answers_by_path_and_method() {
        let m = Metrics::new();
        let text = "Content-Type: text/plain; charset=utf-8\r\n";
        let healthz = reply(&m, "GET /healthz HTTP/1.1\r\n\r\n");
        assert!(healthz.starts_with("HTTP/1.1 200 OK\r\n"), "{healthz}");
        assert!(healthz.contains(text), "{healthz}");
        assert!(healthz.contains("Connection: close\r\n"), "{healthz}");
        assert!(healthz.ends_with("Content-Length: 3\r\nConnection: close\r\n\r\nok\n"));

        let readyz = reply(&m, "GET /readyz HTTP/1.1\r\n\r\n");
        assert!(readyz.starts_with("HTTP/1.1 503 "), "{readyz}");
        assert!(readyz.ends_with("\r\n\r\nnot ready: no sync round has finished yet\n"));
        m.round_done(true);
        let readyz = reply(&m, "GET /readyz HTTP/1.1\r\n\r\n");
        assert!(readyz.starts_with("HTTP/1.1 200 ") && readyz.ends_with("\r\n\r\nready\n"));

        let metrics = reply(&m, "GET /metrics HTTP/1.1\r\n\r\n");
        assert!(metrics.starts_with("HTTP/1.1 200 "), "{metrics}");
        assert!(metrics.contains("Content-Type: text/plain; version=0.0.4; charset=utf-8\r\n"));
        assert!(
            metrics.contains("\r\n\r\n# HELP spinoco_tasks_total "),
            "{metrics}"
        );
        assert!(metrics.contains("\nspinoco_rounds_total 1\n"), "{metrics}");

        let head = reply(&m, "HEAD /metrics HTTP/1.1\r\n\r\n");
        let length = format!("Content-Length: {}\r\n", m.render().len());
        assert!(
            head.contains(&length) && head.ends_with("\r\n\r\n"),
            "{head}"
        );

        let other = reply(&m, "GET /metrics/ HTTP/1.1\r\n\r\n");
        assert!(other.starts_with("HTTP/1.1 404 "), "{other}");
        assert!(other.ends_with("\r\n\r\nnot found; try /metrics, /healthz or /readyz\n"));
        let post = reply(&m, "POST /healthz HTTP/1.1\r\n\r\n");
        assert!(post.starts_with("HTTP/1.1 405 "), "{post}");
        assert!(post.contains("Allow: GET, HEAD\r\n") && post.ends_with("\r\n\r\nonly GET\n"));
    }

    #[test]
    fn a_repeated_warning_passes_once_per_period() {
        let mut warning = Throttle::new(Duration::from_secs(60));
        let start = Instant::now();
        assert!(warning.ready(start));
        assert!(!warning.ready(start + Duration::from_secs(1)));
        assert!(!warning.ready(start + Duration::from_secs(59)));
        assert!(warning.ready(start + Duration::from_secs(60)));
        assert!(!warning.ready(start + Duration::from_secs(61)));
    }

    /// The accept loop on a port of its own, with its own counters.
    fn endpoint() -> SocketAddr {
        static METRICS: Metrics = Metrics::new();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || accept_loop(&listener, &METRICS, Duration::from_secs(60)));
        addr
    }

    /// Sends `bytes` on a fresh connection and reads until the server closes it.
    fn exchange(addr: SocketAddr, bytes: &[u8]) -> io::Result<String> {
        let mut stream = TcpStream::connect(addr)?;
        stream.set_read_timeout(Some(Duration::from_secs(3)))?;
        stream.write_all(bytes)?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer)?;
        Ok(String::from_utf8_lossy(&answer).into_owned())
    }

    #[test]
    fn one_answer_per_connection_then_close() {
        let addr = endpoint();
        let two = b"GET /healthz HTTP/1.1\r\n\r\nGET /nothing HTTP/1.1\r\n\r\n";
        let answer = exchange(addr, two).unwrap();
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
        assert!(
            answer.ends_with("\r\n\r\nok\n"),
            "the pipelined request was answered: {answer}"
        );

        let mut long = b"GET /healthz HTTP/1.1\r\nX: ".to_vec();
        long.resize(2 * MAX_HEAD, b'a');
        long.extend_from_slice(b"\r\n\r\n");
        let answer = exchange(addr, &long).unwrap();
        assert!(answer.starts_with("HTTP/1.1 431 "), "{answer}");
        assert!(
            answer.ends_with("\r\n\r\nrequest head longer than 8192 bytes\n"),
            "{answer}"
        );

        let answer = exchange(addr, b"\x16\x03\x01 hello\r\n\r\n").unwrap();
        assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
    }

    #[test]
    fn connections_beyond_the_cap_are_closed_at_once() {
        let addr = endpoint();
        let mut idle: Vec<TcpStream> = (0..MAX_CONNECTIONS)
            .map(|_| TcpStream::connect(addr).unwrap())
            .collect();
        let started = Instant::now();
        let refused = exchange(addr, b"GET /healthz HTTP/1.1\r\n\r\n");
        assert!(
            matches!(&refused, Ok(a) if a.is_empty())
                || matches!(&refused, Err(e) if e.kind() == io::ErrorKind::ConnectionReset),
            "{refused:?}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "it waited for a slot"
        );

        // A client that goes gives its place back.
        idle.pop();
        let mut answer = String::new();
        for _ in 0..50 {
            answer = exchange(addr, b"GET /healthz HTTP/1.1\r\n\r\n").unwrap_or_default();
            if !answer.is_empty() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(answer.ends_with("\r\n\r\nok\n"), "{answer:?}");
    }
}
