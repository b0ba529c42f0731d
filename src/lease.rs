//! One connector per journal: a lease object next to the page journal.
//!
//! Two connectors on one tag would share one platform cursor and one journal and
//! corrupt each other's state; Kubernetes starts the new pod of a rolling update before
//! it stops the old one, and `replicas: 2` by mistake is common. So before it touches
//! the journal a connector takes a lease: `.spinoco-connector/<tag>.lease.json` in the
//! storage, created only if absent and replaced only if unchanged (conditional writes:
//! S3 `If-None-Match`/`If-Match`, GCS `ifGenerationMatch`, Azure `If-None-Match`/
//! `If-Match`, local an exclusive create under a file lock). The owner renews it every
//! quarter of its time to live, releases it on a clean stop, and stops working itself
//! when it could not renew for three quarters of it, so a successor that takes over
//! an expired lease never works beside it.
//!
//! Expiry is judged on the successor's own clock, as Kubernetes' leader election does:
//! a lease whose version has not changed for a whole time to live is expired, whatever
//! the clocks of the two hosts say. Two shortcuts avoid that wait: a released lease,
//! and one whose owner ran on this host under a process id that is gone or is now
//! ours (a container restarted in place).
//!
//! A conditional create that the store makes atomically (local storage) decides who
//! holds the lease at once; on the clouds the new holder reads its lease back after a
//! moment, since a store that checks and then writes (the S3 test server) may let two
//! writers both win. The holder then probes whether the store honours conditions at
//! all, beside its first round.
//!
//! The record names the owner's run id, a random id per process that its local temp
//! files carry too: process ids say nothing across PID namespaces (containers sharing a
//! volume), so whose temp files are whose is told by the run id and the tag.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use log::{info, warn};
use serde::{Deserialize, Serialize};

use crate::process;
use crate::store::{BlobStore, ObjectVersion, PutCondition, PutIf, StoreError, StoreErrorKind};
use crate::template::RESERVED_PREFIX;

/// What the lease object holds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LeaseRecord {
    /// `host/pid/nonce`: unique per process, so a restarted process is another owner.
    pub owner: String,
    pub host: String,
    pub pid: u32,
    /// Unix milliseconds the owner took the lease and last renewed it (its own clock;
    /// shown to people, never used to judge expiry across hosts).
    pub since_ms: u64,
    pub renewed_ms: u64,
    pub ttl_ms: u64,
    /// Set on a clean stop: a successor may take over at once.
    #[serde(default)]
    pub released: bool,
    /// The owner's [`process::run_id`]: its local temp files carry it, so they can be told from
    /// the leftovers of earlier runs (empty in records of older versions).
    #[serde(default)]
    pub run_id: String,
}

impl LeaseRecord {
    /// `host pid 123, renewed 4s ago` for logs and `check`.
    pub fn describe(&self) -> String {
        let ago = now_ms().saturating_sub(self.renewed_ms) as f64 / 1000.0;
        let state = if self.released { "released" } else { "renewed" };
        format!(
            "{} (pid {}), {state} {ago:.0}s ago, holding since {}",
            self.host,
            self.pid,
            crate::template::iso_millis(self.since_ms as i64)
        )
    }
}

#[derive(Debug)]
pub enum LeaseError {
    /// `--once`: another connector holds the journal of this tag and is alive.
    Held {
        tag: String,
        holder: Box<LeaseRecord>,
    },
    Store(StoreError),
    /// Asked to stop while waiting for the lease.
    Stopped,
}

impl fmt::Display for LeaseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LeaseError::Held { tag, holder } => write!(
                f,
                "another connector works on tag {tag:?}: {}; two on one tag would corrupt each \
                 other's journal, so this one does nothing (run one instance per tag, or wait \
                 until it stops)",
                holder.describe()
            ),
            LeaseError::Store(e) if e.kind == StoreErrorKind::Denied => {
                f.write_str("the storage refused access (taking the journal lease)")
            }
            LeaseError::Store(_) => f.write_str("the journal lease"),
            LeaseError::Stopped => f.write_str("stopped while waiting for the journal lease"),
        }
    }
}

impl std::error::Error for LeaseError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            LeaseError::Store(e) => Some(e),
            LeaseError::Held { .. } | LeaseError::Stopped => None,
        }
    }
}

