//! The controller under hostile conditions at its own door and on its own
//! disk: floods of connections without a client certificate, signals while
//! agents are connected, and a store that is missing, empty or damaged.
//! Real controller and agent binaries on loopback; the controller is
//! started here (not by the fixture) so that its exit can be awaited and
//! its start-up refusals read.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cutover_cli::bundle::Floor;
use cutover_proto::v1;
use cutover_tests::grpc::{self, Presented};
use cutover_tests::sample::Svc;
use cutover_tests::{bin, eventually, Fleet, Run};
use nix::sys::signal::Signal;

/// A controller process of this test, killed when dropped.
type Controller = cutover_tests::process::ControllerProcess;

/// Writes the fleet's controller config (as the fixture does) and returns
/// the command that runs the controller, under `prlimit` when asked.
fn controller_command(f: &Fleet, args: &[&str], nofile: Option<(u64, u64)>) -> Command {
    controller_command_with(f, args, nofile, "")
}

/// [`controller_command`] with `extra` top-level config lines.
fn controller_command_with(
    f: &Fleet,
    args: &[&str],
    nofile: Option<(u64, u64)>,
    extra: &str,
) -> Command {
    let config = f.path("controller.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:{}\"\ndata_dir = \"controller\"\n{extra}\n[tls]\nca_cert = \"pki/ca.pem\"\nca_key = \"pki/ca-key.pem\"\ncert = \"pki/controller.pem\"\nkey = \"pki/controller-key.pem\"\n[releases]\ntrusted_keys = [\"release.pub\"]\n",
            f.port
        ),
    )
    .expect("write controller config");
    let mut cmd = match nofile {
        Some((soft, hard)) => {
            let mut c = Command::new("prlimit");
            c.arg(format!("--nofile={soft}:{hard}"))
                .arg("--")
                .arg(bin("cutover-controller"));
            c
        }
        None => Command::new(bin("cutover-controller")),
    };
    cmd.arg("--config")
        .arg(&config)
        .args(args)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    cmd
}

/// Starts the controller and waits until it answers operators.
fn start(f: &Fleet, args: &[&str], nofile: Option<(u64, u64)>) -> Controller {
    start_with(f, args, nofile, "")
}

/// [`start`] with `extra` top-level config lines.
fn start_with(f: &Fleet, args: &[&str], nofile: Option<(u64, u64)>, extra: &str) -> Controller {
    let log = f.path("controller.log");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .expect("controller log");
    let child = controller_command_with(f, args, nofile, extra)
        .stderr(file)
        .spawn()
        .expect("start controller");
    let c = Controller::new(child, log);
    eventually(Duration::from_secs(20), "the controller to answer", || {
        (f.cli(&["hosts"]).code == 0).then_some(())
    });
    c
}

/// Runs the controller expecting it to refuse to start. One that starts
/// serving instead is killed and the test fails.
fn refused_start(f: &Fleet, args: &[&str]) -> Run {
    let err = f.path("refused.err");
    let file = std::fs::File::create(&err).expect("stderr file");
    let mut child = controller_command(f, args, None)
        .env("RUST_LOG", "off")
        .stderr(file)
        .spawn()
        .expect("run controller");
    let exited = eventually(
        Duration::from_secs(60),
        "the controller to exit",
        || match child.try_wait().expect("try_wait") {
            Some(status) => Some(Some(status)),
            None if f.cli(&["hosts"]).code == 0 => Some(None),
            None => None,
        },
    );
    let Some(status) = exited else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("the controller started serving instead of refusing its store");
    };
    Run {
        code: status.code().unwrap_or(-1),
        stdout: String::new(),
        stderr: std::fs::read_to_string(&err).expect("stderr"),
    }
}

/// Stops the controller with SIGTERM and checks it exits cleanly.
fn stop(mut c: Controller) {
    c.signal(Signal::SIGTERM);
    let status = c.wait_exit(Duration::from_secs(30), "the controller to exit on SIGTERM");
    assert!(status.success(), "controller exited with {status}");
}

fn limits_of(pid: i32) -> (u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("limits");
    let line = text
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("open files line");
    let fields: Vec<&str> = line.split_whitespace().collect();
    (
        fields[3].parse().expect("soft"),
        fields[4].parse().expect("hard"),
    )
}

#[test]
fn the_soft_descriptor_limit_is_raised_to_the_hard_limit_at_start() {
    let f = Fleet::new();
    let c = start(&f, &[], Some((128, 4096)));
    assert_eq!(limits_of(c.pid()), (4096, 4096));
}

