//! The agent API against a hostile host: a foreign gRPC client speaking the
//! real protocol with an enrolled host's certificate, against the real
//! controller on loopback. Fetch streams nobody reads, fetches of artifacts
//! the host was never given, superseded certificates, renewal floods and a
//! hello that asks to be left alone.

use std::time::Duration;

use cutover_cli::bundle::Floor;
use cutover_proto::v1;
use cutover_tests::grpc::{self, Presented};
use cutover_tests::sample::Svc;
use cutover_tests::{eventually, ControllerOptions, Fleet};

/// Enrolls `host` through the API with a fresh token and key, replacing
/// the identity it holds, if any (`token create --replace`).
fn enroll(f: &Fleet, rt: &tokio::runtime::Runtime, host: &str) -> Presented {
    let token = f
        .cli(&["token", "create", host, "--replace"])
        .ok()
        .stdout
        .trim()
        .to_string();
    rt.block_on(grpc::enroll(&f.url(), &f.pki.join("ca.pem"), &token, host))
        .expect("enroll")
}

/// A session as `who` once the host's previous session has ended (a live
/// one refuses a second): the controller learns of a dropped stream a
/// moment after the test drops it.
fn next_session(
    f: &Fleet,
    rt: &tokio::runtime::Runtime,
    who: &Presented,
    what: &str,
) -> grpc::Session {
    eventually(Duration::from_secs(10), what, || {
        match session(f, rt, who, 10_000) {
            Ok(s) => Some(Ok(s)),
            Err(e) if e.contains("AlreadyExists") => None,
            Err(e) => Some(Err(e)),
        }
    })
    .unwrap_or_else(|e| panic!("{what}: {e}"))
}

fn session(
    f: &Fleet,
    rt: &tokio::runtime::Runtime,
    who: &Presented,
    heartbeat_ms: u64,
) -> Result<grpc::Session, String> {
    rt.block_on(grpc::open_session(
        &f.url(),
        &f.pki.join("ca.pem"),
        who,
        heartbeat_ms,
    ))
}

fn fetch_request(sha256: &str) -> v1::FetchRequest {
    v1::FetchRequest {
        sha256: sha256.into(),
        offset: 0,
    }
}

/// Reads a fetch stream to its end: the bytes, and the status it ended with.
async fn drain(s: &mut tonic::Streaming<v1::FetchChunk>) -> (Vec<u8>, Option<tonic::Status>) {
    let mut bytes = Vec::new();
    loop {
        match s.message().await {
            Ok(Some(c)) => bytes.extend(c.data),
            Ok(None) => return (bytes, None),
            Err(status) => return (bytes, Some(status)),
        }
    }
}

#[test]
fn fetch_streams_nobody_reads_are_capped_per_host_and_ended_and_the_controller_keeps_answering() {
    let mut f = Fleet::new();
    f.assign_ports(&["h1"], &["api"]);
    f.start_controller();
    f.start_agent("h1", "500ms");
    f.wait_online("h1");
    f.apply_sample_fleet(&["h1"], &["api"], "max_parallel = 1\nmax_unavailable = 1");
    // Large enough that no transport buffer holds it whole.
    f.sample_release(
        "1.0.0",
        &[Svc::new("api", "1.0").ballast(8 << 20)],
        Floor::default(),
    );
    // The real agent installs it: its session was sent the install command,
    // so h1 may fetch the tarball.
    f.upgrade(&["--all"], "1.0.0", &[]).ok();
    let sha = f.tarball_sha("1.0.0", "api");
    let digest = cutover_core::Sha256Digest::parse_prefixed(&sha).unwrap();

    let h1 = Presented::from_identity(&f.agent_dir("h1").join("identity.pem"));
    let rt = grpc::runtime();
    let ca = f.pki.join("ca.pem");
    // Every stream on a connection of its own: unread streams sharing one
    // HTTP/2 connection would hold its flow-control window, and the one
    // the test reads later could never receive its bytes.
    let connect = || {
        rt.block_on(grpc::channel(&f.url(), &ca, Some(&h1)))
            .map(grpc::agent)
            .expect("channel as h1")
    };
    // 50 streams opened and never read.
    let mut open = Vec::new();
    let mut refused = Vec::new();
    for _ in 0..50 {
        let mut c = connect();
        match rt.block_on(c.fetch(fetch_request(&sha))) {
            Ok(r) => open.push(r.into_inner()),
            Err(s) => refused.push(s),
        }
    }
    assert_eq!(open.len(), 4, "the per-host cap admits 4 streams");
    assert_eq!(refused.len(), 46);
    for s in &refused {
        assert_eq!(s.code(), tonic::Code::ResourceExhausted, "{s:?}");
        assert!(
            s.message()
                .contains("host \"h1\" already has 4 artifact fetches open"),
            "{s:?}"
        );
    }
    // The store is not starved: operators are answered (within the CLI's
    // own timeout) while the streams sit there.
    f.cli(&["status"]).ok();
    f.cli(&["hosts"]).ok();

    // Each stalled stream is ended by the controller...
    eventually(Duration::from_secs(120), "4 stalled fetches ended", || {
        let ended = f
            .controller_log()
            .lines()
            .filter(|l| l.contains("artifact fetch made no progress"))
            .count();
        (ended >= 4).then_some(())
    });
    // ...and says so to a consumer that reads it after all.
    let (bytes, status) = rt.block_on(drain(&mut open[0]));
    let status = status.expect("a stalled stream ends with a status");
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status:?}");
    assert!(
        status.message().contains("took no data for 30s"),
        "{status:?}"
    );
    // Its place under the cap was given back when the controller ended it
    // (read out or not): a new fetch by the same host gets the whole
    // artifact.
    let whole = eventually(Duration::from_secs(20), "a fetch admitted again", || {
        let mut c = connect();
        rt.block_on(async {
            let mut s = c.fetch(fetch_request(&sha)).await.ok()?.into_inner();
            Some(drain(&mut s).await)
        })
    });
    assert!(whole.1.is_none(), "{:?}", whole.1);
    assert_eq!(cutover_core::Sha256Digest::of(&whole.0), digest);
    assert!(
        bytes.len() < whole.0.len(),
        "the stalled stream ended early: {} of {} bytes",
        bytes.len(),
        whole.0.len()
    );
    f.cli(&["status"]).ok();
}

