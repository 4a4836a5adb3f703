//! Health-gated rollouts of native tarball services on real agents: real
//! processes, real files, real health checks over loopback.

use std::time::Duration;

use cutover_cli::bundle::Floor;
use cutover_tests::sample::{event_index, steps, Svc};
use cutover_tests::{eventually, Fleet};

const HOSTS: [&str; 3] = ["h1", "h2", "h3"];

/// Three online agents and a fleet config running `services` on all.
fn world(services: &[&str], policy: &str) -> Fleet {
    let mut f = Fleet::new();
    f.assign_ports(&HOSTS, services);
    f.start_controller();
    f.start_agents(&HOSTS);
    f.apply_sample_fleet(&HOSTS, services, policy);
    f
}

fn installed_version(f: &Fleet, host: &str, service: &str) -> Option<String> {
    let hosts = f.hosts();
    let services = hosts[host]["services"].as_array()?.clone();
    let s = services.iter().find(|s| s["name"] == service)?;
    s["current"]["release"].as_str().map(String::from)
}

#[test]
fn two_services_with_a_dependency_roll_out_in_order_and_report_versions() {
    let f = world(&["db", "api"], "max_parallel = 2\nmax_unavailable = 2");
    f.sample_release(
        "1.0.0",
        &[
            Svc::new("db", "14.1"),
            Svc::new("api", "2.0").after(&["db"]),
        ],
        Floor::default(),
    );
    let plan = f.cli(&["plan", "--all", "--version", "1.0.0"]).ok().stdout;
    assert!(
        plan.contains("level 0  db") && plan.contains("level 1  api"),
        "{plan}"
    );
    assert!(plan.contains("canary    h1"), "{plan}");
    f.upgrade(&["--all"], "1.0.0", &[]).ok();
    for h in HOSTS {
        assert_eq!(
            f.served_version(h, "db").as_deref(),
            Some("14.1"),
            "db on {h}"
        );
        assert_eq!(
            f.served_version(h, "api").as_deref(),
            Some("2.0"),
            "api on {h}"
        );
    }
    let r = f.last_rollout();
    assert_eq!(r["rollout"]["status"], "succeeded");
    let db_done = event_index(&r, |k, d| k == "step.healthy" && d.starts_with("db:"));
    let api_start = event_index(&r, |k, d| k == "batch.started" && d.starts_with("api:"));
    assert_eq!(db_done.len(), 3);
    assert!(
        db_done.iter().max() < api_start.iter().min(),
        "api started before db was healthy everywhere: {r}"
    );
    // Versions are reported by the agents (inventory), not inferred.
    eventually(Duration::from_secs(10), "inventory reported", || {
        HOSTS
            .iter()
            .all(|h| installed_version(&f, h, "api").as_deref() == Some("1.0.0"))
            .then_some(())
    });
}

fn controller_fetches_of(f: &Fleet, sha: &str) -> usize {
    f.controller_log()
        .lines()
        .filter(|l| l.contains("artifact fetch") && l.contains(sha))
        .count()
}

#[test]
fn an_unchanged_component_is_neither_fetched_nor_restarted() {
    let f = world(&["db", "api"], "max_parallel = 3\nmax_unavailable = 3");
    f.sample_release(
        "1.0.0",
        &[
            Svc::new("db", "14.1"),
            Svc::new("api", "2.0").after(&["db"]),
        ],
        Floor::default(),
    );
    f.upgrade(&["--all"], "1.0.0", &[]).ok();
    let db_pids: Vec<_> = HOSTS
        .iter()
        .map(|h| f.service_pid(h, "db").expect("db pid"))
        .collect();
    let db_sha = f.tarball_sha("1.0.0", "db");
    assert_eq!(controller_fetches_of(&f, &db_sha), 3);

    // Same db bytes, new api.
    f.sample_release(
        "1.1.0",
        &[
            Svc::new("db", "14.1"),
            Svc::new("api", "2.1").after(&["db"]),
        ],
        Floor::default(),
    );
    assert_eq!(f.tarball_sha("1.1.0", "db"), db_sha);
    let plan = f.cli_json(&["plan", "--all", "--version", "1.1.0"]);
    assert_eq!(plan["carried"][0]["service"], "db", "{plan}");
    assert_eq!(plan["services"].as_array().unwrap().len(), 1);
    f.upgrade(&["--all"], "1.1.0", &[]).ok();
    for (h, pid) in HOSTS.iter().zip(&db_pids) {
        assert_eq!(f.service_pid(h, "db"), Some(*pid), "db restarted on {h}");
        assert_eq!(f.served_version(h, "api").as_deref(), Some("2.1"));
    }
    assert_eq!(controller_fetches_of(&f, &db_sha), 3, "db fetched again");
    let r = f.last_rollout();
    assert!(steps(&r, "healthy").iter().all(|(s, _)| s == "api"), "{r}");
}

