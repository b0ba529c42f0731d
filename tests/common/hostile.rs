//! A hostile platform: the task-sync API as the contract allows it to be abused.
//!
//! The emulator is an honest platform that can fail; this one serves tasks a test
//! writes by hand and misbehaves in the ways a buggy release, a load balancer or an
//! attacker would: deletes nobody asked for, pages far longer than asked, bodies
//! without framing, endless or trickling bodies, error pages that echo the request,
//! answers to the query cut after the cursor moved, connections dropped on sight.
//!
//! The feed is a list of tasks with a cursor that moves as soon as a page is
//! answered (as the contract allows); a page token names an offset and may be
//! replayed. Every request is recorded, so a test checks what the connector sent
//! (above all its DELETEs). One connection per request (`Connection: close`).

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde_json::{json, Value};

/// How the feed (`POST /task/sync/`) answers.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum FeedMode {
    /// As the contract says: at most `count` tasks (and at most 100), a `next` token
    /// while more are ready.
    #[default]
    Honest,
    /// Every answer holds this many tasks (or all that are left), whatever `count`.
    IgnoreCount(usize),
    /// The answers to the next `n` queries move the cursor, send their headers and
    /// half the body, and close the connection: the page is lost on the way.
    CutQueryAnswers(usize),
    /// Every connection is closed as soon as its request has been read.
    DropConnections,
    /// Every answer is this status with a body that echoes the request's headers
    /// (as WAF and proxy error pages do), the `Authorization` header among them.
    EchoHeaders(u16),
    /// Answers to queries wait this long after moving the cursor (pages by token
    /// answer at once): a window in which to stop the connector.
    DelayQueryAnswers(Duration),
}

/// How a download (`GET <path>`) answers.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum DownloadMode {
    /// `200` with `Content-Length`.
    #[default]
    Whole,
    /// `200` with neither `Content-Length` nor chunked coding: the body ends when the
    /// connection closes; `cut_after` closes it after that many bytes.
    CloseDelimited { cut_after: Option<usize> },
    /// `200` chunked, with chunks of the content repeated forever.
    EndlessChunked,
    /// `200` with the full `Content-Length`, one byte every `every`.
    Trickle { every: Duration },
    /// This status with a body that echoes the request's headers.
    EchoHeaders(u16),
    /// `200` chunked, the chunks of the first `cut_after` bytes, then the connection
    /// closes without the last (empty) chunk.
    CutChunked { cut_after: usize },
    /// `200` announcing this `Content-Length` and sending none of it: the headers, then
    /// silence until the client hangs up (a client that reads the body stalls).
    HeadersOnly { content_length: u64 },
    /// This mode for the next GET of the path, `Whole` for every later one (a retry
    /// that follows at once finds the path already switched).
    FirstThenWhole(Box<DownloadMode>),
}

/// One request as the hostile platform read it (header names lower-case).
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Seen {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

#[derive(Default)]
struct State {
    tasks: Vec<Value>,
    /// Index of the first task not handed out yet.
    cursor: usize,
    contents: HashMap<String, Vec<u8>>,
    feed_mode: FeedMode,
    download_modes: HashMap<String, DownloadMode>,
    seen: Vec<Seen>,
}

pub struct HostilePlatform {
    /// `http://127.0.0.1:PORT`
    pub url: String,
    state: Arc<Mutex<State>>,
}

impl HostilePlatform {
    /// Starts serving on a free port of 127.0.0.1; the server lives as long as the
    /// test process (each test starts its own).
    pub fn start() -> HostilePlatform {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(State::default()));
        let shared = state.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let state = shared.clone();
                std::thread::spawn(move || serve(stream, &state));
            }
        });
        HostilePlatform { url, state }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a task to the feed, with the content of its downloads by path.
    pub fn add_task(&self, task: Value, contents: Vec<(String, Vec<u8>)>) {
        let mut st = self.lock();
        st.tasks.push(task);
        st.contents.extend(contents);
    }

    pub fn set_feed_mode(&self, mode: FeedMode) {
        self.lock().feed_mode = mode;
    }

    pub fn set_download_mode(&self, path: &str, mode: DownloadMode) {
        self.lock().download_modes.insert(path.to_string(), mode);
    }

    pub fn requests(&self) -> Vec<Seen> {
        self.lock().seen.clone()
    }

    /// The bodies of the feed requests, in order.
    pub fn feed_requests(&self) -> Vec<Value> {
        self.requests()
            .into_iter()
            .filter(|s| s.method == "POST")
            .map(|s| s.json())
            .collect()
    }

    /// The paths of every DELETE received, in order.
    pub fn deletes(&self) -> Vec<String> {
        self.requests()
            .into_iter()
            .filter(|s| s.method == "DELETE")
            .map(|s| s.path)
            .collect()
    }

    /// The GETs received for `path`.
    pub fn downloads_of(&self, path: &str) -> usize {
        self.requests()
            .iter()
            .filter(|s| s.method == "GET" && s.path == path)
            .count()
    }

    /// Tasks not handed out yet.
    pub fn left(&self) -> usize {
        let st = self.lock();
        st.tasks.len() - st.cursor
    }
}

