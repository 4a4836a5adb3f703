//! The rollout's record stays true: steps in flight at an abort get the
//! outcome their hosts report, every rollout ends with exactly one
//! `rollout.finished`, and operator actions name the operator.

use super::*;

fn kinds<'a>(fx: &'a [Effect], kind: &str) -> Vec<&'a str> {
    fx.iter()
        .filter_map(|e| match e {
            Effect::Log {
                kind: k, detail, ..
            } if *k == kind => Some(detail.as_str()),
            _ => None,
        })
        .collect()
}

fn tick(r: &mut Live, now: i64, on: &HashMap<String, u64>) -> Vec<Effect> {
    step(r, Event::Tick { now, online: on })
}

fn phase(r: &Live, host: &str) -> StepPhase {
    r.steps.iter().find(|s| s.host == host).unwrap().phase
}

#[test]
fn steps_in_flight_when_aborted_get_their_reported_outcome_and_nothing_new_starts() {
    let on = online(&["a", "b", "c"]);
    let mut r = rollout(
        vec![service(
            "api",
            0,
            &[&["a", "b"], &["c"]],
            RollbackScope::Service,
        )],
        false,
    );
    let mut fx = tick(&mut r, 0, &on);
    assert_eq!(sent(&fx), [install("a", "api"), install("b", "api")]);
    fx.extend(step(
        &mut r,
        Event::Abort {
            now: 1,
            by: Some("op"),
        },
    ));
    assert_eq!(r.status, RolloutStatus::Aborted);
    assert!(r.following(), "a and b are in flight");
    assert_eq!(
        kinds(&fx, "rollout.aborted"),
        ["aborted by operator \"op\"; 2 step(s) in flight are followed until they report; hosts stay as they are"]
    );
    let after = deliver(&mut r, "a", "api", true, false, &on);
    assert_eq!(phase(&r, "a"), StepPhase::Healthy);
    assert_eq!(kinds(&after, "step.healthy").len(), 1);
    assert!(sent(&after).is_empty(), "the next batch does not start");
    let after_b = deliver(&mut r, "b", "api", false, false, &on);
    assert_eq!(phase(&r, "b"), StepPhase::Failed);
    assert_eq!(
        r.steps[1].evidence.as_ref().unwrap().detail,
        "HTTP 503",
        "the host's own evidence"
    );
    assert!(sent(&after_b).is_empty(), "no rollback after an abort");
    assert_eq!(phase(&r, "c"), StepPhase::Pending);
    assert_eq!(r.status, RolloutStatus::Aborted);
    assert!(!r.following(), "nothing left in flight");
    fx.extend(after);
    fx.extend(after_b);
    fx.extend(tick(&mut r, 200_000, &on));
    assert_eq!(
        kinds(&fx, "rollout.finished"),
        ["rollout 7 aborted: 0 healthy, 0 failed, 0 rolled back, 2 in flight, 1 not started"]
    );
}

#[test]
fn a_step_in_flight_whose_host_never_reports_after_an_abort_fails_at_its_deadline() {
    let on = online(&["a"]);
    let mut r = rollout(
        vec![service("api", 0, &[&["a"]], RollbackScope::Service)],
        false,
    );
    tick(&mut r, 0, &on);
    step(&mut r, Event::Abort { now: 1, by: None });
    assert!(sent(&tick(&mut r, 2, &HashMap::new())).is_empty());
    assert_eq!(phase(&r, "a"), StepPhase::Installing);
    // A new session: the command is not sent again after an abort.
    let mut again = on.clone();
    again.insert("a".into(), 2);
    assert!(sent(&tick(&mut r, 3, &again)).is_empty());
    let deadline = step_deadline_ms(&r.plan.services[0]);
    let fx = tick(&mut r, deadline + 1, &again);
    assert_eq!(phase(&r, "a"), StepPhase::Failed);
    assert_eq!(r.steps[0].evidence.as_ref().unwrap().gate, "deadline");
    assert_eq!(kinds(&fx, "step.failed").len(), 1);
    assert!(kinds(&fx, "rollout.finished").is_empty());
    assert!(!r.following());
}

#[test]
fn an_abort_puts_back_to_pending_a_step_whose_command_never_left() {
    let mut r = rollout(
        vec![service("api", 0, &[&["a"]], RollbackScope::Service)],
        false,
    );
    // a is offline: its batch started, its command was never sent.
    tick(&mut r, 0, &HashMap::new());
    assert_eq!(phase(&r, "a"), StepPhase::Installing);
    let fx = step(&mut r, Event::Abort { now: 1, by: None });
    assert_eq!(phase(&r, "a"), StepPhase::Pending);
    assert!(!r.following());
    assert_eq!(
        kinds(&fx, "rollout.aborted"),
        ["aborted by an operator; hosts stay as they are"]
    );
    assert_eq!(kinds(&fx, "rollout.finished").len(), 1);
    assert!(sent(&tick(&mut r, 2, &online(&["a"]))).is_empty());
}

