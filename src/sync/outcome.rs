//! What an operation of the engine came to, and the one place where each side's
//! failures are sorted: the platform's ([`platform_step`]) and the storage's
//! ([`store_step`]), each into a step of the shared retry loop (`crate::retry`):
//! done with an [`Outcome`], or worth another try.

use super::SyncError;
use crate::platform::PlatformError;
use crate::retry::{Reason, Step};
use crate::shutdown;
use crate::store::{StoreError, StoreErrorKind};

/// The result of one retried operation.
pub(super) enum Outcome<T> {
    Done(T),
    /// 404 on a download.
    Missing,
    /// Every attempt failed (only in `--once`).
    GaveUp(String),
    /// Cannot work for this item (bad name, refused path).
    Rejected(String),
    /// Stop the run.
    Fatal(SyncError),
    Stopped,
}

impl<T> Outcome<T> {
    /// The value when done, else the same outcome for another value type (a failure
    /// or a stop carries none).
    pub(super) fn done_or<U>(self) -> Result<T, Outcome<U>> {
        match self {
            Outcome::Done(v) => Ok(v),
            Outcome::Missing => Err(Outcome::Missing),
            Outcome::GaveUp(m) => Err(Outcome::GaveUp(m)),
            Outcome::Rejected(m) => Err(Outcome::Rejected(m)),
            Outcome::Fatal(e) => Err(Outcome::Fatal(e)),
            Outcome::Stopped => Err(Outcome::Stopped),
        }
    }
}

/// One try of an engine operation, as the retry loop takes it.
pub(super) type Try<T> = Step<Outcome<T>, String>;

/// A try that worked.
pub(super) fn done<T>(value: T) -> Try<T> {
    Step::Done(Outcome::Done(value))
}

/// A platform failure: the token or the certificate stops the run, a 404 is a missing
/// item, a transient failure is tried again, anything else rejects the item.
pub(super) fn platform_step<T>(e: PlatformError) -> Try<T> {
    let outcome = match e {
        PlatformError::Auth { .. } => Outcome::Fatal(SyncError::Auth(e)),
        PlatformError::Tls { .. } => Outcome::Fatal(SyncError::Tls(e)),
        PlatformError::NotFound => Outcome::Missing,
        PlatformError::Transient {
            message,
            reason,
            retry_after,
        } => {
            return Step::Retry {
                error: message,
                reason,
                after: retry_after,
            }
        }
        PlatformError::Lost { message, reason } => {
            return Step::Retry {
                error: message,
                reason,
                after: None,
            }
        }
        PlatformError::Refused { .. }
        | PlatformError::PageExpired
        | PlatformError::Unstorable { .. } => Outcome::Rejected(e.to_string()),
    };
    Step::Done(outcome)
}

/// A storage failure, as it reaches the engine (see `crate::store` for what each kind
/// means there): refused access stops the run, a rejected object is skipped, a
/// transient error is final (the store spent the budget on its own request), and a
/// broken source or a lost upload make the engine transfer the file anew.
pub(super) fn store_step<T>(e: StoreError) -> Try<T> {
    let outcome = match e.kind {
        StoreErrorKind::Transient if shutdown::requested() => Outcome::Stopped,
        StoreErrorKind::Denied => Outcome::Fatal(SyncError::StorageDenied(e)),
        StoreErrorKind::Rejected => Outcome::Rejected(e.report()),
        StoreErrorKind::Transient => Outcome::GaveUp(e.report()),
        StoreErrorKind::Restart | StoreErrorKind::Source => {
            return Step::Retry {
                reason: store_reason(e.kind),
                error: e.report(),
                after: None,
            }
        }
    };
    Step::Done(outcome)
}

/// The label a storage error is retried under in `spinoco_retries_total`.
pub(super) fn store_reason(kind: StoreErrorKind) -> Reason {
    match kind {
        StoreErrorKind::Source => Reason::BrokenBody,
        StoreErrorKind::Transient => Reason::Transport,
        // Refused, or the store lost the upload, yet tried again: the store answered.
        StoreErrorKind::Restart | StoreErrorKind::Denied | StoreErrorKind::Rejected => {
            Reason::ServerError
        }
    }
}
