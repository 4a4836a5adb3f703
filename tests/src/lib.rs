//! The system-test fixture: a throwaway world per test with its own PKI
//! (made by the real `cutover pki init`), a real `cutover-controller` on a
//! loopback port and real `cutover-agent` processes, driven through the
//! real `cutover` CLI. Children are killed when the fixture drops.

pub mod cluster;
pub mod docker;
pub mod grpc;
pub mod postgres;
pub mod process;
pub mod sample;
pub mod schema;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub use serde_json::Value;

/// Where cargo put the workspace's binaries (the test binary's grandparent).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target directory");
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} is missing: build the workspace first (`cargo build --workspace`), as the README's test command does",
        path.display()
    );
    path
}

/// Polls `f` until it returns `Some`, or panics after `timeout` with the
/// description of what was awaited.
pub fn eventually<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Replaces the identity in an agent's `data_dir` with a fresh key and a
/// certificate for `host` from the CA in `pki` that expired a day ago: a
/// host that was down past its certificate's life.
pub fn expire_identity(pki: &Path, data_dir: &Path, host: &str) {
    let ca =
        cutover_core::pki::CertificateAuthority::load(&pki.join("ca.pem"), &pki.join("ca-key.pem"))
            .expect("load CA");
    let (key_pem, csr) = cutover_core::pki::new_csr(host).unwrap();
    let now = time::OffsetDateTime::now_utc();
    let cert = ca
        .issue_host_cert_valid(
            &csr,
            host,
            now - time::Duration::days(2),
            now - time::Duration::days(1),
        )
        .unwrap();
    std::fs::write(
        data_dir.join("identity.pem"),
        format!("{}{}", cert.pem, key_pem),
    )
    .expect("write identity.pem");
}

/// A rollout or event id as `-o json` prints it: a decimal string.
pub fn id(v: &Value) -> u64 {
    v.as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("an id as a decimal string, not {v}"))
}

/// An instant as `-o json` prints it: RFC 3339.
pub fn instant(v: &Value) -> time::OffsetDateTime {
    v.as_str()
        .and_then(|s| {
            time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()
        })
        .unwrap_or_else(|| panic!("an RFC 3339 instant, not {v}"))
}

/// A loopback port for a server a test starts later, reserved for the
/// rest of this process.
///
/// Not one the kernel picks (`bind :0`): those come from the ephemeral
/// range, and a port the kernel handed out and took back is soon the
/// source port of some outgoing connection (every CLI call and agent dial
/// makes one), so a sample service binding it a second later fails. Ports
/// come from below the ephemeral range instead, walked from a start drawn
/// from the pid and the clock, and each is claimed with an exclusive
/// `flock` on a file under the temp dir, so test binaries running side by
/// side never hand out the same one. The lock goes with the process.
pub fn free_port() -> u16 {
    use std::sync::Mutex;
    static HELD: Mutex<Vec<nix::fcntl::Flock<std::fs::File>>> = Mutex::new(Vec::new());
    const LOWEST: u32 = 10_000;
    let top = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u32>().ok())
        .filter(|low| *low > LOWEST + 1_000)
        .unwrap_or(32_768);
    let span = top - LOWEST;
    let dir = std::env::temp_dir().join("cutover-test-ports");
    std::fs::create_dir_all(&dir).expect("the port reservation dir");
    let mut held = HELD.lock().unwrap_or_else(|p| p.into_inner());
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos())
        ^ std::process::id().wrapping_mul(7_919);
    let start = seed % span;
    for i in 0..span {
        let port = (LOWEST + (start + i) % span) as u16;
        let Ok(file) = std::fs::File::create(dir.join(port.to_string())) else {
            continue;
        };
        let Ok(lock) = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock)
        else {
            continue;
        };
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            held.push(lock);
            return port;
        }
    }
    panic!("no free loopback port in {LOWEST}..{top}")
}

/// Runs the real `cutover` CLI against `controller` with the operator
/// certificate in `pki`.
pub fn run_cli(controller: &str, pki: &Path, args: &[&str]) -> Run {
    let out = Command::new(bin("cutover"))
        .args(args)
        .env("CUTOVER_CONTROLLER", controller)
        .env("CUTOVER_PKI_DIR", pki)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .expect("run cutover");
    Run::from(out)
}

/// Starts the real `cutover` CLI against `controller` without waiting for
/// it, stdout and stderr piped: for tests that read part of its output,
/// close it or signal it.
pub fn spawn_cli(controller: &str, pki: &Path, args: &[&str]) -> Child {
    Command::new(bin("cutover"))
        .args(args)
        .env("CUTOVER_CONTROLLER", controller)
        .env("CUTOVER_PKI_DIR", pki)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start cutover")
}

/// Signs `manifest` with `key` and imports it, both with the real CLI.
pub fn sign_and_import(cli: impl Fn(&[&str]) -> Run, manifest: &Path, key: &Path) -> Run {
    let m = manifest.to_str().expect("utf-8 path");
    cli(&[
        "release",
        "sign",
        m,
        "--key",
        key.to_str().expect("utf-8 path"),
    ])
    .ok();
    cli(&["release", "import", m])
}

