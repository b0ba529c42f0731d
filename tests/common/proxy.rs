//! A TCP proxy between the connector and a storage test server, which a test can
//! switch to "the server is down" (every connection refused and the open ones cut)
//! or "the server refuses us" (403 to every request) and back. fake-gcs-server and
//! Azurite keep their data in memory, so really restarting them would lose it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
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
}

pub struct TcpProxy {
    port: u16,
    mode: Arc<AtomicU8>,
    open: Arc<Mutex<Vec<TcpStream>>>,
    stop: Arc<AtomicBool>,
    /// Connections refused or cut while down, and requests answered 403.
    pub refused: Arc<AtomicUsize>,
}

impl TcpProxy {
    /// Listens on a free port of 127.0.0.1 and forwards to `upstream` (`host:port`).
    pub fn start(upstream: &str) -> TcpProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let proxy = TcpProxy {
            port,
            mode: Arc::new(AtomicU8::new(Mode::Pass as u8)),
            open: Arc::default(),
            stop: Arc::default(),
            refused: Arc::default(),
        };
        let (mode, open, stop, refused) = (
            proxy.mode.clone(),
            proxy.open.clone(),
            proxy.stop.clone(),
            proxy.refused.clone(),
        );
        let upstream = upstream.to_string();
        thread::spawn(move || {
            for client in listener.incoming() {
                if stop.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(client) = client else { continue };
                match mode.load(Ordering::SeqCst) {
                    0 => {
                        let Ok(server) = TcpStream::connect(&upstream) else {
                            continue;
                        };
                        let mut o = open.lock().unwrap();
                        o.push(client.try_clone().unwrap());
                        o.push(server.try_clone().unwrap());
                        drop(o);
                        pipe(client.try_clone().unwrap(), server.try_clone().unwrap());
                        pipe(server, client);
                    }
                    1 => {
                        refused.fetch_add(1, Ordering::SeqCst);
                        let _ = client.shutdown(Shutdown::Both);
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
        if mode != Mode::Pass {
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

fn pipe(mut from: TcpStream, mut to: TcpStream) {
    thread::spawn(move || {
        let _ = std::io::copy(&mut from, &mut to);
        let _ = to.shutdown(Shutdown::Write);
    });
}

/// Reads requests (head and `Content-Length` body) and answers each with 403.
fn forbid(client: TcpStream) {
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
        let msg = br#"{"error":{"code":403,"message":"Forbidden (test proxy)"}}"#;
        let head = format!(
            "HTTP/1.1 403 Forbidden\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
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
                pipe(server.try_clone().unwrap(), client.try_clone().unwrap());
                let log = log.clone();
                thread::spawn(move || {
                    let _ = forward_requests(client, server, delay, &log);
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

fn forward_requests(
    client: TcpStream,
    mut server: TcpStream,
    delay: Duration,
    log: &Mutex<Vec<(String, String)>>,
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
        log.lock().unwrap().push((method, target));
        thread::sleep(delay);
        server.write_all(&head)?;
        if chunked {
            loop {
                let mut size_line = String::new();
                reader.read_line(&mut size_line)?;
                server.write_all(size_line.as_bytes())?;
                let size =
                    u64::from_str_radix(size_line.trim().split(';').next().unwrap_or("0"), 16)
                        .unwrap_or(0);
                if size == 0 {
                    // Trailers, up to the empty line.
                    loop {
                        let mut t = String::new();
                        reader.read_line(&mut t)?;
                        server.write_all(t.as_bytes())?;
                        if t == "\r\n" || t == "\n" || t.is_empty() {
                            break;
                        }
                    }
                    break;
                }
                std::io::copy(&mut (&mut reader).take(size + 2), &mut server)?;
            }
        } else if len > 0 {
            std::io::copy(&mut (&mut reader).take(len), &mut server)?;
        }
    }
}
