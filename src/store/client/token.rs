//! The one token cache: AWS temporary credentials, GCS access tokens and Azure
//! identity tokens.
//!
//! Why one: all are short-lived secrets fetched from an endpoint, and the rules that
//! keep a run going are the same: fetch again [`REFRESH_MARGIN`] before the expiry, keep
//! serving the old value while it is still valid when that fetch fails (the endpoint
//! may be down for a moment), and drop it when the storage refuses it (401,
//! `ExpiredToken`) so the next request fetches a fresh one. One fetch at a time: the
//! workers wait for the one that refreshes.

use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use crate::store::StoreError;

/// A cached value is replaced this long before it expires, so a part upload that
/// starts with it still ends with a valid one.
pub const REFRESH_MARGIN: Duration = Duration::from_secs(300);

/// A value from a token endpoint and when it stops being valid (`None`: never).
pub struct Fetched<T> {
    pub value: T,
    pub expires: Option<SystemTime>,
}

struct Cached<T> {
    value: T,
    expires: Option<SystemTime>,
}

pub struct TokenCache<T: Clone> {
    cached: Mutex<Option<Cached<T>>>,
}

impl<T: Clone> Default for TokenCache<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Clone> TokenCache<T> {
    pub fn new() -> TokenCache<T> {
        TokenCache {
            cached: Mutex::new(None),
        }
    }

    /// The cached value, or a fresh one from `fetch` when there is none or it is
    /// within [`REFRESH_MARGIN`] of its expiry. A failed fetch while the old value is
    /// still valid serves the old value (logged at warn).
    pub fn get(
        &self,
        fetch: impl FnOnce() -> Result<Fetched<T>, StoreError>,
    ) -> Result<T, StoreError> {
        let mut cached = self.cached.lock().unwrap_or_else(|e| e.into_inner());
        let now = SystemTime::now();
        if let Some(c) = cached.as_ref() {
            if c.expires.is_none_or(|t| now + REFRESH_MARGIN < t) {
                return Ok(c.value.clone());
            }
        }
        match fetch() {
            Ok(fresh) => {
                *cached = Some(Cached {
                    value: fresh.value.clone(),
                    expires: fresh.expires,
                });
                Ok(fresh.value)
            }
            Err(e) => match cached.as_ref() {
                Some(old) if old.expires.is_none_or(|t| now < t) => {
                    log::warn!("{}; using the current token until it expires", e.report());
                    Ok(old.value.clone())
                }
                _ => Err(e),
            },
        }
    }

    /// Forgets the cached value (the storage refused it). Returns whether there was one.
    pub fn invalidate(&self) -> bool {
        self.cached
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoreErrorKind;

    #[test]
    fn refreshes_early_keeps_the_old_one_and_drops_it_on_refusal() {
        let cache = TokenCache::new();
        let soon = SystemTime::now() + Duration::from_secs(120);
        let later = SystemTime::now() + Duration::from_secs(3600);
        let fetched = |v: &'static str, expires| {
            move || {
                Ok(Fetched {
                    value: v,
                    expires: Some(expires),
                })
            }
        };
        assert_eq!(cache.get(fetched("a", later)).unwrap(), "a");
        assert_eq!(cache.get(fetched("b", later)).unwrap(), "a", "cached");
        assert!(cache.invalidate());
        assert_eq!(cache.get(fetched("c", soon)).unwrap(), "c");
        // Within the early window: fetched again; a failed fetch keeps "c".
        let failing = || Err(StoreError::transient("token endpoint down"));
        assert_eq!(cache.get(failing).unwrap(), "c");
        assert_eq!(cache.get(fetched("d", later)).unwrap(), "d");
        cache.invalidate();
        let err = cache.get(failing).unwrap_err();
        assert_eq!(err.kind, StoreErrorKind::Transient);
    }
}
