//! What an operator reads stays true, through the real CLI on real agents:
//! steps in flight at an abort get their real outcome, every rollout ends
//! with one `rollout.finished`, actions name the operator, `rollout show`
//! times a running rollout up to now, a failure is timed from the start of
//! its step, and a check's `failure_threshold` fails a broken release
//! before its healthy deadline.

use std::time::Duration;

use cutover_cli::bundle::Floor;
use cutover_tests::sample::{sample_fleet, Svc};
use cutover_tests::{eventually, Fleet, Value};

const WAIT: Duration = Duration::from_secs(60);

/// Agents on `hosts` running `api` 1.0 from a finished rollout, then the
/// fleet config `fleet` makes of the sample one.
fn world(hosts: &[&str], controller_extra: &str, fleet: impl Fn(String) -> String) -> Fleet {
    let mut f = Fleet::new();
    f.controller_extra = controller_extra.into();
    f.assign_ports(hosts, &["api"]);
    f.start_controller();
    f.start_agents(hosts);
    f.apply_sample_fleet(hosts, &["api"], "");
    f.sample_release("1.0.0", &[Svc::new("api", "1.0")], Floor::default());
    f.upgrade(&["api"], "1.0.0", &[]).ok();
    f.apply_fleet_text(&fleet(sample_fleet(hosts, &["api"], "")));
    f
}

fn last_id(f: &Fleet) -> u64 {
    cutover_tests::id(&f.cli_json(&["rollout", "list"])[0]["id"])
}

fn step<'a>(r: &'a Value, host: &str) -> &'a Value {
    r["rollout"]["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .find(|s| s["host"] == host)
        .expect("a step of the host")
}

fn events<'a>(r: &'a Value, kind: &str) -> Vec<&'a str> {
    r["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| e["kind"] == kind)
        .map(|e| e["detail"].as_str().unwrap_or_default())
        .collect()
}

/// Starts an upgrade of `api` to `version` and waits until `host` runs it
/// and is being checked.
fn upgrade_until_checking(f: &Fleet, version: &str, serves: &str, host: &str) -> u64 {
    f.cli(&["upgrade", "api", "--version", version, "--yes"])
        .ok();
    let id = last_id(f);
    eventually(WAIT, &format!("{host} runs {serves}, checked"), || {
        let r = f.rollout(id);
        let s = step(&r, host);
        (s["phase"] == "installing"
            && s["sends"].as_u64() >= Some(1)
            && f.served_version(host, "api").as_deref() == Some(serves))
        .then_some(())
    });
    id
}

/// Writes the `HEALTH` file the sample serves `/healthz` from, in the
/// release `host` runs now.
fn set_health(f: &Fleet, host: &str, text: &str) {
    let path = f.agent_dir(host).join("services/api/current/HEALTH");
    std::fs::write(&path, text).expect("HEALTH of the running release");
}

#[test]
fn steps_in_flight_when_aborted_get_their_real_outcome_and_the_abort_names_the_operator() {
    // A release that never turns healthy by itself, with a deadline far
    // off: its canary stays in flight until the test heals it.
    let f = world(&["h1", "h2"], "", |t| {
        t.replace("healthy_deadline = \"4s\"", "healthy_deadline = \"10m\"")
    });
    f.sample_release("1.1.0", &[Svc::new("api", "1.1").sick()], Floor::default());
    let id = upgrade_until_checking(&f, "1.1.0", "1.1", "h1");
    let out = f.cli(&["rollout", "abort", &id.to_string()]).ok().stdout;
    assert!(out.contains("is now aborted"), "{out}");
    let r = f.rollout(id);
    assert_eq!(r["rollout"]["status"], "aborted");
    assert_eq!(step(&r, "h1")["phase"], "installing");

    // The canary's host turns healthy after the abort: its step says so.
    set_health(&f, "h1", "ok");
    let r = eventually(WAIT, "h1's step gets its outcome", || {
        let r = f.rollout(id);
        (step(&r, "h1")["phase"] == "healthy").then_some(r)
    });
    assert_eq!(r["rollout"]["status"], "aborted");
    assert_eq!(step(&r, "h2")["phase"], "pending", "nothing new started");
    assert_eq!(f.served_version("h2", "api").as_deref(), Some("1.0"));
    assert_eq!(events(&r, "step.healthy").len(), 1, "{r}");
    let finished = events(&r, "rollout.finished");
    assert_eq!(finished.len(), 1, "{r}");
    assert!(
        finished[0].starts_with(&format!("rollout {id} aborted: ")),
        "{r}"
    );
    let aborted = events(&r, "rollout.aborted");
    assert!(
        aborted[0].starts_with("aborted by operator \"admin\"; 1 step(s) in flight"),
        "{r}"
    );
    assert!(
        events(&r, "rollout.created")[0].ends_with("by operator \"admin\""),
        "{r}"
    );
    // The finished rollout is no longer the operator's to pause.
    f.cli(&["rollout", "pause", &id.to_string()])
        .fails_with(&format!("rollout {id} already ended aborted"));
}

