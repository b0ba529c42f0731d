//! The emulator checked over real HTTP with the same client the connector uses, so
//! that a connector test failure points at the connector, not at the emulator.

use std::collections::HashSet;

use serde_json::{json, Value};

use super::*;

const TOKEN: &str = "emulator-token";
const H1: &str = "1d4de98c-c130-11ef-9cd2-0242ac120002";

struct Client {
    agent: ureq::Agent,
    url: String,
    token: String,
}

struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Result<Vec<u8>, String>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    fn json(&self) -> Value {
        serde_json::from_slice(self.body.as_ref().expect("a complete body")).expect("a JSON body")
    }
}

fn answer(r: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Answer {
    let mut r = r.expect("an HTTP answer");
    let headers = r
        .headers()
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_str().unwrap_or("").to_string()))
        .collect();
    let body = r
        .body_mut()
        .with_config()
        .limit(u64::MAX)
        .read_to_vec()
        .map_err(|e| e.to_string());
    Answer {
        status: r.status().as_u16(),
        headers,
        body,
    }
}

impl Client {
    fn new(emu: &Emulator) -> Client {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        Client {
            agent,
            url: emu.url(),
            token: TOKEN.into(),
        }
    }
    fn auth(&self) -> String {
        format!("Bearer {}", self.token)
    }
    fn post(&self, body: &Value) -> Answer {
        answer(
            self.agent
                .post(format!("{}/task/sync/", self.url))
                .header("Authorization", self.auth())
                .send_json(body),
        )
    }
    fn get(&self, path: &str) -> Answer {
        answer(
            self.agent
                .get(format!("{}{path}", self.url))
                .header("Authorization", self.auth())
                .call(),
        )
    }
    fn delete(&self, path: &str) -> Answer {
        answer(
            self.agent
                .delete(format!("{}{path}", self.url))
                .header("Authorization", self.auth())
                .call(),
        )
    }
    /// A whole round: the query, then every page; returns each page's result.
    fn drain(&self, query: Value, count: usize) -> Vec<Vec<Value>> {
        let mut pages = Vec::new();
        let mut body = json!({"query": query, "count": count});
        loop {
            let a = self.post(&body);
            assert_eq!(a.status, 200, "{:?}", a.body);
            let v = a.json();
            pages.push(v["result"].as_array().unwrap().clone());
            match v.get("next").and_then(Value::as_str) {
                Some(next) => body = json!({"page": next, "count": count}),
                None => return pages,
            }
        }
    }
}

fn query(tag: &str) -> Value {
    json!({
        "tag": tag,
        "get": "CallMetadata,Recordings,Transcriptions",
        "delete": "Recordings",
        "fileNameTemplate": "{{due_date|yyyy}}/{{due_date|MM}}/{{task_id}}",
        "skillsMust": [], "skillsShould": [], "skillsMustNot": [],
        "hashTagsMust": [], "hashTagsShould": [], "hashTagsMustNot": []
    })
}

fn ids(tasks: &[Value]) -> Vec<String> {
    tasks
        .iter()
        .map(|t| t["taskId"].as_str().unwrap().to_string())
        .collect()
}

fn start(cfg: EmulatorConfig) -> (Emulator, Client) {
    let emu = Emulator::start(cfg).unwrap();
    let client = Client::new(&emu);
    (emu, client)
}

fn account_ids(emu: &Emulator) -> Vec<String> {
    emu.state()
        .account
        .tasks
        .iter()
        .map(|t| t.id.clone())
        .collect()
}

#[test]
fn missing_wrong_or_revoked_token_is_401() {
    let (emu, mut c) = start(EmulatorConfig::default());
    let a = answer(
        c.agent
            .post(format!("{}/task/sync/", c.url))
            .send_json(json!({"query": query("t"), "count": 5})),
    );
    assert_eq!(a.status, 401);
    assert_eq!(a.json()["error"], "unauthorized");
    c.token = "wrong".into();
    assert_eq!(c.get("/task/x/meta").status, 401);
    c.token = TOKEN.into();
    assert_eq!(
        c.post(&json!({"query": query("t"), "count": 5})).status,
        200
    );
    emu.set_token("new-token");
    assert_eq!(
        c.post(&json!({"query": query("t"), "count": 5})).status,
        401
    );
}

