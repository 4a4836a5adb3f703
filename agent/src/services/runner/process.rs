//! The `process` runner: the service in its own process group, stopped
//! with its stop signal then SIGKILL, restarted with backoff and a count,
//! stdout and stderr to copy-truncate rotated log files, and a pid file
//! with the start time so a restarted agent adopts what still runs.

use std::collections::HashMap;
use std::io::{Read, Seek};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use cutover_core::fleet::ServiceConfig;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

use super::{describe, RunStatus, Runner};
use crate::error::{Error, Result};
use crate::install::journal::service_dir;

struct Proc {
    pid: u32,
    start_time: u64,
    child: Option<Child>,
    release: PathBuf,
    config: ServiceConfig,
    restarts: u32,
    last_exit: Option<String>,
    started: Instant,
    restart_at: Option<Instant>,
    backoff: Duration,
}

pub struct ProcessRunner {
    data_dir: PathBuf,
    log_max_bytes: u64,
    log_files: u32,
    procs: Mutex<HashMap<String, Proc>>,
}

impl ProcessRunner {
    pub fn new(data_dir: &Path, log_max_bytes: u64, log_files: u32) -> ProcessRunner {
        ProcessRunner {
            data_dir: data_dir.to_path_buf(),
            log_max_bytes,
            log_files: log_files.max(1),
            procs: Mutex::new(HashMap::new()),
        }
    }

    fn procs(&self) -> std::sync::MutexGuard<'_, HashMap<String, Proc>> {
        self.procs.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn log_path(&self, service: &str) -> PathBuf {
        service_dir(&self.data_dir, service)
            .join("logs")
            .join("service.log")
    }

    fn pid_path(&self, service: &str) -> PathBuf {
        service_dir(&self.data_dir, service).join("pid")
    }

    fn spawn(&self, service: &str, release: &Path, config: &ServiceConfig) -> Result<(Child, u64)> {
        let err = |problem: String| Error::Runner {
            service: service.to_string(),
            problem,
        };
        let command = config.command.as_deref().unwrap_or_default();
        let program = if command.starts_with('/') {
            PathBuf::from(command)
        } else {
            release.join(command)
        };
        let cwd = match &config.working_dir {
            Some(d) => release.join(d),
            None => release.to_path_buf(),
        };
        let log = self.log_path(service);
        if let Some(dir) = log.parent() {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(|e| Error::io(&log, e))?;
        let errs = out.try_clone().map_err(|e| Error::io(&log, e))?;
        use std::os::unix::process::CommandExt;
        let child = Command::new(&program)
            .args(&config.args)
            .envs(&config.env)
            .env("CUTOVER_SERVICE", service)
            .env("CUTOVER_RELEASE_DIR", release)
            .current_dir(&cwd)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(errs)
            .process_group(0)
            .spawn()
            .map_err(|e| err(format!("cannot start {}: {e}", program.display())))?;
        let start_time = proc_start_time(child.id()).unwrap_or(0);
        let pid_file = self.pid_path(service);
        cutover_core::fsutil::write_atomic(
            &pid_file,
            format!("{} {start_time}\n", child.id()).as_bytes(),
            0o600,
        )?;
        tracing::info!(%service, pid = child.id(), program = %program.display(), "service started");
        Ok((child, start_time))
    }

    fn rotate(&self, service: &str) {
        let log = self.log_path(service);
        let Ok(meta) = std::fs::metadata(&log) else {
            return;
        };
        if meta.len() <= self.log_max_bytes {
            return;
        }
        for i in (1..self.log_files).rev() {
            let _ = std::fs::rename(
                log.with_extension(format!("log.{i}")),
                log.with_extension(format!("log.{}", i + 1)),
            );
        }
        // Copy then truncate: the service keeps its O_APPEND descriptor.
        if std::fs::copy(&log, log.with_extension("log.1")).is_ok() {
            if let Ok(f) = std::fs::OpenOptions::new().write(true).open(&log) {
                let _ = f.set_len(0);
            }
        }
    }
}

/// Field 22 of /proc/PID/stat: when the process started, in clock ticks.
fn proc_start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    if fields.first() == Some(&"Z") {
        return None;
    }
    fields.get(19)?.parse().ok()
}

fn alive(pid: u32, start_time: u64) -> bool {
    proc_start_time(pid) == Some(start_time)
}

