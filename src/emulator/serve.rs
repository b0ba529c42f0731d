//! How the emulator answers each request: the feed, downloads and deletes, with the
//! faults and latency of its configuration.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::data::{self, RecordingReader};
use super::feed::{self, Query, SyncRequest};
use super::http::{lock, Body, BodyFault, Request, Response};
use super::{FeedItem, Item, PageRef, RequestRecord, Shared, State};

pub(super) fn content_of(st: &State, path: &str) -> Option<Vec<u8>> {
    if let Some(b) = st.injected_content.get(path) {
        return Some(b.clone());
    }
    match resolve(st, path)? {
        Content::Bytes(b) => Some(b),
        Content::Recording(task, rec) => {
            let t = &st.account.tasks[task];
            Some(data::recording_bytes(&t.recordings[rec]))
        }
    }
}

fn error(status: u16, error: &str, message: &str) -> Response {
    Response::json(status, &json!({"error": error, "message": message}))
}

/// What a GET path serves.
enum Content {
    Bytes(Vec<u8>),
    /// (task index, recording index): streamed.
    Recording(usize, usize),
}

/// Resolves a generated path, ignoring deletions.
fn resolve(st: &State, path: &str) -> Option<Content> {
    let parts: Vec<&str> = path.strip_prefix('/')?.split('/').collect();
    match parts.as_slice() {
        ["task", id, "meta"] => st.account.find(id).map(|t| Content::Bytes(t.metadata())),
        ["task", id, "history"] => st.account.find(id)?.history().map(Content::Bytes),
        ["task", "transcription", id, rec] => {
            let t = st.account.find(id)?;
            t.transcription(t.recording(rec)?).map(Content::Bytes)
        }
        ["recording-direct", id, rec] => {
            let i = st.account.index(id)?;
            let r = st.account.tasks[i]
                .recordings
                .iter()
                .position(|r| r.id == *rec)?;
            Some(Content::Recording(i, r))
        }
        _ => None,
    }
}

enum Fault {
    None,
    ServerError(u16),
    TooMany(u64),
}

pub(super) fn handle(shared: &Arc<Shared>, req: &Request) -> Response {
    shared.first_request.get_or_init(Instant::now);
    if !shared.latency.is_zero() {
        std::thread::sleep(shared.latency);
    }
    let (authorized, fault, body_fault, spike, raw) = {
        let mut st = lock(&shared.state);
        let expected = format!("Bearer {}", st.token);
        let authorized = req.header("authorization") == Some(expected.as_str());
        let raw = match (authorized, req.method.as_str(), req.path.as_str()) {
            (false, _, _) => None,
            (true, "POST", "/task/sync/") => st.feed_raw.pop_front(),
            (true, "GET", path) => st.download_raw.get_mut(path).and_then(VecDeque::pop_front),
            _ => None,
        };
        let f = st.faults.clone();
        let fault = if st.rng.chance(f.server_error) {
            Fault::ServerError(*st.rng.pick(&[500, 502, 503]))
        } else if st.rng.chance(f.too_many) {
            Fault::TooMany(f.retry_after_secs)
        } else {
            Fault::None
        };
        let body_fault = if st.rng.chance(f.drop_body) {
            BodyFault::Drop
        } else if st.rng.chance(f.stall_body) {
            BodyFault::Stall(f.stall_for)
        } else {
            BodyFault::None
        };
        let spike = if st.rng.chance(f.spike) {
            f.spike_latency
        } else {
            Duration::ZERO
        };
        (authorized, fault, body_fault, spike, raw)
    };
    if !spike.is_zero() {
        std::thread::sleep(spike);
    }
    let mut resp = if let Some(raw) = raw {
        Response::raw(raw)
    } else if !authorized {
        error(
            401,
            "unauthorized",
            "the Bearer token is missing, wrong or revoked",
        )
    } else {
        match fault {
            Fault::ServerError(code) => error(code, "server error", "injected fault"),
            Fault::TooMany(secs) => {
                let mut r = error(429, "too many requests", "injected fault");
                r.headers.push(("Retry-After".into(), secs.to_string()));
                r
            }
            Fault::None => route(shared, req),
        }
    };
    if authorized && matches!(fault, Fault::None) {
        resp.fault = body_fault;
    }
    let (method, path, status) = (req.method.clone(), req.path.clone(), resp.status);
    let inner = resp.on_sent.take();
    let log_shared = shared.clone();
    resp.on_sent = Some(Box::new(move |bytes, complete| {
        if let Some(f) = inner {
            f(bytes, complete);
        }
        lock(&log_shared.state).requests.push(RequestRecord {
            method,
            path,
            status,
            bytes,
            complete,
        });
    }));
    resp
}

