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
    fn attempts() {
        assert!(Attempts::Forever.allows(1_000_000));
        assert!(Attempts::AtMost(3).allows(2));
        assert!(!Attempts::AtMost(3).allows(3));
    }
}
