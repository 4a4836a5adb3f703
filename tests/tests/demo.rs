//! `cutover demo`, the README's main job: it shows a live fleet and leaves
//! no process behind, whether it ends by itself or by Ctrl-C (which exits
//! 130 when it cuts the show short, 0 when it ends a kept fleet).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use cutover_tests::{bin, eventually};

/// Processes whose command line mentions `dir`.
fn processes_under(dir: &Path) -> Vec<String> {
    let needle = dir.to_str().unwrap();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| {
            let cmdline = std::fs::read(e.ok()?.path().join("cmdline")).ok()?;
            let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            text.contains(needle).then_some(text)
        })
        .collect()
}

#[test]
fn demo_shows_three_online_agents_and_stops_everything() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("demo");
    let out = Command::new(bin("cutover"))
        .args(["demo", "--dir", work.to_str().unwrap()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("hosts:    3 online, 0 offline, 0 revoked"),
        "{stdout}"
    );
    for host in ["edge-1", "edge-2", "edge-3"] {
        assert!(stdout.contains(&format!("{host}  online")), "{stdout}");
    }
    assert!(stdout.contains("session rtt"), "{stdout}");
    // The good release went everywhere, the bad one stopped at the canary.
    for needle in [
        "rollout 1: succeeded 3/3 steps done",
        "rollout 2 ended rolled_back: web on edge-1 failed at the canary",
        "STOPPED at the canary: service web on host edge-1",
        "output    unhealthy: release 1.1.0 cannot reach its database",
        "edge-2  online  web@1.0 [running, healthy]",
    ] {
        assert!(
            stdout.contains(needle),
            "demo output lacks {needle:?}:\n{stdout}"
        );
    }
    assert!(
        processes_under(&work).is_empty(),
        "{:?}",
        processes_under(&work)
    );
}

#[test]
fn demo_stops_cleanly_on_ctrl_c() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("demo");
    let mut child = Command::new(bin("cutover"))
        .args(["demo", "--keep-running", "--dir", work.to_str().unwrap()])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let lines = BufReader::new(stdout).lines();
    let mut seen = String::new();
    for line in lines {
        let line = line.unwrap();
        seen.push_str(&line);
        seen.push('\n');
        if line.contains("Press Ctrl-C") {
            break;
        }
    }
    assert!(seen.contains("3 online"), "{seen}");
    let running = processes_under(&work);
    if running.len() != 8 {
        let _ = child.kill();
        panic!("want the demo, the controller, three agents and three services: {running:?}");
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let status = eventually(Duration::from_secs(15), "the demo to exit", || {
        child.try_wait().unwrap()
    });
    assert!(status.success(), "{status:?}");
    assert!(
        processes_under(&work).is_empty(),
        "{:?}",
        processes_under(&work)
    );
}

/// Live processes (not zombies) whose command line mentions `dir`, by pid.
fn pids_under(dir: &Path) -> Vec<(u32, String)> {
    let needle = dir.to_str().unwrap();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| {
            let e = e.ok()?;
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
            let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            text.contains(needle).then_some((pid, text))
        })
        .collect()
}

/// `pid` still runs `cmdline` (an empty command line is a zombie; another
/// one is a reused pid).
fn still_running(pid: u32, cmdline: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " ") == cmdline)
        .unwrap_or(false)
}

#[test]
fn demo_keep_running_stops_every_child_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("demo");
    let mut child = Command::new(bin("cutover"))
        .args(["demo", "--keep-running", "--dir", work.to_str().unwrap()])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut seen = String::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap();
        seen.push_str(&line);
        seen.push('\n');
        if line.contains("Press Ctrl-C") {
            break;
        }
    }
    assert!(seen.contains("3 online"), "{seen}");
    let started: Vec<(u32, String)> = pids_under(&work)
        .into_iter()
        .filter(|(pid, _)| *pid != child.id())
        .collect();
    if started.len() != 7 {
        let _ = child.kill();
        panic!("want the controller, three agents and three services: {started:?}");
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = eventually(
        Duration::from_secs(20),
        "the demo to exit on SIGTERM",
        || child.try_wait().unwrap(),
    );
    assert!(status.success(), "{status:?}");
    eventually(
        Duration::from_secs(10),
        "every process the demo started to be gone",
        || {
            started
                .iter()
                .all(|(pid, cmdline)| !still_running(*pid, cmdline))
                .then_some(())
        },
    );
    assert!(pids_under(&work).is_empty(), "{:?}", pids_under(&work));
}

#[test]
fn demo_cut_short_by_ctrl_c_exits_130_and_stops_everything() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("demo");
    let mut child = Command::new(bin("cutover"))
        .args(["demo", "--dir", work.to_str().unwrap()])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    for line in BufReader::new(stdout).lines() {
        if line
            .unwrap()
            .contains("$ cutover upgrade web --version 1.0.0")
        {
            break;
        }
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let status = eventually(Duration::from_secs(20), "the demo to exit", || {
        child.try_wait().unwrap()
    });
    assert_eq!(
        status.code(),
        Some(130),
        "the show was cut short: {status:?}"
    );
    eventually(Duration::from_secs(10), "every child gone", || {
        processes_under(&work).is_empty().then_some(())
    });
}
