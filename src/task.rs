//! A task from the sync feed, and the names its files get.
//!
//! Tasks arrive as raw JSON and are read one by one, so one odd task is reported and
//! skipped without hiding the others. The name of each file is the user's template
//! rendered with the task, plus the suffix of its data type (the k-th recording gets
//! `.ogg` or `-k.ogg`, its transcription the matching `.trans.json`); a task without a
//! due date falls back to the platform's own `fileName`. Every name is checked.
//!
//! The official connector always uses the platform's `fileName`. Where both exist they
//! should agree (the platform renders the same template); when they do not, a user who
//! switches connectors would get a second folder tree, so each difference is reported
//! ([`NameDifferences`]) and `SP_TASK_SYNC_NAMES` ([`NameSource`]) says which one wins.

use std::collections::{HashMap, HashSet};
use std::fmt;

use serde::Deserialize;
use serde_json::Value;

use crate::template::{check_name, FileNameTemplate, NameError, TaskFields, TemplateError};

/// The kinds of data the platform can hand out, with their canonical names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DataType {
    CallMetadata,
    Recordings,
    Transcriptions,
    ChatMetadata,
    ChatHistory,
    SmsMetadata,
    EmailMetadata,
    CommonMetadata,
    WorkflowMetadata,
}

impl DataType {
    pub const ALL: [DataType; 9] = [
        DataType::CallMetadata,
        DataType::Recordings,
        DataType::Transcriptions,
        DataType::ChatMetadata,
        DataType::ChatHistory,
        DataType::SmsMetadata,
        DataType::EmailMetadata,
        DataType::CommonMetadata,
        DataType::WorkflowMetadata,
    ];

    pub fn name(self) -> &'static str {
        match self {
            DataType::CallMetadata => "CallMetadata",
            DataType::Recordings => "Recordings",
            DataType::Transcriptions => "Transcriptions",
            DataType::ChatMetadata => "ChatMetadata",
            DataType::ChatHistory => "ChatHistory",
            DataType::SmsMetadata => "SMSMetadata",
            DataType::EmailMetadata => "EmailMetadata",
            DataType::CommonMetadata => "CommonMetadata",
            DataType::WorkflowMetadata => "WorkflowMetadata",
        }
    }

    /// Matches a canonical name case-insensitively.
    pub fn parse(name: &str) -> Option<DataType> {
        DataType::ALL
            .into_iter()
            .find(|t| t.name().eq_ignore_ascii_case(name.trim()))
    }

    /// The file suffix of the k-th item of this type (k from 1; only recordings and
    /// transcriptions have more than one per task).
    pub fn suffix(self, k: usize) -> String {
        let numbered = |ext: &str| {
            if k <= 1 {
                ext.to_string()
            } else {
                format!("-{k}{ext}")
            }
        };
        match self {
            DataType::Recordings => numbered(".ogg"),
            DataType::Transcriptions => numbered(".trans.json"),
            DataType::ChatHistory => ".history.json".to_string(),
            _ => ".meta.json".to_string(),
        }
    }
}

pub fn join_types(types: &[DataType]) -> String {
    types.iter().map(|t| t.name()).collect::<Vec<_>>().join(",")
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Task {
    pub task_id: String,
    #[serde(default)]
    pub due_date: Option<i64>,
    #[serde(default)]
    pub call_from: Option<String>,
    #[serde(default)]
    pub call_to: Option<String>,
    pub get: Vec<GetItem>,
    pub delete: Vec<DeleteItem>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GetItem {
    #[serde(default)]
    pub data_type: Option<String>,
    #[serde(default)]
    pub recording_id: Option<String>,
    pub path: String,
    pub file_name: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct DeleteItem {
    pub path: String,
}

/// What a stored file is, kept with it as user metadata.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObjectInfo {
    /// The platform's task id.
    pub task_id: String,
    /// The data type as the platform names it (`Recordings`, `CallMetadata`, ...).
    pub data_type: String,
}

impl ObjectInfo {
    /// The metadata pairs, the words of each name joined by `sep`: `task-id` and
    /// `data-type` for S3 and GCS (an underscore in a header name is dropped by proxies
    /// such as nginx by default), `task_id` and `data_type` for Azure, whose names must
    /// be C# identifiers. Empty values are left out; values are made printable ASCII
    /// (they travel as header values).
    pub fn metadata(&self, sep: char) -> Vec<(String, String)> {
        [
            (["task", "id"], &self.task_id),
            (["data", "type"], &self.data_type),
        ]
        .into_iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|([a, b], v)| {
            let clean: String = v
                .chars()
                .map(|c| {
                    if c.is_ascii_graphic() || c == ' ' {
                        c
                    } else {
                        '_'
                    }
                })
                .take(256)
                .collect();
            (format!("{a}{sep}{b}"), clean)
        })
        .collect()
    }
}

/// One file to transfer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileJob {
    pub name: String,
    pub path: String,
    /// The name the other source gives (the platform's `fileName`, or the template's
    /// when the platform's wins), when the two differ.
    pub other_name: Option<String>,
    /// The task id and data type, stored with the file as user metadata.
    pub info: ObjectInfo,
    /// The recording's id, for a recording whose id the platform gave.
    pub recording_id: Option<String>,
}

