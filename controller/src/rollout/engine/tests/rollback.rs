//! A failed step: where the rollout stops, what it takes back in each
//! rollback scope, and what it leaves alone.

use super::*;

#[test]
fn failed_canary_rolls_back_only_the_canary_and_touches_no_one_else() {
    let on = online(&["a", "b", "c"]);
    let mut r = rollout(
        vec![service(
            "api",
            0,
            &[&["a"], &["b", "c"]],
            RollbackScope::Service,
        )],
        false,
    );
    step(
        &mut r,
        Event::Tick {
            now: 0,
            online: &on,
        },
    );
    let fx = deliver(&mut r, "a", "api", false, false, &on);
    assert_eq!(sent(&fx), [("a".to_string(), "rollback api".to_string())]);
    assert_eq!(r.status, RolloutStatus::RollingBack);
    let f = r.failure.as_ref().unwrap();
    assert_eq!((f.host.as_str(), f.boundary.as_str()), ("a", "canary"));
    assert_eq!(f.evidence.status_code, Some(503));
    deliver(&mut r, "a", "api", true, true, &on);
    assert_eq!(r.status, RolloutStatus::RolledBack);
    assert_eq!(r.count(StepPhase::Pending), 2, "b and c never touched");
}

#[test]
fn failure_in_second_batch_rolls_back_every_moved_host_of_the_service() {
    let on = online(&["a", "b", "c", "d"]);
    let mut r = rollout(
        vec![service(
            "api",
            0,
            &[&["a"], &["b", "c"], &["d"]],
            RollbackScope::Service,
        )],
        false,
    );
    step(
        &mut r,
        Event::Tick {
            now: 0,
            online: &on,
        },
    );
    deliver(&mut r, "a", "api", true, false, &on);
    let fx = deliver(&mut r, "c", "api", false, false, &on);
    let mut back = sent(&fx);
    back.sort();
    let want: Vec<_> = ["a", "b", "c"]
        .iter()
        .map(|h| (h.to_string(), "rollback api".to_string()))
        .collect();
    assert_eq!(back, want, "b was in flight: it goes back too");
    for h in ["a", "b", "c"] {
        deliver(&mut r, h, "api", true, true, &on);
    }
    assert_eq!(r.status, RolloutStatus::RolledBack);
    assert_eq!(
        r.steps.iter().find(|s| s.host == "d").unwrap().phase,
        StepPhase::Pending
    );
}

#[test]
fn no_rollback_leaves_the_failed_host_and_ends_failed() {
    let on = online(&["a", "b"]);
    let mut r = rollout(
        vec![service("api", 0, &[&["a"], &["b"]], RollbackScope::Service)],
        true,
    );
    step(
        &mut r,
        Event::Tick {
            now: 0,
            online: &on,
        },
    );
    let fx = deliver(&mut r, "a", "api", false, false, &on);
    assert!(sent(&fx).is_empty());
    assert_eq!(r.status, RolloutStatus::Failed);
    assert!(r.failure.as_ref().unwrap().action.contains("left in place"));
}

#[test]
fn release_scope_takes_back_every_service_the_rollout_moved() {
    let on = online(&["a", "b"]);
    let mut r = rollout(
        vec![
            service("db", 0, &[&["a", "b"]], RollbackScope::Release),
            service("api", 1, &[&["a"], &["b"]], RollbackScope::Release),
        ],
        false,
    );
    step(
        &mut r,
        Event::Tick {
            now: 0,
            online: &on,
        },
    );
    deliver(&mut r, "a", "db", true, false, &on);
    deliver(&mut r, "b", "db", true, false, &on);
    let fx = deliver(&mut r, "a", "api", false, false, &on);
    let mut back = sent(&fx);
    back.sort();
    assert_eq!(
        back,
        [
            ("a".to_string(), "rollback api".to_string()),
            ("a".to_string(), "rollback db".to_string()),
            ("b".to_string(), "rollback db".to_string()),
        ]
    );
}

#[test]
fn host_scope_takes_back_only_the_failed_host() {
    let on = online(&["a", "b", "c"]);
    let mut r = rollout(
        vec![service(
            "api",
            0,
            &[&["a"], &["b", "c"]],
            RollbackScope::Host,
        )],
        false,
    );
    step(
        &mut r,
        Event::Tick {
            now: 0,
            online: &on,
        },
    );
    deliver(&mut r, "a", "api", true, false, &on);
    let fx = deliver(&mut r, "c", "api", false, false, &on);
    assert_eq!(sent(&fx), [("c".to_string(), "rollback api".to_string())]);
    deliver(&mut r, "c", "api", true, true, &on);
    deliver(&mut r, "b", "api", true, false, &on);
    assert_eq!(r.status, RolloutStatus::RolledBack);
    assert_eq!(
        r.count(StepPhase::Healthy),
        2,
        "a and b stay on the new release"
    );
}

