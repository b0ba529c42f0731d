//! Counters of what the connector did, and whether it keeps up.
//!
//! Operators on Docker and Kubernetes need to know whether the connector is alive,
//! whether it keeps up, and what it moved, without reading logs. The engine bumps the
//! process-wide [`Metrics`] (plain atomics, so a bump costs nothing worth measuring);
//! with `SP_METRICS_ADDR` set, [`crate::endpoint`] shows them: `/metrics` in the
//! Prometheus text format, `/readyz` as [`Metrics::readiness`].

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::bandwidth::Timetable;
use crate::retry::{Reason, Side};

/// What was moved and what went wrong, counted one way everywhere: a page's counts
/// (atomics its workers bump: `Counts<AtomicU64>`), a run's (the engine's summary) and
/// the process's (`/metrics`).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Counts<C = u64> {
    pub files: C,
    pub bytes: C,
    /// Files the platform answered 404 for.
    pub missing: C,
    /// Recordings deleted on the platform (a 404 on delete counts: it is gone).
    pub deletes: C,
    /// Tasks, files or deletes that cannot be done as sent (bad names, refused).
    pub rejected: C,
    /// Transfers or deletes given up after every attempt (`--once` only).
    pub failed: C,
}

impl Counts<AtomicU64> {
    pub const fn new() -> Counts<AtomicU64> {
        Counts {
            files: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            missing: AtomicU64::new(0),
            deletes: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        }
    }

