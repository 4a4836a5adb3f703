//! Health probes between commands, one service at a time: [`probe`] runs
//! one round of an installed service's checks ([`checks::round`]) and
//! reads its status, for `Installer::probe_health` (`mod.rs`) to feed the
//! service's health watch (`health/watch.rs`); [`after_command`] is the
//! health a command's report carries. A probe only looks: it never
//! starts, stops or swaps anything.

use cutover_core::views::{HealthState, ServiceHealth};

use super::backend::Backend;
use super::checks;
use super::journal::Slot;
use crate::services::health::watch::{evidence_text, Outcome};
use crate::services::health::Prober;

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

/// What one probe of an installed service found.
pub(super) struct Probe {
    /// The round's evidence, if it failed, and the restarts so far.
    pub outcome: Outcome,
    /// Whether the service runs, as its status says after the round.
    pub running: bool,
}

/// One round of `service`'s checks against `slot`, the release it is on,
/// then its status.
pub(super) async fn probe(
    backend: &dyn Backend,
    prober: &dyn Prober,
    service: &str,
    slot: &Slot,
) -> Probe {
    let dir = backend.release_dir(slot);
    let mut probed = Vec::with_capacity(slot.config.checks.len());
    let round = checks::round(backend, prober, service, slot, &dir, &mut probed).await;
    let st = backend.status(service, slot).await;
    Probe {
        outcome: Outcome {
            evidence: round.err().map(|e| evidence_text(&e)),
            restarts: st.restarts,
        },
        running: st.running,
    }
}