/// Which name a file gets when the template's and the platform's `fileName` differ
/// (`SP_TASK_SYNC_NAMES`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NameSource {
    /// The user's template (the default): the names `render` shows.
    #[default]
    Template,
    /// The platform's own `fileName`, as the official connector writes.
    Platform,
}

impl NameSource {
    pub fn parse(raw: &str) -> Option<NameSource> {
        match raw.trim().to_ascii_lowercase().as_str() {
            "template" => Some(NameSource::Template),
            "platform" => Some(NameSource::Platform),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            NameSource::Template => "template",
            NameSource::Platform => "platform",
        }
    }
}

/// Files of a round whose template name and platform `fileName` differ: logged once
/// per round with one example (the engine counts each in `/metrics`).
#[derive(Default)]
pub struct NameDifferences {
    round: std::sync::Mutex<Option<NameDifference>>,
}

/// What [`NameDifferences::take`] reports for a round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameDifference {
    pub count: u64,
    /// The first file of the round that differed: the name used, the other one.
    pub used: String,
    pub other: String,
}

impl NameDifferences {
    /// Notes `job` when its two names differ; says whether they did.
    pub fn note(&self, job: &FileJob) -> bool {
        let Some(other) = &job.other_name else {
            return false;
        };
        let mut round = self.round.lock().unwrap();
        match round.as_mut() {
            Some(d) => d.count += 1,
            None => {
                *round = Some(NameDifference {
                    count: 1,
                    used: job.name.clone(),
                    other: other.clone(),
                })
            }
        }
        true
    }

    /// The round's differences, and a fresh start for the next round.
    pub fn take(&self) -> Option<NameDifference> {
        self.round.lock().unwrap().take()
    }
}

impl fmt::Display for NameDifference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} file(s) this round were named differently by SP_TASK_SYNC_FILE_NAME_TEMPLATE and by \
             the platform's fileName, e.g. {:?} was stored, the other name is {:?}; \
             SP_TASK_SYNC_NAMES=template|platform chooses which one wins",
            self.count, self.used, self.other
        )
    }
}

#[derive(Debug)]
pub enum TaskError {
    /// The task object is not what the contract describes.
    Malformed {
        excerpt: String,
        reason: String,
    },
    Template(TemplateError),
    BadName {
        name: String,
        problem: NameError,
    },
    DuplicateName(String),
}

impl fmt::Display for TaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TaskError::Malformed { excerpt, reason } => {
                write!(f, "malformed task {excerpt}: {reason}")
            }
            TaskError::Template(e) => e.fmt(f),
            TaskError::BadName { name, .. } => write!(f, "unsafe file name {name:?}"),
            TaskError::DuplicateName(name) => {
                write!(f, "two files of the task would be named {name:?}")
            }
        }
    }
}

impl std::error::Error for TaskError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            TaskError::BadName { problem, .. } => Some(problem),
            // Shown as the template's own error: its cause comes next.
            TaskError::Template(e) => std::error::Error::source(e),
            TaskError::Malformed { .. } | TaskError::DuplicateName(_) => None,
        }
    }
}

/// How deep a task object may nest. A task of the contract is four levels deep; the
/// journal holds each task a few levels below the feed's envelope, so a task nested
/// near the JSON parser's limit would be accepted by the feed and then make the
/// journal unreadable at every start.
pub const MAX_TASK_DEPTH: usize = 32;

/// A task's `delete` entries sorted by whether they may be sent (see [`Task::deletes`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Deletes {
    /// Paths of recordings this task handed out: sent once all its files are stored.
    pub allowed: Vec<String>,
    /// For each allowed path, the recording's place among the task's gets (and files).
    pub recordings: Vec<usize>,
    /// Entries the platform had no business sending, each with the reason.
    pub refused: Vec<RefusedDelete>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefusedDelete {
    pub path: String,
    pub reason: &'static str,
}