impl From<StoreError> for LeaseError {
    fn from(e: StoreError) -> Self {
        LeaseError::Store(e)
    }
}

/// The key of the lease of `tag`, beside its page journal.
pub fn lease_key(tag: &str) -> String {
    format!(
        "{RESERVED_PREFIX}/{}.lease.json",
        crate::template::escape_tag(tag)
    )
}

/// Reads who holds the lease of `tag`, for `check`.
pub fn holder(store: &dyn BlobStore, tag: &str) -> Result<Option<LeaseRecord>, StoreError> {
    Ok(store
        .get_versioned(&lease_key(tag))?
        .and_then(|v| serde_json::from_slice(&v.bytes).ok()))
}

/// Whether to wait for a lease another connector holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhenHeld {
    /// Service mode: wait, logging the owner now and then.
    Wait,
    /// `--once`: give up with [`LeaseError::Held`] as soon as the owner renews (a lease
    /// nobody renews is taken over after one ttl, as in service mode).
    GiveUp,
}

/// A lease this process holds. Dropping it does not release it: call [`Lease::release`].
pub struct Lease {
    store: Arc<dyn BlobStore>,
    key: String,
    ttl: Duration,
    state: Mutex<Held>,
    /// Signalled to end the renewal thread.
    done: Condvar,
    lost: AtomicBool,
    /// The record this lease replaced (the previous holder's, released or expired).
    predecessor: Option<LeaseRecord>,
    /// The probe for conditional writes, which runs beside the first round; joined
    /// when the lease is released, so that it never outlives the run.
    probe: Mutex<Option<JoinHandle<()>>>,
}

struct Held {
    record: LeaseRecord,
    version: ObjectVersion,
    renewed_at: Instant,
    released: bool,
}

