//! The [`Installer`] facade: it carries out `Install` and `Rollback`
//! commands (`submit`, `execute`, `finish`), answers for what runs
//! (`inventory`, `last_reports`, `logs`), runs every backend's `upkeep`
//! and, between commands, a round of health probes (`probe_health`).
//! Each service has one journal ([`journal`]) written before every side
//! effect; commands for one service run one at a time ([`commands`]), and
//! a command whose id already has a report is answered from the journal,
//! not done again. The lifecycle (`lifecycle.rs`) is written once over
//! the [`Backend`] trait, with a tarball and a container backend
//! ([`backend`]); recovery after a crash is `recovery.rs`. Side effects go
//! through the backend and [`Prober`] (which `checks.rs` and `probing.rs`
//! are handed), so the sequencing is tested against fakes.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cutover_core::rollout::{Command, Evidence, Report};
use cutover_core::views::{now_ms, InstalledService, ServiceLog};
use tokio::sync::mpsc;

use crate::link::Link;
use crate::services::health::watch::Watch;
use crate::services::health::Prober;
use commands::Commands;
use journal::Journal;

pub mod backend;
mod checks;
pub mod commands;
pub mod extract;
pub mod fetch;
pub mod journal;
mod lifecycle;
pub mod pipeline;
mod probing;
mod recovery;
pub mod releases;
mod stage;
mod staging;
#[cfg(test)]
mod tests;

pub use backend::{Backend, Backends};
pub use lifecycle::Outcome;
pub use releases::Releases;

/// What an installer is made of.
pub struct Parts {
    /// `releases/` under the data directory, shared with the backends.
    pub releases: Arc<Releases>,
    pub backends: Backends,
    pub prober: Box<dyn Prober>,
    /// When the controller was last reachable.
    pub link: Arc<Link>,
    /// How long the controller may be gone before a failing install is
    /// rolled back on the agent's own authority.
    pub autonomous_rollback_after: Duration,
    /// `${name}` values for service configs, `host` included.
    pub vars: BTreeMap<String, String>,
}

pub struct Installer {
    pub data_dir: PathBuf,
    backends: Backends,
    prober: Box<dyn Prober>,
    link: Arc<Link>,
    autonomous_rollback_after: Duration,
    vars: BTreeMap<String, String>,
    /// Who may touch which service when.
    pub commands: Commands,
    pub releases: Arc<Releases>,
    outbox: mpsc::UnboundedSender<Report>,
    /// Each service's health as last probed, and changes to report.
    pub health: Watch,
}

/// Reports waiting for a session to carry them.
pub type Outbox = mpsc::UnboundedReceiver<Report>;

impl Installer {
    pub fn new(parts: Parts) -> (Arc<Installer>, Outbox) {
        let (outbox, rx) = mpsc::unbounded_channel();
        let i = Installer {
            data_dir: parts.releases.data_dir().to_path_buf(),
            backends: parts.backends,
            prober: parts.prober,
            link: parts.link,
            autonomous_rollback_after: parts.autonomous_rollback_after,
            vars: parts.vars,
            commands: Commands::default(),
            releases: parts.releases,
            outbox,
            health: Watch::default(),
        };
        (Arc::new(i), rx)
    }

    /// The service's journal, or a fresh one if it has none. One that
    /// cannot be read is an error, never a fresh start: writing a new one
    /// would lose what it knew.
    fn journal(&self, service: &str) -> Result<Journal, journal::Unreadable> {
        Ok(Journal::load(&self.data_dir, service)?.unwrap_or_else(|| Journal::new(service)))
    }

    /// Every service on disk; a `services/` that cannot be listed is
    /// logged and reads as nothing (callers that delete do not use this).
    fn scan(&self) -> journal::Scan {
        Journal::scan(&self.data_dir).unwrap_or_else(|e| {
            tracing::error!(error = %e, "cannot list the services");
            journal::Scan::default()
        })
    }

    fn save(&self, j: &Journal) -> Result<(), Evidence> {
        j.save(&self.data_dir)
            .map_err(|e| Evidence::new("journal", format!("cannot write the journal: {e}")))
    }

