//! Runs the rollout state machine: one task owns every unfinished rollout,
//! feeds it reports, operator actions and a clock tick, persists each new
//! state with its events *before* sending the commands it asks for, and
//! resumes whatever the store holds after a restart.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use cutover_core::rollout::{Command, Report, Rollout};
use cutover_core::views::{now_ms, InstalledService};
use tokio::sync::{mpsc, oneshot};

use super::engine::{self, Effect, Event, Online};
use crate::error::{Error, Result};
use crate::store::LogLine;
use crate::Controller;

const TICK: Duration = Duration::from_millis(250);
const SEND_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Copy)]
pub enum Action {
    Pause,
    Resume,
    Abort,
}

enum Msg {
    Report {
        host: String,
        report: Box<Report>,
    },
    Started(Box<Rollout>),
    Control {
        id: u64,
        action: Action,
        reply: oneshot::Sender<Result<Rollout>>,
    },
}

/// The handle API code uses to talk to the driver task.
#[derive(Clone)]
pub struct Rollouts {
    tx: mpsc::Sender<Msg>,
}

impl Rollouts {
    pub fn new() -> (Rollouts, Inbox) {
        let (tx, rx) = mpsc::channel(1024);
        (Rollouts { tx }, Inbox(rx))
    }

    pub async fn report(&self, host: String, report: Report) {
        let _ = self
            .tx
            .send(Msg::Report {
                host,
                report: Box::new(report),
            })
            .await;
    }

    pub async fn started(&self, rollout: Rollout) {
        let _ = self.tx.send(Msg::Started(Box::new(rollout))).await;
    }

    pub async fn control(&self, id: u64, action: Action) -> Result<Rollout> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Msg::Control { id, action, reply })
            .await
            .map_err(|_| Error::Unavailable("the rollout driver has stopped".into()))?;
        rx.await
            .map_err(|_| Error::Unavailable("the rollout driver has stopped".into()))?
    }
}

pub struct Inbox(mpsc::Receiver<Msg>);

/// Drives every unfinished rollout until the process ends.
pub async fn run(c: Arc<Controller>, Inbox(mut inbox): Inbox) {
    let mut active: HashMap<u64, Rollout> = match c.store.run(|s| s.unfinished_rollouts()).await {
        Ok(rs) => rs.into_iter().map(|r| (r.id, r)).collect(),
        Err(e) => {
            tracing::error!(error = %e, "cannot load unfinished rollouts; none will progress");
            HashMap::new()
        }
    };
    for id in active.keys() {
        tracing::info!(rollout = id, "resuming rollout");
    }
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if active.is_empty() {
                    continue;
                }
                let online = online(&c);
                let ids: Vec<u64> = active.keys().copied().collect();
                for id in ids {
                    advance(&c, &mut active, id, |r| engine::step(r, Event::Tick { now: now_ms(), online: &online })).await;
                }
            }
            msg = inbox.recv() => {
                let Some(msg) = msg else { return };
                // Reports arriving within a few milliseconds of each other
                // are handled together: a wave of them costs one save per
                // rollout, not one each.
                let window = tokio::time::Instant::now() + BATCH_WINDOW;
                let mut reports = Vec::new();
                let mut next = Some(msg);
                while let Some(msg) = next.take() {
                    match msg {
                        Msg::Report { host, report } => reports.push((host, *report)),
                        other => {
                            on_reports(&c, &mut active, std::mem::take(&mut reports)).await;
                            on_other(&c, &mut active, other).await;
                        }
                    }
                    if reports.is_empty() || reports.len() >= BATCH {
                        break;
                    }
                    next = match inbox.try_recv() {
                        Ok(m) => Some(m),
                        Err(_) => tokio::time::timeout_at(window, inbox.recv()).await.ok().flatten(),
                    };
                }
                on_reports(&c, &mut active, reports).await;
            }
        }
    }
}

/// The most reports handled in one batch, and how long a batch waits for
/// more after its first.
const BATCH: usize = 4096;
const BATCH_WINDOW: Duration = Duration::from_millis(10);

async fn on_other(c: &Arc<Controller>, active: &mut HashMap<u64, Rollout>, msg: Msg) {
    match msg {
        Msg::Started(r) => {
            let id = r.id;
            active.insert(id, *r);
            let online = online(c);
            advance(c, active, id, |r| {
                engine::step(
                    r,
                    Event::Tick {
                        now: now_ms(),
                        online: &online,
                    },
                )
            })
            .await;
        }
        Msg::Report { host, report } => on_reports(c, active, vec![(host, *report)]).await,
        Msg::Control { id, action, reply } => {
            let result = control(c, active, id, action).await;
            let _ = reply.send(result);
        }
    }
}

/// Feeds each report to its rollout, ticks and saves each rollout touched
/// once, sends what they ask for, then records what the reporting hosts
/// now run (one transaction).
async fn on_reports(
    c: &Arc<Controller>,
    active: &mut HashMap<u64, Rollout>,
    reports: Vec<(String, Report)>,
) {
    if reports.is_empty() {
        return;
    }
    let now = now_ms();
    let mut changes: BTreeMap<u64, Change> = BTreeMap::new();
    for (host, report) in &reports {
        let Some(id) = rollout_of(&report.command_id) else {
            continue;
        };
        let Some(r) = active.get_mut(&id) else {
            tracing::debug!(%host, command = %report.command_id, "report for a finished rollout");
            continue;
        };
        let change = changes.entry(id).or_insert_with(|| Change::from(&*r));
        change
            .effects
            .extend(engine::step(r, Event::Report { now, host, report }));
    }
    if !changes.is_empty() {
        let online = online(c);
        for (id, mut change) in changes {
            if let Some(r) = active.get_mut(&id) {
                change.effects.extend(engine::step(
                    r,
                    Event::Tick {
                        now,
                        online: &online,
                    },
                ));
            }
            commit(c, active, id, change).await;
        }
    }
    // After the commands those reports called for are out: the inventory
    // feeds the next plan, not this rollout's decisions.
    let installed: Vec<(String, InstalledService)> = reports
        .iter()
        .map(|(h, r)| (h.clone(), r.installed.clone()))
        .collect();
    if let Err(e) = c.store.run(move |s| s.record_installed(&installed)).await {
        tracing::warn!(error = %e, "could not record the reported inventories");
    }
}

