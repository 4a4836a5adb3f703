//! The agent API: enrollment, the long-lived session stream and artifact
//! fetches. Every call but enrollment is made with a host certificate, and
//! only the one the controller issued last (see [`super::certs`]).

use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use cutover_core::views::{from_ms, now_ms, to_ms};
use cutover_proto::v1::{self, agent_message::Msg as In, controller_message::Msg as Out};
use cutover_proto::Agent;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

use super::certs::Certs;
use super::fetch::{self, FetchLimits};
use crate::sessions::{NewSession, Outbound, Session};
use crate::store::TokenProblem;
use crate::Controller;

const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// The heartbeat intervals a hello may ask for. A host is offline after
/// three missed heartbeats, so the upper bound is what caps how long a host
/// that went silent still shows online (3 minutes).
pub const MIN_HEARTBEAT: Duration = Duration::from_millis(100);
pub const MAX_HEARTBEAT: Duration = Duration::from_secs(60);

pub struct AgentApi {
    c: Arc<Controller>,
    state: Arc<AgentState>,
}

/// What the agent calls share beyond the controller.
#[derive(Default)]
struct AgentState {
    certs: Certs,
    fetches: Arc<FetchLimits>,
}

impl AgentApi {
    pub fn new(c: Arc<Controller>) -> Self {
        let certs = Certs::preloaded(&c.store);
        AgentApi {
            c,
            state: Arc::new(AgentState {
                certs,
                fetches: Arc::default(),
            }),
        }
    }
}

impl AgentApi {
    /// The status a second session of a live host gets; the first refusal
    /// against a live session is recorded as an event.
    async fn refuse_duplicate(&self, refused: crate::sessions::Duplicate) -> Status {
        let reason = refused.reason();
        tracing::warn!(host = %refused.host, %reason, "session refused");
        if refused.first {
            let (host, detail) = (refused.host.clone(), reason.clone());
            if let Err(e) = self
                .c
                .store
                .run(move |s| s.event("session.refused", Some(&host), &detail))
                .await
            {
                tracing::warn!(error = %e, "could not record the refused session");
            }
        }
        Status::already_exists(reason)
    }
}

/// The heartbeat interval a hello asked for, if it is one the controller
/// accepts.
fn heartbeat_interval(ms: u64) -> Result<Duration, Status> {
    let asked = Duration::from_millis(ms);
    if (MIN_HEARTBEAT..=MAX_HEARTBEAT).contains(&asked) {
        return Ok(asked);
    }
    Err(Status::invalid_argument(format!(
        "heartbeat interval {asked:?} is outside what this controller accepts ({MIN_HEARTBEAT:?} to {MAX_HEARTBEAT:?}); set heartbeat_interval in the agent's config within it"
    )))
}

fn out(msg: Out) -> Outbound {
    Ok(v1::ControllerMessage { msg: Some(msg) })
}

fn when(ms: i64) -> String {
    from_ms(ms)
        .map(cutover_core::manifest::rfc3339)
        .unwrap_or_default()
}

#[tonic::async_trait]
impl Agent for AgentApi {
    async fn enroll(
        &self,
        req: Request<v1::EnrollRequest>,
    ) -> Result<Response<v1::EnrollResponse>, Status> {
        let peer = req
            .extensions()
            .get::<crate::server::PeerInfo>()
            .map(|p| p.addr.to_string())
            .unwrap_or_default();
        let v1::EnrollRequest { token, csr_pem } = req.into_inner();
        let hash = super::hash_token(&token);
        let c = self.c.clone();
        let ttl = time::Duration::try_from(c.config.agent_cert_ttl)
            .map_err(|e| Status::internal(e.to_string()))?;
        let result = self
            .c
            .store
            .run(move |s| {
                s.enroll(&hash, |host| {
                    let cert = c.ca.issue_host_cert(&csr_pem, host, ttl)?;
                    Ok((cert.pem, cert.serial, to_ms(Some(cert.not_after))))
                })
            })
            .await?;
        match result {
            Ok((host, cert_pem)) => {
                tracing::info!(%host, %peer, "host enrolled");
                // Every older certificate of the host is superseded now,
                // including the one a still-open session was opened with.
                self.state.certs.changed(&host);
                self.c.sessions.cut(
                    &host,
                    Status::permission_denied(format!(
                        "host {host:?} enrolled again; this session's certificate was replaced"
                    )),
                );
                Ok(Response::new(v1::EnrollResponse { host, cert_pem }))
            }
            Err(problem) => {
                let msg = match problem {
                    TokenProblem::Unknown => "join token not recognised".to_string(),
                    TokenProblem::Used { host, at } => format!(
                        "join token for host {host:?} was already used at {}; create a new one with `cutover token create {host}`",
                        when(at)
                    ),
                    TokenProblem::Expired { host, at } => format!(
                        "join token for host {host:?} expired at {}; create a new one with `cutover token create {host}`",
                        when(at)
                    ),
                    TokenProblem::HostRevoked { host } => {
                        format!("host {host:?} is revoked and cannot enroll")
                    }
                    TokenProblem::HostEnrolled { host, until } => format!(
                        "join token for host {host:?} was made without --replace and the host has enrolled since (its certificate is valid until {}); create one with `cutover token create {host} --replace` to replace its identity",
                        when(until)
                    ),
                };
                tracing::warn!(%peer, reason = %msg, "enrollment refused");
                Err(Status::unauthenticated(msg))
            }
        }
    }

