//! Live agent sessions, in memory only: who is connected, when we last heard
//! from them, and the channel to send them requests. A heartbeat touches an
//! atomic here and nothing else.
//!
//! One session per host: while a host's session is live (heard from within
//! three of its heartbeat intervals, and not cut) a new session with the
//! same certificate is refused, so two agents holding one identity never
//! take turns. A session that has gone silent (an agent that restarted
//! while its old connection is half-dead) is replaced by the new one.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cutover_core::rollout::Command;
use cutover_core::Sha256Digest;
use cutover_proto::v1;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};

/// What the session task sends down the agent's stream.
pub type Outbound = std::result::Result<v1::ControllerMessage, tonic::Status>;

/// The most artifact digests one session remembers as granted. A session
/// carries one install command per service it is moving, so this is far
/// above any real need; the oldest grant goes first.
pub const MAX_GRANTS: usize = 1024;

pub struct Session {
    pub id: u64,
    pub host: String,
    pub agent_version: String,
    pub heartbeat_interval: Duration,
    pub connected_since_ms: i64,
    pub last_seen_ms: AtomicI64,
    pub tx: mpsc::Sender<Outbound>,
    /// Cancelled to cut the session; the status is sent to the agent.
    pub cut: CancellationToken,
    cut_status: Mutex<Option<tonic::Status>>,
    pending: Mutex<HashMap<u64, oneshot::Sender<v1::reply::Body>>>,
    /// Artifacts an install command sent on this session named: the only
    /// ones the host may fetch while this session is its current one.
    granted: Mutex<VecDeque<Sha256Digest>>,
    /// Set once a newer session of the host was refused for this one, so
    /// the refusal is recorded once per live session, not per retry.
    refused_one: std::sync::atomic::AtomicBool,
}

impl Session {
    /// A host is online while its session is open and it has not missed
    /// three heartbeats.
    pub fn is_live(&self, now_ms: i64) -> bool {
        let limit = 3 * self.heartbeat_interval.as_millis() as i64;
        now_ms - self.last_seen_ms.load(Ordering::Relaxed) <= limit
    }

    /// Lets the host fetch `digest`: an install command naming it is on its
    /// way to the agent.
    pub fn grant(&self, digest: Sha256Digest) {
        let mut granted = self.granted.lock().unwrap_or_else(|p| p.into_inner());
        if granted.contains(&digest) {
            return;
        }
        if granted.len() >= MAX_GRANTS {
            granted.pop_front();
        }
        granted.push_back(digest);
    }

    /// Whether a command sent on this session named `digest`.
    pub fn is_granted(&self, digest: &Sha256Digest) -> bool {
        self.granted
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(digest)
    }

    pub fn cut(&self, status: tonic::Status) {
        *self.cut_status.lock().unwrap_or_else(|p| p.into_inner()) = Some(status);
        self.cut.cancel();
    }

    pub fn cut_status(&self) -> tonic::Status {
        self.cut_status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .unwrap_or_else(|| tonic::Status::unavailable("session closed by the controller"))
    }

    /// Delivers an agent's reply to whoever asked.
    pub fn resolve(&self, request_id: u64, body: v1::reply::Body) {
        let waiter = self
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&request_id);
        if let Some(w) = waiter {
            let _ = w.send(body);
        }
    }
}

/// What became of a command handed to a host's session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// In the session's outbound queue.
    Sent,
    /// The host has no session.
    Offline,
    /// The session's queue stayed full, or the session closed.
    Refused,
}

/// A new session refused because the host's session is live.
#[derive(Debug, Clone)]
pub struct Duplicate {
    pub host: String,
    pub since_ms: i64,
    pub heard_ms_ago: i64,
    /// How long the live session may go unheard before it is replaced.
    pub window: Duration,
    /// The first refusal against this live session (record it).
    pub first: bool,
}

impl Duplicate {
    /// The one line the refused agent and the event log get.
    pub fn reason(&self) -> String {
        let since = cutover_core::views::from_ms(self.since_ms)
            .map(cutover_core::manifest::rfc3339)
            .unwrap_or_default();
        format!(
            "host {:?} already has a live session (open since {since}, heard from {} ms ago); this one is refused so that two agents with one identity do not take turns: stop the other agent holding this host's certificate (an agent that just restarted gets in once the old session has been silent for {} ms)",
            self.host,
            self.heard_ms_ago,
            self.window.as_millis()
        )
    }
}

