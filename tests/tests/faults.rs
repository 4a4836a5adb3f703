//! The fault suite: a controller and five agent hosts as containers on a
//! private Docker network, real rollouts through the CLI, and faults
//! injected through the Docker engine (kill, stop, pause, disconnect).
//! After every scenario the invariants are asked of the hosts themselves.
//! Prints a summary table. Fails, never skips, without a Docker engine.
//! The scenario numbers are those of the fault-suite issue; 2 (after
//! download and after swap, covered on loopback in `install_faults.rs`),
//! 6, 8, 10 and 11 are not here yet.

use std::time::{Duration, Instant};

use cutover_tests::cluster::Cluster;
use cutover_tests::docker::docker;
use cutover_tests::eventually;

const HOSTS: [&str; 5] = ["h1", "h2", "h3", "h4", "h5"];

struct Row {
    scenario: &'static str,
    fault: &'static str,
    outcome: String,
    invariants: Vec<String>,
    took: Duration,
}

/// Starts a rollout to `version` without waiting; returns its id.
fn start(c: &Cluster, version: &str) -> u64 {
    c.cli(&["upgrade", "web", "--version", version, "--yes"])
        .ok();
    c.cli_json(&["rollout", "list"])[0]["id"].as_u64().unwrap()
}

/// Starts a rollout once the controller counts `host` offline (a command
/// sent on a session that is dead but not yet detected counts as
/// delivered, and its rollback could then never be confirmed).
fn start_without(c: &Cluster, version: &str, host: &str) -> u64 {
    eventually(Duration::from_secs(30), &format!("{host} offline"), || {
        c.cli_json(&["hosts"])
            .as_array()?
            .iter()
            .find(|h| h["name"] == host && h["online"] == false)
            .map(|_| ())
    });
    c.cli(&[
        "upgrade",
        "web",
        "--version",
        version,
        "--yes",
        "--allow-offline",
    ])
    .ok();
    c.cli_json(&["rollout", "list"])[0]["id"].as_u64().unwrap()
}

fn healthy_steps(c: &Cluster, id: u64) -> usize {
    let r = c.cli_json(&["rollout", "show", &id.to_string()]);
    r["rollout"]["steps"]
        .as_array()
        .map_or(0, |s| s.iter().filter(|s| s["phase"] == "Healthy").count())
}