impl Lease {
    /// Takes the lease of `tag`, waiting for another owner to stop or expire (`Wait`)
    /// or giving up at once when it is alive (`GiveUp`).
    pub fn acquire(
        store: Arc<dyn BlobStore>,
        tag: &str,
        ttl: Duration,
        when_held: WhenHeld,
    ) -> Result<Arc<Lease>, LeaseError> {
        let key = lease_key(tag);
        let me = Owner::of_this_process();
        // The version of the other owner's lease we are watching, since when.
        let mut watched: Option<(ObjectVersion, Instant)> = None;
        // The other owner's lease changed while we watched: it is alive.
        let mut renewed_meanwhile = false;
        let mut last_said: Option<Instant> = None;
        loop {
            if crate::shutdown::requested() {
                return Err(LeaseError::Stopped);
            }
            let current = store.get_versioned(&key)?;
            let record = me.record(ttl);
            let bytes = serde_json::to_vec(&record).expect("a lease serialises");
            let mut predecessor = None;
            let condition = match &current {
                None => PutCondition::IfAbsent,
                Some(found) => {
                    let theirs: Option<LeaseRecord> = serde_json::from_slice(&found.bytes).ok();
                    let seen_since = match &watched {
                        Some((v, since)) if *v == found.version => *since,
                        _ => {
                            let now = Instant::now();
                            renewed_meanwhile |= watched.is_some();
                            watched = Some((found.version.clone(), now));
                            now
                        }
                    };
                    let free = match &theirs {
                        Some(t) => t.released || me.outlived(t) || seen_since.elapsed() >= ttl,
                        // Unreadable: treat as held until it has not changed for a ttl.
                        None => seen_since.elapsed() >= ttl,
                    };
                    if !free {
                        let holder = theirs.unwrap_or_else(|| unknown_holder(ttl));
                        // `--once` gives up as soon as the owner shows it is alive; a
                        // lease nobody renews is watched for one ttl and then taken over.
                        if when_held == WhenHeld::GiveUp && renewed_meanwhile {
                            return Err(LeaseError::Held {
                                tag: tag.to_string(),
                                holder: Box::new(holder),
                            });
                        }
                        if last_said.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
                            warn!(
                                "another connector works on tag {tag:?}: {}; waiting until it stops or its lease expires ({}s without renewal)",
                                holder.describe(),
                                ttl.as_secs()
                            );
                            last_said = Some(Instant::now());
                        }
                        if !crate::shutdown::sleep(poll_interval(ttl)) {
                            return Err(LeaseError::Stopped);
                        }
                        continue;
                    }
                    if let Some(t) = &theirs {
                        if !t.released {
                            warn!(
                                "taking over the journal lease of tag {tag:?} from {}: it was not renewed",
                                t.describe()
                            );
                        }
                    }
                    predecessor = theirs;
                    PutCondition::IfMatch(found.version.clone())
                }
            };
            match store.put_if(&key, &bytes, condition)? {
                PutIf::Written(version) => {
                    // A store whose conditional create is not atomic (s3s-fs checks, then
                    // writes) may let two writers both "win": after a moment, the lease
                    // must still be ours, or the other writer has it. An atomic one
                    // (local storage) needs no second look.
                    if !store.atomic_creates() {
                        if !crate::shutdown::sleep(SETTLE) {
                            return Err(LeaseError::Stopped);
                        }
                        let still_ours = store.get_versioned(&key)?.is_some_and(|now| {
                            now.version == version
                                && serde_json::from_slice::<LeaseRecord>(&now.bytes)
                                    .is_ok_and(|r| r.owner == record.owner)
                        });
                        if !still_ours {
                            warn!("another connector wrote the journal lease of tag {tag:?} at the same moment; looking again");
                            continue;
                        }
                    }
                    info!(
                        "holding the journal lease of tag {tag:?} ({key}, renewed every {}s)",
                        poll_interval(ttl).as_secs()
                    );
                    let probe = probe_conditions(store.clone(), &key);
                    return Ok(Arc::new(Lease {
                        store,
                        key,
                        ttl,
                        state: Mutex::new(Held {
                            record,
                            version,
                            renewed_at: Instant::now(),
                            released: false,
                        }),
                        done: Condvar::new(),
                        lost: AtomicBool::new(false),
                        predecessor,
                        probe: Mutex::new(probe),
                    }));
                }
                // Someone else wrote in between: look again.
                PutIf::ConditionFailed => continue,
            }
        }
    }

    /// Renews the lease every quarter of its time to live until it is released. When
    /// another owner took it over, or it was not renewed for three quarters of its time
    /// to live (the storage is unreachable, or a renewal hangs in its retries), the
    /// process is asked to stop (see [`Lease::lost`]) before a successor may take over.
    pub fn keep_renewed(self: &Arc<Self>) {
        let renewer = Arc::clone(self);
        let watcher = Arc::clone(self);
        for (name, run) in [
            (
                "lease-renew",
                Box::new(move || renewer.renew_loop()) as Box<dyn FnOnce() + Send>,
            ),
            ("lease-watch", Box::new(move || watcher.watch_loop())),
        ] {
            std::thread::Builder::new()
                .name(name.into())
                .spawn(run)
                .expect("a thread starts");
        }
    }

    fn renew_loop(&self) {
        let every = poll_interval(self.ttl);
        loop {
            let version = {
                let state = self.state.lock().unwrap();
                let (state, _) = self.done.wait_timeout(state, every).unwrap();
                if state.released || self.lost() {
                    return;
                }
                state.version.clone()
            };
            let mut record = self.state.lock().unwrap().record.clone();
            record.renewed_ms = now_ms();
            let bytes = serde_json::to_vec(&record).expect("a lease serialises");
            match self
                .store
                .put_if(&self.key, &bytes, PutCondition::IfMatch(version))
            {
                Ok(PutIf::Written(version)) => {
                    let mut state = self.state.lock().unwrap();
                    state.record = record;
                    state.version = version;
                    state.renewed_at = Instant::now();
                }
                Ok(PutIf::ConditionFailed) => {
                    return self.lose(format!(
                        "the journal lease {} was taken over by another connector",
                        self.key
                    ))
                }
                Err(e) => warn!(
                    "renewing the journal lease {}: {}; trying again in {}s",
                    self.key,
                    e.report(),
                    every.as_secs()
                ),
            }
        }
    }

    fn watch_loop(&self) {
        let limit = self.ttl * 3 / 4;
        let mut state = self.state.lock().unwrap();
        loop {
            let (s, _) = self.done.wait_timeout(state, self.ttl / 8).unwrap();
            state = s;
            if state.released || self.lost() {
                return;
            }
            if state.renewed_at.elapsed() >= limit {
                drop(state);
                return self.lose(format!(
                    "the journal lease {} could not be renewed for {}s",
                    self.key,
                    limit.as_secs()
                ));
            }
        }
    }

    fn lose(&self, why: String) {
        if !self.lost.swap(true, Ordering::SeqCst) {
            log::error!("{why}; stopping, so that two connectors never work on one journal");
            crate::shutdown::request();
        }
    }

    /// The previous holder's record, when this lease replaced one: its run is over (it
    /// released the lease, or it is gone or fenced off), so what its run id names is
    /// left over.
    pub fn predecessor(&self) -> Option<&LeaseRecord> {
        self.predecessor.as_ref()
    }

    /// Whether the lease was lost while working: the run was stopped because of it.
    pub fn lost(&self) -> bool {
        self.lost.load(Ordering::SeqCst)
    }

    /// Marks the lease released, so a successor takes over at once, and ends renewal
    /// (after the probe for conditional writes is done: it leaves nothing behind).
    pub fn release(&self) {
        let probe = self.probe.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(probe) = probe {
            let _ = probe.join();
        }
        let mut state = self.state.lock().unwrap();
        if state.released {
            return;
        }
        state.released = true;
        self.done.notify_all();
        if self.lost() {
            return;
        }
        let mut record = state.record.clone();
        record.released = true;
        record.renewed_ms = now_ms();
        let bytes = serde_json::to_vec(&record).expect("a lease serialises");
        match self.store.put_if(
            &self.key,
            &bytes,
            PutCondition::IfMatch(state.version.clone()),
        ) {
            Ok(PutIf::Written(_)) => info!("released the journal lease {}", self.key),
            Ok(PutIf::ConditionFailed) => {
                warn!(
                    "the journal lease {} was taken over before it was released",
                    self.key
                )
            }
            Err(e) => warn!(
                "could not release the journal lease {} ({}); a successor takes over after {}s",
                self.key,
                e.report(),
                self.ttl.as_secs()
            ),
        }
    }
}