#[test]
fn full_drain_returns_every_task_once_then_nothing() {
    let (emu, c) = start(EmulatorConfig {
        tasks: 40,
        ..Default::default()
    });
    let pages = c.drain(query("t"), 15);
    assert_eq!(
        pages.iter().map(Vec::len).collect::<Vec<_>>(),
        vec![15, 15, 10]
    );
    let all: Vec<Value> = pages.concat();
    assert_eq!(ids(&all), account_ids(&emu));
    assert!(all
        .windows(2)
        .all(|w| w[0]["dueDate"].as_i64() < w[1]["dueDate"].as_i64()));
    assert_eq!(emu.handed_out(), all);
    // The tag's cursor is at the end: a new round finds nothing.
    let again = c.post(&json!({"query": query("t"), "count": 15})).json();
    assert_eq!(again, json!({"result": []}));
    // Live arrival shows up in the next round; another tag starts from the beginning.
    emu.add_tasks(3);
    assert_eq!(c.drain(query("t"), 15).concat().len(), 3);
    assert_eq!(c.drain(query("other"), 100).concat().len(), 43);
    // The page size is capped at 100.
    let (_e, c2) = start(EmulatorConfig {
        tasks: 150,
        recording_size: (10, 10),
        ..Default::default()
    });
    assert_eq!(
        c2.post(&json!({"query": query("t"), "count": 1000})).json()["result"]
            .as_array()
            .unwrap()
            .len(),
        100
    );
}

#[test]
fn start_from_counts_only_on_the_first_sync_of_a_tag() {
    let (emu, c) = start(EmulatorConfig {
        tasks: 20,
        ..Default::default()
    });
    let dues: Vec<i64> = emu.state().account.tasks.iter().map(|t| t.due).collect();
    let mut q = query("t");
    q["startFrom"] = json!(dues[6].to_string());
    let got = c.drain(q.clone(), 100).concat();
    assert_eq!(ids(&got), account_ids(&emu)[6..]);
    q["startFrom"] = json!((dues[6] - 1).to_string());
    let mut q2 = query("u");
    q2["startFrom"] = json!((dues[6] - 1).to_string());
    assert_eq!(
        c.drain(q2, 100).concat().len(),
        14,
        "the first task due at or after startFrom"
    );
    q["startFrom"] = json!("0");
    assert!(
        c.drain(q, 100).concat().is_empty(),
        "startFrom is ignored after the first sync"
    );
    let mut bad = query("v");
    bad["startFrom"] = json!(12345);
    assert_eq!(c.post(&json!({"query": bad, "count": 5})).status, 400);
}

#[test]
fn each_filter_kind_selects_the_right_tasks() {
    let (emu, c) = start(EmulatorConfig {
        tasks: 120,
        recording_size: (10, 10),
        ..Default::default()
    });
    let tasks = emu.state().account.tasks.clone();
    let has_tag = |t: &data::Task, u: &str, v: Option<&str>| {
        t.hashtags
            .iter()
            .any(|(tu, tv)| tu == u && (v.is_none() || tv.as_deref() == v))
    };
    let sk = |t: &data::Task, s: &str| t.skills.iter().any(|x| x == s);
    type Pred<'a> = Box<dyn Fn(&data::Task) -> bool + 'a>;
    let cases: Vec<(&str, Value, Pred)> = vec![
        ("skillsMust", json!(["SK1"]), Box::new(|t| sk(t, "SK1"))),
        (
            "skillsShould",
            json!(["SK2", "VIP"]),
            Box::new(|t| sk(t, "SK2") || sk(t, "VIP")),
        ),
        ("skillsMustNot", json!(["SK1"]), Box::new(|t| !sk(t, "SK1"))),
        (
            "hashTagsMust",
            json!([H1]),
            Box::new(|t| has_tag(t, H1, None)),
        ),
        (
            "hashTagsMust",
            json!([format!("{H1}:value2")]),
            Box::new(|t| has_tag(t, H1, Some("value2"))),
        ),
        (
            "hashTagsShould",
            json!([H1, data::HASHTAGS[1]]),
            Box::new(|t| has_tag(t, H1, None) || has_tag(t, data::HASHTAGS[1], None)),
        ),
        (
            "hashTagsMustNot",
            json!([H1]),
            Box::new(|t| !has_tag(t, H1, None)),
        ),
    ];
    for (i, (key, value, pred)) in cases.iter().enumerate() {
        let mut q = query(&format!("f{i}"));
        q[*key] = value.clone();
        let got = ids(&c.drain(q, 100).concat());
        let want: Vec<String> = tasks
            .iter()
            .filter(|t| pred(t))
            .map(|t| t.id.clone())
            .collect();
        assert!(
            !want.is_empty() && want.len() < tasks.len(),
            "{key} {value}: a weak test"
        );
        assert_eq!(got, want, "{key} {value}");
    }
}

