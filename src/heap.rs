//! Keeps resident memory flat over a long sync on glibc.
//!
//! glibc gives threads that allocate at once heap arenas of their own (up to eight per
//! core) and keeps what is freed in each for reuse; the sync's workers, feed thread and
//! journal writer spread their short-lived buffers over them, and the free holes add
//! up. Measured on scenario a of the benchmark (valgrind massif for the heap): the heap
//! peaks at 2.7 MB with 300 tasks and 2.8 MB with 3,000, while resident memory rose
//! from 9.2 to 10.3 MB with glibc's default; with two arenas 8.9 and 9.6 MB, in the
//! same time. `MALLOC_ARENA_MAX`, when set, is the operator's choice and is kept. musl
//! (the scratch image) has no arenas: nothing to do there.

/// Caps glibc's heap arenas at two, unless `MALLOC_ARENA_MAX` says otherwise. Called
/// once, before the sync starts its threads.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn limit_arenas() {
    /// `M_ARENA_MAX` of glibc's `<malloc.h>`.
    const M_ARENA_MAX: i32 = -8;
    extern "C" {
        fn mallopt(param: i32, value: i32) -> i32;
    }
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only sets a tuning value of the allocator; 0 (refused) is
        // harmless and leaves glibc's default.
        unsafe {
            mallopt(M_ARENA_MAX, 2);
        }
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn limit_arenas() {}
