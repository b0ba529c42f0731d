//! A stored name belongs to one task.
//!
//! Why: two tasks can come to the same object name (path-safing folds `a/b` and `a_b`
//! together, and a platform `fileName` can name anything). Had the second task replaced
//! the first one's recording, the recordings of both would then be deleted on the
//! platform. Every data file carries its task id as user metadata, so a cloud store can
//! tell: an existing object whose task id names another task is never replaced, and the
//! write is `Rejected` (the engine then stores nothing of that file and deletes nothing
//! of its task). A re-delivered task (the same id) and an object without a task id
//! (written by the official connector or by hand) are replaced as before; the
//! connector's own objects (journal, lease, probes) carry no task id and are not checked.
//!
//! Cost: a new name, the common case, stays one request. The upload is a conditional
//! create (S3 and Azure `If-None-Match: *`, GCS `ifGenerationMatch=0`); only when an
//! object is there is its metadata read, and the same bytes are then sent again on the
//! condition that the object is still the version that was read, so an object that
//! changes in between is read again rather than replaced unseen. Uploads of several
//! parts read the metadata before their first part instead (one request next to many).

use std::sync::atomic::{AtomicBool, Ordering};

use super::super::{ObjectInfo, ObjectVersion, PutCondition, StoreError, StoreErrorKind};
use super::clip;

/// How often a claimed write reads the object and tries again (each time means that
/// another writer changed the object in between) before it gives up.
const ROUNDS: usize = 5;

/// A task's claim on the name it writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// The name as the engine gave it (without the store's prefix), for messages.
    key: String,
    /// The task id as the object's metadata holds it.
    task_id: String,
}

/// An object found under the name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Existing {
    /// Its task-id metadata; `None` (or empty) when it was not written for a task.
    pub task_id: Option<String>,
    /// Its version, for replacing it only while unchanged; `None` when the store named
    /// none (it is then replaced without a condition).
    pub version: Option<ObjectVersion>,
}

/// What one upload came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upload {
    Done,
    /// Its condition failed: an object is there, or the one that was read changed.
    ConditionFailed,
    /// The store refuses conditional uploads (an S3-compatible `501 NotImplemented`).
    ConditionsUnsupported,
}

impl Claim {
    /// The claim of a data file; `None` for the connector's own objects (no task id).
    pub fn of(key: &str, info: &ObjectInfo) -> Option<Claim> {
        info.metadata('-')
            .into_iter()
            .find(|(name, _)| name == "task-id")
            .map(|(_, task_id)| Claim {
                key: key.to_string(),
                task_id,
            })
    }

    /// Whether `existing` may be replaced: not when another task's id is on it.
    pub fn permits(&self, existing: &Existing) -> Result<(), StoreError> {
        match existing.task_id.as_deref().map(str::trim) {
            Some(other) if !other.is_empty() && other != self.task_id.trim() => {
                Err(StoreError::new(
                    StoreErrorKind::Rejected,
                    format!(
                        "{:?} is already stored for task {:?}; another task ({:?}) must not overwrite it",
                        self.key,
                        clip(other, 256),
                        self.task_id
                    ),
                ))
            }
            _ => Ok(()),
        }
    }

    /// [`Claim::permits`] for what a look before an upload found (`None`: nothing).
    pub fn check(&self, existing: Option<Existing>) -> Result<(), StoreError> {
        existing.map_or(Ok(()), |e| self.permits(&e))
    }
}

/// The claimed writes of one store; remembers a store that refuses conditions.
#[derive(Debug, Default)]
pub struct Claims {
    /// The store answered a conditional upload with "not implemented": from then on
    /// each name is read before its upload, which goes without a condition.
    look_first: AtomicBool,
}

