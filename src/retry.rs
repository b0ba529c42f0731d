//! The one retry policy every network call shares.
//!
//! Exponential back-off with decorrelated jitter, as described in "Exponential Backoff
//! And Jitter" (<https://aws.amazon.com/blogs/architecture/exponential-backoff-and-jitter/>)
//! and used by object_store's `client/backoff.rs`: each delay is drawn uniformly between
//! the initial delay and twice the previous one, capped; the first is 100 ms and the
//! cap 15 s. A server's `Retry-After` replaces the drawn delay when it is longer.
//!
//! One layer decides about each retry, the one that made the request: the storage
//! client retries each of its requests (so a part, block or chunk is resent, never a
//! whole recording), and the engine retries each platform request and each transfer
//! whose download broke. A storage error that reaches the engine is final: it reports
//! it and never retries it again. Both use [`with_retries`] with the same
//! [`RetryBudget`] (forever in service mode, `SP_TASK_SYNC_RETRY_TIMEOUT` per operation
//! in `--once`), and every back-off is counted in `/metrics` by side and reason.

use std::time::Duration;

pub const INITIAL_DELAY: Duration = Duration::from_millis(100);
pub const MAX_DELAY: Duration = Duration::from_secs(15);
/// A `Retry-After` longer than this is cut to it, so a confused server cannot park us.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);

/// Delays between attempts of one operation.
pub struct Backoff {
    initial: f64,
    cap: f64,
    next: f64,
    rng: Box<dyn FnMut() -> f64 + Send>,
}

impl Backoff {
    /// The standard policy: 100 ms start, 15 s cap, random jitter.
    pub fn new() -> Backoff {
        let mut rng = Rng::seeded();
        Backoff::with_rng(INITIAL_DELAY, MAX_DELAY, Box::new(move || rng.next_f64()))
    }

    /// `rng` returns numbers in `[0, 1)`; tests inject a fixed one.
    pub fn with_rng(
        initial: Duration,
        cap: Duration,
        rng: Box<dyn FnMut() -> f64 + Send>,
    ) -> Backoff {
        let initial = initial.as_secs_f64();
        Backoff {
            initial,
            cap: cap.as_secs_f64(),
            next: initial,
            rng,
        }
    }

    /// The delay before the next attempt; `retry_after` is the server's wish, if any.
    pub fn next_delay(&mut self, retry_after: Option<Duration>) -> Duration {
        let upper = self.next * 2.0;
        let drawn = self.initial + (upper - self.initial).max(0.0) * (self.rng)();
        let delay = std::mem::replace(&mut self.next, drawn.min(self.cap));
        let delay = Duration::from_secs_f64(delay);
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
    /// The server stayed silent longer than `SP_HTTP_TIMEOUT`.
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
/// back-off is logged at warn with `what` and counted in `/metrics` by `side` and
/// reason. The error of the last try is returned, with the number of tries when the
/// budget (or the process's patience) ran out.
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
    let started = std::time::Instant::now();
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
        crate::metrics::global().retry(side, reason);
        let delay = backoff.next_delay(after);
        log::warn!(
            "{what}: {}; retrying in {:.1}s (attempt {attempt})",
            gave_up.error,
            delay.as_secs_f64()
        );
        if !crate::shutdown::sleep(delay) {
            return Err(gave_up);
        }
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

    fn ms(d: Duration) -> u128 {
        d.as_millis()
    }

    #[test]
    fn grows_then_caps_with_fixed_rng() {
        // rng = 1.0 (just under): always the upper bound, so the delays double.
        let mut b = Backoff::with_rng(INITIAL_DELAY, MAX_DELAY, Box::new(|| 0.999_999_999));
        let delays: Vec<u128> = (0..10).map(|_| ms(b.next_delay(None))).collect();
        assert_eq!(
            delays,
            vec![100, 200, 400, 799, 1599, 3199, 6399, 12799, 15000, 15000]
        );
    }

    #[test]
    fn lowest_draw_stays_at_initial() {
        let mut b = Backoff::with_rng(INITIAL_DELAY, MAX_DELAY, Box::new(|| 0.0));
        assert!((0..20).all(|_| b.next_delay(None) == INITIAL_DELAY));
    }

    #[test]
    fn middle_draws_are_jittered_between_bounds() {
        let mut b = Backoff::with_rng(INITIAL_DELAY, MAX_DELAY, Box::new(|| 0.5));
        let delays: Vec<u128> = (0..4).map(|_| ms(b.next_delay(None))).collect();
        // next = 0.1 + (2 * prev - 0.1) / 2
        assert_eq!(delays, vec![100, 150, 200, 250]);
    }

    #[test]
    fn retry_after_wins_when_longer_and_is_capped() {
        let mut b = Backoff::with_rng(INITIAL_DELAY, MAX_DELAY, Box::new(|| 0.0));
        assert_eq!(
            b.next_delay(Some(Duration::from_secs(2))),
            Duration::from_secs(2)
        );
        assert_eq!(b.next_delay(Some(Duration::from_millis(1))), INITIAL_DELAY);
        assert_eq!(
            b.next_delay(Some(Duration::from_secs(86_400))),
            MAX_RETRY_AFTER
        );
    }

    fn quick() -> Backoff {
        Backoff::with_rng(
            Duration::from_millis(1),
            Duration::from_millis(2),
            Box::new(|| 0.0),
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
