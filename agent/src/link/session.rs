//! The agent's session with the controller: dial out, hello with the
//! inventory, heartbeats, replies to requests, commands handed to the
//! installer and its reports sent back, certificate renewal at two thirds
//! of its life, and reconnection with jittered exponential backoff.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cutover_core::views::{now_ms, InstalledService};
use cutover_proto::transport::ControllerAddr;
use cutover_proto::v1::{self, agent_message::Msg as Out, controller_message::Msg as In};
use cutover_proto::AgentClient;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::diag::SessionFigures;
use crate::error::{Error, Result};
use crate::install::{Backends, Installer, Outbox, Parts, Releases};
use crate::link::dial::{status_text, Dialer};
use crate::link::identity::Identity;
use crate::link::retry::Refusal;
pub use crate::link::source::ControllerSource;
use crate::link::Link;
use crate::runtime::{Native, Runtime};
use crate::Config;

/// The agent asks for an ack on one heartbeat in this many. Acks are half
/// of what a controller writes at fleet size; every other one is enough for
/// RTT figures and to notice a controller that stopped answering.
const ACK_EVERY: u64 = 2;
/// Unanswered acks after which the controller counts as silent.
const MISSED_ACKS: u32 = 3;

/// Whether heartbeat `seq` (from 1) asks for an ack: the first does.
fn wants_ack(seq: u64) -> bool {
    (seq - 1).is_multiple_of(ACK_EVERY)
}

/// How long the agent hears nothing before it calls the controller silent.
fn silence_limit(interval: Duration) -> Duration {
    interval * (ACK_EVERY as u32 * MISSED_ACKS)
}

/// Everything the session shares with request handlers.
pub struct Agent {
    pub config: Config,
    pub addr: ControllerAddr,
    dialer: Arc<Dialer>,
    figures: Mutex<SessionFigures>,
    started: Instant,
    runtime: Box<dyn Runtime>,
    outbox: tokio::sync::Mutex<Outbox>,
    link: Arc<Link>,
    /// A join token to enroll again with once the certificate has expired
    /// (a host that was down past its certificate's life). One-time.
    join_token: Mutex<Option<String>>,
}

impl Agent {
    pub fn new(
        config: Config,
        identity: Identity,
        join_token: Option<String>,
    ) -> Result<Arc<Agent>> {
        let mut vars = config.vars.clone();
        vars.insert("host".into(), identity.host.clone());
        let vars_for_migrations = vars.clone();
        let dialer = Arc::new(Dialer::new(&config, identity)?);
        let link = Arc::new(Link::new_lost());
        let runners = crate::services::runner::Runners {
            process: Arc::new(crate::services::runner::ProcessRunner::new(
                &config.data_dir,
                config.log_max_bytes,
                config.log_files,
            )),
            systemd: Arc::new(crate::services::runner::SystemdRunner {
                systemctl: config.systemctl.clone(),
            }),
        };
        let limits = crate::install::extract::Limits {
            max_bytes: config.max_unpacked_bytes,
            max_entries: config.max_entries,
        };
        let releases = Releases::new(&config.data_dir);
        let source = Arc::new(ControllerSource::over(dialer.clone()));
        let backends = Backends::native(&releases, limits, runners, source);
        let (installer, outbox) = Installer::new(Parts {
            releases,
            backends,
            prober: Box::new(crate::services::health::RealProber),
            link: link.clone(),
            autonomous_rollback_after: config.autonomous_rollback_after,
            vars,
        });
        let runtime = Box::new(Native {
            installer,
            data_dir: config.data_dir.clone(),
            health_probes: Arc::new(crate::services::health::watch::Schedule::new(
                config.health_probe_interval,
            )),
            data_migrations: crate::data_migrate::DataMigrations::new(
                &config.data_dir,
                vars_for_migrations,
                config.data_migrate_poll,
                config.data_migrate_timeout,
            ),
        });
        Ok(Agent::assemble(
            config, dialer, runtime, outbox, link, join_token,
        ))
    }

