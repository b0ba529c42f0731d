//! The proxies' two directions on the wire: requests read one at a time (for the
//! inspecting rules and the delay), answers one at a time (for the `Location` rewrite
//! and the muting of an answer lost in flight).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use super::{Locations, Mode, Rules};

/// The shared counters an inspecting pipe updates.
pub(super) struct Counters {
    pub(super) mode: Arc<AtomicU8>,
    pub(super) refused: Arc<AtomicUsize>,
    pub(super) corrupted: Arc<AtomicUsize>,
    pub(super) cut: Arc<AtomicUsize>,
}

/// What a muted pipe does with the server's answer: passes it, drops it, or dropped some.
pub(super) const PASS: u8 = 0;
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
pub(super) fn answer_pipe(
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
pub(super) fn inspect_pipe(
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

/// Client to server, one request at a time: logs its method and target, names its
/// method to the answers' side, holds it `delay` and forwards it.
pub(super) fn forward_requests(
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
