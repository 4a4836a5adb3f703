//! Health checks (`http`, `tcp`, `exec`) and the health window that turns
//! a series of probe results into a verdict: healthy once every check has
//! passed continuously for `min_healthy_time`, failed when that has not
//! happened by `healthy_deadline` (or, for a check with a
//! `failure_threshold`, once it has failed that many times in a row:
//! `health/fail_fast.rs`).

use std::path::Path;
use std::time::{Duration, Instant};

use cutover_core::fleet::{Check, Probe};
use cutover_core::rollout::Evidence;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

mod fail_fast;
pub mod watch;
pub use fail_fast::{FailFast, Probed, Tripped};

const MAX_BODY: usize = 64 * 1024;
const OUTPUT_EXCERPT: usize = 400;

/// Runs health checks. The real one talks to the service; tests fake it.
pub trait Prober: Send + Sync {
    fn probe<'a>(
        &'a self,
        check: &'a Check,
        release: &'a Path,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), Evidence>> + Send + 'a>>;
}

pub struct RealProber;

impl Prober for RealProber {
    fn probe<'a>(
        &'a self,
        check: &'a Check,
        release: &'a Path,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), Evidence>> + Send + 'a>>
    {
        Box::pin(probe(check, release))
    }
}

fn evidence(check: &Check, detail: String) -> Evidence {
    Evidence {
        gate: "health".into(),
        check: Some(check.label()),
        detail,
        ..Evidence::default()
    }
}

fn excerpt(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let t = text.trim();
    match t.char_indices().nth(OUTPUT_EXCERPT) {
        Some((i, _)) => format!("{}…", &t[..i]),
        None => t.to_string(),
    }
}

/// Runs one check once, within its timeout.
pub async fn probe(check: &Check, release: &Path) -> Result<(), Evidence> {
    let probe = check.probe().map_err(|e| evidence(check, e))?;
    let run = async {
        match probe {
            Probe::Http {
                url,
                expect_status,
                body_contains,
            } => http(check, url, expect_status, body_contains).await,
            Probe::Tcp { address } => tokio::net::TcpStream::connect(address)
                .await
                .map(|_| ())
                .map_err(|e| evidence(check, format!("connect {address}: {e}"))),
            Probe::Exec { command, args } => exec(check, release, command, args).await,
        }
    };
    match tokio::time::timeout(check.timeout, run).await {
        Ok(r) => r,
        Err(_) => Err(evidence(
            check,
            format!(
                "timed out after {}",
                humantime::format_duration(check.timeout)
            ),
        )),
    }
}

/// A minimal HTTP/1.1 GET: checks talk to the local service over plain
/// HTTP, so a full client is not needed.
async fn http(
    check: &Check,
    url: &str,
    expect: u16,
    body_contains: Option<&str>,
) -> Result<(), Evidence> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| evidence(check, format!("{url}: not http://")))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let mut stream = tokio::net::TcpStream::connect(authority)
        .await
        .map_err(|e| evidence(check, format!("connect {authority}: {e}")))?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: cutover-agent\r\nConnection: close\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| evidence(check, format!("send request: {e}")))?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|e| evidence(check, format!("read response: {e}")))?;
        if n == 0 || buf.len() >= MAX_BODY {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let head_end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| i + 4)
        .unwrap_or(buf.len());
    let status_line = String::from_utf8_lossy(&buf[..head_end])
        .lines()
        .next()
        .unwrap_or("")
        .to_string();
    let status: Option<u16> = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok());
    let body = &buf[head_end..];
    let mut e = evidence(check, String::new());
    e.status_code = status;
    e.output = excerpt(body);
    match status {
        None => {
            e.detail = format!("not an HTTP response: {status_line:?}");
            Err(e)
        }
        Some(s) if s != expect => {
            e.detail = format!("HTTP {s}, expected {expect}");
            Err(e)
        }
        Some(_) => match body_contains {
            Some(want) if !String::from_utf8_lossy(body).contains(want) => {
                e.detail = format!("body does not contain {want:?}");
                Err(e)
            }
            _ => Ok(()),
        },
    }
}

