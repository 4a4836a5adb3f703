//! Health probes between commands: one round of each installed service's
//! checks every `health_probe_interval`, its changes queued for the
//! controller (`health/watch.rs`). A probe only looks: it never starts,
//! stops or swaps anything, and a service with a command queued or in
//! flight, a failed install or an unfinished operation is not probed.

use cutover_core::views::{now_ms, HealthState, ServiceHealth};

use super::Installer;
use crate::services::health::watch::{evidence_text, Outcome};

/// The health a command's report carries: healthy once its checks passed,
/// unknown otherwise (what runs after a failure is for the next probe).
pub(super) fn after_command(ok: bool, now_ms: i64) -> ServiceHealth {
    if !ok {
        return ServiceHealth::default();
    }
    ServiceHealth {
        state: HealthState::Healthy,
        since_ms: now_ms,
        ..ServiceHealth::default()
    }
}

impl Installer {
    /// Probes every installed service once; returns how many changed.
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
            let dir = backend.release_dir(&slot);
            let mut probed = Vec::with_capacity(slot.config.checks.len());
            let round = self.round(&service, &slot, &dir, &mut probed).await;
            let st = backend.status(&service, &slot).await;
            let outcome = Outcome {
                evidence: round.err().map(|e| evidence_text(&e)),
                restarts: st.restarts,
            };
            let state = if st.running { "running" } else { "not running" };
            if self.health.observe(j.installed(state), &outcome, now_ms()) {
                let h = self.health.get(&service);
                tracing::info!(%service, health = h.state.as_str(), evidence = %h.evidence, restarts = h.restarts, "health changed");
                changed += 1;
            }
        }
        changed
    }
}