#[test]
fn page_tokens_replay_and_expire() {
    let (emu, c) = start(EmulatorConfig {
        tasks: 30,
        ..Default::default()
    });
    let first = c.post(&json!({"query": query("t"), "count": 10})).json();
    let next = first["next"].as_str().unwrap().to_string();
    let page = json!({"page": next, "count": 10});
    let a = c.post(&page).json();
    let b = c.post(&page).json();
    assert_eq!(a, b, "a replayed token gives the same page");
    assert_eq!(
        ids(a["result"].as_array().unwrap()),
        account_ids(&emu)[10..20]
    );
    // The cursor is after the second page: a new round starts at the 21st task.
    let round = c.post(&json!({"query": query("t"), "count": 10})).json();
    assert_eq!(
        ids(round["result"].as_array().unwrap()),
        account_ids(&emu)[20..30]
    );
    emu.expire_page_tokens();
    let expired = c.post(&page);
    assert_eq!(expired.status, 400);
    assert!(expired.json()["message"]
        .as_str()
        .unwrap()
        .contains("expired"));
    assert_eq!(c.post(&json!({"page": "made-up", "count": 10})).status, 400);
}

#[test]
fn malformed_bodies_are_400() {
    let (_emu, c) = start(EmulatorConfig::default());
    let raw = |body: &'static str| {
        answer(
            c.agent
                .post(format!("{}/task/sync/", c.url))
                .header("Authorization", c.auth())
                .content_type("application/json")
                .send(body),
        )
    };
    assert_eq!(raw("not json").status, 400);
    let mut bad_template = query("t");
    bad_template["fileNameTemplate"] = json!("{{due_date|yyyy}}");
    let mut bad_type = query("t");
    bad_type["get"] = json!("Recordings,Videos");
    let mut bad_delete = query("t");
    bad_delete["delete"] = json!("Transcriptions");
    let mut no_filter = query("t");
    no_filter.as_object_mut().unwrap().remove("skillsMust");
    for body in [
        json!({"query": bad_template, "count": 5}),
        json!({"query": bad_type, "count": 5}),
        json!({"query": bad_delete, "count": 5}),
        json!({"query": no_filter, "count": 5}),
        json!({"query": query("t"), "count": 0}),
        json!({"query": query("t")}),
        json!({"query": query("t"), "page": "x", "count": 5}),
        json!([1, 2]),
    ] {
        let a = c.post(&body);
        assert_eq!(a.status, 400, "{body}");
        assert!(!a.json()["message"].as_str().unwrap().is_empty());
    }
    let wrong_path = answer(
        c.agent
            .post(format!("{}/task/sync", c.url))
            .header("Authorization", c.auth())
            .send_json(json!({})),
    );
    assert_eq!(wrong_path.status, 404);
}

