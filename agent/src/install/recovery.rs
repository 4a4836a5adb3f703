//! Coming back consistent: recovery after an agent restart (dead staging
//! directories removed, every service brought to its old or new release,
//! interrupted checks finished), the agent's own rollbacks when the
//! controller is gone, and `stop_all` on the agent's exit.

use std::sync::Arc;
use std::time::Instant;

use cutover_core::rollout::RollbackCommand;
use cutover_core::views::now_ms;

use super::stage::Kind;
use super::{Installer, Outcome};
use crate::install::journal::{Journal, Op, Slot, Stage};

impl Installer {
    /// Rolls back, on the agent's own authority, every freshly installed
    /// service that failed while the controller has been gone too long.
    pub async fn autonomous_rollbacks(self: &Arc<Self>) {
        if self.link.lost_for() <= self.autonomous_rollback_after {
            return;
        }
        for j in self.scan().journals {
            if j.failed_since_ms.is_none() || j.op.is_some() {
                continue;
            }
            let lock = self.commands.lock(&j.service);
            let _held = lock.lock().await;
            let Ok(mut j) = self.journal(&j.service) else {
                continue;
            };
            let (Some(cur), Some(_), Some(mut report)) =
                (j.current.clone(), j.previous.clone(), j.last_report.clone())
            else {
                continue;
            };
            if j.failed_since_ms.is_none() {
                continue;
            }
            tracing::warn!(service = %j.service, lost_for = ?self.link.lost_for(), "controller unreachable and the new release is failing; rolling back on my own");
            let cmd = RollbackCommand {
                command_id: format!("{}-auto", report.command_id),
                service: j.service.clone(),
                from: cur.sha256,
            };
            let outcome = self.rollback(&mut j, &cmd, Instant::now()).await;
            let ok = outcome.healthy;
            j.op = None;
            if !ok {
                tracing::error!(service = %j.service, error = ?outcome.evidence, "autonomous rollback failed");
                j.failed_since_ms = Some(now_ms());
            }
            report.auto_rolled_back = ok;
            report.installed = j.installed(if ok { "running" } else { "failed" });
            j.last_report = Some(report.clone());
            if let Err(e) = self.save(&j) {
                tracing::error!(service = %j.service, error = %e.detail, "could not record the autonomous rollback");
            }
            self.commands.set_busy(&j.service, None);
            let _ = self.outbox.send(report);
        }
    }

    /// After a restart: bring every service to exactly its old or its new
    /// release, running, and finish health checks that were cut short.
    pub async fn recover(self: &Arc<Self>) {
        self.releases.remove_dead_staging();
        let scan = self.scan();
        for u in &scan.unreadable {
            tracing::error!(service = %u.service, error = %u.message(), "service left alone");
        }
        for d in &scan.damaged {
            tracing::error!(entry = %d, "a services/ entry cannot be examined; no release is deleted until it is repaired or removed");
        }
        for o in &scan.orphans {
            tracing::warn!(service = %o.service, detail = %o.message(), "service without a journal");
        }
        for mut j in scan.journals {
            let service = j.service.clone();
            let linked = self.linked(&j).await;
            let mut resume_checks = None;
            match j.op.clone() {
                None => {}
                Some(Op::Install {
                    command,
                    stage: Stage::Preparing,
                }) => {
                    tracing::info!(%service, command = %command.command_id, "install was interrupted before the swap; old release stays");
                    j.op = None;
                }
                Some(Op::Install { command, stage }) => {
                    let key = command
                        .image
                        .as_ref()
                        .map(|i| i.id)
                        .unwrap_or(command.sha256);
                    if stage == Stage::Swapping
                        && linked == Some(key)
                        && j.current.as_ref().map(|s| s.sha256) != Some(key)
                    {
                        let new = Slot {
                            identity: command.target.clone(),
                            sha256: key,
                            config: command
                                .config
                                .with_vars(&self.vars)
                                .unwrap_or_else(|_| command.config.clone()),
                        };
                        j.previous = j.current.replace(new);
                    }
                    if linked == Some(key) {
                        tracing::info!(%service, command = %command.command_id, "install was interrupted after the swap; checking the new release again");
                        j.op = Some(Op::Install {
                            command: command.clone(),
                            stage: Stage::Checking,
                        });
                        resume_checks = Some(command.command_id.clone());
                    } else {
                        tracing::info!(%service, command = %command.command_id, "install was interrupted before the swap; old release stays");
                        j.op = None;
                    }
                }
                Some(Op::Rollback { command_id, stage }) => {
                    let prev = j.previous.as_ref().map(|s| s.sha256);
                    if stage == Stage::Swapping && linked.is_some() && linked == prev {
                        std::mem::swap(&mut j.current, &mut j.previous);
                    }
                    tracing::info!(%service, command = %command_id, "rollback was interrupted; the current release stays");
                    j.op = None;
                }
            }
            if let Some(slot) = &j.current {
                let backend = self.backends.for_slot(slot);
                if let Err(e) = backend.ensure_running(&service, slot).await {
                    tracing::error!(%service, error = %e.detail, "could not start the current release");
                }
            }
            if let Err(e) = self.save(&j) {
                tracing::error!(%service, error = %e.detail, "could not write the recovered journal");
            }
            if let Some(command_id) = resume_checks {
                let me = self.clone();
                tokio::spawn(async move {
                    let lock = me.commands.lock(&service);
                    let _held = lock.lock().await;
                    let mut j = match me.journal(&service) {
                        Ok(j) => j,
                        Err(u) => {
                            tracing::error!(%service, error = %u.message(), "cannot finish the interrupted checks");
                            return;
                        }
                    };
                    let started = Instant::now();
                    me.commands.set_busy(&service, Some("checking"));
                    let outcome = match me.check_health(&j, started, Kind::Install).await {
                        Ok(()) => Outcome::healthy(0, true),
                        Err(e) => {
                            j.failed_since_ms = Some(now_ms());
                            Outcome::failed(e, 0, true)
                        }
                    };
                    me.finish(&mut j, &command_id, outcome, started);
                });
            }
        }
    }

    /// Which release a service is really on: where its `current` link
    /// points, or for a container the image of the container that runs (or,
    /// if a swap was cut short, of the previous container that will).
    async fn linked(&self, j: &Journal) -> Option<cutover_core::Sha256Digest> {
        let config = match (&j.current, &j.op) {
            (Some(slot), _) => slot.config.clone(),
            (None, Some(Op::Install { command, .. })) => command.config.clone(),
            _ => return self.backends.linked(&j.service, None).await,
        };
        let config = config.with_vars(&self.vars).unwrap_or(config);
        self.backends.linked(&j.service, Some(&config)).await
    }

    /// Stops every service (the agent's `stop_services_on_exit`).
    pub async fn stop_all(&self) {
        for j in self.scan().journals {
            let Some(slot) = &j.current else { continue };
            let backend = self.backends.for_slot(slot);
            if let Err(e) = backend.stop(&j.service, slot).await {
                tracing::warn!(service = %j.service, error = %e, "could not stop");
            }
        }
    }
}