/// A call task with one recording `r` (and its delete) and its metadata, named by
/// the platform under `name`; the content of both files by path.
pub fn call_task(id: &str, name: &str, recording: &[u8]) -> (Value, Vec<(String, Vec<u8>)>) {
    let rec = format!("/recording-direct/{id}/r1");
    let meta = format!("/task/{id}/meta");
    let task = json!({
        "taskId": id,
        "dueDate": 1_101_902_400_000i64,
        "get": [
            {"dataType": "CallMetadata", "path": meta, "fileName": format!("{name}.meta.json")},
            {"dataType": "Recordings", "recordingId": "r1", "path": rec, "fileName": format!("{name}.ogg")}
        ],
        "delete": [{"path": format!("/recording/{id}/r1")}]
    });
    let meta_body = json!({"taskId": id}).to_string().into_bytes();
    (task, vec![(meta, meta_body), (rec, recording.to_vec())])
}

fn serve(stream: TcpStream, state: &Arc<Mutex<State>>) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let Some(seen) = read_request(&mut BufReader::new(&stream)) else {
        return;
    };
    let lock = || state.lock().unwrap_or_else(|e| e.into_inner());
    lock().seen.push(seen.clone());
    let mut out = stream;
    if seen.method == "POST" && seen.path == "/task/sync/" {
        answer_feed(&mut out, &seen, lock);
    } else if seen.method == "GET" {
        let (mode, content) = {
            let mut st = lock();
            let mode = st
                .download_modes
                .get(&seen.path)
                .cloned()
                .unwrap_or_default();
            if let DownloadMode::FirstThenWhole(_) = mode {
                st.download_modes
                    .insert(seen.path.clone(), DownloadMode::Whole);
            }
            (mode, st.contents.get(&seen.path).cloned())
        };
        match content {
            Some(body) => answer_download(&mut out, &seen, mode, &body),
            None => respond(&mut out, "404 Not Found", "", b""),
        }
    } else if seen.method == "DELETE" {
        respond(&mut out, "204 No Content", "", b"");
    } else {
        respond(&mut out, "405 Method Not Allowed", "", b"");
    }
    let _ = out.shutdown(Shutdown::Both);
}

fn answer_feed<'a>(out: &mut TcpStream, seen: &Seen, lock: impl Fn() -> MutexGuard<'a, State>) {
    let request = seen.json();
    let mut st = lock();
    match st.feed_mode.clone() {
        FeedMode::DropConnections => return,
        FeedMode::EchoHeaders(status) => {
            drop(st);
            return echo(out, status, seen);
        }
        _ => {}
    }
    let is_query = request.get("query").is_some();
    let from = match request.get("page").and_then(Value::as_str) {
        None => st.cursor,
        Some(token) => match token.strip_prefix("at-").and_then(|n| n.parse().ok()) {
            Some(offset) => offset,
            None => {
                drop(st);
                return respond(out, "400 Bad Request", "", b"{\"error\":\"bad token\"}");
            }
        },
    };
    let count = request["count"].as_u64().unwrap_or(50) as usize;
    let take = match st.feed_mode {
        FeedMode::IgnoreCount(n) => n,
        _ => count.min(100),
    };
    let from = from.min(st.tasks.len());
    let until = (from + take).min(st.tasks.len());
    let page: Vec<Value> = st.tasks[from..until].to_vec();
    // The cursor moves as soon as the page is answered.
    st.cursor = st.cursor.max(until);
    let mut body = json!({ "result": page });
    if until < st.tasks.len() {
        body["next"] = json!(format!("at-{until}"));
    }
    let body = body.to_string().into_bytes();
    if is_query {
        if let FeedMode::CutQueryAnswers(n) = st.feed_mode {
            if n > 0 {
                st.feed_mode = match n - 1 {
                    0 => FeedMode::Honest,
                    left => FeedMode::CutQueryAnswers(left),
                };
                drop(st);
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = out.write_all(head.as_bytes());
                let _ = out.write_all(&body[..body.len() / 2]);
                return;
            }
        }
    }
    let delay = match st.feed_mode {
        FeedMode::DelayQueryAnswers(d) if is_query => d,
        _ => Duration::ZERO,
    };
    drop(st);
    std::thread::sleep(delay);
    respond(out, "200 OK", "Content-Type: application/json\r\n", &body);
}