#[test]
fn failing_canary_is_rolled_back_and_no_other_host_is_touched() {
    let f = world(&["api"], "max_parallel = 2\nmax_unavailable = 2");
    f.sample_release("1.0.0", &[Svc::new("api", "1.0")], Floor::default());
    f.upgrade(&["api"], "1.0.0", &[]).ok();
    let pids: Vec<_> = ["h2", "h3"]
        .iter()
        .map(|h| f.service_pid(h, "api"))
        .collect();
    f.sample_release("1.1.0", &[Svc::new("api", "1.1").sick()], Floor::default());
    let run = f.upgrade(&["api"], "1.1.0", &[]);
    run.fails_with("ended rolled_back");
    for h in HOSTS {
        assert_eq!(f.served_version(h, "api").as_deref(), Some("1.0"), "{h}");
    }
    assert_eq!(
        ["h2", "h3"]
            .iter()
            .map(|h| f.service_pid(h, "api"))
            .collect::<Vec<_>>(),
        pids,
        "h2/h3 restarted"
    );
    let r = f.last_rollout();
    assert_eq!(r["rollout"]["status"], "rolled_back");
    assert_eq!(
        steps(&r, "rolled_back"),
        [("api".to_string(), "h1".to_string())]
    );
    assert_eq!(steps(&r, "pending").len(), 2);
    let id = r["rollout"]["id"].as_str().unwrap().to_string();
    let text = f.cli(&["rollout", "show", &id]).ok().stdout;
    let port = f.port_of("h1", "api");
    for needle in [
        "STOPPED at the canary: service api on host h1".to_string(),
        format!("check     http http://127.0.0.1:{port}/healthz"),
        "HTTP 503, expected 200".into(),
        "status    503".into(),
        "output    unhealthy: release 1.1 cannot reach its database".into(),
        "action    stopped; rolling back (scope service): h1 (api)".into(),
    ] {
        assert!(text.contains(&needle), "show lacks {needle:?}:\n{text}");
    }
    assert!(text.lines().count() < 45, "show is not one screen:\n{text}");
}

/// A check that fails for release 1.1 on the hosts whose `sick_marker`
/// file exists (it runs in the release directory, beside `VERSION`).
fn fleet_with_marker_check(f: &mut Fleet) {
    for h in HOSTS {
        let marker = f.path(&format!("sick-{h}"));
        f.agent_vars
            .entry(h.into())
            .or_default()
            .push(("sick_marker".into(), marker.display().to_string()));
    }
}

#[test]
fn failure_in_the_second_batch_rolls_back_every_moved_host_of_the_service() {
    let mut f = Fleet::new();
    f.assign_ports(&HOSTS, &["api"]);
    fleet_with_marker_check(&mut f);
    f.start_controller();
    f.start_agents(&HOSTS);
    let mut text = cutover_tests::sample::sample_fleet(
        &HOSTS,
        &["api"],
        "max_parallel = 2\nmax_unavailable = 2\nrollback_scope = \"service\"",
    );
    text.push_str("[[services.api.checks]]\nkind = \"exec\"\ncommand = \"/bin/sh\"\nargs = [\"-c\", \"! { test -e ${sick_marker} && grep -q 1.1 VERSION; }\"]\ninterval = \"200ms\"\n");
    f.apply_fleet_text(&text);
    f.sample_release("1.0.0", &[Svc::new("api", "1.0")], Floor::default());
    f.upgrade(&["api"], "1.0.0", &[]).ok();
    f.sample_release("1.1.0", &[Svc::new("api", "1.1")], Floor::default());
    std::fs::write(f.path("sick-h3"), "").unwrap();
    f.upgrade(&["api"], "1.1.0", &[])
        .fails_with("api on h3 failed at the batch 1");
    let r = f.last_rollout();
    let mut back = steps(&r, "rolled_back");
    back.sort();
    assert_eq!(
        back.iter().map(|(_, h)| h.as_str()).collect::<Vec<_>>(),
        HOSTS,
        "{r}"
    );
    assert_eq!(r["rollout"]["failure"]["evidence"]["exit_code"], 1);
    for h in HOSTS {
        assert_eq!(f.served_version(h, "api").as_deref(), Some("1.0"), "{h}");
    }
}

#[test]
fn no_rollback_leaves_the_failed_host_in_place_and_ends_failed() {
    let f = world(&["api"], "max_parallel = 2\nmax_unavailable = 2");
    f.sample_release("1.0.0", &[Svc::new("api", "1.0")], Floor::default());
    f.upgrade(&["api"], "1.0.0", &[]).ok();
    f.sample_release("1.1.0", &[Svc::new("api", "1.1").sick()], Floor::default());
    f.upgrade(&["api"], "1.1.0", &["--no-rollback"])
        .fails_with("ended failed");
    assert_eq!(
        f.served_version("h1", "api").as_deref(),
        Some("1.1"),
        "left for inspection"
    );
    assert_eq!(f.served_version("h2", "api").as_deref(), Some("1.0"));
    let r = f.last_rollout();
    assert_eq!(r["rollout"]["status"], "failed");
    assert_eq!(r["rollout"]["failure"]["action"], "left_for_inspection");
    assert!(r["rollout"]["failure"]["message"]
        .as_str()
        .unwrap()
        .contains("left in place for inspection"));
    // The operator decides: take it back by hand.
    f.cli(&["rollback", "api", "--yes", "--wait"]).ok();
    assert_eq!(f.served_version("h1", "api").as_deref(), Some("1.0"));
}