/// Regression (fault suite, "host never came back"): a host offline for its
/// whole batch never got its command, so it is not sent a rollback it
/// could never acknowledge, and the rollout ends `RolledBack`, not `Failed`.
#[test]
fn a_host_that_never_received_its_command_is_not_rolled_back() {
    let mut r = rollout(
        vec![service(
            "api",
            0,
            &[&["a"], &["b", "c"]],
            RollbackScope::Service,
        )],
        false,
    );
    let all = online(&["a", "b", "c"]);
    step(
        &mut r,
        Event::Tick {
            now: 0,
            online: &all,
        },
    );
    // c goes away before its batch starts.
    let without_c = online(&["a", "b"]);
    deliver(&mut r, "a", "api", true, false, &without_c);
    deliver(&mut r, "b", "api", true, false, &without_c);
    let deadline = step_deadline_ms(&r.plan.services[0]);
    let fx = step(
        &mut r,
        Event::Tick {
            now: deadline + 100,
            online: &without_c,
        },
    );
    let mut back = sent(&fx);
    back.sort();
    assert_eq!(
        back,
        [
            ("a".to_string(), "rollback api".to_string()),
            ("b".to_string(), "rollback api".to_string())
        ]
    );
    assert_eq!(r.failure.as_ref().unwrap().host, "c");
    deliver(&mut r, "a", "api", true, true, &without_c);
    deliver(&mut r, "b", "api", true, true, &without_c);
    assert_eq!(r.status, RolloutStatus::RolledBack);
}

#[test]
fn a_stop_names_the_first_hosts_it_takes_back_and_counts_the_rest() {
    let hosts: Vec<String> = (0..30).map(|i| format!("h{i:02}")).collect();
    let names: Vec<&str> = hosts.iter().map(String::as_str).collect();
    let on = online(&names);
    let mut r = rollout(
        vec![service(
            "api",
            0,
            &[&names[..1], &names[1..]],
            RollbackScope::Service,
        )],
        false,
    );
    step(
        &mut r,
        Event::Tick {
            now: 0,
            online: &on,
        },
    );
    deliver(&mut r, "h00", "api", true, false, &on);
    let fx = deliver(&mut r, "h01", "api", false, false, &on);
    let stopped = fx
        .iter()
        .find_map(|e| match e {
            Effect::Log {
                kind: "rollout.stopped",
                detail,
                ..
            } => Some(detail.clone()),
            _ => None,
        })
        .unwrap();
    assert!(
        stopped.contains("h00 (api), h01 (api)") && stopped.ends_with("h19 (api) and 10 more"),
        "{stopped}"
    );
    assert_eq!(sent(&fx).len(), 30, "every moved host is taken back");
}

/// Regression: with scope host, a second host of the batch failing after
/// the first one's rollback started was left as it was, and the rollout
/// ended while it was still in flight.
#[test]
fn with_host_scope_a_host_failing_while_the_rollout_rolls_back_is_taken_back_too() {
    let on = online(&["a", "b", "c"]);
    let mut r = rollout(
        vec![service(
            "api",
            0,
            &[&["a"], &["b", "c"]],
            RollbackScope::Host,
        )],
        false,
    );
    step(
        &mut r,
        Event::Tick {
            now: 0,
            online: &on,
        },
    );
    deliver(&mut r, "a", "api", true, false, &on);
    let fx = deliver(&mut r, "c", "api", false, false, &on);
    assert_eq!(sent(&fx), [("c".to_string(), "rollback api".to_string())]);
    deliver(&mut r, "c", "api", true, true, &on);
    // b is still in flight: the rollout waits for it.
    assert_eq!(r.status, RolloutStatus::RollingBack);
    let fx = deliver(&mut r, "b", "api", false, false, &on);
    assert_eq!(sent(&fx), [("b".to_string(), "rollback api".to_string())]);
    deliver(&mut r, "b", "api", true, true, &on);
    assert_eq!(r.status, RolloutStatus::RolledBack);
    assert_eq!(r.count(StepPhase::RolledBack), 2, "b and c");
    assert_eq!(r.count(StepPhase::Healthy), 1, "a stays");
    assert_eq!(
        r.failure.as_ref().unwrap().host,
        "c",
        "the first failure stops it"
    );
}

/// A host of the stopped batch that never got its command (offline when
/// the batch started) is not sent its install when it comes back.
#[test]
fn a_stopped_rollout_never_sends_an_install_that_had_not_gone_out() {
    let all = online(&["a", "b", "c"]);
    let without_b = online(&["a", "c"]);
    let mut r = rollout(
        vec![service(
            "api",
            0,
            &[&["a"], &["b", "c"]],
            RollbackScope::Host,
        )],
        false,
    );
    step(
        &mut r,
        Event::Tick {
            now: 0,
            online: &all,
        },
    );
    deliver(&mut r, "a", "api", true, false, &without_b);
    deliver(&mut r, "c", "api", false, false, &without_b);
    // b comes back while c rolls back: nothing is sent to it.
    let fx = step(
        &mut r,
        Event::Tick {
            now: 10,
            online: &all,
        },
    );
    assert_eq!(sent(&fx), Vec::<(String, String)>::new());
    deliver(&mut r, "c", "api", true, true, &all);
    assert_eq!(r.status, RolloutStatus::RolledBack);
    assert_eq!(r.count(StepPhase::Pending), 1, "b never moved");
}
