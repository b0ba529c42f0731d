//! Tells systemd how the service is doing (`sd_notify`): ready, alive, what it did
//! last, stopping.
//!
//! Under `Type=notify` systemd hands the service a datagram socket in `$NOTIFY_SOCKET`
//! (a path, or an abstract name when it starts with `@`) and, with `WatchdogSec=`, the
//! watchdog's interval in `$WATCHDOG_USEC`; each message is one datagram of `KEY=value`
//! lines. Without `$NOTIFY_SOCKET` nothing is sent, and a send that fails is ignored
//! (logged once at debug): what systemd sees is never worth a stopped sync.
//!
//! The watchdog is fed by [`alive`], which the engine's own waits call (the back-off and
//! poll sleeps of [`crate::shutdown::sleep`], the waits of a round's threads), never a
//! timer thread of its own: a wedged engine stops feeding it and systemd restarts it,
//! while an outage, which a restart cannot cure, keeps feeding it. Until the service is
//! ready, each of those pings also extends systemd's start timeout by one watchdog
//! interval: a start that waits out an unreachable storage or another connector's lease
//! is not killed for being slow, one that hangs is.

use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Says that the service is up: sent once (the journal lease is held, the first round
/// begins).
pub fn ready() {
    if let Some(n) = notifier() {
        if !n.ready.swap(true, Ordering::SeqCst) {
            n.send("READY=1");
        }
    }
}

/// Feeds the watchdog: sends `WATCHDOG=1` when half of `$WATCHDOG_USEC` has passed
/// since the last one (cheap enough for every turn of a wait loop).
pub fn alive() {
    if let Some(n) = notifier() {
        if let Some(message) = n.ping_due(Instant::now()) {
            n.send(&message);
        }
    }
}

/// Sets the one-line status `systemctl status` shows.
pub fn status(line: &str) {
    if let Some(n) = notifier() {
        n.send(&status_message(line));
    }
}

/// Says that the service is stopping: sent once.
pub fn stopping() {
    if let Some(n) = notifier() {
        if !n.stopping.swap(true, Ordering::SeqCst) {
            n.send("STOPPING=1");
        }
    }
}

fn notifier() -> Option<&'static Notifier> {
    static NOTIFIER: OnceLock<Option<Notifier>> = OnceLock::new();
    NOTIFIER
        .get_or_init(|| {
            let var = |name| std::env::var(name).ok();
            Notifier::new(
                var("NOTIFY_SOCKET").as_deref(),
                Watchdog::from_vars(
                    var("WATCHDOG_USEC").as_deref(),
                    var("WATCHDOG_PID").as_deref(),
                    std::process::id(),
                ),
            )
        })
        .as_ref()
}

/// A `STATUS=` message: one line, however the text reads.
fn status_message(line: &str) -> String {
    let line: String = line
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    format!("STATUS={line}")
}

/// What `$WATCHDOG_USEC` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Watchdog {
    interval: Duration,
}

impl Watchdog {
    /// The watchdog systemd set for this process: `$WATCHDOG_USEC` microseconds, unless
    /// `$WATCHDOG_PID` names another process (then it was inherited, and is not ours).
    fn from_vars(usec: Option<&str>, pid: Option<&str>, own_pid: u32) -> Option<Watchdog> {
        let usec: u64 = usec?.trim().parse().ok().filter(|&u| u > 0)?;
        if let Some(pid) = pid {
            if pid.trim().parse::<u32>().ok() != Some(own_pid) {
                return None;
            }
        }
        Some(Watchdog {
            interval: Duration::from_micros(usec),
        })
    }

    /// How often it is fed: twice per interval, as `sd_watchdog_enabled(3)` advises.
    fn ping_every(self) -> Duration {
        self.interval / 2
    }
}

/// Where messages go, and the state of the once-only ones and of the watchdog.
struct Notifier {
    socket: UnixDatagram,
    address: SocketAddr,
    watchdog: Option<Watchdog>,
    started: Instant,
    /// When the last ping went out, in microseconds since `started` plus one (0: never).
    last_ping: AtomicU64,
    ready: AtomicBool,
    stopping: AtomicBool,
    send_failed: AtomicBool,
}

impl Notifier {
    /// The notifier for `$NOTIFY_SOCKET`, or `None` when it is unset, empty or cannot
    /// be used (logged at debug).
    fn new(socket: Option<&str>, watchdog: Option<Watchdog>) -> Option<Notifier> {
        let name = socket.filter(|s| !s.is_empty())?;
        let opened = socket_address(name).and_then(|address| {
            let socket = UnixDatagram::unbound()?;
            Ok((socket, address))
        });
        match opened {
            Ok((socket, address)) => Some(Notifier {
                socket,
                address,
                watchdog,
                started: Instant::now(),
                last_ping: AtomicU64::new(0),
                ready: AtomicBool::new(false),
                stopping: AtomicBool::new(false),
                send_failed: AtomicBool::new(false),
            }),
            Err(e) => {
                log::debug!("NOTIFY_SOCKET={name:?} cannot be used ({e}); systemd is not told how the service is doing");
                None
            }
        }
    }

    /// The watchdog message when one is due at `now` (and marks it sent): `WATCHDOG=1`,
    /// and, until the service is ready, an extension of the start timeout by one
    /// watchdog interval.
    fn ping_due(&self, now: Instant) -> Option<String> {
        let watchdog = self.watchdog?;
        let at = now.saturating_duration_since(self.started).as_micros() as u64 + 1;
        let last = self.last_ping.load(Ordering::Relaxed);
        let every = watchdog.ping_every().as_micros() as u64;
        if last != 0 && at < last.saturating_add(every) {
            return None;
        }
        // One thread sends; the others, which saw the same due ping, do not.
        self.last_ping
            .compare_exchange(last, at, Ordering::Relaxed, Ordering::Relaxed)
            .ok()?;
        Some(if self.ready.load(Ordering::SeqCst) {
            "WATCHDOG=1".to_string()
        } else {
            format!(
                "WATCHDOG=1\nEXTEND_TIMEOUT_USEC={}",
                watchdog.interval.as_micros()
            )
        })
    }