impl Claims {
    /// Writes one object, under `claim` when it is a task's file (else as it is sent):
    /// `upload` sends the bytes (already in memory) with the given condition, `look`
    /// reads what is stored under the name.
    pub fn write(
        &self,
        claim: Option<&Claim>,
        mut upload: impl FnMut(Option<&PutCondition>) -> Result<Upload, StoreError>,
        mut look: impl FnMut() -> Result<Option<Existing>, StoreError>,
    ) -> Result<(), StoreError> {
        let Some(claim) = claim else {
            return unconditional(&mut upload);
        };
        if !self.look_first.load(Ordering::Relaxed) {
            let mut cond = PutCondition::IfAbsent;
            for _ in 0..ROUNDS {
                match upload(Some(&cond))? {
                    Upload::Done => return Ok(()),
                    Upload::ConditionFailed => {}
                    Upload::ConditionsUnsupported => {
                        log::warn!(
                            "the storage refuses conditional uploads (If-None-Match: not implemented): \
                             from now on each file's name is read before its upload"
                        );
                        self.look_first.store(true, Ordering::Relaxed);
                        break;
                    }
                }
                cond = match look()? {
                    None => PutCondition::IfAbsent,
                    Some(existing) => {
                        claim.permits(&existing)?;
                        match existing.version {
                            Some(v) => PutCondition::IfMatch(v),
                            None => return unconditional(&mut upload),
                        }
                    }
                };
            }
            if !self.look_first.load(Ordering::Relaxed) {
                return Err(StoreError::transient(format!(
                    "{:?}: the stored object kept changing while it was written ({ROUNDS} tries)",
                    claim.key
                )));
            }
        }
        claim.check(look()?)?;
        unconditional(&mut upload)
    }
}

