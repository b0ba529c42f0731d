//! The one retry policy every network call shares.
//!
//! Exponential back-off with full jitter, as described in "Exponential Backoff And
//! Jitter" (<https://aws.amazon.com/blogs/architecture/exponential-backoff-and-jitter/>):
//! the delay before retry `n` (from 0) is drawn uniformly from
//! `[0, min(cap, base * 2^n))`, with a 100 ms base and a 15 s cap. So the ceiling reaches
//! the cap at the ninth retry, about 13 s into an outage, and stays there: a platform or
//! storage that stays down gets a try every 7.5 s on average, a few a minute. (A walk
//! drawn between the base and twice the previous delay, as object_store's
//! `client/backoff.rs` does by default, drifts down instead: its logarithm loses
//! `1 - ln 2` a step, so it hovered around 0.4 s.) A server's `Retry-After` replaces the
//! drawn delay when it is longer.
//!
//! One layer decides about each retry, the one that made the request: the storage
//! client retries each of its requests (so a part, block or chunk is resent, never a
//! whole recording), and the engine retries each platform request and each transfer
//! whose download broke (what a store's error means to the engine is said once, in
//! [`crate::store`]). Both use [`with_retries`] with the same [`RetryBudget`] (forever
//! in service mode, `SP_TASK_SYNC_RETRY_TIMEOUT` per operation in `--once`), and every
//! back-off is reported to the observer `main` registers ([`observe`]: the metrics
//! count them by side and reason). The first back-off of an operation is logged at
//! warn, then one summary a minute while it keeps failing; the others at debug.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Hears of every back-off; `main` registers the metrics' counter.
static OBSERVER: OnceLock<fn(Side, Reason)> = OnceLock::new();

/// Registers the one observer of back-offs (later calls do nothing). Without one
/// (unit tests, the benchmark's own loops) back-offs are only logged.
pub fn observe(observer: fn(Side, Reason)) {
    let _ = OBSERVER.set(observer);
}

pub const INITIAL_DELAY: Duration = Duration::from_millis(100);
pub const MAX_DELAY: Duration = Duration::from_secs(15);
/// A `Retry-After` longer than this is cut to it, so a confused server cannot park us.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);
/// While an operation keeps failing, one warning this often (the others at debug).
pub const SUMMARY_EVERY: Duration = Duration::from_secs(60);

/// Delays between attempts of one operation.
pub struct Backoff {
    base: f64,
    cap: f64,
    /// Retries so far: the exponent of the next ceiling.
    retries: u32,
    rng: Box<dyn FnMut() -> f64 + Send>,
}

impl Backoff {
    /// The standard policy: 100 ms base, 15 s cap, random jitter.
    pub fn new() -> Backoff {
        let mut rng = Rng::seeded();
        Backoff::with_rng(INITIAL_DELAY, MAX_DELAY, Box::new(move || rng.next_f64()))
    }

    /// `rng` returns numbers in `[0, 1)`; tests inject a fixed one.
    pub fn with_rng(base: Duration, cap: Duration, rng: Box<dyn FnMut() -> f64 + Send>) -> Backoff {
        Backoff {
            base: base.as_secs_f64(),
            cap: cap.as_secs_f64(),
            retries: 0,
            rng,
        }
    }

    /// The delay before the next attempt; `retry_after` is the server's wish, if any.
    pub fn next_delay(&mut self, retry_after: Option<Duration>) -> Duration {
        // 2^30 times any base is past any cap; the exponent stops growing there.
        let ceiling = (self.base * f64::from(1u32 << self.retries.min(30))).min(self.cap);
        self.retries += 1;
        let delay = Duration::from_secs_f64(ceiling * (self.rng)().clamp(0.0, 1.0));
        match retry_after {
            Some(wish) => delay.max(wish.min(MAX_RETRY_AFTER)),
            None => delay,
        }
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new()
    }
}

/// Which side a retried call talks to (a label of `spinoco_retries_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Platform,
    Storage,
}

impl Side {
    pub const ALL: [Side; 2] = [Side::Platform, Side::Storage];

    pub fn label(self) -> &'static str {
        match self {
            Side::Platform => "platform",
            Side::Storage => "storage",
        }
    }
}

/// Why a try is worth another (a label of `spinoco_retries_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The connection could not be opened or broke (refused, reset, DNS, TLS EOF).
    Transport,
    /// The server stayed silent longer than `SP_HTTP_TIMEOUT`, or a download came
    /// slower than `platform::MIN_RATE` over `platform::RATE_WINDOW` of waiting.
    Timeout,
    /// 429, or a 503 that asks us to slow down.
    Throttled,
    /// Another 5xx.
    ServerError,
    /// A download ended short of its length or broke mid-body.
    BrokenBody,
    /// A local file system error that may pass (a full disk that drains).
    Io,
}

