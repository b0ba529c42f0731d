//! The cap on download bandwidth (`SP_TASK_SYNC_BANDWIDTH`): a timetable of caps through
//! the day, and the one token bucket every download takes from.
//!
//! Edge boxes share an office uplink, and a backlog synced at full speed fills it during
//! business hours. A timetable in rclone's shape (`08:00,2MiB/s 18:00,off`) says how many
//! file bytes a second may come from the platform at each time of day, in UTC or a fixed
//! offset (a scratch image has no zone database; `timetable.rs`). The [`Limiter`] is a
//! token bucket shared by all workers that holds at most [`BURST`] of the cap, so a burst
//! stays within about a second's worth. It never sleeps: it says how long a reader must
//! wait, and the reader waits (the platform's download, which stops waiting when the
//! process is asked to stop). Time comes from a [`Clock`], so the tests move it by hand.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

mod timetable;

pub use timetable::{Cap, Offset, Timetable};

/// The most the bucket holds: one second at the cap.
pub const BURST: Duration = Duration::from_secs(1);
/// The largest read taken from the bucket at once, whatever the cap.
const MAX_CHUNK: u64 = 64 * 1024;
/// The smallest read taken from the bucket at once, whatever the cap.
const MIN_CHUNK: u64 = 256;

/// Where the limiter's time comes from.
pub trait Clock: Send + Sync {
    /// Monotonic time, for the bucket.
    fn now(&self) -> Instant;
    /// Seconds since the Unix epoch, for the timetable.
    fn unix_seconds(&self) -> i64;
}

/// The system's clocks.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }

    fn unix_seconds(&self) -> i64 {
        unix_now()
    }
}

/// Seconds since the Unix epoch on the system clock.
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// The one token bucket every download takes from, filled at the cap the timetable puts
/// in force, holding at most [`BURST`] of it.
pub struct Limiter {
    timetable: Timetable,
    clock: Arc<dyn Clock>,
    bucket: Mutex<Bucket>,
}

/// The bucket's state. Its tokens go below zero when readers took more than it held:
/// that debt is the time the last of them waits, so readers are served in turn.
#[derive(Debug)]
struct Bucket {
    /// The cap it was last filled at.
    cap: Cap,
    tokens: f64,
    last: Instant,
}

impl Limiter {
    pub fn new(timetable: Timetable, clock: Arc<dyn Clock>) -> Limiter {
        let last = clock.now();
        Limiter {
            timetable,
            clock,
            bucket: Mutex::new(Bucket {
                cap: Cap::Off,
                tokens: 0.0,
                last,
            }),
        }
    }

    /// The cap in force now.
    pub fn cap(&self) -> Cap {
        self.timetable.cap_at(self.clock.unix_seconds())
    }

    /// The most bytes worth reading before taking them: a sixteenth of a second at the
    /// cap (within 256 bytes and 64 KiB), so each wait is short and the workers take
    /// turns; unbounded without a cap.
    pub fn chunk(&self) -> usize {
        match self.cap() {
            Cap::Off => usize::MAX,
            Cap::BytesPerSecond(rate) => (rate / 16).clamp(MIN_CHUNK, MAX_CHUNK) as usize,
        }
    }

    /// Takes `bytes` just read from the bucket; answers how long the reader must wait
    /// before passing them on (zero while the bucket holds them, or without a cap).
    pub fn take(&self, bytes: u64) -> Duration {
        let cap = self.cap();
        let now = self.clock.now();
        let mut bucket = self.bucket.lock().unwrap_or_else(|e| e.into_inner());
        bucket.take(cap, bytes, now)
    }
}

impl Bucket {
    fn take(&mut self, cap: Cap, bytes: u64, now: Instant) -> Duration {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        let Cap::BytesPerSecond(rate) = cap else {
            self.cap = Cap::Off;
            return Duration::ZERO;
        };
        let rate = rate as f64;
        let burst = rate * BURST.as_secs_f64();
        self.tokens = match self.cap {
            // A cap comes into force: it starts with a full bucket.
            Cap::Off => burst,
            // Another cap: a debt is the same wait at the new rate.
            Cap::BytesPerSecond(old) if self.tokens < 0.0 && old as f64 != rate => {
                self.tokens * rate / old as f64 + elapsed * rate
            }
            Cap::BytesPerSecond(_) => self.tokens + elapsed * rate,
        }
        .min(burst);
        self.cap = cap;
        self.tokens -= bytes as f64;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / rate)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::timetable::tests::{at, KIB, MIB};
    use super::*;

    fn table(raw: &str) -> Timetable {
        Timetable::parse(raw).unwrap_or_else(|e| panic!("{raw}: {e:?}"))
    }

    /// A clock the test moves: monotonic and wall time go together.
    struct ManualClock {
        start: Instant,
        elapsed: Mutex<Duration>,
        unix_start: i64,
    }

    impl ManualClock {
        fn at(unix_start: i64) -> Arc<ManualClock> {
            Arc::new(ManualClock {
                start: Instant::now(),
                elapsed: Mutex::new(Duration::ZERO),
                unix_start,
            })
        }