    /// An agent whose host is `runtime` (the simulator's stand-in), with
    /// the same session, heartbeats, renewal and reconnection as the real
    /// one. Reports come back on `outbox`.
    pub fn simulated(
        config: Config,
        identity: Identity,
        runtime: Box<dyn Runtime>,
        outbox: Outbox,
    ) -> Result<Arc<Agent>> {
        let dialer = Arc::new(Dialer::new(&config, identity)?);
        let link = Arc::new(Link::new_lost());
        Ok(Agent::assemble(config, dialer, runtime, outbox, link, None))
    }

    fn assemble(
        config: Config,
        dialer: Arc<Dialer>,
        runtime: Box<dyn Runtime>,
        outbox: Outbox,
        link: Arc<Link>,
        join_token: Option<String>,
    ) -> Arc<Agent> {
        Arc::new(Agent {
            addr: dialer.addr.clone(),
            config,
            dialer,
            figures: Mutex::new(SessionFigures::default()),
            started: Instant::now(),
            runtime,
            outbox: tokio::sync::Mutex::new(outbox),
            link,
            join_token: Mutex::new(join_token),
        })
    }

    pub fn identity(&self) -> Identity {
        self.dialer.identity()
    }

    /// Whether the controller has welcomed the current session.
    pub fn is_connected(&self) -> bool {
        self.link.is_up()
    }

    /// What this host has installed, as its runtime reports it.
    pub async fn inventory(&self) -> Vec<InstalledService> {
        self.runtime.inventory().await
    }

    /// An expired certificate is never offered to the controller: the
    /// agent enrolls again if it was given a join token, and otherwise says
    /// what the operator must do. Its services keep running meanwhile.
    async fn renew_expired(&self) -> Result<()> {
        let identity = self.identity();
        if identity.not_after > time::OffsetDateTime::now_utc() {
            return Ok(());
        }
        let expired = |why: String| Error::Expired {
            host: identity.host.clone(),
            not_after: cutover_core::manifest::rfc3339(identity.not_after),
            why,
        };
        let token = self
            .join_token
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let Some(token) = token else {
            return Err(expired(String::new()));
        };
        match crate::link::enroll::enroll_once(&self.config, &token).await {
            Ok(fresh) => {
                *self.join_token.lock().unwrap_or_else(|p| p.into_inner()) = None;
                *self
                    .dialer
                    .identity
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = fresh;
                Ok(())
            }
            Err(Error::EnrollRefused(why)) => Err(expired(format!(
                " and enrolling again with the join token was refused ({why})"
            ))),
            Err(e) => Err(e),
        }
    }

