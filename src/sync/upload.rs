//! The upload stage: storage latency hidden behind the next download.
//!
//! Why: a worker that downloads a file and then uploads it pays the platform's round
//! trip and then the store's, one after the other; at 20 ms and 30 ms that is 50 ms a
//! file, and the workers (`SP_TASK_SYNC_CONCURRENCY`, the platform's load) wait half of
//! it on the store. So a cloud store's file that fits one request (its
//! `Content-Length` is at most [`Staging::single_request`]) is downloaded whole into a
//! buffer of the store's pool, and the buffer is handed to this stage, whose upload
//! threads send it while the worker takes the next file at once. Larger files and
//! files of unknown size are streamed by the worker as before (one part in memory);
//! local storage has no stage (no round trip to hide).
//!
//! Upload slots. The stage keeps at most [`upload_slots`] uploads in flight: by Little's
//! law, the workers' download rate times an upload's time, from the latencies it
//! measures (workers x upload time / download time, at least 1, at most
//! [`SLOTS_PER_WORKER`] x workers; the workers' count until both were measured). The
//! slots in force follow that figure down at once and up by one per upload done
//! ([`next_slots`]): the first uploads open their connections and can take several
//! times as long as the rest, and a stage that believed them filled every slot it
//! may have with a staged file (Azurite at +30 ms: 32 in flight, where 15 keep up). A
//! worker with a full buffer waits for a slot when all are busy (backpressure), so the
//! platform never sees more than `SP_TASK_SYNC_CONCURRENCY` requests at once and the
//! buffers in memory are at most one per worker and one per slot. Every buffer, staged or
//! streamed, comes from the store's pool, whose bytes the engine limits to
//! `SP_TASK_SYNC_CONCURRENCY` x one request's size ([`PartPool::limit`]): a worker waits
//! for a buffer before it would go beyond.
//!
//! What is promised does not change. An upload the store lost (`Restart`) is sent again
//! from the buffer, never downloaded again; a stored file is reported exactly as a
//! worker reports one it streamed ([`Round::settle`]), so a task's deletes still wait
//! for every file of it and the journal write that records it; a stop or a fatal error
//! drops what is queued, and its tasks stay unfinished (journaled) as before.

use std::collections::VecDeque;
use std::io::{self, Read};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::Scope;
use std::time::{Duration, Instant};

use super::outcome::{done, platform_step, Outcome, Try};
use super::round::{Page, Round, STOP_POLL};
use super::Stored;
use crate::checksum::Crc32cReader;
use crate::metrics::InFlight;
use crate::platform::Download;
use crate::retry::{Reason, Step};
use crate::shutdown;
use crate::store::{Buffer, PartPool, Staging};

/// Upload slots per download worker, at most.
pub(super) const SLOTS_PER_WORKER: usize = 4;

/// How many uploads to keep in flight so that they keep up with `workers` downloads:
/// Little's law, slots = arrival rate x time in the stage = workers / download x
/// upload, rounded up, at least 1, at most [`SLOTS_PER_WORKER`] x workers.
pub(super) fn upload_slots(workers: usize, download: Duration, upload: Duration) -> usize {
    let workers = workers.max(1);
    let cap = SLOTS_PER_WORKER * workers;
    if download.is_zero() {
        return cap;
    }
    let (upload, download) = (upload.as_nanos(), download.as_nanos());
    let slots = (workers as u128 * upload).div_ceil(download);
    slots.clamp(1, cap as u128) as usize
}

/// The slots in force after an upload is done, from those before and the figure of
/// [`upload_slots`]: down to it at once, up towards it by one.
pub(super) fn next_slots(current: usize, target: usize) -> usize {
    if target > current {
        current + 1
    } else {
        target
    }
}

/// A file downloaded whole, waiting for its upload.
pub(super) struct Staged<'s> {
    pub(super) buffer: Buffer<'s>,
    pub(super) len: usize,
    /// The archive manifest's checksum of the bytes.
    pub(super) crc32c: u32,
    /// Counted as a transfer in flight until it is stored.
    _in_flight: Option<InFlight>,
}

impl Staged<'_> {
    pub(super) fn bytes(&self) -> &[u8] {
        &self.buffer[..self.len]
    }
}

/// What a worker's transfer came to.
pub(super) enum Fetched<'s> {
    /// Streamed into the store.
    Stored(Stored),
    /// Whole in a buffer, for the stage.
    Whole(Staged<'s>),
}

/// A staged file and whose it is.
struct Handoff<'s> {
    page: Arc<Page>,
    task: usize,
    file: usize,
    staged: Staged<'s>,
}

/// The stage of one round (see the module comment).
pub(super) struct Stage<'s> {
    staging: Staging<'s>,
    workers: usize,
    state: Mutex<StageState<'s>>,
    /// For the upload threads: a file was queued, or the round is over.
    queued: Condvar,
    /// For the workers: a slot became free.
    freed: Condvar,
}

