//! A download's body as the engine reads it: complete only when its framing says so,
//! bounded in size, judged by its pace, and kept to the bandwidth cap.
//!
//! Its reads are where the platform's pace is measured and where the cap's waits
//! happen, so the two are kept apart here: only the time spent inside the body's `read`
//! counts towards the pace, and a wait for the cap comes after it, between reads.

use std::io::{self, Read};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{transient, PlatformError, Unstorable, MIN_RATE, RATE_WINDOW};
use crate::bandwidth::Limiter;
use crate::retry::Reason;

/// How a download's body ends, so that a cut one is told from a whole one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// `Content-Length`: whole when that many bytes came.
    Length(u64),
    /// Chunked coding: whole at its last (empty) chunk; at most `limit` bytes.
    Chunked { limit: u64 },
}

impl Framing {
    /// The framing of a `200`, or why its body cannot be stored.
    pub fn of(
        content_length: Option<u64>,
        chunked: bool,
        limit: u64,
    ) -> Result<Framing, Unstorable> {
        match (chunked, content_length) {
            (true, _) => Ok(Framing::Chunked { limit }),
            (false, Some(length)) if length > limit => Err(Unstorable::Announced { length, limit }),
            (false, Some(length)) => Ok(Framing::Length(length)),
            (false, None) => Err(Unstorable::Unframed),
        }
    }
}

/// A download's body. It fails when fewer bytes came than the `Content-Length`
/// promised, when a chunked body grows over the size limit, and when it stalls (its
/// average pace under [`MIN_RATE`] over [`RATE_WINDOW`] of waiting), so a storage never
/// commits a truncated or endless file; and it stops early when the process is asked to
/// stop. After a failed store, [`Download::take_failure`] says how the engine must take
/// a failure the body decided. Under a bandwidth cap it reads at most a
/// [`Limiter::chunk`] at a time and waits after each read as the limiter says.
pub struct Download {
    body: Box<dyn Read + Send>,
    framing: Framing,
    received: u64,
    path: String,
    pace: Pace,
    clock: Box<dyn Fn() -> Instant + Send>,
    throttle: Option<Throttle>,
    failure: Option<PlatformError>,
}

/// The bandwidth cap a download keeps to, and how it waits for it.
pub(super) struct Throttle {
    pub(super) limiter: Arc<Limiter>,
    /// Sleeps; false when the process was asked to stop meanwhile.
    pub(super) sleep: Box<dyn Fn(Duration) -> bool + Send>,
}

impl Download {
    pub(super) fn new(
        body: Box<dyn Read + Send>,
        path: &str,
        framing: Framing,
        clock: Box<dyn Fn() -> Instant + Send>,
        throttle: Option<Throttle>,
    ) -> Download {
        Download {
            body,
            framing,
            received: 0,
            path: path.to_string(),
            pace: Pace::default(),
            clock,
            throttle,
            failure: None,
        }
    }

    pub fn expected_len(&self) -> Option<u64> {
        match self.framing {
            Framing::Length(n) => Some(n),
            Framing::Chunked { .. } => None,
        }
    }

    /// Why the body failed, when it decided so itself: too large (rejected) or stalled
    /// (retried as a timeout). `None` for any other failure (cut short, reset).
    pub fn take_failure(&mut self) -> Option<PlatformError> {
        self.failure.take()
    }

    /// Records `failure` for the engine and answers the reader with it.
    fn fail(&mut self, kind: io::ErrorKind, failure: PlatformError) -> io::Error {
        let error = io::Error::new(kind, failure.to_string());
        self.failure = Some(failure);
        error
    }

    /// Takes `bytes` just read from the bandwidth cap's bucket and waits as long as it
    /// says: after the read was timed, so the wait never counts against the platform's
    /// pace, and between reads, so no read waits longer for the server.
    fn keep_to_the_cap(&self, bytes: usize) -> io::Result<()> {
        let Some(throttle) = &self.throttle else {
            return Ok(());
        };
        let wait = throttle.limiter.take(bytes as u64);
        if wait.is_zero() || (throttle.sleep)(wait) {
            Ok(())
        } else {
            Err(stopping())
        }
    }
}

fn stopping() -> io::Error {
    io::Error::other("stopping: the process was asked to stop")
}

