//! The rollout state machine: a pure function from (rollout, event) to the
//! next rollout and the effects to carry out. It never does I/O, so the
//! driver can persist the new state before sending any command, and a
//! restarted controller continues from the stored rollout alone.

use std::collections::HashMap;

use cutover_core::fleet::RollbackScope;
use cutover_core::rollout::{
    Command, Evidence, Failure, InstallCommand, Report, RollbackCommand, Rollout, RolloutStatus,
    Step, StepPhase,
};

/// Hosts with a live session, and that session's id. A step whose command
/// went out on another session (or none) is sent again: commands are
/// idempotent by id.
pub type Online = HashMap<String, u64>;

pub enum Event<'a> {
    Tick {
        now: i64,
        online: &'a Online,
    },
    Report {
        now: i64,
        host: &'a str,
        report: &'a Report,
    },
    Pause {
        now: i64,
    },
    Resume {
        now: i64,
    },
    Abort {
        now: i64,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    Send {
        host: String,
        command: Command,
    },
    Log {
        kind: &'static str,
        host: Option<String>,
        detail: String,
    },
}

fn log(kind: &'static str, host: Option<&str>, detail: String) -> Effect {
    Effect::Log {
        kind,
        host: host.map(str::to_string),
        detail,
    }
}

/// Advances `r` by one event; returns what the driver must do, in order.
pub fn step(r: &mut Rollout, event: Event<'_>) -> Vec<Effect> {
    let mut fx = Vec::new();
    let now = match event {
        Event::Tick { now, online } => {
            tick(r, now, online, &mut fx);
            now
        }
        Event::Report { now, host, report } => {
            on_report(r, now, host, report, &mut fx);
            now
        }
        Event::Pause { now } => {
            if r.status == RolloutStatus::Running {
                r.status = RolloutStatus::Paused;
                fx.push(log(
                    "rollout.paused",
                    None,
                    "paused by operator; steps in flight finish".into(),
                ));
            }
            now
        }
        Event::Resume { now } => {
            if r.status == RolloutStatus::Paused {
                r.status = RolloutStatus::Running;
                fx.push(log("rollout.resumed", None, "resumed by operator".into()));
            }
            now
        }
        Event::Abort { now } => {
            if !r.status.is_final() {
                r.status = RolloutStatus::Aborted;
                r.finished_ms = Some(now);
                fx.push(log(
                    "rollout.aborted",
                    None,
                    "aborted by operator; hosts stay as they are".into(),
                ));
            }
            now
        }
    };
    if !fx.is_empty() {
        r.updated_ms = now;
    }
    fx
}

fn tick(r: &mut Rollout, now: i64, online: &Online, fx: &mut Vec<Effect>) {
    if r.status.is_final() {
        return;
    }
    expire(r, now, online, fx);
    if r.status == RolloutStatus::Running {
        activate_next(r, now, fx);
    }
    send_due(r, online, fx);
    conclude(r, now, fx);
}

/// Fails steps whose host did not report before the deadline.
fn expire(r: &mut Rollout, now: i64, online: &Online, fx: &mut Vec<Effect>) {
    for i in 0..r.steps.len() {
        let s = &r.steps[i];
        let Some(sent) = s.sent_ms else { continue };
        let deadline = deadline_ms(r, &s.service);
        if now - sent <= deadline {
            continue;
        }
        let (gate, detail) = if online.contains_key(&s.host) {
            ("deadline", format!("no report within {}s", deadline / 1000))
        } else {
            (
                "disconnected",
                format!("host offline and not back within {}s", deadline / 1000),
            )
        };
        let evidence = Evidence {
            gate: gate.into(),
            detail,
            elapsed_ms: (now - sent) as u64,
            ..Evidence::default()
        };
        match s.phase {
            StepPhase::Installing => fail(r, i, evidence, false, now, fx),
            StepPhase::RollingBack => {
                let s = &mut r.steps[i];
                s.phase = StepPhase::RollbackFailed;
                s.finished_ms = Some(now);
                s.sent_ms = None;
                fx.push(log(
                    "step.rollback_failed",
                    Some(&s.host.clone()),
                    format!("{}: rollback {}", s.service, evidence.detail),
                ));
                s.evidence = Some(evidence);
            }
            _ => {}
        }
    }
}