/// The result of one CLI run.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    fn from(o: Output) -> Run {
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }

    pub fn ok(self) -> Run {
        assert_eq!(self.code, 0, "command failed: {self:?}");
        self
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.stdout))
    }

    /// Asserts a failure with exit code 1 and a one-line error containing `needle`.
    pub fn fails_with(&self, needle: &str) {
        assert_eq!(self.code, 1, "expected failure: {self:?}");
        let msg = self.stderr.trim();
        assert!(!msg.contains('\n'), "error is not one line: {msg}");
        assert!(
            msg.contains(needle),
            "error {msg:?} does not mention {needle:?}"
        );
    }
}

/// Options of the controller a test starts.
#[derive(Clone)]
pub struct ControllerOptions {
    pub agent_cert_ttl: String,
}

impl Default for ControllerOptions {
    fn default() -> Self {
        ControllerOptions {
            agent_cert_ttl: "7d".into(),
        }
    }
}

pub struct Fleet {
    pub dir: tempfile::TempDir,
    pub pki: PathBuf,
    pub port: u16,
    pub options: ControllerOptions,
    controller: Option<Child>,
    agents: BTreeMap<String, Child>,
    /// `[vars]` each agent's config gets.
    pub agent_vars: BTreeMap<String, Vec<(String, String)>>,
    /// Extra controller config lines (top-level keys).
    pub controller_extra: String,
    /// Extra agent config lines (top-level keys), for every agent.
    pub agent_extra: String,
    /// Tables at the end of the controller's config, such as
    /// `[databases.NAME]` (`postgres::Postgres::config` writes one).
    pub controller_tables: String,
}

impl Fleet {
    /// A new world: PKI and release key made by the real CLI, no processes yet.
    pub fn new() -> Fleet {
        Self::with(ControllerOptions::default())
    }

    pub fn with(options: ControllerOptions) -> Fleet {
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = dir.path().join("pki");
        let fleet = Fleet {
            pki: pki.clone(),
            port: free_port(),
            options,
            controller: None,
            agents: BTreeMap::new(),
            agent_vars: BTreeMap::new(),
            controller_extra: String::new(),
            agent_extra: String::new(),
            controller_tables: String::new(),
            dir,
        };
        fleet
            .cli(&[
                "pki",
                "init",
                "--dir",
                pki.to_str().expect("utf-8 path"),
                "--controller-host",
                "127.0.0.1,localhost",
            ])
            .ok();
        let key = fleet.path("release");
        fleet
            .cli(&["release", "keygen", "--out", key.to_str().expect("utf-8")])
            .ok();
        fleet
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// Starts the controller and waits until it answers operators.
    pub fn start_controller(&mut self) {
        let config = self.path("controller.toml");
        std::fs::write(
            &config,
            format!(
                "listen = \"127.0.0.1:{}\"\ndata_dir = \"controller\"\nagent_cert_ttl = \"{}\"\n{}\n[tls]\nca_cert = \"pki/ca.pem\"\nca_key = \"pki/ca-key.pem\"\ncert = \"pki/controller.pem\"\nkey = \"pki/controller-key.pem\"\n[releases]\ntrusted_keys = [\"release.pub\"]\n{}",
                self.port, self.options.agent_cert_ttl, self.controller_extra, self.controller_tables
            ),
        )
        .expect("write controller config");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path("controller.log"))
            .expect("controller log");
        let child = Command::new(bin("cutover-controller"))
            .arg("--config")
            .arg(&config)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start controller");
        self.controller = Some(child);
        eventually(Duration::from_secs(20), "the controller to answer", || {
            (self.cli(&["hosts"]).code == 0).then_some(())
        });
    }

    /// SIGKILLs the controller: no chance to clean up.
    pub fn kill_controller(&mut self) {
        if let Some(mut c) = self.controller.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn signal_controller(&self, signal: nix::sys::signal::Signal) {
        let pid = self.controller.as_ref().expect("controller running").id();
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal)
            .expect("signal controller");
    }

    pub fn controller_log(&self) -> String {
        std::fs::read_to_string(self.path("controller.log")).unwrap_or_default()
    }

    /// Runs the real `cutover` CLI against this fleet's controller.
    pub fn cli(&self, args: &[&str]) -> Run {
        run_cli(&self.url(), &self.pki, args)
    }

    /// [`spawn_cli`] against this fleet's controller.
    pub fn spawn_cli(&self, args: &[&str]) -> Child {
        spawn_cli(&self.url(), &self.pki, args)
    }