    type FetchStream = fetch::FetchStream;

    async fn fetch(
        &self,
        req: Request<v1::FetchRequest>,
    ) -> Result<Response<Self::FetchStream>, Status> {
        let (host, identity) = super::require_host(&req)?;
        if self.c.revoked.contains(&host) {
            return Err(Status::permission_denied(format!(
                "host {host:?} is revoked"
            )));
        }
        self.state
            .certs
            .check(&self.c.store, &host, &identity.serial)
            .await?;
        let v1::FetchRequest { sha256, offset } = req.into_inner();
        let digest = cutover_core::Sha256Digest::parse_prefixed(&sha256)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        // Refused alike whether or not the controller holds the artifact.
        let granted = self
            .c
            .sessions
            .get(&host)
            .is_some_and(|s| s.is_granted(&digest));
        if !granted {
            tracing::warn!(%host, artifact = %digest, "fetch refused: no command sent on the host's session names the artifact");
            return Err(Status::permission_denied(format!(
                "host {host:?} may not fetch artifact {digest}: no install command sent on its current session names it (a host fetches only what its rollout steps install)"
            )));
        }
        let slot = self.state.fetches.admit(&host).inspect_err(|e| {
            tracing::warn!(%host, artifact = %digest, reason = %e.message(), "fetch refused");
        })?;
        let path = self.c.artifacts.path(&digest);
        let opened = fetch::open(&self.state.fetches, path).await.map_err(|_| {
            Status::not_found(format!(
                "artifact {digest} is not in the controller's store"
            ))
        })?;
        let size = opened.size;
        if offset > size {
            return Err(Status::out_of_range(format!(
                "offset {offset} is past the end of artifact {digest} ({size} bytes)"
            )));
        }
        tracing::info!(%host, artifact = %digest, offset, size, "artifact fetch");
        let stream = fetch::serve(
            self.state.fetches.clone(),
            slot,
            fetch::Serve {
                host,
                digest,
                opened,
                offset,
                rate: self.c.config.fetch_rate_limit,
                chunk: cutover_proto::CHUNK_BYTES,
                stall_timeout: fetch::FETCH_STALL_TIMEOUT,
            },
        );
        Ok(Response::new(stream))
    }

    type SessionStream = Granting;

