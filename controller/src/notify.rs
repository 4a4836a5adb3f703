//! systemd's service notification protocol (`sd_notify`), spoken directly:
//! one datagram per state change to the Unix socket in `$NOTIFY_SOCKET` (a
//! path, or an abstract name written `@name`). The controller sends
//! `READY=1` once its listener accepts connections, `WATCHDOG=1` at half of
//! `$WATCHDOG_USEC` while its runtime runs, and `STOPPING=1` when it starts
//! to shut down. Without `$NOTIFY_SOCKET` every call does nothing.

use std::ffi::OsStr;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::error::{Error, Result};

/// `$WATCHDOG_USEC` is refused outside this range: below it the pings
/// would keep a core busy, above it a deadline is no watchdog (and the
/// arithmetic on it stays far from overflow).
pub const WATCHDOG_USEC: (u64, u64) = (10_000, 24 * 3600 * 1_000_000);

/// Where notifications go, and how often the watchdog wants a ping.
#[derive(Debug, Default)]
pub struct Notifier {
    target: Option<Target>,
    watchdog: Option<Duration>,
}

#[derive(Debug)]
struct Target {
    socket: UnixDatagram,
    addr: SocketAddr,
    /// `$NOTIFY_SOCKET` as given, for messages.
    shown: String,
    /// Set while sends fail, so a socket that went away is logged once.
    failing: AtomicBool,
}

/// The environment variables the protocol reads.
#[derive(Debug, Default, Clone, Copy)]
pub struct Env<'a> {
    pub notify_socket: Option<&'a OsStr>,
    pub watchdog_usec: Option<&'a OsStr>,
    pub watchdog_pid: Option<&'a OsStr>,
}

impl Notifier {
    /// A notifier that sends nothing (not started by systemd).
    pub fn disabled() -> Notifier {
        Notifier::default()
    }

    /// Reads `$NOTIFY_SOCKET`, `$WATCHDOG_USEC` and `$WATCHDOG_PID`.
    pub fn from_env() -> Result<Notifier> {
        let socket = std::env::var_os("NOTIFY_SOCKET");
        let usec = std::env::var_os("WATCHDOG_USEC");
        let pid = std::env::var_os("WATCHDOG_PID");
        Notifier::from_vars(
            Env {
                notify_socket: socket.as_deref(),
                watchdog_usec: usec.as_deref(),
                watchdog_pid: pid.as_deref(),
            },
            std::process::id(),
        )
    }

    /// The notifier these variables describe for process `pid`. A watchdog
    /// meant for another process (`$WATCHDOG_PID`) is not ours to ping.
    pub fn from_vars(env: Env<'_>, pid: u32) -> Result<Notifier> {
        let target = match env.notify_socket.filter(|s| !s.is_empty()) {
            None => None,
            Some(raw) => Some(Target::open(raw)?),
        };
        let watchdog = match env.watchdog_usec.filter(|s| !s.is_empty()) {
            None => None,
            Some(usec) => {
                let usec = parse_usec(usec)?;
                let ours = match env.watchdog_pid.filter(|s| !s.is_empty()) {
                    None => true,
                    Some(p) => parse_pid(p)? == pid,
                };
                ours.then(|| Duration::from_micros(usec) / 2)
            }
        };
        Ok(Notifier {
            watchdog: watchdog.filter(|_| target.is_some()),
            target,
        })
    }

    /// How often [`Notifier::watchdog`] pings: half of `$WATCHDOG_USEC`,
    /// or `None` when no watchdog is asked for.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog
    }

    /// `READY=1`, with a status line systemd shows.
    pub fn ready(&self, status: &str) {
        self.notify(&format!("READY=1\nSTATUS={}", one_line(status)));
    }

    /// `STOPPING=1`, with a status line systemd shows.
    pub fn stopping(&self, status: &str) {
        self.notify(&format!("STOPPING=1\nSTATUS={}", one_line(status)));
    }

    /// Pings the watchdog every [`Notifier::watchdog_interval`] for as long
    /// as the runtime schedules this task; returns at once without one.
    pub async fn watchdog(&self) {
        let Some(every) = self.watchdog else {
            return;
        };
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            self.notify("WATCHDOG=1");
        }
    }

    /// Sends `message`; a failure is logged (once until a send works
    /// again), never fatal: systemd's own timeouts then say what happened.
    fn notify(&self, message: &str) {
        let Some(t) = &self.target else {
            return;
        };
        match t.send(message) {
            Ok(()) => {
                if t.failing.swap(false, Ordering::Relaxed) {
                    tracing::info!(socket = %t.shown, "notifying systemd works again");
                }
            }
            Err(e) => {
                if !t.failing.swap(true, Ordering::Relaxed) {
                    tracing::warn!(socket = %t.shown, error = %e, "cannot notify systemd (NOTIFY_SOCKET); it may consider the controller not ready or hung");
                }
            }
        }
    }

    /// Sends `message` as one datagram, returning the error.
    pub fn send(&self, message: &str) -> std::io::Result<()> {
        match &self.target {
            Some(t) => t.send(message),
            None => Ok(()),
        }
    }
}

impl Target {
    fn open(raw: &OsStr) -> Result<Target> {
        let shown = cutover_core::text::shown(&raw.to_string_lossy(), 128);
        let invalid = |why: String| Error::Invalid(format!("NOTIFY_SOCKET={shown}: {why}"));
        let bytes = std::os::unix::ffi::OsStrExt::as_bytes(raw);
        let addr = match bytes.first() {
            Some(b'/') => SocketAddr::from_pathname(raw),
            Some(b'@') => {
                use std::os::linux::net::SocketAddrExt;
                SocketAddr::from_abstract_name(&bytes[1..])
            }
            _ => {
                return Err(invalid(
                    "neither an absolute socket path nor an abstract name starting with '@'; unset it unless systemd starts the controller".into(),
                ))
            }
        }
        .map_err(|e| invalid(format!("{e} (at most 107 bytes)")))?;
        let socket = UnixDatagram::unbound()
            .and_then(|s| s.set_nonblocking(true).map(|()| s))
            .map_err(|e| invalid(format!("cannot make a datagram socket: {e}")))?;
        Ok(Target {
            socket,
            addr,
            shown,
            failing: AtomicBool::new(false),
        })
    }