fn route(shared: &Arc<Shared>, req: &Request) -> Response {
    let path = req.path.as_str();
    let method = req.method.as_str();
    let wrong_method = |allowed: &str| {
        error(
            405,
            "method not allowed",
            &format!("{path} answers {allowed} only"),
        )
    };
    if path == "/task/sync/" {
        return if method == "POST" {
            sync(shared, req)
        } else {
            wrong_method("POST")
        };
    }
    if path.starts_with("/recording/") {
        return if method == "DELETE" {
            delete(shared, path)
        } else {
            wrong_method("DELETE")
        };
    }
    match method {
        "GET" => download(shared, path),
        _ => error(404, "not found", &format!("nothing at {path}")),
    }
}

/// The due date of a feed item, when known.
fn due_of(st: &State, item: Item) -> Option<i64> {
    match item {
        Item::Task(i) => Some(st.account.tasks[i].due),
        Item::Injected(i) => st.injected[i].due,
    }
}

fn item_matches(st: &State, q: &Query, item: Item) -> bool {
    match item {
        Item::Task(i) => feed::matches(q, &st.account.tasks[i]),
        Item::Injected(_) => true,
    }
}

fn sync(shared: &Arc<Shared>, req: &Request) -> Response {
    let parsed = match feed::parse_sync_body(&req.body) {
        Ok(p) => p,
        Err(msg) => return error(400, "bad request", &msg),
    };
    let mut st = lock(&shared.state);
    let (query, start, count, replayed) = match parsed {
        SyncRequest::Query(q, count) => {
            let start = match st.cursors.get(&q.tag) {
                Some(&c) => c,
                None => {
                    let from = q.start_from.map(|ms| {
                        st.feed
                            .iter()
                            .position(|f| due_of(&st, f.item).is_none_or(|d| d >= ms))
                            .unwrap_or(st.feed.len())
                    });
                    let c = from.unwrap_or(0);
                    st.cursors.insert(q.tag.clone(), c);
                    c
                }
            };
            (Arc::new(*q), start, count, None)
        }
        SyncRequest::Page(token, count) => {
            if st.expired.contains(&token) {
                return error(
                    400,
                    "bad request",
                    "the page token expired; start a new round with the query",
                );
            }
            match st.pages.get(&token) {
                Some(p) => (p.query.clone(), p.start, count, Some(token)),
                None => return error(400, "bad request", "unknown page token"),
            }
        }
    };
    let mut tasks = Vec::new();
    let mut pos = start;
    while pos < st.feed.len() && tasks.len() < count {
        let item = st.feed[pos].item;
        if item_matches(&st, &query, item) {
            let task = match item {
                Item::Task(i) => match feed::render_task(&query, &st.account.tasks[i], &st.deleted)
                {
                    Ok(t) => t,
                    Err(msg) => return error(500, "server error", &msg),
                },
                Item::Injected(i) => st.injected[i].task.clone(),
            };
            tasks.push((pos, task));
        }
        pos += 1;
    }
    let end = pos;
    let more = (end..st.feed.len()).any(|p| item_matches(&st, &query, st.feed[p].item));
    let mut body = json!({"result": tasks.iter().map(|(_, t)| t.clone()).collect::<Vec<_>>()});
    if more {
        let earlier = replayed
            .as_ref()
            .and_then(|t| st.pages.get(t)?.next.clone());
        let token = match earlier {
            Some((e, token)) if e == end && st.pages.contains_key(&token) => token,
            _ => {
                st.token_serial += 1;
                let entropy = st.rng.next_u64();
                let token = format!("pg{}-{entropy:016x}", st.token_serial);
                let page = PageRef {
                    query: query.clone(),
                    start: end,
                    next: None,
                };
                st.pages.insert(token.clone(), page);
                if let Some(p) = replayed.as_ref().and_then(|t| st.pages.get_mut(t)) {
                    p.next = Some((end, token.clone()));
                }
                token
            }
        };
        body["next"] = json!(token);
    }
    drop(st);
    let mut resp = Response::json(200, &body);
    let done_shared = shared.clone();
    let tag = query.tag.clone();
    resp.on_sent = Some(Box::new(move |_, complete| {
        if complete {
            page_delivered(&done_shared, &tag, end, tasks);
        }
    }));
    resp
}

