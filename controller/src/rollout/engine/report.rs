//! What a host's report does to its step (healthy, failed, rolled back or
//! not), and what a failed step does to the rollout: it stops at that
//! step's boundary and takes back the rollback scope (or, with
//! `--no-rollback` or a swap-back service, ends Failed as it is).

use cutover_core::command_id::CommandId;
use cutover_core::fleet::RollbackScope;
use cutover_core::rollout::{Evidence, Failure, Report, RolloutStatus, StepPhase, StopAction};

use super::{finish, log, Effect, Live};

pub(super) fn on_report(
    live: &mut Live,
    now: i64,
    host: &str,
    report: &Report,
    fx: &mut Vec<Effect>,
) {
    let Some(i) = live.find(host, &report.service) else {
        return;
    };
    let s = &live.steps[i];
    let install = s.phase == StepPhase::Installing && report.command_id == s.command_id;
    let rollback = s.phase == StepPhase::RollingBack
        && CommandId::is_rollback_of(&report.command_id, &s.command_id);
    if install && report.ok {
        let s = live.step_mut(i);
        s.phase = StepPhase::Healthy;
        s.finished_ms = Some(now);
        s.sent_ms = None;
        let what = if report.restarted {
            "healthy"
        } else {
            "already at target, untouched"
        };
        fx.push(log(
            "step.healthy",
            Some(host),
            format!(
                "{}: {what} ({} ms, {} bytes fetched)",
                s.service, report.duration_ms, report.fetched_bytes
            ),
        ));
    } else if install {
        let evidence = report.evidence.clone().unwrap_or_else(|| Evidence {
            gate: "unknown".into(),
            detail: "the agent reported a failure without evidence".into(),
            ..Evidence::default()
        });
        fail(live, i, evidence, report.auto_rolled_back, now, fx);
    } else if rollback {
        let s = live.step_mut(i);
        s.finished_ms = Some(now);
        s.sent_ms = None;
        if report.ok {
            s.phase = StepPhase::RolledBack;
            fx.push(log(
                "step.rolled_back",
                Some(host),
                format!("{}: back on the previous release", s.service),
            ));
        } else {
            s.phase = StepPhase::RollbackFailed;
            let detail = report
                .evidence
                .as_ref()
                .map(|e| e.detail.clone())
                .unwrap_or_default();
            fx.push(log(
                "step.rollback_failed",
                Some(host),
                format!("{}: rollback failed: {detail}", s.service),
            ));
            s.evidence = report.evidence.clone();
        }
    }
}

