//! The install and rollback lifecycle, written once for every backend:
//! prepare → swap → check → outcome, each stage journalled before its
//! side effect, and a rollback's swap back and check.

use std::time::Instant;

use cutover_core::rollout::{Evidence, InstallCommand, RollbackCommand};
use cutover_core::views::now_ms;

use super::backend::Backend;
use super::journal::{Journal, Op, Slot, Stage};
use super::Installer;

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
        let backend = self.backends.for_config(&config);
        if j.current.is_none() {
            j.current = backend.adopt_unjournalled(service, &config);
        }
        self.commands.set_busy(service, Some("installing"));
        j.failed_since_ms = None;
        j.op = Some(Op::Install {
            command: Box::new(c.clone()),
            stage: Stage::Preparing,
        });
        if let Err(e) = self.save(j) {
            return Outcome::failed(e, 0, false);
        }
        let fetched = match backend.prepare(c).await {
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
                backend,
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
        self.commands.set_busy(service, Some("checking"));
        match self.check_health(j, started, false).await {
            Ok(()) => Outcome::healthy(fetched, true),
            Err(e) => {
                j.failed_since_ms = Some(now_ms());
                Outcome::failed(e, fetched, true)
            }
        }
    }

    /// Stops what runs, makes `new` current and starts it. The journal
    /// says `Swapping` before anything stops.
    async fn swap_to(
        &self,
        j: &mut Journal,
        backend: &dyn Backend,
        new: Slot,
        op: Op,
        back: bool,
    ) -> Result<(), Evidence> {
        let service = j.service.clone();
        j.op = Some(op);
        self.save(j)?;
        backend
            .switch(&service, j.current.as_ref(), &new, back)
            .await?;
        let old = j.current.replace(new.clone());
        if old.as_ref().map(|o| o.sha256) != Some(new.sha256) {
            j.previous = old;
        }
        self.save(j)?;
        backend.start(&service, &new).await
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
        self.commands.set_busy(&c.service, Some("rolling back"));
        let backend = self.backends.for_slot(&previous);
        if let Err(e) = self
            .swap_to(
                j,
                backend,
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
