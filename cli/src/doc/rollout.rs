//! Rollouts, their steps and failures, and events, as `-o json` prints
//! them (`docs/json/rollout*.schema.json`, `event.schema.json`).

use serde::Serialize;

use cutover_core::rollout::{
    EventView, Evidence, Failure, HostTarget, Plan, Rollout, RolloutDetail, RolloutSummary, Step,
    StepPhase, LAST_KNOWN_GOOD,
};
use cutover_core::views::ContentIdentity;

use super::{at, at_always, id};

/// A rollout's release: `null` when each host goes to its own last
/// known-good one.
fn release(r: &str) -> Option<&str> {
    (r != LAST_KNOWN_GOOD).then_some(r)
}

#[derive(Serialize)]
pub struct FailureDoc<'a> {
    service: &'a str,
    host: &'a str,
    /// 0: the canary.
    batch: usize,
    boundary: &'a str,
    /// What the rollout did next (`rolling_back`, ...).
    action: cutover_core::rollout::StopAction,
    message: &'a str,
    evidence: &'a Evidence,
}

impl<'a> FailureDoc<'a> {
    pub fn of(f: &'a Failure) -> FailureDoc<'a> {
        FailureDoc {
            service: &f.service,
            host: &f.host,
            batch: f.batch,
            boundary: &f.boundary,
            action: f.next,
            message: &f.action,
            evidence: &f.evidence,
        }
    }
}

#[derive(Serialize)]
pub struct StepDoc<'a> {
    service: &'a str,
    host: &'a str,
    level: usize,
    batch: usize,
    phase: &'static str,
    command_id: &'a str,
    /// While the step is in flight: since when its current command's
    /// clock runs (sent, or waiting for an offline host since its batch
    /// began); `null` otherwise.
    in_flight_since: Option<String>,
    session: Option<String>,
    sends: u32,
    finished_at: Option<String>,
    evidence: Option<&'a Evidence>,
    from: Option<&'a ContentIdentity>,
    to: Option<&'a HostTarget>,
}

impl<'a> StepDoc<'a> {
    fn of(s: &'a Step) -> StepDoc<'a> {
        StepDoc {
            service: &s.service,
            host: &s.host,
            level: s.level,
            batch: s.batch,
            phase: s.phase.as_str(),
            command_id: &s.command_id,
            in_flight_since: matches!(s.phase, StepPhase::Installing | StepPhase::RollingBack)
                .then_some(s.sent_ms)
                .flatten()
                .and_then(at),
            session: s.session.map(id),
            sends: s.sends,
            finished_at: s.finished_ms.and_then(at),
            evidence: s.evidence.as_ref(),
            from: s.from.as_deref(),
            to: s.to.as_deref(),
        }
    }
}

/// `rollout pause|resume|abort`, and the rollout in `rollout show`,
/// `upgrade` and `rollback`.
#[derive(Serialize)]
pub struct RolloutDoc<'a> {
    id: String,
    kind: &'static str,
    release: Option<&'a str>,
    status: &'static str,
    no_rollback: bool,
    created_at: String,
    updated_at: String,
    finished_at: Option<String>,
    steps_done: usize,
    steps_total: usize,
    failure: Option<FailureDoc<'a>>,
    plan: &'a Plan,
    steps: Vec<StepDoc<'a>>,
}

impl<'a> RolloutDoc<'a> {
    pub fn of(r: &'a Rollout) -> RolloutDoc<'a> {
        let (done, total) = r.progress();
        RolloutDoc {
            id: id(r.id),
            kind: r.kind.as_str(),
            release: release(&r.release),
            status: r.status.as_str(),
            no_rollback: r.no_rollback,
            created_at: at_always(r.created_ms),
            updated_at: at_always(r.updated_ms),
            finished_at: r.finished_ms.and_then(at),
            steps_done: done,
            steps_total: total,
            failure: r.failure.as_ref().map(FailureDoc::of),
            plan: &r.plan,
            steps: r.steps.iter().map(StepDoc::of).collect(),
        }
    }
}

/// One line of `rollout list`.
#[derive(Serialize)]
pub struct SummaryDoc<'a> {
    id: String,
    kind: &'static str,
    release: Option<&'a str>,
    services: &'a [String],
    status: &'static str,
    steps_done: usize,
    steps_total: usize,
    created_at: String,
    updated_at: String,
    finished_at: Option<String>,
    failure: Option<FailureDoc<'a>>,
}

impl<'a> SummaryDoc<'a> {
    pub fn of(r: &'a RolloutSummary) -> SummaryDoc<'a> {
        SummaryDoc {
            id: id(r.id),
            kind: r.kind.as_str(),
            release: release(&r.release),
            services: &r.services,
            status: r.status.as_str(),
            steps_done: r.steps_done,
            steps_total: r.steps,
            created_at: at_always(r.created_ms),
            updated_at: at_always(r.updated_ms),
            finished_at: r.finished_ms.and_then(at),
            failure: r.failure.as_ref().map(FailureDoc::of),
        }
    }
}

/// One event: an element of `events`, a line of `events --follow`.
#[derive(Serialize)]
pub struct EventDoc<'a> {
    id: String,
    at: String,
    kind: &'a str,
    host: Option<&'a str>,
    rollout: Option<String>,
    detail: &'a str,
}

impl<'a> EventDoc<'a> {
    pub fn of(e: &'a EventView) -> EventDoc<'a> {
        EventDoc {
            id: id(e.id),
            at: at_always(e.at_ms),
            kind: &e.kind,
            host: e.host.as_deref(),
            rollout: e.rollout.map(id),
            detail: &e.detail,
        }
    }
}

/// `rollout show`: the rollout and its events.
#[derive(Serialize)]
pub struct DetailDoc<'a> {
    rollout: RolloutDoc<'a>,
    events: Vec<EventDoc<'a>>,
}

