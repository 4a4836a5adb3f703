//! Carries out `Install` and `Rollback` commands and recovers after a
//! crash. Each service has one journal ([`crate::install::journal`]) written before
//! every side effect; commands for one service run one at a time, and a
//! command whose id already has a report is answered from the journal, not
//! done again. Side effects go through [`Runner`], [`Prober`] and
//! [`Source`], so the sequencing is tested against fakes.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cutover_core::rollout::{Command, Evidence, InstallCommand, Report, RollbackCommand};
use cutover_core::views::{now_ms, InstalledService};
use tokio::sync::mpsc;

use crate::install::extract::Limits;
use crate::install::fetch::Source;
use crate::services::health::Prober;
use crate::services::runner::{RunStatus, Runners};
use journal::{Journal, Op, Slot, Stage};

mod checks;
mod containers;
pub mod extract;
pub mod fetch;
pub mod journal;
pub mod pipeline;
mod probing;
mod recovery;
mod staging;
#[cfg(test)]
mod tests;

pub use crate::link::Link;

pub struct Installer {
    pub data_dir: PathBuf,
    pub limits: Limits,
    pub runners: Runners,
    pub prober: Box<dyn Prober>,
    pub source: Box<dyn Source>,
    pub link: Arc<Link>,
    pub autonomous_rollback_after: Duration,
    /// `${name}` values for service configs, `host` included.
    pub vars: std::collections::BTreeMap<String, String>,
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    busy: Mutex<HashMap<String, &'static str>>,
    queues: Mutex<HashMap<String, mpsc::UnboundedSender<Command>>>,
    /// Commands per service submitted and not yet done: health probes
    /// leave such a service alone.
    queued: Mutex<HashMap<String, usize>>,
    docker: tokio::sync::Mutex<Option<Arc<crate::services::docker::Engine>>>,
    /// Services with a rollback waiting: their health checks stop early.
    rollback_waiting: Mutex<std::collections::HashSet<String>>,
    /// One lock per release digest, held while `releases/<sha256>/` is
    /// made: one installer creates it, the others wait and then use it,
    /// and garbage collection never removes one that is being made.
    digests: Mutex<HashMap<cutover_core::Sha256Digest, Arc<tokio::sync::Mutex<()>>>>,
    /// Staging directories of installs running in this process: garbage
    /// collection removes every other one.
    staging: staging::Live,
    /// `releases/` entries named like a release that are not a directory:
    /// each is warned about once per run and never removed.
    not_releases: Mutex<std::collections::HashSet<PathBuf>>,
    outbox: mpsc::UnboundedSender<Report>,
    /// Each service's health as last probed, and changes to report.
    pub health: crate::services::health::watch::Watch,
}

/// Reports waiting for a session to carry them.
pub type Outbox = mpsc::UnboundedReceiver<Report>;

/// What one install or rollback did: what its report says.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Outcome {
    /// The release it ended on passed its checks.
    pub healthy: bool,
    /// Why not, when it did not.
    pub evidence: Option<Evidence>,
    /// Artifact bytes transferred.
    pub fetched: u64,
    /// Whether a service was stopped or started.
    pub restarted: bool,
}

impl Outcome {
    fn healthy(fetched: u64, restarted: bool) -> Outcome {
        Outcome {
            healthy: true,
            evidence: None,
            fetched,
            restarted,
        }
    }

    fn failed(evidence: Evidence, fetched: u64, restarted: bool) -> Outcome {
        Outcome {
            healthy: false,
            evidence: Some(evidence),
            fetched,
            restarted,
        }
    }
}

