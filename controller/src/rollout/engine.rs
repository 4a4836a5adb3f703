//! The rollout state machine: a pure function from (rollout, event) to the
//! next rollout and the effects to carry out. It never does I/O, so the
//! driver can persist the new state before sending any command, and a
//! restarted controller continues from the stored rollout alone.

use std::collections::{BTreeSet, HashMap};

use cutover_core::command_id::CommandId;
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
            report.command_id == *id || CommandId::is_rollback_of(&report.command_id, id)
        })
    }

    /// Whether a rollout that has ended still has steps in flight, sent
    /// before it ended: the driver follows it until each has its outcome.
    /// Scans the steps, so it is asked of ended rollouts only.
    pub fn following(&self) -> bool {
        self.rollout.status.is_final()
            && self
                .rollout
                .steps
                .iter()
                .any(|s| matches!(s.phase, StepPhase::Installing | StepPhase::RollingBack))
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
    /// An operator's action; `by` is the operator certificate's name.
    Pause {
        now: i64,
        by: Option<&'a str>,
    },
    Resume {
        now: i64,
        by: Option<&'a str>,
    },
    /// Nothing new starts; steps in flight are followed until they report
    /// or their deadline passes, so each gets its real outcome.
    Abort {
        now: i64,
        by: Option<&'a str>,
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
        Event::Pause { now, by } => {
            let r = &mut live.rollout;
            if r.status == RolloutStatus::Running {
                r.status = RolloutStatus::Paused;
                fx.push(log(
                    "rollout.paused",
                    None,
                    format!("paused {}; steps in flight finish", by_operator(by)),
                ));
            }
            now
        }
        Event::Resume { now, by } => {
            let r = &mut live.rollout;
            if r.status == RolloutStatus::Paused {
                r.status = RolloutStatus::Running;
                fx.push(log(
                    "rollout.resumed",
                    None,
                    format!("resumed {}", by_operator(by)),
                ));
            }
            now
        }
        Event::Abort { now, by } => {
            abort(live, now, by, &mut fx);
            now
        }
        Event::Fault { now, reason } => {
            let r = &mut live.rollout;
            if !r.status.is_final() {
                finish(
                    r,
                    RolloutStatus::Failed,
                    now,
                    format!("the controller cannot drive it: {reason}; hosts stay as they are"),
                    &mut fx,
                );
            }
            now
        }
    };
    if !fx.is_empty() {
        live.rollout.updated_ms = now;
    }
    fx
}

/// Who acted, as an event says it.
fn by_operator(by: Option<&str>) -> String {
    match by {
        Some(name) => format!("by operator {name:?}"),
        None => "by an operator".into(),
    }
}

/// Ends `r` with `status`: its one `rollout.finished` event.
fn finish(r: &mut Rollout, status: RolloutStatus, now: i64, detail: String, fx: &mut Vec<Effect>) {
    r.status = status;
    r.finished_ms = Some(now);
    fx.push(log(
        "rollout.finished",
        None,
        format!("rollout {} {status}: {detail}", r.id),
    ));
}

/// Stops the rollout where it is. A step whose command never reached its
/// host goes back to pending (nothing moved); the others in flight are
/// followed to their real outcome (see [`Live::following`]).
fn abort(live: &mut Live, now: i64, by: Option<&str>, fx: &mut Vec<Effect>) {
    if live.status.is_final() {
        return;
    }
    let mut flight = 0usize;
    for i in 0..live.steps.len() {
        let s = &live.steps[i];
        match s.phase {
            StepPhase::Installing if s.sends == 0 => {
                let s = live.step_mut(i);
                s.phase = StepPhase::Pending;
                s.sent_ms = None;
            }
            StepPhase::RollingBack if s.sends == 0 => {
                let s = live.step_mut(i);
                s.phase = StepPhase::RollbackFailed;
                s.sent_ms = None;
                s.finished_ms = Some(now);
                s.evidence = Some(Evidence::new(
                    "rollback",
                    "the rollout was aborted before the rollback reached the host; it runs what it ran when the rollout stopped",
                ));
            }
            StepPhase::Installing | StepPhase::RollingBack => flight = flight.saturating_add(1),
            _ => {}
        }
    }
    let following = match flight {
        0 => String::new(),
        n => format!("; {n} step(s) in flight are followed until they report"),
    };
    fx.push(log(
        "rollout.aborted",
        None,
        format!(
            "aborted {}{following}; hosts stay as they are",
            by_operator(by)
        ),
    ));
    let r = &mut live.rollout;
    let count = |p| r.count(p);
    let detail = format!(
        "{} healthy, {} failed, {} rolled back, {flight} in flight, {} not started",
        count(StepPhase::Healthy),
        count(StepPhase::Failed).saturating_add(count(StepPhase::RollbackFailed)),
        count(StepPhase::RolledBack),
        count(StepPhase::Pending)
    );
    finish(r, RolloutStatus::Aborted, now, detail, fx);
}

fn tick(live: &mut Live, now: i64, online: &dyn Online, fx: &mut Vec<Effect>) {
    if live.status.is_final() {
        // Only steps still in flight are followed: their deadlines, never
        // a new command.
        expire(live, now, online, fx);
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
            // A rollback moves every host at once: it has no canary.
            let which = if live.rollout.kind == cutover_core::rollout::RolloutKind::Rollback {
                "every host at once".to_string()
            } else if batch == 0 {
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
            command_id: CommandId::rollback_of(&s.command_id),
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

/// Ends the rollout once nothing is left to do.
fn conclude(r: &mut Rollout, now: i64, fx: &mut Vec<Effect>) {
    let status = match r.status {
        RolloutStatus::Running if r.steps.iter().all(|s| s.phase == StepPhase::Healthy) => {
            RolloutStatus::Succeeded
        }
        // Steps in flight when it stopped are followed to their end: one
        // that fails is taken back too.
        RolloutStatus::RollingBack
            if !r
                .steps
                .iter()
                .any(|s| matches!(s.phase, StepPhase::RollingBack | StepPhase::Installing)) =>
        {
            if r.count(StepPhase::RollbackFailed) > 0 {
                RolloutStatus::Failed
            } else {
                RolloutStatus::RolledBack
            }
        }
        _ => return,
    };
    let detail = match status {
        RolloutStatus::Succeeded => format!("{} step(s) healthy", r.steps.len()),
        RolloutStatus::RolledBack => {
            format!("{} host(s) rolled back", r.count(StepPhase::RolledBack))
        }
        _ => format!("{} rollback(s) failed", r.count(StepPhase::RollbackFailed)),
    };
    finish(r, status, now, detail, fx);
}

mod report;
#[cfg(test)]
mod tests;