fn deadline_ms(r: &Rollout, service: &str) -> i64 {
    r.plan
        .services
        .iter()
        .find(|p| p.service == service)
        .map(|p| p.step_deadline().as_millis() as i64)
        .unwrap_or(i64::MAX)
}

/// Starts the next batch of every service in the lowest unfinished level,
/// once the batch before it is healthy everywhere.
fn activate_next(r: &mut Rollout, now: i64, fx: &mut Vec<Effect>) {
    let Some(level) = r
        .steps
        .iter()
        .filter(|s| s.phase != StepPhase::Healthy)
        .map(|s| s.level)
        .min()
    else {
        return;
    };
    let services: Vec<String> = r
        .plan
        .services
        .iter()
        .filter(|p| p.level == level)
        .map(|p| p.service.clone())
        .collect();
    for service in services {
        let unfinished = r
            .steps
            .iter()
            .filter(|s| s.service == service && s.phase != StepPhase::Healthy)
            .map(|s| s.batch)
            .min();
        let Some(batch) = unfinished else { continue };
        let mut started = Vec::new();
        for s in r.steps.iter_mut() {
            if s.service == service && s.batch == batch && s.phase == StepPhase::Pending {
                s.phase = StepPhase::Installing;
                s.sent_ms = Some(now);
                s.session = None;
                s.sends = 0;
                started.push(s.host.clone());
            }
        }
        if !started.is_empty() {
            let which = if batch == 0 {
                "canary".to_string()
            } else {
                format!("batch {batch}")
            };
            fx.push(log(
                "batch.started",
                None,
                format!("{service}: {which} started on {}", started.join(", ")),
            ));
        }
    }
}

/// (Re)sends the command of every step in flight whose host is online on a
/// session that has not seen it yet.
fn send_due(r: &mut Rollout, online: &Online, fx: &mut Vec<Effect>) {
    for i in 0..r.steps.len() {
        let s = &r.steps[i];
        if !matches!(s.phase, StepPhase::Installing | StepPhase::RollingBack) {
            continue;
        }
        let Some(&session) = online.get(&s.host) else {
            continue;
        };
        if s.session == Some(session) {
            continue;
        }
        let Some(command) = command_for(r, s) else {
            continue;
        };
        let s = &mut r.steps[i];
        s.session = Some(session);
        s.sends += 1;
        if s.sends > 1 {
            fx.push(log(
                "step.resent",
                Some(&s.host),
                format!(
                    "{}: command {} sent again on a new session",
                    s.service,
                    command.id()
                ),
            ));
        }
        fx.push(Effect::Send {
            host: s.host.clone(),
            command,
        });
    }
}

fn command_for(r: &Rollout, s: &Step) -> Option<Command> {
    let plan = r.plan.services.iter().find(|p| p.service == s.service)?;
    let from = |id: &Option<cutover_core::views::ContentIdentity>| {
        id.as_ref().and_then(|c| c.tarball_sha256.or(c.image_id))
    };
    if s.phase == StepPhase::RollingBack {
        return Some(Command::Rollback(RollbackCommand {
            command_id: rollback_id(&s.command_id),
            service: s.service.clone(),
            // What the agent installed: the image for containers.
            from: plan.image.as_ref().map(|i| i.id).unwrap_or(plan.sha256),
        }));
    }
    if plan.swap_back {
        return Some(Command::Rollback(RollbackCommand {
            command_id: s.command_id.clone(),
            service: s.service.clone(),
            from: from(&s.from)?,
        }));
    }
    Some(Command::Install(Box::new(InstallCommand {
        command_id: s.command_id.clone(),
        service: s.service.clone(),
        target: plan.target.clone(),
        sha256: plan.sha256,
        size: plan.size,
        config: plan.config.clone(),
        image: plan.image.clone(),
    })))
}

pub fn rollback_id(install_id: &str) -> String {
    format!("{install_id}-rollback")
}