    async fn session(
        &self,
        req: Request<Streaming<v1::AgentMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let (host, identity) = super::require_host(&req)?;
        if self.c.revoked.contains(&host) {
            return Err(Status::permission_denied(format!(
                "host {host:?} is revoked"
            )));
        }
        self.state
            .certs
            .check(&self.c.store, &host, &identity.serial)
            .await?;
        let mut inbound = req.into_inner();
        let hello = match tokio::time::timeout(HELLO_TIMEOUT, inbound.message()).await {
            Ok(Ok(Some(v1::AgentMessage {
                msg: Some(In::Hello(h)),
            }))) => h,
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(Status::deadline_exceeded("no hello within 10s")),
            _ => return Err(Status::invalid_argument("a session must start with hello")),
        };
        // Counts, names and identities checked, free text (agent_version) cut.
        let hello = cutover_proto::convert::Hello::try_from(hello)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let inventory = hello.inventory;
        let interval = heartbeat_interval(hello.heartbeat_interval_ms)?;
        // Checked again, atomically, at registration; here so that a
        // refused duplicate's hello writes nothing.
        if let Some(refused) = self.c.sessions.refusal(&host) {
            return Err(self.refuse_duplicate(refused).await);
        }
        let known = {
            let (host, version) = (host.clone(), hello.agent_version.clone());
            self.c
                .store
                .run(move |s| s.record_hello(&host, &version, &inventory))
                .await?
        };
        if !known {
            return Err(Status::permission_denied(format!(
                "host {host:?} is not enrolled with this controller; enroll it with a join token"
            )));
        }
        let (tx, rx) = mpsc::channel(64);
        let session = match self.c.sessions.register(NewSession {
            host: host.clone(),
            agent_version: hello.agent_version,
            heartbeat_interval: interval,
            tx: tx.clone(),
        }) {
            Ok(s) => s,
            Err(refused) => return Err(self.refuse_duplicate(refused).await),
        };
        let _ = tx
            .send(out(Out::Welcome(v1::Welcome {
                host: host.clone(),
                controller_version: cutover_core::VERSION.into(),
                server_time_ms: now_ms(),
            })))
            .await;
        tracing::info!(%host, "session opened");
        let c = self.c.clone();
        let (state, stream_session) = (self.state.clone(), session.clone());
        tokio::spawn(async move {
            let reason = run_session(&c, &state, &session, inbound, &identity).await;
            c.sessions.remove(&session);
            tracing::info!(host = %session.host, %reason, "session closed");
            let last_seen = session.last_seen_ms.load(Ordering::Relaxed);
            let host = session.host.clone();
            if let Err(e) = c
                .store
                .run(move |s| s.record_disconnect(&host, last_seen, &reason))
                .await
            {
                tracing::warn!(error = %e, "could not record disconnect");
            }
            // What it was running is out of sight, unless it is back already.
            if c.sessions.get(&session.host).is_none() {
                let host = session.host.clone();
                match c
                    .store
                    .run(move |s| s.data_migrations_lost_with(&host))
                    .await
                {
                    Ok(0) => {}
                    Ok(n) => {
                        tracing::warn!(host = %session.host, migrations = n, "data migrations running there are now unknown")
                    }
                    Err(e) => {
                        tracing::warn!(host = %session.host, error = %e, "could not record data migrations as unknown")
                    }
                }
            }
        });
        Ok(Response::new(Granting {
            rx: ReceiverStream::new(rx),
            session: stream_session,
        }))
    }
}

/// The session's outbound stream. Each install command, as it leaves for
/// the agent, grants the host the artifact it names, so a host can fetch
/// only what it was told to install.
pub struct Granting {
    rx: ReceiverStream<Outbound>,
    session: Arc<Session>,
}

impl Stream for Granting {
    type Item = Outbound;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Outbound>> {
        let next = Pin::new(&mut self.rx).poll_next(cx);
        if let Poll::Ready(Some(Ok(msg))) = &next {
            if let Some(digest) = granted_by(msg) {
                self.session.grant(digest);
            }
        }
        next
    }
}

/// The artifact an outbound message lets the host fetch: an install's
/// tarball (a container image's too).
fn granted_by(msg: &v1::ControllerMessage) -> Option<cutover_core::Sha256Digest> {
    let Some(Out::Command(v1::Command {
        op: Some(v1::command::Op::Install(install)),
        ..
    })) = &msg.msg
    else {
        return None;
    };
    cutover_core::Sha256Digest::parse_prefixed(&install.sha256).ok()
}

/// Serves one session until it ends; returns why it ended.
async fn run_session(
    c: &Controller,
    state: &AgentState,
    session: &Session,
    mut inbound: Streaming<v1::AgentMessage>,
    cert: &cutover_core::pki::PeerIdentity,
) -> String {
    let silence_limit = 3 * session.heartbeat_interval;
    let until_expiry = (cert.not_after - time::OffsetDateTime::now_utc())
        .try_into()
        .unwrap_or(Duration::ZERO);
    let expiry = tokio::time::sleep(until_expiry);
    tokio::pin!(expiry);
    loop {
        tokio::select! {
            _ = session.cut.cancelled() => {
                let status = session.cut_status();
                let reason = status.message().to_string();
                last_word(&session.tx, status).await;
                return reason;
            }
            _ = &mut expiry => {
                last_word(&session.tx, Status::unauthenticated(
                    "session certificate expired; reconnect with the renewed certificate",
                )).await;
                return "certificate expired".into();
            }
            msg = tokio::time::timeout(silence_limit, inbound.message()) => match msg {
                Err(_) => return "missed 3 heartbeats".into(),
                Ok(Ok(None)) => return "agent closed the session".into(),
                Ok(Err(status)) => {
                    // A message refused (too large, undecodable) ends the
                    // stream: say so once, plainly, instead of just closing.
                    last_word(&session.tx, Status::new(status.code(), format!(
                        "the controller refused a message on this session: {}; the agent must send it bounded (upgrade the agent)",
                        status.message()
                    ))).await;
                    return format!("stream error: {}", status.message());
                }
                Ok(Ok(Some(m))) => {
                    session.last_seen_ms.store(now_ms(), Ordering::Relaxed);
                    handle(c, state, session, cert, m).await;
                }
            }
        }
    }
}

