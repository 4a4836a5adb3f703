//! Hostile configs and a failing store against the real controller and
//! agents: one bad value or one failed write must not stop a fleet.
//! The store is made to fail from outside with SQLite itself (the
//! `sqlite3` shell on the controller's own `state.db`), the way a full
//! disk fails writes while reads go on.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use cutover_cli::bundle::Floor;
use cutover_tests::sample::{sample_fleet, steps, Svc};
use cutover_tests::{eventually, Fleet, Value};

const HOSTS: [&str; 2] = ["h1", "h2"];
const WAIT: Duration = Duration::from_secs(60);

/// Runs `sql` on the controller's store with the `sqlite3` shell, waiting
/// out the controller's own transactions.
fn sql(f: &Fleet, sql: &str) -> String {
    let db = f.path("controller").join("state.db");
    let out = Command::new("sqlite3")
        .arg("-cmd")
        .arg(".timeout 10000")
        .arg(&db)
        .arg(sql)
        .output()
        .expect("the sqlite3 shell is needed by these tests (apt-get install sqlite3)");
    assert!(
        out.status.success(),
        "sqlite3 {sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Two online agents running `services`, each of whose health check also
/// needs `marker` to exist: the test decides when installs turn healthy.
fn world(services: &[&str], policy: &str, marker: &Path) -> Fleet {
    let mut f = Fleet::new();
    f.assign_ports(&HOSTS, services);
    f.start_controller();
    f.start_agents(&HOSTS);
    let mut text = sample_fleet(&HOSTS, services, policy)
        .replace("healthy_deadline = \"4s\"", "healthy_deadline = \"60s\"");
    for s in services {
        text.push_str(&format!(
            "[[services.{s}.checks]]\nkind = \"exec\"\ncommand = \"/bin/sh\"\nargs = [\"-c\", \"test -e {}\"]\ninterval = \"200ms\"\n",
            marker.display()
        ));
    }
    f.apply_fleet_text(&text);
    f
}

fn rollout_status(f: &Fleet, id: u64) -> String {
    f.rollout(id)["rollout"]["status"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// The rollout once its canary's command went out (stored, then sent).
fn wait_canary_sent(f: &Fleet, id: u64) -> Value {
    eventually(WAIT, "the canary's command to go out", || {
        let r = f.rollout(id);
        let sent = r["rollout"]["steps"]
            .as_array()?
            .iter()
            .any(|s| s["phase"] == "installing" && s["sends"].as_u64() >= Some(1));
        sent.then_some(r)
    })
}

fn events(r: &Value) -> Vec<(String, String)> {
    r["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| {
            (
                e["kind"].as_str().unwrap_or_default().to_string(),
                e["detail"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

#[test]
fn a_report_that_arrives_while_the_store_cannot_be_written_is_kept_and_the_rollout_ends_as_reported(
) {
    let marker = tempfile::NamedTempFile::new()
        .expect("marker")
        .into_temp_path();
    let marker = marker.to_path_buf();
    std::fs::remove_file(&marker).expect("no marker yet");
    // A short step deadline: the store stays unwritable for longer than
    // it, so a report lost on the failed save would end in "no report".
    let f = world(&["api"], "step_deadline = \"6s\"", &marker);
    f.sample_release("1.0.0", &[Svc::new("api", "1.0")], Floor::default());
    f.cli(&["upgrade", "api", "--version", "1.0.0", "--yes"])
        .ok();
    wait_canary_sent(&f, 1);
    // Every save of a rollout fails from now on, as on a full disk.
    sql(
        &f,
        "CREATE TRIGGER full_disk BEFORE UPDATE ON rollouts BEGIN SELECT RAISE(FAIL, 'database or disk is full'); END;",
    );
    std::fs::write(&marker, "").expect("marker");
    // The canary's report arrives and cannot be stored; it is held while
    // the saves are retried for longer than the step deadline (250 ms
    // doubling: the sixth failure comes 7.75 s after the first, and the
    // canary's command went out before the first).
    let held = std::time::Instant::now() + WAIT;
    loop {
        let log = f.controller_log();
        let seen = log.lines().any(|l| {
            l.contains("could not save the rollout")
                && l.contains("held_reports=1")
                && l.contains("failures=6")
        });
        if seen {
            break;
        }
        if std::time::Instant::now() > held {
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            panic!(
                "no failed saves holding the report; the controller's log ends:\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(rollout_status(&f, 1), "running");
    // The disk has room again.
    sql(&f, "DROP TRIGGER full_disk;");
    eventually(WAIT, "the rollout to end", || {
        let s = rollout_status(&f, 1);
        (s != "running").then_some(())
    });
    let r = f.rollout(1);
    assert_eq!(r["rollout"]["status"], "succeeded", "{r:#}");
    assert_eq!(steps(&r, "healthy").len(), 2, "{r:#}");
    let ev = events(&r);
    assert!(
        !ev.iter()
            .any(|(k, _)| k == "step.failed" || k == "rollout.stopped"),
        "no step may fail for a report the store was slow to take: {ev:?}"
    );
    assert_eq!(
        ev.iter()
            .filter(|(k, d)| k == "step.healthy" && d.starts_with("api: healthy"))
            .count(),
        2,
        "{ev:?}"
    );
    for h in HOSTS {
        assert_eq!(f.served_version(h, "api").as_deref(), Some("1.0"), "{h}");
    }
}

#[test]
fn a_rollout_whose_stored_config_is_out_of_bounds_fails_alone_after_a_restart() {
    let marker = tempfile::NamedTempFile::new()
        .expect("marker")
        .into_temp_path();
    let marker = marker.to_path_buf();
    std::fs::remove_file(&marker).expect("no marker yet");
    let mut f = world(&["api", "web"], "", &marker);
    f.sample_release(
        "1.0.0",
        &[Svc::new("api", "1.0"), Svc::new("web", "1.0")],
        Floor::default(),
    );
    f.cli(&["upgrade", "api", "--version", "1.0.0", "--yes"])
        .ok();
    f.cli(&["upgrade", "web", "--version", "1.0.0", "--yes"])
        .ok();
    wait_canary_sent(&f, 1);
    wait_canary_sent(&f, 2);
    // What an older controller accepted and stored: a deadline that
    // overflows any arithmetic on it.
    f.kill_controller();
    sql(
        &f,
        "UPDATE rollouts SET plan = json_set(plan, '$.services[0].config.healthy_deadline', '18446744073709551615s') WHERE id = 1;",
    );
    std::fs::write(&marker, "").expect("marker");
    f.start_controller();
    eventually(WAIT, "both rollouts to end", || {
        let (a, b) = (rollout_status(&f, 1), rollout_status(&f, 2));
        (a != "running" && b != "running").then_some(())
    });
    let poisoned = f.rollout(1);
    assert_eq!(poisoned["rollout"]["status"], "failed", "{poisoned:#}");
    let ev = events(&poisoned);
    assert!(
        ev.iter().any(|(k, d)| k == "rollout.finished"
            && d.contains("the controller cannot drive it")
            && d.contains("service \"api\": healthy_deadline = \"18446744073709551615s\": must be between 100ms and 24h")),
        "{ev:?}"
    );
    let other = f.rollout(2);
    assert_eq!(other["rollout"]["status"], "succeeded", "{other:#}");
    for h in HOSTS {
        assert_eq!(f.served_version(h, "web").as_deref(), Some("1.0"), "{h}");
    }
    // The driver is alive: it still takes operator actions.
    f.cli(&["rollout", "abort", "1"])
        .fails_with("rollout 1 already ended failed");
}

#[test]
fn hostile_fleet_values_are_refused_at_apply_with_the_key_and_bound() {
    let mut f = Fleet::new();
    f.start_controller();
    let good = sample_fleet(&["h1"], &["api"], "");
    for (from, to, want) in [
        (
            "healthy_deadline = \"4s\"",
            "healthy_deadline = \"18446744073709551615s\"",
            "services.api.healthy_deadline = \"18446744073709551615s\": must be between 100ms and 24h",
        ),
        (
            "[services.api.policy]\n",
            "[services.api.policy]\nstep_deadline = \"0s\"\n",
            "services.api.policy.step_deadline = \"0s\": must be between 1s and 48h",
        ),
        (
            "http://127.0.0.1:",
            "http://203.0.113.9:",
            "must target the host itself",
        ),
    ] {
        let path = f.path("bad-fleet.toml");
        std::fs::write(&path, good.replace(from, to)).expect("write");
        let run = f.cli(&["fleet", "apply", path.to_str().expect("utf-8")]);
        run.fails_with(want);
    }
}

#[test]
fn a_canary_larger_than_the_services_hosts_is_refused_at_apply_or_at_plan() {
    let mut f = Fleet::new();
    f.assign_ports(&HOSTS, &["api"]);
    f.start_controller();
    f.start_agents(&HOSTS);
    // Hosts named only: known at apply, refused there.
    let named = sample_fleet(&HOSTS, &["api"], "canary = 3");
    let path = f.path("fleet.toml");
    std::fs::write(&path, &named).unwrap();
    f.cli(&["fleet", "apply", path.to_str().unwrap()]).fails_with(
        "services.api.policy.canary = 3: the service runs on 2 named host(s), so at most 2 can be the canary",
    );
    // Hosts by label: resolved at plan time, refused there.
    let labelled = format!(
        "[hosts.h1]\nlabels = [\"edge\"]\n[hosts.h2]\nlabels = [\"edge\"]\n{}",
        named.replace("hosts = [\"h1\", \"h2\"]", "labels = [\"edge\"]")
    );
    f.apply_fleet_text(&labelled);
    f.sample_release("1.0.0", &[Svc::new("api", "1.0")], Floor::default());
    f.cli(&["plan", "api", "--version", "1.0.0"]).fails_with(
        "service \"api\" has policy.canary = 3 but the fleet config runs it on 2 host(s); set canary to at most 2",
    );
}
