//! The rollout state machine: a pure function from (rollout, event) to the
//! next rollout and the effects to carry out. It never does I/O, so the
//! driver can persist the new state before sending any command, and a
//! restarted controller continues from the stored rollout alone.

use std::collections::{BTreeSet, HashMap};

use cutover_core::rollout::{
    Command, Evidence, InstallCommand, Report, RollbackCommand, Rollout, RolloutStatus,
    ServicePlan, Step, StepPhase,
};
use report::{fail, on_report};

/// Which hosts have a live session, and that session's id. A step whose
/// command went out on another session (or none) is sent again: commands
/// are idempotent by id.
pub trait Online {
    fn session(&self, host: &str) -> Option<u64>;
}

impl Online for HashMap<String, u64> {
    fn session(&self, host: &str) -> Option<u64> {
        self.get(host).copied()
    }
}

/// A rollout being driven: the rollout, where each host's steps are, and
/// which steps changed since the driver last saved it. The engine changes
/// steps only through [`Live::step_mut`], so a save writes exactly those.
pub struct Live {
    rollout: Rollout,
    by_host: HashMap<String, Vec<usize>>,
    changed: BTreeSet<usize>,
}

impl Live {
    pub fn new(rollout: Rollout) -> Live {
        let mut by_host: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, s) in rollout.steps.iter().enumerate() {
            by_host.entry(s.host.clone()).or_default().push(i);
        }
        Live {
            rollout,
            by_host,
            changed: BTreeSet::new(),
        }
    }

    pub fn rollout(&self) -> &Rollout {
        &self.rollout
    }

    /// The steps changed since the last call, in order.
    pub fn take_changed(&mut self) -> Vec<usize> {
        std::mem::take(&mut self.changed).into_iter().collect()
    }

    fn step_mut(&mut self, i: usize) -> &mut Step {
        self.changed.insert(i);
        &mut self.rollout.steps[i]
    }

    /// Whether `report` answers a command this rollout sent `host`: the
    /// install or rollback id of its step of the report's service. Reports
    /// that do not are not this rollout's to act on or to keep.
    pub fn expects(&self, host: &str, report: &Report) -> bool {
        self.find(host, &report.service).is_some_and(|i| {
            let id = &self.rollout.steps[i].command_id;
            report.command_id == *id || report.command_id == rollback_id(id)
        })
    }

    fn find(&self, host: &str, service: &str) -> Option<usize> {
        self.by_host
            .get(host)?
            .iter()
            .copied()
            .find(|&i| self.rollout.steps[i].service == service)
    }
}

impl std::ops::Deref for Live {
    type Target = Rollout;

    fn deref(&self) -> &Rollout {
        &self.rollout
    }
}