async fn exec(
    check: &Check,
    release: &Path,
    command: &str,
    args: &[String],
) -> Result<(), Evidence> {
    let program = if command.starts_with('/') {
        command.into()
    } else {
        release.join(command)
    };
    let mut cmd = tokio::process::Command::new(&program);
    cmd.args(args)
        .current_dir(release)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        // Its own process group, so everything the check starts (a shell's
        // `sleep`, a forked helper) can be killed with it.
        .process_group(0)
        .kill_on_drop(true);
    let child = cmd
        .spawn()
        .map_err(|e| evidence(check, format!("cannot run {}: {e}", program.display())))?;
    // Kills the whole group when the check ends in any way: done, timed
    // out (the future is dropped) or cancelled with its install.
    let _group = child.id().map(ProcessGroup);
    let out = child
        .wait_with_output()
        .await
        .map_err(|e| evidence(check, format!("run {}: {e}", program.display())))?;
    if out.status.success() {
        return Ok(());
    }
    let mut e = evidence(
        check,
        format!(
            "exit code {}",
            out.status
                .code()
                .map_or("none (signal)".into(), |c| c.to_string())
        ),
    );
    e.exit_code = out.status.code();
    let mut output = out.stdout;
    output.extend_from_slice(&out.stderr);
    e.output = excerpt(&output);
    Err(e)
}

/// The process group of one exec check (its leader's pid). Dropping it
/// sends SIGKILL to every process still in the group; the leader itself is
/// reaped by tokio (`kill_on_drop`), the rest by whoever inherits them.
struct ProcessGroup(u32);

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        let Ok(pgid) = i32::try_from(self.0) else {
            return;
        };
        // ESRCH (the group is already empty) is the common case.
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(pgid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Pending,
    Healthy,
    Failed(Evidence),
}

/// Turns probe rounds into a verdict. Pure: time comes in as an argument.
#[derive(Debug, Clone)]
pub struct HealthWindow {
    started: Instant,
    min_healthy: Duration,
    deadline: Duration,
    healthy_since: Option<Instant>,
    probes: u32,
    last_failure: Option<Evidence>,
    fail_fast: FailFast,
}

impl HealthWindow {
    pub fn new(started: Instant, min_healthy: Duration, deadline: Duration) -> HealthWindow {
        HealthWindow {
            started,
            min_healthy,
            deadline,
            healthy_since: None,
            probes: 0,
            last_failure: None,
            fail_fast: FailFast::default(),
        }
    }

    /// The window, failing early on a check's `failure_threshold`.
    pub fn with_fail_fast(mut self, fail_fast: FailFast) -> HealthWindow {
        self.fail_fast = fail_fast;
        self
    }

    /// The result of one round of every check at `now`.
    pub fn observe(&mut self, now: Instant, round: Result<(), Evidence>) -> Verdict {
        self.observe_round(now, round, &[])
    }

