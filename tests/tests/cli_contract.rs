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
        let me = grpc::Presented::from_files(
            &f.pki.join("operator.pem"),
            &f.pki.join("operator-key.pem"),
        );
        let ch = grpc::channel(&f.url(), &f.pki.join("ca.pem"), Some(&me))
            .await
            .expect("operator channel");
        let mut op = grpc::operator(ch);
        for i in 0..n {
            op.create_token(cutover_proto::v1::CreateTokenRequest {
                host: format!("h{i:05}.{}", "x".repeat(240)),
                ttl_s: 60,
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
    let id = started["rollout"]["id"].as_u64().expect("rollout id");
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
    assert_eq!(rollout_status(&f, id), "Running");

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
    assert_eq!(rollout_status(&f, second), "Running");
    assert_eq!(rollout_status(&f, id), "Running");
}