impl Proc {
    fn new(
        pid: u32,
        start_time: u64,
        child: Option<Child>,
        release: &Path,
        config: &ServiceConfig,
    ) -> Proc {
        Proc {
            pid,
            start_time,
            child,
            release: release.to_path_buf(),
            config: config.clone(),
            restarts: 0,
            last_exit: None,
            started: Instant::now(),
            restart_at: None,
            backoff: Duration::from_millis(500),
        }
    }

    /// Whether it still runs; reaps it if it does not.
    fn check(&mut self) -> bool {
        match &mut self.child {
            Some(child) => match child.try_wait() {
                Ok(None) => true,
                Ok(Some(status)) => {
                    self.last_exit = Some(describe(status));
                    false
                }
                Err(_) => false,
            },
            None => alive(self.pid, self.start_time),
        }
    }
}

impl Runner for ProcessRunner {
    fn start(&self, service: &str, release: &Path, config: &ServiceConfig) -> Result<()> {
        let (child, start_time) = self.spawn(service, release, config)?;
        let proc = Proc::new(child.id(), start_time, Some(child), release, config);
        self.procs().insert(service.to_string(), proc);
        Ok(())
    }

    fn stop(&self, service: &str, config: &ServiceConfig) -> Result<()> {
        let proc = self.procs().remove(service);
        let pid_file = self.pid_path(service);
        let mut proc = match proc {
            Some(p) => p,
            None => {
                // Not ours in memory: a pid file from an earlier agent run.
                let Some((pid, st)) = read_pid_file(&pid_file) else {
                    return Ok(());
                };
                Proc::new(pid, st, None, Path::new(""), config)
            }
        };
        if proc.check() {
            let signal = cutover_core::fleet::signal_number(&config.stop_signal)
                .ok()
                .and_then(|n| Signal::try_from(n).ok())
                .unwrap_or(Signal::SIGTERM);
            let group = Pid::from_raw(proc.pid as i32);
            let _ = killpg(group, signal);
            let deadline = Instant::now() + config.stop_grace;
            while proc.check() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(25));
            }
            if proc.check() {
                tracing::warn!(%service, pid = proc.pid, "still running after the grace period; SIGKILL");
                let _ = killpg(group, Signal::SIGKILL);
                let deadline = Instant::now() + Duration::from_secs(5);
                while proc.check() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        }
        let _ = std::fs::remove_file(&pid_file);
        tracing::info!(%service, pid = proc.pid, "service stopped");
        Ok(())
    }

    fn status(&self, service: &str, _config: &ServiceConfig) -> RunStatus {
        let mut procs = self.procs();
        match procs.get_mut(service) {
            Some(p) => RunStatus {
                running: p.check(),
                pid: Some(p.pid),
                restarts: p.restarts,
                last_exit: p.last_exit.clone(),
            },
            None => RunStatus::default(),
        }
    }

    fn adopt(&self, service: &str, release: &Path, config: &ServiceConfig) -> bool {
        let Some((pid, start_time)) = read_pid_file(&self.pid_path(service)) else {
            return false;
        };
        if !alive(pid, start_time) {
            return false;
        }
        tracing::info!(%service, pid, "adopted running service");
        self.procs().insert(
            service.to_string(),
            Proc::new(pid, start_time, None, release, config),
        );
        true
    }

    fn supervise(&self) {
        let names: Vec<String> = self.procs().keys().cloned().collect();
        for name in names {
            self.rotate(&name);
            let respawn = {
                let mut procs = self.procs();
                let Some(p) = procs.get_mut(&name) else {
                    continue;
                };
                if p.check() {
                    continue;
                }
                let now = Instant::now();
                match p.restart_at {
                    None => {
                        if p.started.elapsed() > Duration::from_secs(10) {
                            p.backoff = Duration::from_millis(500);
                        }
                        tracing::warn!(service = %name, exit = p.last_exit.as_deref().unwrap_or("gone"), retry_in = ?p.backoff, "service ended; restarting");
                        p.restart_at = Some(now + p.backoff);
                        p.backoff = (p.backoff * 2).min(Duration::from_secs(30));
                        None
                    }
                    Some(at) if at <= now => Some((p.release.clone(), p.config.clone())),
                    Some(_) => None,
                }
            };
            if let Some((release, config)) = respawn {
                match self.spawn(&name, &release, &config) {
                    Ok((child, start_time)) => {
                        let mut procs = self.procs();
                        if let Some(p) = procs.get_mut(&name) {
                            p.pid = child.id();
                            p.start_time = start_time;
                            p.child = Some(child);
                            p.restarts += 1;
                            p.started = Instant::now();
                            p.restart_at = None;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(service = %name, error = %e, "restart failed");
                        if let Some(p) = self.procs().get_mut(&name) {
                            p.restart_at = None;
                            p.last_exit = Some(e.to_string());
                        }
                    }
                }
            }
        }
    }

    fn log_tail(&self, service: &str, _config: &ServiceConfig, lines: usize) -> Vec<String> {
        tail(&self.log_path(service), lines)
    }
}