    /// [`observe`](Self::observe), with what the round did with each check
    /// (`probed[i]` for check `i`) for their failure thresholds.
    pub fn observe_round(
        &mut self,
        now: Instant,
        round: Result<(), Evidence>,
        probed: &[Probed],
    ) -> Verdict {
        self.probes = self.probes.saturating_add(1);
        let elapsed = now.saturating_duration_since(self.started);
        if let Some(t) = self.fail_fast.observe(elapsed, probed) {
            let mut e = match round {
                Err(e) => e,
                Ok(()) => Evidence::new("health", "the check failed"),
            };
            e.detail = format!("{}; {}", e.detail, t.detail());
            e.elapsed_ms = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX);
            e.probes = self.probes;
            return Verdict::Failed(e);
        }
        match round {
            Ok(()) => {
                let since = *self.healthy_since.get_or_insert(now);
                if now.duration_since(since) >= self.min_healthy {
                    return Verdict::Healthy;
                }
            }
            Err(e) => {
                self.healthy_since = None;
                self.last_failure = Some(e);
            }
        }
        if elapsed >= self.deadline {
            let mut e = self.last_failure.clone().unwrap_or_else(|| Evidence {
                gate: "health".into(),
                detail: format!(
                    "not healthy for {} within {}",
                    humantime::format_duration(self.min_healthy),
                    humantime::format_duration(self.deadline)
                ),
                ..Evidence::default()
            });
            e.elapsed_ms = elapsed.as_millis() as u64;
            e.probes = self.probes;
            if self.last_failure.is_some() {
                e.detail = format!(
                    "{} (still failing at the {} deadline)",
                    e.detail,
                    humantime::format_duration(self.deadline)
                );
            }
            return Verdict::Failed(e);
        }
        Verdict::Pending
    }

    /// The last failure seen, for an early stop.
    pub fn last_failure(&self, now: Instant) -> Option<Evidence> {
        self.last_failure.clone().map(|mut e| {
            e.elapsed_ms = now.duration_since(self.started).as_millis() as u64;
            e.probes = self.probes;
            e
        })
    }

    pub fn failing(&self) -> bool {
        self.healthy_since.is_none() && self.last_failure.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fail() -> Result<(), Evidence> {
        Err(Evidence {
            gate: "health".into(),
            detail: "HTTP 503, expected 200".into(),
            status_code: Some(503),
            ..Evidence::default()
        })
    }

    #[test]
    fn healthy_after_min_time_of_continuous_success() {
        let t0 = Instant::now();
        let s = |ms| t0 + Duration::from_millis(ms);
        let mut w = HealthWindow::new(t0, Duration::from_secs(2), Duration::from_secs(10));
        assert_eq!(w.observe(s(0), Ok(())), Verdict::Pending);
        assert_eq!(
            w.observe(s(1500), fail()),
            Verdict::Pending,
            "a failure resets the clock"
        );
        assert_eq!(w.observe(s(2000), Ok(())), Verdict::Pending);
        assert_eq!(w.observe(s(3999), Ok(())), Verdict::Pending);
        assert_eq!(w.observe(s(4000), Ok(())), Verdict::Healthy);
    }

    #[test]
    fn failed_at_the_deadline_with_the_last_evidence() {
        let t0 = Instant::now();
        let mut w = HealthWindow::new(t0, Duration::from_secs(1), Duration::from_secs(3));
        assert_eq!(w.observe(t0, fail()), Verdict::Pending);
        match w.observe(t0 + Duration::from_secs(3), fail()) {
            Verdict::Failed(e) => {
                assert_eq!(e.status_code, Some(503));
                assert_eq!((e.probes, e.elapsed_ms), (2, 3000));
                assert!(e.detail.contains("still failing"), "{}", e.detail);
            }
            v => panic!("{v:?}"),
        }
    }

    #[test]
    fn a_check_with_a_failure_threshold_fails_the_window_before_its_deadline() {
        let check: Check =
            toml::from_str("kind = \"tcp\"\naddress = \"127.0.0.1:1\"\nfailure_threshold = 3")
                .unwrap();
        let t0 = Instant::now();
        let s = |secs| t0 + Duration::from_secs(secs);
        let mut w = HealthWindow::new(t0, Duration::from_secs(30), Duration::from_secs(600))
            .with_fail_fast(FailFast::new(&[check]));
        assert_eq!(
            w.observe_round(s(1), Ok(()), &[Probed::Passed]),
            Verdict::Pending
        );
        assert_eq!(
            w.observe_round(s(2), fail(), &[Probed::Failed]),
            Verdict::Pending
        );
        assert_eq!(
            w.observe_round(s(3), fail(), &[Probed::Failed]),
            Verdict::Pending
        );
        match w.observe_round(s(4), fail(), &[Probed::Failed]) {
            Verdict::Failed(e) => {
                assert_eq!(e.status_code, Some(503));
                assert_eq!((e.probes, e.elapsed_ms), (4, 4000));
                assert_eq!(
                    e.detail,
                    "HTTP 503, expected 200; failed 3 consecutive checks (failure_threshold = 3)"
                );
            }
            v => panic!("{v:?}"),
        }
        // Without a threshold the same rounds wait for the deadline.
        let mut w = HealthWindow::new(t0, Duration::from_secs(30), Duration::from_secs(600));
        for (i, round) in [Ok(()), fail(), fail(), fail(), fail()]
            .into_iter()
            .enumerate()
        {
            let probed = if round.is_ok() {
                Probed::Passed
            } else {
                Probed::Failed
            };
            assert_eq!(
                w.observe_round(s(i as u64), round, &[probed]),
                Verdict::Pending
            );
        }
    }

    #[tokio::test]
    async fn http_probe_reports_status_and_body() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            for status in ["503 Service Unavailable", "200 OK"] {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let body = "database not ready";
                let resp = format!(
                    "HTTP/1.1 {status}\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                s.write_all(resp.as_bytes()).await.unwrap();
            }
        });
        let check: Check = toml::from_str(&format!(
            "kind = \"http\"\nurl = \"http://{addr}/healthz\"\nbody_contains = \"ok\""
        ))
        .unwrap();
        let e = probe(&check, Path::new("/")).await.unwrap_err();
        assert_eq!(
            (e.status_code, e.output.as_str()),
            (Some(503), "database not ready")
        );
        let e = probe(&check, Path::new("/")).await.unwrap_err();
        assert_eq!(e.detail, "body does not contain \"ok\"");
    }

    #[tokio::test]
    async fn exec_probe_reports_exit_code_and_output() {
        let check: Check = toml::from_str(
            "kind = \"exec\"\ncommand = \"/bin/sh\"\nargs = [\"-c\", \"echo broken; exit 4\"]",
        )
        .unwrap();
        let e = probe(&check, Path::new("/")).await.unwrap_err();
        assert_eq!((e.exit_code, e.output.as_str()), (Some(4), "broken"));
    }

    /// The pid a check script wrote, once it is there.
    async fn pid_in(file: &Path) -> i32 {
        for _ in 0..500 {
            if let Some(pid) = std::fs::read_to_string(file)
                .ok()
                .and_then(|s| s.trim().parse().ok())
            {
                return pid;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("{} never written", file.display());
    }

    /// Alive means it exists and is not a zombie waiting for pid 1.
    fn alive(pid: i32) -> bool {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Ok(stat) => stat
                .rsplit_once(") ")
                .is_some_and(|(_, rest)| !rest.starts_with('Z')),
            Err(_) => false,
        }
    }

    async fn gone(pid: i32) -> bool {
        for _ in 0..500 {
            if !alive(pid) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    }

    fn script_check(dir: &Path, body: &str, timeout: &str) -> Check {
        use std::os::unix::fs::PermissionsExt;
        std::fs::create_dir_all(dir.join("bin")).unwrap();
        let path = dir.join("bin/check");
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        toml::from_str(&format!(
            "kind = \"exec\"\ncommand = \"bin/check\"\ntimeout = \"{timeout}\""
        ))
        .unwrap()
    }

    #[tokio::test]
    async fn exec_probe_that_times_out_kills_what_its_script_started() {
        let dir = tempfile::tempdir().unwrap();
        let check = script_check(
            dir.path(),
            "sleep 4242 &\necho $! > grandchild.pid\nwait",
            "300ms",
        );
        let e = probe(&check, dir.path()).await.unwrap_err();
        assert!(e.detail.starts_with("timed out"), "{}", e.detail);
        let pid = pid_in(&dir.path().join("grandchild.pid")).await;
        assert!(
            gone(pid).await,
            "the check's `sleep` (pid {pid}) outlived it"
        );
    }

    #[tokio::test]
    async fn exec_probe_that_passes_leaves_nothing_running() {
        let dir = tempfile::tempdir().unwrap();
        let check = script_check(
            dir.path(),
            "sleep 4243 >/dev/null 2>&1 &\necho $! > grandchild.pid\nexit 0",
            "10s",
        );
        probe(&check, dir.path()).await.unwrap();
        let pid = pid_in(&dir.path().join("grandchild.pid")).await;
        assert!(
            gone(pid).await,
            "the check's `sleep` (pid {pid}) outlived it"
        );
    }

    #[tokio::test]
    async fn exec_probe_cancelled_with_its_install_kills_its_group() {
        let dir = tempfile::tempdir().unwrap();
        let check = script_check(
            dir.path(),
            "sleep 4244 &\necho $! > grandchild.pid\nwait",
            "1h",
        );
        let pidfile = dir.path().join("grandchild.pid");
        let release = dir.path().to_path_buf();
        let task = tokio::spawn(async move { probe(&check, &release).await });
        let pid = pid_in(&pidfile).await;
        assert!(alive(pid));
        task.abort();
        let _ = task.await;
        assert!(
            gone(pid).await,
            "the check's `sleep` (pid {pid}) outlived it"
        );
    }
}
