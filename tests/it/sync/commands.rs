//! The command line: every configuration error reported at once before any network
//! call, `check`, `render`, `--help` and `--version`.

use crate::common::harness::*;

use super::small;

/// Every configuration error is reported at once (exit 3) by the service, `--once`,
/// `check` and `check --connect`, before any network call and without the token.
#[test]
fn configuration_errors_are_all_reported_before_any_network_call() {
    let emu = emulator(small(3));
    let dir = scratch("config");
    let mut e = env(&emu, &dir);
    e.remove("SP_TASK_SYNC_TAG");
    e.insert(
        "SP_TASK_SYNC_FILE_NAME_TEMPLATE".into(),
        "{{due_date|yyyy}}".into(),
    );
    e.insert("SP_TASK_SYNC_GET_DATA".into(), "Recordings,Videos".into());
    e.insert("SP_TASK_SYNC_DELETE_DATA".into(), "Transcriptions".into());
    e.insert("SP_TASK_SYNC_SKILLS_MUST".into(), "TOOLONG".into());
    e.insert("SP_TASK_SYNC_HASHTAGS_MUST".into(), "not-a-uuid".into());
    e.insert("SP_TASK_SYNC_START_FROM".into(), "last tuesday".into());
    e.insert("SP_TASK_SYNC_STORAGE_PROVIDER".into(), "dropbox".into());
    for args in [
        &[][..],
        &["--once"][..],
        &["check"][..],
        &["check", "--connect"][..],
    ] {
        let out = run(&e, args);
        assert_eq!(out.status.code(), Some(3), "{args:?}: {}", text(&out));
        let t = text(&out);
        for needle in [
            "SP_TASK_SYNC_TAG: is required",
            "must contain {{task_id}}",
            "\"Videos\"",
            "only Recordings can be deleted",
            "TOOLONG",
            "not-a-uuid",
            "last tuesday",
            "dropbox",
        ] {
            assert!(t.contains(needle), "{args:?}: {needle:?} not in {t}");
        }
        assert!(!t.contains(TOKEN), "token leaked: {t}");
    }
    assert!(
        emu.requests().is_empty(),
        "a network call was made before validation"
    );
}

/// `check --connect` calls the platform and probes the storage without consuming tasks;
/// `render` shows the names a task gets and compares a platform name; `--help`,
/// `--version` and an unknown flag (exit 2).
#[test]
fn check_render_help_and_version() {
    let emu = emulator(small(3));
    let dir = scratch("check");
    let e = env(&emu, &dir);
    let out = run(&e, &["check", "--connect"]);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(
        t.contains("token accepted") && t.contains("probe object"),
        "{t}"
    );
    assert!(!t.contains(TOKEN) && t.contains("***"), "{t}");
    assert!(emu.handed_out().is_empty(), "check must not consume tasks");

    let render = |more: &[&str]| {
        let mut args = vec![
            "render",
            "--due-date",
            "2004-12-01T12:00:00Z",
            "--task-id",
            "b808d74e-84b2-11ef-b864-0242ac120002",
        ];
        args.extend_from_slice(more);
        let out = run(&e, &args);
        assert!(out.status.success(), "{}", text(&out));
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let t = render(&[]);
    assert!(
        t.contains("2004/12/01/20041201120000-b808d74e-84b2-11ef-b864-0242ac120002.ogg"),
        "{t}"
    );
    assert!(
        t.contains("20041201120000-b808d74e-84b2-11ef-b864-0242ac120002-2.trans.json"),
        "{t}"
    );
    let compare = |file_name: &str| {
        let t = render(&["--file-name", file_name]);
        t.lines().last().unwrap().to_string()
    };
    let same = compare("2004/12/01/20041201120000-b808d74e-84b2-11ef-b864-0242ac120002-2.ogg");
    assert!(same.contains("the same as the template's name"), "{same}");
    let other = compare("2004/12/01/20041201130000-b808d74e-84b2-11ef-b864-0242ac120002-2.ogg");
    assert!(
        other.contains("DIFFERS")
            && other.contains("20041201120000-b808d74e-84b2-11ef-b864-0242ac120002-2.ogg")
            && other.contains("SP_TASK_SYNC_NAMES=template stores"),
        "{other}"
    );

    assert_eq!(run(&e, &["--bogus"]).status.code(), Some(2));
    assert!(run(&e, &["--help"]).status.success());
    let v = run(&e, &["--version"]);
    assert!(String::from_utf8_lossy(&v.stdout).starts_with("spinoco-connector "));
}