impl Task {
    pub fn from_value(v: &Value) -> Result<Task, TaskError> {
        let malformed = |reason: String| TaskError::Malformed {
            excerpt: excerpt(v),
            reason,
        };
        if depth(v) > MAX_TASK_DEPTH {
            return Err(malformed(format!(
                "nested more than {MAX_TASK_DEPTH} levels deep"
            )));
        }
        Task::deserialize(v).map_err(|e| malformed(e.to_string()))
    }

    /// The platform is not trusted with the connector's deletes: an entry is sent only
    /// when deletes of recordings are configured (`recordings`) and it names a recording
    /// this task hands out as a `Recordings` get: its last path segment is the get's
    /// `recordingId`, or, when the get has none, the last segment of the get's path.
    /// (The engine sends them only once every file of the task is stored.)
    pub fn deletes(&self, recordings: bool) -> Deletes {
        // Each recording this task hands out, by its key, with its place among the gets.
        let handed_out: Vec<(&str, usize)> = (self.get.iter().enumerate())
            .filter(|(_, g)| is_recording(g))
            .filter_map(|(i, g)| match &g.recording_id {
                Some(id) => Some((id.as_str(), i)),
                None => last_segment(&g.path).map(|s| (s, i)),
            })
            .collect();
        let mut out = Deletes::default();
        for d in &self.delete {
            let recording = last_segment(&d.path)
                .and_then(|s| handed_out.iter().find(|(key, _)| *key == s))
                .map(|(_, i)| *i);
            let reason = match recording {
                _ if !recordings => Some("deletes are not configured (SP_TASK_SYNC_DELETE_DATA)"),
                None => Some("it names no recording this task hands out"),
                Some(_) if out.allowed.contains(&d.path) => None,
                Some(i) => {
                    out.allowed.push(d.path.clone());
                    out.recordings.push(i);
                    None
                }
            };
            if let Some(reason) = reason {
                out.refused.push(RefusedDelete {
                    path: d.path.clone(),
                    reason,
                });
            }
        }
        out
    }

    /// The files of this task, named and checked; `source` says which name wins when
    /// the template's and the platform's differ. Linear in the number of gets (a task
    /// may list tens of thousands).
    pub fn files(
        &self,
        template: &FileNameTemplate,
        source: NameSource,
    ) -> Result<Vec<FileJob>, TaskError> {
        let base = match self.due_date {
            Some(due) => Some(
                template
                    .render(&TaskFields {
                        task_id: &self.task_id,
                        due_date: Some(due),
                        call_from: self.call_from.as_deref(),
                        call_to: self.call_to.as_deref(),
                    })
                    .map_err(TaskError::Template)?,
            ),
            None => None,
        };
        let suffixes = self.suffixes();
        let mut seen = HashSet::with_capacity(self.get.len());
        let mut jobs = Vec::with_capacity(self.get.len());
        for (item, suffix) in self.get.iter().zip(suffixes) {
            let (name, other_name) = match (&base, suffix) {
                (Some(base), Some(suffix)) => {
                    let rendered = format!("{base}{suffix}");
                    if rendered == item.file_name {
                        (rendered, None)
                    } else if source == NameSource::Platform {
                        (item.file_name.clone(), Some(rendered))
                    } else {
                        (rendered, Some(item.file_name.clone()))
                    }
                }
                _ => (item.file_name.clone(), None),
            };
            check_name(&name).map_err(|problem| TaskError::BadName {
                name: name.clone(),
                problem,
            })?;
            if !seen.insert(name.clone()) {
                return Err(TaskError::DuplicateName(name));
            }
            jobs.push(FileJob {
                name,
                path: item.path.clone(),
                other_name,
                info: ObjectInfo {
                    task_id: self.task_id.clone(),
                    data_type: item.data_type.clone().unwrap_or_default(),
                },
                recording_id: is_recording(item)
                    .then(|| item.recording_id.clone())
                    .flatten(),
            });
        }
        Ok(jobs)
    }