async fn control(
    c: &Arc<Controller>,
    active: &mut HashMap<u64, Rollout>,
    id: u64,
    action: Action,
) -> Result<Rollout> {
    if !active.contains_key(&id) {
        return match c.store.run(move |s| s.rollout(id)).await? {
            Some(r) => Err(Error::Conflict(format!(
                "rollout {id} already ended {}",
                r.status
            ))),
            None => Err(Error::NotFound(format!(
                "no rollout {id}; see `cutover rollout list`"
            ))),
        };
    }
    let online = online(c);
    advance(c, active, id, |r| {
        let now = now_ms();
        let mut fx = engine::step(
            r,
            match action {
                Action::Pause => Event::Pause { now },
                Action::Resume => Event::Resume { now },
                Action::Abort => Event::Abort { now },
            },
        );
        fx.extend(engine::step(
            r,
            Event::Tick {
                now,
                online: &online,
            },
        ));
        fx
    })
    .await;
    match active.get(&id) {
        Some(r) => Ok(r.clone()),
        None => c
            .store
            .run(move |s| s.rollout(id))
            .await?
            .ok_or_else(|| Error::NotFound(format!("no rollout {id}"))),
    }
}

/// One rollout's change in progress: its state before, and the effects
/// the engine asked for since.
struct Change {
    before: Rollout,
    effects: Vec<Effect>,
}

impl From<&Rollout> for Change {
    fn from(r: &Rollout) -> Change {
        Change {
            before: r.clone(),
            effects: Vec::new(),
        }
    }
}

/// Applies `step` to one rollout; persists, then carries out its effects.
async fn advance(
    c: &Arc<Controller>,
    active: &mut HashMap<u64, Rollout>,
    id: u64,
    step: impl FnOnce(&mut Rollout) -> Vec<Effect>,
) {
    let Some(r) = active.get_mut(&id) else { return };
    let mut change = Change::from(&*r);
    change.effects = step(r);
    commit(c, active, id, change).await;
}

/// Saves a changed rollout with its events, then sends its commands; on a
/// failed save the rollout goes back to its state before the change.
async fn commit(c: &Arc<Controller>, active: &mut HashMap<u64, Rollout>, id: u64, change: Change) {
    let Some(r) = active.get_mut(&id) else { return };
    if *r == change.before {
        return;
    }
    let mut lines = Vec::new();
    let mut sends = Vec::new();
    for e in change.effects {
        match e {
            Effect::Log { kind, host, detail } => {
                tracing::info!(
                    rollout = id,
                    kind,
                    host = host.as_deref().unwrap_or(""),
                    "{detail}"
                );
                lines.push(LogLine {
                    kind: kind.into(),
                    host,
                    detail,
                });
            }
            Effect::Send { host, command } => sends.push((host, command)),
        }
    }
    let snapshot = r.clone();
    let saved = c
        .store
        .run(move |s| s.save_rollout(&snapshot, &lines))
        .await;
    if let Err(e) = saved {
        // Nothing is sent that the store does not know about: go back to
        // the stored state and try again on the next tick.
        tracing::error!(rollout = id, error = %e, "could not save rollout state; retrying");
        *r = change.before;
        return;
    }
    if r.status.is_final() {
        active.remove(&id);
    }
    for (host, command) in sends {
        send(c, &host, command).await;
    }
}

async fn send(c: &Controller, host: &str, command: Command) {
    let Some(session) = c.sessions.get(host) else {
        tracing::warn!(%host, "host went offline before its command was sent; it is sent again when it is back");
        return;
    };
    let id = command.id().to_string();
    let msg = cutover_proto::v1::ControllerMessage {
        msg: Some(cutover_proto::v1::controller_message::Msg::Command(
            (&command).into(),
        )),
    };
    match tokio::time::timeout(SEND_TIMEOUT, session.tx.send(Ok(msg))).await {
        Ok(Ok(())) => tracing::debug!(%host, command = %id, "command sent"),
        _ => {
            tracing::warn!(%host, command = %id, "could not send command; it is sent again on the next session")
        }
    }
}

fn online(c: &Controller) -> Online {
    let now = now_ms();
    c.sessions
        .snapshot()
        .into_iter()
        .filter(|s| s.is_live(now))
        .map(|s| (s.host.clone(), s.id))
        .collect()
}

/// Command ids are `r<rollout>-...`.
fn rollout_of(command_id: &str) -> Option<u64> {
    command_id
        .strip_prefix('r')?
        .split('-')
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn command_ids_name_their_rollout() {
        assert_eq!(super::rollout_of("r12-api-h1"), Some(12));
        assert_eq!(super::rollout_of("r12-api-h1-rollback"), Some(12));
        assert_eq!(super::rollout_of("x"), None);
    }
}