impl<'a> DetailDoc<'a> {
    pub fn of(d: &'a RolloutDetail) -> DetailDoc<'a> {
        DetailDoc {
            rollout: RolloutDoc::of(&d.rollout),
            events: d.events.iter().map(EventDoc::of).collect(),
        }
    }
}

/// What `upgrade` and `rollback` started: the plan, and the rollout
/// (`null` when no host needed to move).
#[derive(Serialize)]
pub struct StartedDoc<'a> {
    plan: &'a Plan,
    rollout: Option<RolloutDoc<'a>>,
}

impl<'a> StartedDoc<'a> {
    pub fn of(plan: &'a Plan, rollout: Option<&'a Rollout>) -> StartedDoc<'a> {
        StartedDoc {
            plan,
            rollout: rollout.map(RolloutDoc::of),
        }
    }
}

/// One line of `rollout watch -o json`: an event as it is stored, or the
/// rollout's progress when it changes; the last line is a progress line
/// with `final: true`. `upgrade`/`rollback --wait` start with the line
/// that says what started (its only line when nothing had to move).
#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum WatchLine<'a> {
    Started(StartedDoc<'a>),
    Event(EventDoc<'a>),
    Progress(ProgressDoc<'a>),
}

#[derive(Serialize)]
pub struct ProgressDoc<'a> {
    rollout: String,
    status: &'static str,
    #[serde(rename = "final")]
    ended: bool,
    steps_done: usize,
    steps_total: usize,
    /// What it waits for, in words (`null` when nothing in particular).
    waiting_on: Option<String>,
    failure: Option<FailureDoc<'a>>,
}

impl<'a> ProgressDoc<'a> {
    pub fn of(r: &'a Rollout, waiting_on: Option<String>) -> ProgressDoc<'a> {
        let (done, total) = r.progress();
        ProgressDoc {
            rollout: id(r.id),
            status: r.status.as_str(),
            ended: r.settled(),
            steps_done: done,
            steps_total: total,
            waiting_on,
            failure: r.failure.as_ref().map(FailureDoc::of),
        }
    }
}

#[cfg(test)]
mod tests {
    use cutover_core::rollout::{
        Plan, Rollout, RolloutKind, RolloutStatus, Step, StepPhase, LAST_KNOWN_GOOD,
    };

    fn step(host: &str, phase: StepPhase, sent_ms: Option<i64>) -> Step {
        Step {
            service: "api".into(),
            host: host.into(),
            level: 0,
            batch: 0,
            phase,
            command_id: format!("r7-api-{host}"),
            sent_ms,
            session: Some(u64::MAX),
            sends: 1,
            finished_ms: None,
            evidence: None,
            from: None,
            to: None,
        }
    }

    fn aborted_with_one_step_in_flight() -> Rollout {
        Rollout {
            id: 1 << 60,
            kind: RolloutKind::Rollback,
            release: LAST_KNOWN_GOOD.into(),
            status: RolloutStatus::Aborted,
            no_rollback: false,
            created_ms: 1_764_600_000_000,
            updated_ms: 1_764_600_000_500,
            finished_ms: Some(1_764_600_000_500),
            plan: Plan {
                release: LAST_KNOWN_GOOD.into(),
                services: Vec::new(),
                carried: Vec::new(),
                offline: Vec::new(),
                skipped: Vec::new(),
                migrations: Vec::new(),
                data_migrations: Vec::new(),
            },
            steps: vec![
                step("h1", StepPhase::Healthy, Some(1_764_600_000_100)),
                step("h2", StepPhase::Installing, Some(1_764_600_000_200)),
            ],
            failure: None,
        }
    }

    #[test]
    fn an_aborted_rollout_with_a_step_in_flight_is_not_final_until_the_step_reports() {
        let mut r = aborted_with_one_step_in_flight();
        let line =
            serde_json::to_value(super::WatchLine::Progress(super::ProgressDoc::of(&r, None)))
                .unwrap();
        assert_eq!(
            (&line["type"], &line["status"], &line["final"]),
            (&"progress".into(), &"aborted".into(), &false.into())
        );
        r.steps[1].phase = StepPhase::Healthy;
        let line = serde_json::to_value(super::ProgressDoc::of(&r, None)).unwrap();
        assert_eq!(line["final"], true);
    }

    #[test]
    fn a_rollout_document_has_string_ids_rfc3339_instants_and_a_null_per_host_release() {
        let r = aborted_with_one_step_in_flight();
        let doc = serde_json::to_value(super::RolloutDoc::of(&r)).unwrap();
        assert_eq!(doc["id"], "1152921504606846976");
        assert_eq!(doc["kind"], "rollback");
        assert_eq!(doc["release"], serde_json::Value::Null);
        assert_eq!(doc["plan"]["release"], serde_json::Value::Null);
        assert_eq!(doc["created_at"], "2025-12-01T14:40:00Z");
        assert_eq!(doc["finished_at"], "2025-12-01T14:40:00.5Z");
        assert_eq!(
            (doc["steps_done"].as_u64(), doc["steps_total"].as_u64()),
            (Some(1), Some(2))
        );
        let (done, flying) = (&doc["steps"][0], &doc["steps"][1]);
        assert_eq!(
            done["in_flight_since"],
            serde_json::Value::Null,
            "a step that ended is not in flight"
        );
        assert_eq!(flying["in_flight_since"], "2025-12-01T14:40:00.2Z");
        assert_eq!(flying["phase"], "installing");
        assert_eq!(flying["session"], u64::MAX.to_string());
    }
}
