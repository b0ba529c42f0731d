//! A delete is sent only for a recording the task handed out, stored, and only when
//! deletes of recordings are configured; every other entry of a task's `delete` list
//! is a platform error, logged with the task and path, counted, never sent.

use serde_json::json;

use crate::common::harness::*;
use crate::common::hostile::{call_task, HostilePlatform};

#[test]
fn a_delete_list_is_ignored_when_no_deletes_are_configured() {
    let platform = HostilePlatform::start();
    let id = "t-1";
    platform.add_task(
        json!({
            "taskId": id, "dueDate": 1_101_902_400_000i64,
            "get": [{"dataType": "CallMetadata", "path": "/task/t-1/meta", "fileName": "t-1.meta.json"}],
            "delete": [{"path": "/recording/t-1/r1"}]
        }),
        vec![("/task/t-1/meta".into(), b"{}".to_vec())],
    );
    let dir = scratch("unasked-delete");
    let mut e = env_for_url(&platform.url, &dir);
    e.insert("SP_TASK_SYNC_GET_DATA".into(), "CallMetadata".into());
    e.insert("SP_TASK_SYNC_DELETE_DATA".into(), "".into());
    let out = run(&e, &["--once"]);
    let t = text(&out);
    assert_eq!(platform.deletes(), Vec::<String>::new(), "{t}");
    assert_eq!(
        out.status.code(),
        Some(1),
        "a platform error fails --once: {t}"
    );
    let line = t
        .lines()
        .find(|l| l.contains("ERROR") && l.contains("/recording/t-1/r1"))
        .unwrap_or_else(|| panic!("no error naming the delete: {t}"));
    assert!(line.contains("t-1"), "the error names the task: {line}");
    assert!(files_in(&dir).contains("2004/12/01/20041201120000-t-1.meta.json"));
}

#[test]
fn only_deletes_of_recordings_the_task_handed_out_and_stored_are_sent() {
    let platform = HostilePlatform::start();
    // Matched by recordingId.
    let (mut task, contents) = call_task("t-2", "t-2", b"OggS recording two");
    task["delete"] = json!([
        {"path": "/recording/t-2/r1"},
        {"path": "/recording/t-2/r9"},
        {"path": "/recording/other-task/r1x"},
        {"path": "/task/t-2/meta"}
    ]);
    platform.add_task(task, contents);
    // No recordingId: matched by the last segment of the get's path.
    platform.add_task(
        json!({
            "taskId": "t-3", "dueDate": 1_101_902_400_000i64,
            "get": [{"path": "/recording-direct/t-3/abc", "fileName": "t-3.ogg"}],
            "delete": [{"path": "/recording/t-3/abc"}, {"path": "/recording/t-3/abd"}]
        }),
        vec![("/recording-direct/t-3/abc".into(), b"OggS three".to_vec())],
    );
    let dir = scratch("foreign-deletes");
    let e = env_for_url(&platform.url, &dir);
    let out = run(&e, &["--once"]);
    let t = text(&out);
    let mut sent = platform.deletes();
    sent.sort();
    assert_eq!(sent, ["/recording/t-2/r1", "/recording/t-3/abc"], "{t}");
    for refused in [
        "/recording/t-2/r9",
        "/recording/other-task/r1x",
        "/task/t-2/meta",
        "/recording/t-3/abd",
    ] {
        assert!(
            t.lines()
                .any(|l| l.contains("ERROR") && l.contains(refused)),
            "no error for {refused}: {t}"
        );
    }
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert_eq!(
        std::fs::read(dir.join("2004/12/01/20041201120000-t-2.ogg")).unwrap(),
        b"OggS recording two"
    );
}

#[test]
fn a_task_with_a_recording_not_stored_gets_no_delete() {
    let platform = HostilePlatform::start();
    let (mut task, mut contents) = call_task("t-4", "t-4", b"OggS four");
    // The recording answers 404: the task is not stored, so nothing of it is deleted.
    contents.retain(|(path, _)| !path.contains("recording-direct"));
    task["delete"] = json!([{"path": "/recording/t-4/r1"}]);
    platform.add_task(task, contents);
    let dir = scratch("unstored-delete");
    let out = run(&env_for_url(&platform.url, &dir), &["--once"]);
    assert_eq!(platform.deletes(), Vec::<String>::new(), "{}", text(&out));
}