#[test]
fn a_host_may_fetch_only_artifacts_that_a_command_sent_to_it_names() {
    let mut f = Fleet::new();
    f.start_controller();
    f.raw_release("1.0.0", "api", b"bytes no command ever named");
    let sha = f.tarball_sha("1.0.0", "api");
    let rt = grpc::runtime();
    let ca = f.pki.join("ca.pem");
    let h1 = enroll(&f, &rt, "h1");
    let fetch = |sha: &str| {
        rt.block_on(async {
            let ch = grpc::channel(&f.url(), &ca, Some(&h1)).await?;
            grpc::agent(ch)
                .fetch(fetch_request(sha))
                .await
                .map(|_| ())
                .map_err(|s| grpc::status_text(&s))
        })
    };
    // Without a session, and with one that was sent no command.
    let e = fetch(&sha).unwrap_err();
    assert!(
        e.contains("PermissionDenied") && e.contains("may not fetch artifact"),
        "{e}"
    );
    let _session = session(&f, &rt, &h1, 10_000).expect("session");
    let e = fetch(&sha).unwrap_err();
    assert!(
        e.contains("PermissionDenied") && e.contains("may not fetch artifact"),
        "{e}"
    );
    // A digest the controller does not hold is refused the same way: a
    // host learns nothing of what the store holds.
    let absent = cutover_core::Sha256Digest::of(b"absent").to_prefixed();
    let e = fetch(&absent).unwrap_err();
    assert!(
        e.contains("PermissionDenied") && e.contains("may not fetch artifact"),
        "{e}"
    );
    assert!(f.controller_log().contains("fetch refused"));
}

#[test]
fn the_old_certificate_of_a_re_enrolled_host_opens_no_session() {
    let mut f = Fleet::new();
    f.start_controller();
    let rt = grpc::runtime();
    let old = enroll(&f, &rt, "h1");
    let mut held = session(&f, &rt, &old, 10_000).expect("session with the first certificate");
    let new = enroll(&f, &rt, "h1");
    // The session opened with the replaced certificate is cut...
    let cut = rt.block_on(async {
        loop {
            match held.inbound.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => return None,
                Err(s) => return Some(s),
            }
        }
    });
    let cut = cut.expect("the old session ends with a status");
    assert_eq!(cut.code(), tonic::Code::PermissionDenied, "{cut:?}");
    assert!(cut.message().contains("enrolled again"), "{cut:?}");
    // ...and the certificate opens no new one.
    let refused = session(&f, &rt, &old, 10_000)
        .err()
        .expect("old certificate refused");
    assert!(
        refused.contains("PermissionDenied") && refused.contains("was replaced"),
        "{refused}"
    );
    session(&f, &rt, &new, 10_000).expect("the new certificate opens a session");
    f.wait_online("h1");
}