impl Reason {
    pub const ALL: [Reason; 6] = [
        Reason::Transport,
        Reason::Timeout,
        Reason::Throttled,
        Reason::ServerError,
        Reason::BrokenBody,
        Reason::Io,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Reason::Transport => "transport",
            Reason::Timeout => "timeout",
            Reason::Throttled => "throttled",
            Reason::ServerError => "server_error",
            Reason::BrokenBody => "broken_body",
            Reason::Io => "io",
        }
    }

    /// The reason for an HTTP status that is worth retrying.
    pub fn of_status(status: u16) -> Reason {
        match status {
            408 => Reason::Timeout,
            429 => Reason::Throttled,
            _ => Reason::ServerError,
        }
    }
}

/// How long one operation may keep retrying a transient failure: until a time
/// budget is spent (`--once`: `SP_TASK_SYNC_RETRY_TIMEOUT`, like object_store's
/// `retry_timeout`), after a number of tries (tests), or forever (service mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryBudget {
    pub timeout: Option<Duration>,
    pub max_tries: Option<u32>,
}

/// The default budget of one operation in `--once` mode.
pub const DEFAULT_RETRY_TIMEOUT: Duration = Duration::from_secs(180);

impl RetryBudget {
    /// Service mode: until it works or the process is asked to stop.
    pub const FOREVER: RetryBudget = RetryBudget {
        timeout: None,
        max_tries: None,
    };

    pub const fn within(timeout: Duration) -> RetryBudget {
        RetryBudget {
            timeout: Some(timeout),
            max_tries: None,
        }
    }

    pub const fn tries(n: u32) -> RetryBudget {
        RetryBudget {
            timeout: None,
            max_tries: Some(n),
        }
    }

    /// Whether another try may follow `tries` tries, `elapsed` after the first began.
    pub fn allows(self, tries: u32, elapsed: Duration) -> bool {
        self.max_tries.is_none_or(|n| tries < n) && self.timeout.is_none_or(|t| elapsed < t)
    }
}

/// What one try of an operation came to.
pub enum Step<T, E> {
    Done(T),
    /// Failed for good: no point trying again.
    Fail(E),
    /// Failed for now; the server may say how long to wait.
    Retry {
        error: E,
        reason: Reason,
        after: Option<Duration>,
    },
}

/// Runs `op` until it is done, fails for good, or the `budget` is spent, waiting the
/// shared back-off between tries (cut short when the process is asked to stop). Every
/// back-off is logged with `what` (the first at warn, then a summary at warn once a
/// minute, the others at debug) and counted in `/metrics` by `side` and reason. The
/// error of the last try is returned, with the number of tries when the budget (or the
/// process's patience) ran out.
pub fn with_retries<T, E: std::fmt::Display>(
    budget: RetryBudget,
    side: Side,
    what: &str,
    mut op: impl FnMut() -> Step<T, E>,
) -> Result<T, Exhausted<E>> {
    with_backoff(budget, side, what, Backoff::new(), &mut op)
}

fn with_backoff<T, E: std::fmt::Display>(
    budget: RetryBudget,
    side: Side,
    what: &str,
    mut backoff: Backoff,
    op: &mut dyn FnMut() -> Step<T, E>,
) -> Result<T, Exhausted<E>> {
    let started = Instant::now();
    let mut loudness = Loudness::default();
    let mut attempt = 0;
    loop {
        attempt += 1;
        let (error, reason, after) = match op() {
            Step::Done(v) => return Ok(v),
            Step::Fail(error) => return Err(Exhausted { error, tries: None }),
            Step::Retry {
                error,
                reason,
                after,
            } => (error, reason, after),
        };
        let gave_up = Exhausted {
            error,
            tries: Some(attempt),
        };
        if crate::shutdown::requested() || !budget.allows(attempt, started.elapsed()) {
            return Err(gave_up);
        }
        if let Some(observer) = OBSERVER.get() {
            observer(side, reason);
        }
        let delay = backoff.next_delay(after);
        let secs = delay.as_secs_f64();
        let error = named_once(what, &gave_up.error.to_string());
        match loudness.report(Instant::now()) {
            Report::First => log::warn!("{error}; retrying in {secs:.1}s (attempt {attempt})"),
            Report::Summary => log::warn!(
                "{error}; still failing after {attempt} attempts in {:.0}s; retrying in {secs:.1}s",
                started.elapsed().as_secs_f64()
            ),
            Report::Quiet => log::debug!("{error}; retrying in {secs:.1}s (attempt {attempt})"),
        }
        if !crate::shutdown::sleep(delay) {
            return Err(gave_up);
        }
    }
}

