//! What `packaging/` ships works as shipped: systemd's own tools accept the
//! units and the sysusers.d file, every example config parses with the
//! real parsers, and the units, the examples and the README name the same
//! paths. The tools are Debian's `systemd` package (scripts/install-test-deps
//! installs it); without them these tests fail, they never skip.

use std::path::{Path, PathBuf};
use std::process::Command;

use cutover_tests::bin;

fn packaging() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging")
}

/// Runs a systemd tool; a missing tool fails the test with the fix.
fn run_tool(program: &str, args: &[&str]) -> std::process::Output {
    Command::new(program).args(args).output().unwrap_or_else(|e| {
        panic!("cannot run {program}: {e}; install Debian's systemd package (scripts/install-test-deps does)")
    })
}

/// The `Key=Value` lines of one section of a unit file, in order.
fn directives(unit: &str, section: &str) -> Vec<(String, String)> {
    let mut current = String::new();
    let mut out = Vec::new();
    for line in unit.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            current = name.to_string();
        } else if current == section {
            let (k, v) = line.split_once('=').expect("Key=Value");
            out.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    out
}

fn directive(unit: &str, key: &str) -> Option<String> {
    directives(unit, "Service")
        .into_iter()
        .rev()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v)
}

fn unit(name: &str) -> String {
    std::fs::read_to_string(packaging().join("systemd").join(name)).expect("unit file")
}

#[test]
fn systemd_analyze_verify_accepts_both_units_with_the_built_binaries() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut paths = Vec::new();
    for (name, binary) in [
        ("cutover-controller.service", "cutover-controller"),
        ("cutover-agent.service", "cutover-agent"),
    ] {
        let text = unit(name);
        let installed = format!("/usr/local/bin/{binary}");
        assert!(
            text.contains(&format!("ExecStart={installed} ")),
            "{name} does not start {installed}"
        );
        // verify checks that ExecStart's program exists: point it at the
        // one cargo built.
        let text = text.replace(&installed, bin(binary).to_str().expect("utf-8"));
        let path = dir.path().join(name);
        std::fs::write(&path, text).expect("write unit");
        paths.push(path.to_str().expect("utf-8").to_string());
    }
    let mut args = vec!["verify"];
    args.extend(paths.iter().map(String::as_str));
    let out = run_tool("systemd-analyze", &args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "systemd-analyze verify: {stderr}");
    // A warning is a unit systemd would run differently from what it says.
    assert!(
        stderr.trim().is_empty(),
        "systemd-analyze verify warns: {stderr}"
    );
}

#[test]
fn the_controller_unit_waits_for_ready_with_a_watchdog_and_the_agent_unit_leaves_services_running_on_restart(
) {
    let controller = unit("cutover-controller.service");
    for (key, want) in [
        ("Type", "notify"),
        ("NotifyAccess", "main"),
        ("KillSignal", "SIGTERM"),
        ("User", "cutover"),
        ("Group", "cutover"),
        ("StateDirectory", "cutover"),
    ] {
        assert_eq!(
            directive(&controller, key).as_deref(),
            Some(want),
            "controller unit {key}"
        );
    }
    for key in ["WatchdogSec", "TimeoutStopSec", "TimeoutStartSec"] {
        assert!(
            directive(&controller, key).is_some(),
            "controller unit has no {key}"
        );
    }
    // The shutdown (5 s of requests, 5 s to record hosts, 1 s of runtime)
    // fits in the stop timeout.
    let stop: u64 = directive(&controller, "TimeoutStopSec")
        .and_then(|v| v.parse().ok())
        .expect("TimeoutStopSec in seconds");
    assert!(
        stop >= 15,
        "TimeoutStopSec={stop} is shorter than the shutdown"
    );
    let nofile: u64 = directive(&controller, "LimitNOFILE")
        .and_then(|v| v.parse().ok())
        .expect("LimitNOFILE a number");
    assert!(
        nofile >= 65536,
        "LimitNOFILE={nofile} holds fewer agents than the benchmarks run"
    );

    let agent = unit("cutover-agent.service");
    assert_eq!(
        directive(&agent, "KillMode").as_deref(),
        Some("process"),
        "an agent restart would kill the services it supervises"
    );
    assert_eq!(
        directive(&agent, "StateDirectory").as_deref(),
        Some("cutover-agent")
    );
}