/// A step failed: stop at this boundary and take back the rollback scope.
pub(super) fn fail(
    live: &mut Live,
    i: usize,
    evidence: Evidence,
    auto_rolled_back: bool,
    now: i64,
    fx: &mut Vec<Effect>,
) {
    let (service, host, batch) = {
        let s = live.step_mut(i);
        s.phase = if auto_rolled_back {
            StepPhase::RolledBack
        } else {
            StepPhase::Failed
        };
        s.finished_ms = Some(now);
        s.sent_ms = None;
        s.evidence = Some(evidence.clone());
        (s.service.clone(), s.host.clone(), s.batch)
    };
    fx.push(log(
        "step.failed",
        Some(&host),
        format!("{service}: {} failed: {}", evidence.gate, evidence.detail),
    ));
    if live.status.is_final() {
        return;
    }
    if live.status == RolloutStatus::RollingBack {
        // A step still in flight when the rollout stopped failed since:
        // its own scope goes back too (with scope host, only the failed
        // host was taken back), unless it is one to leave as it is. The
        // first failure stays the rollout's.
        let leave = live.no_rollback || swap_back(live, &service);
        if !leave {
            let (back, moving) = take_back(live, &service, &host, now);
            if moving > 0 {
                fx.push(log(
                    "step.rolling_back",
                    Some(&host),
                    format!(
                        "{service}: failed while the rollout rolls back; taking back {}",
                        listed(&back, moving)
                    ),
                ));
            }
        }
        return;
    }
    let boundary = if batch == 0 {
        "canary".to_string()
    } else {
        format!("batch {batch}")
    };
    let swap_back = swap_back(live, &service);
    let ends = live.no_rollback || swap_back;
    let (next, action) = if ends {
        if auto_rolled_back {
            (
                StopAction::HostRolledItselfBack,
                format!("stopped; {host} had already rolled itself back"),
            )
        } else if swap_back {
            (
                StopAction::LeftAsIs,
                format!("stopped; {host} left as it is"),
            )
        } else {
            (
                StopAction::LeftForInspection,
                format!("stopped; {host} left in place for inspection (--no-rollback)"),
            )
        }
    } else {
        let (back, moving) = take_back(live, &service, &host, now);
        // The rollout stopped: a step whose command never reached its
        // host (offline since its batch started) must not start now.
        for i in 0..live.steps.len() {
            let s = &live.steps[i];
            if s.phase == StepPhase::Installing && s.sends == 0 {
                let s = live.step_mut(i);
                s.phase = StepPhase::Pending;
                s.sent_ms = None;
            }
        }
        live.rollout.status = RolloutStatus::RollingBack;
        let scope_name = format!("{:?}", scope_of(live, &service)).to_lowercase();
        if back.is_empty() {
            (
                StopAction::NothingToRollBack,
                format!("stopped; nothing else in rollback scope {scope_name} had moved"),
            )
        } else {
            (
                StopAction::RollingBack,
                format!(
                    "stopped; rolling back (scope {scope_name}): {}",
                    listed(&back, moving)
                ),
            )
        }
    };
    fx.push(log(
        "rollout.stopped",
        Some(&host),
        format!(
            "{service} failed at the {boundary} on {host}: {}; {action}",
            evidence.detail
        ),
    ));
    if ends {
        let detail = format!("{service} failed at the {boundary} on {host}; {action}");
        finish(&mut live.rollout, RolloutStatus::Failed, now, detail, fx);
    }
    live.rollout.failure = Some(Failure {
        service,
        host,
        batch,
        boundary,
        evidence,
        next,
        action,
    });
}

/// Whether `service` swaps back by itself (left as it is on a failure).
fn swap_back(live: &Live, service: &str) -> bool {
    live.plan
        .services
        .iter()
        .any(|p| p.service == service && p.swap_back)
}

fn scope_of(live: &Live, service: &str) -> RollbackScope {
    live.plan
        .services
        .iter()
        .find(|p| p.service == service)
        .map(|p| p.config.policy.rollback_scope)
        .unwrap_or(RollbackScope::Service)
}

/// The first few names, and how many more.
fn listed(back: &[String], moving: usize) -> String {
    match moving.saturating_sub(back.len()) {
        0 => back.join(", "),
        n => format!("{} and {n} more", back.join(", ")),
    }
}

/// Sends back every step in the rollback scope of `service` failing on
/// `host` that moved (in flight, healthy or failed): the first few by
/// name (`rollout show` lists every step), and how many. A step whose
/// command never reached its host moved nothing: it goes back to pending.
fn take_back(live: &mut Live, service: &str, host: &str, now: i64) -> (Vec<String>, usize) {
    const LISTED: usize = 20;
    let scope = scope_of(live, service);
    let mut back = Vec::new();
    let mut moving: usize = 0;
    for i in 0..live.steps.len() {
        let s = &live.steps[i];
        let in_scope = match scope {
            RollbackScope::Host => s.host == host && s.service == service,
            RollbackScope::Service => s.service == service,
            RollbackScope::Release => true,
        };
        let moved = matches!(
            s.phase,
            StepPhase::Installing | StepPhase::Healthy | StepPhase::Failed
        );
        if !(in_scope && moved) {
            continue;
        }
        if s.sends == 0 {
            if s.phase == StepPhase::Installing {
                let s = live.step_mut(i);
                s.phase = StepPhase::Pending;
                s.sent_ms = None;
            }
            continue;
        }
        let s = live.step_mut(i);
        s.phase = StepPhase::RollingBack;
        s.sent_ms = Some(now);
        s.session = None;
        s.sends = 0;
        s.finished_ms = None;
        if back.len() < LISTED {
            back.push(format!("{} ({})", s.host, s.service));
        }
        moving += 1;
    }
    (back, moving)
}