/// The refusal `old` imposes on a new session of its host at `now`: none
/// once it is cut or has missed three heartbeats.
fn live_duplicate(old: &Session, now: i64) -> Option<Duplicate> {
    if old.cut.is_cancelled() || !old.is_live(now) {
        return None;
    }
    let first = !old.refused_one.swap(true, Ordering::Relaxed);
    Some(Duplicate {
        host: old.host.clone(),
        since_ms: old.connected_since_ms,
        heard_ms_ago: now - old.last_seen_ms.load(Ordering::Relaxed),
        window: old.heartbeat_interval * 3,
        first,
    })
}

/// Parameters of a new session, from the agent's hello.
pub struct NewSession {
    pub host: String,
    pub agent_version: String,
    pub heartbeat_interval: Duration,
    pub tx: mpsc::Sender<Outbound>,
}

pub struct Sessions {
    by_host: Mutex<HashMap<String, Arc<Session>>>,
    next_id: AtomicU64,
    next_request: AtomicU64,
}

impl Default for Sessions {
    /// Session ids start at a random point so that ids a rollout stored
    /// before a controller restart never match a new session.
    fn default() -> Self {
        Sessions {
            by_host: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(rand::random::<u64>() >> 2),
            next_request: AtomicU64::new(0),
        }
    }
}

impl Sessions {
    /// The refusal a new session of `host` gets now, if any.
    pub fn refusal(&self, host: &str) -> Option<Duplicate> {
        let map = self.by_host.lock().unwrap_or_else(|p| p.into_inner());
        live_duplicate(map.get(host)?, cutover_core::views::now_ms())
    }

    /// Registers a session, cutting an older one of the same host that is
    /// no longer live; refused while that one is live.
    pub fn register(&self, new: NewSession) -> std::result::Result<Arc<Session>, Duplicate> {
        let now = cutover_core::views::now_ms();
        let session = Arc::new(Session {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            host: new.host.clone(),
            agent_version: new.agent_version,
            heartbeat_interval: new.heartbeat_interval,
            connected_since_ms: now,
            last_seen_ms: AtomicI64::new(now),
            tx: new.tx,
            cut: CancellationToken::new(),
            cut_status: Mutex::new(None),
            pending: Mutex::new(HashMap::new()),
            granted: Mutex::new(VecDeque::new()),
            refused_one: Default::default(),
        });
        let old = {
            let mut map = self.by_host.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(refused) = map.get(&new.host).and_then(|o| live_duplicate(o, now)) {
                return Err(refused);
            }
            map.insert(new.host, session.clone())
        };
        if let Some(old) = old {
            old.cut(tonic::Status::aborted(
                "replaced by a newer session of the same host: this one had gone silent",
            ));
        }
        Ok(session)
    }

    /// Removes the session if it is still the registered one.
    pub fn remove(&self, session: &Session) {
        let mut map = self.by_host.lock().unwrap_or_else(|p| p.into_inner());
        if map.get(&session.host).is_some_and(|s| s.id == session.id) {
            map.remove(&session.host);
        }
    }

    pub fn get(&self, host: &str) -> Option<Arc<Session>> {
        self.by_host
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(host)
            .cloned()
    }