/// The seconds `rollout show` prints after `label` in `line`.
fn seconds_after(text: &str, label: &str) -> Option<f64> {
    let rest = &text[text.find(label)? + label.len()..];
    rest.split(" s").next()?.trim().parse().ok()
}

#[test]
fn rollout_show_times_a_running_rollout_and_its_steps_in_flight_up_to_now() {
    let f = world(&["h1"], "", |t| {
        t.replace("healthy_deadline = \"4s\"", "healthy_deadline = \"10m\"")
    });
    f.sample_release("1.1.0", &[Svc::new("api", "1.1").sick()], Floor::default());
    let id = upgrade_until_checking(&f, "1.1.0", "1.1", "h1").to_string();
    let shown = || {
        let text = f.cli(&["rollout", "show", &id]).ok().stdout;
        let running = seconds_after(&text, "running for ");
        let row = text.lines().find(|l| l.contains("installing"))?;
        let so_far = row[..row.find(" s so far")?]
            .split_whitespace()
            .last()?
            .parse::<f64>()
            .ok();
        Some((running?, so_far?))
    };
    let (running, so_far) = eventually(WAIT, "a running rollout shown with its times", shown);
    // Nothing changes in the rollout meanwhile: the times still grow.
    eventually(WAIT, "the times grow while nothing else changes", || {
        let (r, s) = shown()?;
        (r > running && s > so_far).then_some(())
    });
    f.cli(&["rollout", "abort", &id]).ok();
}

#[test]
fn a_failure_is_timed_from_the_start_of_its_step_fetch_included() {
    // A paced fetch of a large artifact whose stored bytes are damaged:
    // the verdict comes at the end of the transfer.
    let f = world(&["h1"], "fetch_rate_limit = 6000000", |t| t);
    f.sample_release(
        "1.1.0",
        &[Svc::new("api", "1.1").ballast(3_000_000)],
        Floor::default(),
    );
    let sha = f.tarball_sha("1.1.0", "api");
    let stored = f.path("controller/artifacts").join(&sha);
    let mut bytes = std::fs::read(&stored).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&stored, bytes).unwrap();
    f.upgrade(&["api"], "1.1.0", &[])
        .fails_with("ended rolled_back");
    let id = last_id(&f);
    let r = f.rollout(id);
    let e = &r["rollout"]["failure"]["evidence"];
    assert_eq!(e["gate"], "verify", "{r}");
    // 3 MB at 6 MB/s is at least a quarter of a second, whatever the
    // machine: the stage that said no took none of it.
    assert!(e["elapsed_ms"].as_u64().unwrap() >= 250, "{e}");
    let text = f.cli(&["rollout", "show", &id.to_string()]).ok().stdout;
    let after = seconds_after(&text, "verdict after ").expect("a verdict line");
    assert!(after >= 0.2, "{text}");
}

#[test]
fn a_check_failing_its_threshold_after_passing_rolls_back_before_the_healthy_deadline() {
    // Healthy only after five minutes of passes, failed at ten: without
    // the threshold a broken release would hold the rollout that long.
    // The test cannot see the agent's first passing round, so failures
    // also count after a short startup_grace: if the release broke before
    // the agent saw it pass, the threshold still decides.
    let f = world(&["h1"], "", |t| {
        t.replace("min_healthy_time = \"1s\"", "min_healthy_time = \"5m\"")
            .replace("healthy_deadline = \"4s\"", "healthy_deadline = \"10m\"")
            .replace(
                "timeout = \"1s\"",
                "timeout = \"1s\"\nfailure_threshold = 3\nstartup_grace = \"2s\"",
            )
    });
    f.sample_release("1.1.0", &[Svc::new("api", "1.1")], Floor::default());
    let id = upgrade_until_checking(&f, "1.1.0", "1.1", "h1");
    set_health(&f, "h1", "broken after passing");
    let r = eventually(WAIT, "the rollout ends", || {
        let r = f.rollout(id);
        let status = r["rollout"]["status"].as_str()?.to_string();
        ["succeeded", "rolled_back", "failed", "aborted"]
            .contains(&status.as_str())
            .then_some(r)
    });
    assert_eq!(r["rollout"]["status"], "rolled_back", "{r}");
    let e = &r["rollout"]["failure"]["evidence"];
    assert_eq!(
        e["detail"], "HTTP 503, expected 200; failed 3 consecutive checks (failure_threshold = 3)",
        "{r}"
    );
    assert!(
        e["output"]
            .as_str()
            .unwrap()
            .contains("broken after passing"),
        "{e}"
    );
    let text = f.cli(&["rollout", "show", &id.to_string()]).ok().stdout;
    assert!(text.contains("(failure_threshold = 3)"), "{text}");
    assert_eq!(f.served_version("h1", "api").as_deref(), Some("1.0"));
    assert_eq!(events(&r, "rollout.finished").len(), 1, "{r}");
}