    fn send(&self, message: &str) -> std::io::Result<()> {
        self.socket
            .send_to_addr(message.as_bytes(), &self.addr)
            .map(|_| ())
    }
}

fn parse_usec(raw: &OsStr) -> Result<u64> {
    let (lo, hi) = WATCHDOG_USEC;
    raw.to_str()
        .and_then(|s| s.parse::<u64>().ok())
        .filter(|u| (lo..=hi).contains(u))
        .ok_or_else(|| {
            Error::Invalid(format!(
                "WATCHDOG_USEC={}: must be a whole number of microseconds from {lo} to {hi} (WatchdogSec= from 10ms to 24h in the unit)",
                cutover_core::text::shown(&raw.to_string_lossy(), 32)
            ))
        })
}

fn parse_pid(raw: &OsStr) -> Result<u32> {
    raw.to_str()
        .and_then(|s| s.parse::<u32>().ok())
        .ok_or_else(|| {
            Error::Invalid(format!(
                "WATCHDOG_PID={}: not a process id; unset it unless systemd starts the controller",
                cutover_core::text::shown(&raw.to_string_lossy(), 32)
            ))
        })
}

/// A status is one line of the message: newlines would start new fields.
fn one_line(status: &str) -> String {
    status.replace(['\n', '\r'], " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(socket: &'a str, usec: &'a str, pid: &'a str) -> Env<'a> {
        Env {
            notify_socket: Some(OsStr::new(socket)),
            watchdog_usec: Some(OsStr::new(usec)),
            watchdog_pid: Some(OsStr::new(pid)),
        }
    }

    fn recv(socket: &UnixDatagram) -> String {
        socket
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut buf = [0u8; 512];
        let n = socket.recv(&mut buf).expect("a notification");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    #[test]
    fn messages_reach_a_socket_named_by_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let listener = UnixDatagram::bind(&path).unwrap();
        let n = Notifier::from_vars(env(path.to_str().unwrap(), "", ""), 1).unwrap();
        n.ready("serving on 127.0.0.1:1\nsecond line");
        assert_eq!(
            recv(&listener),
            "READY=1\nSTATUS=serving on 127.0.0.1:1 second line"
        );
        n.stopping("bye");
        assert_eq!(recv(&listener), "STOPPING=1\nSTATUS=bye");
        assert_eq!(n.watchdog_interval(), None);
    }

    #[test]
    fn messages_reach_an_abstract_socket_written_with_an_at_sign() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("cutover-notify-test-{}", std::process::id());
        let listener =
            UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap())
                .unwrap();
        let n = Notifier::from_vars(env(&format!("@{name}"), "", ""), 1).unwrap();
        n.ready("up");
        assert_eq!(recv(&listener), "READY=1\nSTATUS=up");
    }

    #[test]
    fn the_watchdog_pings_at_half_its_interval_and_only_for_its_own_process() {
        let n = Notifier::from_vars(env("@x", "2000000", "42"), 42).unwrap();
        assert_eq!(n.watchdog_interval(), Some(Duration::from_secs(1)));
        let n = Notifier::from_vars(env("@x", "2000000", ""), 42).unwrap();
        assert_eq!(n.watchdog_interval(), Some(Duration::from_secs(1)));
        let other = Notifier::from_vars(env("@x", "2000000", "41"), 42).unwrap();
        assert_eq!(other.watchdog_interval(), None);
        let no_socket = Notifier::from_vars(env("", "2000000", ""), 42).unwrap();
        assert_eq!(no_socket.watchdog_interval(), None);
    }

    #[test]
    fn no_notify_socket_sends_nothing_and_succeeds() {
        let n = Notifier::from_vars(Env::default(), 1).unwrap();
        n.ready("x");
        n.send("READY=1").unwrap();
    }

    #[test]
    fn malformed_variables_are_refused_in_one_line_naming_variable_and_fix() {
        for (e, want) in [
            (env("relative/sock", "", ""), "NOTIFY_SOCKET=\"relative/sock\": neither an absolute socket path nor an abstract name"),
            (env("vsock:2:1", "", ""), "NOTIFY_SOCKET=\"vsock:2:1\": neither"),
            (env(&format!("/{}", "s".repeat(200)), "", ""), "(at most 107 bytes)"),
            (env("@x", "soon", ""), "WATCHDOG_USEC=\"soon\": must be a whole number of microseconds from 10000"),
            (env("@x", "0", ""), "WATCHDOG_USEC=\"0\""),
            (env("@x", "18446744073709551615", ""), "WATCHDOG_USEC=\"18446744073709551615\""),
            (env("@x", "1000000", "me"), "WATCHDOG_PID=\"me\": not a process id"),
        ] {
            let got = Notifier::from_vars(e, 1).unwrap_err().to_string();
            assert!(got.contains(want), "{want}: {got}");
            assert!(!got.contains('\n'), "{got}");
        }
    }

    #[test]
    fn a_socket_that_is_gone_fails_the_send_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gone");
        let n = Notifier::from_vars(env(path.to_str().unwrap(), "", ""), 1).unwrap();
        let e = n.send("READY=1").unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::NotFound, "{e}");
        // Logged, not fatal.
        n.ready("x");
        n.ready("x");
    }
}
