//! Rollouts: planning ([`plan`]), the pure state machine ([`engine`]) and
//! the driver that persists its state and sends its commands ([`driver`]).

pub mod driver;
pub mod engine;
pub mod known_good;
pub mod plan;
pub mod rollback_plan;

use cutover_core::command_id::CommandId;
use cutover_core::rollout::{Plan, Rollout, RolloutKind, RolloutStatus, Step, StepPhase};

/// A new rollout for `plan`: every host move becomes a pending step.
pub fn new_rollout(id: u64, kind: RolloutKind, plan: Plan, no_rollback: bool, now: i64) -> Rollout {
    let mut steps = Vec::new();
    for svc in &plan.services {
        for (batch, hosts) in svc.batches.iter().enumerate() {
            for m in hosts {
                steps.push(Step {
                    service: svc.service.clone(),
                    host: m.host.clone(),
                    level: svc.level,
                    batch,
                    phase: StepPhase::Pending,
                    command_id: CommandId::install(id, &svc.service, &m.host).to_string(),
                    sent_ms: None,
                    session: None,
                    sends: 0,
                    finished_ms: None,
                    evidence: None,
                    from: m.from.clone(),
                    to: m.to.clone(),
                });
            }
        }
    }
    Rollout {
        id,
        kind,
        release: plan.release.clone(),
        status: RolloutStatus::Running,
        no_rollback,
        created_ms: now,
        updated_ms: now,
        finished_ms: None,
        plan,
        steps,
        failure: None,
    }
}