    pub fn cli_json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.extend(["--output", "json"]);
        self.cli(&all).ok().json()
    }

    pub fn token(&self, host: &str, ttl: &str) -> String {
        self.cli(&["token", "create", host, "--ttl", ttl])
            .ok()
            .stdout
            .trim()
            .to_string()
    }

    pub fn agent_dir(&self, host: &str) -> PathBuf {
        self.path(&format!("agent-{host}"))
    }

    fn agent_config(&self, host: &str, heartbeat: &str) -> PathBuf {
        let config = self.path(&format!("{host}.toml"));
        let mut text = format!(
            "controller = \"{}\"\nca_cert = \"pki/ca.pem\"\ndata_dir = \"agent-{host}\"\nheartbeat_interval = \"{heartbeat}\"\nreconnect_max_backoff = \"1s\"\nautonomous_rollback_after = \"3s\"\nmax_entries = 1000\nmax_unpacked_bytes = 67108864\n{}[vars]\n",
            self.url(),
            self.agent_extra
        );
        for (k, v) in self.agent_vars.get(host).into_iter().flatten() {
            text.push_str(&format!("{k} = \"{v}\"\n"));
        }
        std::fs::write(&config, text).expect("write agent config");
        config
    }

    /// Enrolls (with a fresh token) and starts an agent for `host`.
    pub fn start_agent(&mut self, host: &str, heartbeat: &str) {
        let token = self.token(host, "5m");
        self.spawn_agent(host, heartbeat, Some(&token));
    }

    /// Starts an agent that already has its identity (or fails without one).
    pub fn spawn_agent(&mut self, host: &str, heartbeat: &str, token: Option<&str>) {
        self.spawn_agent_as(host, heartbeat, token, false);
    }

    /// As [`Fleet::spawn_agent`], or, with `relative`, started from the
    /// config's directory as `--config HOST.toml` (no directory part).
    pub fn spawn_agent_as(
        &mut self,
        host: &str,
        heartbeat: &str,
        token: Option<&str>,
        relative: bool,
    ) {
        let config = self.agent_config(host, heartbeat);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path(&format!("{host}.log")))
            .expect("agent log");
        let mut cmd = Command::new(bin("cutover-agent"));
        if relative {
            cmd.current_dir(self.dir.path())
                .arg("--config")
                .arg(config.file_name().expect("config file name"));
        } else {
            cmd.arg("--config").arg(&config);
        }
        if let Some(t) = token {
            cmd.arg("--join-token").arg(t);
        }
        let child = cmd
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start agent");
        self.agents.insert(host.to_string(), child);
    }

    pub fn agent_pid(&self, host: &str) -> i32 {
        self.agents[host].id() as i32
    }

    pub fn agent_exited(&mut self, host: &str) -> Option<i32> {
        let child = self.agents.get_mut(host)?;
        child
            .try_wait()
            .ok()
            .flatten()
            .map(|s| s.code().unwrap_or(-1))
    }

    pub fn kill_agent(&mut self, host: &str) {
        if let Some(mut c) = self.agents.remove(host) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn signal_agent(&self, host: &str, signal: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.agent_pid(host)), signal)
            .expect("signal agent");
    }

    pub fn agent_log(&self, host: &str) -> String {
        std::fs::read_to_string(self.path(&format!("{host}.log"))).unwrap_or_default()
    }

    /// `cutover hosts --output json`, keyed by host name.
    pub fn hosts(&self) -> BTreeMap<String, Value> {
        let v = self.cli_json(&["hosts"]);
        v.as_array()
            .expect("hosts array")
            .iter()
            .map(|h| {
                (
                    h["name"].as_str().unwrap_or_default().to_string(),
                    h.clone(),
                )
            })
            .collect()
    }

    pub fn is_online(&self, host: &str) -> bool {
        self.hosts()
            .get(host)
            .is_some_and(|h| h["online"] == Value::Bool(true))
    }

    /// Enrolls and starts an agent for each of `hosts` (500 ms
    /// heartbeats), then waits until all are online.
    pub fn start_agents(&mut self, hosts: &[&str]) {
        for h in hosts {
            self.start_agent(h, "500ms");
        }
        for h in hosts {
            self.wait_online(h);
        }
    }

    pub fn wait_online(&self, host: &str) {
        eventually(Duration::from_secs(20), &format!("{host} online"), || {
            self.is_online(host).then_some(())
        });
    }
}

impl Default for Fleet {
    fn default() -> Self {
        Self::new()
    }
}

/// Kills every service process an agent of this fleet supervises (their
/// own process groups outlive a killed agent, by design).
fn kill_services(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for agent in entries.flatten() {
        let Ok(services) = std::fs::read_dir(agent.path().join("services")) else {
            continue;
        };
        for s in services.flatten() {
            let Ok(text) = std::fs::read_to_string(s.path().join("pid")) else {
                continue;
            };
            if let Some(pid) = text
                .split_whitespace()
                .next()
                .and_then(|p| p.parse::<i32>().ok())
            {
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for (_, mut c) in std::mem::take(&mut self.agents) {
            let _ = c.kill();
            let _ = c.wait();
        }
        kill_services(self.dir.path());
        self.kill_controller();
        if std::thread::panicking() {
            // Leave the evidence where a failing test can be read.
            eprintln!("--- controller log ---\n{}", self.controller_log());
        }
    }
}
