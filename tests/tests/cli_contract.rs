//! What the operator sees of the real `cutover` CLI when things go other
//! than planned: a reader that closes the pipe, Ctrl-C while following a
//! rollout, a controller that goes away, a missing file, a name or value
//! that cannot be right. Each ends in one line (or nothing) and an exit
//! code a script can act on.

use std::io::{BufRead, BufReader, Read};
use std::process::Child;
use std::time::Duration;

use cutover_cli::bundle::Floor;
use cutover_tests::sample::{sample_fleet, Svc};
use cutover_tests::{eventually, grpc, Fleet};

/// Waits for `child` to exit and returns its exit code and stderr.
fn finish(mut child: Child) -> (i32, String) {
    let status = eventually(Duration::from_secs(30), "the CLI to exit", || {
        child.try_wait().expect("try_wait")
    });
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .expect("stderr piped")
        .read_to_string(&mut stderr)
        .expect("read stderr");
    (status.code().unwrap_or(-1), stderr)
}

/// Reads stdout of `child` until a line satisfies `pred`; returns that
/// line and the reader (dropping it closes the pipe).
fn read_until(child: &mut Child, pred: impl Fn(&str) -> bool) -> (String, impl BufRead) {
    let mut reader = BufReader::new(child.stdout.take().expect("stdout piped"));
    loop {
        let mut line = String::new();
        let n = reader.read_line(&mut line).expect("read stdout");
        assert!(n > 0, "stdout ended before the line awaited");
        if pred(&line) {
            return (line, reader);
        }
    }
}

/// A controller whose event log holds `n` events of about 300 bytes
/// each (join tokens for long host names, made over gRPC): far more than
/// a pipe buffers.
fn controller_with_many_events(n: usize) -> Fleet {
    let mut f = Fleet::new();
    f.start_controller();
    let rt = grpc::runtime();
    rt.block_on(async {
        let mut op = grpc::operator_of(&f).await;
        for i in 0..n {
            op.create_token(cutover_proto::v1::CreateTokenRequest {
                host: format!("h{i:05}.{}", "x".repeat(240)),
                ttl_s: 60,
                replace: false,
            })
            .await
            .expect("create token");
        }
    });
    f
}

#[test]
fn a_reader_that_closes_the_pipe_early_ends_the_cli_quietly_with_exit_0() {
    let f = controller_with_many_events(1_000);
    for format in ["text", "json"] {
        let mut child = f.spawn_cli(&["events", "--limit", "5000", "--output", format]);
        let (first, reader) = read_until(&mut child, |_| true);
        assert!(!first.is_empty());
        drop(reader);
        let (code, stderr) = finish(child);
        assert_eq!(
            (code, stderr.as_str()),
            (0, ""),
            "{format}: a closed pipe is the reader's choice, not a failure"
        );
    }
}

#[test]
fn a_write_to_stdout_that_fails_ends_the_command_with_exit_1_and_one_line_even_when_following() {
    let f = controller_with_many_events(50);
    let cli = |args: &[&str], stdout: std::process::Stdio| {
        std::process::Command::new(cutover_tests::bin("cutover"))
            .args(args)
            .env("CUTOVER_CONTROLLER", f.url())
            .env("CUTOVER_PKI_DIR", &f.pki)
            .stdin(std::process::Stdio::null())
            .stdout(stdout)
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start cutover")
    };
    let full = || {
        std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .expect("/dev/full")
    };
    for args in [
        &["hosts", "-o", "json"][..],
        &["events", "--limit", "50"],
        &["events", "--follow", "-o", "json"],
    ] {
        let (code, stderr) = finish(cli(args, full().into()));
        assert_eq!(code, 1, "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: said once: {stderr}");
        assert!(
            stderr.starts_with("cutover: cannot write the output: No space left on device")
                && stderr.contains("what was written is incomplete"),
            "{args:?}: {stderr}"
        );
    }
}

/// One agent running `api` and `web`, and a rollout of `api` to release
/// 1.0.0 that stays running: the canary's checks pass but must go on
/// passing for an hour. `web` is free for a second rollout.
fn running_rollout() -> (Fleet, u64) {
    let mut f = Fleet::new();
    f.assign_ports(&["h1"], &["api", "web"]);
    f.start_controller();
    f.start_agent("h1", "500ms");
    f.wait_online("h1");
    f.apply_fleet_text(
        &sample_fleet(&["h1"], &["api", "web"], "")
            .replace("min_healthy_time = \"1s\"", "min_healthy_time = \"1h\"")
            .replace("healthy_deadline = \"4s\"", "healthy_deadline = \"2h\""),
    );
    f.sample_release(
        "1.0.0",
        &[Svc::new("api", "1.0"), Svc::new("web", "1.0")],
        Floor::default(),
    );
    let started = f.cli_json(&["upgrade", "api", "--version", "1.0.0", "--yes"]);
    let id = cutover_tests::id(&started["rollout"]["id"]);
    (f, id)
}

