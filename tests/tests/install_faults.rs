//! The install pipeline under faults: corrupt and malicious artifacts,
//! agents and controllers killed mid-rollout, broken downloads, and an
//! agent that loses its controller while its new release is failing.

use std::time::Duration;

use cutover_cli::bundle::Floor;
use cutover_tests::sample::{steps, Svc};
use cutover_tests::{eventually, Fleet, Value};

const HOSTS: [&str; 3] = ["h1", "h2", "h3"];

fn world(policy: &str, controller_extra: &str, fleet: impl Fn(String) -> String) -> Fleet {
    let mut f = Fleet::new();
    f.controller_extra = controller_extra.into();
    f.assign_ports(&HOSTS, &["api"]);
    f.start_controller();
    f.start_agents(&HOSTS);
    f.apply_fleet_text(&fleet(cutover_tests::sample::sample_fleet(
        &HOSTS,
        &["api"],
        policy,
    )));
    f.sample_release("1.0.0", &[Svc::new("api", "1.0")], Floor::default());
    f.upgrade(&["api"], "1.0.0", &[]).ok();
    f
}

fn rollout_id(f: &Fleet) -> String {
    cutover_tests::id(&f.cli_json(&["rollout", "list"])[0]["id"]).to_string()
}

fn wait_stage(f: &Fleet, host: &str, stage: &str) {
    eventually(
        Duration::from_secs(30),
        &format!("{host} at stage {stage}"),
        || (f.journal_stage(host, "api").as_deref() == Some(stage)).then_some(()),
    );
}

/// Processes serving the sample on this port (from /proc cmdlines).
fn processes_on(port: u16) -> usize {
    let needle = format!("--port\0{port}\0");
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| {
            std::fs::read(e.path().join("cmdline"))
                .map(|c| {
                    String::from_utf8_lossy(&c).contains(&needle)
                        && String::from_utf8_lossy(&c).contains("cutover-sample")
                })
                .unwrap_or(false)
        })
        .count()
}

#[test]
fn corrupted_artifact_is_refused_nothing_is_swapped_and_the_old_service_keeps_running() {
    let f = world("", "", |t| t);
    let pid = f.service_pid("h1", "api");
    f.sample_release("1.1.0", &[Svc::new("api", "1.1")], Floor::default());
    let list = f.cli_json(&["release", "list"]);
    let sha = list
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["version"] == "1.1.0")
        .unwrap()["services"][0]["tarball_sha256"]
        .as_str()
        .unwrap()
        .to_string();
    let stored = f.path("controller/artifacts").join(&sha);
    let mut bytes = std::fs::read(&stored).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&stored, bytes).unwrap();

    f.upgrade(&["api"], "1.1.0", &[])
        .fails_with("ended rolled_back");
    let r = f.last_rollout();
    let e = &r["rollout"]["failure"]["evidence"];
    assert_eq!(e["gate"], "verify", "{r}");
    assert!(
        e["detail"]
            .as_str()
            .unwrap()
            .contains("but the release pins"),
        "{e}"
    );
    assert_eq!(f.served_version("h1", "api").as_deref(), Some("1.0"));
    assert_eq!(f.service_pid("h1", "api"), pid, "old service restarted");
    let releases = std::fs::read_dir(f.agent_dir("h1").join("releases"))
        .unwrap()
        .count();
    assert_eq!(releases, 1, "only the old release on disk");
}