    /// The suffix of each get item, when it can be known: from its data type and
    /// position (the k-th recording, the transcription of the k-th recording), else
    /// from the end of the platform's `fileName`.
    fn suffixes(&self) -> Vec<Option<String>> {
        let mut recording_k: HashMap<&str, usize> = HashMap::new();
        let mut recordings = 0;
        for g in self
            .get
            .iter()
            .filter(|g| data_type(g) == Some(DataType::Recordings))
        {
            recordings += 1;
            if let Some(id) = g.recording_id.as_deref() {
                recording_k.entry(id).or_insert(recordings);
            }
        }
        let (mut recordings, mut transcriptions) = (0, 0);
        self.get
            .iter()
            .map(|item| match data_type(item) {
                Some(DataType::Recordings) => {
                    recordings += 1;
                    Some(DataType::Recordings.suffix(recordings))
                }
                Some(DataType::Transcriptions) => {
                    transcriptions += 1;
                    let k = item
                        .recording_id
                        .as_deref()
                        .and_then(|id| recording_k.get(id).copied())
                        .or_else(|| suffix_from_file_name(&item.file_name).map(|(_, k)| k))
                        .unwrap_or(transcriptions);
                    Some(DataType::Transcriptions.suffix(k))
                }
                Some(other) => Some(other.suffix(1)),
                None => suffix_from_file_name(&item.file_name).map(|(t, k)| t.suffix(k)),
            })
            .collect()
    }
}

/// A get of a recording: by its data type, or, from an older platform that sends
/// none, by its file name.
fn is_recording(item: &GetItem) -> bool {
    match &item.data_type {
        Some(_) => data_type(item) == Some(DataType::Recordings),
        None => {
            suffix_from_file_name(&item.file_name).is_some_and(|(t, _)| t == DataType::Recordings)
        }
    }
}

fn last_segment(path: &str) -> Option<&str> {
    path.rsplit('/').next().filter(|s| !s.is_empty())
}