/// How long the session task waits for room in the outbound queue for a
/// message it must not drop silently (the status that ends a session, a
/// renewal's answer). A peer that stopped reading leaves the queue full:
/// the message is given up rather than waited on, so the task still sees
/// its cut, silence and expiry, ends, and does not hold up shutdown.
const LAST_WORD_TIMEOUT: Duration = Duration::from_secs(1);

/// Queues `msg` if the peer makes room for it within
/// [`LAST_WORD_TIMEOUT`]; says whether it was queued.
async fn queue_within(tx: &mpsc::Sender<Outbound>, msg: Outbound) -> bool {
    matches!(
        tokio::time::timeout(LAST_WORD_TIMEOUT, tx.send(msg)).await,
        Ok(Ok(()))
    )
}

/// Queues the status that ends a session, as [`queue_within`].
async fn last_word(tx: &mpsc::Sender<Outbound>, status: Status) -> bool {
    queue_within(tx, Err(status)).await
}

async fn handle(
    c: &Controller,
    state: &AgentState,
    session: &Session,
    cert: &cutover_core::pki::PeerIdentity,
    m: v1::AgentMessage,
) {
    match m.msg {
        Some(In::Heartbeat(hb)) => {
            // Best effort: a full queue costs the agent one RTT sample, and
            // it takes three unanswered acks to call the controller silent.
            if let Some(a) = ack(&hb) {
                let _ = session.tx.try_send(out(Out::HeartbeatAck(a)));
            }
        }
        Some(In::Reply(r)) => {
            if let Some(body) = r.body {
                session.resolve(r.request_id, body);
            }
        }
        Some(In::Renew(r)) => {
            let renewed = renew(c, state, &session.host, cert, r.csr_pem).await;
            let msg = match renewed {
                Ok(cert_pem) => v1::Renewed {
                    cert_pem,
                    error: String::new(),
                },
                Err(e) => v1::Renewed {
                    cert_pem: String::new(),
                    error: e.to_string(),
                },
            };
            // Bounded like a last word: the session must go on seeing its
            // cut, silence and expiry. An answer lost here is lost as one on
            // a session that drops would be: the agent keeps the certificate
            // the renewal replaced, which still opens sessions.
            if !queue_within(&session.tx, out(Out::Renewed(msg))).await {
                tracing::warn!(host = %session.host, "renewal answer not queued: the agent is not reading its session");
            }
        }
        Some(In::Report(r)) => match cutover_core::rollout::Report::try_from(r) {
            Ok(report) => {
                tracing::info!(host = %session.host, command = %report.command_id, ok = report.ok, "report");
                c.rollouts.report(session.host.clone(), report).await;
            }
            Err(e) => tracing::warn!(host = %session.host, error = %e, "ignored malformed report"),
        },
        Some(In::Health(h)) => match cutover_proto::convert::health_change_from_wire(h) {
            Ok(changed) => {
                let host = session.host.clone();
                tracing::info!(%host, services = changed.len(), "health changed");
                if let Err(e) = c.store.run(move |s| s.record_health(&host, &changed)).await {
                    tracing::warn!(host = %session.host, error = %e, "could not record health");
                }
            }
            Err(e) => {
                tracing::warn!(host = %session.host, error = %e, "ignored malformed health change")
            }
        },
        Some(In::DataMigration(u)) => {
            super::data_migrate::update(c, &session.host, u).await;
        }
        Some(In::Hello(_)) | None => {
            tracing::debug!(host = %session.host, "ignored unexpected message");
        }
    }
}

/// The ack a heartbeat asks for: none when the agent set `skip_ack` (it
/// asks on every other one; agents that predate the field never set it).
fn ack(hb: &v1::Heartbeat) -> Option<v1::HeartbeatAck> {
    (!hb.skip_ack).then(|| v1::HeartbeatAck {
        seq: hb.seq,
        agent_sent_at_ms: hb.sent_at_ms,
        server_time_ms: now_ms(),
    })
}

