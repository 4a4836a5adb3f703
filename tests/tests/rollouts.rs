//! Health-gated rollouts of native tarball services on real agents: real
//! processes, real files, real health checks over loopback.

use std::time::Duration;

use cutover_cli::bundle::Floor;
use cutover_tests::sample::Svc;
use cutover_tests::{eventually, Fleet, Run, Value};

const HOSTS: [&str; 3] = ["h1", "h2", "h3"];

/// Three online agents and a fleet config running `services` on all.
fn world(services: &[&str], policy: &str) -> Fleet {
    let mut f = Fleet::new();
    f.assign_ports(&HOSTS, services);
    f.start_controller();
    for h in HOSTS {
        f.start_agent(h, "500ms");
    }
    for h in HOSTS {
        f.wait_online(h);
    }
    f.apply_sample_fleet(&HOSTS, services, policy);
    f
}

fn upgrade(f: &Fleet, what: &[&str], version: &str, extra: &[&str]) -> Run {
    let mut args = vec!["upgrade"];
    args.extend(what);
    args.extend(["--version", version, "--yes", "--wait"]);
    args.extend(extra);
    f.cli(&args)
}

fn show(f: &Fleet, id: u64) -> Value {
    f.cli_json(&["rollout", "show", &id.to_string()])
}

fn last_rollout(f: &Fleet) -> Value {
    let list = f.cli_json(&["rollout", "list"]);
    let id = list[0]["id"].as_u64().expect("a rollout");
    show(f, id)
}

fn steps<'a>(r: &'a Value, phase: &str) -> Vec<(&'a str, &'a str)> {
    r["rollout"]["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["phase"] == phase)
        .map(|s| (s["service"].as_str().unwrap(), s["host"].as_str().unwrap()))
        .collect()
}

fn event_index(r: &Value, pred: impl Fn(&str, &str) -> bool) -> Vec<usize> {
    r["events"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
        .filter(|(_, e)| pred(e["kind"].as_str().unwrap(), e["detail"].as_str().unwrap()))
        .map(|(i, _)| i)
        .collect()
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
    upgrade(&f, &["--all"], "1.0.0", &[]).ok();
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
    let r = last_rollout(&f);
    assert_eq!(r["rollout"]["status"], "Succeeded");
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