/// Every effect of driving `r` with `script`, then more reports and ticks
/// after it ended.
fn run(r: &mut Live, on: &HashMap<String, u64>, script: &[(&str, bool, bool)]) -> Vec<Effect> {
    let mut fx = tick(r, 0, on);
    for &(host, ok, rollback) in script {
        fx.extend(deliver(r, host, "api", ok, rollback, on));
    }
    for &(host, ok, rollback) in script {
        fx.extend(deliver(r, host, "api", ok, rollback, on));
    }
    fx.extend(tick(r, 1_000_000, on));
    fx
}

#[test]
fn every_path_to_a_final_status_logs_exactly_one_rollout_finished() {
    let on = online(&["a", "b"]);
    let two = |no_rollback| {
        rollout(
            vec![service("api", 0, &[&["a"], &["b"]], RollbackScope::Service)],
            no_rollback,
        )
    };
    // Succeeded.
    let mut r = two(false);
    let fx = run(&mut r, &on, &[("a", true, false), ("b", true, false)]);
    assert_eq!(r.status, RolloutStatus::Succeeded);
    assert_eq!(
        kinds(&fx, "rollout.finished"),
        ["rollout 7 succeeded: 2 step(s) healthy"]
    );
    // RolledBack.
    let mut r = two(false);
    let fx = run(&mut r, &on, &[("a", false, false), ("a", true, true)]);
    assert_eq!(r.status, RolloutStatus::RolledBack);
    assert_eq!(
        kinds(&fx, "rollout.finished"),
        ["rollout 7 rolled_back: 1 host(s) rolled back"]
    );
    // A rollback that failed: Failed.
    let mut r = two(false);
    let fx = run(&mut r, &on, &[("a", false, false), ("a", false, true)]);
    assert_eq!(r.status, RolloutStatus::Failed);
    assert_eq!(
        kinds(&fx, "rollout.finished"),
        ["rollout 7 failed: 1 rollback(s) failed"]
    );
    // --no-rollback: Failed where it stopped.
    let mut r = two(true);
    let fx = run(&mut r, &on, &[("a", false, false)]);
    assert_eq!(r.status, RolloutStatus::Failed);
    assert_eq!(
        kinds(&fx, "rollout.finished"),
        ["rollout 7 failed: api failed at the canary on a; stopped; a left in place for inspection (--no-rollback)"]
    );
    // A rollback past its deadline: Failed.
    let mut r = two(false);
    let mut fx = run(&mut r, &on, &[("a", false, false)]);
    assert_eq!(r.status, RolloutStatus::Failed, "the rollback expired");
    fx.extend(tick(&mut r, 2_000_000, &on));
    assert_eq!(kinds(&fx, "rollout.finished").len(), 1);
    // Aborted, while paused.
    let mut r = two(false);
    let mut fx = tick(&mut r, 0, &on);
    fx.extend(deliver(&mut r, "a", "api", true, false, &on));
    fx.extend(step(&mut r, Event::Pause { now: 1, by: None }));
    fx.extend(step(&mut r, Event::Abort { now: 2, by: None }));
    fx.extend(step(&mut r, Event::Abort { now: 3, by: None }));
    fx.extend(deliver(&mut r, "b", "api", true, false, &on));
    assert_eq!(r.status, RolloutStatus::Aborted);
    assert_eq!(kinds(&fx, "rollout.finished").len(), 1);
    // The controller cannot drive it.
    let mut r = two(false);
    let mut fx = tick(&mut r, 0, &on);
    for now in [1, 2] {
        fx.extend(step(
            &mut r,
            Event::Fault {
                now,
                reason: "broken".into(),
            },
        ));
    }
    assert_eq!(r.status, RolloutStatus::Failed);
    assert_eq!(kinds(&fx, "rollout.finished").len(), 1);
}

#[test]
fn pause_resume_and_abort_name_the_operator() {
    let on = online(&["a", "b"]);
    let mut r = rollout(
        vec![service("api", 0, &[&["a"], &["b"]], RollbackScope::Service)],
        false,
    );
    tick(&mut r, 0, &on);
    let by = Some("alice");
    let mut fx = step(&mut r, Event::Pause { now: 1, by });
    fx.extend(step(&mut r, Event::Resume { now: 2, by }));
    fx.extend(step(&mut r, Event::Abort { now: 3, by }));
    assert_eq!(
        kinds(&fx, "rollout.paused"),
        ["paused by operator \"alice\"; steps in flight finish"]
    );
    assert_eq!(
        kinds(&fx, "rollout.resumed"),
        ["resumed by operator \"alice\""]
    );
    assert!(
        kinds(&fx, "rollout.aborted")[0].starts_with("aborted by operator \"alice\";"),
        "{fx:?}"
    );
}