#[derive(Default)]
struct StageState<'s> {
    queue: VecDeque<Handoff<'s>>,
    /// Files queued or being uploaded.
    in_flight: usize,
    /// Upload threads started, and how many of them wait for a file.
    threads: usize,
    idle: usize,
    /// Moving averages of a staged file's download and upload.
    download: Option<Duration>,
    upload: Option<Duration>,
    /// The slots in force (0: none yet, the workers' count).
    slots: usize,
    closed: bool,
    /// The most files in flight at once (for the round's debug line).
    peak: usize,
}

/// A moving average's weight of the newest sample.
const NEWEST: f64 = 0.2;

fn note(average: &mut Option<Duration>, sample: Duration) {
    *average = Some(match *average {
        None => sample,
        Some(a) => a.mul_f64(1.0 - NEWEST) + sample.mul_f64(NEWEST),
    });
}

impl<'s> Stage<'s> {
    /// The stage of a store that offers one, for `workers` download workers; limits the
    /// store's buffers to one request's size per worker.
    pub(super) fn new(staging: Staging<'s>, workers: usize) -> Stage<'s> {
        let workers = workers.max(1);
        let request = (staging.single_request as usize).max(staging.pool.part_size());
        staging.pool.limit(workers.saturating_mul(request));
        Stage {
            staging,
            workers,
            state: Mutex::default(),
            queued: Condvar::new(),
            freed: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, StageState<'s>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn pool(&self) -> &'s PartPool {
        self.staging.pool
    }

    /// Whether a file of `len` bytes (`None`: unknown) goes through the stage.
    pub(super) fn takes(&self, len: Option<u64>) -> bool {
        len.is_some_and(|n| n <= self.staging.single_request)
    }

    fn slots(&self, st: &StageState) -> usize {
        if st.slots == 0 {
            self.workers
        } else {
            st.slots
        }
    }

    /// After an upload: the slots in force move towards Little's law's figure.
    fn resize(&self, st: &mut StageState) {
        if let (Some(d), Some(u)) = (st.download, st.upload) {
            st.slots = next_slots(self.slots(st), upload_slots(self.workers, d, u));
        }
    }

    /// Lets the upload threads go once the queue is empty.
    pub(super) fn close(&self) {
        let mut st = self.lock();
        if !std::mem::replace(&mut st.closed, true) && st.threads > 0 {
            let ms = |d: Option<Duration>| d.map_or(0.0, |d| d.as_secs_f64() * 1000.0);
            log::debug!(
                "upload stage: {} upload thread(s), at most {} upload(s) in flight, {} slot(s) \
                 last (a file's download {:.0} ms, its upload {:.0} ms)",
                st.threads,
                st.peak,
                self.slots(&st),
                ms(st.download),
                ms(st.upload)
            );
        }
        drop(st);
        self.queued.notify_all();
        self.freed.notify_all();
    }

    /// Reads the rest of `download` (`len` bytes, its `Content-Length`) into a buffer of
    /// the pool. `started` is when its request was sent: the download's time is
    /// measured from there. A broken or stalled body is a try that failed, taken as the
    /// streamed path takes it (see `Engine::transfer`).
    pub(super) fn fetch(
        &self,
        download: &mut Crc32cReader<Download>,
        len: u64,
        started: Instant,
        in_flight: &mut Option<InFlight>,
    ) -> Try<Fetched<'s>> {
        let len = len as usize;
        let mut buffer = match self.pool().take(len) {
            Ok(b) => b,
            // Only a stop ends the wait for a buffer.
            Err(_) => return Step::Done(Outcome::Stopped),
        };
        let mut read = || -> io::Result<()> {
            let mut filled = 0;
            while filled < len {
                match download.read(&mut buffer[filled..len]) {
                    Ok(0) => break,
                    Ok(n) => filled += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            // The body ends here: its reader fails one short of the length, or past it.
            let mut after = [0u8; 1];
            download.read(&mut after).map(|_| ())
        };
        if let Err(e) = read() {
            if shutdown::requested() {
                return Step::Done(Outcome::Stopped);
            }
            if let Some(failure) = download.inner().take_failure() {
                return platform_step(failure);
            }
            return Step::Retry {
                reason: Reason::BrokenBody,
                error: e.to_string(),
                after: None,
            };
        }
        note(&mut self.lock().download, started.elapsed());
        done(Fetched::Whole(Staged {
            buffer,
            len,
            crc32c: download.crc32c(),
            _in_flight: in_flight.take(),
        }))
    }
}

impl<'e> Round<'e> {
    /// Hands a staged file to the upload threads, waiting for a slot while all are
    /// busy; starts another upload thread when none waits for it. Dropped (its task
    /// stays unfinished) when the round stops meanwhile.
    pub(super) fn hand_off<'r>(
        &'r self,
        scope: &'r Scope<'r, '_>,
        page: &Arc<Page>,
        task: usize,
        file: usize,
        staged: Staged<'e>,
    ) {
        let Some(stage) = self.stage.as_ref() else {
            return;
        };
        let mut st = stage.lock();
        while st.in_flight >= stage.slots(&st) {
            if self.halted() || st.closed {
                return;
            }
            crate::notify::alive();
            st = stage
                .freed
                .wait_timeout(st, STOP_POLL)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        st.in_flight += 1;
        st.peak = st.peak.max(st.in_flight);
        st.queue.push_back(Handoff {
            page: page.clone(),
            task,
            file,
            staged,
        });
        let start = st.queue.len() > st.idle;
        if start {
            st.threads += 1;
        }
        drop(st);
        if start {
            scope.spawn(move || self.uploader());
        } else {
            stage.queued.notify_one();
        }
    }

    /// An upload thread: uploads staged files until the round is over (or stopped).
    fn uploader(&self) {
        let Some(stage) = self.stage.as_ref() else {
            return;
        };
        let mut st = stage.lock();
        loop {
            if self.halted() {
                // Dropped: their tasks stay unfinished, journaled for the next start.
                st.in_flight -= st.queue.len();
                st.queue.clear();
            }
            if let Some(h) = st.queue.pop_front() {
                drop(st);
                let job = &h.page.tasks[h.task].files[h.file];
                let started = Instant::now();
                let outcome = self.engine.upload(job, &h.staged);
                let took = started.elapsed();
                drop(h.staged);
                st = stage.lock();
                if matches!(outcome, Outcome::Done(_)) {
                    note(&mut st.upload, took);
                    stage.resize(&mut st);
                }
                st.in_flight -= 1;
                drop(st);
                stage.freed.notify_one();
                self.settle(&h.page, h.task, h.file, outcome);
                st = stage.lock();
                continue;
            }
            if st.closed || self.halted() {
                st.threads -= 1;
                stage.freed.notify_all();
                return;
            }
            st.idle += 1;
            crate::notify::alive();
            st = stage
                .queued
                .wait_timeout(st, STOP_POLL)
                .unwrap_or_else(|e| e.into_inner())
                .0;
            st.idle -= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Slots keep up with the downloads: workers x upload time / download time,
    /// rounded up, within 1 and four per worker.
    #[test]
    fn upload_slots_follow_littles_law() {
        // 8 workers at 20 ms a download, 30 ms an upload: 12 uploads in flight.
        assert_eq!(upload_slots(8, ms(20), ms(30)), 12);
        assert_eq!(upload_slots(8, ms(22), ms(33)), 12);
        assert_eq!(upload_slots(8, ms(30), ms(31)), 9, "rounded up");
        // A store as fast as the platform needs a slot per worker.
        assert_eq!(upload_slots(4, ms(50), ms(50)), 4);
        // A fast store needs few, never none.
        assert_eq!(upload_slots(8, ms(100), ms(1)), 1);
        assert_eq!(upload_slots(1, ms(100), Duration::ZERO), 1);
        // A slow store is capped at four per worker.
        assert_eq!(upload_slots(8, ms(10), ms(1000)), 32);
        assert_eq!(upload_slots(2, Duration::ZERO, ms(30)), 8);
        assert_eq!(upload_slots(0, ms(10), ms(10)), 1, "at least one worker");
    }

    /// A slow first upload (a new connection) does not open every slot at once: the
    /// slots climb one per upload done and fall at once.
    #[test]
    fn slots_climb_by_one_and_fall_at_once() {
        assert_eq!(next_slots(8, 32), 9);
        assert_eq!(next_slots(9, 9), 9);
        assert_eq!(next_slots(20, 12), 12);
        // 8 workers at 20 ms a download; the first upload took 150 ms, the rest 32 ms.
        let (mut avg, mut slots, mut most) = (None, 8, 0);
        note(&mut avg, ms(150));
        for _ in 0..40 {
            slots = next_slots(slots, upload_slots(8, ms(20), avg.unwrap()));
            most = most.max(slots);
            note(&mut avg, ms(32));
        }
        assert_eq!(slots, 13, "where Little's law puts it");
        assert!(most < 20, "never near the cap of 32: {most}");
    }

    #[test]
    fn averages_lean_to_the_newest_sample() {
        let mut avg = None;
        note(&mut avg, ms(100));
        assert_eq!(avg, Some(ms(100)), "the first sample is the average");
        note(&mut avg, ms(200));
        assert_eq!(avg, Some(ms(120)));
    }
}