        fn advance(&self, d: Duration) {
            *self.elapsed.lock().unwrap() += d;
        }
    }

    impl Clock for ManualClock {
        fn now(&self) -> Instant {
            self.start + *self.elapsed.lock().unwrap()
        }

        fn unix_seconds(&self) -> i64 {
            self.unix_start + self.elapsed.lock().unwrap().as_secs() as i64
        }
    }

    #[test]
    fn the_bucket_lets_one_second_through_then_the_cap() {
        let clock = ManualClock::at(at(12, 0));
        let limiter = Limiter::new(table("1MiB/s"), clock.clone());
        assert_eq!(limiter.chunk(), 64 * 1024);
        // A full bucket at the start: one second's worth goes at once.
        assert_eq!(limiter.take(MIB), Duration::ZERO);
        // Then each chunk waits its share, and readers who come together queue.
        assert_eq!(limiter.take(64 * KIB), Duration::from_micros(62500));
        assert_eq!(limiter.take(64 * KIB), Duration::from_millis(125));
        clock.advance(Duration::from_millis(125));
        assert_eq!(limiter.take(64 * KIB), Duration::from_micros(62500));

        // A long idle spell saves one second, no more.
        clock.advance(Duration::from_secs(60));
        assert_eq!(limiter.take(MIB), Duration::ZERO);
        assert_eq!(limiter.take(MIB), Duration::from_secs(1));
    }

    #[test]
    fn a_reader_that_waits_as_told_keeps_to_the_cap() {
        let clock = ManualClock::at(at(12, 0));
        let rate = 300 * KIB;
        let limiter = Limiter::new(table("300KiB/s"), clock.clone());
        let chunk = limiter.chunk() as u64;
        assert_eq!(chunk, rate / 16);
        let start = clock.now();
        let mut read = 0;
        while read < 30 * rate {
            read += chunk;
            clock.advance(limiter.take(chunk));
            let elapsed = (clock.now() - start).as_secs_f64();
            assert!(
                read as f64 <= rate as f64 * (elapsed + BURST.as_secs_f64()) + 0.5,
                "{read} bytes in {elapsed}s"
            );
        }
        let elapsed = (clock.now() - start).as_secs_f64();
        assert!(
            (elapsed - 29.0).abs() < 0.01,
            "{elapsed}s: 30 s of bytes less one of burst"
        );
    }

    #[test]
    fn the_cap_switches_at_a_boundary_in_the_offset() {
        // 08:00 and 18:00 in UTC+01:00: 07:00 and 17:00 UTC.
        let t = table("08:00,1MiB/s 18:00,off").in_offset(Offset::parse("+01:00").unwrap());
        let clock = ManualClock::at(at(16, 59) + 58);
        let limiter = Limiter::new(t, clock.clone());
        assert_eq!(limiter.cap(), Cap::BytesPerSecond(MIB));
        assert_eq!(limiter.take(MIB), Duration::ZERO);
        assert_eq!(limiter.take(MIB), Duration::from_secs(1), "in debt");
        clock.advance(Duration::from_secs(1));
        assert_eq!(
            limiter.take(MIB),
            Duration::from_secs(1),
            "17:59:59 still capped"
        );
        clock.advance(Duration::from_secs(1));
        // 18:00 local: off, whatever was owed.
        assert_eq!(limiter.cap(), Cap::Off);
        assert_eq!(limiter.chunk(), usize::MAX);
        assert_eq!(limiter.take(100 * MIB), Duration::ZERO);
        // 08:00 local the next day: the cap again, from a full bucket.
        clock.advance(Duration::from_secs(14 * 3600));
        assert_eq!(limiter.cap(), Cap::BytesPerSecond(MIB));
        assert_eq!(limiter.take(MIB), Duration::ZERO);
        assert_eq!(limiter.take(MIB / 2), Duration::from_millis(500));
    }

    #[test]
    fn a_debt_is_kept_in_time_when_the_cap_changes() {
        let t = table("00:00,1MiB/s 12:00,4MiB/s");
        let clock = ManualClock::at(at(11, 59) + 59);
        let limiter = Limiter::new(t, clock.clone());
        assert_eq!(limiter.take(3 * MIB), Duration::from_secs(2));
        clock.advance(Duration::from_secs(1));
        // One second of the debt was waited; the other is a second at 4 MiB/s too,
        // and a read of 1 MiB adds a quarter of one.
        assert_eq!(limiter.take(MIB), Duration::from_millis(1250));
        assert_eq!(limiter.chunk(), 64 * 1024);
    }

    #[test]
    fn no_cap_never_waits() {
        let clock = ManualClock::at(at(12, 0));
        let limiter = Limiter::new(Timetable::off(), clock);
        assert_eq!(limiter.cap(), Cap::Off);
        for _ in 0..10 {
            assert_eq!(limiter.take(1 << 40), Duration::ZERO);
        }
        let slow = Limiter::new(table("1KiB/s"), ManualClock::at(at(12, 0)));
        assert_eq!(slow.chunk(), 256, "at least 256 bytes a read");
    }
}