/// TLS connections without a client certificate that never speak HTTP/2.
/// Returns how many the client could open and a counter of those the
/// server has closed since; each is watched by a task of `rt`.
fn silent_unauthenticated_connections(
    rt: &tokio::runtime::Runtime,
    f: &Fleet,
    count: usize,
) -> (Arc<AtomicUsize>, Vec<tokio::task::JoinHandle<()>>) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let ca = cutover_core::tls::read_certs(&f.pki.join("ca.pem")).expect("CA");
    let config = Arc::new(cutover_core::tls::client_config(&ca, None).expect("client config"));
    let closed = Arc::new(AtomicUsize::new(0));
    let port = f.port;
    let watchers = rt.block_on(async {
        let mut watchers = Vec::new();
        for _ in 0..count {
            let connector = tokio_rustls::TlsConnector::from(config.clone());
            // A controller out of descriptors never answers the hello: give
            // up on that connection (it counts as never closed) and go on.
            let opened = tokio::time::timeout(Duration::from_secs(1), async {
                let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
                connector
                    .connect("127.0.0.1".try_into().expect("server name"), tcp)
                    .await
            })
            .await;
            let closed = closed.clone();
            watchers.push(tokio::spawn(async move {
                let Ok(opened) = opened else {
                    return;
                };
                let Ok(mut stream) = opened else {
                    // Refused during the handshake: closed by the server.
                    closed.fetch_add(1, Ordering::Relaxed);
                    return;
                };
                let mut buf = [0u8; 1024];
                loop {
                    match tokio::io::AsyncReadExt::read(&mut stream, &mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(_) => continue,
                    }
                }
                closed.fetch_add(1, Ordering::Relaxed);
            }));
        }
        watchers
    });
    (closed, watchers)
}

#[test]
fn silent_unauthenticated_connections_are_capped_and_closed_and_the_cli_still_works() {
    let mut f = Fleet::new();
    // A hard limit of 256 descriptors: 300 connections held for good would
    // exhaust it (as 241 did in the field); the controller must stay under.
    let _c = start(&f, &[], Some((256, 256)));
    let rt = cutover_tests::grpc::runtime();
    let (closed, watchers) = silent_unauthenticated_connections(&rt, &f, 300);
    // The flood is in place (the first 64 are still open); operators work.
    f.cli(&["hosts"]).ok();
    // Every one of them is closed by the controller: those over the cap at
    // once, the rest when their lifetime ends.
    rt.block_on(async {
        let all = async {
            for w in watchers {
                w.await.expect("watcher");
            }
        };
        tokio::time::timeout(Duration::from_secs(90), all)
            .await
            .expect("connections without a client certificate were held open")
    });
    assert_eq!(closed.load(Ordering::Relaxed), 300);
    // Enrollment, which is what such connections are for, works again.
    f.start_agent("edge-1", "1s");
    f.wait_online("edge-1");
    f.cli(&["hosts"]).ok();
}