fn interrupted(id: u64) -> String {
    format!(
        "cutover: interrupted: rollout {id} goes on running on the controller; follow it again with `cutover rollout watch {id}` or stop it with `cutover rollout abort {id}`\n"
    )
}

/// The first status line of a watch is printed after its first poll, so
/// it is listening for Ctrl-C by then.
fn following(id: u64) -> impl Fn(&str) -> bool {
    move |l: &str| l.starts_with(&format!("rollout {id}: "))
}

fn rollout_status(f: &Fleet, id: u64) -> String {
    f.rollout(id)["rollout"]["status"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn interrupt(child: &Child) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .expect("SIGINT");
}

#[test]
fn ctrl_c_while_following_a_rollout_says_it_goes_on_and_how_to_watch_or_abort_it_and_exits_130() {
    let (f, id) = running_rollout();
    let mut child = f.spawn_cli(&["rollout", "watch", &id.to_string()]);
    let (_, reader) = read_until(&mut child, following(id));
    interrupt(&child);
    let (code, stderr) = finish(child);
    drop(reader);
    assert_eq!((code, stderr.as_str()), (130, interrupted(id).as_str()));
    assert_eq!(rollout_status(&f, id), "running");

    // `upgrade --wait` follows the rollout it started the same way.
    let mut child = f.spawn_cli(&["upgrade", "web", "--version", "1.0.0", "--yes", "--wait"]);
    let (started, mut reader) = read_until(&mut child, |l| l.contains(" started: "));
    let second: u64 = started
        .strip_prefix("rollout ")
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no rollout id in {started:?}"));
    loop {
        let mut line = String::new();
        assert!(reader.read_line(&mut line).expect("read stdout") > 0);
        if following(second)(&line) {
            break;
        }
    }
    interrupt(&child);
    let (code, stderr) = finish(child);
    drop(reader);
    assert_eq!((code, stderr.as_str()), (130, interrupted(second).as_str()));
    assert_eq!(rollout_status(&f, second), "running");
    assert_eq!(rollout_status(&f, id), "running");
}

#[test]
fn a_controller_that_goes_away_during_a_watch_is_one_line_naming_it_without_transport_debug_text() {
    let (mut f, id) = running_rollout();
    let mut child = f.spawn_cli(&["rollout", "watch", &id.to_string()]);
    let (_, reader) = read_until(&mut child, following(id));
    f.kill_controller();
    let (code, stderr) = finish(child);
    drop(reader);
    let line = stderr.trim_end();
    assert_eq!(code, 1, "{stderr}");
    assert!(!line.contains('\n'), "not one line: {stderr}");
    assert!(
        line.contains(&f.url()),
        "does not name the controller: {line}"
    );
    for debug in ["transport error", "source:", "Error(", "tonic", "hyper"] {
        assert!(
            !line.contains(debug),
            "{debug:?} reached the operator: {line}"
        );
    }
    assert!(
        line.contains("check that cutover-controller"),
        "says nothing to check: {line}"
    );
}

#[test]
fn no_controller_at_the_address_is_one_line_naming_it_and_what_to_check() {
    let f = Fleet::new();
    let r = f.cli(&["hosts"]);
    r.fails_with(&format!(
        "cannot reach the controller at {}: connection refused; check that cutover-controller runs there and that --controller (or CUTOVER_CONTROLLER) names it",
        f.url()
    ));
}

#[test]
fn a_missing_credential_file_names_the_flag_or_variable_that_pointed_at_it() {
    let f = Fleet::new();
    let url = f.url();
    let nowhere = f.path("nowhere");
    let nowhere = nowhere.to_str().unwrap();
    cutover_tests::run_cli(&url, std::path::Path::new(nowhere), &["hosts"]).fails_with(&format!(
        "{nowhere}/ca.pem: No such file or directory (os error 2); it is ca.pem in the --pki-dir directory (CUTOVER_PKI_DIR, default `pki`)"
    ));
    let missing = f.path("missing.pem");
    let missing = missing.to_str().unwrap();
    f.cli(&["hosts", "--cert", missing])
        .fails_with(&format!("{missing}: No such file or directory (os error 2); it was named by --cert (or CUTOVER_CERT)"));
    f.cli(&["hosts", "--key", missing])
        .fails_with("it was named by --key (or CUTOVER_KEY)");
    let manifest = f.path("release.toml");
    std::fs::write(
        &manifest,
        "version = \"1.0.0\"\ncreated = 2026-01-01T00:00:00Z\nexpires = 2099-01-01T00:00:00Z\n[[services]]\nname = \"db\"\nservice_version = \"1\"\ntarball = { sha256 = \"0000000000000000000000000000000000000000000000000000000000000000\", size = 1, file = \"db.tar.gz\" }\n",
    )
    .unwrap();
    f.cli(&[
        "release",
        "sign",
        manifest.to_str().unwrap(),
        "--key",
        missing,
    ])
    .fails_with("it was named by --key (a key made by `cutover release keygen`)");
}

#[test]
fn diag_of_a_host_that_is_not_enrolled_says_there_is_no_such_host() {
    let mut f = Fleet::new();
    f.start_controller();
    f.cli(&["diag", "ghost"]).fails_with(
        "no such host: \"ghost\" is not enrolled; `cutover hosts` lists the enrolled hosts",
    );
}

#[test]
fn a_version_that_is_neither_a_channel_nor_an_imported_release_is_refused_saying_so() {
    let mut f = Fleet::new();
    f.assign_ports(&["h1"], &["api"]);
    f.start_controller();
    // h1 never enrolls: the plan fails on the version first.
    let fleet = f.path("fleet.toml");
    std::fs::write(
        &fleet,
        cutover_tests::sample::sample_fleet(&["h1"], &["api"], ""),
    )
    .unwrap();
    f.cli(&["fleet", "apply", fleet.to_str().unwrap(), "--allow-empty"])
        .ok();
    let said = "\"nightly\" is neither a channel nor an imported release; see `cutover channel list` and `cutover release list`";
    f.cli(&["plan", "--all", "--version", "nightly"])
        .fails_with(said);
    f.cli(&["upgrade", "--all", "--version", "nightly", "--yes"])
        .fails_with(said);
    f.cli(&["plan", "--all", "--version", "9.9.9"])
        .fails_with("\"9.9.9\" is neither a channel nor an imported release");
}

#[test]
fn a_join_token_shorter_than_a_second_or_for_a_name_that_is_no_host_name_is_refused_in_one_line() {
    let mut f = Fleet::new();
    f.start_controller();
    for ttl in ["0s", "500ms", "8days"] {
        let r = f.cli(&["token", "create", "edge-1", "--ttl", ttl]);
        assert_eq!(r.code, 2, "{r:?}");
        assert_eq!(
            r.stderr,
            format!("cutover: --ttl {ttl}: a join token must live at least 1s and at most 7d; give e.g. --ttl 15m\n")
        );
    }
    // Usage errors (exit 2), known before the controller is asked.
    for bad in ["edge 1", "edge!1", "edge/1", "", "hôst"] {
        let r = f.cli(&["token", "create", bad]);
        assert_eq!(r.code, 2, "{r:?}");
        assert!(r.stderr.contains("invalid host name"), "{r:?}");
    }
    assert!(f.hosts().is_empty());
}

#[test]
fn keygen_into_a_directory_that_does_not_exist_makes_it_private() {
    use std::os::unix::fs::PermissionsExt;
    let f = Fleet::new();
    let dir = f.path("keys/release");
    let out = dir.join("r1");
    let r = f
        .cli(&["release", "keygen", "--out", out.to_str().unwrap()])
        .ok();
    assert!(r.stdout.contains("(mode 0700)"), "{r:?}");
    for d in [f.path("keys"), dir.clone()] {
        let mode = std::fs::metadata(&d).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "{}", d.display());
    }
    assert!(dir.join("r1.key").is_file() && dir.join("r1.pub").is_file());
    // An existing directory keeps its mode.
    let shared = f.path("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o755)).unwrap();
    f.cli(&[
        "release",
        "keygen",
        "--out",
        shared.join("r2").to_str().unwrap(),
    ])
    .ok();
    let mode = std::fs::metadata(&shared).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o755);
}