#[test]
fn compatibility_floor_and_required_intermediate_release_refuse_the_plan() {
    let f = world(&["api"], "");
    f.sample_release("1.0.0", &[Svc::new("api", "1.0")], Floor::default());
    f.upgrade(&["api"], "1.0.0", &[]).ok();
    f.sample_release(
        "3.0.0",
        &[Svc::new("api", "3.0")],
        Floor {
            min_upgrade_from: Some("2.0.0".into()),
            ..Floor::default()
        },
    );
    f.cli(&["plan", "api", "--version", "3.0.0"]).fails_with(
        "host \"h1\" runs release 1.0.0, below this release's compatibility floor 2.0.0",
    );
    f.sample_release(
        "2.5.0",
        &[Svc::new("api", "2.5")],
        Floor {
            requires_intermediate: vec!["2.0.0".into()],
            ..Floor::default()
        },
    );
    f.cli(&["upgrade", "api", "--version", "2.5.0", "--yes"])
        .fails_with(
            "release 2.5.0 requires 2.0.0 to be installed first: upgrade to 2.0.0, then to 2.5.0",
        );
    assert_eq!(
        f.cli_json(&["rollout", "list"]).as_array().unwrap().len(),
        1,
        "nothing started"
    );
}

#[test]
fn pause_holds_the_next_batch_resume_finishes_and_rollback_to_goes_back() {
    let f = world(&["api"], "");
    f.sample_release("1.0.0", &[Svc::new("api", "1.0")], Floor::default());
    f.upgrade(&["api"], "1.0.0", &[]).ok();
    f.sample_release("1.1.0", &[Svc::new("api", "1.1")], Floor::default());
    f.cli(&["upgrade", "api", "--version", "1.1.0", "--yes"])
        .ok();
    f.cli(&["rollout", "pause", "2"]).ok();
    // A second rollout of the same service is refused while this one lives.
    f.cli(&["upgrade", "api", "--version", "1.1.0", "--yes"])
        .fails_with("rollout 2 (paused) is already moving service \"api\"");
    eventually(Duration::from_secs(20), "the canary to finish", || {
        let r = f.rollout(2);
        (steps(&r, "installing").is_empty()).then_some(r)
    });
    std::thread::sleep(Duration::from_secs(2));
    let r = f.rollout(2);
    assert_eq!(r["rollout"]["status"], "paused");
    assert_eq!(
        steps(&r, "pending").len(),
        2,
        "a batch started while paused: {r}"
    );
    f.cli(&["rollout", "resume", "2"]).ok();
    f.cli(&["rollout", "watch", "2"]).ok();
    for h in HOSTS {
        assert_eq!(f.served_version(h, "api").as_deref(), Some("1.1"));
    }
    f.cli(&["rollback", "api", "--to", "1.0.0", "--yes", "--wait"])
        .ok();
    for h in HOSTS {
        assert_eq!(f.served_version(h, "api").as_deref(), Some("1.0"));
    }
    let events = f.cli(&["events", "--rollout", "2"]).ok().stdout;
    assert!(
        events.contains("rollout.paused") && events.contains("rollout.resumed"),
        "{events}"
    );
}

#[test]
fn a_typo_in_the_fleet_config_is_named_and_nothing_is_stored() {
    let f = world(&["api"], "");
    let before = f.cli(&["fleet", "show"]).ok().stdout;
    let bad = f.path("bad-fleet.toml");
    std::fs::write(
        &bad,
        before.replace("max_parallel", "max_paralel").replace(
            "[services.api.policy]\n",
            "[services.api.policy]\nmax_paralel = 2\n",
        ),
    )
    .unwrap();
    let run = f.cli(&["fleet", "apply", bad.to_str().unwrap()]);
    run.fails_with("bad-fleet.toml: line");
    assert!(
        run.stderr.contains("unknown field `max_paralel`"),
        "{}",
        run.stderr
    );
    assert_eq!(f.cli(&["fleet", "show"]).ok().stdout, before);
}

#[test]
fn a_plan_follows_the_fleet_config_applied_last() {
    let f = world(&["api"], "");
    f.sample_release("1.0.0", &[Svc::new("api", "1.0")], Floor::default());
    let plan = ["plan", "api", "--version", "1.0.0"];
    let text = f.cli(&plan).ok().stdout;
    assert!(text.contains("canary    h1 (from nothing)"), "{text}");
    // The controller keeps the parsed fleet config; a new one must replace it.
    f.apply_fleet_text(&cutover_tests::sample::sample_fleet(
        &HOSTS[1..],
        &["api"],
        "canary = 2",
    ));
    let text = f.cli(&plan).ok().stdout;
    assert!(
        text.contains("canary    h2, h3 (from nothing)") && !text.contains("h1"),
        "{text}"
    );
    let json = f.cli_json(&plan);
    assert_eq!(
        json["services"][0]["batches"],
        serde_json::json!([[{"hosts": ["h2", "h3"]}]]),
        "{json}"
    );
}
