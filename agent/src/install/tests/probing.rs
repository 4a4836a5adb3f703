//! Health probes between commands: only transitions are news, a probe
//! never starts, stops or swaps anything, and a service with a command
//! queued or in flight is left alone.

use cutover_core::views::HealthState;

use super::*;

#[tokio::test(flavor = "multi_thread")]
async fn a_probe_reports_only_transitions_and_changes_nothing_installed() {
    let mut h = harness();
    let v1 = artifact(&h.world, "1");
    let r = h.run(install("c1", "1", v1)).await;
    assert!(r.ok, "{r:?}");
    assert_eq!(r.installed.health.state, HealthState::Healthy, "{r:?}");
    h.calls();
    let before = h.journal();
    assert_eq!(h.installer.probe_health().await, 0, "still healthy");

    h.make_sick(&v1.0);
    assert_eq!(h.installer.probe_health().await, 1);
    assert_eq!(h.installer.probe_health().await, 0, "still unhealthy");
    let changed = h.installer.health.changed().await;
    assert_eq!(changed.len(), 1);
    assert_eq!(changed[0].health.state, HealthState::Unhealthy);
    assert!(!changed[0].health.evidence.is_empty());
    let inventory = h.installer.inventory().await;
    assert_eq!(inventory[0].health.state, HealthState::Unhealthy);

    h.world.sick.lock().unwrap().clear();
    assert_eq!(h.installer.probe_health().await, 1, "healthy again");
    assert!(h.calls().is_empty(), "a probe started or stopped something");
    let after = h.journal();
    assert_eq!(after.current, before.current);
    assert_eq!(after.previous, before.previous);
    assert!(
        h.outbox.try_recv().is_err(),
        "a probe is not a command's report"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_service_with_a_command_in_flight_or_queued_is_not_probed() {
    let mut h = harness();
    let v1 = artifact(&h.world, "1");
    assert!(h.run(install("c1", "1", v1)).await.ok);
    h.make_sick(&v1.0);
    // A command holds the service's lock.
    let lock = h.installer.commands.lock("api");
    let held = lock.lock().await;
    assert_eq!(h.installer.probe_health().await, 0);
    drop(held);
    // A command is under way.
    h.installer.commands.set_busy("api", Some("installing"));
    assert_eq!(h.installer.probe_health().await, 0);
    h.installer.commands.set_busy("api", None);
    // A command queued (behind one that holds the lock) counts until done.
    let held = lock.lock().await;
    h.installer.submit(install("c2", "1", v1));
    assert!(h.installer.commands.commanded("api"));
    drop(held);
    h.outbox.recv().await.expect("c2's report");
    until("c2 done", || !h.installer.commands.commanded("api")).await;
    h.make_sick(&v1.0);
    assert_eq!(h.installer.probe_health().await, 1, "probed once free");
}