#[test]
fn version_prints_the_cli_and_the_controller_version_or_why_the_controller_is_missing() {
    let v = cutover_core::VERSION;
    let mut f = Fleet::new();
    // No controller yet: the CLI's version all the same, and exit 0.
    let r = f.cli(&["version"]).ok();
    let (cli, controller) = r.stdout.split_once('\n').expect("two lines");
    assert_eq!(cli, format!("cutover {v}"));
    assert!(
        controller.starts_with(&format!(
            "controller: unreachable (cannot reach the controller at {}: connection refused;",
            f.url()
        )),
        "{r:?}"
    );
    assert_eq!(r.stderr, "");
    f.start_controller();
    let r = f.cli(&["version"]).ok();
    assert_eq!(r.stdout, format!("cutover {v}\ncontroller {v}\n"));
    assert_eq!(
        f.cli_json(&["version"]),
        serde_json::json!({ "cli": v, "controller": v })
    );
}

#[test]
fn completions_for_bash_zsh_and_fish_cover_the_commands() {
    let f = Fleet::new();
    for (shell, marker) in [
        ("bash", "complete -F _cutover"),
        ("zsh", "#compdef cutover"),
        ("fish", "complete -c cutover"),
    ] {
        let r = f.cli(&["completions", shell]).ok();
        assert!(r.stdout.contains(marker), "{shell}: {}", &r.stdout[..200]);
        for command in ["rollout", "upgrade", "completions", "version"] {
            assert!(r.stdout.contains(command), "{shell} lacks {command}");
        }
    }
    assert_eq!(f.cli(&["completions", "tcsh"]).code, 2);
}