#[test]
fn file_names_follow_the_suffix_rule() {
    let (emu, c) = start(EmulatorConfig {
        tasks: 200,
        recording_size: (10, 10),
        ..Default::default()
    });
    let mut q = query("t");
    q["fileNameTemplate"] = json!("{{task_id}}");
    let all = c.drain(q, 100).concat();
    let st = emu.state();
    let t = st
        .account
        .tasks
        .iter()
        .find(|t| t.recordings.len() == 3 && t.recordings.iter().any(|r| r.transcribed));
    let t = t.expect("a task with 3 recordings");
    let obj = all.iter().find(|o| o["taskId"] == t.id).unwrap();
    let names: Vec<(&str, &str, &str)> = obj["get"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            (
                g["dataType"].as_str().unwrap(),
                g["recordingId"].as_str().unwrap_or(""),
                g["fileName"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        names[0],
        ("CallMetadata", "", &*format!("{}.meta.json", t.id))
    );
    for (k, rec) in t.recordings.iter().enumerate() {
        let sfx = if k == 0 {
            String::new()
        } else {
            format!("-{}", k + 1)
        };
        assert!(names.contains(&("Recordings", &rec.id, &format!("{}{sfx}.ogg", t.id))));
        let trans = names.contains(&(
            "Transcriptions",
            &rec.id,
            &format!("{}{sfx}.trans.json", t.id),
        ));
        assert_eq!(trans, rec.transcribed);
    }
    assert_eq!(obj["delete"].as_array().unwrap().len(), 3);
    drop(st);
    // The platform renders the template with the task's own values.
    let source =
        "{{due_date|yyyy}}/{{due_date|MM}}/{{due_date|dd}}/{{due_date|yyyyMMddHHmmss}}-{{task_id}}";
    let mut q = query("u");
    q["fileNameTemplate"] = json!(source);
    let template = crate::template::FileNameTemplate::parse(source).unwrap();
    for t in c.drain(q, 100).concat() {
        let fields = crate::template::TaskFields {
            task_id: t["taskId"].as_str().unwrap(),
            due_date: t["dueDate"].as_i64(),
            call_from: t["callFrom"].as_str(),
            call_to: t["callTo"].as_str(),
        };
        let want = template.render(&fields).unwrap();
        for g in t["get"].as_array().unwrap() {
            assert!(g["fileName"].as_str().unwrap().starts_with(&want), "{g}");
        }
    }
}

#[test]
fn metadata_types_follow_the_task_kind() {
    let (emu, c) = start(EmulatorConfig {
        tasks: 60,
        recording_size: (10, 10),
        ..Default::default()
    });
    let mut q = query("t");
    q["get"] = json!("CallMetadata,CommonMetadata,ChatHistory");
    let all = c.drain(q, 100).concat();
    let tasks = emu.state().account.tasks.clone();
    let mut kinds = HashSet::new();
    for (obj, t) in all.iter().zip(&tasks) {
        let types: Vec<&str> = obj["get"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| g["dataType"].as_str().unwrap())
            .collect();
        let want = match t.kind {
            data::Kind::Call => vec!["CallMetadata"],
            data::Kind::Chat => vec!["CommonMetadata", "ChatHistory"],
            _ => vec!["CommonMetadata"],
        };
        assert_eq!(types, want);
        assert_eq!(obj.get("callFrom").is_some(), t.kind == data::Kind::Call);
        kinds.insert(t.kind.name());
        for g in obj["get"].as_array().unwrap() {
            let body = c.get(g["path"].as_str().unwrap());
            assert_eq!(body.status, 200);
            assert_eq!(body.json()["taskId"], t.id);
        }
    }
    assert!(kinds.len() >= 4, "{kinds:?}");
}

#[test]
fn old_platform_tasks_carry_only_the_always_there_fields() {
    let (_emu, c) = start(EmulatorConfig {
        tasks: 20,
        old_platform: 1.0,
        recording_size: (10, 10),
        ..Default::default()
    });
    let all = c.drain(query("t"), 100).concat();
    for t in &all {
        let keys: Vec<&String> = t.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["delete", "get", "taskId"]);
        for g in t["get"].as_array().unwrap() {
            let keys: Vec<&String> = g.as_object().unwrap().keys().collect();
            assert_eq!(keys, ["fileName", "path"]);
        }
    }
}

mod files;