    pub fn snapshot(&self) -> Vec<Arc<Session>> {
        self.by_host
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    pub fn cut(&self, host: &str, status: tonic::Status) -> bool {
        match self.get(host) {
            Some(s) => {
                s.cut(status);
                true
            }
            None => false,
        }
    }

    /// Sends a rollout's `command` down `host`'s session, waiting at most
    /// `timeout` for room in its queue: the one place a command becomes a
    /// wire message.
    pub async fn send_command(&self, host: &str, command: &Command, timeout: Duration) -> Delivery {
        let Some(session) = self.get(host) else {
            return Delivery::Offline;
        };
        let msg = v1::ControllerMessage {
            msg: Some(v1::controller_message::Msg::Command(command.into())),
        };
        match tokio::time::timeout(timeout, session.tx.send(Ok(msg))).await {
            Ok(Ok(())) => Delivery::Sent,
            _ => Delivery::Refused,
        }
    }

    /// Sends a request to a host's agent and waits for its reply.
    pub async fn request(
        &self,
        host: &str,
        body: v1::request::Body,
        timeout: Duration,
    ) -> Result<v1::reply::Body> {
        let session = self
            .get(host)
            .filter(|s| s.is_live(cutover_core::views::now_ms()))
            .ok_or_else(|| Error::Unavailable(format!("host {host:?} is offline")))?;
        let id = self.next_request.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        session
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, tx);
        let msg = v1::ControllerMessage {
            msg: Some(v1::controller_message::Msg::Request(v1::Request {
                request_id: id,
                body: Some(body),
            })),
        };
        let result = async {
            session
                .tx
                .send(Ok(msg))
                .await
                .map_err(|_| Error::Unavailable(format!("host {host:?} disconnected")))?;
            tokio::time::timeout(timeout, rx)
                .await
                .map_err(|_| {
                    Error::Unavailable(format!(
                        "host {host:?} did not answer within {}s",
                        timeout.as_secs()
                    ))
                })?
                .map_err(|_| Error::Unavailable(format!("host {host:?} disconnected")))
        }
        .await;
        session
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new(host: &str) -> (NewSession, mpsc::Receiver<Outbound>) {
        let (tx, rx) = mpsc::channel(4);
        (
            NewSession {
                host: host.into(),
                agent_version: "0".into(),
                heartbeat_interval: Duration::from_millis(100),
                tx,
            },
            rx,
        )
    }

    #[test]
    fn a_second_session_is_refused_while_the_first_is_live_and_replaces_it_once_silent() {
        let sessions = Sessions::default();
        let (a, _ra) = new("h");
        let first = sessions.register(a).unwrap();
        let (b, _rb) = new("h");
        let refused = sessions.register(b).err().expect("refused");
        assert!(refused.first && !first.cut.is_cancelled());
        let why = refused.reason();
        assert!(
            why.contains("already has a live session") && !why.contains('\n'),
            "{why}"
        );
        // Recorded once per live session, however often the other retries.
        let (b, _rb) = new("h");
        assert!(!sessions.register(b).err().expect("refused").first);
        assert!(sessions.refusal("h").is_some());
        // Silent past three heartbeats (100 ms each): the new one gets in.
        first.last_seen_ms.fetch_sub(301, Ordering::Relaxed);
        assert!(sessions.refusal("h").is_none());
        let (c, _rc) = new("h");
        let second = sessions.register(c).unwrap();
        assert!(first.cut.is_cancelled());
        // The old session ending must not remove the new one.
        sessions.remove(&first);
        assert_eq!(sessions.get("h").unwrap().id, second.id);
        // A cut session does not hold the host either.
        second.cut(tonic::Status::aborted("test"));
        let (d, _rd) = new("h");
        assert!(sessions.register(d).is_ok());
    }

    #[test]
    fn a_session_grants_only_the_digests_sent_on_it_and_forgets_the_oldest_past_the_bound() {
        let sessions = Sessions::default();
        let (a, _ra) = new("h");
        let s = sessions.register(a).unwrap();
        let d = |i: u32| Sha256Digest::of(&i.to_le_bytes());
        assert!(!s.is_granted(&d(0)));
        s.grant(d(0));
        s.grant(d(0));
        assert!(s.is_granted(&d(0)) && !s.is_granted(&d(1)));
        for i in 1..=MAX_GRANTS as u32 {
            s.grant(d(i));
        }
        assert!(!s.is_granted(&d(0)), "the oldest grant is dropped");
        assert!(s.is_granted(&d(1)) && s.is_granted(&d(MAX_GRANTS as u32)));
        // A newer session of the host starts with nothing granted.
        s.cut(tonic::Status::aborted("test"));
        let (b, _rb) = new("h");
        assert!(!sessions.register(b).unwrap().is_granted(&d(1)));
    }

    #[test]
    fn three_missed_heartbeats_make_a_host_not_live() {
        let sessions = Sessions::default();
        let (a, _ra) = new("h");
        let s = sessions.register(a).unwrap();
        let now = s.last_seen_ms.load(Ordering::Relaxed);
        assert!(s.is_live(now + 300));
        assert!(!s.is_live(now + 301));
    }
}