fn read_pid_file(path: &Path) -> Option<(u32, u64)> {
    let text = std::fs::read_to_string(path).ok()?;
    let mut it = text.split_whitespace();
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

/// The last `lines` lines of a file (reading at most its last 64 KiB).
pub fn tail(path: &Path, lines: usize) -> Vec<String> {
    let Ok(mut f) = std::fs::File::open(path) else {
        return Vec::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(std::io::SeekFrom::Start(len.saturating_sub(64 * 1024)));
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(command: &str, args: &[&str]) -> ServiceConfig {
        let mut f = cutover_core::fleet::FleetConfig::parse(
            "f",
            "[services.s]\nhosts=[\"h\"]\nrunner=\"process\"\ncommand=\"x\"\nstop_grace=\"1s\"\n",
        )
        .unwrap();
        let mut c = f.services.remove("s").unwrap();
        c.command = Some(command.into());
        c.args = args.iter().map(|s| s.to_string()).collect();
        c
    }

    #[test]
    fn starts_logs_stops_and_escalates_to_sigkill() {
        let dir = tempfile::tempdir().unwrap();
        let r = ProcessRunner::new(dir.path(), 1 << 20, 2);
        // Ignores SIGTERM: only SIGKILL after the grace period ends it.
        let c = config(
            "/bin/sh",
            &[
                "-c",
                "trap '' TERM; echo hello; while true; do sleep 0.05; done",
            ],
        );
        r.start("s", dir.path(), &c).unwrap();
        let st = r.status("s", &c);
        assert!(st.running && st.pid.is_some());
        let t = Instant::now();
        while r.log_tail("s", &c, 5).is_empty() && t.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(r.log_tail("s", &c, 5), ["hello"]);
        let t = Instant::now();
        r.stop("s", &c).unwrap();
        assert!(
            t.elapsed() >= Duration::from_secs(1),
            "waited for the grace period"
        );
        assert!(!alive(
            st.pid.unwrap(),
            proc_start_time(st.pid.unwrap()).unwrap_or(1)
        ));
        assert!(!r.status("s", &c).running);
    }

    #[test]
    fn restarts_a_crashed_service_and_counts_it() {
        let dir = tempfile::tempdir().unwrap();
        let r = ProcessRunner::new(dir.path(), 1 << 20, 2);
        let c = config("/bin/sh", &["-c", "sleep 0.1; exit 3"]);
        r.start("s", dir.path(), &c).unwrap();
        let t = Instant::now();
        while r.status("s", &c).restarts == 0 && t.elapsed() < Duration::from_secs(10) {
            r.supervise();
            std::thread::sleep(Duration::from_millis(50));
        }
        let st = r.status("s", &c);
        assert!(st.restarts >= 1, "{st:?}");
        r.stop("s", &c).unwrap();
    }

    #[test]
    fn a_new_runner_adopts_a_running_service_by_pid_file() {
        let dir = tempfile::tempdir().unwrap();
        let c = config("/bin/sh", &["-c", "sleep 30"]);
        let first = ProcessRunner::new(dir.path(), 1 << 20, 2);
        first.start("s", dir.path(), &c).unwrap();
        let pid = first.status("s", &c).pid;
        let second = ProcessRunner::new(dir.path(), 1 << 20, 2);
        assert!(second.adopt("s", dir.path(), &c));
        assert_eq!(second.status("s", &c).pid, pid);
        second.stop("s", &c).unwrap();
        assert!(!first.status("s", &c).running);
    }
}
