//! The rollout store against a real SQLite file: saves, loads, rows an
//! older controller wrote, unreadable rows, limits and conflicts.

use super::*;

fn rollout(id: u64, services: &[&str]) -> Rollout {
    let mut r = crate::rollout::new_rollout(
        id,
        RolloutKind::Upgrade,
        Plan {
            release: "1.0.0".into(),
            services: vec![],
            carried: vec![],
            offline: vec![],
            skipped: vec![],
            migrations: vec![],
            data_migrations: vec![],
        },
        false,
        1,
    );
    // Only the names matter for conflicts.
    let fleet = cutover_core::fleet::FleetConfig::parse(
        "f",
        "[services.x]\nhosts=[\"h\"]\nrunner=\"systemd\"\nunit=\"x\"\n",
    )
    .unwrap();
    for s in services {
        r.plan.services.push(cutover_core::rollout::ServicePlan {
            service: s.to_string(),
            level: 0,
            target: Default::default(),
            sha256: cutover_core::Sha256Digest::of(b""),
            size: 0,
            batches: vec![],
            unchanged: vec![],
            config: fleet.services["x"].clone(),
            image: None,
            swap_back: false,
        });
    }
    r
}

/// A rollout of service "api" over `hosts`, one batch each.
fn with_steps(id: u64, hosts: &[&str]) -> Rollout {
    let mut plan = rollout(id, &["api"]).plan;
    plan.services[0].batches = hosts
        .iter()
        .map(|h| {
            vec![cutover_core::rollout::HostMove {
                host: h.to_string(),
                from: None,
                to: None,
            }]
        })
        .collect();
    crate::rollout::new_rollout(id, RolloutKind::Upgrade, plan, false, 1)
}

#[test]
fn a_save_writes_the_fields_and_the_changed_steps_and_reads_back_whole() {
    use cutover_core::rollout::StepPhase;
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(&dir.path().join("state.db")).unwrap();
    let mut r = s
        .create_rollout(|id| with_steps(id, &["a", "b", "c"]))
        .unwrap();
    assert_eq!(s.rollout(r.id).unwrap().as_ref(), Some(&r));
    r.steps[1].phase = StepPhase::Installing;
    r.steps[1].sent_ms = Some(5);
    r.steps[1].session = Some(77);
    r.steps[1].sends = 2;
    r.steps[1].evidence = Some(Evidence {
        gate: "health".into(),
        detail: "HTTP 503".into(),
        status_code: Some(503),
        ..Evidence::default()
    });
    r.status = RolloutStatus::RollingBack;
    r.updated_ms = 5;
    s.save_rollout(&RolloutSave::new(&r, &[1], vec![]).unwrap())
        .unwrap();
    assert_eq!(s.rollout(r.id).unwrap().as_ref(), Some(&r));
    // A step the save does not name is not written.
    let stored = r.clone();
    r.steps[2].phase = StepPhase::Healthy;
    s.save_rollout(&RolloutSave::new(&r, &[], vec![]).unwrap())
        .unwrap();
    assert_eq!(s.rollout(r.id).unwrap().unwrap().steps, stored.steps);
    assert_eq!(s.unfinished_rollouts().unwrap().len(), 1);
    // Step 0 is Pending, 1 Installing, 2 (as stored) Pending.
    let list = s.rollout_summaries(10).unwrap();
    assert_eq!((list[0].steps_done, list[0].steps), (0, 3));
    r.steps[1].phase = StepPhase::Healthy;
    s.save_rollout(&RolloutSave::new(&r, &[1, 2], vec![]).unwrap())
        .unwrap();
    let list = s.rollout_summaries(10).unwrap();
    assert_eq!((list[0].steps_done, list[0].steps), (2, 3));
    assert_eq!(list[0].status, RolloutStatus::RollingBack);
    assert_eq!(list[0].services, ["api"]);
}

#[test]
fn rollouts_stored_whole_by_an_older_controller_read_back_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let r = with_steps(4, &["a", "b"]);
    {
        // Schema 2: each rollout one JSON document.
        let c = Connection::open(&path).unwrap();
        c.execute_batch(super::super::MIGRATIONS[0]).unwrap();
        c.execute_batch(super::super::MIGRATIONS[1]).unwrap();
        c.pragma_update(None, "user_version", 2).unwrap();
        c.execute(
            "INSERT INTO rollouts (id, status, release, services, created_at, updated_at, state)
             VALUES (4, 'Running', '1.0.0', 'api', 1, 1, ?1)",
            [serde_json::to_string(&r).unwrap()],
        )
        .unwrap();
    }
    let s = Store::open(&path).unwrap();
    assert_eq!(s.rollout(4).unwrap(), Some(r.clone()));
    let unfinished: Vec<Rollout> = s
        .unfinished_rollouts()
        .unwrap()
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(unfinished, vec![r]);
    let list = s.rollout_summaries(10).unwrap();
    assert_eq!((list[0].id, list[0].steps_done, list[0].steps), (4, 0, 2));
}

