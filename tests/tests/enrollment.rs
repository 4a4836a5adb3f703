//! Enrollment, renewal and every refusal at the door: real controller and
//! agents on loopback, certificates from our own PKI.

use std::time::Duration;

use cutover_proto::v1;
use cutover_tests::grpc::{self, Presented};
use cutover_tests::{eventually, ControllerOptions, Fleet, Value};

#[test]
fn enrolled_host_is_online_with_its_fields() {
    let mut f = Fleet::new();
    f.start_controller();
    f.start_agent("edge-1", "1s");
    f.wait_online("edge-1");
    let h = &f.hosts()["edge-1"];
    assert_eq!(h["online"], true);
    assert_eq!(h["revoked"], false);
    assert_eq!(h["agent_version"], env!("CARGO_PKG_VERSION"));
    assert!(h["cert_serial"].as_str().unwrap().len() >= 32);
    assert!(h["enrolled_at"].is_string() && h["connected_since"].is_string());
    assert_eq!(h["services"], Value::Array(vec![]));
    // The default certificate lives 7 days.
    let not_after = time::OffsetDateTime::parse(
        h["cert_expires_at"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    let left = not_after - time::OffsetDateTime::now_utc();
    assert!(
        left > time::Duration::days(6) && left <= time::Duration::days(7),
        "{left}"
    );
    // The agent keeps its key to itself: identity.pem is private.
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(f.agent_dir("edge-1").join("identity.pem"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn certificate_is_renewed_over_the_session_without_restart() {
    let mut f = Fleet::with(ControllerOptions {
        agent_cert_ttl: "6s".into(),
    });
    f.start_controller();
    f.start_agent("edge-1", "500ms");
    f.wait_online("edge-1");
    let pid = f.agent_pid("edge-1");
    let first = f.hosts()["edge-1"]["cert_serial"].clone();
    // Renewal at two thirds of 6 s; then the old certificate expires and the
    // agent carries on with the new one.
    let renewed = eventually(Duration::from_secs(8), "a renewed certificate", || {
        let serial = f.hosts()["edge-1"]["cert_serial"].clone();
        (serial != first).then_some(serial)
    });
    std::thread::sleep(Duration::from_secs(3));
    f.wait_online("edge-1");
    assert_eq!(f.agent_exited("edge-1"), None, "agent must not restart");
    assert_eq!(f.agent_pid("edge-1"), pid);
    let on_disk = Presented::from_identity(&f.agent_dir("edge-1").join("identity.pem"));
    let id = cutover_core::pki::PeerIdentity::from_pem(&on_disk.cert_pem).unwrap();
    assert!(id.not_after > time::OffsetDateTime::now_utc());
    assert!(f.controller_log().contains("certificate renewed"));
    assert_ne!(renewed, Value::Null);
}

#[test]
fn tokens_are_one_time_and_expire() {
    let mut f = Fleet::new();
    f.start_controller();
    let ca = f.pki.join("ca.pem");
    let rt = grpc::runtime();
    let enroll = |token: &str| {
        rt.block_on(async {
            let ch = grpc::channel(&f.url(), &ca, None).await?;
            let (_key, csr_pem) = cutover_core::pki::new_csr("x").unwrap();
            grpc::agent(ch)
                .enroll(v1::EnrollRequest {
                    token: token.into(),
                    csr_pem,
                })
                .await
                .map(|r| r.into_inner())
                .map_err(|s| grpc::status_text(&s))
        })
    };
    let token = f.token("edge-1", "5m");
    let issued = enroll(&token).unwrap();
    assert_eq!(issued.host, "edge-1");
    let reused = enroll(&token).unwrap_err();
    assert!(
        reused.contains("Unauthenticated") && reused.contains("already used"),
        "{reused}"
    );

    let short = f.token("edge-2", "1s");
    std::thread::sleep(Duration::from_millis(1500));
    let expired = enroll(&short).unwrap_err();
    assert!(expired.contains("expired at"), "{expired}");
    let unknown = enroll("cutover-join.forged").unwrap_err();
    assert!(unknown.contains("not recognised"), "{unknown}");

    // Nothing was stored for the refused attempts: edge-2 never enrolled.
    let hosts = f.hosts();
    assert!(hosts.contains_key("edge-1") && !hosts.contains_key("edge-2"));

    // A real agent with a used token exits with the reason.
    f.spawn_agent("edge-3", "1s", Some(&token));
    let code = eventually(Duration::from_secs(10), "agent to give up", || {
        f.agent_exited("edge-3")
    });
    assert_eq!(code, 1);
    assert!(f.agent_log("edge-3").contains("already used"));
}

#[test]
fn agent_with_expired_certificate_keeps_running_and_enrolls_again_with_a_new_token() {
    let mut f = Fleet::new();
    f.start_controller();
    f.start_agent("edge-1", "500ms");
    f.wait_online("edge-1");
    let first = f.hosts()["edge-1"]["cert_serial"].clone();
    f.kill_agent("edge-1");
    cutover_tests::expire_identity(&f.pki, &f.agent_dir("edge-1"), "edge-1");

    // No token: the agent stays up (its services need it), never offers the
    // expired certificate, and says what the operator must do.
    f.spawn_agent("edge-1", "500ms", None);
    eventually(
        Duration::from_secs(10),
        "the expiry named in the log",
        || {
            let log = f.agent_log("edge-1");
            (log.contains("the certificate of host edge-1 expired at")
                && log.contains("cutover token create edge-1"))
            .then_some(())
        },
    );
    assert_eq!(
        f.agent_exited("edge-1"),
        None,
        "the agent must keep running"
    );
    assert!(!f.is_online("edge-1"));
    assert!(!f.controller_log().contains("CertificateExpired"));

    // Restarted with a new token, it enrolls again: online with a fresh
    // certificate on disk. (Only the agent's copy expired here; the
    // controller's record is still valid, so the token needs --replace.)
    f.kill_agent("edge-1");
    let token = f
        .cli(&["token", "create", "edge-1", "--replace"])
        .ok()
        .stdout
        .trim()
        .to_string();
    f.spawn_agent("edge-1", "500ms", Some(&token));
    f.wait_online("edge-1");
    assert_ne!(f.hosts()["edge-1"]["cert_serial"], first);
    let on_disk = Presented::from_identity(&f.agent_dir("edge-1").join("identity.pem"));
    let id = cutover_core::pki::PeerIdentity::from_pem(&on_disk.cert_pem).unwrap();
    assert!(id.not_after > time::OffsetDateTime::now_utc());

    // Expired again with only that used token: refused, named, still running.
    f.kill_agent("edge-1");
    cutover_tests::expire_identity(&f.pki, &f.agent_dir("edge-1"), "edge-1");
    f.spawn_agent("edge-1", "500ms", Some(&token));
    eventually(
        Duration::from_secs(10),
        "the refusal named in the log",
        || {
            f.agent_log("edge-1")
                .contains("enrolling again with the join token was refused")
                .then_some(())
        },
    );
    assert_eq!(
        f.agent_exited("edge-1"),
        None,
        "the agent must keep running"
    );
    assert!(f.agent_log("edge-1").contains("already used"));
}

#[test]
fn the_door_refuses_the_wrong_certificates() {
    let mut f = Fleet::new();
    f.start_controller();
    f.start_agent("edge-1", "1s");
    f.wait_online("edge-1");
    let ca = f.pki.join("ca.pem");
    let rt = grpc::runtime();
    let agent_id = Presented::from_identity(&f.agent_dir("edge-1").join("identity.pem"));
    let operator_id =
        Presented::from_files(&f.pki.join("operator.pem"), &f.pki.join("operator-key.pem"));
    let list_hosts = |p: Option<&Presented>| {
        rt.block_on(async {
            let ch = grpc::channel(&f.url(), &ca, p).await?;
            grpc::operator(ch)
                .list_hosts(v1::Empty {})
                .await
                .map_err(|s| grpc::status_text(&s))
        })
    };
    let open_session = |p: Option<&Presented>| {
        rt.block_on(async {
            let ch = grpc::channel(&f.url(), &ca, p).await?;
            let hello = v1::AgentMessage {
                msg: Some(v1::agent_message::Msg::Hello(v1::Hello {
                    agent_version: "test".into(),
                    heartbeat_interval_ms: 1000,
                    inventory: vec![],
                    agent_started_at_ms: 0,
                })),
            };
            grpc::agent(ch)
                .session(tokio_stream_once(hello))
                .await
                .map(|_| ())
                .map_err(|s| grpc::status_text(&s))
        })
    };

    // No certificate at all.
    let e = list_hosts(None).unwrap_err();
    assert!(
        e.contains("Unauthenticated") && e.contains("needs a client certificate"),
        "{e}"
    );
    let e = open_session(None).unwrap_err();
    assert!(
        e.contains("Unauthenticated") && e.contains("host certificate"),
        "{e}"
    );

    // An agent certificate on the operator API; an operator certificate as an agent.
    let e = list_hosts(Some(&agent_id)).unwrap_err();
    assert!(
        e.contains("PermissionDenied") && e.contains("agent certificate"),
        "{e}"
    );
    let e = open_session(Some(&operator_id)).unwrap_err();
    assert!(
        e.contains("PermissionDenied") && e.contains("operator"),
        "{e}"
    );

    // A certificate from another CA, through the real CLI.
    let other = tempfile::tempdir().unwrap();
    cutover_core::pki::init(&cutover_core::pki::InitOptions {
        dir: other.path(),
        controller_hosts: &["127.0.0.1".into()],
        operator_name: "mallory",
    })
    .unwrap();
    let run = f.cli(&[
        "hosts",
        "--cert",
        other.path().join("operator.pem").to_str().unwrap(),
        "--key",
        other.path().join("operator-key.pem").to_str().unwrap(),
    ]);
    run.fails_with("not issued by the controller's CA");

    // An expired certificate signed by our own CA.
    let ours =
        cutover_core::pki::CertificateAuthority::load(&ca, &f.pki.join("ca-key.pem")).unwrap();
    let (key_pem, csr) = cutover_core::pki::new_csr("edge-9").unwrap();
    let now = time::OffsetDateTime::now_utc();
    let expired = ours
        .issue_host_cert_valid(
            &csr,
            "edge-9",
            now - time::Duration::days(2),
            now - time::Duration::days(1),
        )
        .unwrap();
    let e = open_session(Some(&Presented {
        cert_pem: expired.pem,
        key_pem,
    }))
    .unwrap_err();
    assert!(e.contains("CertificateExpired"), "{e}");

    // None of this stored anything.
    let hosts = f.hosts();
    assert_eq!(hosts.keys().collect::<Vec<_>>(), vec!["edge-1"]);
}

#[test]
fn revoked_host_is_cut_within_a_second_and_refused_after() {
    let mut f = Fleet::new();
    f.start_controller();
    f.start_agent("edge-1", "1s");
    f.wait_online("edge-1");
    let identity = Presented::from_identity(&f.agent_dir("edge-1").join("identity.pem"));
    f.cli(&["host", "revoke", "edge-1", "--yes"]).ok();
    let cut = std::time::Instant::now();
    eventually(
        Duration::from_secs(1),
        "the revoked session to be cut",
        || {
            let h = &f.hosts()["edge-1"];
            (h["online"] == false && h["revoked"] == true).then_some(())
        },
    );
    assert!(cut.elapsed() < Duration::from_secs(1));
    // The agent's reconnects are refused at the handshake.
    let rt = grpc::runtime();
    let e = rt
        .block_on(async {
            let ch = grpc::channel(&f.url(), &f.pki.join("ca.pem"), Some(&identity)).await?;
            grpc::operator(ch)
                .list_hosts(v1::Empty {})
                .await
                .map(|_| ())
                .map_err(|s| grpc::status_text(&s))
        })
        .unwrap_err();
    assert!(e.contains("CertificateRevoked"), "{e}");
    std::thread::sleep(Duration::from_secs(2));
    assert!(!f.is_online("edge-1"));
    assert!(f.agent_log("edge-1").contains("revoked"));
    // And a revoked host cannot come back through a new token.
    f.cli(&["token", "create", "edge-1"]).fails_with("revoked");
}

fn tokio_stream_once(
    msg: v1::AgentMessage,
) -> impl tonic::codegen::tokio_stream::Stream<Item = v1::AgentMessage> {
    tonic::codegen::tokio_stream::iter(vec![msg])
}