impl Read for Download {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if crate::shutdown::requested() {
            return Err(stopping());
        }
        // Under a cap, a small step at a time: the workers take turns at the bucket and
        // each wait is short.
        let len = self
            .throttle
            .as_ref()
            .map_or(buf.len(), |t| t.limiter.chunk().min(buf.len()));
        // Only the time spent waiting for the platform counts towards its pace: not the
        // time the caller spends storing what came, nor the waits for the cap.
        let started = (self.clock)();
        let read = self.body.read(&mut buf[..len]);
        let waited = (self.clock)().saturating_duration_since(started);
        let n = match read {
            Ok(n) => n,
            Err(e) => {
                let message = format!(
                    "download of {} broke after {} bytes: {e}",
                    self.path, self.received
                );
                if !is_timeout(&e) {
                    return Err(io::Error::new(e.kind(), message));
                }
                return Err(self.fail(e.kind(), transient(Reason::Timeout, message)));
            }
        };
        self.received += n as u64;
        match self.framing {
            Framing::Length(expected) => {
                if (n == 0 && self.received < expected) || self.received > expected {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!(
                            "download of {} delivered {} of {} bytes",
                            self.path, self.received, expected
                        ),
                    ));
                }
            }
            Framing::Chunked { limit } if self.received > limit => {
                let failure = PlatformError::Unstorable {
                    path: self.path.clone(),
                    why: Unstorable::Grew { limit },
                };
                return Err(self.fail(io::ErrorKind::InvalidData, failure));
            }
            Framing::Chunked { .. } => {}
        }
        if n > 0 {
            if let Err(slow) = self.pace.note(waited, n as u64) {
                let message = format!(
                    "download of {} stalled: {} bytes in the last {:.0}s of waiting for it, under {MIN_RATE} bytes/s ({} bytes in all)",
                    self.path,
                    slow.bytes,
                    slow.waited.as_secs_f64(),
                    self.received
                );
                return Err(self.fail(io::ErrorKind::TimedOut, transient(Reason::Timeout, message)));
            }
            self.keep_to_the_cap(n)?;
        }
        Ok(n)
    }
}

/// Whether a failed read of a body is the agent's read timeout (`SP_HTTP_TIMEOUT`).
fn is_timeout(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::TimedOut
        || e.get_ref()
            .and_then(|inner| inner.downcast_ref::<ureq::Error>())
            .is_some_and(|inner| matches!(inner, ureq::Error::Timeout(_)))
}

/// A download's pace, judged over windows of [`RATE_WINDOW`] spent waiting for it.
#[derive(Debug, Default)]
struct Pace {
    waited: Duration,
    bytes: u64,
}

/// A window in which a download came slower than [`MIN_RATE`].
#[derive(Debug, PartialEq, Eq)]
struct Slow {
    bytes: u64,
    waited: Duration,
}