    /// Adds `n` to one of the counters.
    pub fn bump(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// The counts now.
    pub fn snapshot(&self) -> Counts {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Counts {
            files: get(&self.files),
            bytes: get(&self.bytes),
            missing: get(&self.missing),
            deletes: get(&self.deletes),
            rejected: get(&self.rejected),
            failed: get(&self.failed),
        }
    }
}

impl std::ops::AddAssign<&Counts> for Counts {
    fn add_assign(&mut self, other: &Counts) {
        self.files += other.files;
        self.bytes += other.bytes;
        self.missing += other.missing;
        self.deletes += other.deletes;
        self.rejected += other.rejected;
        self.failed += other.failed;
    }
}

/// Everything counted since the process started.
pub struct Metrics {
    /// Tasks of finished pages (a re-delivered task counts again).
    tasks: AtomicU64,
    /// Files and bytes are added as each file is stored; the rest when a page is
    /// finished.
    counts: Counts<AtomicU64>,
    /// Back-offs after a transient error, by side and reason ([`crate::retry`]).
    retries: [[AtomicU64; Reason::ALL.len()]; Side::ALL.len()],
    rounds: AtomicU64,
    /// Files whose template name and platform `fileName` differ.
    name_differences: AtomicU64,
    /// Answers to a query of the feed lost on their way (each may have held a task).
    feed_gaps: AtomicU64,
    in_flight: AtomicI64,
    /// Unix milliseconds of the last round that finished with nothing failed; 0 = none yet.
    last_success_ms: AtomicU64,
    /// Unix milliseconds of the last sign of progress (a round finished, a file stored,
    /// a recording deleted); 0 = none yet.
    last_progress_ms: AtomicU64,
    /// Unix milliseconds of the last file stored; 0 = none yet.
    last_file_ms: AtomicU64,
    /// Unix milliseconds this process took up the page in progress; 0 = no page in
    /// progress. A page stays journaled until every task of it is done, so an old value
    /// means a page that does not finish (the storage or the platform keeps failing).
    page_started_ms: AtomicU64,
    /// How recent progress must be for /readyz, in milliseconds (0 until the endpoint
    /// started).
    ready_window_ms: AtomicU64,
    /// The last storage probe of the endpoint worked.
    storage_ok: AtomicBool,
    started_ms: AtomicU64,
    /// The cap on download bandwidth through the day (none until the engine sets it).
    bandwidth: OnceLock<Timetable>,
}

static METRICS: Metrics = Metrics::new();

/// The process-wide counters.
pub fn global() -> &'static Metrics {
    &METRICS
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Counts a transfer as in flight until dropped.
pub struct InFlight(&'static Metrics);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Metrics {
    pub const fn new() -> Metrics {
        Metrics {
            tasks: AtomicU64::new(0),
            counts: Counts::new(),
            retries: [const { [const { AtomicU64::new(0) }; Reason::ALL.len()] }; Side::ALL.len()],
            rounds: AtomicU64::new(0),
            name_differences: AtomicU64::new(0),
            feed_gaps: AtomicU64::new(0),
            in_flight: AtomicI64::new(0),
            last_success_ms: AtomicU64::new(0),
            last_progress_ms: AtomicU64::new(0),
            last_file_ms: AtomicU64::new(0),
            page_started_ms: AtomicU64::new(0),
            ready_window_ms: AtomicU64::new(0),
            storage_ok: AtomicBool::new(true),
            started_ms: AtomicU64::new(0),
            bandwidth: OnceLock::new(),
        }
    }

    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    fn progress(&self) {
        self.last_progress_ms.store(now_ms(), Ordering::Relaxed);
    }

    /// When the oldest page of the engine's window was taken up (`None`: no page is
    /// journaled). Several pages may be in work at once; the gauge shows the oldest.
    pub fn oldest_page(&self, since: Option<std::time::Instant>) {
        let ms = since.map_or(0, |t| {
            now_ms().saturating_sub(t.elapsed().as_millis() as u64)
        });
        self.page_started_ms.store(ms, Ordering::Relaxed);
    }

    /// A page was worked through (or stopped): its counts, as in the run's summary.
    /// (Its files and bytes were counted as each file was stored.)
    pub fn page_done(&self, tasks: u64, page: &Counts) {
        let c = &self.counts;
        Self::add(&self.tasks, tasks);
        Self::add(&c.deletes, page.deletes);
        Self::add(&c.missing, page.missing);
        Self::add(&c.rejected, page.rejected);
        Self::add(&c.failed, page.failed);
        if page.deletes > 0 {
            self.progress();
        }
    }

    pub fn file_stored(&self, bytes: u64) {
        Self::add(&self.counts.files, 1);
        Self::add(&self.counts.bytes, bytes);
        self.last_file_ms.store(now_ms(), Ordering::Relaxed);
        self.progress();
    }

    pub fn retry(&self, side: Side, reason: Reason) {
        Self::add(&self.retries[side as usize][reason as usize], 1);
    }

    pub fn name_differs(&self) {
        Self::add(&self.name_differences, 1);
    }

    /// The answer to a query of the feed was lost on its way (or a start found one).
    pub fn feed_gap(&self) {
        Self::add(&self.feed_gaps, 1);
    }

    /// A round ended; `clean` when nothing in it failed or was stopped.
    pub fn round_done(&self, clean: bool) {
        Self::add(&self.rounds, 1);
        if clean {
            self.last_success_ms.store(now_ms(), Ordering::Relaxed);
            self.progress();
        }
    }

    /// Marks one transfer in flight for the life of the returned guard.
    pub fn transfer(&'static self) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self)
    }

    /// The endpoint started, judging readiness by `ready_window`.
    pub fn endpoint_started(&self, ready_window: Duration) {
        self.started_ms.store(now_ms(), Ordering::Relaxed);
        self.ready_window_ms
            .store(ready_window.as_millis() as u64, Ordering::Relaxed);
    }

    /// The downloads keep to `timetable` (`SP_TASK_SYNC_BANDWIDTH`): the gauge shows the
    /// cap it puts in force at each scrape. Set once; later calls change nothing.
    pub fn bandwidth(&self, timetable: &Timetable) {
        let _ = self.bandwidth.set(timetable.clone());
    }

    /// The endpoint's storage probe got an answer (`reachable`) or not.
    pub fn storage_probed(&self, reachable: bool) {
        self.storage_ok.store(reachable, Ordering::Relaxed);
    }

    /// Whether the engine keeps up: progress within `window`, and the storage answered
    /// the last probe. Returns the reason when not.
    pub fn readiness(&self, window: Duration) -> Result<(), String> {
        if !self.storage_ok.load(Ordering::Relaxed) {
            return Err("the storage did not answer the last probe".into());
        }
        let last = self.last_progress_ms.load(Ordering::Relaxed);
        if last == 0 {
            return Err("no sync round has finished yet".into());
        }
        let age = now_ms().saturating_sub(last);
        if age > window.as_millis() as u64 {
            return Err(format!(
                "no round finished and nothing was stored for {:.0}s (limit {:.0}s: three poll intervals)",
                age as f64 / 1000.0,
                window.as_secs_f64()
            ));
        }
        Ok(())
    }

    /// The counters in Prometheus text format (version 0.0.4).
    pub fn render(&self) -> String {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, samples: &[(&str, String)]| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, value) in samples {
                let _ = writeln!(out, "{name}{labels} {value}");
            }
        };
        metric(
            "spinoco_tasks_total",
            "counter",
            "Tasks of finished pages (a re-delivered task counts again).",
            &[("", get(&self.tasks).to_string())],
        );
        metric(
            "spinoco_files_total",
            "counter",
            "Files stored.",
            &[("", get(&self.counts.files).to_string())],
        );
        metric(
            "spinoco_bytes_total",
            "counter",
            "Bytes stored.",
            &[("", get(&self.counts.bytes).to_string())],
        );
        metric(
            "spinoco_deletes_total",
            "counter",
            "Recordings deleted on the platform after they were stored.",
            &[("", get(&self.counts.deletes).to_string())],
        );
        metric(
            "spinoco_errors_total",
            "counter",
            "Errors by kind: missing = the platform answered 404 for a file; rejected = a task, file or delete that cannot be done as sent; failed = given up after every attempt (--once only).",
            &[
                ("{kind=\"missing\"}", get(&self.counts.missing).to_string()),
                ("{kind=\"rejected\"}", get(&self.counts.rejected).to_string()),
                ("{kind=\"failed\"}", get(&self.counts.failed).to_string()),
            ],
        );
        let retry_labels: Vec<(String, String)> = Side::ALL
            .iter()
            .flat_map(|&side| Reason::ALL.iter().map(move |&reason| (side, reason)))
            .map(|(side, reason)| {
                (
                    format!(
                        "{{side=\"{}\",reason=\"{}\"}}",
                        side.label(),
                        reason.label()
                    ),
                    get(&self.retries[side as usize][reason as usize]).to_string(),
                )
            })
            .collect();
        let retry_samples: Vec<(&str, String)> = retry_labels
            .iter()
            .map(|(l, v)| (l.as_str(), v.clone()))
            .collect();
        metric(
            "spinoco_retries_total",
            "counter",
            "Back-offs after a transient error, by side (platform, storage) and reason (transport, timeout, throttled, server_error, broken_body, io).",
            &retry_samples,
        );
        metric(
            "spinoco_name_differences_total",
            "counter",
            "Files whose name by SP_TASK_SYNC_FILE_NAME_TEMPLATE differs from the platform's fileName (SP_TASK_SYNC_NAMES chose which was used).",
            &[("", get(&self.name_differences).to_string())],
        );
        metric(
            "spinoco_feed_gaps_total",
            "counter",
            "Answers to a query of the sync feed lost on their way after it was sent (or found unjournaled at a start): each may have held one task the platform will not hand out again.",
            &[("", get(&self.feed_gaps).to_string())],
        );
        metric(
            "spinoco_rounds_total",
            "counter",
            "Sync rounds finished.",
            &[("", get(&self.rounds).to_string())],
        );
        metric(
            "spinoco_transfers_in_flight",
            "gauge",
            "Downloads being stored right now.",
            &[("", self.in_flight.load(Ordering::Relaxed).to_string())],
        );
        let cap = self
            .bandwidth
            .get()
            .map_or(0, |t| t.cap_at((now_ms() / 1000) as i64).bytes_per_second());
        metric(
            "spinoco_bandwidth_limit_bytes_per_second",
            "gauge",
            "The cap on download bandwidth in force (SP_TASK_SYNC_BANDWIDTH), in bytes a second; 0: none.",
            &[("", cap.to_string())],
        );
        metric(
            "spinoco_last_success_timestamp_seconds",
            "gauge",
            "Unix time of the last round that finished with nothing failed (0: none yet).",
            &[("", seconds(get(&self.last_success_ms)))],
        );
        metric(
            "spinoco_last_progress_timestamp_seconds",
            "gauge",
            "Unix time of the last sign of progress: a clean round, a file stored or a recording deleted (0: none yet). /readyz wants it within spinoco_ready_window_seconds.",
            &[("", seconds(get(&self.last_progress_ms)))],
        );
        metric(
            "spinoco_last_file_timestamp_seconds",
            "gauge",
            "Unix time of the last file stored (0: none yet).",
            &[("", seconds(get(&self.last_file_ms)))],
        );
        metric(
            "spinoco_journaled_page_timestamp_seconds",
            "gauge",
            "Unix time this process took up the oldest page of its window (up to 3 pages in work at once; each stays journaled until every task of it is done; 0: no page in progress).",
            &[("", seconds(get(&self.page_started_ms)))],
        );
        metric(
            "spinoco_ready_window_seconds",
            "gauge",
            "How recent the last progress must be for /readyz: three poll intervals plus one HTTP timeout.",
            &[("", seconds(get(&self.ready_window_ms)))],
        );
        metric(
            "spinoco_storage_reachable",
            "gauge",
            "1 when the storage answered the last probe.",
            &[(
                "",
                u8::from(self.storage_ok.load(Ordering::Relaxed)).to_string(),
            )],
        );
        metric(
            "spinoco_start_time_seconds",
            "gauge",
            "Unix time the metrics endpoint started.",
            &[("", seconds(get(&self.started_ms)))],
        );
        metric(
            "spinoco_build_info",
            "gauge",
            "The connector's version.",
            &[(
                concat!("{version=\"", env!("CARGO_PKG_VERSION"), "\"}"),
                "1".to_string(),
            )],
        );
        out
    }
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