/// How long a new owner waits before it reads its lease back (see [`Lease::acquire`]).
const SETTLE: Duration = Duration::from_millis(300);

fn poll_interval(ttl: Duration) -> Duration {
    (ttl / 4).max(Duration::from_millis(250))
}

fn unknown_holder(ttl: Duration) -> LeaseRecord {
    LeaseRecord {
        owner: "?".into(),
        host: "an unknown host (the lease object cannot be read)".into(),
        pid: 0,
        since_ms: 0,
        renewed_ms: 0,
        ttl_ms: ttl.as_millis() as u64,
        released: false,
        run_id: String::new(),
    }
}

/// Runs [`warn_if_conditions_ignored`] on a thread of its own (the first round does
/// not wait for it); `None` when no thread could start, after probing here instead, and
/// for a store whose creates are atomic (it honours conditions by its nature).
fn probe_conditions(store: Arc<dyn BlobStore>, lease_key: &str) -> Option<JoinHandle<()>> {
    if store.atomic_creates() {
        return None;
    }
    let key = lease_key.to_string();
    let probing = store.clone();
    let spawned = std::thread::Builder::new()
        .name("lease-probe".into())
        .spawn(move || warn_if_conditions_ignored(probing.as_ref(), &key));
    match spawned {
        Ok(handle) => Some(handle),
        Err(_) => {
            warn_if_conditions_ignored(store.as_ref(), lease_key);
            None
        }
    }
}

/// A store that ignores conditional headers (some S3-compatible ones do) cannot keep
/// a second connector out: say so once, and go on as the README describes. Probed by
/// the holder right after it took the lease.
fn warn_if_conditions_ignored(store: &dyn BlobStore, lease_key: &str) {
    // Only the lease holder probes, so one name per tag serves: a probe left by a
    // holder killed in the middle is removed by the next one's.
    let probe = format!("{lease_key}.probe");
    match crate::store::honours_conditions(store, &probe) {
        Ok(true) => {}
        Ok(false) => warn!(
            "{} ignores conditional writes (If-None-Match): the journal lease cannot keep a \
             second connector on this tag out; make sure only one runs per tag",
            store.describe()
        ),
        Err(e) => warn!(
            "could not check that the storage honours conditional writes: {}",
            e.report()
        ),
    }
}

/// Who this process is.
struct Owner {
    host: String,
    pid: u32,
    nonce: u64,
}