/// `message` led by the name of its operation, once: platform errors often name it
/// already (`the sync feed: io: ...`, `the sync feed answered with ...`).
fn named_once(what: &str, message: &str) -> String {
    match message.strip_prefix(what) {
        Some(rest) if rest.starts_with(": ") || rest.starts_with(' ') => message.to_string(),
        _ => format!("{what}: {message}"),
    }
}

/// How loud each back-off of one operation is: a long outage is one warning when it
/// begins and one summary a minute, not a line per attempt.
#[derive(Default)]
struct Loudness {
    last_warning: Option<Instant>,
}

#[derive(Debug, PartialEq, Eq)]
enum Report {
    /// The first back-off: a warning.
    First,
    /// A minute since the last warning: a warning with the count and the time so far.
    Summary,
    /// Any other: a debug line.
    Quiet,
}

impl Loudness {
    fn report(&mut self, now: Instant) -> Report {
        let report = match self.last_warning {
            None => Report::First,
            Some(at) if now.saturating_duration_since(at) >= SUMMARY_EVERY => Report::Summary,
            Some(_) => return Report::Quiet,
        };
        self.last_warning = Some(now);
        report
    }
}

/// The last error of [`with_retries`]; `tries` is set when it was retried and the
/// budget (or the process's patience) ran out.
pub struct Exhausted<E> {
    pub error: E,
    pub tries: Option<u32>,
}