fn unconditional(
    upload: &mut impl FnMut(Option<&PutCondition>) -> Result<Upload, StoreError>,
) -> Result<(), StoreError> {
    match upload(None)? {
        Upload::Done => Ok(()),
        other => Err(StoreError::transient(format!(
            "an upload without a condition was answered as if it had one ({other:?})"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(task: &str) -> Claim {
        let info = ObjectInfo {
            task_id: task.into(),
            data_type: "Recordings".into(),
        };
        Claim::of("2004/12/01/x.ogg", &info).unwrap()
    }

    fn existing(task: Option<&str>, version: Option<&str>) -> Existing {
        Existing {
            task_id: task.map(str::to_string),
            version: version.map(|v| ObjectVersion(v.into())),
        }
    }

    /// Runs a claimed write against scripted answers; returns the conditions sent
    /// (`-` for none) and how many looks were made.
    fn script(
        claim: &Claim,
        claims: &Claims,
        uploads: &[Upload],
        looks: Vec<Option<Existing>>,
    ) -> (Result<(), StoreError>, Vec<String>, usize) {
        let mut sent = Vec::new();
        let mut looks = looks.into_iter();
        let mut looked = 0;
        let result = claims.write(
            Some(claim),
            |cond| {
                sent.push(match cond {
                    None => "-".to_string(),
                    Some(PutCondition::IfAbsent) => "absent".to_string(),
                    Some(PutCondition::IfMatch(v)) => format!("match {}", v.0),
                });
                Ok(uploads[sent.len() - 1])
            },
            || {
                looked += 1;
                Ok(looks.next().expect("an unexpected look"))
            },
        );
        (result, sent, looked)
    }

    #[test]
    fn connector_objects_have_no_claim() {
        assert_eq!(Claim::of("x", &ObjectInfo::default()), None);
    }

    #[test]
    fn a_new_name_is_one_conditional_create() {
        let (r, sent, looked) = script(&claim("a"), &Claims::default(), &[Upload::Done], vec![]);
        assert!(r.is_ok());
        assert_eq!((sent, looked), (vec!["absent".to_string()], 0));
    }

    #[test]
    fn another_tasks_object_is_refused_with_both_tasks_named() {
        let (r, sent, _) = script(
            &claim("a_b"),
            &Claims::default(),
            &[Upload::ConditionFailed],
            vec![Some(existing(Some("a/b"), Some("e1")))],
        );
        let e = r.unwrap_err();
        assert_eq!(e.kind, StoreErrorKind::Rejected);
        assert_eq!(
            e.message,
            r#""2004/12/01/x.ogg" is already stored for task "a/b"; another task ("a_b") must not overwrite it"#
        );
        assert_eq!(sent, ["absent"], "nothing is sent over it");
    }

    #[test]
    fn the_same_task_or_no_task_replaces_the_version_it_read() {
        for owner in [Some("a"), None, Some("")] {
            let (r, sent, _) = script(
                &claim("a"),
                &Claims::default(),
                &[Upload::ConditionFailed, Upload::Done],
                vec![Some(existing(owner, Some("\"etag\"")))],
            );
            assert!(r.is_ok(), "{owner:?}");
            assert_eq!(sent, ["absent", "match \"etag\""], "{owner:?}");
        }
    }

    #[test]
    fn a_change_in_between_is_read_again() {
        // Replaced by another task between the read and the write: refused.
        let (r, sent, looked) = script(
            &claim("a"),
            &Claims::default(),
            &[Upload::ConditionFailed, Upload::ConditionFailed],
            vec![
                Some(existing(None, Some("v1"))),
                Some(existing(Some("b"), Some("v2"))),
            ],
        );
        assert_eq!(r.unwrap_err().kind, StoreErrorKind::Rejected);
        assert_eq!((sent.len(), looked), (2, 2));
        // Removed in between: created again.
        let (r, sent, _) = script(
            &claim("a"),
            &Claims::default(),
            &[
                Upload::ConditionFailed,
                Upload::ConditionFailed,
                Upload::Done,
            ],
            vec![Some(existing(Some("a"), Some("v1"))), None],
        );
        assert!(r.is_ok());
        assert_eq!(sent, ["absent", "match v1", "absent"]);
        // Changing forever: a bounded, transient failure.
        let (r, sent, _) = script(
            &claim("a"),
            &Claims::default(),
            &[Upload::ConditionFailed; ROUNDS],
            vec![Some(existing(None, Some("v"))); ROUNDS],
        );
        assert_eq!(r.unwrap_err().kind, StoreErrorKind::Transient);
        assert_eq!(sent.len(), ROUNDS);
    }

    #[test]
    fn a_store_without_conditions_is_read_first_from_then_on() {
        let claims = Claims::default();
        let (r, sent, looked) = script(
            &claim("a"),
            &claims,
            &[Upload::ConditionsUnsupported, Upload::Done],
            vec![Some(existing(Some("a"), Some("v")))],
        );
        assert!(r.is_ok());
        assert_eq!((sent, looked), (vec!["absent".into(), "-".into()], 1));
        let (r, sent, looked) = script(
            &claim("b"),
            &claims,
            &[],
            vec![Some(existing(Some("a"), Some("v")))],
        );
        assert_eq!(r.unwrap_err().kind, StoreErrorKind::Rejected);
        assert_eq!((sent.len(), looked), (0, 1));
    }

    #[test]
    fn remote_task_ids_are_quoted_and_clipped() {
        let long = format!("x\u{1b}[31m{}", "y".repeat(1000));
        let e = claim("a")
            .check(Some(existing(Some(&long), None)))
            .unwrap_err();
        assert!(
            e.message.contains("\\u{1b}") && e.message.len() < 400,
            "{}",
            e.message
        );
    }

    /// An object that is no task's file (the journal, a manifest) is sent once, without
    /// a condition, and nothing is looked up.
    #[test]
    fn a_write_without_a_claim_is_sent_once_as_it_is() {
        let mut sent = Vec::new();
        let result = Claims::default().write(
            None,
            |cond| {
                sent.push(cond.cloned());
                Ok(Upload::Done)
            },
            || panic!("nothing is looked up"),
        );
        assert!(result.is_ok());
        assert_eq!(sent, vec![None]);
    }
}