fn on_report(r: &mut Rollout, now: i64, host: &str, report: &Report, fx: &mut Vec<Effect>) {
    let Some(i) = r
        .steps
        .iter()
        .position(|s| s.host == host && s.service == report.service)
    else {
        return;
    };
    let s = &r.steps[i];
    let install = s.phase == StepPhase::Installing && report.command_id == s.command_id;
    let rollback =
        s.phase == StepPhase::RollingBack && report.command_id == rollback_id(&s.command_id);
    if install && report.ok {
        let s = &mut r.steps[i];
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
        fail(r, i, evidence, report.auto_rolled_back, now, fx);
    } else if rollback {
        let s = &mut r.steps[i];
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
fn fail(
    r: &mut Rollout,
    i: usize,
    evidence: Evidence,
    auto_rolled_back: bool,
    now: i64,
    fx: &mut Vec<Effect>,
) {
    let (service, host, batch) = {
        let s = &mut r.steps[i];
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
    if matches!(r.status, RolloutStatus::RollingBack) || r.status.is_final() {
        return;
    }
    let boundary = if batch == 0 {
        "canary".to_string()
    } else {
        format!("batch {batch}")
    };
    let swap_back = r
        .plan
        .services
        .iter()
        .any(|p| p.service == service && p.swap_back);
    let action = if r.no_rollback || swap_back {
        r.status = RolloutStatus::Failed;
        r.finished_ms = Some(now);
        if auto_rolled_back {
            format!("stopped; {host} had already rolled itself back")
        } else if swap_back {
            format!("stopped; {host} left as it is")
        } else {
            format!("stopped; {host} left in place for inspection (--no-rollback)")
        }
    } else {
        let scope = r
            .plan
            .services
            .iter()
            .find(|p| p.service == service)
            .map(|p| p.config.policy.rollback_scope)
            .unwrap_or(RollbackScope::Service);
        let mut back = Vec::new();
        for s in r.steps.iter_mut() {
            let in_scope = match scope {
                RollbackScope::Host => s.host == host && s.service == service,
                RollbackScope::Service => s.service == service,
                RollbackScope::Release => true,
            };
            let moved = matches!(
                s.phase,
                StepPhase::Installing | StepPhase::Healthy | StepPhase::Failed
            );
            if in_scope && moved && s.sends == 0 {
                // Its command never reached the host (offline since its
                // batch started): nothing moved, nothing to take back.
                if s.phase == StepPhase::Installing {
                    s.phase = StepPhase::Pending;
                    s.sent_ms = None;
                }
                continue;
            }
            if in_scope && moved {
                s.phase = StepPhase::RollingBack;
                s.sent_ms = Some(now);
                s.session = None;
                s.sends = 0;
                s.finished_ms = None;
                back.push(format!("{} ({})", s.host, s.service));
            }
        }
        r.status = RolloutStatus::RollingBack;
        let scope_name = format!("{scope:?}").to_lowercase();
        if back.is_empty() {
            format!("stopped; nothing else in rollback scope {scope_name} had moved")
        } else {
            format!(
                "stopped; rolling back (scope {scope_name}): {}",
                back.join(", ")
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
    r.failure = Some(Failure {
        service,
        host,
        boundary,
        evidence,
        action,
    });
}

/// Ends the rollout once nothing is left to do.
fn conclude(r: &mut Rollout, now: i64, fx: &mut Vec<Effect>) {
    let status = match r.status {
        RolloutStatus::Running if r.steps.iter().all(|s| s.phase == StepPhase::Healthy) => {
            RolloutStatus::Succeeded
        }
        RolloutStatus::RollingBack
            if !r.steps.iter().any(|s| s.phase == StepPhase::RollingBack) =>
        {
            if r.count(StepPhase::RollbackFailed) > 0 {
                RolloutStatus::Failed
            } else {
                RolloutStatus::RolledBack
            }
        }
        _ => return,
    };
    r.status = status;
    r.finished_ms = Some(now);
    let detail = match status {
        RolloutStatus::Succeeded => format!("{} step(s) healthy", r.steps.len()),
        RolloutStatus::RolledBack => {
            format!("{} host(s) rolled back", r.count(StepPhase::RolledBack))
        }
        _ => format!("{} rollback(s) failed", r.count(StepPhase::RollbackFailed)),
    };
    fx.push(log(
        "rollout.finished",
        None,
        format!("rollout {} {status}: {detail}", r.id),
    ));
}

#[cfg(test)]
mod tests;
