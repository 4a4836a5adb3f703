//! The agent API: enrollment and the long-lived session stream.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use cutover_core::views::{from_ms, now_ms, to_ms};
use cutover_proto::v1::{self, agent_message::Msg as In, controller_message::Msg as Out};
use cutover_proto::Agent;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::sessions::{NewSession, Outbound, Session};
use crate::store::TokenProblem;
use crate::Controller;

const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
const MIN_HEARTBEAT: Duration = Duration::from_millis(100);
const MAX_HEARTBEAT: Duration = Duration::from_secs(600);

pub struct AgentApi {
    c: Arc<Controller>,
}

impl AgentApi {
    pub fn new(c: Arc<Controller>) -> Self {
        AgentApi { c }
    }
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
                };
                tracing::warn!(%peer, reason = %msg, "enrollment refused");
                Err(Status::unauthenticated(msg))
            }
        }
    }

    type FetchStream = ReceiverStream<Result<v1::FetchChunk, Status>>;

    async fn fetch(
        &self,
        req: Request<v1::FetchRequest>,
    ) -> Result<Response<Self::FetchStream>, Status> {
        let (host, _) = super::require_host(&req)?;
        if self.c.revoked.contains(&host) {
            return Err(Status::permission_denied(format!(
                "host {host:?} is revoked"
            )));
        }
        let v1::FetchRequest { sha256, offset } = req.into_inner();
        let digest = cutover_core::Sha256Digest::parse_prefixed(&sha256)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let path = self.c.artifacts.path(&digest);
        let mut file = std::fs::File::open(&path).map_err(|_| {
            Status::not_found(format!(
                "artifact {digest} is not in the controller's store"
            ))
        })?;
        let size = file
            .metadata()
            .map_err(|e| Status::internal(e.to_string()))?
            .len();
        if offset > size {
            return Err(Status::out_of_range(format!(
                "offset {offset} is past the end of artifact {digest} ({size} bytes)"
            )));
        }
        tracing::info!(%host, artifact = %digest, offset, size, "artifact fetch");
        let rate = self.c.config.fetch_rate_limit;
        let (tx, rx) = mpsc::channel(4);
        tokio::task::spawn_blocking(move || {
            use std::io::{Read, Seek};
            if let Err(e) = file.seek(std::io::SeekFrom::Start(offset)) {
                let _ = tx.blocking_send(Err(Status::internal(e.to_string())));
                return;
            }
            let started = std::time::Instant::now();
            let mut sent: u64 = 0;
            let mut buf = vec![0u8; cutover_proto::CHUNK_BYTES];
            loop {
                let n = match file.read(&mut buf) {
                    Ok(0) => return,
                    Ok(n) => n,
                    Err(e) => {
                        let _ = tx.blocking_send(Err(Status::internal(e.to_string())));
                        return;
                    }
                };
                if tx
                    .blocking_send(Ok(v1::FetchChunk {
                        data: buf[..n].to_vec(),
                    }))
                    .is_err()
                {
                    return;
                }
                sent += n as u64;
                if let Some(rate) = rate.filter(|r| *r > 0) {
                    let due = Duration::from_secs_f64(sent as f64 / rate as f64);
                    if let Some(wait) = due.checked_sub(started.elapsed()) {
                        std::thread::sleep(wait);
                    }
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    type SessionStream = ReceiverStream<Outbound>;

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
        let mut inbound = req.into_inner();
        let hello = match tokio::time::timeout(HELLO_TIMEOUT, inbound.message()).await {
            Ok(Ok(Some(v1::AgentMessage {
                msg: Some(In::Hello(h)),
            }))) => h,
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(Status::deadline_exceeded("no hello within 10s")),
            _ => return Err(Status::invalid_argument("a session must start with hello")),
        };
        let inventory = cutover_proto::convert::services_from_wire(hello.inventory)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let interval =
            Duration::from_millis(hello.heartbeat_interval_ms).clamp(MIN_HEARTBEAT, MAX_HEARTBEAT);
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
        let session = self.c.sessions.register(NewSession {
            host: host.clone(),
            agent_version: hello.agent_version,
            heartbeat_interval: interval,
            tx: tx.clone(),
        });
        let _ = tx
            .send(out(Out::Welcome(v1::Welcome {
                host: host.clone(),
                controller_version: cutover_core::VERSION.into(),
                server_time_ms: now_ms(),
            })))
            .await;
        tracing::info!(%host, "session opened");
        let c = self.c.clone();
        tokio::spawn(async move {
            let reason = run_session(&c, &session, inbound, identity.not_after).await;
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
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// Serves one session until it ends; returns why it ended.
async fn run_session(
    c: &Controller,
    session: &Session,
    mut inbound: Streaming<v1::AgentMessage>,
    cert_not_after: time::OffsetDateTime,
) -> String {
    let silence_limit = 3 * session.heartbeat_interval;
    let until_expiry = (cert_not_after - time::OffsetDateTime::now_utc())
        .try_into()
        .unwrap_or(Duration::ZERO);
    let expiry = tokio::time::sleep(until_expiry);
    tokio::pin!(expiry);
    loop {
        tokio::select! {
            _ = session.cut.cancelled() => {
                let status = session.cut_status();
                let reason = status.message().to_string();
                let _ = session.tx.send(Err(status)).await;
                return reason;
            }
            _ = &mut expiry => {
                let _ = session.tx.send(Err(Status::unauthenticated(
                    "session certificate expired; reconnect with the renewed certificate",
                ))).await;
                return "certificate expired".into();
            }
            msg = tokio::time::timeout(silence_limit, inbound.message()) => match msg {
                Err(_) => return "missed 3 heartbeats".into(),
                Ok(Ok(None)) => return "agent closed the session".into(),
                Ok(Err(status)) => return format!("stream error: {}", status.message()),
                Ok(Ok(Some(m))) => {
                    session.last_seen_ms.store(now_ms(), Ordering::Relaxed);
                    handle(c, session, m).await;
                }
            }
        }
    }
}

async fn handle(c: &Controller, session: &Session, m: v1::AgentMessage) {
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
            let renewed = renew(c, &session.host, r.csr_pem).await;
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
            let _ = session.tx.send(out(Out::Renewed(msg))).await;
        }
        Some(In::Report(r)) => match cutover_core::rollout::Report::try_from(r) {
            Ok(report) => {
                tracing::info!(host = %session.host, command = %report.command_id, ok = report.ok, "report");
                c.rollouts.report(session.host.clone(), report).await;
            }
            Err(e) => tracing::warn!(host = %session.host, error = %e, "ignored malformed report"),
        },
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

async fn renew(c: &Controller, host: &str, csr_pem: String) -> crate::Result<String> {
    let ttl = time::Duration::try_from(c.config.agent_cert_ttl)
        .map_err(|e| crate::Error::Internal(e.to_string()))?;
    let cert = c.ca.issue_host_cert(&csr_pem, host, ttl)?;
    let (h, serial, not_after) = (
        host.to_string(),
        cert.serial.clone(),
        to_ms(Some(cert.not_after)),
    );
    c.store
        .run(move |s| s.record_renewal(&h, &serial, not_after))
        .await?;
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
}
