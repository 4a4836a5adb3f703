//! The controller as systemd runs it (`Type=notify`): the real binary with
//! `NOTIFY_SOCKET` pointing at a datagram socket this test owns, so the
//! test reads exactly what systemd would: `READY=1` once the port accepts
//! connections, `WATCHDOG=1` pings, `STOPPING=1` on SIGTERM. Also the
//! descriptor limits it logs, as `LimitNOFILE=` sets them.

use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::Duration;

use cutover_tests::{bin, eventually, Fleet};
use nix::sys::signal::Signal;

/// A controller process of this test, killed when dropped.
type Controller = cutover_tests::process::ControllerProcess;

/// Starts the controller of `f` with `env` added to its environment,
/// under `prlimit --nofile=SOFT:HARD` when `nofile` is given.
fn spawn(f: &Fleet, env: &[(&str, &str)], nofile: Option<(u64, u64)>) -> Controller {
    let config = f.path("controller.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:{}\"\ndata_dir = \"controller\"\n[tls]\nca_cert = \"pki/ca.pem\"\nca_key = \"pki/ca-key.pem\"\ncert = \"pki/controller.pem\"\nkey = \"pki/controller-key.pem\"\n[releases]\ntrusted_keys = [\"release.pub\"]\n",
            f.port
        ),
    )
    .expect("write controller config");
    let log = f.path("controller.log");
    let file = std::fs::File::create(&log).expect("controller log");
    let mut cmd = match nofile {
        Some((soft, hard)) => {
            let mut c = Command::new("prlimit");
            c.arg(format!("--nofile={soft}:{hard}"))
                .arg("--")
                .arg(bin("cutover-controller"));
            c
        }
        None => Command::new(bin("cutover-controller")),
    };
    let child = cmd
        .arg("--config")
        .arg(&config)
        .env("RUST_LOG", "info")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_USEC")
        .env_remove("WATCHDOG_PID")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(file)
        .spawn()
        .expect("start controller");
    Controller::new(child, log)
}

/// The socket systemd would listen on: datagrams, read here.
struct NotifySocket {
    socket: UnixDatagram,
}

impl NotifySocket {
    fn bind(socket: UnixDatagram) -> NotifySocket {
        // Only keeps a controller that never notifies from hanging the
        // test; nothing is asserted about how long anything takes.
        socket
            .set_read_timeout(Some(Duration::from_secs(30)))
            .expect("read timeout");
        NotifySocket { socket }
    }

    /// The next datagram, split into its `KEY=VALUE` lines.
    fn next(&self, waiting_for: &str) -> Vec<String> {
        let mut buf = vec![0u8; 4096];
        let n = self
            .socket
            .recv(&mut buf)
            .unwrap_or_else(|e| panic!("no notification while waiting for {waiting_for}: {e}"));
        String::from_utf8_lossy(&buf[..n])
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// Reads datagrams until one carries `line`; returns those before it.
    fn until(&self, line: &str) -> Vec<Vec<String>> {
        let mut before = Vec::new();
        loop {
            let message = self.next(line);
            if message.iter().any(|l| l == line) {
                return before;
            }
            before.push(message);
        }
    }
}

#[test]
fn the_controller_says_ready_only_once_its_port_accepts_connections_pings_the_watchdog_and_says_stopping_on_sigterm(
) {
    let f = Fleet::new();
    let path = f.path("notify.sock");
    let notify = NotifySocket::bind(UnixDatagram::bind(&path).expect("bind notify socket"));
    let mut c = spawn(
        &f,
        &[
            ("NOTIFY_SOCKET", path.to_str().expect("utf-8")),
            // Pings every 100 ms.
            ("WATCHDOG_USEC", "200000"),
        ],
        None,
    );
    let before = notify.until("READY=1");
    assert!(
        before.is_empty(),
        "notifications before READY=1: {before:?}"
    );
    // Read the moment it is sent: the port must take a connection now,
    // not eventually.
    std::net::TcpStream::connect(("127.0.0.1", f.port))
        .expect("READY=1 was sent before the port accepted connections");
    assert_eq!(f.cli(&["hosts"]).code, 0, "the controller does not answer");
    for ping in 0..3 {
        assert_eq!(
            notify.next("a watchdog ping"),
            vec!["WATCHDOG=1".to_string()],
            "ping {ping}"
        );
    }
    c.signal(Signal::SIGTERM);
    notify.until("STOPPING=1");
    let status = c.wait_exit(Duration::from_secs(30), "the controller to exit on SIGTERM");
    assert!(status.success(), "controller exited with {status}");
}

#[test]
fn notifications_reach_an_abstract_notify_socket_written_with_an_at_sign() {
    use std::os::linux::net::SocketAddrExt;
    let f = Fleet::new();
    let name = format!("cutover-test-notify-{}-{}", std::process::id(), f.port);
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).expect("name");
    let notify = NotifySocket::bind(UnixDatagram::bind_addr(&addr).expect("bind abstract"));
    let mut c = spawn(&f, &[("NOTIFY_SOCKET", &format!("@{name}"))], None);
    notify.until("READY=1");
    std::net::TcpStream::connect(("127.0.0.1", f.port))
        .expect("READY=1 was sent before the port accepted connections");
    c.signal(Signal::SIGTERM);
    let between = notify.until("STOPPING=1");
    assert!(
        between.iter().flatten().all(|l| l != "WATCHDOG=1"),
        "watchdog pings without WATCHDOG_USEC: {between:?}"
    );
    assert!(c
        .wait_exit(Duration::from_secs(30), "the controller to exit")
        .success());
}

#[test]
fn a_malformed_notify_socket_or_watchdog_refuses_start_in_one_line_naming_the_variable() {
    let f = Fleet::new();
    for (env, want) in [
        (
            [("NOTIFY_SOCKET", "run/notify"), ("WATCHDOG_USEC", "")],
            "NOTIFY_SOCKET=\"run/notify\": neither an absolute socket path nor an abstract name",
        ),
        (
            [("NOTIFY_SOCKET", "@x"), ("WATCHDOG_USEC", "30s")],
            "WATCHDOG_USEC=\"30s\": must be a whole number of microseconds",
        ),
    ] {
        let mut c = spawn(&f, &env, None);
        let status = c.wait_exit(Duration::from_secs(30), "the controller to refuse to start");
        assert_eq!(status.code(), Some(1), "{want}");
        let log = c.log();
        let line = log.trim();
        assert!(!line.contains('\n'), "not one line: {log}");
        assert!(line.contains(want), "{want}: {log}");
    }
}

#[test]
fn a_notify_socket_nobody_listens_on_is_logged_and_the_controller_serves_anyway() {
    let f = Fleet::new();
    let gone = f.path("nobody.sock");
    let c = spawn(
        &f,
        &[("NOTIFY_SOCKET", gone.to_str().expect("utf-8"))],
        None,
    );
    eventually(Duration::from_secs(20), "the controller to answer", || {
        (f.cli(&["hosts"]).code == 0).then_some(())
    });
    assert!(c.log().contains("cannot notify systemd"), "{}", c.log());
}

#[test]
fn the_controller_logs_its_soft_and_hard_descriptor_limits_at_start() {
    let f = Fleet::new();
    let c = spawn(&f, &[], Some((128, 4096)));
    let line = eventually(Duration::from_secs(20), "the descriptor limit line", || {
        c.log()
            .lines()
            .find(|l| l.contains("descriptor limit"))
            .map(str::to_string)
    });
    for field in ["soft=4096", "hard=4096", "soft_at_start=128"] {
        assert!(line.contains(field), "{field}: {line}");
    }
}
