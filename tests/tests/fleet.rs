//! Fleet state over time: controller restarts, agents that die or freeze,
//! live diagnostics, and the store left alone by heartbeats.

use std::time::{Duration, SystemTime};

use cutover_core::Sha256Digest;
use cutover_tests::{eventually, Fleet};
use nix::sys::signal::Signal;

fn import_small_release(f: &Fleet) {
    let dir = f.path("rel");
    std::fs::create_dir_all(&dir).unwrap();
    let bytes = b"the api artifact".to_vec();
    std::fs::write(dir.join("api.tar.gz"), &bytes).unwrap();
    let manifest = dir.join("release.toml");
    std::fs::write(
        &manifest,
        format!(
            "version = \"2.0.0\"\ncreated = 2026-01-01T00:00:00Z\nexpires = 2099-01-01T00:00:00Z\n[[services]]\nname = \"api\"\nservice_version = \"2.0\"\ntarball = {{ sha256 = \"{}\", size = {}, file = \"api.tar.gz\" }}\n",
            Sha256Digest::of(&bytes),
            bytes.len()
        ),
    )
    .unwrap();
    let m = manifest.to_str().unwrap();
    f.cli(&[
        "release",
        "sign",
        m,
        "--key",
        f.path("release.key").to_str().unwrap(),
    ])
    .ok();
    f.cli(&["release", "import", m]).ok();
    f.cli(&["channel", "set", "stable", "2.0.0"]).ok();
    f.cli(&["channel", "default", "stable"]).ok();
}

#[test]
fn controller_restart_loses_nothing_and_agents_come_back_by_themselves() {
    let mut f = Fleet::new();
    f.start_controller();
    f.start_agent("edge-1", "500ms");
    f.start_agent("edge-2", "500ms");
    f.wait_online("edge-1");
    f.wait_online("edge-2");
    import_small_release(&f);
    let before = f.hosts();
    let status_before = f.cli_json(&["status"]);

    f.kill_controller();
    f.start_controller();
    f.wait_online("edge-1");
    f.wait_online("edge-2");

    let after = f.hosts();
    for host in ["edge-1", "edge-2"] {
        assert_eq!(after[host]["cert_serial"], before[host]["cert_serial"]);
        assert_eq!(after[host]["enrolled_at"], before[host]["enrolled_at"]);
    }
    let status = f.cli_json(&["status"]);
    assert_eq!(status["releases"], status_before["releases"]);
    assert_eq!(status["channels"], status_before["channels"]);
    assert_eq!(status["hosts_online"], 2);
    // The artifact is still in the store: importing again sends nothing.
    let again = f
        .cli(&[
            "release",
            "import",
            f.path("rel/release.toml").to_str().unwrap(),
        ])
        .ok();
    assert!(
        again.stdout.contains("already imported"),
        "{}",
        again.stdout
    );
    let digest = Sha256Digest::of(b"the api artifact").to_hex();
    assert!(f.path("controller/artifacts").join(digest).is_file());
}

#[test]
fn killed_agent_is_offline_and_frozen_agent_after_three_missed_heartbeats() {
    let mut f = Fleet::new();
    f.start_controller();
    f.start_agent("edge-1", "300ms");
    f.start_agent("edge-2", "300ms");
    f.wait_online("edge-1");
    f.wait_online("edge-2");

    f.kill_agent("edge-1");
    eventually(Duration::from_secs(3), "killed edge-1 offline", || {
        (!f.is_online("edge-1")).then_some(())
    });

    // A frozen process keeps its TCP connection open: only the missed
    // heartbeats (3 x 300 ms) can tell.
    f.signal_agent("edge-2", Signal::SIGSTOP);
    let frozen = std::time::Instant::now();
    eventually(Duration::from_secs(5), "frozen edge-2 offline", || {
        (!f.is_online("edge-2")).then_some(())
    });
    assert!(
        frozen.elapsed() >= Duration::from_millis(600),
        "{:?}",
        frozen.elapsed()
    );
    f.signal_agent("edge-2", Signal::SIGCONT);
    f.wait_online("edge-2");
    let hosts = f.cli(&["hosts"]).ok().stdout;
    assert!(
        hosts
            .lines()
            .any(|l| l.starts_with("edge-1") && l.contains("offline")),
        "{hosts}"
    );
}