impl Owner {
    fn of_this_process() -> Owner {
        Owner {
            host: process::host_name(),
            pid: std::process::id(),
            nonce: crate::retry::Rng::seeded().next_u64(),
        }
    }

    fn id(&self) -> String {
        format!("{}/{}/{:016x}", self.host, self.pid, self.nonce)
    }

    fn record(&self, ttl: Duration) -> LeaseRecord {
        let now = now_ms();
        LeaseRecord {
            owner: self.id(),
            host: self.host.clone(),
            pid: self.pid,
            since_ms: now,
            renewed_ms: now,
            ttl_ms: ttl.as_millis() as u64,
            released: false,
            run_id: process::run_id().to_string(),
        }
    }

    /// The other owner ran on this host, and its process is gone (or its pid is ours
    /// now: a container restarted in place), so it cannot be renewing.
    fn outlived(&self, theirs: &LeaseRecord) -> bool {
        theirs.host == self.host
            && theirs.owner != self.id()
            && (theirs.pid == self.pid || !process::runs(theirs.pid))
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::local::LocalStore;
    use crate::store::put_bytes;

    fn store(name: &str) -> Arc<dyn BlobStore> {
        let root =
            std::env::temp_dir().join(format!("spinoco-lease-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        Arc::new(LocalStore::open(&root).unwrap())
    }

    fn foreign(host: &str, pid: u32, released: bool) -> Vec<u8> {
        let now = now_ms();
        serde_json::to_vec(&LeaseRecord {
            owner: format!("{host}/{pid}/1"),
            host: host.into(),
            pid,
            since_ms: now,
            renewed_ms: now,
            ttl_ms: 60_000,
            released,
            run_id: "0123456789abcdef".into(),
        })
        .unwrap()
    }

    const TTL: Duration = Duration::from_millis(600);

    #[test]
    fn a_lease_names_its_owner_and_a_release_frees_it() {
        let s = store("turns");
        let first = Lease::acquire(s.clone(), "t/1", TTL, WhenHeld::GiveUp).unwrap();
        let h = holder(s.as_ref(), "t/1").unwrap().unwrap();
        assert!(!h.released && h.pid == std::process::id(), "{h:?}");
        assert_eq!(h.run_id, process::run_id());
        assert!(
            h.run_id.len() == 16 && h.run_id.bytes().all(|b| b.is_ascii_hexdigit()),
            "{h:?}"
        );
        assert!(
            h.describe().contains(&format!("(pid {})", h.pid)),
            "{}",
            h.describe()
        );
        assert!(first.predecessor().is_none());
        first.release();
        assert!(holder(s.as_ref(), "t/1").unwrap().unwrap().released);
        let second = Lease::acquire(s.clone(), "t/1", TTL, WhenHeld::GiveUp).unwrap();
        assert!(!second.lost());
        assert_eq!(second.predecessor().unwrap().owner, h.owner);
        // Another tag has its own lease.
        Lease::acquire(s, "t/2", TTL, WhenHeld::GiveUp).unwrap();
    }

    #[test]
    fn a_lease_of_another_host_expires_only_after_a_ttl_without_change() {
        let s = store("expiry");
        // A crashed connector on another node: nobody renews it, so --once as well as
        // the service takes it over after one ttl, not before.
        for when_held in [WhenHeld::Wait, WhenHeld::GiveUp] {
            put_bytes(s.as_ref(), &lease_key("t"), &foreign("elsewhere", 1, false)).unwrap();
            let started = Instant::now();
            Lease::acquire(s.clone(), "t", TTL, when_held).unwrap();
            assert!(
                started.elapsed() >= TTL,
                "taken over before the lease expired"
            );
            assert_eq!(
                holder(s.as_ref(), "t").unwrap().unwrap().pid,
                std::process::id()
            );
        }
    }

    #[test]
    fn a_dead_owner_on_this_host_or_a_released_lease_is_taken_over_at_once() {
        let s = store("dead");
        let me = Owner::of_this_process();
        // A pid that is not running: above the kernel's pid_max.
        put_bytes(
            s.as_ref(),
            &lease_key("t"),
            &foreign(&me.host, 4_194_305, false),
        )
        .unwrap();
        let dead = Lease::acquire(s.clone(), "t", Duration::from_secs(3600), WhenHeld::GiveUp);
        // Its run id names the leftovers a successor may sweep.
        let run = |l: &Lease| l.predecessor().map(|p| p.run_id.clone());
        assert_eq!(run(&dead.unwrap()).as_deref(), Some("0123456789abcdef"));
        put_bytes(s.as_ref(), &lease_key("u"), &foreign("elsewhere", 1, true)).unwrap();
        let released = Lease::acquire(s, "u", Duration::from_secs(3600), WhenHeld::GiveUp);
        assert_eq!(run(&released.unwrap()).as_deref(), Some("0123456789abcdef"));
    }

    /// Local storage with the atomicity it is told to claim, counting the reads of
    /// versions and the conditional writes.
    struct Counted {
        local: LocalStore,
        atomic: bool,
        reads: std::sync::atomic::AtomicUsize,
        writes: std::sync::atomic::AtomicUsize,
    }

    impl BlobStore for Counted {
        fn describe(&self) -> String {
            self.local.describe()
        }
        fn put_with(
            &self,
            key: &str,
            src: &mut dyn std::io::Read,
            size: Option<u64>,
            info: &crate::store::ObjectInfo,
        ) -> Result<u64, StoreError> {
            self.local.put_with(key, src, size, info)
        }
        fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
            self.local.get(key)
        }
        fn delete(&self, key: &str) -> Result<(), StoreError> {
            self.local.delete(key)
        }
        fn get_versioned(&self, key: &str) -> Result<Option<crate::store::Versioned>, StoreError> {
            self.reads.fetch_add(1, Ordering::SeqCst);
            self.local.get_versioned(key)
        }
        fn put_if(&self, key: &str, bytes: &[u8], cond: PutCondition) -> Result<PutIf, StoreError> {
            self.writes.fetch_add(1, Ordering::SeqCst);
            self.local.put_if(key, bytes, cond)
        }
        fn atomic_creates(&self) -> bool {
            self.atomic
        }
        fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
            self.local.list(prefix)
        }
        fn size(&self, key: &str) -> Result<Option<u64>, StoreError> {
            self.local.size(key)
        }
        fn stream(&self, key: &str) -> Result<Option<Box<dyn std::io::Read + '_>>, StoreError> {
            self.local.stream(key)
        }
    }