    fn send(&self, message: &str) {
        if let Err(e) = self.socket.send_to_addr(message.as_bytes(), &self.address) {
            if !self.send_failed.swap(true, Ordering::Relaxed) {
                log::debug!("cannot notify systemd ({e}); later failures are not logged");
            }
        }
    }
}

/// The address `$NOTIFY_SOCKET` names: a path, or an abstract name after `@`.
fn socket_address(name: &str) -> std::io::Result<SocketAddr> {
    match name.strip_prefix('@') {
        Some(abstract_name) => abstract_address(abstract_name.as_bytes()),
        None => SocketAddr::from_pathname(name),
    }
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn abstract_address(name: &[u8]) -> std::io::Result<SocketAddr> {
    #[cfg(target_os = "android")]
    use std::os::android::net::SocketAddrExt;
    #[cfg(target_os = "linux")]
    use std::os::linux::net::SocketAddrExt;
    SocketAddr::from_abstract_name(name)
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn abstract_address(_: &[u8]) -> std::io::Result<SocketAddr> {
    Err(std::io::Error::new(
        std::io::ErrorKind::Unsupported,
        "abstract socket names exist only on Linux",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A socket bound in a folder of its own, removed on drop.
    struct Listener {
        socket: UnixDatagram,
        path: std::path::PathBuf,
    }

    impl Drop for Listener {
        fn drop(&mut self) {
            if let Some(dir) = self.path.parent() {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
    }

    fn listener(name: &str) -> Listener {
        let dir =
            std::env::temp_dir().join(format!("spinoco-notify-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify.sock");
        let socket = UnixDatagram::bind(&path).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        Listener { socket, path }
    }

    fn notifier(listener: &Listener, watchdog: Option<Watchdog>) -> Notifier {
        Notifier::new(Some(listener.path.to_str().unwrap()), watchdog).unwrap()
    }

    fn receive(socket: &UnixDatagram) -> String {
        let mut buf = [0u8; 512];
        let n = socket.recv(&mut buf).unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    fn watchdog(usec: u64) -> Option<Watchdog> {
        Watchdog::from_vars(Some(&usec.to_string()), None, 1)
    }

    #[test]
    fn messages_reach_a_path_socket() {
        let l = listener("path");
        let n = notifier(&l, None);
        n.send("READY=1");
        assert_eq!(receive(&l.socket), "READY=1");
        n.send(&status_message("round 3 done\nSTOPPING=1"));
        assert_eq!(receive(&l.socket), "STATUS=round 3 done STOPPING=1");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn messages_reach_an_abstract_socket() {
        let name = format!("spinoco-notify-test-{}", std::process::id());
        let address = abstract_address(name.as_bytes()).unwrap();
        let socket = UnixDatagram::bind_addr(&address).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let n = Notifier::new(Some(&format!("@{name}")), None).unwrap();
        n.send("WATCHDOG=1");
        assert_eq!(receive(&socket), "WATCHDOG=1");
    }

    #[test]
    fn nothing_without_a_socket() {
        assert!(Notifier::new(None, watchdog(1_000_000)).is_none());
        assert!(Notifier::new(Some(""), watchdog(1_000_000)).is_none());
    }

    #[test]
    fn a_send_that_fails_is_ignored() {
        let l = listener("gone");
        let n = notifier(&l, None);
        std::fs::remove_file(&l.path).unwrap();
        n.send("READY=1");
        n.send("READY=1");
        assert!(n.send_failed.load(Ordering::Relaxed));
    }

    #[test]
    fn the_watchdog_is_ours_only_when_its_pid_is() {
        let ours = Watchdog::from_vars(Some("2000000"), Some("42"), 42).unwrap();
        assert_eq!(ours.interval, Duration::from_secs(2));
        assert_eq!(ours.ping_every(), Duration::from_secs(1));
        assert_eq!(Watchdog::from_vars(Some("2000000"), None, 42), Some(ours));
        assert_eq!(Watchdog::from_vars(Some("2000000"), Some("7"), 42), None);
        assert_eq!(Watchdog::from_vars(Some("0"), None, 42), None);
        assert_eq!(Watchdog::from_vars(Some("2s"), None, 42), None);
        assert_eq!(Watchdog::from_vars(None, Some("42"), 42), None);
    }

    #[test]
    fn pings_go_out_every_half_interval_and_extend_the_start_until_ready() {
        let l = listener("ping");
        let n = notifier(&l, watchdog(1_000_000));
        let t0 = n.started;
        let at = |ms| t0 + Duration::from_millis(ms);
        assert_eq!(
            n.ping_due(at(0)).as_deref(),
            Some("WATCHDOG=1\nEXTEND_TIMEOUT_USEC=1000000")
        );
        assert_eq!(n.ping_due(at(100)), None);
        assert_eq!(n.ping_due(at(499)), None);
        n.ready.store(true, Ordering::SeqCst);
        assert_eq!(n.ping_due(at(500)).as_deref(), Some("WATCHDOG=1"));
        assert_eq!(n.ping_due(at(900)), None);
        assert_eq!(n.ping_due(at(1_000)).as_deref(), Some("WATCHDOG=1"));
    }

    #[test]
    fn no_pings_without_a_watchdog() {
        let l = listener("no-watchdog");
        let n = notifier(&l, None);
        assert_eq!(n.ping_due(n.started + Duration::from_secs(100)), None);
    }
}
