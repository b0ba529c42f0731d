//! What one try of an operation came to, sorted once per side: the platform's answers
//! and the storage's errors, into what the engine does next (go on, retry, skip,
//! reject, stop).

use std::time::Duration;

use super::SyncError;
use crate::platform::PlatformError;
use crate::retry::Reason;
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

/// One try of an operation, sorted.
pub(super) enum Try<T> {
    Ok(T),
    Retry {
        message: String,
        reason: Reason,
        after: Option<Duration>,
    },
    Missing,
    Reject(String),
    Fatal(SyncError),
    Stopped,
    /// Final for this item: a storage error after the storage client spent its own
    /// retry budget (the layer that made the request decides; see `crate::retry`).
    GaveUp(String),
}

pub(super) fn platform_try<T>(e: PlatformError) -> Try<T> {
    match e {
        PlatformError::Auth { .. } => Try::Fatal(SyncError::Auth(e)),
        PlatformError::Tls { .. } => Try::Fatal(SyncError::Tls(e)),
        PlatformError::NotFound => Try::Missing,
        PlatformError::Transient {
            message,
            reason,
            retry_after,
        } => Try::Retry {
            message,
            reason,
            after: retry_after,
        },
        PlatformError::Lost { message, reason } => Try::Retry {
            message,
            reason,
            after: None,
        },
        PlatformError::Refused { .. }
        | PlatformError::PageExpired
        | PlatformError::Unstorable { .. } => Try::Reject(e.to_string()),
    }
}

/// Sorts a storage error. The storage client already retried its request within the
/// run's budget, so a transient error here is final; only a broken download (the
/// source of a transfer) is tried again, by the engine.
pub(super) fn store_try<T>(e: StoreError) -> Try<T> {
    match e.kind {
        StoreErrorKind::Denied => Try::Fatal(SyncError::StorageDenied(e)),
        StoreErrorKind::Rejected => Try::Reject(e.message),
        StoreErrorKind::Transient => Try::GaveUp(e.message),
        StoreErrorKind::Restart => Try::Retry {
            message: e.message,
            reason: Reason::ServerError,
            after: None,
        },
        StoreErrorKind::Source => Try::Retry {
            message: e.message,
            reason: Reason::BrokenBody,
            after: None,
        },
    }
}