#[test]
fn silent_tcp_connections_that_send_no_tls_byte_do_not_lock_out_agents_or_operators() {
    let mut f = Fleet::new();
    let _c = start(&f, &[], None);
    // Its own thread, so the flood goes on while this one drives the fleet.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let port = f.port;
    // More connections than the old handshake cap (256), none of which
    // sends a byte; each is reopened when the controller closes it, as an
    // attacker keeping the slots full would.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reopened = Arc::new(AtomicUsize::new(0));
    let flood: Vec<_> = (0..300)
        .map(|_| {
            let (stop, reopened) = (stop.clone(), reopened.clone());
            rt.spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let Ok(mut tcp) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await
                    else {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    };
                    let mut buf = [0u8; 16];
                    let _ = tokio::io::AsyncReadExt::read(&mut tcp, &mut buf).await;
                    reopened.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    // The controller closes silent connections (so the flood goes round)...
    eventually(
        Duration::from_secs(30),
        "silent connections to be closed",
        || (reopened.load(Ordering::Relaxed) >= 300).then_some(()),
    );
    // ...and, with the flood still in place, a new agent enrolls and comes
    // online and the CLI answers.
    f.start_agent("edge-1", "1s");
    f.wait_online("edge-1");
    f.cli(&["hosts"]).ok();
    stop.store(true, Ordering::Relaxed);
    rt.block_on(async {
        for t in flood {
            let _ = tokio::time::timeout(Duration::from_secs(30), t).await;
        }
    });
}

/// Two agents online, a release installed on them, and one artifact fetch
/// opened by `h1`'s certificate that nobody reads: a request that will not
/// finish on its own for as long as the controller lets it stall.
fn fleet_with_a_stalled_fetch(
    f: &mut Fleet,
    rt: &tokio::runtime::Runtime,
    config: &str,
) -> (Controller, tonic::Streaming<v1::FetchChunk>) {
    f.assign_ports(&["h1", "h2"], &["api"]);
    let c = start_with(f, &[], None, config);
    f.start_agent("h1", "500ms");
    f.start_agent("h2", "500ms");
    f.wait_online("h1");
    f.wait_online("h2");
    f.apply_sample_fleet(
        &["h1", "h2"],
        &["api"],
        "max_parallel = 2\nmax_unavailable = 2",
    );
    // Larger than any transport buffer, so an unread stream stalls.
    f.sample_release(
        "1.0.0",
        &[Svc::new("api", "1.0").ballast(8 << 20)],
        Floor::default(),
    );
    f.upgrade(&["--all"], "1.0.0", &[]).ok();
    let list = f.cli_json(&["release", "list"]);
    let sha = list[0]["services"][0]["tarball_sha256"]
        .as_str()
        .expect("tarball digest")
        .to_string();
    let h1 = Presented::from_identity(&f.agent_dir("h1").join("identity.pem"));
    let mut client = rt
        .block_on(grpc::channel(&f.url(), &f.pki.join("ca.pem"), Some(&h1)))
        .map(grpc::agent)
        .expect("channel as h1");
    let stream = rt
        .block_on(client.fetch(v1::FetchRequest {
            sha256: sha,
            offset: 0,
        }))
        .expect("fetch as h1")
        .into_inner();
    (c, stream)
}

#[test]
fn sigterm_with_agents_connected_tells_them_it_is_going_away_exits_within_its_grace_and_frees_the_port(
) {
    let mut f = Fleet::new();
    let rt = cutover_tests::grpc::runtime();
    let (mut c, _stalled) = fleet_with_a_stalled_fetch(&mut f, &rt, "shutdown_grace = \"2s\"");
    // An unauthenticated connection that never speaks, too.
    let _idle = silent_unauthenticated_connections(&rt, &f, 1);
    c.signal(Signal::SIGTERM);
    let status = c.wait_exit(
        Duration::from_secs(30),
        "the controller to exit on SIGTERM with agents connected",
    );
    assert_eq!(status.code(), Some(0), "{status}");
    // The unread fetch was abandoned within the configured grace, not
    // waited for.
    let log = c.log();
    assert!(
        log.contains("abandoning them") && log.contains("grace=2s"),
        "the stalled fetch was not abandoned within the configured grace: {log}"
    );
    // Each agent was told the controller is going away: news, not an
    // error.
    for h in ["h1", "h2"] {
        eventually(Duration::from_secs(10), "the going-away notice", || {
            f.agent_log(h)
                .contains("the controller is going away")
                .then_some(())
        });
    }
    // The port is free at once: another listener binds it.
    drop(std::net::TcpListener::bind(("127.0.0.1", f.port)).expect("bind the controller's port"));
    // A new controller on the same port gets the agents back.
    let _c2 = start(&f, &[], None);
    f.wait_online("h1");
    f.wait_online("h2");
}

#[test]
fn a_second_signal_exits_at_once() {
    let mut f = Fleet::new();
    let rt = cutover_tests::grpc::runtime();
    // The stalled fetch holds the first shutdown in its grace, so only the
    // second signal can end the process before it.
    let (mut c, _stalled) = fleet_with_a_stalled_fetch(&mut f, &rt, "");
    c.signal(Signal::SIGTERM);
    eventually(Duration::from_secs(10), "the shutdown to begin", || {
        c.log()
            .contains("shutting down: listener closed")
            .then_some(())
    });
    c.signal(Signal::SIGINT);
    let status = c.wait_exit(Duration::from_secs(30), "the controller to exit");
    assert_eq!(status.code(), Some(1), "{status}");
    let log = c.log();
    assert!(
        log.contains("second signal (SIGINT)"),
        "the second signal was not the reason: {log}"
    );
    assert!(
        !log.contains("abandoning them"),
        "the grace ran out first: {log}"
    );
}

fn data(f: &Fleet) -> PathBuf {
    f.path("controller")
}

fn remove_store(dir: &Path) {
    for name in ["state.db", "state.db-wal", "state.db-shm"] {
        match std::fs::remove_file(dir.join(name)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => panic!("remove {name}: {e}"),
        }
    }
}

fn artifacts(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir.join("artifacts"))
        .expect("artifacts dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n != ".staging")
        .collect();
    names.sort();
    names
}

#[test]
fn a_lost_store_beside_held_state_is_refused_until_allowed() {
    let f = Fleet::new();
    let c = start(&f, &[], None);
    f.raw_release("1.0.0", "api", b"the artifact that outlives its store");
    stop(c);
    let dir = data(&f);
    let held = artifacts(&dir);
    assert_eq!(held.len(), 1, "{held:?}");

    // Truncated to nothing: refused, and left at 0 bytes.
    remove_store(&dir);
    std::fs::write(dir.join("state.db"), b"").unwrap();
    let run = refused_start(&f, &[]);
    run.fails_with("state.db: is empty");
    run.fails_with("--allow-empty-store");
    assert_eq!(std::fs::metadata(dir.join("state.db")).unwrap().len(), 0);

    // Deleted, and the marker too: the artifacts alone are evidence; the
    // refusal creates no store.
    remove_store(&dir);
    std::fs::remove_file(dir.join("state.created")).unwrap();
    let run = refused_start(&f, &[]);
    run.fails_with("state.db: is missing");
    run.fails_with("artifacts/ holds 1 entries");
    assert!(!dir.join("state.db").exists());
    assert_eq!(artifacts(&dir), held);

    // With the flag the operator chose an empty store: it starts, knows no
    // release, and the artifacts are still on disk.
    let c = start(&f, &["--allow-empty-store"], None);
    let releases = f.cli_json(&["release", "list"]);
    assert_eq!(releases, serde_json::json!([]), "{releases}");
    assert_eq!(artifacts(&dir), held);
    stop(c);
    // From then on it is an ordinary store: no flag needed.
    let c = start(&f, &[], None);
    stop(c);
}

#[test]
fn a_damaged_store_is_refused_at_start_naming_the_integrity_check() {
    let f = Fleet::new();
    let c = start(&f, &[], None);
    // Enough rows for the store to span many pages.
    for i in 0..60 {
        f.cli(&["token", "create", &format!("edge-{i}"), "--ttl", "1h"])
            .ok();
    }
    stop(c);
    let dir = data(&f);
    let path = dir.join("state.db");
    // A clean exit checkpoints the write-ahead log into state.db.
    let wal = std::fs::metadata(dir.join("state.db-wal")).map_or(0, |m| m.len());
    assert_eq!(wal, 0, "the WAL still holds pages after a clean exit");
    let mut bytes = std::fs::read(&path).unwrap();
    let pages = bytes.len() / 4096;
    assert!(
        pages >= 8,
        "store too small to damage its middle: {pages} pages"
    );
    let middle = pages / 2 * 4096;
    bytes[middle..middle + 4096].fill(0xa5);
    std::fs::write(&path, &bytes).unwrap();

    for args in [&[][..], &["--allow-empty-store"][..]] {
        let run = refused_start(&f, args);
        run.fails_with("failed its integrity check");
        run.fails_with("PRAGMA quick_check: ");
        run.fails_with(&path.display().to_string());
        run.fails_with("restore state.db from a backup");
    }
    assert_eq!(
        std::fs::read(&path).unwrap(),
        bytes,
        "the damaged store was changed"
    );
}

#[test]
fn rollout_ids_past_what_the_store_holds_are_simply_not_found() {
    let f = Fleet::new();
    let c = start(&f, &[], None);
    for id in ["9223372036854775808", "18446744073709551615"] {
        let events = f.cli(&["events", "--rollout", id]);
        assert_eq!(events.code, 0, "events --rollout {id}: {}", events.stderr);
        assert!(
            !events.stderr.contains("out of range") && !events.stdout.contains("out of range"),
            "{}{}",
            events.stdout,
            events.stderr
        );
        let json = f.cli_json(&["events", "--rollout", id]);
        assert_eq!(json.as_array().map(Vec::len), Some(0), "{json}");
        let show = f.cli(&["rollout", "show", id]);
        assert_eq!(show.code, 1, "rollout show {id}: {}", show.stdout);
        assert!(show.stderr.contains("no rollout"), "{}", show.stderr);
    }
    assert!(!c.log().contains("internal error"), "{}", c.log());
    stop(c);
}

#[test]
fn a_file_the_config_names_that_cannot_be_read_is_refused_naming_its_key() {
    let f = Fleet::new();
    let key = f.pki.join("ca-key.pem");
    let aside = f.path("ca-key.pem.aside");
    std::fs::rename(&key, &aside).expect("move the CA key aside");
    let run = refused_start(&f, &[]);
    std::fs::rename(&aside, &key).expect("put the CA key back");
    assert_eq!(run.code, 1, "{run:?}");
    let msg = run.stderr.trim();
    assert!(!msg.contains('\n'), "not one line: {msg}");
    assert!(
        msg.contains("tls.ca_key = \"")
            && msg.contains("ca-key.pem")
            && msg.contains("fix the path"),
        "{msg}"
    );
}