#[test]
fn agent_acked_every_other_heartbeat_stays_on_and_leaves_a_frozen_controller() {
    let mut f = Fleet::new();
    f.start_controller();
    f.start_agent("edge-1", "200ms");
    f.wait_online("edge-1");
    // Ten heartbeats, five of them acked: half the acks is not silence.
    std::thread::sleep(Duration::from_secs(2));
    let ended = |f: &Fleet| f.agent_log("edge-1").matches("session ended").count();
    assert_eq!(ended(&f), 0, "{}", f.agent_log("edge-1"));

    // A frozen controller keeps its TCP connections open: only the
    // unanswered acks can tell. The last ack came at most two intervals
    // before the freeze, the limit is six.
    f.signal_controller(Signal::SIGSTOP);
    let frozen = std::time::Instant::now();
    eventually(
        Duration::from_secs(10),
        "edge-1 to leave the frozen controller",
        || (ended(&f) == 1).then_some(()),
    );
    let waited = frozen.elapsed();
    f.signal_controller(Signal::SIGCONT);
    assert!(waited >= Duration::from_millis(750), "{waited:?}");
    let log = f.agent_log("edge-1");
    assert!(
        log.contains("controller silent: 3 acks unanswered"),
        "{log}"
    );
    f.wait_online("edge-1");
}

#[test]
fn diag_returns_real_figures_from_the_agents_host() {
    let mut f = Fleet::new();
    f.start_controller();
    f.start_agent("edge-1", "200ms");
    f.wait_online("edge-1");
    std::thread::sleep(Duration::from_millis(600)); // a few heartbeat round trips
    let d = f.cli_json(&["diag", "edge-1"]);
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    assert_eq!(d["hostname"], hostname.trim());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    assert_eq!(d["kernel"], kernel.trim());
    let cpus = std::thread::available_parallelism().unwrap().get() as u64;
    assert_eq!(d["cpus"].as_u64(), Some(cpus));
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
    let total_kib: u64 = meminfo
        .lines()
        .next()
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(d["mem_total_bytes"].as_u64(), Some(total_kib * 1024));
    assert!(d["mem_available_bytes"].as_u64().unwrap() > 0);
    assert_eq!(d["data_dir"], f.agent_dir("edge-1").to_str().unwrap());
    let disk_total = d["disk_total_bytes"].as_u64().unwrap();
    assert!(disk_total > 0 && d["disk_available_bytes"].as_u64().unwrap() <= disk_total);
    let uptime: f64 = std::fs::read_to_string("/proc/uptime")
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!((d["uptime_s"].as_u64().unwrap() as f64 - uptime).abs() < 5.0);
    assert_eq!(d["agent_version"], env!("CARGO_PKG_VERSION"));
    assert!(d["agent_uptime_s"].as_u64().unwrap() < 60);
    let rtt = d["rtt_ms"].as_f64().unwrap();
    assert!(rtt > 0.0 && rtt < 1000.0, "rtt {rtt}");
    assert!(d["clock_offset_ms"].as_f64().unwrap().abs() < 1000.0);
    assert_eq!(d["load"].as_array().unwrap().len(), 3);
    assert!(d["os"].as_str().unwrap().len() > 2);

    let text = f.cli(&["diag", "edge-1"]).ok().stdout;
    assert!(
        text.contains("session rtt") && text.contains(hostname.trim()),
        "{text}"
    );
    f.kill_agent("edge-1");
    eventually(Duration::from_secs(3), "edge-1 offline", || {
        (!f.is_online("edge-1")).then_some(())
    });
    f.cli(&["diag", "edge-1"])
        .fails_with("host \"edge-1\" is offline");
}

#[test]
fn heartbeats_never_write_the_store() {
    let mut f = Fleet::new();
    f.start_controller();
    f.start_agent("edge-1", "100ms");
    f.start_agent("edge-2", "100ms");
    f.wait_online("edge-1");
    f.wait_online("edge-2");
    std::thread::sleep(Duration::from_millis(300));
    let files = ["controller/state.db", "controller/state.db-wal"];
    let snapshot = || -> Vec<(u64, SystemTime)> {
        files
            .iter()
            .map(|p| {
                let m = std::fs::metadata(f.path(p)).unwrap();
                (m.len(), m.modified().unwrap())
            })
            .collect()
    };
    let before = snapshot();
    std::thread::sleep(Duration::from_secs(2)); // ~40 heartbeats
    assert_eq!(
        snapshot(),
        before,
        "the store changed while only heartbeats flowed"
    );
    assert!(f.is_online("edge-1") && f.is_online("edge-2"));
}