/// Issues a host a new certificate over its session: at most once per
/// [`super::certs::renewal_gap`], and not in the first third of the
/// life of the newest certificate the host holds.
async fn renew(
    c: &Controller,
    state: &AgentState,
    host: &str,
    cert: &cutover_core::pki::PeerIdentity,
    csr_pem: String,
) -> crate::Result<String> {
    let ttl = c.config.agent_cert_ttl;
    let last = state
        .certs
        .begin_renewal(&c.store, host, cert, ttl, std::time::Instant::now())
        .await
        .map_err(|why| {
            tracing::warn!(%host, reason = %why, "renewal refused");
            crate::Error::PermissionDenied(why)
        })?;
    let issued = async {
        let ttl =
            time::Duration::try_from(ttl).map_err(|e| crate::Error::Internal(e.to_string()))?;
        let cert = c.ca.issue_host_cert(&csr_pem, host, ttl)?;
        let (h, serial, not_after) = (
            host.to_string(),
            cert.serial.clone(),
            to_ms(Some(cert.not_after)),
        );
        c.store
            .run(move |s| s.record_renewal(&h, &serial, not_after))
            .await?;
        Ok::<_, crate::Error>(cert)
    }
    .await;
    // Whether or not the store took it, the cached serials may be stale.
    state.certs.changed(host);
    let cert = issued.inspect_err(|_| state.certs.renewal_failed(host, last))?;
    tracing::info!(%host, serial = %cert.serial, "certificate renewed");
    Ok(cert.pem)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_heartbeat_is_acked_unless_the_agent_skips_the_ack() {
        let hb = |skip_ack| v1::Heartbeat {
            seq: 7,
            sent_at_ms: 1_000,
            skip_ack,
        };
        let a = ack(&hb(false)).expect("acked");
        assert_eq!((a.seq, a.agent_sent_at_ms), (7, 1_000));
        assert!(a.server_time_ms > 0);
        assert!(ack(&hb(true)).is_none());
    }

    #[test]
    fn a_hello_may_ask_only_for_a_heartbeat_interval_within_the_bounds() {
        assert_eq!(heartbeat_interval(100).unwrap(), MIN_HEARTBEAT);
        assert_eq!(heartbeat_interval(60_000).unwrap(), MAX_HEARTBEAT);
        for ms in [0, 99, 60_001, 3_600_000, u64::MAX] {
            let e = heartbeat_interval(ms).unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument);
            assert!(e.message().contains("100ms to 60s"), "{e:?}");
        }
    }

    #[tokio::test]
    async fn a_sessions_last_word_does_not_wait_on_a_peer_that_stopped_reading() {
        let (tx, mut rx) = mpsc::channel(2);
        for _ in 0..2 {
            tx.try_send(out(Out::Welcome(v1::Welcome::default())))
                .unwrap();
        }
        // The queue is full and nobody reads it: the session still ends.
        assert!(!last_word(&tx, Status::unauthenticated("expired")).await);
        // With room, the status is queued for the peer.
        rx.recv().await.unwrap().unwrap();
        assert!(last_word(&tx, Status::unauthenticated("expired")).await);
        rx.recv().await.unwrap().unwrap();
        let last = rx.recv().await.unwrap().unwrap_err();
        assert_eq!(last.message(), "expired");
        // A peer gone altogether does not hold it either.
        drop(rx);
        assert!(!last_word(&tx, Status::unauthenticated("expired")).await);
    }

    #[test]
    fn only_an_install_command_grants_the_artifact_it_names() {
        let d = cutover_core::Sha256Digest::of(b"tarball");
        let command = |op| v1::ControllerMessage {
            msg: Some(Out::Command(v1::Command {
                command_id: "r1-0".into(),
                service: "api".into(),
                op: Some(op),
            })),
        };
        let install = command(v1::command::Op::Install(v1::InstallOp {
            sha256: d.to_prefixed(),
            ..Default::default()
        }));
        assert_eq!(granted_by(&install), Some(d));
        let rollback = command(v1::command::Op::Rollback(v1::RollbackOp {
            from_sha256: d.to_prefixed(),
        }));
        assert_eq!(granted_by(&rollback), None);
        let welcome = v1::ControllerMessage {
            msg: Some(Out::Welcome(v1::Welcome::default())),
        };
        assert_eq!(granted_by(&welcome), None);
    }
}
