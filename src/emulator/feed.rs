//! The sync feed's request bodies, task filters and task objects, as the contract
//! defines them.
//!
//! Kept apart from the server state so the contract's rules (what a valid body is,
//! which task a filter keeps, what a task object looks like and how the platform names
//! its files) read in one place.

use std::collections::HashSet;

use serde_json::{json, Map, Value};

use super::data::{Kind, Task};
use crate::config::Filters;
use crate::report::Report;
use crate::task::DataType;
use crate::template::{FileNameTemplate, TaskFields};

/// Largest page the platform returns.
pub const MAX_PAGE: usize = 100;

/// A checked `query`.
#[derive(Debug, Clone)]
pub struct Query {
    pub tag: String,
    pub get: Vec<DataType>,
    pub delete_recordings: bool,
    pub template: FileNameTemplate,
    pub start_from: Option<i64>,
    pub filters: Filters,
}

/// A checked body of `POST /task/sync/`, with the page size already capped.
#[derive(Debug)]
pub enum SyncRequest {
    Query(Box<Query>, usize),
    Page(String, usize),
}

fn string_list(q: &Map<String, Value>, key: &str) -> Result<Vec<String>, String> {
    let Some(v) = q.get(key) else {
        return Err(format!(
            "query.{key} is missing (the six filter lists are always sent, empty when unset)"
        ));
    };
    let Some(items) = v.as_array() else {
        return Err(format!("query.{key} must be a list of strings, not {v}"));
    };
    items
        .iter()
        .map(|i| {
            i.as_str()
                .map(str::to_string)
                .ok_or_else(|| format!("query.{key} holds a non-string: {i}"))
        })
        .collect()
}

fn string_field<'a>(q: &'a Map<String, Value>, key: &str) -> Result<&'a str, String> {
    match q.get(key) {
        Some(Value::String(s)) => Ok(s),
        Some(v) => Err(format!("query.{key} must be a string, not {v}")),
        None => Err(format!("query.{key} is missing")),
    }
}

fn types(list: &str, key: &str) -> Result<Vec<DataType>, String> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| DataType::parse(s).ok_or_else(|| format!("query.{key}: unknown data type {s:?}")))
        .collect()
}

/// Checks a request body; the error is the message of the 400 answer.
pub fn parse_sync_body(body: &[u8]) -> Result<SyncRequest, String> {
    let v: Value =
        serde_json::from_slice(body).map_err(|e| format!("the body is not JSON: {e}"))?;
    let Some(obj) = v.as_object() else {
        return Err("the body must be a JSON object".into());
    };
    let count = match obj.get("count") {
        Some(c) => c
            .as_i64()
            .ok_or_else(|| format!("count must be an integer, not {c}"))?,
        None => return Err("count is missing".into()),
    };
    if count < 1 {
        return Err(format!("count must be at least 1, not {count}"));
    }
    let count = (count as usize).min(MAX_PAGE);
    match (obj.get("query"), obj.get("page")) {
        (Some(_), Some(_)) => Err("send either query or page, not both".into()),
        (None, None) => Err("the body needs a query or a page".into()),
        (None, Some(Value::String(p))) => Ok(SyncRequest::Page(p.clone(), count)),
        (None, Some(p)) => Err(format!("page must be a string token, not {p}")),
        (Some(q), None) => {
            let Some(q) = q.as_object() else {
                return Err("query must be an object".into());
            };
            let tag = string_field(q, "tag")?;
            if tag.is_empty() {
                return Err("query.tag is empty".into());
            }
            let get = types(string_field(q, "get")?, "get")?;
            let delete = types(string_field(q, "delete")?, "delete")?;
            if let Some(t) = delete.iter().find(|t| **t != DataType::Recordings) {
                return Err(format!(
                    "query.delete: only Recordings can be deleted, not {}",
                    t.name()
                ));
            }
            let source = string_field(q, "fileNameTemplate")?;
            let template = FileNameTemplate::parse(source)
                .map_err(|e| format!("query.fileNameTemplate: {}", Report(&e)))?;
            let start_from = match q.get("startFrom") {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) => Some(s.parse::<i64>().map_err(|_| {
                    format!("query.startFrom must be milliseconds as a decimal string, not {s:?}")
                })?),
                Some(v) => {
                    return Err(format!("query.startFrom must be a decimal string, not {v}"))
                }
            };
            Ok(SyncRequest::Query(
                Box::new(Query {
                    tag: tag.to_string(),
                    get,
                    delete_recordings: !delete.is_empty(),
                    template,
                    start_from,
                    filters: Filters {
                        skills_must: string_list(q, "skillsMust")?,
                        skills_should: string_list(q, "skillsShould")?,
                        skills_must_not: string_list(q, "skillsMustNot")?,
                        hashtags_must: string_list(q, "hashTagsMust")?,
                        hashtags_should: string_list(q, "hashTagsShould")?,
                        hashtags_must_not: string_list(q, "hashTagsMustNot")?,
                    },
                }),
                count,
            ))
        }
    }
}

