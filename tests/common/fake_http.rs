//! The tests' one fake HTTP server: one request per connection, on a thread, answered
//! by the test's handler and recorded. It stands in for every endpoint no real server
//! can play here: the token endpoints (STS, Entra ID, Google), the metadata services
//! (IMDS, ECS and EKS Pod Identity, App Service, GCE), and a storage that checks a
//! token. Requests are read with the tests' own decoding (`super::codec`).

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

use super::codec::form_decode;

#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// A field of an `application/x-www-form-urlencoded` body, decoded.
    pub fn field(&self, name: &str) -> Option<String> {
        form_decode(&self.body)
            .into_iter()
            .find_map(|(k, v)| (k == name).then_some(v))
    }

    /// A parameter of the target's query, decoded.
    pub fn query(&self, name: &str) -> Option<String> {
        form_decode(self.target.split_once('?')?.1)
            .into_iter()
            .find_map(|(k, v)| (k == name).then_some(v))
    }
}

/// Answers a request with a status and a JSON body.
pub type Handler = Box<dyn Fn(&Request) -> (u16, String) + Send + Sync>;

pub struct FakeServer {
    /// `http://127.0.0.1:PORT`
    pub url: String,
    seen: Arc<Mutex<Vec<Request>>>,
}

impl FakeServer {
    pub fn start(handler: Handler) -> FakeServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let Some(request) = read_request(&mut BufReader::new(stream.try_clone().unwrap()))
                else {
                    continue;
                };
                let (status, body) = handler(&request);
                log.lock().unwrap().push(request);
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        FakeServer { url, seen }
    }

    pub fn requests(&self) -> Vec<Request> {
        self.seen.lock().unwrap().clone()
    }
}

fn read_request(reader: &mut impl BufRead) -> Option<Request> {
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next()?.to_string(), parts.next()?.to_string());
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).unwrap_or(0) == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    let len = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body).ok()?;
    Some(Request {
        method,
        target,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}
