//! One data-migrate command of a service binary: found from the service's
//! journal (its current release directory, `command` and environment), run
//! with a deadline and bounded output, or started as a `run` that outlives
//! the agent (own process group, output to files).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use cutover_core::data_migration::MAX_OUTPUT_BYTES;
use cutover_core::fleet::RunnerKind;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::io::AsyncReadExt;

use crate::install::journal::{self, Journal};

/// How much of stderr is kept for the reason of a failure.
const STDERR_TAIL: usize = 4096;

/// A service's binary as its data migrations run it.
#[derive(Debug, Clone)]
pub struct Program {
    pub service: String,
    pub program: PathBuf,
    pub cwd: PathBuf,
    pub release: PathBuf,
    pub env: BTreeMap<String, String>,
}

impl Program {
    /// The binary of the release `service` runs now, or why there is none.
    pub fn locate(
        data_dir: &Path,
        service: &str,
        vars: &BTreeMap<String, String>,
    ) -> Result<Program, String> {
        let j = match Journal::load(data_dir, service) {
            Ok(Some(j)) => j,
            Ok(None) => return Err(format!("service {service} is not installed on this host")),
            Err(u) => return Err(u.message()),
        };
        let Some(slot) = j.current else {
            return Err(format!(
                "service {service} has no current release on this host"
            ));
        };
        let config = slot.config.with_vars(vars).unwrap_or(slot.config);
        if config.runner == RunnerKind::Docker {
            return Err(format!(
                "service {service} runs in a container, and cutover does not run data migrations of container services yet"
            ));
        }
        let Some(command) = config.command.as_deref().filter(|c| !c.is_empty()) else {
            return Err(format!(
                "service {service} has no `command` in the fleet config, so there is no binary to run its data migrations with: set command"
            ));
        };
        let release = journal::release_dir(data_dir, &slot.sha256);
        let program = if command.starts_with('/') {
            PathBuf::from(command)
        } else {
            release.join(command)
        };
        let cwd = match &config.working_dir {
            Some(d) => release.join(d),
            None => release.clone(),
        };
        Ok(Program {
            service: service.to_string(),
            program,
            cwd,
            release,
            env: config.env,
        })
    }

    fn command(&self, id: &str, args: &[&str]) -> tokio::process::Command {
        let mut c = tokio::process::Command::new(&self.program);
        c.arg("data-migrate")
            .args(args)
            .envs(&self.env)
            .env("CUTOVER_SERVICE", &self.service)
            .env("CUTOVER_RELEASE_DIR", &self.release)
            .env("CUTOVER_DATA_MIGRATION", id)
            .current_dir(&self.cwd)
            .stdin(Stdio::null())
            .process_group(0);
        c
    }

    /// `PROGRAM data-migrate ARGS`: its stdout when it exits 0 within
    /// `timeout`, otherwise why not (its group is killed on timeout).
    pub async fn output(
        &self,
        id: &str,
        args: &[&str],
        timeout: Duration,
    ) -> Result<Vec<u8>, String> {
        let shown = format!(
            "`{} data-migrate {}`",
            self.program.display(),
            args.join(" ")
        );
        let mut child = self
            .command(id, args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot start {shown}: {e}"))?;
        let pid = child.id();
        let (mut out, mut err) = (child.stdout.take(), child.stderr.take());
        let read = async {
            let mut stdout = Vec::new();
            let mut stderr = Vec::new();
            let o = async {
                if let Some(o) = out.as_mut() {
                    let _ = o
                        .take(MAX_OUTPUT_BYTES as u64 + 1)
                        .read_to_end(&mut stdout)
                        .await;
                }
            };
            let e = async {
                if let Some(e) = err.as_mut() {
                    let _ = e.take(1 << 20).read_to_end(&mut stderr).await;
                }
            };
            tokio::join!(o, e);
            // Whatever it prints beyond the bound is not read: close the
            // pipes so it cannot block on them.
            drop(out.take());
            drop(err.take());
            let status = child.wait().await;
            (status, stdout, stderr)
        };
        let (status, stdout, stderr) = match tokio::time::timeout(timeout, read).await {
            Ok(r) => r,
            Err(_) => {
                if let Some(pid) = pid {
                    let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
                }
                return Err(format!(
                    "{shown} did not answer within {}; it was killed",
                    cutover_core::fleet::show_duration(timeout)
                ));
            }
        };
        let status = status.map_err(|e| format!("{shown}: {e}"))?;
        if !status.success() {
            let code = status
                .code()
                .map(|c| format!("exit status {c}"))
                .unwrap_or_else(|| "a signal".into());
            return Err(format!(
                "{shown} ended with {code} (does the binary implement the data-migrate protocol?){}",
                last_line(&stderr)
            ));
        }
        Ok(stdout)
    }

    /// Starts `PROGRAM data-migrate run ID` in a process group of its own,
    /// so it outlives the agent; its stdout and stderr go to `out` and
    /// `err` (truncated first).
    pub fn start_run(
        &self,
        id: &str,
        out: &Path,
        err: &Path,
    ) -> Result<tokio::process::Child, String> {
        let file = |p: &Path| {
            std::fs::File::create(p).map_err(|e| format!("cannot create {}: {e}", p.display()))
        };
        self.command(id, &["run", id])
            .stdout(file(out)?)
            .stderr(file(err)?)
            .spawn()
            .map_err(|e| {
                format!(
                    "cannot start `{} data-migrate run {id}`: {e}",
                    self.program.display()
                )
            })
    }
}

/// `: LAST LINE` of what a command printed on stderr, or nothing.
pub fn last_line(stderr: &[u8]) -> String {
    let tail = &stderr[stderr.len().saturating_sub(STDERR_TAIL)..];
    String::from_utf8_lossy(tail)
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .map(|l| format!(": {}", cutover_core::text::shown(l.trim(), 300)))
        .unwrap_or_default()
}

/// At most `max` bytes of a file (what `run` printed), or why not.
pub fn read_file(path: &Path, max: usize) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let f =
        std::fs::File::open(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut bytes = Vec::new();
    f.take(max as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    Ok(bytes)
}
