//! The driver against a real controller (real SQLite store, real PKI
//! files) with no agents: what one rollout's fault does to the others.

use super::reports::{known_inventories, late_id_fits, on_reports, shown, LOGGED_ID};
use super::*;
use crate::testing::{controller, plan};
use cutover_core::rollout::{RolloutKind, RolloutStatus, StepPhase};
use cutover_core::views::InstalledService;

mod persisted;

#[test]
fn long_command_ids_are_shortened_in_logs_on_a_character_boundary() {
    let id = "é".repeat(200);
    let s = shown(&id);
    assert!(
        s.starts_with(&format!("\"{}\"", "é".repeat(LOGGED_ID / 2))),
        "{s}"
    );
    assert!(s.ends_with("… (400 bytes)"), "{s}");
    assert_eq!(shown("r1-api-h1"), "\"r1-api-h1\"");
}

#[test]
fn a_command_id_with_terminal_control_characters_is_logged_escaped_on_one_line() {
    // A clear-screen, a CSI (C1) and a bidi override, cut short too.
    let id = format!("r1-api\x1b[2J\u{9b}31m\u{202e}\n{}", "x".repeat(1000));
    let s = shown(&id);
    assert!(
        s.starts_with(r#""r1-api\u{1b}[2J\u{9b}31m\u{202e}\nxxx"#),
        "{s}"
    );
    assert!(s.ends_with(&format!("… ({} bytes)", id.len())), "{s}");
    assert!(
        !s.chars().any(|c| c.is_control() || c == '\u{202e}'),
        "{s:?}"
    );
}

fn report(id: &str) -> Report {
    Report {
        command_id: id.into(),
        service: "api".into(),
        ok: true,
        evidence: None,
        installed: InstalledService {
            name: "api".into(),
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

#[test]
fn a_late_report_fits_only_the_id_its_rollout_gave_that_host_and_service() {
    assert!(late_id_fits(3, "h1", &report("r3-api-h1")));
    assert!(late_id_fits(3, "h1", &report("r3-api-h1-rollback")));
    assert!(
        !late_id_fits(3, "h1", &report("r3-api-h2")),
        "another host's"
    );
    assert!(!late_id_fits(3, "h1", &report("r3-api-h1-x")));
    assert!(!late_id_fits(4, "h1", &report("r3-api-h1")));
}

#[test]
fn backoff_doubles_to_its_cap_and_counts_failures() {
    let mut r = Retry::after(None);
    assert_eq!((r.delay, r.failures), (RETRY_FIRST, 1));
    for _ in 0..20 {
        r = Retry::after(Some(r));
    }
    assert_eq!((r.delay, r.failures), (RETRY_MAX, 21));
}

/// A stored rollout of `service` on host `h1`.
fn stored(c: &Controller, service: &str) -> Rollout {
    let plan = plan(service, &[&["h1"]]);
    c.store
        .create_rollout(|id| crate::rollout::new_rollout(id, RolloutKind::Upgrade, plan, false, 1))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_while_stepping_one_rollout_fails_it_alone_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let c = controller(dir.path());
    let p = ControllerPort(c.clone());
    let first = stored(&c, "api");
    let second = stored(&c, "web");
    let mut active: Active = HashMap::new();
    admit(&p, &mut active, first.clone()).await;
    admit(&p, &mut active, second.clone()).await;
    assert_eq!(active.len(), 2);
    // The step of the first rollout panics half-way through changing it.
    let result = drive(&p, &mut active, first.id, false, |live| {
        let _ = engine::step(live, Event::Abort { now: 9, by: None });
        panic!("boom in the engine")
    })
    .await;
    assert!(result.is_ok(), "{result:?}");
    assert!(!active.contains_key(&first.id), "a failed rollout is done");
    let r = c.store.rollout(first.id).unwrap().unwrap();
    assert_eq!(r.status, RolloutStatus::Failed, "not the half-made aborted");
    let events = c.store.events(Some(first.id), 10).unwrap();
    assert!(
        events.iter().any(|e| e.kind == "rollout.finished"
            && e.detail
                .contains("stepping it panicked (boom in the engine)")),
        "{events:?}"
    );
    // The other rollout is still driven and its actions stored.
    let paused = control(&p, &mut active, second.id, Action::Pause, None)
        .await
        .unwrap();
    assert_eq!(paused.status, RolloutStatus::Paused);
    assert_eq!(
        c.store.rollout(second.id).unwrap().unwrap().status,
        RolloutStatus::Paused
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_action_that_cannot_be_stored_is_refused_and_nothing_changes() {
    let dir = tempfile::tempdir().unwrap();
    let c = controller(dir.path());
    let p = ControllerPort(c.clone());
    let r = stored(&c, "api");
    let mut active: Active = HashMap::new();
    admit(&p, &mut active, r.clone()).await;
    c.store
        .with(|conn| {
            conn.execute_batch(
                "CREATE TRIGGER full BEFORE UPDATE ON rollouts BEGIN SELECT RAISE(FAIL, 'database or disk is full'); END;",
            )?;
            Ok(())
        })
        .unwrap();
    let e = control(&p, &mut active, r.id, Action::Abort, None)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(&format!("rollout {}: the abort was not applied", r.id))
            && e.contains("database or disk is full")
            && e.contains("try again"),
        "{e}"
    );
    assert_eq!(
        active[&r.id].live.status,
        RolloutStatus::Running,
        "back to the stored state"
    );
    assert_eq!(
        c.store.rollout(r.id).unwrap().unwrap().status,
        RolloutStatus::Running
    );
    c.store
        .with(|conn| {
            conn.execute_batch("DROP TRIGGER full;")?;
            Ok(())
        })
        .unwrap();
    let aborted = control(&p, &mut active, r.id, Action::Abort, None)
        .await
        .unwrap();
    assert_eq!(aborted.status, RolloutStatus::Aborted);
    assert_eq!(
        c.store.rollout(r.id).unwrap().unwrap().status,
        RolloutStatus::Aborted
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_answering_no_known_command_change_nothing_stored() {
    let dir = tempfile::tempdir().unwrap();
    let c = controller(dir.path());
    let p = ControllerPort(c.clone());
    let r = stored(&c, "api");
    let mut active: Active = HashMap::new();
    admit(&p, &mut active, r.clone()).await;
    let (tx, mut rx) = mpsc::channel(8);
    let id = r.id;
    on_reports(
        &p,
        &mut active,
        &tx,
        vec![
            // h2's command id, sent by h1: not h1's to answer.
            ("h1".into(), report(&format!("r{id}-api-h2"))),
            ("h1".into(), report("garbage")),
            ("h1".into(), report(&format!("r{id}-api-h1-x"))),
            // A rollout that does not exist, in the shape a real id has.
            ("h2".into(), report("r999-api-h2")),
        ],
    )
    .await;
    let batch = rx.try_recv().unwrap();
    assert_eq!(
        batch
            .iter()
            .map(|i| (i.host.as_str(), i.late_of))
            .collect::<Vec<_>>(),
        [("h2", Some(999))],
        "only the one shaped like a late answer goes on, to be checked"
    );
    assert!(known_inventories(&c.store, batch).unwrap().is_empty());
    let d = &active[&id];
    assert!(d.held.is_empty());
    let stored_now = c.store.rollout(id).unwrap().unwrap();
    assert_eq!(stored_now.status, RolloutStatus::Running);
    assert_eq!(stored_now.steps, active[&id].live.steps);
    // The report h1's command asked for does count, and is stored.
    on_reports(
        &p,
        &mut active,
        &tx,
        vec![("h1".into(), report(&format!("r{id}-api-h1")))],
    )
    .await;
    let batch = rx.try_recv().unwrap();
    assert_eq!(known_inventories(&c.store, batch).unwrap().len(), 1);
    assert_eq!(
        c.store.rollout(id).unwrap().unwrap().status,
        RolloutStatus::Succeeded
    );
    assert!(!active.contains_key(&id));
}

#[test]
fn a_report_sent_again_replaces_the_held_one() {
    let dir = tempfile::tempdir().unwrap();
    let c = controller(dir.path());
    let r = stored(&c, "api");
    let id = r.id;
    let mut d = Driven::new(r);
    // One step: only its install and its rollback answer are kept, the
    // latest of each, in the order they first came.
    for at in 0..100 {
        d.hold("h1".into(), report(&format!("r{id}-api-h1")), at);
        d.hold("h1".into(), report(&format!("r{id}-api-h1-rollback")), at);
    }
    let held: Vec<(String, i64)> = d
        .held
        .iter()
        .map(|h| (h.report.command_id.clone(), h.at))
        .collect();
    assert_eq!(
        held,
        [
            (format!("r{id}-api-h1"), 99),
            (format!("r{id}-api-h1-rollback"), 99)
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_in_flight_at_an_abort_is_followed_through_a_restart_until_its_host_reports() {
    let dir = tempfile::tempdir().unwrap();
    let c = controller(dir.path());
    let p = ControllerPort(c.clone());
    let r = stored(&c, "api");
    let id = r.id;
    let mut active: Active = HashMap::new();
    admit(&p, &mut active, r).await;
    // h1 was online when its batch started: its command went out.
    let on: HashMap<String, u64> = [("h1".to_string(), 1)].into();
    drive(&p, &mut active, id, false, |live| {
        engine::step(
            live,
            Event::Tick {
                now: 1,
                online: &on,
            },
        )
    })
    .await
    .unwrap();
    let aborted = control(&p, &mut active, id, Action::Abort, Some("op"))
        .await
        .unwrap();
    assert_eq!(aborted.status, RolloutStatus::Aborted);
    assert_eq!(aborted.steps[0].phase, StepPhase::Installing);
    assert!(
        active.contains_key(&id),
        "followed while h1's step is in flight"
    );
    let e = control(&p, &mut active, id, Action::Pause, None)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(&format!("rollout {id} already ended aborted")),
        "{e}"
    );

    // The controller restarts: the ended rollout is taken on again.
    let mut active: Active = HashMap::new();
    load(&p, &mut active).await.unwrap();
    assert!(active.contains_key(&id));
    let (tx, _rx) = mpsc::channel(8);
    on_reports(
        &p,
        &mut active,
        &tx,
        vec![("h1".into(), report(&format!("r{id}-api-h1")))],
    )
    .await;
    let r = c.store.rollout(id).unwrap().unwrap();
    assert_eq!(r.status, RolloutStatus::Aborted);
    assert_eq!(r.steps[0].phase, StepPhase::Healthy, "its real outcome");
    assert!(!active.contains_key(&id), "nothing left to follow");
    let events = c.store.events(Some(id), 50).unwrap();
    let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "rollout.created",
            "batch.started",
            "rollout.aborted",
            "rollout.finished",
            "step.healthy"
        ]
    );
    assert!(
        events[2].detail.starts_with("aborted by operator \"op\""),
        "{events:?}"
    );
    // Not taken on again after the next restart.
    let mut active: Active = HashMap::new();
    load(&p, &mut active).await.unwrap();
    assert!(active.is_empty());
}
