//! A forwarding TCP proxy that records the head of every HTTP request on its way to a
//! storage test server: where the server ignores a header (s3s-fs stores no encryption
//! settings, fake-gcs-server no KMS key, Azurite over http no token), the test still
//! sees that the connector sent it. Requests are parsed only to find where one ends
//! (`Content-Length`); bytes pass unchanged both ways, keep-alive included. The first
//! [`BODY_KEPT`] bytes of each body are kept (a JSON resource, a multipart head).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;

use super::fake_http::Request;

/// How much of each request body is recorded.
pub const BODY_KEPT: usize = 4096;

pub struct CaptureProxy {
    port: u16,
    seen: Arc<Mutex<Vec<Request>>>,
}

impl CaptureProxy {
    /// Listens on a free port of 127.0.0.1 and forwards to `upstream` (`host:port`).
    pub fn start(upstream: &str) -> CaptureProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen: Arc<Mutex<Vec<Request>>> = Arc::default();
        let log = seen.clone();
        let upstream = upstream.to_string();
        thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(&upstream) else {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                };
                let (to_server, to_client) =
                    (server.try_clone().unwrap(), client.try_clone().unwrap());
                let log = log.clone();
                thread::spawn(move || forward_requests(client, to_server, log));
                thread::spawn(move || {
                    let mut server = server;
                    let mut client = to_client;
                    let _ = std::io::copy(&mut server, &mut client);
                    let _ = client.shutdown(Shutdown::Write);
                });
            }
        });
        CaptureProxy { port, seen }
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Every request forwarded so far, with the start of its body.
    pub fn requests(&self) -> Vec<Request> {
        self.seen.lock().unwrap().clone()
    }
}

/// Copies requests from `client` to `server`, recording each head. A body without a
/// `Content-Length` (chunked) ends the parsing; the rest is copied as it comes.
fn forward_requests(client: TcpStream, mut server: TcpStream, log: Arc<Mutex<Vec<Request>>>) {
    let mut reader = BufReader::new(client);
    loop {
        let mut head = Vec::new();
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => {
                    let _ = server.write_all(&head);
                    let _ = server.shutdown(Shutdown::Write);
                    return;
                }
                Ok(_) => {}
            }
            head.extend_from_slice(line.as_bytes());
            if line == "\r\n" || line == "\n" {
                break;
            }
            lines.push(line.trim_end().to_string());
        }
        let mut parts = lines
            .first()
            .map(|l| l.split_whitespace())
            .into_iter()
            .flatten();
        let (method, target) = (
            parts.next().unwrap_or_default().to_string(),
            parts.next().unwrap_or_default().to_string(),
        );
        let headers: Vec<(String, String)> = lines
            .iter()
            .skip(1)
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect();
        let header = |name: &str| {
            headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.clone())
        };
        let len: Option<u64> = header("content-length").and_then(|v| v.parse().ok());
        let chunked = header("transfer-encoding").is_some();
        if server.write_all(&head).is_err() {
            return;
        }
        if chunked {
            log.lock().unwrap().push(Request {
                method,
                target,
                headers,
                body: String::new(),
            });
            let _ = std::io::copy(&mut reader, &mut server);
            let _ = server.shutdown(Shutdown::Write);
            return;
        }
        let mut left = len.unwrap_or(0);
        let mut kept = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        while left > 0 {
            let want = buf.len().min(left as usize);
            let n = match reader.read(&mut buf[..want]) {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            if kept.len() < BODY_KEPT {
                kept.extend_from_slice(&buf[..n.min(BODY_KEPT - kept.len())]);
            }
            if server.write_all(&buf[..n]).is_err() {
                return;
            }
            left -= n as u64;
        }
        let body = String::from_utf8_lossy(&kept).into_owned();
        log.lock().unwrap().push(Request {
            method,
            target,
            headers,
            body,
        });
    }
}