impl Installer {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        data_dir: PathBuf,
        limits: Limits,
        runners: Runners,
        prober: Box<dyn Prober>,
        source: Box<dyn Source>,
        link: Arc<Link>,
        autonomous_rollback_after: Duration,
        vars: std::collections::BTreeMap<String, String>,
    ) -> (Arc<Installer>, Outbox) {
        let (outbox, rx) = mpsc::unbounded_channel();
        let i = Installer {
            data_dir,
            limits,
            runners,
            prober,
            source,
            link,
            autonomous_rollback_after,
            vars,
            locks: Mutex::new(HashMap::new()),
            busy: Mutex::new(HashMap::new()),
            queues: Mutex::new(HashMap::new()),
            queued: Mutex::default(),
            docker: tokio::sync::Mutex::new(None),
            rollback_waiting: Mutex::new(Default::default()),
            digests: Mutex::new(HashMap::new()),
            staging: staging::Live::default(),
            not_releases: Mutex::default(),
            outbox,
            health: Default::default(),
        };
        (Arc::new(i), rx)
    }

    fn lock(&self, service: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.locks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(service.to_string())
            .or_default()
            .clone()
    }

    fn set_busy(&self, service: &str, what: Option<&'static str>) {
        let mut busy = self.busy.lock().unwrap_or_else(|p| p.into_inner());
        match what {
            Some(w) => busy.insert(service.to_string(), w),
            None => busy.remove(service),
        };
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

    async fn status(&self, slot: &Slot, service: &str) -> RunStatus {
        if containers::is_container(slot) {
            return self.container_status(slot, service).await;
        }
        self.runners
            .for_config(&slot.config)
            .status(service, &slot.config)
    }

    /// Where a release's files are (and exec checks run): its unpacked
    /// directory, or the data directory for a container.
    fn release_dir(&self, slot: &Slot) -> std::path::PathBuf {
        if containers::is_container(slot) {
            self.data_dir.clone()
        } else {
            journal::release_dir(&self.data_dir, &slot.sha256)
        }
    }

    /// What every service runs, for hello and diagnostics.
    pub async fn inventory(&self) -> Vec<InstalledService> {
        let scan = self.scan();
        let journals = scan.journals;
        let busy = self.busy.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let mut out = Vec::with_capacity(journals.len());
        for j in &journals {
            let state = if let Some(b) = busy.get(&j.service) {
                b.to_string()
            } else if j.failed_since_ms.is_some() {
                "failed".into()
            } else {
                match &j.current {
                    Some(slot) if self.status(slot, &j.service).await.running => "running".into(),
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
    pub async fn logs(&self, lines: usize) -> Vec<cutover_core::views::ServiceLog> {
        let scan = self.scan();
        let mut out = Vec::new();
        // What cannot be read is said first, in the words of the fix.
        out.extend(scan.unreadable.iter().map(journal::Unreadable::log));
        out.extend(scan.orphans.iter().map(journal::Orphan::log));
        for j in scan.journals {
            let Some(slot) = j.current else { continue };
            if containers::is_container(&slot) {
                out.push(self.container_log(&slot, &j.service, lines).await);
                continue;
            }
            let runner = self.runners.for_config(&slot.config);
            let st = runner.status(&j.service, &slot.config);
            out.push(cutover_core::views::ServiceLog {
                service: j.service.clone(),
                pid: st.pid,
                restarts: st.restarts,
                last_exit: st.last_exit,
                lines: runner.log_tail(&j.service, &slot.config, lines),
                detail: None,
            });
        }
        out
    }

    fn rollback_waiting(&self, service: &str) -> bool {
        self.rollback_waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(service)
    }

    /// Queues a command behind the service's earlier ones, so commands for
    /// one service run in the order they arrived. A rollback also cuts short
    /// the health checks of an install still in progress.
    pub fn submit(self: &Arc<Self>, cmd: Command) {
        let service = cmd.service().to_string();
        if matches!(cmd, Command::Rollback(_)) {
            self.rollback_waiting
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(service.clone());
        }
        let mut queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        let queue = queues.entry(service).or_insert_with(|| {
            let (tx, mut rx) = mpsc::unbounded_channel::<Command>();
            let me = self.clone();
            tokio::spawn(async move {
                while let Some(cmd) = rx.recv().await {
                    let service = cmd.service().to_string();
                    me.execute(cmd).await;
                    me.count_queued(&service, false);
                }
            });
            tx
        });
        self.count_queued(cmd.service(), true);
        let _ = queue.send(cmd);
    }

    /// Runs one command and queues its report.
    pub async fn execute(self: &Arc<Self>, cmd: Command) {
        let service = cmd.service().to_string();
        if matches!(cmd, Command::Rollback(_)) {
            self.rollback_waiting
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&service);
        }
        let lock = self.lock(&service);
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
        self.set_busy(&j.service, None);
        self.collect_garbage();
        let _ = self.outbox.send(report);
    }

    async fn install(&self, j: &mut Journal, c: &InstallCommand, started: Instant) -> Outcome {
        let service = c.service.as_str();
        // What identifies the install: the image for a container, else the tarball.
        let key = c.image.as_ref().map(|i| i.id).unwrap_or(c.sha256);
        if j.current.as_ref().is_some_and(|s| s.sha256 == key) && j.failed_since_ms.is_none() {
            // Already installed: not fetched, not restarted.
            if let Some(slot) = j.current.clone() {
                if !self.status(&slot, service).await.running {
                    if let Err(e) = self.ensure_running(service, &slot).await {
                        return Outcome::failed(e, 0, true);
                    }
                    return Outcome::healthy(0, true);
                }
            }
            return Outcome::healthy(0, false);
        }
        let config = match c.config.with_vars(&self.vars) {
            Ok(c) => c,
            Err(e) => {
                return Outcome::failed(
                    Evidence::new("config", format!("service {service}: {e}")),
                    0,
                    false,
                )
            }
        };
        self.adopt_unjournalled(j, &config);
        self.set_busy(service, Some("installing"));
        j.failed_since_ms = None;
        j.op = Some(Op::Install {
            command: Box::new(c.clone()),
            stage: Stage::Preparing,
        });
        if let Err(e) = self.save(j) {
            return Outcome::failed(e, 0, false);
        }
        let prepared = if config.runner == cutover_core::fleet::RunnerKind::Docker {
            self.prepare_image(c).await
        } else {
            self.prepare(c).await
        };
        let fetched = match prepared {
            Ok(n) => n,
            Err(e) => return Outcome::failed(e, 0, false),
        };
        let new = Slot {
            identity: c.target.clone(),
            sha256: key,
            config,
        };
        if let Err(e) = self
            .swap_to(
                j,
                new,
                Op::Install {
                    command: Box::new(c.clone()),
                    stage: Stage::Swapping,
                },
                false,
            )
            .await
        {
            return Outcome::failed(e, fetched, true);
        }
        j.op = Some(Op::Install {
            command: Box::new(c.clone()),
            stage: Stage::Checking,
        });
        if let Err(e) = self.save(j) {
            return Outcome::failed(e, fetched, true);
        }
        self.set_busy(service, Some("checking"));
        match self.check_health(j, started, false).await {
            Ok(()) => Outcome::healthy(fetched, true),
            Err(e) => {
                j.failed_since_ms = Some(now_ms());
                Outcome::failed(e, fetched, true)
            }
        }
    }

    /// Stops what runs, flips `current` to `new` and starts it. The journal
    /// says `Swapping` before anything stops.
    async fn swap_to(
        &self,
        j: &mut Journal,
        new: Slot,
        op: Op,
        back: bool,
    ) -> Result<(), Evidence> {
        let service = j.service.clone();
        j.op = Some(op);
        self.save(j)?;
        if containers::is_container(&new) {
            self.swap_container(&service, &new, back).await?;
            let old = j.current.replace(new.clone());
            if old.as_ref().map(|o| o.sha256) != Some(new.sha256) {
                j.previous = old;
            }
            return self.save(j);
        }
        if j.current.is_none() && journal::read_current(&self.data_dir, &service).is_some() {
            // A `current` link the journal does not know: what ran before
            // the journal was lost. Its process (found by its pid file)
            // goes first, or the new one could not take its port.
            let runner = self.runners.for_config(&new.config);
            let s = service.clone();
            let result = tokio::task::block_in_place(|| runner.stop(&s, &new.config));
            if let Err(e) = result {
                tracing::warn!(%service, error = %e, "stopping what ran without a journal failed; swapping anyway");
            }
        }
        if let Some(old) = j.current.clone() {
            let runner_old = self.runners.for_config(&old.config);
            let s = service.clone();
            // Stopping blocks up to the grace period.
            let result = tokio::task::block_in_place(|| runner_old.stop(&s, &old.config));
            if let Err(e) = result {
                tracing::warn!(%service, error = %e, "stopping the old release failed; swapping anyway");
            }
        }
        journal::switch_current(&self.data_dir, &service, &new.sha256)
            .map_err(|e| Evidence::new("swap", e.to_string()))?;
        let old = j.current.replace(new.clone());
        if old.as_ref().map(|o| o.sha256) != Some(new.sha256) {
            j.previous = old;
        }
        self.save(j)?;
        let dir = journal::release_dir(&self.data_dir, &new.sha256);
        self.runners
            .for_config(&new.config)
            .start(&service, &dir, &new.config)
            .map_err(|e| Evidence::new("start", e.to_string()))
    }

    /// Starts the current release if it does not run (or, for a container,
    /// brings the engine to exactly one running container of it).
    async fn ensure_running(&self, service: &str, slot: &Slot) -> Result<(), Evidence> {
        if containers::is_container(slot) {
            let engine = self.engine().await?;
            return engine
                .recover(service, &slot.config, &slot.sha256)
                .await
                .map_err(|e| Evidence::new("start", e));
        }
        let runner = self.runners.for_config(&slot.config);
        let dir = self.release_dir(slot);
        if runner.adopt(service, &dir, &slot.config) {
            return Ok(());
        }
        // Whatever still runs from before (a half-done swap) goes first.
        let _ = runner.stop(service, &slot.config);
        runner
            .start(service, &dir, &slot.config)
            .map_err(|e| Evidence::new("start", e.to_string()))
    }

    async fn rollback(&self, j: &mut Journal, c: &RollbackCommand, started: Instant) -> Outcome {
        if j.current.as_ref().map(|s| s.sha256) != Some(c.from) {
            // Never moved to `from` (or already went back): nothing to do.
            j.failed_since_ms = None;
            return Outcome::healthy(0, false);
        }
        let Some(previous) = j.previous.clone() else {
            return Outcome::failed(
                Evidence::new("rollback", "no previous release on this host to go back to"),
                0,
                false,
            );
        };
        self.set_busy(&c.service, Some("rolling back"));
        if let Err(e) = self
            .swap_to(
                j,
                previous,
                Op::Rollback {
                    command_id: c.command_id.clone(),
                    stage: Stage::Swapping,
                },
                true,
            )
            .await
        {
            return Outcome::failed(e, 0, true);
        }
        j.failed_since_ms = None;
        j.op = Some(Op::Rollback {
            command_id: c.command_id.clone(),
            stage: Stage::Checking,
        });
        if let Err(e) = self.save(j) {
            return Outcome::failed(e, 0, true);
        }
        match self.check_health(j, started, true).await {
            Ok(()) => Outcome::healthy(0, true),
            Err(mut e) => {
                e.gate = "rollback".into();
                Outcome::failed(e, 0, true)
            }
        }
    }
}
