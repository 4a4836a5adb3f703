//! Operator trust in a host's identity (issue 15): configs that resolve
//! where they are, one agent per data directory, one live session per
//! certificate, tokens that never silently take a name over, and revoking
//! and forgetting a host. Real controller, agents and CLI; real PKI.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use cutover_cli::bundle::Floor;
use cutover_tests::grpc::{self, Presented};
use cutover_tests::sample::Svc;
use cutover_tests::{bin, eventually, Fleet, Value};

/// A process the test started itself, killed when the test ends.
struct Extra(Child);

impl Drop for Extra {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Extra {
    fn exited(&mut self) -> Option<i32> {
        self.0
            .try_wait()
            .ok()
            .flatten()
            .map(|s| s.code().unwrap_or(-1))
    }
}

/// `h1` online running release 1.0.0 of the sample service `api`.
fn one_host_running_api(relative_config: bool) -> Fleet {
    let mut f = Fleet::new();
    f.assign_ports(&["h1"], &["api"]);
    f.start_controller();
    let token = f.token("h1", "5m");
    f.spawn_agent_as("h1", "500ms", Some(&token), relative_config);
    f.wait_online("h1");
    f.apply_sample_fleet(&["h1"], &["api"], "max_parallel = 1\nmax_unavailable = 1");
    f.sample_release("1.0.0", &[Svc::new("api", "1.0")], Floor::default());
    f.upgrade(&["api"], "1.0.0", &[]).ok();
    assert_eq!(f.served_version("h1", "api").as_deref(), Some("1.0"));
    f
}

fn events(f: &Fleet) -> Vec<Value> {
    f.cli_json(&["events", "--limit", "1000"])
        .as_array()
        .expect("events")
        .clone()
}

fn events_of(f: &Fleet, kind: &str, host: &str) -> Vec<Value> {
    events(f)
        .into_iter()
        .filter(|e| e["kind"] == kind && e["host"] == host)
        .collect()
}

fn same_dir(a: &Path, b: &Path) -> bool {
    std::fs::canonicalize(a).ok() == std::fs::canonicalize(b).ok()
}

#[test]
fn an_agent_started_with_a_relative_config_installs_and_rolls_back_in_the_absolute_data_dir_beside_it(
) {
    // `--config h1.toml` from the config's directory; data_dir = "agent-h1".
    let f = one_host_running_api(true);
    // The journal is where the config says, and the agent reports that
    // directory as an absolute path.
    let journal = f.agent_dir("h1").join("services/api/journal.json");
    assert!(journal.is_file(), "{} missing", journal.display());
    let diag = f.cli_json(&["diag", "h1"]);
    let data_dir = Path::new(diag["data_dir"].as_str().expect("data_dir"));
    assert!(data_dir.is_absolute(), "{data_dir:?}");
    assert!(same_dir(data_dir, &f.agent_dir("h1")), "{data_dir:?}");
    // A failing release is taken back to the release under that directory.
    f.sample_release("2.0.0", &[Svc::new("api", "2.0").sick()], Floor::default());
    let failed = f.upgrade(&["api"], "2.0.0", &[]);
    assert_eq!(failed.code, 1, "{failed:?}");
    assert_eq!(f.last_rollout()["rollout"]["status"], "rolled_back");
    eventually(Duration::from_secs(10), "1.0 served again", || {
        (f.served_version("h1", "api").as_deref() == Some("1.0")).then_some(())
    });
}

#[test]
fn a_second_agent_on_the_same_data_dir_refuses_to_start_naming_the_first_and_leaves_its_services_running(
) {
    let mut f = one_host_running_api(false);
    let first = f.agent_pid("h1");
    let service = f.service_pid("h1", "api").expect("service pid");
    let lock = std::fs::read_to_string(f.agent_dir("h1").join("agent.lock")).unwrap();
    assert_eq!(lock.trim(), first.to_string());

    let mut second = Extra(
        Command::new(bin("cutover-agent"))
            .arg("--config")
            .arg(f.path("h1.toml"))
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start a second agent"),
    );
    let code = eventually(
        Duration::from_secs(20),
        "the second agent to give up",
        || second.exited(),
    );
    assert_eq!(code, 1);
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut second.0.stderr.take().unwrap(), &mut stderr).unwrap();
    let msg = stderr.trim();
    assert!(!msg.contains('\n'), "one line: {msg}");
    assert!(
        msg.contains("is in use by another cutover-agent")
            && msg.contains(&format!("(pid {first})")),
        "{msg}"
    );

    // The first agent, its session and its service are untouched.
    assert_eq!(f.agent_exited("h1"), None);
    assert_eq!(f.service_pid("h1", "api"), Some(service));
    assert_eq!(f.served_version("h1", "api").as_deref(), Some("1.0"));
    f.wait_online("h1");

