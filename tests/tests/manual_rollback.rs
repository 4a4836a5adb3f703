//! The emergency path on real agents: `cutover rollback SERVICE` takes each
//! host to its own last known-good release (never to one a failed or
//! rolled-back step tried), previews every host's `from -> to`, and gives
//! every host the health window of any install; `cutover rollout abort ID
//! --rollback` stops a rollout and takes the hosts it moved back.

use std::time::Duration;

use cutover_cli::bundle::Floor;
use cutover_tests::sample::{steps, Svc};
use cutover_tests::{eventually, Fleet, Value};

const HOSTS: [&str; 3] = ["h1", "h2", "h3"];

fn world(policy: &str) -> Fleet {
    let mut f = Fleet::new();
    f.assign_ports(&HOSTS, &["api"]);
    f.start_controller();
    f.start_agents(&HOSTS);
    f.apply_sample_fleet(&HOSTS, &["api"], policy);
    f
}

/// Every host's `to` release in a rollback plan, by host.
fn targets(plan: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for s in plan["services"].as_array().unwrap() {
        for batch in s["batches"].as_array().unwrap() {
            for run in batch.as_array().unwrap() {
                let to = run["to"]["identity"]["release"]
                    .as_str()
                    .unwrap_or("(none)")
                    .to_string();
                for h in run["hosts"].as_array().unwrap() {
                    out.push((h.as_str().unwrap().to_string(), to.clone()));
                }
            }
        }
    }
    out.sort();
    out
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

#[test]
fn a_manual_rollback_after_a_rolled_back_canary_never_targets_the_failed_release() {
    let f = world("max_parallel = 2\nmax_unavailable = 2");
    f.sample_release("1.0.0", &[Svc::new("api", "1.0")], Floor::default());
    f.upgrade(&["api"], "1.0.0", &[]).ok();
    // Nothing to go back to yet: refused, naming the hosts and the way out.
    f.cli(&["rollback", "api", "--dry-run"])
        .fails_with("no host can be rolled back: h1 runs release 1.0.0");
    f.sample_release("1.1.0", &[Svc::new("api", "1.1")], Floor::default());
    f.upgrade(&["api"], "1.1.0", &[]).ok();
    f.sample_release("1.2.0", &[Svc::new("api", "1.2").sick()], Floor::default());
    f.upgrade(&["api"], "1.2.0", &[])
        .fails_with("ended rolled_back");
    // The canary's agent now calls 1.2.0 its "previous"; the rollback must
    // not take it there.
    let preview = f.cli(&["rollback", "api", "--dry-run"]).ok().stdout;
    assert!(
        preview.contains("h1, h2, h3 (1.1 (1.1.0) -> 1.0 (1.0.0))"),
        "{preview}"
    );
    assert!(!preview.contains("1.2.0"), "{preview}");
    let plan = f.cli_json(&["rollback", "api", "--dry-run"]);
    assert_eq!(
        targets(&plan),
        pairs(&[("h1", "1.0.0"), ("h2", "1.0.0"), ("h3", "1.0.0")])
    );
    let before = f.cli_json(&["rollout", "list"]).as_array().unwrap().len();
    assert_eq!(before, 3, "a dry run started a rollout");

    f.cli(&["rollback", "api", "--yes", "--wait"]).ok();
    for h in HOSTS {
        assert_eq!(f.served_version(h, "api").as_deref(), Some("1.0"), "{h}");
    }
    // Each host's step is an install with its health window
    // (min_healthy_time = 1s in the sample fleet), not an instant swap: the
    // agents' reports say how long each took.
    let r = f.last_rollout();
    assert_eq!(r["rollout"]["kind"], "rollback");
    let created = r["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "rollout.created")
        .map(|e| e["detail"].as_str().unwrap().to_string());
    assert!(
        created
            .as_deref()
            .is_some_and(|d| d.contains("by operator")),
        "the rollback does not name its operator: {created:?}"
    );
    // Every host at once: no canary.
    let events = r["events"].to_string();
    assert!(
        events.contains("api: every host at once started on") && !events.contains("canary"),
        "{events}"
    );
    let healthy: Vec<u64> = r["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "step.healthy")
        .map(|e| {
            let detail = e["detail"].as_str().unwrap();
            let ms = detail
                .split("healthy (")
                .nth(1)
                .and_then(|rest| rest.split(" ms").next())
                .and_then(|n| n.parse().ok());
            ms.unwrap_or_else(|| panic!("no duration in {detail:?}"))
        })
        .collect();
    assert_eq!(healthy.len(), 3, "{r}");
    assert!(
        healthy.iter().all(|&ms| ms >= 1000),
        "a rollback step was healthy before its 1 s window: {healthy:?}"
    );
}

#[test]
fn a_manual_rollback_takes_each_host_to_its_own_release() {
    let f = world("max_parallel = 2\nmax_unavailable = 2");
    f.sample_release("1.0.0", &[Svc::new("api", "1.0")], Floor::default());
    f.upgrade(&["api"], "1.0.0", &[]).ok();
    f.sample_release("1.1.0", &[Svc::new("api", "1.1")], Floor::default());
    f.upgrade(&["api"], "1.1.0", &[]).ok();
    f.sample_release("1.2.0", &[Svc::new("api", "1.2").sick()], Floor::default());
    f.upgrade(&["api"], "1.2.0", &["--no-rollback"])
        .fails_with("ended failed");
    // h1 was left on the failed 1.2.0: it goes to 1.1.0, the newest
    // release healthy on it; h2 and h3 run 1.1.0 and go to 1.0.0.
    let plan = f.cli_json(&["rollback", "api", "--dry-run"]);
    assert_eq!(
        targets(&plan),
        pairs(&[("h1", "1.1.0"), ("h2", "1.0.0"), ("h3", "1.0.0")])
    );
    let preview = f.cli(&["rollback", "api", "--dry-run"]).ok().stdout;
    assert!(
        preview.contains("h1 (1.2 (1.2.0) -> 1.1 (1.1.0))"),
        "{preview}"
    );
    assert!(
        preview.contains("h2, h3 (1.1 (1.1.0) -> 1.0 (1.0.0))"),
        "{preview}"
    );
    // Without --yes and not on a terminal, the preview is printed and
    // nothing starts.
    let run = f.cli(&["rollback", "api"]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("pass --yes to confirm"), "{run:?}");
    assert!(run.stdout.contains("-> 1.1 (1.1.0)"), "{}", run.stdout);
    // Sending every host to the release that just failed on h1 needs
    // --force.
    f.cli(&["rollback", "api", "--to", "1.2.0", "--dry-run"])
        .fails_with(
            "release 1.2.0 of api failed or was rolled back on h1 when a step last tried it",
        );
    f.cli(&["rollback", "api", "--yes", "--wait"]).ok();
    assert_eq!(f.served_version("h1", "api").as_deref(), Some("1.1"));
    assert_eq!(f.served_version("h2", "api").as_deref(), Some("1.0"));
    assert_eq!(f.served_version("h3", "api").as_deref(), Some("1.0"));
}

#[test]
fn abort_with_rollback_stops_the_rollout_and_takes_its_moved_hosts_back() {
    let f = world("");
    f.sample_release("1.0.0", &[Svc::new("api", "1.0")], Floor::default());
    f.upgrade(&["api"], "1.0.0", &[]).ok();
    let untouched: Vec<_> = ["h2", "h3"]
        .iter()
        .map(|h| f.service_pid(h, "api"))
        .collect();
    f.sample_release("1.1.0", &[Svc::new("api", "1.1")], Floor::default());
    f.cli(&["upgrade", "api", "--version", "1.1.0", "--yes"])
        .ok();
    f.cli(&["rollout", "pause", "2"]).ok();
    eventually(Duration::from_secs(30), "the canary to be healthy", || {
        let r = f.rollout(2);
        (steps(&r, "healthy").len() == 1).then_some(())
    });
    assert_eq!(f.served_version("h1", "api").as_deref(), Some("1.1"));
    // It asks first: not on a terminal, --yes is needed.
    let run = f.cli(&["rollout", "abort", "2", "--rollback"]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("pass --yes"), "{run:?}");
    let out = f
        .cli(&["rollout", "abort", "2", "--rollback", "--yes"])
        .ok()
        .stdout;
    assert!(out.contains("rollout 2 is now aborted"), "{out}");
    assert!(out.contains("h1 (1.1 (1.1.0) -> 1.0 (1.0.0))"), "{out}");
    assert!(out.contains("rollback 3 started: 1 host(s)"), "{out}");
    f.cli(&["rollout", "watch", "3"]).ok();
    assert_eq!(f.served_version("h1", "api").as_deref(), Some("1.0"));
    assert_eq!(f.rollout(2)["rollout"]["status"], "aborted");
    assert_eq!(
        ["h2", "h3"]
            .iter()
            .map(|h| f.service_pid(h, "api"))
            .collect::<Vec<_>>(),
        untouched,
        "hosts the aborted rollout never moved were restarted"
    );
    // --rollback belongs to abort alone.
    // An ended rollout: the way back is `cutover rollback`.
    f.cli(&["rollout", "abort", "2", "--rollback", "--yes"])
        .fails_with("already ended aborted; to take its hosts back, `cutover rollback SERVICE`");
    let run = f.cli(&["rollout", "pause", "3", "--rollback"]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(
        run.stderr.contains("unexpected argument '--rollback'"),
        "{run:?}"
    );
}

/// The operator API as the CLI calls it, for what a terminal prompt does.
fn rollback_call(f: &Fleet, dry_run: bool, expect_plan: &str) -> Result<Value, String> {
    use cutover_tests::grpc;
    let rt = grpc::runtime();
    rt.block_on(async {
        let doc = grpc::operator_of(f)
            .await
            .rollback(cutover_proto::v1::RollbackRequest {
                service: "api".into(),
                to_version: String::new(),
                allow_offline: false,
                dry_run,
                expect_plan: expect_plan.into(),
                force: false,
            })
            .await
            .map_err(|s| grpc::status_text(&s))?
            .into_inner();
        serde_json::from_str(&doc.json).map_err(|e| e.to_string())
    })
}

#[test]
fn a_confirmed_preview_that_no_longer_holds_starts_nothing_and_a_rollback_never_moves_a_host_forward(
) {
    let f = world("max_parallel = 2\nmax_unavailable = 2");
    for (release, version) in [("1.0.0", "1.0"), ("1.1.0", "1.1")] {
        f.sample_release(release, &[Svc::new("api", version)], Floor::default());
        f.upgrade(&["api"], release, &[]).ok();
    }
    f.sample_release("1.2.0", &[Svc::new("api", "1.2")], Floor::default());
    // The operator previews every host 1.1.0 -> 1.0.0 ...
    let preview: cutover_core::rollout::Started =
        serde_json::from_value(rollback_call(&f, true, "").unwrap()).unwrap();
    let seen = preview.plan.fingerprint();
    // ... and before they confirm, someone else upgrades to 1.2.0.
    f.upgrade(&["api"], "1.2.0", &[]).ok();
    let rollouts = f.cli_json(&["rollout", "list"]).as_array().unwrap().len();
    // The confirmation of the old preview is refused, and nothing starts.
    let e = rollback_call(&f, false, &seen).unwrap_err();
    assert!(e.contains("changed since the preview"), "{e}");
    assert_eq!(
        f.cli_json(&["rollout", "list"]).as_array().unwrap().len(),
        rollouts
    );
    // The preview as it is now is accepted: 1.2.0 -> 1.1.0.
    let preview: cutover_core::rollout::Started =
        serde_json::from_value(rollback_call(&f, true, "").unwrap()).unwrap();
    assert_eq!(
        targets(&serde_json::to_value(&preview.plan).unwrap()),
        pairs(&[("h1", "1.1.0"), ("h2", "1.1.0"), ("h3", "1.1.0")])
    );
    rollback_call(&f, false, &preview.plan.fingerprint()).unwrap();
    f.cli(&["rollout", "watch", &(rollouts + 1).to_string()])
        .ok();
    // On 1.0.0, the oldest release each host knows, a rollback would move
    // hosts forward to 1.1.0 or 1.2.0: refused instead.
    f.cli(&["rollback", "api", "--to", "1.0.0", "--yes", "--wait"])
        .ok();
    f.cli(&["rollback", "api", "--dry-run"])
        .fails_with("no older release is known healthy");
    for h in HOSTS {
        assert_eq!(f.served_version(h, "api").as_deref(), Some("1.0"), "{h}");
    }
    // A host the fleet config names but that never enrolled is listed,
    // not silently left out.
    f.upgrade(&["api"], "1.1.0", &[]).ok();
    let text = cutover_tests::sample::sample_fleet(&["h1", "h2", "h3", "h9"], &["api"], "");
    f.apply_fleet_text(&text);
    let preview = f.cli(&["rollback", "api", "--dry-run"]).ok().stdout;
    assert!(
        preview.contains("h1, h2, h3 (1.1 (1.1.0) -> 1.0 (1.0.0))"),
        "{preview}"
    );
    assert!(preview.contains("h9 api: not enrolled"), "{preview}");
}
