//! Deadlines and bounds: a host that never reports, and configs or clocks
//! far out of range, which must fail a step or the rollout, never panic or
//! wrap.

use super::*;

#[test]
fn a_host_gone_past_the_deadline_fails_its_step() {
    let mut r = rollout(
        vec![service("api", 0, &[&["a"], &["b"]], RollbackScope::Host)],
        false,
    );
    step(
        &mut r,
        Event::Tick {
            now: 0,
            online: &online(&["a", "b"]),
        },
    );
    let deadline = step_deadline_ms(&r.plan.services[0]);
    step(
        &mut r,
        Event::Tick {
            now: deadline,
            online: &online(&["b"]),
        },
    );
    assert_eq!(
        r.status,
        RolloutStatus::Running,
        "not yet past the deadline"
    );
    step(
        &mut r,
        Event::Tick {
            now: deadline + 1,
            online: &online(&["b"]),
        },
    );
    let f = r.failure.as_ref().unwrap();
    assert_eq!(
        (f.host.as_str(), f.evidence.gate.as_str()),
        ("a", "disconnected")
    );
    assert_eq!(r.status, RolloutStatus::RollingBack);
}

#[test]
fn deadlines_from_an_unchecked_config_or_far_off_clocks_cannot_panic() {
    // What an older controller stored unchecked: a deadline of u64::MAX
    // seconds used to overflow `healthy_deadline + 120s` in the driver.
    let mut svc = service("api", 0, &[&["a"], &["b"]], RollbackScope::Host);
    svc.config.healthy_deadline = std::time::Duration::from_secs(u64::MAX);
    assert_eq!(step_deadline_ms(&svc), i64::MAX);
    let mut explicit = svc.clone();
    explicit.config.policy.step_deadline = Some(std::time::Duration::MAX);
    assert_eq!(step_deadline_ms(&explicit), i64::MAX);
    let mut r = rollout(vec![svc], false);
    let all = online(&["a", "b"]);
    step(
        &mut r,
        Event::Tick {
            now: i64::MIN,
            online: &all,
        },
    );
    assert_eq!(r.steps[0].phase, StepPhase::Installing);
    // A tick at the far end of time: the step is not due (its deadline is
    // never), and nothing wraps.
    let fx = step(
        &mut r,
        Event::Tick {
            now: i64::MAX,
            online: &all,
        },
    );
    assert!(fx.is_empty(), "{fx:?}");
    assert_eq!(r.steps[0].phase, StepPhase::Installing);
    assert_eq!(r.status, RolloutStatus::Running);
}

#[test]
fn a_step_sent_at_a_far_off_time_expires_without_wrapping() {
    let mut r = rollout(
        vec![service("api", 0, &[&["a"]], RollbackScope::Host)],
        true,
    );
    let all = online(&["a"]);
    step(
        &mut r,
        Event::Tick {
            now: i64::MIN,
            online: &all,
        },
    );
    // now - sent overflows an i64: saturated, it is far past the deadline.
    step(
        &mut r,
        Event::Tick {
            now: i64::MAX,
            online: &all,
        },
    );
    assert_eq!(r.steps[0].phase, StepPhase::Failed);
    let e = r.steps[0].evidence.as_ref().unwrap();
    assert_eq!(e.gate, "deadline");
    assert_eq!(e.elapsed_ms, i64::MAX as u64);
    assert_eq!(r.status, RolloutStatus::Failed);
}

#[test]
fn a_rollout_carrying_an_out_of_bounds_config_is_refused_and_ends_failed_with_the_reason() {
    let mut svc = service("api", 0, &[&["a"]], RollbackScope::Host);
    svc.config.healthy_deadline = std::time::Duration::from_secs(u64::MAX);
    let mut r = rollout(vec![svc], false);
    let reason = check_plan(&r).unwrap_err();
    assert!(
        reason.contains(
            "service \"api\": healthy_deadline = \"18446744073709551615s\": must be between"
        ),
        "{reason}"
    );
    let fx = step(
        &mut r,
        Event::Fault {
            now: 5,
            reason: reason.clone(),
        },
    );
    assert_eq!(r.status, RolloutStatus::Failed);
    assert_eq!(r.finished_ms, Some(5));
    assert!(
        matches!(
            &fx[..],
            [Effect::Log { kind: "rollout.finished", detail, .. }] if detail.contains(&reason)
        ),
        "{fx:?}"
    );
    // Final: nothing more happens to it, and a second fault says nothing.
    assert!(step(
        &mut r,
        Event::Tick {
            now: 6,
            online: &online(&["a"])
        }
    )
    .is_empty());
    assert!(step(&mut r, Event::Fault { now: 7, reason }).is_empty());
    let good = rollout(
        vec![service("api", 0, &[&["a"]], RollbackScope::Host)],
        false,
    );
    assert_eq!(check_plan(&good), Ok(()));
}