    // The lock goes with its holder, however it dies, and never with the
    // services it leaves running: a new agent starts and adopts them.
    f.kill_agent("h1");
    f.spawn_agent("h1", "500ms", None);
    f.wait_online("h1");
    let lock = std::fs::read_to_string(f.agent_dir("h1").join("agent.lock")).unwrap();
    assert_eq!(lock.trim(), f.agent_pid("h1").to_string());
    assert_eq!(f.service_pid("h1", "api"), Some(service));
}

#[test]
fn a_token_for_an_enrolled_host_needs_replace_and_the_new_identity_retires_the_old_certificate() {
    let mut f = Fleet::new();
    f.start_controller();
    f.start_agent("edge-1", "500ms");
    f.wait_online("edge-1");
    let old_serial = f.hosts()["edge-1"]["cert_serial"]
        .as_str()
        .unwrap()
        .to_string();
    let old = Presented::from_identity(&f.agent_dir("edge-1").join("identity.pem"));

    f.cli(&["token", "create", "edge-1"])
        .fails_with("already enrolled");
    f.cli(&["token", "create", "edge-1"])
        .fails_with("--replace");
    // A token made with --replace changes nothing until it is used.
    let token = f
        .cli(&["token", "create", "edge-1", "--replace"])
        .ok()
        .stdout
        .trim()
        .to_string();
    f.wait_online("edge-1");
    assert_eq!(f.hosts()["edge-1"]["cert_serial"], old_serial.as_str());

    let rt = grpc::runtime();
    let ca = f.pki.join("ca.pem");
    let new = rt
        .block_on(grpc::enroll(&f.url(), &ca, &token, "edge-1"))
        .expect("enroll with the --replace token");
    assert_ne!(f.hosts()["edge-1"]["cert_serial"], old_serial.as_str());
    // The old certificate is refused from now on, and the agent holding it
    // is told why.
    let refused = rt
        .block_on(grpc::open_session(&f.url(), &ca, &old, 1000))
        .err()
        .expect("old certificate refused");
    assert!(
        refused.contains("PermissionDenied") && refused.contains("was replaced"),
        "{refused}"
    );
    eventually(Duration::from_secs(10), "the old agent told", || {
        f.agent_log("edge-1").contains("was replaced").then_some(())
    });
    let replaced = events_of(&f, "host.replaced", "edge-1");
    assert_eq!(replaced.len(), 1, "{replaced:?}");
    let detail = replaced[0]["detail"].as_str().unwrap();
    assert!(
        detail.contains(&format!("certificate {old_serial} revoked")),
        "{detail}"
    );
    rt.block_on(grpc::open_session(&f.url(), &ca, &new, 1000))
        .expect("the new certificate opens a session");
}

/// A second agent process holding `host`'s identity (a copied data
/// directory), logging at `level`.
fn twin(f: &Fleet, host: &str, level: &str) -> Extra {
    let dir = f.path(&format!("twin-{host}"));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(
        f.agent_dir(host).join("identity.pem"),
        dir.join("identity.pem"),
    )
    .unwrap();
    let config = f.path(&format!("twin-{host}.toml"));
    std::fs::write(
        &config,
        format!(
            "controller = \"{}\"\nca_cert = \"pki/ca.pem\"\ndata_dir = \"twin-{host}\"\nheartbeat_interval = \"500ms\"\nreconnect_max_backoff = \"1s\"\n",
            f.url()
        ),
    )
    .unwrap();
    let log = std::fs::File::create(f.path(&format!("twin-{host}.log"))).unwrap();
    Extra(
        Command::new(bin("cutover-agent"))
            .arg("--config")
            .arg(&config)
            .env("RUST_LOG", level)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start the twin"),
    )
}

#[test]
fn a_second_live_session_with_one_certificate_is_refused_and_never_takes_the_host_over() {
    let mut f = Fleet::new();
    f.start_controller();
    f.start_agent("edge-1", "500ms");
    f.wait_online("edge-1");
    let since = f.hosts()["edge-1"]["connected_since"].clone();
    let mut twin = twin(&f, "edge-1", "cutover_agent=debug,info");
    let twin_log = || std::fs::read_to_string(f.path("twin-edge-1.log")).unwrap_or_default();
    // Refused, told why once, and retrying quietly (more than once).
    eventually(Duration::from_secs(20), "the twin refused twice", || {
        let log = twin_log();
        (log.contains("another session with the certificate of host edge-1 is live")
            && log.contains("session refused again"))
        .then_some(())
    });
    let log = twin_log();
    assert_eq!(
        log.matches("another session with the certificate").count(),
        1,
        "{log}"
    );
    assert!(log.contains("AlreadyExists"), "{log}");
    // The first agent's session was never replaced.
    assert_eq!(f.hosts()["edge-1"]["connected_since"], since);
    assert!(f.is_online("edge-1"));
    assert!(!f
        .agent_log("edge-1")
        .contains("replaced by a newer session"));
    assert_eq!(twin.exited(), None, "the twin keeps retrying");
    // Recorded once for the live session, however often the twin retried.
    let refused = events_of(&f, "session.refused", "edge-1");
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert!(refused[0]["detail"]
        .as_str()
        .unwrap()
        .contains("already has a live session"));

    // An agent whose old session is half-dead (here: the first agent
    // frozen, its connection open, its heartbeats stopped) gets in once
    // the controller has stopped hearing it.
    f.signal_agent("edge-1", nix::sys::signal::Signal::SIGSTOP);
    eventually(Duration::from_secs(20), "the twin's session open", || {
        let h = &f.hosts()["edge-1"];
        (h["online"] == true && h["connected_since"] != since).then_some(())
    });
    assert!(twin_log().contains("session open"));
    f.signal_agent("edge-1", nix::sys::signal::Signal::SIGCONT);
}

