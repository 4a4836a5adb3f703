//! The rollout state machine against scripted events.

use super::*;
use crate::rollout::new_rollout;
use cutover_core::fleet::{FleetConfig, RollbackScope};
use cutover_core::rollout::{HostMove, Plan, RolloutKind, ServicePlan};
use cutover_core::views::{ContentIdentity, InstalledService};

fn config(scope: RollbackScope, batch: usize) -> cutover_core::fleet::ServiceConfig {
    let mut f = FleetConfig::parse(
        "f.toml",
        "[services.x]\nhosts=[\"h\"]\nrunner=\"process\"\ncommand=\"x\"\nhealthy_deadline=\"10s\"\n",
    )
    .unwrap();
    let mut c = f.services.remove("x").unwrap();
    c.policy.rollback_scope = scope;
    c.policy.max_parallel = batch;
    c.policy.max_unavailable = batch;
    c
}

fn service(name: &str, level: usize, hosts: &[&[&str]], scope: RollbackScope) -> ServicePlan {
    ServicePlan {
        service: name.into(),
        level,
        target: ContentIdentity {
            release: "2.0.0".into(),
            service_version: "2".into(),
            tarball_sha256: Some(cutover_core::Sha256Digest::of(name.as_bytes())),
            image_id: None,
        },
        sha256: cutover_core::Sha256Digest::of(name.as_bytes()),
        size: 1,
        batches: hosts
            .iter()
            .map(|b| {
                b.iter()
                    .map(|h| HostMove {
                        host: h.to_string(),
                        from: None,
                    })
                    .collect()
            })
            .collect(),
        unchanged: vec![],
        config: config(scope, 2),
        image: None,
        swap_back: false,
    }
}

fn rollout(services: Vec<ServicePlan>, no_rollback: bool) -> Live {
    let plan = Plan {
        release: "2.0.0".into(),
        services,
        carried: vec![],
        offline: vec![],
    };
    Live::new(new_rollout(7, RolloutKind::Upgrade, plan, no_rollback, 0))
}

fn online(hosts: &[&str]) -> HashMap<String, u64> {
    hosts.iter().map(|h| (h.to_string(), 1)).collect()
}

fn sent(fx: &[Effect]) -> Vec<(String, String)> {
    fx.iter()
        .filter_map(|e| match e {
            Effect::Send { host, command } => Some((
                host.clone(),
                match command {
                    Command::Install(c) => format!("install {}", c.service),
                    Command::Rollback(c) => format!("rollback {}", c.service),
                },
            )),
            _ => None,
        })
        .collect()
}

fn report(r: &Rollout, host: &str, service: &str, ok: bool, rollback: bool) -> Report {
    let step = r
        .steps
        .iter()
        .find(|s| s.host == host && s.service == service)
        .unwrap();
    Report {
        command_id: if rollback {
            rollback_id(&step.command_id)
        } else {
            step.command_id.clone()
        },
        service: service.into(),
        ok,
        evidence: (!ok).then(|| Evidence {
            gate: "health".into(),
            detail: "HTTP 503".into(),
            status_code: Some(503),
            ..Evidence::default()
        }),
        installed: InstalledService {
            name: service.into(),
            current: None,
            previous: None,
            state: "running".into(),
        },
        auto_rolled_back: false,
        fetched_bytes: 0,
        restarted: true,
        duration_ms: 1,
    }
}

fn deliver(
    r: &mut Live,
    host: &str,
    service: &str,
    ok: bool,
    rollback: bool,
    on: &HashMap<String, u64>,
) -> Vec<Effect> {
    let rep = report(r, host, service, ok, rollback);
    let mut fx = step(
        r,
        Event::Report {
            now: 10,
            host,
            report: &rep,
        },
    );
    fx.extend(step(
        r,
        Event::Tick {
            now: 10,
            online: on,
        },
    ));
    fx
}

fn install(h: &str, s: &str) -> (String, String) {
    (h.into(), format!("install {s}"))
}

