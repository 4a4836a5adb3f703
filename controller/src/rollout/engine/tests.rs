//! The rollout state machine against scripted events: builders, and the
//! order, resending and report handling of a healthy rollout; failures and
//! deadlines have their own modules.

use super::*;
use crate::rollout::new_rollout;
use cutover_core::fleet::{FleetConfig, RollbackScope};
use cutover_core::rollout::{Plan, RolloutKind, ServicePlan};
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
        batches: crate::testing::moves(hosts),
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
        skipped: vec![],
        migrations: vec![],
        data_migrations: vec![],
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
            CommandId::rollback_of(&step.command_id)
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
            health: Default::default(),
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
    step(&mut r, Event::Pause { now: 1, by: None });
    assert!(sent(&deliver(&mut r, "a", "api", true, false, &on)).is_empty());
    step(&mut r, Event::Resume { now: 2, by: None });
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
    step(&mut r, Event::Abort { now: 4, by: None });
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

mod deadlines;
mod records;
mod rollback;