#[test]
fn the_sysusers_file_creates_the_user_and_group_the_controller_unit_runs_as() {
    let root = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(root.path().join("etc")).expect("etc");
    let conf = packaging().join("sysusers.d/cutover.conf");
    let conf = conf
        .canonicalize()
        .unwrap_or_else(|e| panic!("{}: {e}; the unit's User= needs it", conf.display()));
    let out = run_tool(
        "systemd-sysusers",
        &[
            &format!("--root={}", root.path().display()),
            conf.to_str().expect("utf-8"),
        ],
    );
    assert!(
        out.status.success(),
        "systemd-sysusers: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let controller = unit("cutover-controller.service");
    let user = directive(&controller, "User").expect("User=");
    let group = directive(&controller, "Group").expect("Group=");
    let passwd = std::fs::read_to_string(root.path().join("etc/passwd")).expect("passwd");
    let entry = passwd
        .lines()
        .find(|l| l.starts_with(&format!("{user}:")))
        .unwrap_or_else(|| panic!("sysusers.d makes no user {user:?}: {passwd}"));
    // Its home is the state directory, and it cannot log in.
    let fields: Vec<&str> = entry.split(':').collect();
    assert_eq!(fields[5], "/var/lib/cutover", "{entry}");
    assert!(fields[6].ends_with("nologin"), "{entry}");
    let groups = std::fs::read_to_string(root.path().join("etc/group")).expect("group");
    assert!(
        groups.lines().any(|l| l.starts_with(&format!("{group}:"))),
        "sysusers.d makes no group {group:?}: {groups}"
    );
}

/// The config file a unit's ExecStart passes with `--config`.
fn config_of(unit: &str) -> String {
    let exec = directive(unit, "ExecStart").expect("ExecStart");
    let mut words = exec.split_whitespace();
    while let Some(w) = words.next() {
        if w == "--config" {
            return words.next().expect("--config FILE").to_string();
        }
    }
    panic!("ExecStart passes no --config: {exec}");
}

#[test]
fn every_example_config_in_packaging_parses_with_the_real_parsers_and_names_the_units_paths() {
    let mut seen = Vec::new();
    for entry in std::fs::read_dir(packaging()).expect("packaging/") {
        let path = entry.expect("entry").path();
        if path.extension().and_then(|e| e.to_str()) != Some("toml") {
            continue;
        }
        let name = path.file_name().and_then(|n| n.to_str()).expect("name");
        match name {
            "controller.toml" => {
                let c = cutover_controller::Config::load(&path)
                    .unwrap_or_else(|e| panic!("{name}: {e}"));
                let unit = unit("cutover-controller.service");
                assert_eq!(config_of(&unit), "/etc/cutover/controller.toml");
                let state = format!(
                    "/var/lib/{}",
                    directive(&unit, "StateDirectory").expect("StateDirectory")
                );
                assert_eq!(c.data_dir, PathBuf::from(&state), "{name} data_dir");
                assert_eq!(
                    directive(&unit, "ReadWritePaths").as_deref(),
                    Some(state.as_str())
                );
                for key in [&c.tls.ca_cert, &c.tls.ca_key, &c.tls.cert, &c.tls.key] {
                    assert!(key.starts_with("/etc/cutover/pki"), "{}", key.display());
                }
            }
            "agent.toml" => {
                let c =
                    cutover_agent::Config::load(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
                let unit = unit("cutover-agent.service");
                assert_eq!(config_of(&unit), "/etc/cutover/agent.toml");
                let state = format!(
                    "/var/lib/{}",
                    directive(&unit, "StateDirectory").expect("StateDirectory")
                );
                assert_eq!(c.data_dir, PathBuf::from(&state), "{name} data_dir");
                assert!(
                    !c.stop_services_on_exit,
                    "KillMode=process promises otherwise"
                );
            }
            "fleet.toml" => {
                let text = std::fs::read_to_string(&path).expect("fleet.toml");
                cutover_core::fleet::FleetConfig::parse(name, &text)
                    .unwrap_or_else(|e| panic!("{e}"));
            }
            other => panic!("packaging/{other}: no test knows which parser reads it; add it here"),
        }
        seen.push(name.to_string());
    }
    seen.sort();
    assert_eq!(seen, ["agent.toml", "controller.toml", "fleet.toml"]);
}

#[test]
fn the_readme_and_the_examples_put_service_links_under_the_agents_data_directory() {
    let agent = cutover_agent::Config::load(&packaging().join("agent.toml")).expect("agent.toml");
    let data_dir = agent.data_dir.to_str().expect("utf-8").to_string();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for file in ["README.md", "packaging/fleet.toml", "packaging/agent.toml"] {
        let text = std::fs::read_to_string(root.join(file)).expect(file);
        for (at, _) in text.match_indices("/services/") {
            let start = text[..at]
                .rfind(|c: char| c.is_whitespace() || c == '=' || c == '`' || c == '(')
                .map_or(0, |i| i + 1);
            let prefix = &text[start..at];
            if prefix.starts_with("/var/") {
                assert_eq!(
                    prefix, data_dir,
                    "{file} names {prefix}/services/…, but the agent's data_dir is {data_dir}"
                );
            }
        }
    }
}