#[test]
fn levels_then_canary_then_batches() {
    let on = online(&["a", "b", "c"]);
    let mut r = rollout(
        vec![
            service("db", 0, &[&["a"], &["b", "c"]], RollbackScope::Service),
            service("api", 1, &[&["a"], &["b", "c"]], RollbackScope::Service),
        ],
        false,
    );
    let fx = step(
        &mut r,
        Event::Tick {
            now: 0,
            online: &on,
        },
    );
    assert_eq!(
        sent(&fx),
        [install("a", "db")],
        "only the canary of level 0"
    );
    let fx = deliver(&mut r, "a", "db", true, false, &on);
    assert_eq!(sent(&fx), [install("b", "db"), install("c", "db")]);
    let fx = deliver(&mut r, "b", "db", true, false, &on);
    assert!(
        sent(&fx).is_empty(),
        "api waits until db is healthy everywhere"
    );
    let fx = deliver(&mut r, "c", "db", true, false, &on);
    assert_eq!(sent(&fx), [install("a", "api")]);
    deliver(&mut r, "a", "api", true, false, &on);
    deliver(&mut r, "b", "api", true, false, &on);
    deliver(&mut r, "c", "api", true, false, &on);
    assert_eq!(r.status, RolloutStatus::Succeeded);
}

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
fn commands_are_resent_on_a_new_session_only() {
    let mut on = online(&["a"]);
    let mut r = rollout(
        vec![service("api", 0, &[&["a"]], RollbackScope::Service)],
        false,
    );
    assert_eq!(
        sent(&step(
            &mut r,
            Event::Tick {
                now: 0,
                online: &on
            }
        ))
        .len(),
        1
    );
    assert!(sent(&step(
        &mut r,
        Event::Tick {
            now: 1,
            online: &on
        }
    ))
    .is_empty());
    on.insert("a".into(), 2);
    let fx = step(
        &mut r,
        Event::Tick {
            now: 2,
            online: &on,
        },
    );
    assert_eq!(
        sent(&fx),
        [install("a", "api")],
        "same command id after a reconnect"
    );
    assert_eq!(r.steps[0].sends, 2);
}

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
fn pause_holds_new_batches_and_resume_continues() {
    let on = online(&["a", "b"]);
    let mut r = rollout(
        vec![service("api", 0, &[&["a"], &["b"]], RollbackScope::Service)],
        false,
    );
    step(
        &mut r,
        Event::Tick {
            now: 0,
            online: &on,
        },
    );
    step(&mut r, Event::Pause { now: 1 });
    assert!(sent(&deliver(&mut r, "a", "api", true, false, &on)).is_empty());
    step(&mut r, Event::Resume { now: 2 });
    assert_eq!(
        sent(&step(
            &mut r,
            Event::Tick {
                now: 3,
                online: &on
            }
        )),
        [install("b", "api")]
    );
    step(&mut r, Event::Abort { now: 4 });
    assert_eq!(r.status, RolloutStatus::Aborted);
    assert!(sent(&deliver(&mut r, "b", "api", true, false, &on)).is_empty());
}

#[test]
fn stale_and_duplicate_reports_change_nothing() {
    let on = online(&["a"]);
    let mut r = rollout(
        vec![service("api", 0, &[&["a"]], RollbackScope::Service)],
        false,
    );
    step(
        &mut r,
        Event::Tick {
            now: 0,
            online: &on,
        },
    );
    let mut stale = report(&r, "a", "api", false, false);
    stale.command_id = "r6-api-a".into();
    step(
        &mut r,
        Event::Report {
            now: 1,
            host: "a",
            report: &stale,
        },
    );
    assert_eq!(r.steps[0].phase, StepPhase::Installing);
    deliver(&mut r, "a", "api", true, false, &on);
    let before = r.rollout().clone();
    r.take_changed();
    deliver(&mut r, "a", "api", true, false, &on);
    assert_eq!(*r.rollout(), before);
    assert!(
        r.take_changed().is_empty(),
        "a repeated report changes nothing"
    );
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

#[test]
fn only_reports_answering_a_command_of_the_rollout_are_expected() {
    let r = rollout(
        vec![service("api", 0, &[&["a"], &["b"]], RollbackScope::Host)],
        false,
    );
    let report = |service: &str, id: &str| Report {
        command_id: id.into(),
        service: service.into(),
        ..report(&r, "a", "api", true, false)
    };
    assert!(r.expects("a", &report("api", "r7-api-a")));
    assert!(r.expects("a", &report("api", "r7-api-a-rollback")));
    assert!(
        !r.expects("a", &report("api", "r7-api-b")),
        "b's command, from a"
    );
    assert!(!r.expects("a", &report("api", "r7-api-a-x")));
    assert!(
        !r.expects("c", &report("api", "r7-api-c")),
        "not in the rollout"
    );
    assert!(
        !r.expects("a", &report("db", "r7-db-a")),
        "not a service of it"
    );
}
