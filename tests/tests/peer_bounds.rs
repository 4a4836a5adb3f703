//! Bounded peer input at the proto edge (issue 14, items 1 and 10, and the
//! terminal-escape weakness): a foreign client speaking the real protocol
//! with an enrolled host's certificate sends a 70,000-character
//! agent_version, megabytes of evidence and terminal control sequences; a
//! real agent replays a 5 MiB report from its journal after a restart. The
//! controller cuts or refuses what is too long, says once and plainly what
//! it refused, the agent keeps its session, and the CLI prints it all.

use std::time::Duration;

use cutover_cli::bundle::Floor;
use cutover_proto::v1::{self, agent_message::Msg as Out, controller_message::Msg as In};
use cutover_tests::grpc::{self, Presented};
use cutover_tests::sample::Svc;
use cutover_tests::{eventually, Fleet, Value};

const TRUNCATED: &str = cutover_core::views::TRUNCATED;

fn send(msg: Out) -> v1::AgentMessage {
    v1::AgentMessage { msg: Some(msg) }
}

/// A session opened with `hello` as the test writes it, after its welcome.
async fn open(f: &Fleet, who: &Presented, hello: v1::Hello) -> grpc::Session {
    let ch = grpc::channel(&f.url(), &f.pki.join("ca.pem"), Some(who))
        .await
        .expect("channel");
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tx.send(send(Out::Hello(hello))).await.expect("queue");
    let mut inbound = grpc::agent(ch)
        .session(tokio_stream_of(rx))
        .await
        .map_err(|s| grpc::status_text(&s))
        .expect("session")
        .into_inner();
    match inbound.message().await {
        Ok(Some(v1::ControllerMessage {
            msg: Some(In::Welcome(_)),
        })) => grpc::Session { tx, inbound },
        other => panic!("expected a welcome, got {other:?}"),
    }
}

fn tokio_stream_of(
    rx: tokio::sync::mpsc::Receiver<v1::AgentMessage>,
) -> tonic::codegen::tokio_stream::wrappers::ReceiverStream<v1::AgentMessage> {
    tonic::codegen::tokio_stream::wrappers::ReceiverStream::new(rx)
}