fn seconds(ms: u64) -> String {
    format!("{}.{:03}", ms / 1000, ms % 1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_counter() {
        let m = Metrics::new();
        m.file_stored(100);
        m.file_stored(50);
        m.page_done(
            3,
            &Counts {
                deletes: 1,
                missing: 1,
                ..Counts::default()
            },
        );
        m.retry(Side::Platform, Reason::ServerError);
        m.retry(Side::Platform, Reason::ServerError);
        m.retry(Side::Storage, Reason::Transport);
        m.round_done(true);
        let text = m.render();
        for line in [
            "spinoco_tasks_total 3",
            "spinoco_files_total 2",
            "spinoco_bytes_total 150",
            "spinoco_deletes_total 1",
            "spinoco_errors_total{kind=\"missing\"} 1",
            "spinoco_errors_total{kind=\"failed\"} 0",
            "spinoco_retries_total{side=\"platform\",reason=\"server_error\"} 2",
            "spinoco_retries_total{side=\"storage\",reason=\"transport\"} 1",
            "spinoco_retries_total{side=\"storage\",reason=\"io\"} 0",
            "spinoco_rounds_total 1",
            "spinoco_transfers_in_flight 0",
        ] {
            assert!(text.lines().any(|l| l == line), "{line:?} not in\n{text}");
        }
        assert!(!text.contains("spinoco_last_success_timestamp_seconds 0.000"));
        assert!(!text.contains("spinoco_last_file_timestamp_seconds 0.000"));
        assert!(!text.contains("spinoco_last_progress_timestamp_seconds 0.000"));
        assert!(text.contains("spinoco_journaled_page_timestamp_seconds 0.000\n"));
    }

    #[test]
    fn the_page_in_progress_is_timed_until_done() {
        let m = Metrics::new();
        let page = |m: &Metrics| {
            let text = m.render();
            let line = text
                .lines()
                .find(|l| l.starts_with("spinoco_journaled_page_timestamp_seconds "))
                .unwrap()
                .to_string();
            line.rsplit_once(' ').unwrap().1.parse::<f64>().unwrap()
        };
        assert_eq!(page(&m), 0.0);
        let before = now_ms() as f64 / 1000.0;
        m.oldest_page(Some(std::time::Instant::now()));
        let started = page(&m);
        assert!(started >= before - 0.002 && started <= now_ms() as f64 / 1000.0 + 0.001);
        m.file_stored(1);
        m.page_done(1, &Counts::default());
        assert_eq!(page(&m), started, "only the engine's window moves it");
        m.oldest_page(None);
        assert_eq!(page(&m), 0.0);
    }

    #[test]
    fn the_bandwidth_gauge_shows_the_cap_in_force() {
        let gauge = |m: &Metrics| {
            let text = m.render();
            let line = text
                .lines()
                .find(|l| l.starts_with("spinoco_bandwidth_limit_bytes_per_second "))
                .unwrap()
                .to_string();
            line.rsplit_once(' ').unwrap().1.to_string()
        };
        let m = Metrics::new();
        assert_eq!(gauge(&m), "0", "no cap");
        m.bandwidth(&Timetable::parse("2MiB/s").unwrap());
        assert_eq!(gauge(&m), "2097152");
        // A timetable of another cap every hour: the cap of the hour of the scrape.
        let m = Metrics::new();
        let hourly: Vec<String> = (0..24).map(|h| format!("{h:02}:00,{}M", h + 1)).collect();
        m.bandwidth(&Timetable::parse(&hourly.join(" ")).unwrap());
        let hour = now_ms() / 1000 % 86_400 / 3600;
        assert_eq!(gauge(&m), ((hour + 1) << 20).to_string());
    }

    #[test]
    fn in_flight_follows_the_guard() {
        static M: Metrics = Metrics::new();
        let a = M.transfer();
        let b = M.transfer();
        assert!(M.render().contains("spinoco_transfers_in_flight 2\n"));
        drop(a);
        drop(b);
        assert!(M.render().contains("spinoco_transfers_in_flight 0\n"));
    }

    #[test]
    fn readiness_needs_recent_progress_and_storage() {
        let m = Metrics::new();
        assert!(
            m.readiness(Duration::from_secs(60)).is_err(),
            "no round yet"
        );
        m.round_done(false);
        assert!(
            m.readiness(Duration::from_secs(60)).is_err(),
            "failed round"
        );
        m.file_stored(1);
        assert_eq!(m.readiness(Duration::from_secs(60)), Ok(()));
        m.last_progress_ms
            .store(now_ms() - 10_000, Ordering::Relaxed);
        assert!(m.readiness(Duration::from_secs(5)).is_err(), "stale");
        m.round_done(true);
        assert_eq!(m.readiness(Duration::from_secs(5)), Ok(()));
        m.storage_probed(false);
        assert!(m.readiness(Duration::from_secs(5)).is_err(), "storage down");
    }
}