impl Pace {
    /// Adds one read of `bytes` that took `waited`; when that closes a window, judges it.
    fn note(&mut self, waited: Duration, bytes: u64) -> Result<(), Slow> {
        self.waited += waited;
        self.bytes += bytes;
        if self.waited < RATE_WINDOW {
            return Ok(());
        }
        let Pace { waited, bytes } = std::mem::take(self);
        if (bytes as f64) < MIN_RATE as f64 * waited.as_secs_f64() {
            return Err(Slow { bytes, waited });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::bandwidth::Timetable;

    #[test]
    fn only_framed_bodies_within_the_limit_are_downloaded() {
        assert_eq!(Framing::of(Some(10), false, 10), Ok(Framing::Length(10)));
        assert_eq!(
            Framing::of(Some(11), false, 10),
            Err(Unstorable::Announced {
                length: 11,
                limit: 10
            })
        );
        assert_eq!(
            Framing::of(None, true, 10),
            Ok(Framing::Chunked { limit: 10 })
        );
        // Chunked coding wins over a length (RFC 9112 6.3); the limit then holds as it grows.
        assert_eq!(
            Framing::of(Some(99), true, 10),
            Ok(Framing::Chunked { limit: 10 })
        );
        assert_eq!(Framing::of(None, false, 10), Err(Unstorable::Unframed));
    }

    #[test]
    fn pace_is_judged_per_window_of_waiting() {
        let secs = Duration::from_secs;
        let mut pace = Pace::default();
        // One byte every 2 s: fine until a whole window has been waited.
        for _ in 0..29 {
            assert_eq!(pace.note(secs(2), 1), Ok(()));
        }
        assert_eq!(
            pace.note(secs(2), 1),
            Err(Slow {
                bytes: 30,
                waited: secs(60)
            })
        );
        // A quick window, then a silent one: each is judged on its own.
        let mut pace = Pace::default();
        assert_eq!(pace.note(secs(60), 60 * MIN_RATE), Ok(()));
        assert_eq!(pace.note(secs(59), 1), Ok(()));
        assert!(pace.note(secs(2), 1).is_err());
    }

    /// A body whose every read takes `per_read` on a clock the test moves, giving
    /// `chunk` bytes at a time out of `len` (endless when `None`).
    struct Trickle {
        clock: Arc<Mutex<Instant>>,
        per_read: Duration,
        chunk: usize,
        left: Option<usize>,
    }

    impl Read for Trickle {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            *self.clock.lock().unwrap() += self.per_read;
            let n = self
                .chunk
                .min(buf.len())
                .min(self.left.unwrap_or(usize::MAX));
            if let Some(left) = &mut self.left {
                *left -= n;
            }
            buf[..n].fill(7);
            Ok(n)
        }
    }

    /// Reads `download` to its end or first error, moving the clock by `pause` after
    /// each read (a consumer that stores slowly); the bytes read and the error.
    fn drain(
        download: &mut Download,
        clock: &Arc<Mutex<Instant>>,
        pause: Duration,
    ) -> (u64, Option<io::Error>) {
        let mut buf = [0u8; 4096];
        let mut total = 0;
        loop {
            match download.read(&mut buf) {
                Ok(0) => return (total, None),
                Ok(n) => total += n as u64,
                Err(e) => return (total, Some(e)),
            }
            *clock.lock().unwrap() += pause;
        }
    }

    fn slow_download(
        framing: Framing,
        per_read: Duration,
        chunk: usize,
        len: Option<usize>,
    ) -> (Download, Arc<Mutex<Instant>>) {
        let clock = Arc::new(Mutex::new(Instant::now()));
        let body = Trickle {
            clock: clock.clone(),
            per_read,
            chunk,
            left: len,
        };
        let now = clock.clone();
        let download = Download::new(
            Box::new(body),
            "/recording-direct/t/r1",
            framing,
            Box::new(move || *now.lock().unwrap()),
            None,
        );
        (download, clock)
    }

    /// The test's clock, as the bandwidth limiter reads it.
    struct SharedClock(Arc<Mutex<Instant>>);

    impl crate::bandwidth::Clock for SharedClock {
        fn now(&self) -> Instant {
            *self.0.lock().unwrap()
        }

        fn unix_seconds(&self) -> i64 {
            0
        }
    }

    /// [`slow_download`] under the cap `rate`, whose waits move the clock (or, when not
    /// `patient`, are cut short by a stop).
    fn capped_download(
        rate: &str,
        per_read: Duration,
        chunk: usize,
        len: usize,
        patient: bool,
    ) -> (Download, Arc<Mutex<Instant>>, Arc<Limiter>) {
        let (mut download, clock) =
            slow_download(Framing::Length(len as u64), per_read, chunk, Some(len));
        let limiter = Arc::new(Limiter::new(
            Timetable::parse(rate).unwrap(),
            Arc::new(SharedClock(clock.clone())),
        ));
        let slept = clock.clone();
        download.throttle = Some(Throttle {
            limiter: limiter.clone(),
            sleep: Box::new(move |wait| {
                *slept.lock().unwrap() += wait;
                patient
            }),
        });
        (download, clock, limiter)
    }

    #[test]
    fn a_capped_download_keeps_to_the_cap_in_small_reads() {
        // A platform that could send 4 MiB/s; a cap of 64 KiB/s.
        let len = 1 << 20;
        let (mut download, clock, _) =
            capped_download("64KiB/s", Duration::from_millis(1), 4096 * 16, len, true);
        let start = *clock.lock().unwrap();
        let mut buf = vec![0u8; 1 << 20];
        let mut total = 0;
        loop {
            let n = download.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            assert!(
                n <= 4096,
                "a read of {n} bytes: a sixteenth of a second is 4096"
            );
            total += n;
        }
        assert_eq!(total, len);
        let elapsed = clock.lock().unwrap().duration_since(start);
        // All of it but the first second's burst, at 64 KiB/s.
        assert!(elapsed >= Duration::from_secs(15), "{elapsed:?}");
    }

    #[test]
    fn waiting_for_the_cap_is_not_the_platform_stalling() {
        // The platform sends 256 bytes every 0.1 s (2560 bytes/s); three other workers
        // read as much at the same time under a shared cap of 1 KiB/s, so this download
        // gets 256 bytes/s: a stall, were the waits counted as waiting for the platform.
        let len = 40_000;
        let (mut download, clock, limiter) =
            capped_download("1KiB/s", Duration::from_millis(100), 256, len, true);
        let start = *clock.lock().unwrap();
        let mut buf = [0u8; 4096];
        let mut total = 0;
        loop {
            match download.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    total += n;
                    limiter.take(3 * n as u64);
                }
                Err(e) => panic!("after {total} bytes: {e}"),
            }
        }
        assert_eq!(total, len);
        assert!(download.take_failure().is_none());
        let elapsed = clock.lock().unwrap().duration_since(start);
        assert!(elapsed >= Duration::from_secs(150), "{elapsed:?}");
    }

    #[test]
    fn a_stop_ends_the_wait_for_the_cap() {
        let (mut download, _, _) =
            capped_download("1MiB/s", Duration::from_millis(1), 65536, 4 << 20, false);
        let mut buf = vec![0u8; 65536];
        let mut total = 0;
        let error = loop {
            match download.read(&mut buf) {
                Ok(n) => total += n,
                Err(e) => break e,
            }
        };
        assert!(error.to_string().contains("stopping"), "{error}");
        assert_eq!(
            total,
            1 << 20,
            "the first second's burst came without a wait"
        );
    }

    #[test]
    fn a_trickling_platform_stalls_the_download_as_a_timeout() {
        let (mut download, clock) =
            slow_download(Framing::Length(1000), Duration::from_secs(2), 1, Some(1000));
        let (read, error) = drain(&mut download, &clock, Duration::ZERO);
        assert_eq!(read, 29, "the window closes at the 30th byte");
        assert_eq!(error.unwrap().kind(), io::ErrorKind::TimedOut);
        match download.take_failure() {
            Some(PlatformError::Transient {
                reason: Reason::Timeout,
                message,
                ..
            }) => assert!(message.contains("stalled"), "{message}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_slow_consumer_is_not_the_platform_stalling() {
        // 4 KiB a millisecond from the platform, then 10 s of storing each: 400 bytes
        // a second overall, yet the platform was never slow.
        let len = 400 * 1024;
        let (mut download, clock) = slow_download(
            Framing::Length(len as u64),
            Duration::from_millis(1),
            4096,
            Some(len),
        );
        let (read, error) = drain(&mut download, &clock, Duration::from_secs(10));
        assert!(error.is_none(), "{error:?}");
        assert_eq!(read, len as u64);
        assert!(download.take_failure().is_none());
    }

    #[test]
    fn an_endless_chunked_body_is_refused_at_the_limit() {
        let limit = 100_000;
        let (mut download, clock) = slow_download(
            Framing::Chunked { limit },
            Duration::from_millis(1),
            4096,
            None,
        );
        let (read, error) = drain(&mut download, &clock, Duration::ZERO);
        assert!(read <= limit, "{read} bytes passed on");
        assert_eq!(error.unwrap().kind(), io::ErrorKind::InvalidData);
        match download.take_failure() {
            Some(PlatformError::Unstorable {
                why: Unstorable::Grew { limit: l },
                ..
            }) => assert_eq!(l, limit),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_body_short_of_its_length_breaks_without_a_verdict() {
        let (mut download, clock) = slow_download(
            Framing::Length(10_000),
            Duration::from_millis(1),
            4096,
            Some(3_000),
        );
        let (read, error) = drain(&mut download, &clock, Duration::ZERO);
        assert_eq!(read, 3_000);
        let error = error.unwrap();
        assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof);
        assert!(
            error.to_string().contains("delivered 3000 of 10000 bytes"),
            "{error}"
        );
        assert!(
            download.take_failure().is_none(),
            "retried as a broken body, by the engine"
        );
    }
}