#[test]
fn host_revoke_asks_first_and_forget_lets_the_name_enroll_afresh_keeping_its_history() {
    let mut f = Fleet::new();
    f.start_controller();
    f.start_agent("edge-1", "500ms");
    f.wait_online("edge-1");
    let first_serial = f.hosts()["edge-1"]["cert_serial"].clone();

    // Not on a terminal and without --yes: refused, nothing revoked.
    let asked = f.cli(&["host", "revoke", "edge-1"]);
    assert_eq!(asked.code, 2, "{asked:?}");
    assert!(asked.stderr.contains("--yes"), "{asked:?}");
    assert_eq!(f.hosts()["edge-1"]["revoked"], false);
    f.cli(&["host", "forget", "edge-1"])
        .fails_with("only a revoked host can be forgotten");

    f.cli(&["host", "revoke", "edge-1", "--yes"]).ok();
    // The agent says why once and then waits minutes, not seconds.
    let wait = eventually(
        Duration::from_secs(20),
        "the agent told it is revoked",
        || {
            let log = f.agent_log("edge-1");
            let at = log.find("host edge-1 is revoked")?;
            let after = &log[at..];
            let retry = after.split("retry_in=").nth(1)?;
            let secs: f64 = retry.split('s').next()?.parse().ok()?;
            Some(secs)
        },
    );
    assert!(wait >= 300.0, "retries after {wait}s");
    assert_eq!(f.agent_log("edge-1").matches("is revoked:").count(), 1);
    assert_eq!(f.agent_exited("edge-1"), None, "the agent keeps running");
    f.cli(&["token", "create", "edge-1"])
        .fails_with("host forget edge-1");

    f.cli(&["host", "forget", "edge-1"]).ok();
    assert!(!f.hosts().contains_key("edge-1"));
    for kind in ["host.enrolled", "host.revoked", "host.forgotten"] {
        assert_eq!(events_of(&f, kind, "edge-1").len(), 1, "{kind}");
    }
    // A fresh identity under the name: a plain token enrolls it.
    f.kill_agent("edge-1");
    std::fs::remove_file(f.agent_dir("edge-1").join("identity.pem")).unwrap();
    f.start_agent("edge-1", "500ms");
    f.wait_online("edge-1");
    let h = &f.hosts()["edge-1"];
    assert_eq!(h["revoked"], false);
    assert_ne!(h["cert_serial"], first_serial);
}

#[test]
fn a_join_token_given_to_an_agent_that_holds_a_valid_identity_is_said_to_be_unused() {
    let mut f = Fleet::new();
    f.start_controller();
    f.start_agent("h1", "500ms");
    f.wait_online("h1");
    f.kill_agent("h1");
    let token = f.cli(&["token", "create", "h1", "--replace"]).ok().stdout;
    f.spawn_agent("h1", "500ms", Some(token.trim()));
    f.wait_online("h1");
    eventually(Duration::from_secs(10), "the warning", || {
        f.agent_log("h1")
            .contains("--join-token is not used: the data directory holds a valid identity")
            .then_some(())
    });
    // The token was not spent: no new identity replaced the old one.
    let events = f.cli(&["events"]).ok().stdout;
    assert!(!events.contains("host.replaced"), "{events}");
}

#[test]
fn an_agent_whose_config_names_a_ca_certificate_that_is_not_there_says_which_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        "controller = \"https://127.0.0.1:1\"\nca_cert = \"nowhere/ca.pem\"\ndata_dir = \"data\"\n",
    )
    .unwrap();
    let out = Command::new(bin("cutover-agent"))
        .arg("--config")
        .arg(&config)
        .arg("--join-token")
        .arg("t")
        .stdin(Stdio::null())
        .output()
        .expect("run the agent");
    assert_eq!(out.status.code(), Some(1));
    let msg = String::from_utf8_lossy(&out.stderr).trim().to_string();
    assert!(!msg.contains('\n'), "not one line: {msg}");
    assert!(
        msg.contains("ca_cert = \"")
            && msg.contains("nowhere/ca.pem")
            && msg.contains("fix the path"),
        "{msg}"
    );
}
