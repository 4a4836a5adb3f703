//! Runners start, stop and watch a service's processes: the [`Runner`]
//! trait, and which runner a native service's config asks for. The
//! `process` runner (`process.rs`) supervises the service itself; the
//! `systemd` runner (`systemd.rs`) drives `systemctl` for a named unit.
//! Runners are synchronous and may block; the tarball backend calls them
//! on a blocking thread.

use std::path::Path;
use std::sync::Arc;

use cutover_core::fleet::{RunnerKind, ServiceConfig};

use crate::error::Result;

pub mod process;
pub mod systemd;

pub use process::{tail, ProcessRunner};
pub use systemd::SystemdRunner;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunStatus {
    pub running: bool,
    pub pid: Option<u32>,
    pub restarts: u32,
    /// How the last run ended, when it ended by itself.
    pub last_exit: Option<String>,
}

/// Every way the agent starts and stops services goes through this trait.
pub trait Runner: Send + Sync {
    /// Starts the service from `release`.
    fn start(&self, service: &str, release: &Path, config: &ServiceConfig) -> Result<()>;
    /// Stops the service; blocks up to its grace period plus a little.
    fn stop(&self, service: &str, config: &ServiceConfig) -> Result<()>;
    fn status(&self, service: &str, config: &ServiceConfig) -> RunStatus;
    /// Takes over a service a previous agent process started; false when
    /// it no longer runs.
    fn adopt(&self, service: &str, release: &Path, config: &ServiceConfig) -> bool;
    /// Periodic upkeep: restart what crashed, rotate logs.
    fn supervise(&self) {}
    /// The last lines the service wrote.
    fn log_tail(&self, service: &str, config: &ServiceConfig, lines: usize) -> Vec<String>;
}

/// The runners of a host's native services. Container services are run
/// by the Docker engine (the container backend), never by these.
pub struct Runners {
    pub process: Arc<dyn Runner>,
    pub systemd: Arc<dyn Runner>,
}

impl Runners {
    /// The runner a native service's config asks for; `None` for a
    /// container service.
    pub fn for_config(&self, config: &ServiceConfig) -> Option<&Arc<dyn Runner>> {
        match config.runner {
            RunnerKind::Process => Some(&self.process),
            RunnerKind::Systemd => Some(&self.systemd),
            RunnerKind::Docker => None,
        }
    }
}

/// How a process ended, in words.
pub(crate) fn describe(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exited with code {c}"),
        (_, Some(s)) => format!("killed by signal {s}"),
        _ => "ended".into(),
    }
}