/// A small xorshift64* generator: jitter needs spread, not cryptography.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    pub fn seeded() -> Rng {
        use std::sync::atomic::{AtomicU64, Ordering};
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        Rng::new(nanos ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (std::process::id() as u64) << 32)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `[0, 1)`.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(d: Duration) -> u64 {
        (d.as_secs_f64() * 1000.0).round() as u64
    }

    #[test]
    fn ceilings_double_up_to_the_cap_with_fixed_rng() {
        // rng = 1.0 (just under): always the ceiling, which doubles up to the cap.
        let mut b = Backoff::with_rng(INITIAL_DELAY, MAX_DELAY, Box::new(|| 0.999_999_999));
        let delays: Vec<u64> = (0..11).map(|_| ms(b.next_delay(None))).collect();
        assert_eq!(
            delays,
            vec![100, 200, 400, 800, 1600, 3200, 6400, 12800, 15000, 15000, 15000]
        );
        // Full jitter: the draw scales the ceiling, from nothing to all of it.
        let mut b = Backoff::with_rng(INITIAL_DELAY, MAX_DELAY, Box::new(|| 0.5));
        let delays: Vec<u64> = (0..10).map(|_| ms(b.next_delay(None))).collect();
        assert_eq!(
            delays,
            vec![50, 100, 200, 400, 800, 1600, 3200, 6400, 7500, 7500]
        );
        let mut b = Backoff::with_rng(INITIAL_DELAY, MAX_DELAY, Box::new(|| 0.0));
        assert!((0..100).all(|_| b.next_delay(None) == Duration::ZERO));
    }

    /// The delays of the attempts of an outage of `outage`, with the standard policy
    /// and a seeded generator.
    fn delays_over(seed: u64, outage: Duration) -> Vec<Duration> {
        let mut rng = Rng::new(seed);
        let mut b = Backoff::with_rng(INITIAL_DELAY, MAX_DELAY, Box::new(move || rng.next_f64()));
        let mut delays = Vec::new();
        let mut waited = Duration::ZERO;
        while waited < outage {
            let d = b.next_delay(None);
            waited += d;
            delays.push(d);
        }
        delays
    }

    fn median(mut delays: Vec<Duration>) -> Duration {
        delays.sort();
        delays[delays.len() / 2]
    }

    #[test]
    fn an_outage_reaches_the_cap_within_a_minute_and_stays_near_it() {
        for seed in 1..=50 {
            let minute = delays_over(seed, Duration::from_secs(60));
            assert!(
                (9..=25).contains(&minute.len()),
                "seed {seed}: {} attempts in the first minute",
                minute.len()
            );
            // Ten minutes: the first few quick tries, then about one every 7.5 s.
            let ten = delays_over(seed, Duration::from_secs(600));
            assert!(ten.len() <= 120, "seed {seed}: {} attempts", ten.len());
            let later = median(ten[minute.len()..].to_vec());
            assert!(
                later >= Duration::from_secs(5),
                "seed {seed}: median delay {later:?} after the first minute"
            );
            assert!(ten.iter().all(|d| *d <= MAX_DELAY), "seed {seed}");
        }
    }

    #[test]
    fn retry_after_wins_when_longer_and_is_capped() {
        let mut b = Backoff::with_rng(INITIAL_DELAY, MAX_DELAY, Box::new(|| 0.0));
        assert_eq!(
            b.next_delay(Some(Duration::from_secs(2))),
            Duration::from_secs(2)
        );
        assert_eq!(
            b.next_delay(Some(Duration::from_millis(1))),
            Duration::from_millis(1)
        );
        assert_eq!(
            b.next_delay(Some(Duration::from_secs(86_400))),
            MAX_RETRY_AFTER
        );
        let mut b = Backoff::with_rng(INITIAL_DELAY, MAX_DELAY, Box::new(|| 0.999_999_999));
        assert_eq!(ms(b.next_delay(Some(Duration::from_millis(1)))), 100);
    }

    #[test]
    fn a_long_outage_warns_once_then_once_a_minute() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut l = Loudness::default();
        let reports: Vec<Report> = [0, 1, 30, 59, 60, 61, 119, 125, 126]
            .into_iter()
            .map(|s| l.report(at(s)))
            .collect();
        use Report::*;
        assert_eq!(
            reports,
            vec![First, Quiet, Quiet, Quiet, Summary, Quiet, Quiet, Summary, Quiet]
        );
    }

    #[test]
    fn the_operation_is_named_once() {
        let feed = "the sync feed";
        for already in [
            "the sync feed: io: connection reset",
            "the sync feed answered with a page that is not the expected JSON",
        ] {
            assert_eq!(named_once(feed, already), already);
        }
        assert_eq!(
            named_once(feed, "reading a sync feed page failed: io: reset"),
            "the sync feed: reading a sync feed page failed: io: reset"
        );
        assert_eq!(
            named_once("a.ogg", "/recording-direct/x/r1: io: reset"),
            "a.ogg: /recording-direct/x/r1: io: reset"
        );
    }

    fn quick() -> Backoff {
        Backoff::with_rng(
            Duration::from_millis(1),
            Duration::from_millis(2),
            Box::new(|| 0.5),
        )
    }

    #[test]
    fn with_retries_stops_when_the_budget_is_spent_and_on_a_final_failure() {
        let mut tries = 0;
        let budget = RetryBudget::within(Duration::from_millis(30));
        let r: Result<(), _> = with_backoff(budget, Side::Storage, "t", quick(), &mut || {
            tries += 1;
            Step::Retry {
                error: "busy",
                reason: Reason::ServerError,
                after: None,
            }
        });
        let e = r.err().unwrap();
        assert!(tries >= 2, "retried within the budget ({tries} tries)");
        assert_eq!((e.error, e.tries), ("busy", Some(tries)));
        let mut tries = 0;
        let r: Result<(), _> = with_backoff(
            RetryBudget::FOREVER,
            Side::Platform,
            "t",
            quick(),
            &mut || {
                tries += 1;
                if tries < 5 {
                    Step::Retry {
                        error: "x",
                        reason: Reason::Transport,
                        after: None,
                    }
                } else {
                    Step::Fail("no")
                }
            },
        );
        let e = r.err().unwrap();
        assert_eq!((tries, e.error, e.tries), (5, "no", None));
        let zero = RetryBudget::within(Duration::ZERO);
        let r = with_retries::<_, &str>(zero, Side::Storage, "t", || Step::Done(7));
        assert_eq!(r.ok(), Some(7));
    }

    #[test]
    fn budgets() {
        let long = Duration::from_secs(1 << 40);
        assert!(RetryBudget::FOREVER.allows(1_000_000, long));
        let three = RetryBudget::within(Duration::from_secs(180));
        assert!(three.allows(1_000, Duration::from_secs(179)));
        assert!(!three.allows(1, Duration::from_secs(180)));
        assert!(RetryBudget::tries(3).allows(2, long));
        assert!(!RetryBudget::tries(3).allows(3, Duration::ZERO));
        assert_eq!(Reason::of_status(429), Reason::Throttled);
        assert_eq!(Reason::of_status(502), Reason::ServerError);
    }
}
