//! What names this process among others: a random run id, the host, whether a
//! process id still runs.
//!
//! Process ids say nothing across containers (every container's first process is pid
//! 1), so what a process leaves behind (its temp files, its lease) is named by a run id
//! drawn once per process; the lease keeps the host and pid beside it for people.

use std::sync::OnceLock;

/// This process's run id: 16 hex digits drawn once from the system's random source.
pub fn run_id() -> &'static str {
    static RUN_ID: OnceLock<String> = OnceLock::new();
    RUN_ID.get_or_init(|| {
        use ring::rand::SecureRandom;
        let mut bytes = [0u8; 8];
        let drawn = ring::rand::SystemRandom::new()
            .fill(&mut bytes)
            .map(|()| u64::from_be_bytes(bytes))
            // Without the system's random source: the clock and the pid.
            .unwrap_or_else(|_| {
                let nanos = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(0);
                nanos ^ (u64::from(std::process::id()) << 32)
            });
        format!("{drawn:016x}")
    })
}

/// The host's name, as the kernel (or `$HOSTNAME`) says.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown-host".into())
}

/// Whether a process with this id runs on this host (in this PID namespace).
pub fn runs(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_id_is_drawn_once_per_process() {
        assert_eq!(run_id().len(), 16);
        assert!(run_id().chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(run_id(), run_id());
        assert!(runs(std::process::id()));
        assert!(!host_name().is_empty());
    }
}
