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