fn report(detail: String) -> v1::Report {
    v1::Report {
        command_id: "r999-api-h1".into(),
        service: "api".into(),
        ok: false,
        evidence: Some(v1::Evidence {
            gate: "health\u{1b}[31m".into(),
            detail,
            output: "o".repeat(512 << 10),
            ..Default::default()
        }),
        installed: Some(v1::InstalledService {
            name: "api".into(),
            state: "failed".into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Sends an ack-asking heartbeat and reads until its ack: the session is
/// alive and the controller has read everything sent before it.
async fn round_trip(s: &mut grpc::Session, seq: u64) -> Result<(), String> {
    s.tx.send(send(Out::Heartbeat(v1::Heartbeat {
        seq,
        sent_at_ms: 1,
        skip_ack: false,
    })))
    .await
    .map_err(|_| "session queue closed".to_string())?;
    loop {
        match s.inbound.message().await {
            Ok(Some(v1::ControllerMessage {
                msg: Some(In::HeartbeatAck(a)),
            })) if a.seq == seq => return Ok(()),
            Ok(Some(_)) => continue,
            Ok(None) => return Err("session ended without a status".into()),
            Err(status) => return Err(grpc::status_text(&status)),
        }
    }
}

#[test]
fn a_hostile_hello_and_reports_are_bounded_and_hosts_and_status_print_them_safely() {
    let mut f = Fleet::new();
    f.start_controller();
    let rt = grpc::runtime();
    let token = f.token("h1", "5m");
    let h1 = rt
        .block_on(grpc::enroll(&f.url(), &f.pki.join("ca.pem"), &token, "h1"))
        .expect("enroll");

    let hello = v1::Hello {
        agent_version: format!("{}\u{1b}]0;pwned\u{7}", "v".repeat(70_000)),
        heartbeat_interval_ms: 1000,
        inventory: vec![v1::InstalledService {
            name: "api".into(),
            current: Some(v1::ContentIdentity {
                release: "1.0.0".into(),
                service_version: "1.0".into(),
                ..Default::default()
            }),
            previous: None,
            state: format!("running\u{1b}[2J{}", "s".repeat(70_000)),
            health: Some(v1::ServiceHealth {
                state: "unhealthy".into(),
                since_ms: 1,
                evidence: format!("\u{1b}[2J{}", "e".repeat(70_000)),
                restarts: 1,
            }),
        }],
        agent_started_at_ms: 1,
    };
    let mut s = rt.block_on(open(&f, &h1, hello));

    // 3 MiB of evidence fits in a message: read, cut to its bound, and the
    // session goes on.
    let detail = format!("{}\u{1b}[2J", "d".repeat(3 << 20));
    rt.block_on(s.tx.send(send(Out::Report(report(detail)))))
        .expect("queue");
    rt.block_on(round_trip(&mut s, 1))
        .expect("the session survives a report with 3 MiB of evidence");

    // 5 MiB cannot be read at all: refused once with a plain reason.
    let detail = "d".repeat(5 << 20);
    rt.block_on(s.tx.send(send(Out::Report(report(detail)))))
        .expect("queue");
    let refused = rt
        .block_on(round_trip(&mut s, 2))
        .expect_err("a 5 MiB message cannot be read");
    assert!(
        refused.contains("the controller refused a message on this session")
            && refused.contains("too large"),
        "{refused}"
    );

    // What the controller kept is bounded.
    let hosts = f.hosts();
    let version = hosts["h1"]["agent_version"].as_str().expect("version");
    assert!(version.len() <= 256, "{} bytes kept", version.len());
    assert!(version.starts_with("vvvv") && version.ends_with(TRUNCATED));
    let state = hosts["h1"]["services"][0]["state"].as_str().expect("state");
    assert!(state.len() <= 256 && state.ends_with(TRUNCATED), "{state}");
    let evidence = hosts["h1"]["services"][0]["health"]["evidence"]
        .as_str()
        .expect("health evidence");
    assert!(
        evidence.len() <= 512 && evidence.ends_with(TRUNCATED),
        "{evidence}"
    );

    // And the CLI prints every table without a panic or a raw escape.
    let out = f.cli(&["hosts"]).ok().stdout;
    assert!(out.contains("h1") && out.contains(TRUNCATED), "{out}");
    assert!(!out.contains('\u{1b}'), "raw escape printed: {out:?}");
    let out = f.cli(&["status"]).ok().stdout;
    assert!(
        out.contains("h1") && out.contains("api@1.0 [running\\u{1b}[2J"),
        "{out}"
    );
    assert!(!out.contains('\u{1b}'), "raw escape printed: {out:?}");
    let log = f.controller_log();
    assert!(
        log.contains("refused a message") || log.contains("too large"),
        "the controller's log names the refusal"
    );
}

/// The journal of `host`'s `service`, as JSON.
fn journal_path(f: &Fleet, host: &str, service: &str) -> std::path::PathBuf {
    f.agent_dir(host)
        .join("services")
        .join(service)
        .join("journal.json")
}

#[test]
fn a_report_of_5_mib_replayed_from_the_journal_after_a_restart_does_not_cut_the_session() {
    let mut f = Fleet::new();
    f.assign_ports(&["h1"], &["api"]);
    f.start_controller();
    f.start_agent("h1", "500ms");
    f.wait_online("h1");
    f.apply_sample_fleet(&["h1"], &["api"], "");
    f.sample_release("1.0.0", &[Svc::new("api", "1.0")], Floor::default());
    f.upgrade(&["api"], "1.0.0", &[]).ok();

    // What the extractor once reported for a 5 MiB GNU long name: the
    // agent journals the report and replays it on every new session.
    f.kill_agent("h1");
    let path = journal_path(&f, "h1", "api");
    let mut journal: Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("journal")).expect("json");
    let evidence = serde_json::json!({
        "gate": "unpack",
        "detail": format!("entry {}\u{1b}[2J: name too long", "n".repeat(5 << 20)),
        "elapsed_ms": 1,
        "probes": 0,
    });
    assert!(
        journal["last_report"].is_object(),
        "the install left its report in the journal: {journal}"
    );
    journal["last_report"]["evidence"] = evidence;
    std::fs::write(&path, serde_json::to_vec(&journal).expect("encode")).expect("write journal");
    f.spawn_agent("h1", "500ms", None);

    // The agent replays its reports right after the welcome, before it
    // can answer any request on that session: a diag that comes back
    // proves the controller read the replayed report and kept the session.
    let diag = eventually(Duration::from_secs(60), "h1 to answer a diag", || {
        let run = f.cli(&["diag", "h1"]);
        (run.code == 0).then_some(run.stdout)
    });
    assert!(diag.contains("hostname"), "{diag}");
    let log = f.controller_log();
    assert!(
        !log.contains("too large"),
        "the controller refused a replayed report:\n{log}"
    );
    assert!(
        f.agent_log("h1").contains("session open"),
        "the agent opened a session"
    );
}