/// How deeply a JSON value nests (a scalar is 0).
fn depth(v: &Value) -> usize {
    match v {
        Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        Value::Object(fields) => 1 + fields.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

fn data_type(item: &GetItem) -> Option<DataType> {
    item.data_type.as_deref().and_then(DataType::parse)
}

/// Reads a known suffix off the end of a platform file name: the data type it stands
/// for (metadata types all map to one) and the recording number.
pub fn suffix_from_file_name(name: &str) -> Option<(DataType, usize)> {
    for (ext, t) in [
        (".trans.json", DataType::Transcriptions),
        (".ogg", DataType::Recordings),
    ] {
        if let Some(stem) = name.strip_suffix(ext) {
            let k = stem
                .rsplit_once('-')
                .and_then(|(_, n)| n.parse::<usize>().ok())
                .filter(|&k| (2..=999).contains(&k))
                .unwrap_or(1);
            return Some((t, k));
        }
    }
    if name.ends_with(".history.json") {
        return Some((DataType::ChatHistory, 1));
    }
    name.ends_with(".meta.json")
        .then_some((DataType::CallMetadata, 1))
}

/// A short, safe rendering of a task object for log lines.
pub fn excerpt(v: &Value) -> String {
    let id = v
        .get("taskId")
        .and_then(Value::as_str)
        .map(|s| s.chars().take(64).collect::<String>());
    match id {
        Some(id) => format!("{id:?}"),
        None => {
            let text: String = v
                .to_string()
                .chars()
                .filter(|c| !c.is_control())
                .take(120)
                .collect();
            format!("(no taskId) {text}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_metadata_names_per_cloud_and_clean_values() {
        let info = ObjectInfo {
            task_id: "2792e1e2-ac6a".into(),
            data_type: "Call\nMetadata".into(),
        };
        assert_eq!(
            info.metadata('-'),
            [
                ("task-id".to_string(), "2792e1e2-ac6a".to_string()),
                ("data-type".to_string(), "Call_Metadata".to_string())
            ]
        );
        assert_eq!(info.metadata('_')[0].0, "task_id");
        assert!(ObjectInfo::default().metadata('-').is_empty());
    }

    use serde_json::json;

    const ID: &str = "b808d74e-84b2-11ef-b864-0242ac120002";

    fn template() -> FileNameTemplate {
        FileNameTemplate::parse("{{due_date|yyyy}}/{{due_date|MM}}/{{due_date|dd}}/{{due_date|yyyyMMddHHmmss}}-{{task_id}}")
            .unwrap()
    }

    fn names(task: Value) -> Vec<String> {
        Task::from_value(&task)
            .unwrap()
            .files(&template(), NameSource::Template)
            .unwrap()
            .into_iter()
            .map(|j| j.name)
            .collect()
    }

    #[test]
    fn a_platform_name_that_differs_is_reported_and_wins_only_when_chosen() {
        let base = format!("2004/12/01/20041201120000-{ID}");
        let task = Task::from_value(&json!({
            "taskId": ID, "dueDate": 1101902400000i64,
            "get": [
                {"dataType": "Recordings", "recordingId": "r1", "path": "/r/1", "fileName": format!("{base}.ogg")},
                {"dataType": "CallMetadata", "path": "/m", "fileName": format!("2004/12/01/20041201130000-{ID}.meta.json")}
            ],
            "delete": []
        }))
        .unwrap();
        let by_template = task.files(&template(), NameSource::Template).unwrap();
        assert_eq!(by_template[0].name, format!("{base}.ogg"));
        assert_eq!(
            by_template[0].other_name, None,
            "the same name is no difference"
        );
        assert_eq!(by_template[1].name, format!("{base}.meta.json"));
        let platform_name = format!("2004/12/01/20041201130000-{ID}.meta.json");
        assert_eq!(
            by_template[1].other_name.as_deref(),
            Some(platform_name.as_str())
        );
        let by_platform = task.files(&template(), NameSource::Platform).unwrap();
        assert_eq!(by_platform[1].name, platform_name);
        assert_eq!(
            by_platform[1].other_name.as_deref(),
            Some(format!("{base}.meta.json").as_str())
        );

        let seen = NameDifferences::default();
        for job in by_template.iter().chain(&by_template) {
            seen.note(job);
        }
        let round = seen.take().unwrap();
        assert_eq!(round.count, 2);
        assert_eq!(round.used, format!("{base}.meta.json"));
        assert!(round.to_string().contains("SP_TASK_SYNC_NAMES"), "{round}");
        assert_eq!(seen.take(), None, "each round starts afresh");
        assert_eq!(NameSource::parse(" Platform "), Some(NameSource::Platform));
        assert_eq!(NameSource::parse("both"), None);
    }

    #[test]
    fn an_unsafe_platform_name_is_refused_only_when_it_would_be_used() {
        let task = Task::from_value(&json!({
            "taskId": ID, "dueDate": 1101902400000i64,
            "get": [{"dataType": "CallMetadata", "path": "/m", "fileName": "../../etc/passwd"}],
            "delete": []
        }))
        .unwrap();
        assert!(task.files(&template(), NameSource::Template).is_ok());
        assert!(matches!(
            task.files(&template(), NameSource::Platform),
            Err(TaskError::BadName { .. })
        ));
    }

    #[test]
    fn suffixes_follow_the_recording_order() {
        let got = names(json!({
            "taskId": ID, "dueDate": 1101902400000i64, "callFrom": "420123456789",
            "get": [
                {"dataType": "CallMetadata", "path": "/task/x/meta", "fileName": "ignored"},
                {"dataType": "Recordings", "recordingId": "r1", "path": "/r/1", "fileName": "ignored"},
                {"dataType": "Recordings", "recordingId": "r2", "path": "/r/2", "fileName": "ignored"},
                {"dataType": "Transcriptions", "recordingId": "r2", "path": "/t/2", "fileName": "ignored"},
                {"dataType": "Recordings", "recordingId": "r3", "path": "/r/3", "fileName": "ignored"},
                {"dataType": "Transcriptions", "recordingId": "r1", "path": "/t/1", "fileName": "ignored"}
            ],
            "delete": [], "someNewField": {"x": 1}
        }));
        let base = format!("2004/12/01/20041201120000-{ID}");
        let want: Vec<String> = [
            ".meta.json",
            ".ogg",
            "-2.ogg",
            "-2.trans.json",
            "-3.ogg",
            ".trans.json",
        ]
        .iter()
        .map(|s| format!("{base}{s}"))
        .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn without_due_date_the_platform_name_is_used_and_checked() {
        let task = json!({"taskId": ID, "get": [{"path": "/x", "fileName": "a/b.meta.json"}], "delete": []});
        assert_eq!(names(task), vec!["a/b.meta.json"]);
        for bad in [
            "../../etc/passwd",
            "/abs/x.ogg",
            "a\\b.ogg",
            "a/\u{1}.ogg",
            ".spinoco-connector/t.page.json",
        ] {
            let task =
                json!({"taskId": ID, "get": [{"path": "/x", "fileName": bad}], "delete": []});
            let err = Task::from_value(&task)
                .unwrap()
                .files(&template(), NameSource::Template)
                .unwrap_err();
            assert!(matches!(err, TaskError::BadName { .. }), "{bad}: {err}");
        }
    }

    #[test]
    fn old_platform_entries_take_the_suffix_from_the_file_name() {
        let got = names(json!({
            "taskId": ID, "dueDate": 1101902400000i64,
            "get": [
                {"path": "/t/2", "fileName": "whatever/x-2.trans.json"},
                {"path": "/r/1", "fileName": "whatever/x.ogg"},
                {"path": "/m", "fileName": "whatever/x.meta.json"}
            ],
            "delete": []
        }));
        let base = format!("2004/12/01/20041201120000-{ID}");
        assert_eq!(
            got,
            vec![
                format!("{base}-2.trans.json"),
                format!("{base}.ogg"),
                format!("{base}.meta.json")
            ]
        );
    }

    #[test]
    fn only_deletes_of_recordings_the_task_hands_out_are_allowed() {
        let task = Task::from_value(&json!({
            "taskId": ID,
            "get": [
                {"dataType": "Recordings", "recordingId": "r1", "path": "/recording-direct/x/r1", "fileName": "a.ogg"},
                {"dataType": "Transcriptions", "recordingId": "r2", "path": "/t/r2", "fileName": "a.trans.json"},
                {"path": "/recording-direct/x/old", "fileName": "a-2.ogg"},
                {"path": "/meta/m", "fileName": "a.meta.json"}
            ],
            "delete": [
                {"path": "/recording/x/r1"}, {"path": "/recording/x/r1"},
                {"path": "/recording/x/r2"}, {"path": "/recording/x/old"},
                {"path": "/recording/x/m"}, {"path": "/recording/x/"},
                {"path": "/recording-direct/x/r1"}
            ]
        }))
        .unwrap();
        let d = task.deletes(true);
        assert_eq!(
            d.allowed,
            [
                "/recording/x/r1",
                "/recording/x/old",
                "/recording-direct/x/r1"
            ]
        );
        assert_eq!(d.recordings, [0, 2, 0], "the gets each deletes");
        let refused: Vec<&str> = d.refused.iter().map(|r| r.path.as_str()).collect();
        assert_eq!(
            refused,
            ["/recording/x/r2", "/recording/x/m", "/recording/x/"]
        );
        let none = task.deletes(false);
        assert!(none.allowed.is_empty());
        assert_eq!(none.refused.len(), 7, "nothing is sent unless configured");
        assert!(none.refused[0].reason.contains("SP_TASK_SYNC_DELETE_DATA"));
    }

    #[test]
    fn a_task_nested_too_deep_for_the_journal_is_malformed() {
        let mut deep = json!("leaf");
        for _ in 0..MAX_TASK_DEPTH {
            deep = json!([deep]);
        }
        let task = json!({"taskId": ID, "get": [], "delete": [], "x": deep});
        let err = Task::from_value(&task).unwrap_err();
        assert!(err.to_string().contains("nested more than"), "{err}");
        let ok = json!({"taskId": ID, "get": [], "delete": [], "x": [[[["leaf"]]]]});
        assert!(Task::from_value(&ok).is_ok());
    }

    #[test]
    fn tens_of_thousands_of_gets_are_named_in_order() {
        let mut get = Vec::new();
        for i in 0..20_000 {
            get.push(json!({"dataType": "Recordings", "recordingId": format!("r{i}"), "path": format!("/r/{i}"), "fileName": "x"}));
            get.push(json!({"dataType": "Transcriptions", "recordingId": format!("r{i}"), "path": format!("/t/{i}"), "fileName": "x"}));
        }
        let got = names(json!({"taskId": ID, "dueDate": 0, "get": get, "delete": []}));
        assert_eq!(got.len(), 40_000);
        assert!(got[39_998].ends_with("-20000.ogg"), "{}", got[39_998]);
        assert!(got[39_999].ends_with("-20000.trans.json"));
    }

    #[test]
    fn malformed_tasks_are_reported_with_their_id() {
        let err =
            Task::from_value(&json!({"taskId": ID, "get": "nope", "delete": []})).unwrap_err();
        assert!(err.to_string().contains(ID), "{err}");
        let err = Task::from_value(&json!({"get": []})).unwrap_err();
        assert!(err.to_string().contains("no taskId"), "{err}");
        let dup = json!({"taskId": ID, "dueDate": 0, "get": [
            {"dataType": "CallMetadata", "path": "/a", "fileName": "x"},
            {"dataType": "CommonMetadata", "path": "/b", "fileName": "y"}], "delete": []});
        assert!(matches!(
            Task::from_value(&dup)
                .unwrap()
                .files(&template(), NameSource::Template),
            Err(TaskError::DuplicateName(_))
        ));
    }
}