/// A page's body was fully written: move the cursor, record the tasks, draw re-deliveries.
fn page_delivered(shared: &Shared, tag: &str, end: usize, tasks: Vec<(usize, Value)>) {
    let mut st = lock(&shared.state);
    let cursor = st.cursors.entry(tag.to_string()).or_insert(0);
    *cursor = (*cursor).max(end);
    for (pos, task) in tasks {
        if let Some(dels) = task.get("delete").and_then(Value::as_array) {
            for p in dels.iter().filter_map(|d| d.get("path")?.as_str()) {
                st.delete_owner.insert(p.to_string(), task.clone());
            }
        }
        st.handed_out.push(task);
        let item = st.feed[pos];
        if !item.redelivery && matches!(item.item, Item::Task(_)) && st.redelivery_drawn.insert(pos)
        {
            let r = shared.redeliver;
            if st.rng.chance(r) {
                st.feed.push(FeedItem {
                    item: item.item,
                    redelivery: true,
                });
            }
        }
    }
}

fn download(shared: &Arc<Shared>, path: &str) -> Response {
    let mut st = lock(&shared.state);
    let chunked = st.rng.chance(shared.chunked);
    let recording_deleted = |st: &State| {
        path.strip_prefix("/recording-direct/")
            .is_some_and(|rest| st.deleted.contains(&format!("/recording/{rest}")))
    };
    let resp = if let Some(b) = st.injected_content.get(path) {
        if recording_deleted(&st) {
            return error(404, "not found", &format!("{path} was deleted"));
        }
        Response::new(200, "application/octet-stream", b.clone())
    } else {
        match resolve(&st, path) {
            None => return error(404, "not found", &format!("nothing at {path}")),
            Some(_) if recording_deleted(&st) => {
                return error(404, "not found", &format!("{path} was deleted"))
            }
            Some(Content::Bytes(b)) => Response::new(200, "application/json", b),
            Some(Content::Recording(t, r)) => {
                let rec = &st.account.tasks[t].recordings[r];
                let body = Body::Reader {
                    len: rec.size,
                    reader: Box::new(RecordingReader::new(rec)),
                };
                Response {
                    body,
                    ..Response::new(200, "audio/ogg", Vec::new())
                }
            }
        }
    };
    Response { chunked, ..resp }
}

/// The delete paths a path may name: a generated recording, or an injected task's delete.
fn deletable(st: &State, path: &str) -> bool {
    if st
        .injected
        .iter()
        .any(|i| i.delete_paths.iter().any(|p| p == path))
    {
        return true;
    }
    let rest = &path["/recording/".len()..];
    matches!(
        resolve(st, &format!("/recording-direct/{rest}")),
        Some(Content::Recording(..))
    )
}

/// A DELETE hit by a cut or stall still deletes; only its answer is lost.
fn delete(shared: &Arc<Shared>, path: &str) -> Response {
    let owner = {
        let st = lock(&shared.state);
        if !deletable(&st, path) {
            return error(404, "not found", &format!("nothing to delete at {path}"));
        }
        if st.deleted.contains(path) {
            return error(404, "not found", &format!("{path} was already deleted"));
        }
        st.delete_owner.get(path).cloned()
    };
    let guard = lock(&shared.guard).clone();
    let mut violation = None;
    match &owner {
        None => violation = Some(format!("DELETE {path}: no page handed out a delete for it")),
        Some(task) => {
            if let Some(g) = guard {
                if !g(task) {
                    let id = task.get("taskId").and_then(Value::as_str).unwrap_or("?");
                    violation = Some(format!(
                        "DELETE {path}: the delete guard refused it (task {id})"
                    ));
                }
            }
        }
    }
    let mut st = lock(&shared.state);
    st.violations.extend(violation);
    if !st.deleted.insert(path.to_string()) {
        return error(404, "not found", &format!("{path} was already deleted"));
    }
    st.deletes.push(path.to_string());
    Response::empty(204)
}
