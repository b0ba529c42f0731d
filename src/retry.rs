//! The one retry policy every network call shares.
//!
//! Exponential back-off with decorrelated jitter, as described in "Exponential Backoff
//! And Jitter" (<https://aws.amazon.com/blogs/architecture/exponential-backoff-and-jitter/>)
//! and used by object_store's `client/backoff.rs`: each delay is drawn uniformly between
//! the initial delay and twice the previous one, capped; the first is 100 ms and the
//! cap 15 s. A server's `Retry-After` replaces the drawn delay when it is longer.

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

/// How many attempts an operation gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempts {
    /// Service mode: keep trying until it works or the process is asked to stop.
    Forever,
    /// `--once` mode: give up after this many, so the run can end and say so.
    AtMost(u32),
}

impl Attempts {
    pub fn allows(self, attempt: u32) -> bool {
        match self {
            Attempts::Forever => true,
            Attempts::AtMost(n) => attempt < n,
        }
    }
}

/// What one try of an operation came to.
pub enum Step<T, E> {
    Done(T),
    /// Failed for good: no point trying again.
    Fail(E),
    /// Failed for now; the server may say how long to wait.
    Retry(E, Option<Duration>),
}

/// Runs `op` until it is done, fails for good or runs out of `attempts`, waiting the
/// shared back-off between tries (cut short when the process is asked to stop). The
/// error of the last try is returned, with the number of attempts when they ran out.
pub fn with_retries<T, E: std::fmt::Display>(
    attempts: Attempts,
    mut op: impl FnMut() -> Step<T, E>,
) -> Result<T, Exhausted<E>> {
    let mut backoff = Backoff::new();
    let mut attempt = 0;
    loop {
        attempt += 1;
        let (error, after) = match op() {
            Step::Done(v) => return Ok(v),
            Step::Fail(e) => {
                return Err(Exhausted {
                    error: e,
                    attempts: None,
                })
            }
            Step::Retry(e, after) => (e, after),
        };
        if !attempts.allows(attempt) {
            return Err(Exhausted {
                error,
                attempts: Some(attempt),
            });
        }
        let delay = backoff.next_delay(after);
        log::debug!(
            "{error}; retrying in {:.1}s (attempt {attempt})",
            delay.as_secs_f64()
        );
        if !crate::shutdown::sleep(delay) {
            return Err(Exhausted {
                error,
                attempts: Some(attempt),
            });
        }
    }
}

/// The last error of [`with_retries`]; `attempts` is set when it was retried and the
/// attempts (or the process's patience) ran out.
pub struct Exhausted<E> {
    pub error: E,
    pub attempts: Option<u32>,
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

    #[test]
    fn with_retries_stops_at_the_bound_and_on_a_final_failure() {
        let mut tries = 0;
        let r: Result<(), _> = with_retries(Attempts::AtMost(3), || {
            tries += 1;
            Step::Retry("busy", Some(Duration::from_millis(1)))
        });
        let e = r.err().unwrap();
        assert_eq!((tries, e.error, e.attempts), (3, "busy", Some(3)));
        let mut tries = 0;
        let r: Result<(), _> = with_retries(Attempts::Forever, || {
            tries += 1;
            if tries < 2 {
                Step::Retry("x", Some(Duration::from_millis(1)))
            } else {
                Step::Fail("no")
            }
        });
        let e = r.err().unwrap();
        assert_eq!((tries, e.error, e.attempts), (2, "no", None));
        assert_eq!(
            with_retries::<_, &str>(Attempts::AtMost(1), || Step::Done(7)).ok(),
            Some(7)
        );
    }

    #[test]
    fn attempts() {
        assert!(Attempts::Forever.allows(1_000_000));
        assert!(Attempts::AtMost(3).allows(2));
        assert!(!Attempts::AtMost(3).allows(3));
    }
}