    /// A store whose creates are atomic takes the lease with one read and one write:
    /// no read-back, no probe. Any other reads its lease back, and probes conditional
    /// writes beside the run; the probe is over, its object gone, once the lease is
    /// released.
    #[test]
    fn only_a_store_without_atomic_creates_reads_its_lease_back_and_is_probed() {
        let counted = |name: &str, atomic: bool| {
            let root =
                std::env::temp_dir().join(format!("spinoco-lease-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&root);
            Arc::new(Counted {
                local: LocalStore::open(&root).unwrap(),
                atomic,
                reads: Default::default(),
                writes: Default::default(),
            })
        };
        let atomic = counted("atomic", true);
        let lease = Lease::acquire(atomic.clone(), "t", TTL, WhenHeld::GiveUp).unwrap();
        lease.release();
        assert_eq!(atomic.reads.load(Ordering::SeqCst), 1, "read back");
        assert_eq!(atomic.writes.load(Ordering::SeqCst), 2, "probed");

        let checked = counted("checked", false);
        let lease = Lease::acquire(checked.clone(), "t", TTL, WhenHeld::GiveUp).unwrap();
        assert_eq!(checked.reads.load(Ordering::SeqCst), 2, "not read back");
        lease.release();
        // Take, the probe's two creates, release.
        assert_eq!(checked.writes.load(Ordering::SeqCst), 4);
        let probe = format!("{}.probe", lease_key("t"));
        assert_eq!(
            checked.get(&probe).unwrap(),
            None,
            "the probe object is left"
        );
    }

    #[test]
    fn a_record_of_an_older_version_without_a_run_id_is_read() {
        let s = store("older");
        let older =
            br#"{"owner":"h/7/1","host":"h","pid":7,"since_ms":1,"renewed_ms":2,"ttl_ms":60000}"#;
        put_bytes(s.as_ref(), &lease_key("t"), older).unwrap();
        let h = holder(s.as_ref(), "t").unwrap().unwrap();
        assert_eq!((h.pid, h.run_id.as_str(), h.released), (7, "", false));
    }
}