/// A plain tar whose headers are written by hand, so that names and types
/// a well-behaved builder refuses can be made.
fn raw_tar(entries: &[(&str, u8, &[u8], &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, kind, data, link) in entries {
        let mut h = [0u8; 512];
        h[..name.len()].copy_from_slice(name.as_bytes());
        h[100..107].copy_from_slice(b"0000644");
        h[108..115].copy_from_slice(b"0000000");
        h[116..123].copy_from_slice(b"0000000");
        h[124..135].copy_from_slice(format!("{:011o}", data.len()).as_bytes());
        h[136..147].copy_from_slice(b"00000000000");
        h[156] = *kind;
        h[157..157 + link.len()].copy_from_slice(link.as_bytes());
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        h[148..156].copy_from_slice(b"        ");
        let sum: u32 = h.iter().map(|b| u32::from(*b)).sum();
        h[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
        out.extend_from_slice(&h);
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.resize(out.len() + 1024, 0);
    out
}

#[test]
fn every_malicious_archive_class_is_refused_and_nothing_outside_is_touched() {
    let f = world("", "", |t| t);
    let pid = f.service_pid("h1", "api");
    let outside = f.path("evil");
    let absolute = format!("{}/evil-absolute", f.dir.path().display());
    let many: Vec<String> = (0..1001).map(|i| format!("f{i}")).collect();
    let mut too_many: Vec<(&str, u8, &[u8], &str)> = many
        .iter()
        .map(|n| (n.as_str(), b'0', &b""[..], ""))
        .collect();
    too_many.truncate(1001);
    let big = vec![0u8; 65 << 20];
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (
            raw_tar(&[("../../../../evil", b'0', b"x", "")]),
            "path contains `..`",
        ),
        (
            raw_tar(&[(absolute.as_str(), b'0', b"x", "")]),
            "absolute paths are not allowed",
        ),
        (
            raw_tar(&[
                ("link", b'2', b"", "../../../.."),
                ("link/evil", b'0', b"x", ""),
            ]),
            "resolves outside the release",
        ),
        (
            raw_tar(&[("hard", b'1', b"", "/etc/passwd")]),
            "hard links are not allowed",
        ),
        (
            raw_tar(&[("dev", b'3', b"", "")]),
            "device files are not allowed",
        ),
        (raw_tar(&[("fifo", b'6', b"", "")]), "FIFOs are not allowed"),
        (
            raw_tar(&[("VERSION", b'0', b"1", ""), ("./VERSION", b'0', b"2", "")]),
            "appears twice",
        ),
        (raw_tar(&too_many), "more than 1000 entries"),
        (
            raw_tar(&[("big", b'0', &big, "")]),
            "more than 67108864 bytes",
        ),
    ];
    for (i, (bytes, expected)) in cases.into_iter().enumerate() {
        let version = format!("1.0.{}", i + 1);
        f.raw_release(&version, "api", &bytes);
        f.upgrade(&["api"], &version, &[])
            .fails_with("ended rolled_back");
        let r = f.last_rollout();
        let e = &r["rollout"]["failure"]["evidence"];
        assert_eq!(e["gate"], "unpack", "{expected}: {e}");
        assert!(
            e["detail"].as_str().unwrap().contains(expected),
            "{expected}: {e}"
        );
        assert!(
            !outside.exists() && !std::path::Path::new(&absolute).exists(),
            "{expected}: wrote outside"
        );
        let leftovers: Vec<_> = std::fs::read_dir(f.agent_dir("h1").join("releases"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with('.'))
            .collect();
        assert!(
            leftovers.is_empty(),
            "{expected}: staging left behind: {leftovers:?}"
        );
        assert_eq!(f.served_version("h1", "api").as_deref(), Some("1.0"));
        assert_eq!(f.service_pid("h1", "api"), pid);
    }
}

#[test]
fn controller_killed_mid_rollout_resumes_and_redoes_no_step() {
    let mut f = world("", "", |t| t);
    f.sample_release("1.1.0", &[Svc::new("api", "1.1")], Floor::default());
    f.cli(&["upgrade", "api", "--version", "1.1.0", "--yes"])
        .ok();
    let id = rollout_id(&f);
    eventually(Duration::from_secs(30), "canary healthy", || {
        (steps(&f.rollout(id.parse().unwrap()), "healthy").len() == 1).then_some(())
    });
    f.kill_controller();
    std::thread::sleep(Duration::from_millis(500));
    f.start_controller();
    f.cli(&["rollout", "watch", &id]).ok();
    let r: Value = f.rollout(id.parse().unwrap());
    assert_eq!(r["rollout"]["status"], "succeeded");
    assert_eq!(
        r["rollout"]["steps"][0]["sends"], 1,
        "canary resent after the restart"
    );
    for h in HOSTS {
        assert_eq!(f.served_version(h, "api").as_deref(), Some("1.1"));
        let done = f
            .agent_log(h)
            .lines()
            .filter(|l| l.contains("command succeeded") && l.contains(&format!("r{id}-api-{h}")))
            .count();
        assert_eq!(done, 1, "{h} installed more than once:\n{}", f.agent_log(h));
        let healthy = r["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["kind"] == "step.healthy" && e["host"] == h)
            .count();
        assert_eq!(healthy, 1, "{h}");
    }
}

#[test]
fn agent_killed_after_download_after_swap_and_during_checks_recovers_to_old_or_new() {
    // The service ignores SIGTERM, so stopping the old release takes the
    // whole grace period: a window after download and before the swap.
    let mut f = world("", "", |t| {
        t.replace(
            "command = \"bin/cutover-sample\"\nargs = [\"--port\", \"${api_port}\"]\nstop_grace = \"2s\"\nmin_healthy_time = \"1s\"\nhealthy_deadline = \"4s\"",
            "command = \"/bin/sh\"\nargs = [\"-c\", \"trap '' TERM; exec bin/cutover-sample --port ${api_port}\"]\nstop_grace = \"3s\"\nmin_healthy_time = \"3s\"\nhealthy_deadline = \"15s\"",
        )
    });
    f.sample_release("1.1.0", &[Svc::new("api", "1.1")], Floor::default());
    f.cli(&["upgrade", "api", "--version", "1.1.0", "--yes"])
        .ok();
    let id = rollout_id(&f);

    for (host, stage, pause) in [
        ("h1", "Swapping", 0),
        ("h2", "Checking", 0),
        ("h3", "Checking", 1500),
    ] {
        wait_stage(&f, host, stage);
        std::thread::sleep(Duration::from_millis(pause));
        f.kill_agent(host);
        let port = f.port_of(host, "api");
        std::thread::sleep(Duration::from_millis(300));
        let serving = f.served_version(host, "api");
        assert!(
            matches!(serving.as_deref(), None | Some("1.0") | Some("1.1")),
            "{host}: {serving:?}"
        );
        assert!(
            processes_on(port) <= 1,
            "{host}: two releases running at once"
        );
        f.spawn_agent(host, "500ms", None);
        eventually(
            Duration::from_secs(30),
            &format!("{host} back on exactly one release"),
            || {
                let v = f.served_version(host, "api")?;
                (processes_on(port) == 1 && (v == "1.0" || v == "1.1")).then_some(())
            },
        );
    }
    f.cli(&["rollout", "watch", &id]).ok();
    for h in HOSTS {
        assert_eq!(f.served_version(h, "api").as_deref(), Some("1.1"), "{h}");
        assert_eq!(processes_on(f.port_of(h, "api")), 1, "{h}");
        assert!(
            f.agent_log(h).contains("interrupted"),
            "{h} did not recover:\n{}",
            f.agent_log(h)
        );
    }
}

#[test]
fn broken_connection_during_a_large_download_resumes_from_its_offset() {
    let mut f = world("", "fetch_rate_limit = 6000000", |t| t);
    f.sample_release(
        "1.1.0",
        &[Svc::new("api", "1.1").ballast(16 << 20)],
        Floor::default(),
    );
    f.cli(&["upgrade", "api", "--version", "1.1.0", "--yes"])
        .ok();
    let id = rollout_id(&f);
    let downloads = f.agent_dir("h1").join("downloads");
    eventually(
        Duration::from_secs(30),
        "h1 halfway through the download",
        || {
            let part = std::fs::read_dir(&downloads).ok()?.flatten().next()?;
            (part.metadata().ok()?.len() > 4 << 20).then_some(())
        },
    );
    f.kill_controller();
    std::thread::sleep(Duration::from_millis(700));
    f.start_controller();
    f.cli(&["rollout", "watch", &id]).ok();
    assert_eq!(f.served_version("h1", "api").as_deref(), Some("1.1"));
    assert!(
        f.agent_log("h1").contains("download interrupted; resuming"),
        "{}",
        f.agent_log("h1")
    );
    let resumed: Vec<u64> = f
        .controller_log()
        .lines()
        .filter(|l| l.contains("artifact fetch") && l.contains("host=h1"))
        .filter_map(|l| {
            l.split("offset=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .collect();
    assert!(
        resumed.iter().any(|o| *o > 4 << 20),
        "no fetch resumed past 4 MiB: {resumed:?}"
    );
}

#[test]
fn agent_that_lost_its_controller_rolls_a_failing_release_back_itself_and_reports_it() {
    let mut f = world("", "", |t| {
        t.replace("healthy_deadline = \"4s\"", "healthy_deadline = \"60s\"")
    });
    f.sample_release("1.1.0", &[Svc::new("api", "1.1").sick()], Floor::default());
    f.cli(&["upgrade", "api", "--version", "1.1.0", "--yes"])
        .ok();
    let id = rollout_id(&f);
    wait_stage(&f, "h1", "Checking");
    f.kill_controller();
    eventually(Duration::from_secs(30), "h1 back on 1.0 on its own", || {
        (f.served_version("h1", "api").as_deref() == Some("1.0")).then_some(())
    });
    f.start_controller();
    f.cli(&["rollout", "watch", &id])
        .fails_with("ended rolled_back");
    let r = f.rollout(id.parse().unwrap());
    assert_eq!(
        steps(&r, "rolled_back"),
        [("api".to_string(), "h1".to_string())]
    );
    assert!(
        r["rollout"]["failure"]["message"]
            .as_str()
            .unwrap()
            .contains("nothing else"),
        "{r}"
    );
    assert!(f.agent_log("h1").contains("rolling back on my own"));
    assert_eq!(f.served_version("h2", "api").as_deref(), Some("1.0"));
}

/// The release directories on `host`, by digest.
fn releases_on(f: &Fleet, host: &str) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(f.agent_dir(host).join("releases"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    names.sort();
    names
}

#[test]
fn an_unreadable_journal_deletes_no_release_refuses_its_service_and_is_named_in_diag() {
    let mut f = Fleet::new();
    f.assign_ports(&["h1"], &["api", "web"]);
    f.start_controller();
    f.start_agent("h1", "500ms");
    f.wait_online("h1");
    f.apply_sample_fleet(&["h1"], &["api", "web"], "");
    let release = |f: &Fleet, v: &str, api: &str, web: &str| {
        f.sample_release(
            v,
            &[Svc::new("api", api), Svc::new("web", web)],
            Floor::default(),
        );
    };
    release(&f, "1.0.0", "1.0", "2.0");
    f.upgrade(&["api", "web"], "1.0.0", &[]).ok();
    release(&f, "1.1.0", "1.1", "2.0");
    f.upgrade(&["api"], "1.1.0", &[]).ok();
    assert_eq!(releases_on(&f, "h1").len(), 3, "api 1.0 and 1.1, web 2.0");

    // The agent stops; web's journal is damaged; the agent comes back.
    f.kill_agent("h1");
    let journal = f.agent_dir("h1").join("services/web/journal.json");
    let damaged = b"{\"service\": \"web\", \"current\": {\"ident";
    std::fs::write(&journal, damaged).unwrap();
    f.spawn_agent("h1", "500ms", None);
    f.wait_online("h1");

    // api moves on, which once made garbage collection delete everything;
    // api 1.0 is not needed by any readable journal, but nothing is removed.
    release(&f, "1.2.0", "1.2", "2.0");
    f.upgrade(&["api"], "1.2.0", &[]).ok();
    assert_eq!(f.served_version("h1", "api").as_deref(), Some("1.2"));
    assert_eq!(releases_on(&f, "h1").len(), 4, "a release was deleted");
    assert_eq!(f.served_version("h1", "web").as_deref(), Some("2.0"));

    // The operator sees it: status lists web as broken, diag names the file.
    let web_state = |f: &Fleet| {
        f.hosts()["h1"]["services"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == "web")
            .map(|s| s["state"].as_str().unwrap_or_default().to_string())
    };
    assert_eq!(web_state(&f).as_deref(), Some("journal_unreadable"));
    // ...and the event log says so, naming the service.
    let events = f.cli_json(&["events"]);
    assert!(
        events
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "host.journal_broken"
                && e["host"] == "h1"
                && e["detail"]
                    .as_str()
                    .is_some_and(|d| d.contains("web (journal unreadable)"))),
        "{events}"
    );
    let d = f.cli_json(&["diag", "h1"]);
    let detail = d["logs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["service"] == "web")
        .and_then(|l| l["detail"].as_str())
        .unwrap_or_default()
        .to_string();
    assert!(
        detail.contains(journal.to_str().unwrap()) && detail.contains("repair or remove it"),
        "{d}"
    );

    // An install for web is refused with that reason, and nothing changes.
    release(&f, "1.3.0", "1.2", "2.1");
    let run = f.upgrade(&["web"], "1.3.0", &[]);
    assert_ne!(run.code, 0, "{run:?}");
    let r = f.last_rollout();
    let e = &r["rollout"]["failure"]["evidence"];
    assert_eq!(e["gate"], "journal", "{r}");
    assert!(
        e["detail"]
            .as_str()
            .unwrap_or_default()
            .contains(journal.to_str().unwrap()),
        "{r}"
    );
    assert_eq!(std::fs::read(&journal).unwrap(), damaged);
    assert_eq!(f.served_version("h1", "web").as_deref(), Some("2.0"));
    assert_eq!(releases_on(&f, "h1").len(), 4);
}

#[test]
fn a_deleted_journal_leaves_the_service_known_and_its_next_install_replaces_the_old_process() {
    let mut f = Fleet::new();
    f.assign_ports(&["h1"], &["api"]);
    f.start_controller();
    f.start_agent("h1", "500ms");
    f.wait_online("h1");
    f.apply_sample_fleet(&["h1"], &["api"], "");
    f.sample_release("1.0.0", &[Svc::new("api", "1.0")], Floor::default());
    f.upgrade(&["api"], "1.0.0", &[]).ok();
    let old = f.service_pid("h1", "api").expect("pid file");

    f.kill_agent("h1");
    std::fs::remove_file(f.agent_dir("h1").join("services/api/journal.json")).unwrap();
    f.spawn_agent("h1", "500ms", None);
    f.wait_online("h1");
    let state = f.hosts()["h1"]["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "api")
        .map(|s| s["state"].as_str().unwrap_or_default().to_string());
    assert_eq!(state.as_deref(), Some("journal_missing"));
    assert_eq!(f.served_version("h1", "api").as_deref(), Some("1.0"));

    // Once the old process kept its port and the new one could not start.
    f.sample_release("1.1.0", &[Svc::new("api", "1.1")], Floor::default());
    f.upgrade(&["api"], "1.1.0", &[]).ok();
    assert_eq!(f.served_version("h1", "api").as_deref(), Some("1.1"));
    assert_ne!(f.service_pid("h1", "api"), Some(old));
    assert_eq!(
        processes_on(f.port_of("h1", "api")),
        1,
        "the old process still runs"
    );
    assert!(
        f.journal_stage("h1", "api").is_none()
            && f.agent_dir("h1")
                .join("services/api/journal.json")
                .is_file(),
        "no new journal"
    );
}

#[test]
fn two_services_pinning_one_tarball_on_one_host_install_at_once_into_one_whole_release() {
    let mut f = Fleet::new();
    f.assign_ports(&["h1"], &["api", "web"]);
    f.start_controller();
    f.start_agent("h1", "500ms");
    f.wait_online("h1");
    f.apply_sample_fleet(&["h1"], &["api", "web"], "");
    // The same files, so the same tarball: one digest pinned twice, large
    // enough that the two installs overlap.
    let svc = |name| Svc::new(name, "1.0").ballast(8 << 20);
    f.sample_release("1.0.0", &[svc("api"), svc("web")], Floor::default());
    let list = f.cli_json(&["release", "list"]);
    let shas: Vec<&str> = list[0]["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["tarball_sha256"].as_str().unwrap())
        .collect();
    assert!(shas.len() == 2 && shas[0] == shas[1], "{list}");

    f.upgrade(&["api", "web"], "1.0.0", &[]).ok();
    // Both commands were under way at once: the race this pins.
    let log = f.agent_log("h1");
    let received: Vec<usize> = log
        .match_indices("command received")
        .map(|(i, _)| i)
        .collect();
    let done = log.find("command succeeded").expect("a command succeeded");
    assert!(received.len() == 2 && received[1] < done, "{log}");
    assert_eq!(f.served_version("h1", "api").as_deref(), Some("1.0"));
    assert_eq!(f.served_version("h1", "web").as_deref(), Some("1.0"));
    let all: Vec<String> = std::fs::read_dir(f.agent_dir("h1").join("releases"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(all.len(), 1, "staging left behind: {all:?}");
    assert_eq!(
        std::fs::metadata(
            f.agent_dir("h1")
                .join("releases")
                .join(&all[0])
                .join("ballast.bin")
        )
        .unwrap()
        .len(),
        8 << 20
    );
}

#[test]
fn a_stray_directory_with_an_invalid_name_under_services_keeps_no_host_offline() {
    use std::os::unix::ffi::OsStrExt;
    let mut f = Fleet::new();
    f.assign_ports(&["h1"], &["api"]);
    f.start_controller();
    f.start_agent("h1", "500ms");
    f.wait_online("h1");
    f.apply_sample_fleet(&["h1"], &["api"], "");
    f.sample_release("1.0.0", &[Svc::new("api", "1.0")], Floor::default());
    f.upgrade(&["api"], "1.0.0", &[]).ok();

    // Once the agent listed these under their directory names, and the
    // controller refused every hello for the invalid name.
    f.kill_agent("h1");
    let services = f.agent_dir("h1").join("services");
    let bad = services.join("bad name!");
    std::fs::create_dir_all(&bad).unwrap();
    std::fs::write(bad.join("journal.json"), b"not json").unwrap();
    let raw = services.join(std::ffi::OsStr::from_bytes(b"\xff\xfeweb"));
    std::fs::create_dir_all(&raw).unwrap();
    f.spawn_agent("h1", "500ms", None);
    f.wait_online("h1");
    let names: Vec<String> = f.hosts()["h1"]["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(names, ["api"]);

    f.sample_release("1.1.0", &[Svc::new("api", "1.1")], Floor::default());
    f.upgrade(&["api"], "1.1.0", &[]).ok();
    assert_eq!(f.served_version("h1", "api").as_deref(), Some("1.1"));
    assert!(
        bad.join("journal.json").is_file() && raw.is_dir(),
        "a stray directory was touched"
    );
}

#[test]
fn a_failed_install_after_a_deleted_journal_rolls_back_to_the_release_that_ran() {
    let mut f = Fleet::new();
    f.assign_ports(&["h1"], &["api"]);
    f.start_controller();
    f.start_agent("h1", "500ms");
    f.wait_online("h1");
    f.apply_sample_fleet(&["h1"], &["api"], "");
    f.sample_release("1.0.0", &[Svc::new("api", "1.0")], Floor::default());
    f.upgrade(&["api"], "1.0.0", &[]).ok();
    let ran = releases_on(&f, "h1");
    assert_eq!(ran.len(), 1, "{ran:?}");

    f.kill_agent("h1");
    std::fs::remove_file(f.agent_dir("h1").join("services/api/journal.json")).unwrap();
    f.spawn_agent("h1", "500ms", None);
    f.wait_online("h1");

    // The new release fails its checks: once the release that ran had
    // been collected and there was nothing to go back to.
    f.sample_release("1.1.0", &[Svc::new("api", "1.1").sick()], Floor::default());
    f.upgrade(&["api"], "1.1.0", &[])
        .fails_with("ended rolled_back");
    eventually(Duration::from_secs(30), "api back on 1.0", || {
        (f.served_version("h1", "api").as_deref() == Some("1.0")).then_some(())
    });
    assert!(
        releases_on(&f, "h1").contains(&ran[0]),
        "the release that ran was deleted"
    );
    let log = f.agent_log("h1");
    assert!(!log.contains("no previous release"), "{log}");
    let api = f.hosts()["h1"]["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "api")
        .cloned()
        .expect("api listed");
    assert_eq!(api["state"], "running", "{api}");
}