fn hashtag_matches(filter: &str, task: &Task) -> bool {
    let (uuid, value) = match filter.split_once(':') {
        Some((u, v)) => (u, Some(v)),
        None => (filter, None),
    };
    task.hashtags
        .iter()
        .any(|(u, v)| u.eq_ignore_ascii_case(uuid) && (value.is_none() || v.as_deref() == value))
}

/// Whether the query's six filters keep the task.
pub fn matches(q: &Query, task: &Task) -> bool {
    let q = &q.filters;
    let skill = |s: &String| task.skills.contains(s);
    let tag = |h: &String| hashtag_matches(h, task);
    q.skills_must.iter().all(skill)
        && (q.skills_should.is_empty() || q.skills_should.iter().any(skill))
        && !q.skills_must_not.iter().any(skill)
        && q.hashtags_must.iter().all(tag)
        && (q.hashtags_should.is_empty() || q.hashtags_should.iter().any(tag))
        && !q.hashtags_must_not.iter().any(tag)
}

fn own_metadata(kind: Kind) -> DataType {
    match kind {
        Kind::Call => DataType::CallMetadata,
        Kind::Chat => DataType::ChatMetadata,
        Kind::Sms => DataType::SmsMetadata,
        Kind::Email => DataType::EmailMetadata,
        Kind::Workflow => DataType::WorkflowMetadata,
    }
}

pub fn recording_path(task: &Task, rec: &str) -> String {
    format!("/recording-direct/{}/{rec}", task.id)
}

pub fn delete_path(task: &Task, rec: &str) -> String {
    format!("/recording/{}/{rec}", task.id)
}

/// The task object the platform sends for this query. `deleted` holds the delete
/// paths already done: those recordings get no delete entry any more.
pub fn render_task(q: &Query, task: &Task, deleted: &HashSet<String>) -> Result<Value, String> {
    let fields = TaskFields {
        task_id: &task.id,
        due_date: Some(task.due),
        call_from: task.call_from.as_deref(),
        call_to: task.call_to.as_deref(),
    };
    let base = q
        .template
        .render(&fields)
        .map_err(|e| format!("task {}: {}", task.id, Report(&e)))?;
    let old = task.old_platform;
    let entry = |t: DataType, k: usize, rec: Option<&str>, path: String| {
        let mut e = Map::new();
        if !old {
            e.insert("dataType".into(), json!(t.name()));
            if let Some(r) = rec {
                e.insert("recordingId".into(), json!(r));
            }
        }
        e.insert("path".into(), json!(path));
        e.insert("fileName".into(), json!(format!("{base}{}", t.suffix(k))));
        Value::Object(e)
    };
    let wants = |t: DataType| q.get.contains(&t);
    let mut get = Vec::new();
    let own = own_metadata(task.kind);
    let meta = if wants(own) {
        Some(own)
    } else if wants(DataType::CommonMetadata) {
        Some(DataType::CommonMetadata)
    } else {
        None
    };
    if let Some(t) = meta {
        get.push(entry(t, 1, None, format!("/task/{}/meta", task.id)));
    }
    if task.kind == Kind::Chat && wants(DataType::ChatHistory) {
        get.push(entry(
            DataType::ChatHistory,
            1,
            None,
            format!("/task/{}/history", task.id),
        ));
    }
    let mut delete = Vec::new();
    for (i, rec) in task.recordings.iter().enumerate() {
        let k = i + 1;
        if wants(DataType::Recordings) {
            get.push(entry(
                DataType::Recordings,
                k,
                Some(&rec.id),
                recording_path(task, &rec.id),
            ));
        }
        if rec.transcribed && wants(DataType::Transcriptions) {
            let path = format!("/task/transcription/{}/{}", task.id, rec.id);
            get.push(entry(DataType::Transcriptions, k, Some(&rec.id), path));
        }
        let del = delete_path(task, &rec.id);
        if q.delete_recordings && !deleted.contains(&del) {
            delete.push(json!({ "path": del }));
        }
    }
    let mut t = Map::new();
    t.insert("taskId".into(), json!(task.id));
    if !old {
        t.insert("dueDate".into(), json!(task.due));
        if let (Some(from), Some(to)) = (&task.call_from, &task.call_to) {
            t.insert("callFrom".into(), json!(from));
            t.insert("callTo".into(), json!(to));
        }
    }
    t.insert("get".into(), Value::Array(get));
    t.insert("delete".into(), Value::Array(delete));
    Ok(Value::Object(t))
}
