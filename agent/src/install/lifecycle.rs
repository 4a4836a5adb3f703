//! The install and rollback lifecycle, written once for every backend:
//! prepare → swap → check → outcome for an install, swap back → check →
//! outcome for a rollback. [`Installer::run`] walks the transitions of
//! `stage.rs`, journalling each stage before its side effect, and asks the
//! service's [`Backend`] for every side effect; the checking stage hands
//! `checks.rs` the backend, the prober and what may cut the checks short.

use std::time::Instant;

use cutover_core::rollout::{Evidence, InstallCommand, RollbackCommand};
use cutover_core::views::now_ms;

use super::backend::Backend;
use super::checks::{self, CutShort};
use super::journal::{Journal, Op, Slot, Stage};
use super::stage::Kind;
use super::Installer;

/// A command the lifecycle carries out: where it takes the service.
struct Move<'a> {
    kind: Kind,
    /// An install's command (what `Preparing` fetches, what the journal
    /// records); `None` for a rollback.
    install: Option<&'a InstallCommand>,
    command_id: &'a str,
    to: Slot,
}

impl Move<'_> {
    /// The journal's record of the command at `stage`.
    fn op(&self, stage: Stage) -> Op {
        match self.install {
            Some(c) => Op::Install {
                command: Box::new(c.clone()),
                stage,
            },
            None => Op::Rollback {
                command_id: self.command_id.to_string(),
                stage,
            },
        }
    }
}

/// What one install or rollback did: what its report says.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Outcome {
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
    pub(super) fn healthy(fetched: u64, restarted: bool) -> Outcome {
        Outcome {
            healthy: true,
            evidence: None,
            fetched,
            restarted,
        }
    }

    pub(super) fn failed(evidence: Evidence, fetched: u64, restarted: bool) -> Outcome {
        Outcome {
            healthy: false,
            evidence: Some(evidence),
            fetched,
            restarted,
        }
    }
}

impl Installer {
    pub(super) async fn install(
        &self,
        j: &mut Journal,
        c: &InstallCommand,
        started: Instant,
    ) -> Outcome {
        let service = c.service.as_str();
        // What identifies the install: the image for a container, else the tarball.
        let key = c.image.as_ref().map(|i| i.id).unwrap_or(c.sha256);
        if j.current.as_ref().is_some_and(|s| s.sha256 == key) && j.failed_since_ms.is_none() {
            // Already installed: not fetched, not restarted.
            if let Some(slot) = j.current.clone() {
                let backend = self.backends.for_slot(&slot);
                if !backend.status(service, &slot).await.running {
                    if let Err(e) = backend.ensure_running(service, &slot).await {
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
        if j.current.is_none() {
            j.current = self
                .backends
                .for_config(&config)
                .adopt_unjournalled(service, &config);
        }
        let to = Slot {
            identity: c.target.clone(),
            sha256: key,
            config,
        };
        let install = Move {
            kind: Kind::Install,
            install: Some(c),
            command_id: &c.command_id,
            to,
        };
        self.run(j, install, started).await
    }

    pub(super) async fn rollback(
        &self,
        j: &mut Journal,
        c: &RollbackCommand,
        started: Instant,
    ) -> Outcome {
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
        let back = Move {
            kind: Kind::Rollback,
            install: None,
            command_id: &c.command_id,
            to: previous,
        };
        self.run(j, back, started).await
    }

    /// Walks the stages from the command's first: each is journalled, then
    /// done; the first that fails ends the command with its evidence.
    async fn run(&self, j: &mut Journal, m: Move<'_>, started: Instant) -> Outcome {
        let service = j.service.clone();
        let backend = self.backends.for_slot(&m.to);
        let mut stage = m.kind.first();
        let mut fetched = 0;
        loop {
            self.commands.set_busy(&service, Some(stage.busy(m.kind)));
            if stage == m.kind.clears_failure_at() {
                j.failed_since_ms = None;
            }
            j.op = Some(m.op(stage));
            if let Err(e) = self.save(j) {
                return Outcome::failed(e, fetched, stage.touches_service());
            }
            let done = match stage {
                Stage::Preparing => match m.install {
                    Some(c) => backend.prepare(c).await.map(|n| fetched = n),
                    None => Ok(()),
                },
                Stage::Swapping => self.swap(j, backend, &m.to, m.kind == Kind::Rollback).await,
                Stage::Checking => {
                    let checked = self.check_health(j, started, m.kind).await;
                    checked.map_err(|mut e| {
                        if m.kind.failed_check_marks_failed() {
                            j.failed_since_ms = Some(now_ms());
                        }
                        if let Some(gate) = m.kind.failed_check_gate() {
                            e.gate = gate.into();
                        }
                        e
                    })
                }
            };
            match (done, stage.next()) {
                (Ok(()), Some(next)) => stage = next,
                (Ok(()), None) => return Outcome::healthy(fetched, true),
                (Err(e), _) => return Outcome::failed(e, fetched, stage.touches_service()),
            }
        }
    }

    /// Stops what runs, makes `to` current and starts it (`back`: `to` is
    /// the kept previous release).
    async fn swap(
        &self,
        j: &mut Journal,
        backend: &dyn Backend,
        to: &Slot,
        back: bool,
    ) -> Result<(), Evidence> {
        let service = j.service.clone();
        backend
            .switch(&service, j.current.as_ref(), to, back)
            .await?;
        let old = j.current.replace(to.clone());
        if old.as_ref().map(|o| o.sha256) != Some(to.sha256) {
            j.previous = old;
        }
        self.save(j)?;
        backend.start(&service, to).await
    }

    /// The checking stage: the current release's checks, cut short by a
    /// rollback waiting for the service or by a controller unreachable for
    /// longer than `autonomous_rollback_after` (for the kinds whose checks
    /// may be).
    pub(super) async fn check_health(
        &self,
        j: &Journal,
        started: Instant,
        kind: Kind,
    ) -> Result<(), Evidence> {
        let Some(slot) = &j.current else {
            return Err(Evidence::new("health", "nothing installed"));
        };
        let cut_short = CutShort {
            rollback_waiting: &|| self.commands.rollback_waiting(&j.service),
            lost_for: &|| self.link.lost_for(),
            lost_limit: self.autonomous_rollback_after,
        };
        let backend = self.backends.for_slot(slot);
        let prober = self.prober.as_ref();
        checks::check_health(backend, prober, &j.service, slot, kind, started, &cut_short).await
    }
}