pub enum Event<'a> {
    Tick {
        now: i64,
        online: &'a dyn Online,
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
    /// The controller cannot drive this rollout (a config it carries is
    /// out of bounds, or stepping it failed): it ends Failed with
    /// `reason`, its hosts left as they are.
    Fault {
        now: i64,
        reason: String,
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

/// Advances `live` by one event; returns what the driver must do, in order.
pub fn step(live: &mut Live, event: Event<'_>) -> Vec<Effect> {
    #[cfg(test)]
    let before = live.rollout.steps.clone();
    let fx = advance(live, event);
    #[cfg(test)]
    for (i, (a, b)) in before.iter().zip(&live.rollout.steps).enumerate() {
        assert!(
            a == b || live.changed.contains(&i),
            "step {i} changed but is not marked for saving"
        );
    }
    fx
}

fn advance(live: &mut Live, event: Event<'_>) -> Vec<Effect> {
    let mut fx = Vec::new();
    let now = match event {
        Event::Tick { now, online } => {
            tick(live, now, online, &mut fx);
            now
        }
        Event::Report { now, host, report } => {
            on_report(live, now, host, report, &mut fx);
            now
        }
        Event::Pause { now } => {
            let r = &mut live.rollout;
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
            let r = &mut live.rollout;
            if r.status == RolloutStatus::Paused {
                r.status = RolloutStatus::Running;
                fx.push(log("rollout.resumed", None, "resumed by operator".into()));
            }
            now
        }
        Event::Abort { now } => {
            let r = &mut live.rollout;
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
        Event::Fault { now, reason } => {
            let r = &mut live.rollout;
            if !r.status.is_final() {
                r.status = RolloutStatus::Failed;
                r.finished_ms = Some(now);
                fx.push(log(
                    "rollout.finished",
                    None,
                    format!(
                        "rollout {} {}: the controller cannot drive it: {reason}; hosts stay as they are",
                        r.id, r.status
                    ),
                ));
            }
            now
        }
    };
    if !fx.is_empty() {
        live.rollout.updated_ms = now;
    }
    fx
}

fn tick(live: &mut Live, now: i64, online: &dyn Online, fx: &mut Vec<Effect>) {
    if live.status.is_final() {
        return;
    }
    expire(live, now, online, fx);
    if live.status == RolloutStatus::Running {
        activate_next(live, now, fx);
    }
    send_due(live, online, fx);
    conclude(&mut live.rollout, now, fx);
}

/// Fails steps whose host did not report before the deadline.
fn expire(live: &mut Live, now: i64, online: &dyn Online, fx: &mut Vec<Effect>) {
    for i in 0..live.steps.len() {
        let s = &live.steps[i];
        let Some(sent) = s.sent_ms else { continue };
        let deadline = deadline_ms(live, &s.service);
        // Saturating: a clock or a stored time far off must not wrap into
        // "not yet due" or panic.
        let elapsed = now.saturating_sub(sent);
        if elapsed <= deadline {
            continue;
        }
        let (gate, detail) = if online.session(&s.host).is_some() {
            ("deadline", format!("no report within {}s", deadline / 1000))
        } else {
            (
                "disconnected",
                format!("host offline and not back within {}s", deadline / 1000),
            )
        };
        let evidence = Evidence {
            elapsed_ms: u64::try_from(elapsed).unwrap_or(0),
            ..Evidence::new(gate, detail)
        };
        match s.phase {
            StepPhase::Installing => fail(live, i, evidence, false, now, fx),
            StepPhase::RollingBack => {
                let s = live.step_mut(i);
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
        .map(step_deadline_ms)
        .unwrap_or(i64::MAX)
}

/// How long, in ms, a host of `p` has to report after its command. Never
/// panics or wraps, whatever the (possibly unchecked, stored) config says:
/// a deadline too long for an `i64` of ms is `i64::MAX`, i.e. never.
pub fn step_deadline_ms(p: &ServicePlan) -> i64 {
    let policy = &p.config.policy;
    let d = policy.step_deadline_for(p.config.healthy_deadline);
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Starts the next batch of every service in the lowest unfinished level,
/// once the batch before it is healthy everywhere.
fn activate_next(live: &mut Live, now: i64, fx: &mut Vec<Effect>) {
    let Some(level) = live
        .steps
        .iter()
        .filter(|s| s.phase != StepPhase::Healthy)
        .map(|s| s.level)
        .min()
    else {
        return;
    };
    let services: Vec<String> = live
        .plan
        .services
        .iter()
        .filter(|p| p.level == level)
        .map(|p| p.service.clone())
        .collect();
    for service in services {
        let unfinished = live
            .steps
            .iter()
            .filter(|s| s.service == service && s.phase != StepPhase::Healthy)
            .map(|s| s.batch)
            .min();
        let Some(batch) = unfinished else { continue };
        let mut started = Vec::new();
        for i in 0..live.steps.len() {
            let s = &live.steps[i];
            if s.service == service && s.batch == batch && s.phase == StepPhase::Pending {
                let s = live.step_mut(i);
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
fn send_due(live: &mut Live, online: &dyn Online, fx: &mut Vec<Effect>) {
    for i in 0..live.steps.len() {
        let s = &live.steps[i];
        if !matches!(s.phase, StepPhase::Installing | StepPhase::RollingBack) {
            continue;
        }
        let Some(session) = online.session(&s.host) else {
            continue;
        };
        if s.session == Some(session) {
            continue;
        }
        let Some(command) = command_for(live, s) else {
            continue;
        };
        let s = live.step_mut(i);
        s.session = Some(session);
        s.sends = s.sends.saturating_add(1);
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
    let from = |id: &Option<std::sync::Arc<cutover_core::views::ContentIdentity>>| {
        id.as_ref().and_then(|c| c.tarball_sha256.or(c.image_id))
    };
    if s.phase == StepPhase::RollingBack {
        // What the agent installed: the image for containers.
        let installed = match &s.to {
            Some(to) => to.image.as_ref().map(|i| i.id).unwrap_or(to.sha256),
            None => plan.image.as_ref().map(|i| i.id).unwrap_or(plan.sha256),
        };
        return Some(Command::Rollback(RollbackCommand {
            command_id: rollback_id(&s.command_id),
            service: s.service.clone(),
            from: installed,
        }));
    }
    if let Some(to) = &s.to {
        return Some(Command::Install(Box::new(InstallCommand {
            command_id: s.command_id.clone(),
            service: s.service.clone(),
            target: to.identity.clone(),
            sha256: to.sha256,
            size: to.size,
            config: plan.config.clone(),
            image: to.image.clone(),
        })));
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

/// Why the controller cannot drive `r`, if it cannot: a service config it
/// carries is out of bounds. A rollout planned by this controller always
/// passes; one an older controller stored, with a config it accepted
/// unchecked, may not.
pub fn check_plan(r: &Rollout) -> Result<(), String> {
    for p in &r.plan.services {
        p.config.validate().map_err(|e| {
            format!(
                "service {:?}: {e}; apply a corrected fleet config and start a new rollout",
                p.service
            )
        })?;
    }
    Ok(())
}

pub fn rollback_id(install_id: &str) -> String {
    format!("{install_id}-rollback")
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

mod report;
#[cfg(test)]
mod tests;