    /// What every service runs, for hello and diagnostics.
    pub async fn inventory(&self) -> Vec<InstalledService> {
        let scan = self.scan();
        let journals = scan.journals;
        let busy = self.commands.busy();
        let mut out = Vec::with_capacity(journals.len());
        for j in &journals {
            let state = if let Some(b) = busy.get(&j.service) {
                b.to_string()
            } else if j.failed_since_ms.is_some() {
                "failed".into()
            } else {
                match &j.current {
                    Some(slot)
                        if self
                            .backends
                            .for_slot(slot)
                            .status(&j.service, slot)
                            .await
                            .running =>
                    {
                        "running".into()
                    }
                    Some(_) => "not running".into(),
                    None => "not installed".into(),
                }
            };
            let mut installed = j.installed(&state);
            installed.health = self.health.get(&j.service);
            out.push(installed);
        }
        out.extend(scan.unreadable.iter().map(journal::Unreadable::installed));
        out.extend(scan.orphans.iter().map(journal::Orphan::installed));
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// The last report of every service, sent again on each new session so
    /// a controller that missed one (or restarted) hears it.
    pub fn last_reports(&self) -> Vec<Report> {
        self.scan()
            .journals
            .into_iter()
            .filter_map(|j| j.last_report)
            .collect()
    }

    /// Per service: restarts, pid and the tail of its log, for `cutover diag`.
    pub async fn logs(&self, lines: usize) -> Vec<ServiceLog> {
        let scan = self.scan();
        let mut out = Vec::new();
        // What cannot be read is said first, in the words of the fix.
        out.extend(scan.unreadable.iter().map(journal::Unreadable::log));
        out.extend(scan.orphans.iter().map(journal::Orphan::log));
        for j in scan.journals {
            let Some(slot) = j.current else { continue };
            let backend = self.backends.for_slot(&slot);
            out.push(backend.log(&j.service, &slot, lines).await);
        }
        out
    }

    /// Supervision between commands: every backend's upkeep.
    pub async fn upkeep(&self) {
        self.backends.upkeep().await;
    }

    /// Probes every installed service once; returns how many changed.
    /// Skipped: a service with a command queued, in flight or waiting, a
    /// failed install or an unfinished operation. Its lock is held for the
    /// round, so a probe never races a command.
    pub async fn probe_health(&self) -> usize {
        let mut changed = 0;
        for listed in self.scan().journals {
            let service = listed.service.clone();
            if self.commands.commanded(&service) {
                continue;
            }
            // Held for the round, so no command for the service starts
            // while its checks run; one that holds it is in flight.
            let lock = self.commands.lock(&service);
            let Ok(_held) = lock.try_lock() else {
                continue;
            };
            // Read again under the lock: a command may have finished since.
            let Ok(j) = self.journal(&service) else {
                continue;
            };
            let Some(slot) = j.current.clone() else {
                continue;
            };
            if j.op.is_some() || j.failed_since_ms.is_some() || self.commands.commanded(&service) {
                continue;
            }
            let backend = self.backends.for_slot(&slot);
            let found = probing::probe(backend, self.prober.as_ref(), &service, &slot).await;
            let state = if found.running {
                "running"
            } else {
                "not running"
            };
            if self
                .health
                .observe(j.installed(state), &found.outcome, now_ms())
            {
                let h = self.health.get(&service);
                tracing::info!(%service, health = h.state.as_str(), evidence = %h.evidence, restarts = h.restarts, "health changed");
                changed += 1;
            }
        }
        changed
    }

    /// Queues a command behind the service's earlier ones, so commands for
    /// one service run in the order they arrived. A rollback also cuts short
    /// the health checks of an install still in progress.
    pub fn submit(self: &Arc<Self>, cmd: Command) {
        if matches!(cmd, Command::Rollback(_)) {
            self.commands.set_rollback_waiting(cmd.service(), true);
        }
        self.commands.enqueue(cmd, || {
            let (tx, mut rx) = mpsc::unbounded_channel::<Command>();
            let me = self.clone();
            tokio::spawn(async move {
                while let Some(cmd) = rx.recv().await {
                    let service = cmd.service().to_string();
                    me.execute(cmd).await;
                    me.commands.count_queued(&service, false);
                }
            });
            tx
        });
    }

    /// Runs one command and queues its report.
    pub async fn execute(self: &Arc<Self>, cmd: Command) {
        let service = cmd.service().to_string();
        if matches!(cmd, Command::Rollback(_)) {
            self.commands.set_rollback_waiting(&service, false);
        }
        let lock = self.commands.lock(&service);
        let _held = lock.lock().await;
        let mut j = match self.journal(&service) {
            Ok(j) => j,
            Err(u) => {
                // Nothing is touched, nothing written: the report says
                // which file is broken and what to do.
                tracing::error!(%service, command = %cmd.id(), error = %u.message(), "command refused");
                let _ = self.outbox.send(u.refusal(cmd.id()));
                return;
            }
        };
        if let Some(r) = j.last_report.as_ref().filter(|r| r.command_id == cmd.id()) {
            tracing::info!(%service, command = %cmd.id(), "command already done; reporting again");
            let _ = self.outbox.send(r.clone());
            return;
        }
        tracing::info!(%service, command = %cmd.id(), "command received");
        let started = Instant::now();
        let outcome = match &cmd {
            Command::Install(c) => self.install(&mut j, c, started).await,
            Command::Rollback(c) => self.rollback(&mut j, c, started).await,
        };
        self.finish(&mut j, cmd.id(), outcome, started);
    }

    /// Ends a command: journals its report and queues it.
    fn finish(&self, j: &mut Journal, command_id: &str, outcome: Outcome, started: Instant) {
        let Outcome {
            healthy: ok,
            evidence,
            fetched,
            restarted,
        } = outcome;
        j.op = None;
        let state = if ok {
            "running"
        } else if j.failed_since_ms.is_some() {
            "failed"
        } else {
            "running"
        };
        let duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        // The verdict came after the whole step, fetch and unpack
        // included, not after the stage that said no.
        let evidence = evidence.map(|e| Evidence {
            elapsed_ms: duration_ms,
            ..e
        });
        // A command's own checks are the latest word on its health.
        let mut installed = j.installed(state);
        installed.health = probing::after_command(ok, now_ms());
        self.health.set(&j.service, installed.health.clone());
        let report = Report {
            command_id: command_id.to_string(),
            service: j.service.clone(),
            ok,
            evidence,
            installed,
            auto_rolled_back: false,
            fetched_bytes: fetched,
            restarted,
            duration_ms,
        };
        match &report.evidence {
            None => {
                tracing::info!(service = %j.service, command = %command_id, "command succeeded")
            }
            Some(e) => {
                tracing::warn!(service = %j.service, command = %command_id, gate = %e.gate, detail = %e.detail, "command failed")
            }
        }
        j.last_report = Some(report.clone());
        if let Err(e) = self.save(j) {
            tracing::error!(service = %j.service, error = %e.detail, "could not record the report");
        }
        self.commands.set_busy(&j.service, None);
        self.releases.collect_garbage();
        let _ = self.outbox.send(report);
    }
}
