//! Status tells the truth about health, through the real CLI on a real
//! agent: after a rollout the agent keeps probing the service, and
//! `cutover status` (text and JSON) and `cutover diag` say when it turned unhealthy and why,
//! and that it is healthy again once repaired, while what the host runs
//! stays what the rollout put there.

use std::time::Duration;

use cutover_cli::bundle::Floor;
use cutover_tests::sample::Svc;
use cutover_tests::{eventually, Fleet, Value};

const WAIT: Duration = Duration::from_secs(60);

/// `api` on `h1` as `cutover status -o json` shows it.
fn api(f: &Fleet) -> Value {
    let status = f.cli_json(&["status"]);
    status["hosts"]
        .as_array()
        .and_then(|h| h.iter().find(|h| h["name"] == "h1"))
        .and_then(|h| h["services"].as_array())
        .and_then(|s| s.iter().find(|s| s["name"] == "api"))
        .cloned()
        .unwrap_or(Value::Null)
}

fn events(f: &Fleet, kind: &str) -> Vec<String> {
    f.cli_json(&["events", "--limit", "1000"])
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| e["kind"] == kind && e["host"] == "h1")
        .map(|e| e["detail"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[test]
fn status_shows_a_service_turned_unhealthy_after_its_rollout_with_evidence_and_healthy_again_after_repair(
) {
    let mut f = Fleet::new();
    f.agent_extra = "health_probe_interval = \"1s\"\n".into();
    f.assign_ports(&["h1"], &["api"]);
    f.start_controller();
    f.start_agent("h1", "500ms");
    f.wait_online("h1");
    f.apply_sample_fleet(&["h1"], &["api"], "");
    f.sample_release("1.0.0", &[Svc::new("api", "1.0")], Floor::default());
    f.upgrade(&["api"], "1.0.0", &[]).ok();
    eventually(WAIT, "api healthy after its rollout", || {
        (api(&f)["health"]["state"] == "healthy").then_some(())
    });

    // The release breaks after it was checked healthy.
    let health = f.agent_dir("h1").join("services/api/current/HEALTH");
    std::fs::write(&health, "database unreachable").expect("HEALTH of the running release");
    let sick = eventually(WAIT, "status shows api unhealthy", || {
        let a = api(&f);
        (a["health"]["state"] == "unhealthy").then_some(a)
    });
    let evidence = sick["health"]["evidence"].as_str().unwrap_or_default();
    assert!(
        evidence.contains("503") && evidence.contains("database unreachable"),
        "{sick}"
    );
    assert!(
        sick["health"]["since"]
            .as_str()
            .is_some_and(|t| t.starts_with("20")),
        "{sick}"
    );
    assert_eq!(sick["state"], "running", "{sick}");
    assert_eq!(sick["current"]["release"], "1.0.0", "probing moves nothing");
    let text = f.cli(&["status"]).ok().stdout;
    assert!(
        text.contains("[running, unhealthy since ") && text.contains("database unreachable"),
        "{text}"
    );
    let hosts = f.cli(&["hosts"]).ok().stdout;
    assert!(
        hosts.contains("api unhealthy since ") && hosts.contains("database unreachable"),
        "{hosts}"
    );
    // The agent, asked live, says the same.
    let diag = f.cli(&["diag", "h1"]).ok().stdout;
    assert!(
        diag.contains("[running, unhealthy since ") && diag.contains("database unreachable"),
        "{diag}"
    );
    let unhealthy = eventually(WAIT, "a service.unhealthy event", || {
        let e = events(&f, "service.unhealthy");
        (!e.is_empty()).then_some(e)
    });
    assert!(
        unhealthy[0].starts_with("api: unhealthy ("),
        "{unhealthy:?}"
    );

    // Repaired: healthy again, said once.
    std::fs::write(&health, "ok").expect("HEALTH repaired");
    eventually(WAIT, "status shows api healthy again", || {
        (api(&f)["health"]["state"] == "healthy").then_some(())
    });
    let text = f.cli(&["status"]).ok().stdout;
    assert!(text.contains("api@1.0 [running, healthy]"), "{text}");
    eventually(WAIT, "a service.healthy event", || {
        (events(&f, "service.healthy").len() == 1).then_some(())
    });
    assert_eq!(events(&f, "service.unhealthy").len(), 1, "only transitions");
}