#[test]
fn an_unreadable_unfinished_rollout_is_named_and_kept_and_the_others_still_load() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(&dir.path().join("state.db")).unwrap();
    let bad = s.create_rollout(|id| with_steps(id, &["a"])).unwrap();
    let good = s
        .create_rollout(|id| {
            let mut r = with_steps(id, &["b"]);
            r.plan.services[0].service = "web".into();
            crate::rollout::new_rollout(id, r.kind, r.plan, false, 1)
        })
        .unwrap();
    s.with(|c| {
        c.execute(
            "UPDATE rollouts SET plan = '{not json' WHERE id = ?1",
            [bad.id],
        )?;
        Ok(())
    })
    .unwrap();
    let loaded = s.unfinished_rollouts().unwrap();
    assert_eq!(loaded.len(), 2);
    let e = loaded[0].as_ref().unwrap_err().to_string();
    assert!(
        e.contains(&format!(
            "rollout {} in the store cannot be read (its plan)",
            bad.id
        )),
        "{e}"
    );
    assert_eq!(loaded[1].as_ref().unwrap(), &good);
    // Kept as it was: still there, still unfinished.
    let plan: String = s
        .with(|c| {
            Ok(
                c.query_row("SELECT plan FROM rollouts WHERE id = ?1", [bad.id], |r| {
                    r.get(0)
                })?,
            )
        })
        .unwrap();
    assert_eq!(plan, "{not json");
    assert!(s.rollout_moves(good.id, "web").unwrap());
    assert!(!s.rollout_moves(good.id, "api").unwrap());
    assert!(!s.rollout_moves(99, "web").unwrap());
}

#[test]
fn a_limit_too_large_for_sql_stays_a_limit() {
    assert_eq!(sql_limit(usize::MAX), i64::MAX);
    assert_eq!(sql_limit(3), 3);
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(&dir.path().join("state.db")).unwrap();
    for name in ["a", "b"] {
        s.create_rollout(|id| rollout(id, &[name])).unwrap();
    }
    assert_eq!(s.rollout_summaries(usize::MAX).unwrap().len(), 2);
    assert_eq!(s.rollout_summaries(1).unwrap().len(), 1);
    assert_eq!(s.events(None, 1).unwrap().len(), 1);
}

#[test]
fn a_second_rollout_of_a_busy_service_is_refused_until_the_first_ends() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(&dir.path().join("state.db")).unwrap();
    let mut first = s.create_rollout(|id| rollout(id, &["api", "db"])).unwrap();
    assert_eq!(first.id, 1);
    let e = s
        .create_rollout(|id| rollout(id, &["db"]))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("rollout 1 (running) is already moving service \"db\""),
        "{e}"
    );
    assert_eq!(s.create_rollout(|id| rollout(id, &["web"])).unwrap().id, 2);
    first.status = RolloutStatus::Succeeded;
    let save = RolloutSave::new(
        &first,
        &[],
        vec![LogLine {
            kind: "k".into(),
            host: None,
            detail: "done".into(),
        }],
    )
    .unwrap();
    s.save_rollout(&save).unwrap();
    assert_eq!(s.create_rollout(|id| rollout(id, &["db"])).unwrap().id, 3);
    assert_eq!(s.unfinished_rollouts().unwrap().len(), 2);
    let ev = s.events(Some(1), 10).unwrap();
    assert_eq!(
        ev.iter().map(|e| e.kind.as_str()).collect::<Vec<_>>(),
        ["rollout.created", "k"]
    );
}

#[test]
fn rollout_ids_past_what_sqlite_holds_are_not_found_rather_than_errors() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(&dir.path().join("state.db")).unwrap();
    s.create_rollout(|id| rollout(id, &["api"])).unwrap();
    for id in [i64::MAX as u64 + 1, u64::MAX] {
        assert!(s.events(Some(id), 10).unwrap().is_empty());
        assert!(s.rollout(id).unwrap().is_none());
        assert!(!s.rollout_moves(id, "api").unwrap());
    }
    assert!(s.events(Some(i64::MAX as u64), 10).unwrap().is_empty());
    assert!(s.rollout(i64::MAX as u64).unwrap().is_none());
    assert!(s.rollout_moves(1, "api").unwrap());
    assert_eq!(s.events(Some(1), 10).unwrap().len(), 1);
}
