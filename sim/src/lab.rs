//! A real controller process on loopback for the benchmarks: its own PKI,
//! release key and data directory, its RSS and CPU time read from /proc,
//! and the real `cutover` CLI for operator steps.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cutover_cli::bundle;

use crate::swarm::{Result, Setup};

pub struct Lab {
    pub dir: PathBuf,
    /// Where cutover-sim is: the other binaries sit beside it.
    pub bin_dir: PathBuf,
    controller: Option<Child>,
    pub setup: Setup,
}

impl Lab {
    /// Prepares `dir` (PKI, release key, controller config) once; later
    /// runs reuse it, enrolled identities included.
    pub fn new(dir: &Path, heartbeat: Duration) -> Result<Lab> {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        // Absolute, so configs written into the lab mean the same from anywhere.
        let dir = &std::path::absolute(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let bin_dir = std::env::current_exe()
            .map_err(|e| e.to_string())?
            .parent()
            .ok_or("no directory for cutover-sim")?
            .to_path_buf();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .map_err(|e| e.to_string())?;
        let lab = Lab {
            dir: dir.to_path_buf(),
            bin_dir,
            controller: None,
            setup: Setup {
                controller: format!("https://127.0.0.1:{port}"),
                pki: dir.join("pki"),
                state: dir.to_path_buf(),
                heartbeat,
                // The agent's default, so the reconnect storm is what a fleet sees.
                max_backoff: Duration::from_secs(30),
            },
        };
        if !lab.setup.pki.join("ca.pem").exists() {
            let pki = lab.setup.pki.display().to_string();
            lab.cli(&[
                "pki",
                "init",
                "--dir",
                &pki,
                "--controller-host",
                "127.0.0.1",
            ])?;
        }
        if !dir.join("release.key").exists() {
            let out = dir.join("release").display().to_string();
            lab.cli(&["release", "keygen", "--out", &out])?;
        }
        std::fs::write(
            dir.join("controller.toml"),
            format!(
                "listen = \"127.0.0.1:{port}\"\ndata_dir = \"controller\"\n[tls]\nca_cert = \"pki/ca.pem\"\nca_key = \"pki/ca-key.pem\"\ncert = \"pki/controller.pem\"\nkey = \"pki/controller-key.pem\"\n[releases]\ntrusted_keys = [\"release.pub\"]\n"
            ),
        )
        .map_err(|e| e.to_string())?;
        Ok(lab)
    }

    /// Runs the real `cutover` CLI; its stdout, or its stderr as the error.
    pub fn cli(&self, args: &[&str]) -> Result<String> {
        let out = Command::new(self.bin_dir.join("cutover"))
            .args(args)
            .env("CUTOVER_CONTROLLER", &self.setup.controller)
            .env("CUTOVER_PKI_DIR", &self.setup.pki)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cutover {args:?}: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "cutover {args:?}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    /// Writes `services` as release `version` in the lab, signs it with the
    /// lab's key and imports it; returns the release's manifest.
    pub fn publish(&self, version: &str, services: &[bundle::Service]) -> Result<PathBuf> {
        let dir = self.dir.join(format!("release-{version}"));
        let manifest = bundle::write_release(&dir, version, services, &bundle::Floor::default())
            .map_err(|e| e.to_string())?;
        self.sign_and_import(&manifest)?;
        Ok(manifest)
    }

    /// Signs `manifest` with the lab's key and imports it.
    pub fn sign_and_import(&self, manifest: &Path) -> Result<()> {
        let m = manifest.display().to_string();
        let key = self.dir.join("release.key").display().to_string();
        self.cli(&["release", "sign", &m, "--key", &key])?;
        self.cli(&["release", "import", &m])?;
        Ok(())
    }

    /// Adds `tables` (TOML tables such as `[databases.NAME]`) to the
    /// controller's config, for the next start; `Lab::new` writes it anew.
    pub fn add_config(&self, tables: &str) -> Result<()> {
        use std::io::Write as _;
        std::fs::OpenOptions::new()
            .append(true)
            .open(self.dir.join("controller.toml"))
            .and_then(|mut f| f.write_all(tables.as_bytes()))
            .map_err(|e| format!("controller.toml: {e}"))
    }

    /// Starts the controller; returns once it answers operators.
    pub fn start_controller(&mut self) -> Result<Duration> {
        let started = Instant::now();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("controller.log"))
            .map_err(|e| e.to_string())?;
        let child = Command::new(self.bin_dir.join("cutover-controller"))
            .arg("--config")
            .arg(self.dir.join("controller.toml"))
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("start cutover-controller: {e}"))?;
        self.controller = Some(child);
        while self.cli(&["hosts", "--output", "json"]).is_err() {
            if started.elapsed() > Duration::from_secs(60) {
                return Err("the controller did not answer within 60 s".into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(started.elapsed())
    }

    /// SIGKILLs the controller.
    pub fn kill_controller(&mut self) {
        if let Some(mut c) = self.controller.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERMs the controller and waits for it to exit: how long it took
    /// and whether it exited 0. Killed after `limit`.
    pub fn terminate_controller(&mut self, limit: Duration) -> Result<(Duration, bool)> {
        use nix::sys::signal::{kill, Signal};
        use nix::unistd::Pid;
        let mut child = self.controller.take().ok_or("no controller running")?;
        let pid = i32::try_from(child.id()).map_err(|e| e.to_string())?;
        let t = Instant::now();
        kill(Pid::from_raw(pid), Signal::SIGTERM).map_err(|e| format!("SIGTERM: {e}"))?;
        loop {
            if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
                return Ok((t.elapsed(), status.success()));
            }
            if t.elapsed() > limit {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "the controller was still running {} after SIGTERM; killed",
                    humantime::format_duration(limit)
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn pid(&self) -> Result<u32> {
        self.controller
            .as_ref()
            .map(|c| c.id())
            .ok_or_else(|| "no controller running".into())
    }

    /// The controller's resident set, in bytes.
    pub fn rss(&self) -> Result<u64> {
        rss_of(self.pid()?)
    }

    /// CPU time the controller has used so far (user + system).
    pub fn cpu(&self) -> Result<Duration> {
        cpu_of(self.pid()?)
    }
}

/// CPU time process `pid` has used so far (user + system; not its children's).
pub fn cpu_of(pid: u32) -> Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).map_err(|e| e.to_string())?;
    // Fields after the command name (which may hold spaces).
    let rest = stat.rsplit_once(')').ok_or("bad /proc stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields
        .get(11..13)
        .ok_or("bad /proc stat")?
        .iter()
        .filter_map(|v| v.parse::<u64>().ok())
        .sum();
    // USER_HZ is 100 on Linux.
    Ok(Duration::from_millis(ticks * 10))
}

/// The lab's rollouts, as the real CLI lists them.
impl Lab {
    /// Aborts what a run cut short left unfinished in the kept lab.
    pub fn abort_unfinished(&self) -> Result<()> {
        let list = self.latest_rollouts(5)?;
        for r in list.as_array().into_iter().flatten() {
            if ["running", "paused", "rolling_back"].contains(&r["status"].as_str().unwrap_or("")) {
                let id = r["id"].as_str().unwrap_or_default().to_string();
                self.cli(&["rollout", "abort", &id])?;
            }
        }
        Ok(())
    }

    /// Waits for the newest rollout to end; its id and final status.
    pub async fn newest_rollout_end(&self, timeout: Duration) -> Result<(u64, String)> {
        let t = Instant::now();
        let id: u64 = self.latest_rollouts(1)?[0]["id"]
            .as_str()
            .and_then(|id| id.parse().ok())
            .ok_or("no rollout listed")?;
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let status = self.latest_rollouts(1)?[0]["status"]
                .as_str()
                .unwrap_or("")
                .to_string();
            if ["succeeded", "rolled_back", "failed", "aborted"].contains(&status.as_str()) {
                return Ok((id, status));
            }
            if t.elapsed() > timeout {
                return Err(format!(
                    "rollout {id} still {status} after {}",
                    humantime::format_duration(timeout)
                ));
            }
        }
    }

    /// The newest rollouts, as `cutover rollout list` gives them.
    fn latest_rollouts(&self, limit: usize) -> Result<serde_json::Value> {
        let out = self.cli(&[
            "rollout",
            "list",
            "--limit",
            &limit.to_string(),
            "--output",
            "json",
        ])?;
        serde_json::from_str(&out).map_err(|e| e.to_string())
    }
}

/// A process's resident set, in bytes.
pub fn rss_of(pid: u32) -> Result<u64> {
    let status =
        std::fs::read_to_string(format!("/proc/{pid}/status")).map_err(|e| e.to_string())?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map(|kib| kib * 1024)
        .ok_or_else(|| "no VmRSS".into())
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.kill_controller();
    }
}
