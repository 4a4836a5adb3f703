//! The simulator's smoke run, so it cannot rot: 200 simulated agents with
//! real enrolled certificates and real sessions against a real controller,
//! one rollout that must succeed on every host and one whose failing host
//! must take every moved host back.

use std::process::Command;

use cutover_tests::bin;

#[test]
fn simulator_smoke_200_agents_and_two_rollouts() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(bin("cutover-sim"))
        .args(["bench", "smoke", "--agents", "200", "--dir"])
        .arg(dir.path())
        .output()
        .expect("run cutover-sim");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "cutover-sim failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("enrolled 200 host(s)"), "{stdout}");
    assert!(
        stdout.contains("rollout 200 hosts (max_parallel 50): succeeded"),
        "{stdout}"
    );
    assert!(
        stdout.contains("rollout 200 hosts, host 100 failing: rolled_back")
            && stdout.contains("101 rollback commands"),
        "{stdout}"
    );
}