    fn figures(&self) -> SessionFigures {
        *self.figures.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Recovers installed services, then keeps a session open until
/// `shutdown` resolves.
pub async fn run(agent: Arc<Agent>, shutdown: impl std::future::Future<Output = ()>) {
    agent.runtime.recover().await;
    let upkeep = agent
        .runtime
        .upkeep_every()
        .map(|every| tokio::spawn(upkeep(agent.clone(), every)));
    tokio::pin!(shutdown);
    let mut attempt: u32 = 0;
    // The refusal said last: the same one again is said at DEBUG.
    let mut refused: Option<Refusal> = None;
    // When the controller last said it is going away.
    let mut going_away_at: Option<tokio::time::Instant> = None;
    loop {
        let outcome = tokio::select! {
            _ = &mut shutdown => break,
            o = session_once(&agent) => o,
        };
        agent.link.lost();
        let refusal = outcome.as_ref().err().and_then(Refusal::of);
        let loud = crate::link::retry::loud(refused, refusal);
        refused = refusal;
        match &outcome {
            Ok(Ended {
                going_away: true,
                reason,
                ..
            }) => {
                tracing::info!(%reason, "the controller is going away");
                going_away_at = Some(tokio::time::Instant::now());
            }
            Ok(Ended {
                welcomed, reason, ..
            }) => {
                tracing::warn!(%reason, "session ended");
                if *welcomed {
                    attempt = 0;
                }
            }
            Err(e) => match refusal {
                Some(r) if loud => {
                    let why = r.explain(&agent.identity().host);
                    tracing::warn!(error = %e, "{why}");
                }
                Some(_) => tracing::debug!(error = %e, "session refused again"),
                None => tracing::warn!(error = %e, "session failed"),
            },
        }
        // A restart, not an outage: for a while after the notice, retry
        // about every second (jittered, so the fleet's agents spread their
        // return) instead of backing off while the old controller finishes
        // and the next one starts.
        attempt =
            crate::link::retry::after_going_away(attempt, going_away_at.map(|at| at.elapsed()));
        let mut delay = backoff(attempt, agent.config.reconnect_max_backoff);
        if let Some(r) = refusal {
            delay = r.delay(delay, agent.config.heartbeat_interval);
        }
        attempt = attempt.saturating_add(1);
        if loud {
            tracing::info!(retry_in = ?delay, "reconnecting");
        } else {
            tracing::debug!(retry_in = ?delay, "reconnecting");
        }
        tokio::select! {
            _ = &mut shutdown => break,
            _ = tokio::time::sleep(delay) => {}
        }
    }
    if let Some(u) = upkeep {
        u.abort();
    }
    if agent.config.stop_services_on_exit {
        agent.runtime.stop_all().await;
    }
}

/// Supervision of service processes and the agent's own rollback watch.
async fn upkeep(agent: Arc<Agent>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        agent.runtime.upkeep().await;
    }
}

/// Full jitter: uniform in [0, min(max, 250ms * 2^attempt)], at least 50ms.
pub fn backoff(attempt: u32, max: Duration) -> Duration {
    let cap = Duration::from_millis(250)
        .saturating_mul(1u32 << attempt.min(16))
        .min(max);
    let ms = rand::random::<u64>() % (cap.as_millis() as u64 + 1);
    Duration::from_millis(ms.max(50))
}

struct Ended {
    welcomed: bool,
    reason: String,
    /// The controller said it is shutting down.
    going_away: bool,
}

async fn session_once(agent: &Arc<Agent>) -> Result<Ended> {
    agent.renew_expired().await?;
    let identity = agent.identity();
    let channel = agent.dialer.channel().await?;
    let mut client =
        AgentClient::new(channel).max_decoding_message_size(cutover_proto::MAX_MESSAGE_BYTES);
    let interval = agent.config.heartbeat_interval;
    let (tx, rx) = mpsc::channel::<v1::AgentMessage>(64);
    let send = |msg: Out| v1::AgentMessage { msg: Some(msg) };
    let hello = send(Out::Hello(v1::Hello {
        agent_version: cutover_core::VERSION.into(),
        heartbeat_interval_ms: interval.as_millis() as u64,
        inventory: cutover_proto::convert::services_to_wire(&agent.inventory().await),
        agent_started_at_ms: now_ms() - agent.started.elapsed().as_millis() as i64,
    }));
    tx.send(hello)
        .await
        .map_err(|_| Error::Session("session queue closed".into()))?;
    let mut inbound = client
        .session(ReceiverStream::new(rx))
        .await
        .map_err(|s| match s.message() {
            "" => Error::Session(format!(
                "controller refused the session: {}",
                status_text(&s)
            )),
            message => Error::SessionRefused {
                code: s.code(),
                message: message.to_string(),
            },
        })?
        .into_inner();

    let mut welcomed = false;
    let mut heartbeat = tokio::time::interval(interval);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seq: u64 = 0;
    let mut last_sent: Option<(u64, Instant, i64)> = None;
    let mut last_heard = Instant::now();
    let mut pending_key: Option<String> = None;
    let renew = tokio::time::sleep(until(identity.renew_at()));
    tokio::pin!(renew);
    let mut outbox = agent.outbox.lock().await;

    loop {
        tokio::select! {
            _ = heartbeat.tick() => {
                if last_heard.elapsed() > silence_limit(interval) {
                    return Ok(Ended { welcomed, reason: format!("controller silent: {MISSED_ACKS} acks unanswered"), going_away: false });
                }
                seq += 1;
                let sent_ms = now_ms();
                let skip_ack = !wants_ack(seq);
                if !skip_ack {
                    last_sent = Some((seq, Instant::now(), sent_ms));
                }
                if tx.send(send(Out::Heartbeat(v1::Heartbeat { seq, sent_at_ms: sent_ms, skip_ack }))).await.is_err() {
                    return Ok(Ended { welcomed, reason: "session stream closed".into(), going_away: false });
                }
            }
            _ = &mut renew, if pending_key.is_none() => {
                let (key, csr) = cutover_core::pki::new_csr(&identity.host)?;
                pending_key = Some(key);
                tracing::info!("renewing certificate");
                let _ = tx.send(send(Out::Renew(v1::RenewRequest { csr_pem: csr }))).await;
            }
            Some(report) = outbox.recv(), if welcomed => {
                let msg = send(Out::Report(report_to_wire(&report)));
                if tx.send(msg).await.is_err() {
                    return Ok(Ended { welcomed, reason: "session stream closed".into(), going_away: false });
                }
            }
            moved = agent.runtime.data_migration_updates(), if welcomed => {
                for ((service, id), status) in moved {
                    let msg = send(Out::DataMigration(v1::DataMigrationUpdate {
                        service,
                        id,
                        status_json: serde_json::to_string(&status).unwrap_or_default(),
                    }));
                    if tx.send(msg).await.is_err() {
                        return Ok(Ended { welcomed, reason: "session stream closed".into(), going_away: false });
                    }
                }
            }
            changed = agent.runtime.health_changes(), if welcomed => {
                let msg = send(Out::Health(cutover_proto::convert::health_change_to_wire(&changed)));
                if tx.send(msg).await.is_err() {
                    return Ok(Ended { welcomed, reason: "session stream closed".into(), going_away: false });
                }
            }
            msg = inbound.message() => {
                let msg = match msg {
                    Ok(Some(m)) => m,
                    Ok(None) => return Ok(Ended { welcomed, reason: "controller closed the session".into(), going_away: false }),
                    Err(s) => return Ok(Ended { welcomed, reason: status_text(&s), going_away: cutover_proto::is_going_away(&s) }),
                };
                last_heard = Instant::now();
                match msg.msg {
                    Some(In::Welcome(w)) => {
                        welcomed = true;
                        agent.link.connected();
                        tracing::info!(host = %w.host, controller = %w.controller_version, "session open");
                        // Reports the controller may have missed.
                        for report in agent.runtime.last_reports() {
                            let _ = tx.send(send(Out::Report(report_to_wire(&report)))).await;
                        }
                        agent.runtime.resend_data_migrations();
                    }
                    Some(In::Command(c)) => match cutover_core::rollout::Command::try_from(c) {
                        Ok(cmd) => {
                            agent.runtime.submit(cmd);
                        }
                        Err(e) => tracing::warn!(error = %e, "ignored malformed command"),
                    },
                    Some(In::HeartbeatAck(ack)) => {
                        if let Some((s, at, sent_ms)) = last_sent {
                            if s == ack.seq {
                                let rtt_ms = at.elapsed().as_secs_f64() * 1000.0;
                                let offset = ack.server_time_ms as f64 - (sent_ms as f64 + rtt_ms / 2.0);
                                *agent.figures.lock().unwrap_or_else(|p| p.into_inner()) =
                                    SessionFigures { rtt_ms, clock_offset_ms: offset };
                            }
                        }
                    }
                    Some(In::Request(r)) => {
                        let (agent, tx) = (agent.clone(), tx.clone());
                        tokio::spawn(async move {
                            let body = answer(&agent, r.body).await;
                            let _ = tx.send(v1::AgentMessage {
                                msg: Some(Out::Reply(v1::Reply { request_id: r.request_id, body: Some(body) })),
                            }).await;
                        });
                    }
                    Some(In::Renewed(r)) => {
                        let Some(key) = pending_key.take() else { continue };
                        if !r.error.is_empty() {
                            tracing::warn!(error = %r.error, "renewal refused; retrying in a minute");
                            renew.as_mut().reset(tokio::time::Instant::now() + Duration::from_secs(60));
                            continue;
                        }
                        let fresh = Identity::from_pem(r.cert_pem, key)?;
                        fresh.save(&agent.config.data_dir)?;
                        tracing::info!(not_after = %cutover_core::manifest::rfc3339(fresh.not_after), "certificate renewed");
                        renew.as_mut().reset(tokio::time::Instant::now() + until(fresh.renew_at()));
                        *agent.dialer.identity.lock().unwrap_or_else(|p| p.into_inner()) = fresh;
                    }
                    None => {}
                }
            }
        }
    }
}

/// A report as it goes on the wire: bounded, so that neither a report
/// just made nor one replayed from the journal after a restart can exceed
/// what the controller accepts (it would cut the session on every replay).
fn report_to_wire(report: &cutover_core::rollout::Report) -> v1::Report {
    cutover_proto::commands::report_to_wire(report, cutover_proto::MAX_MESSAGE_BYTES)
}

async fn answer(agent: &Arc<Agent>, body: Option<v1::request::Body>) -> v1::reply::Body {
    match body {
        Some(v1::request::Body::Diag(_)) => {
            let uptime = agent.started.elapsed().as_secs();
            match agent.runtime.diag(uptime, agent.figures()).await {
                Ok(r) => v1::reply::Body::Diag((&r).into()),
                Err(e) => v1::reply::Body::Error(
                    cutover_core::views::bounded(&e, cutover_core::views::limits::DETAIL)
                        .into_owned(),
                ),
            }
        }
        Some(v1::request::Body::DataMigrate(r)) => {
            use crate::data_migrate::Action;
            use v1::DataMigrateAction as A;
            let action = match A::try_from(r.action) {
                Ok(A::List) => Action::List,
                Ok(A::Status) => Action::Status,
                Ok(A::Run) => Action::Run { dry_run: r.dry_run },
                Ok(A::Verify) => Action::Verify,
                Ok(A::Pause) => Action::Pause,
                Ok(A::Resume) => Action::Resume,
                Ok(A::Unspecified) | Err(_) => {
                    return v1::reply::Body::Error(format!(
                        "data-migrate action {} is not one this agent knows; upgrade the agent",
                        r.action
                    ))
                }
            };
            match agent.runtime.data_migrate(&r.service, &r.id, action).await {
                Ok(json) => v1::reply::Body::DataMigrationJson(json),
                Err(e) => v1::reply::Body::Error(
                    cutover_core::views::bounded(&e, cutover_core::views::limits::DETAIL)
                        .into_owned(),
                ),
            }
        }
        None => v1::reply::Body::Error(
            "request this agent does not understand; upgrade the agent".into(),
        ),
    }
}

fn until(t: time::OffsetDateTime) -> Duration {
    (t - time::OffsetDateTime::now_utc())
        .try_into()
        .unwrap_or(Duration::ZERO)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_other_heartbeat_asks_for_an_ack_and_three_missed_acks_are_silence() {
        let asks: Vec<bool> = (1..=6).map(wants_ack).collect();
        assert_eq!(asks, [true, false, true, false, true, false]);
        assert_eq!(
            silence_limit(Duration::from_secs(10)),
            Duration::from_secs(60)
        );
    }

    #[test]
    fn backoff_is_jittered_and_capped() {
        let max = Duration::from_secs(2);
        for attempt in 0..40 {
            let d = backoff(attempt, max);
            assert!(d >= Duration::from_millis(50) && d <= max, "{d:?}");
        }
        let early: Vec<_> = (0..50).map(|_| backoff(0, max)).collect();
        assert!(early.iter().all(|d| *d <= Duration::from_millis(250)));
    }
}