fn answer_download(out: &mut TcpStream, seen: &Seen, mode: DownloadMode, body: &[u8]) {
    let ogg = "Content-Type: audio/ogg\r\nConnection: close\r\n";
    match mode {
        DownloadMode::Whole => respond(out, "200 OK", "Content-Type: audio/ogg\r\n", body),
        DownloadMode::CloseDelimited { cut_after } => {
            let _ = write!(out, "HTTP/1.1 200 OK\r\n{ogg}\r\n");
            let n = cut_after.unwrap_or(body.len()).min(body.len());
            let _ = out.write_all(&body[..n]);
        }
        DownloadMode::EndlessChunked => {
            let _ = write!(
                out,
                "HTTP/1.1 200 OK\r\n{ogg}Transfer-Encoding: chunked\r\n\r\n"
            );
            let chunk: Vec<u8> = body.iter().copied().cycle().take(64 * 1024).collect();
            loop {
                let sent = write!(out, "{:x}\r\n", chunk.len())
                    .and_then(|_| out.write_all(&chunk))
                    .and_then(|_| out.write_all(b"\r\n"));
                if sent.is_err() {
                    return;
                }
            }
        }
        DownloadMode::Trickle { every } => {
            let _ = write!(
                out,
                "HTTP/1.1 200 OK\r\n{ogg}Content-Length: {}\r\n\r\n",
                body.len()
            );
            for b in body {
                std::thread::sleep(every);
                if out.write_all(&[*b]).is_err() {
                    return;
                }
            }
        }
        DownloadMode::EchoHeaders(status) => echo(out, status, seen),
        DownloadMode::CutChunked { cut_after } => {
            let _ = write!(
                out,
                "HTTP/1.1 200 OK\r\n{ogg}Transfer-Encoding: chunked\r\n\r\n"
            );
            for chunk in body[..cut_after.min(body.len())].chunks(4096) {
                let _ = write!(out, "{:x}\r\n", chunk.len());
                let _ = out.write_all(chunk);
                let _ = out.write_all(b"\r\n");
            }
        }
        DownloadMode::HeadersOnly { content_length } => {
            let _ = write!(
                out,
                "HTTP/1.1 200 OK\r\n{ogg}Content-Length: {content_length}\r\n\r\n"
            );
            let _ = out.flush();
            // Until the client hangs up (or the read timeout of `serve`).
            let _ = std::io::Read::read(out, &mut [0u8; 1]);
        }
        DownloadMode::FirstThenWhole(first) => answer_download(out, seen, *first, body),
    }
}

/// An error page that repeats what it was sent, headers included.
fn echo(out: &mut TcpStream, status: u16, seen: &Seen) {
    let mut text = format!(
        "<html><body>Request blocked. You sent {} {} with ",
        seen.method, seen.path
    );
    for (name, value) in &seen.headers {
        text.push_str(&format!("{name}: {value}; "));
    }
    text.push_str("</body></html>");
    respond(
        out,
        &format!("{status} Blocked"),
        "Content-Type: text/html\r\n",
        text.as_bytes(),
    );
}

fn respond(out: &mut TcpStream, status: &str, headers: &str, body: &[u8]) {
    let _ = write!(
        out,
        "HTTP/1.1 {status}\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = out.write_all(body);
    let _ = out.flush();
}

fn read_request(reader: &mut impl BufRead) -> Option<Seen> {
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next()?.to_string(), parts.next()?.to_string());
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).unwrap_or(0) == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    let len = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0usize);
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body).ok()?;
    Some(Seen {
        method,
        path,
        headers,
        body,
    })
}