#[test]
fn a_second_renewal_right_after_the_first_is_refused() {
    // Certificates of 9 s: renewal opens 3 s into their life, and a host
    // renews at most once every 3 s (a third of the life, under a minute).
    let mut f = Fleet::with(ControllerOptions {
        agent_cert_ttl: "9s".into(),
    });
    f.start_controller();
    let rt = grpc::runtime();
    let h1 = enroll(&f, &rt, "h1");
    let mut s = session(&f, &rt, &h1, 10_000).expect("session");
    let mut renew = || {
        rt.block_on(async {
            let (_key, csr_pem) = cutover_core::pki::new_csr("h1").unwrap();
            s.tx.send(v1::AgentMessage {
                msg: Some(v1::agent_message::Msg::Renew(v1::RenewRequest { csr_pem })),
            })
            .await
            .unwrap();
            loop {
                let m = s.inbound.message().await.expect("session").expect("open");
                if let Some(v1::controller_message::Msg::Renewed(r)) = m.msg {
                    return r;
                }
            }
        })
    };
    let young = renew();
    assert!(
        young.cert_pem.is_empty() && young.error.contains("too young to renew"),
        "{}",
        young.error
    );
    let first = eventually(Duration::from_secs(20), "renewal to open", || {
        let r = renew();
        (!r.error.contains("too young to renew")).then_some(r)
    });
    assert!(first.error.is_empty(), "{}", first.error);
    let renewed = cutover_core::pki::PeerIdentity::from_pem(&first.cert_pem).unwrap();
    let second = renew();
    assert!(second.cert_pem.is_empty());
    assert!(
        second.error.contains("renewed its certificate 0s ago")
            && second.error.contains("at most once every 3s"),
        "{}",
        second.error
    );
    // The store still names the certificate of the first renewal.
    assert_eq!(
        f.hosts()["h1"]["cert_serial"].as_str(),
        Some(renewed.serial.as_str())
    );
}

#[test]
fn a_hello_asking_for_a_huge_heartbeat_interval_is_refused_and_a_silent_host_goes_offline() {
    let mut f = Fleet::new();
    f.start_controller();
    let rt = grpc::runtime();
    let h1 = enroll(&f, &rt, "h1");
    // An hour between heartbeats would leave a dead host online for hours.
    let refused = session(&f, &rt, &h1, 3_600_000).err().expect("refused");
    assert!(
        refused.contains("InvalidArgument")
            && refused.contains("heartbeat interval 3600s is outside what this controller accepts"),
        "{refused}"
    );
    assert!(!f.is_online("h1"));
    // Within the bound, a host that says hello and then nothing is offline
    // after three missed heartbeats.
    let _silent = session(&f, &rt, &h1, 1_000).expect("session");
    assert!(f.is_online("h1"));
    eventually(Duration::from_secs(30), "h1 offline", || {
        (!f.is_online("h1")).then_some(())
    });
    eventually(Duration::from_secs(10), "session closed", || {
        f.controller_log()
            .contains("missed 3 heartbeats")
            .then_some(())
    });
}

/// Sends a renewal on `s` with a new key; returns the answer and the key.
fn renew_on(rt: &tokio::runtime::Runtime, s: &mut grpc::Session) -> (v1::Renewed, String) {
    rt.block_on(async {
        let (key_pem, csr_pem) = cutover_core::pki::new_csr("h1").unwrap();
        s.tx.send(v1::AgentMessage {
            msg: Some(v1::agent_message::Msg::Renew(v1::RenewRequest { csr_pem })),
        })
        .await
        .unwrap();
        loop {
            let m = s.inbound.message().await.expect("session").expect("open");
            if let Some(v1::controller_message::Msg::Renewed(r)) = m.msg {
                return (r, key_pem);
            }
        }
    })
}

/// Renews on `s` as soon as the controller lets it.
fn renewed_on(rt: &tokio::runtime::Runtime, s: &mut grpc::Session) -> Presented {
    let (r, key_pem) = eventually(Duration::from_secs(40), "a renewal to be granted", || {
        let (r, key) = renew_on(rt, s);
        r.error.is_empty().then_some((r, key))
    });
    Presented {
        cert_pem: r.cert_pem,
        key_pem,
    }
}

#[test]
fn the_certificate_a_renewal_replaced_still_opens_a_session_after_a_controller_restart_and_the_one_before_does_not(
) {
    // Certificates of 30 s: renewal opens 10 s into their life, at most
    // once every 10 s.
    let mut f = Fleet::with(ControllerOptions {
        agent_cert_ttl: "30s".into(),
    });
    f.start_controller();
    let rt = grpc::runtime();
    let first = enroll(&f, &rt, "h1");
    let mut s = session(&f, &rt, &first, 10_000).expect("session");
    let second = renewed_on(&rt, &mut s);
    drop(s);
    // A restart: the handover is known from the store, not from memory.
    f.kill_controller();
    f.start_controller();
    // `second` speaks for the host, and so (its answer may have been lost)
    // does `first`. A host has one live session, so each is opened once
    // the one before has ended; the one kept for renewing is opened last.
    drop(next_session(
        &f,
        &rt,
        &second,
        "the current certificate after restart",
    ));
    let mut s = next_session(&f, &rt, &first, "the replaced certificate after restart");
    // Renewing again replaces `second`: `first` is now refused.
    let third = renewed_on(&rt, &mut s);
    drop(s);
    let refused = session(&f, &rt, &first, 10_000)
        .err()
        .expect("a certificate two renewals old refused");
    assert!(
        refused.contains("PermissionDenied") && refused.contains("was replaced"),
        "{refused}"
    );
    drop(next_session(&f, &rt, &third, "the newest certificate"));
}