#[test]
fn fault_suite_on_containerised_hosts() {
    let work = tempfile::tempdir().unwrap();
    let mut rows = Vec::new();
    let network;
    {
        let c = Cluster::start(work.path(), &HOSTS);
        network = c.network.clone();
        c.apply_fleet("canary = 1\nmax_parallel = 2\nmax_unavailable = 2\nstep_deadline = \"20s\"");
        for v in ["1.0.0", "1.1.0", "1.2.0", "1.3.0", "1.4.0", "1.5.0"] {
            c.sample_release(v);
        }
        c.cli(&["upgrade", "web", "--version", "1.0.0", "--yes", "--wait"])
            .ok();

        // 1. Controller killed mid-rollout, restarted on the same volume.
        let t = Instant::now();
        let id = start(&c, "1.1.0");
        eventually(Duration::from_secs(60), "the canary healthy", || {
            (healthy_steps(&c, id) >= 1).then_some(())
        });
        c.kill_and_restart(&c.controller_name());
        eventually(Duration::from_secs(30), "the controller back", || {
            (c.cli(&["hosts"]).code == 0).then_some(())
        });
        let (outcome, _) = c.wait_final(id, Duration::from_secs(120));
        rows.push(Row {
            scenario: "controller killed mid-rollout",
            fault: "docker kill + start (same volume)",
            outcome,
            invariants: c.check_invariants(&["1.1.0"]),
            took: t.elapsed(),
        });

        // 2. Agent killed during its health checks.
        let t = Instant::now();
        let id = start(&c, "1.2.0");
        eventually(Duration::from_secs(60), "h1 checking", || {
            (c.stage("h1").as_deref() == Some("Checking")).then_some(())
        });
        c.kill_and_restart(&c.host_container("h1"));
        let (outcome, _) = c.wait_final(id, Duration::from_secs(120));
        rows.push(Row {
            scenario: "agent killed during health checks",
            fault: "docker kill + start",
            outcome,
            invariants: c.check_invariants(&["1.2.0"]),
            took: t.elapsed(),
        });

        // 3. Agent cut off from the network mid-batch, back within the deadline.
        let t = Instant::now();
        let id = start(&c, "1.3.0");
        eventually(Duration::from_secs(60), "the canary healthy", || {
            (healthy_steps(&c, id) >= 1).then_some(())
        });
        let h3 = c.host_container("h3");
        docker(&["network", "disconnect", &c.network, &h3]);
        std::thread::sleep(Duration::from_secs(3));
        docker(&["network", "connect", &c.network, &h3]);
        let (outcome, _) = c.wait_final(id, Duration::from_secs(120));
        rows.push(Row {
            scenario: "agent partitioned within the deadline",
            fault: "docker network disconnect 3s",
            outcome,
            invariants: c.check_invariants(&["1.3.0"]),
            took: t.elapsed(),
        });

        // 4. Agent frozen during its health window.
        let t = Instant::now();
        let id = start(&c, "1.4.0");
        eventually(Duration::from_secs(60), "h1 checking", || {
            (c.stage("h1").as_deref() == Some("Checking")).then_some(())
        });
        let h1 = c.host_container("h1");
        docker(&["pause", &h1]);
        std::thread::sleep(Duration::from_secs(3));
        docker(&["unpause", &h1]);
        let (outcome, _) = c.wait_final(id, Duration::from_secs(120));
        rows.push(Row {
            scenario: "agent paused in its health window",
            fault: "docker pause 3s",
            outcome,
            invariants: c.check_invariants(&["1.4.0"]),
            took: t.elapsed(),
        });

        // 9. Two rollouts of the same service at once: the second is refused.
        let t = Instant::now();
        let id = start(&c, "1.5.0");
        let second = c.cli(&["upgrade", "web", "--version", "1.5.0", "--yes"]);
        let refused = second.code == 1 && second.stderr.contains("is already moving service");
        let (outcome, _) = c.wait_final(id, Duration::from_secs(120));
        let mut problems = c.check_invariants(&["1.5.0"]);
        if !refused {
            problems.push(format!("second rollout not refused: {second:?}"));
        }
        rows.push(Row {
            scenario: "two rollouts at once",
            fault: "second upgrade while the first runs",
            outcome,
            invariants: problems,
            took: t.elapsed(),
        });

        // 12. A host that never comes back: the rollout names it.
        let t = Instant::now();
        c.sample_release("1.6.0");
        docker(&["stop", "-t", "1", &c.host_container("h5")]);
        let id = start_without(&c, "1.6.0", "h5");
        let (outcome, _) = c.wait_final(id, Duration::from_secs(180));
        let r = c.cli_json(&["rollout", "show", &id.to_string()]);
        let failure = &r["rollout"]["failure"];
        docker(&["start", &c.host_container("h5")]);
        eventually(Duration::from_secs(30), "h5 back online", || {
            c.cli_json(&["hosts"])
                .as_array()?
                .iter()
                .find(|h| h["name"] == "h5" && h["online"] == true)
                .map(|_| ())
        });
        let mut problems = c.check_invariants(&["1.5.0", "1.6.0"]);
        if failure["host"] != "h5" || failure["evidence"]["gate"] != "disconnected" {
            problems.push(format!(
                "failure does not name h5 as disconnected: {failure}"
            ));
        }
        rows.push(Row {
            scenario: "host never came back",
            fault: "docker stop h5 for the whole rollout",
            outcome,
            invariants: problems,
            took: t.elapsed(),
        });

        // 3. Agent cut off from the network past the step deadline.
        let t = Instant::now();
        c.sample_release("1.6.1");
        let before = c.served("h3").unwrap_or_default();
        let h3 = c.host_container("h3");
        docker(&["network", "disconnect", &c.network, &h3]);
        let id = start_without(&c, "1.6.1", "h3");
        let (outcome, _) = c.wait_final(id, Duration::from_secs(180));
        docker(&["network", "connect", &c.network, &h3]);
        let r = c.cli_json(&["rollout", "show", &id.to_string()]);
        let failure = r["rollout"]["failure"].clone();
        eventually(Duration::from_secs(30), "h3 back online", || {
            c.cli_json(&["hosts"])
                .as_array()?
                .iter()
                .find(|h| h["name"] == "h3" && h["online"] == true)
                .map(|_| ())
        });
        let mut problems = c.check_invariants(&[before.as_str()]);
        if failure["host"] != "h3" || failure["evidence"]["gate"] != "disconnected" {
            problems.push(format!(
                "failure does not name h3 as disconnected: {failure}"
            ));
        }
        rows.push(Row {
            scenario: "agent partitioned past the deadline",
            fault: "docker network disconnect > 20s",
            outcome,
            invariants: problems,
            took: t.elapsed(),
        });

        // 7. Corrupt artifact in the controller's store during a rollout.
        let t = Instant::now();
        c.sample_release("1.7.0");
        let list = c.cli_json(&["release", "list"]);
        let sha = list
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["version"] == "1.7.0")
            .unwrap()["services"][0]["tarball_sha256"]
            .as_str()
            .unwrap()
            .to_string();
        let stored = c.work.join("controller/artifacts").join(&sha);
        let mut bytes = std::fs::read(&stored).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0xff;
        std::fs::write(&stored, bytes).unwrap();
        let id = start(&c, "1.7.0");
        let (outcome, _) = c.wait_final(id, Duration::from_secs(120));
        let r = c.cli_json(&["rollout", "show", &id.to_string()]);
        let mut problems = c.check_invariants(&["1.6.0", "1.5.0"]);
        if r["rollout"]["failure"]["evidence"]["gate"] != "verify" {
            problems.push(format!(
                "not refused at verify: {}",
                r["rollout"]["failure"]
            ));
        }
        rows.push(Row {
            scenario: "corrupt artifact in the store",
            fault: "flipped byte in artifacts/<sha>",
            outcome,
            invariants: problems,
            took: t.elapsed(),
        });

        // 5. Controller partitioned from every agent while the new release
        // fails: the agents roll back on their own and report on reconnect.
        let t = Instant::now();
        let before = c.served("h1").unwrap_or_default();
        c.sample_release_with("1.8.0", false);
        let id = start(&c, "1.8.0");
        eventually(Duration::from_secs(60), "h1 checking", || {
            (c.stage("h1").as_deref() == Some("Checking")).then_some(())
        });
        let ctl = c.controller_name();
        docker(&["network", "disconnect", &c.network, &ctl]);
        eventually(
            Duration::from_secs(60),
            "h1 back on its old release by itself",
            || (c.served("h1").as_deref() == Some(before.as_str())).then_some(()),
        );
        docker(&["network", "connect", &c.network, &ctl]);
        let (outcome, _) = c.wait_final(id, Duration::from_secs(120));
        let r = c.cli_json(&["rollout", "show", &id.to_string()]);
        let mut problems = c.check_invariants(&[before.as_str()]);
        let h1 = r["rollout"]["steps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["host"] == "h1")
            .cloned()
            .unwrap_or_default();
        if h1["phase"] != "RolledBack" {
            problems.push(format!("h1 step: {h1}"));
        }
        rows.push(Row {
            scenario: "controller partitioned, release failing",
            fault: "docker network disconnect controller",
            outcome,
            invariants: problems,
            took: t.elapsed(),
        });
    }
    let left = docker(&[
        "ps",
        "-aq",
        "--filter",
        &format!("name=cutover-faults-{}", std::process::id()),
    ]);
    let nets = docker(&[
        "network",
        "ls",
        "-q",
        "--filter",
        &format!("name={network}"),
    ]);

    println!(
        "\n{:<40} {:<40} {:<12} {:<10} {:>8}",
        "SCENARIO", "FAULT", "OUTCOME", "INVARIANTS", "TIME"
    );
    for r in &rows {
        let inv = if r.invariants.is_empty() {
            "held"
        } else {
            "BROKEN"
        };
        println!(
            "{:<40} {:<40} {:<12} {:<10} {:>7.1}s",
            r.scenario,
            r.fault,
            r.outcome,
            inv,
            r.took.as_secs_f64()
        );
    }
    let expected = [
        "Succeeded",
        "Succeeded",
        "Succeeded",
        "Succeeded",
        "Succeeded",
        "RolledBack",
        "RolledBack",
        "RolledBack",
        "RolledBack",
    ];
    assert_eq!(rows.len(), expected.len(), "a scenario did not report");
    for (r, want) in rows.iter().zip(expected) {
        assert_eq!(r.outcome, want, "{}", r.scenario);
        assert!(
            r.invariants.is_empty(),
            "{}: {:?}",
            r.scenario,
            r.invariants
        );
    }
    assert!(
        left.is_empty() && nets.is_empty(),
        "left behind: containers {left:?}, networks {nets:?}"
    );
}
