//! Coming back consistent: recovery after an agent restart, the agent's
//! own rollback when the controller is gone, and release garbage collection.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

use cutover_core::rollout::RollbackCommand;
use cutover_core::views::now_ms;
use cutover_core::Sha256Digest;

use cutover_core::fleet::{RunnerKind, ServiceConfig};

use super::Installer;
use crate::install::journal::{self, Journal, Op, Slot, Stage};

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
            let lock = self.lock(&j.service);
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
            self.set_busy(&j.service, None);
            let _ = self.outbox.send(report);
        }
    }

    /// After a restart: bring every service to exactly its old or its new
    /// release, running, and finish health checks that were cut short.
    pub async fn recover(self: &Arc<Self>) {
        self.remove_dead_staging();
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
                if let Err(e) = self.ensure_running(&service, slot).await {
                    tracing::error!(%service, error = %e.detail, "could not start the current release");
                }
            }
            if let Err(e) = self.save(&j) {
                tracing::error!(%service, error = %e.detail, "could not write the recovered journal");
            }
            if let Some(command_id) = resume_checks {
                let me = self.clone();
                tokio::spawn(async move {
                    let lock = me.lock(&service);
                    let _held = lock.lock().await;
                    let mut j = match me.journal(&service) {
                        Ok(j) => j,
                        Err(u) => {
                            tracing::error!(%service, error = %u.message(), "cannot finish the interrupted checks");
                            return;
                        }
                    };
                    let started = Instant::now();
                    me.set_busy(&service, Some("checking"));
                    let outcome = match me.check_health(&j, started, false).await {
                        Ok(()) => super::Outcome::healthy(0, true),
                        Err(e) => {
                            j.failed_since_ms = Some(now_ms());
                            super::Outcome::failed(e, 0, true)
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
            _ => return journal::read_current(&self.data_dir, &j.service),
        };
        if config.runner != cutover_core::fleet::RunnerKind::Docker {
            return journal::read_current(&self.data_dir, &j.service);
        }
        let config = config.with_vars(&self.vars).unwrap_or(config);
        let engine = self.engine().await.ok()?;
        engine
            .image_of(&j.service, &config)
            .await
            .and_then(|i| cutover_core::Sha256Digest::parse_prefixed(&i).ok())
    }

    /// A service whose journal is gone while its `current` link still
    /// points at a release on disk: that release is taken as the one
    /// running (known by its digest only; release and version unknown, its
    /// config the install's), so the install records it as `previous`, GC
    /// keeps it and a failed install rolls back to it.
    pub(super) fn adopt_unjournalled(&self, j: &mut Journal, config: &ServiceConfig) {
        if j.current.is_some() || config.runner == RunnerKind::Docker {
            return;
        }
        let Some(sha) = journal::read_current(&self.data_dir, &j.service) else {
            return;
        };
        let is_release = std::fs::symlink_metadata(journal::release_dir(&self.data_dir, &sha))
            .is_ok_and(|m| m.is_dir());
        let Some(identity) = journal::linked_identity(Some(sha)).filter(|_| is_release) else {
            return;
        };
        tracing::warn!(service = %j.service, release = %sha, "no journal: the release `current` points at is taken as the running one, kept and gone back to if this install fails");
        j.current = Some(Slot {
            identity,
            sha256: sha,
            config: config.clone(),
        });
    }

    /// Whether `path` (named like a release, not a directory) is new to
    /// this run; the first time, it is logged.
    pub(super) fn note_not_a_release(&self, path: &std::path::Path) -> bool {
        let mut seen = self.not_releases.lock().unwrap_or_else(|p| p.into_inner());
        let new = seen.insert(path.to_path_buf());
        if new {
            tracing::warn!(path = %path.display(), "named like a release but not a release directory; left alone: remove it by hand if it is not needed");
        }
        new
    }

    /// Stops every service (the agent's `stop_services_on_exit`).
    pub async fn stop_all(&self) {
        for j in self.scan().journals {
            let Some(slot) = &j.current else { continue };
            let stopped = if super::containers::is_container(slot) {
                match self.engine().await {
                    Ok(engine) => engine.stop_service(&j.service, &slot.config).await,
                    Err(e) => Err(e.detail),
                }
            } else {
                let runner = self.runners.for_config(&slot.config);
                tokio::task::block_in_place(|| runner.stop(&j.service, &slot.config))
                    .map_err(|e| e.to_string())
            };
            if let Err(e) = stopped {
                tracing::warn!(service = %j.service, error = %e, "could not stop");
            }
        }
    }

    /// Keeps each service's current and previous release, the release of
    /// an install in progress and whatever any `current` link points at;
    /// removes the rest. While any journal cannot be read (or `services/`
    /// cannot be listed) it removes no release at all: what that journal
    /// needs is unknown.
    pub(super) fn collect_garbage(&self) {
        self.remove_dead_staging();
        // Locks nobody holds or waits for are dropped (a clone is only
        // taken under the map's mutex), so the map holds digests in use.
        self.digests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|_, lock| Arc::strong_count(lock) > 1);
        let Some(unneeded) = self.unneeded_releases() else {
            return;
        };
        // A release being made (or reused) by an install holds its digest's
        // lock; one that is busy is skipped, and the rest are judged again
        // with their locks held, so an install that picked one up after
        // the first look keeps it.
        let mut held = Vec::new();
        for sha in unneeded {
            if let Ok(guard) = self.digest_lock(&sha).try_lock_owned() {
                held.push((sha, guard));
            }
        }
        if held.is_empty() {
            return;
        }
        let Some(unneeded) = self.unneeded_releases() else {
            return;
        };
        for (sha, _guard) in &held {
            if unneeded.contains(sha) {
                tracing::info!(release = %sha, "removing release no service needs");
                if let Err(e) = std::fs::remove_dir_all(journal::release_dir(&self.data_dir, sha)) {
                    tracing::warn!(release = %sha, error = %e, "could not remove release");
                }
            }
        }
    }

    /// The releases on disk that nothing needs, or `None` when that cannot
    /// be known.
    pub(super) fn unneeded_releases(&self) -> Option<HashSet<Sha256Digest>> {
        let scan = match Journal::scan(&self.data_dir) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot list the services; keeping every release");
                return None;
            }
        };
        if let Some(u) = scan.unreadable.first() {
            tracing::warn!(service = %u.service, error = %u.message(), "keeping every release");
            return None;
        }
        if let Some(d) = scan.damaged.first() {
            tracing::warn!(entry = %d, "a services/ entry cannot be examined; keeping every release");
            return None;
        }
        let mut keep: HashSet<Sha256Digest> = scan.linked.iter().copied().collect();
        for j in &scan.journals {
            keep.extend(j.current.iter().chain(j.previous.iter()).map(|s| s.sha256));
            if let Some(Op::Install { command, .. }) = &j.op {
                keep.insert(command.sha256);
            }
        }
        let entries = std::fs::read_dir(journal::releases_dir(&self.data_dir)).ok()?;
        let mut unneeded = HashSet::new();
        for e in entries.flatten() {
            let Some(sha) = e
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<Sha256Digest>().ok())
            else {
                continue;
            };
            if keep.contains(&sha) {
                continue;
            }
            // Only a real directory is a release (a file or a link under
            // a release's name is not, and is never removed).
            match e.file_type() {
                Ok(t) if t.is_dir() => {
                    unneeded.insert(sha);
                }
                Ok(_) => {
                    self.note_not_a_release(&e.path());
                }
                Err(err) => {
                    tracing::warn!(path = %e.path().display(), error = %err, "cannot examine; left alone");
                }
            }
        }
        Some(unneeded)
    }
}
