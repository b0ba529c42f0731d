//! SIGTERM and SIGINT: stop taking work, finish nothing half-way, exit promptly.
//!
//! The handler only sets a flag; every loop that waits (back-off sleeps, the idle
//! wait between rounds, the copy loop of a transfer) looks at it. Declared against
//! the C library directly: one function is not worth a crate.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

static REQUESTED: AtomicBool = AtomicBool::new(false);

const SIGINT: i32 = 2;
const SIGTERM: i32 = 15;

extern "C" {
    fn signal(signum: i32, handler: extern "C" fn(i32)) -> usize;
}

extern "C" fn on_signal(_: i32) {
    REQUESTED.store(true, Ordering::SeqCst);
}

/// Routes SIGTERM and SIGINT to the stop flag.
pub fn install() {
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        signal(SIGTERM, on_signal);
        signal(SIGINT, on_signal);
    }
}

/// Asks the process to stop as SIGTERM does (the journal lease was lost).
pub fn request() {
    REQUESTED.store(true, Ordering::SeqCst);
}

/// Whether a stop was asked for (the first time it is seen, systemd is told).
pub fn requested() -> bool {
    let requested = REQUESTED.load(Ordering::SeqCst);
    if requested {
        crate::notify::stopping();
    }
    requested
}

/// Sleeps for `d` unless a stop is asked for first; returns false when stopped. A
/// sleeping engine is a live one: the systemd watchdog is fed meanwhile.
pub fn sleep(d: Duration) -> bool {
    let end = Instant::now() + d;
    loop {
        if requested() {
            return false;
        }
        let now = Instant::now();
        if now >= end {
            return true;
        }
        crate::notify::alive();
        std::thread::sleep((end - now).min(Duration::from_millis(50)));
    }
}
