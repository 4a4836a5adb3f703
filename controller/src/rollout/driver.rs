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

use super::engine::{self, Effect, Event, Live, Online};
use crate::error::{Error, Result};
use crate::store::{LogLine, RolloutSave};
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
    let mut active: HashMap<u64, Live> = match c.store.run(|s| s.unfinished_rollouts()).await {
        Ok(rs) => rs.into_iter().map(|r| (r.id, Live::new(r))).collect(),
        Err(e) => {
            tracing::error!(error = %e, "cannot load unfinished rollouts; none will progress");
            HashMap::new()
        }
    };
    for id in active.keys() {
        tracing::info!(rollout = id, "resuming rollout");
    }
    let (inventories, pending) = mpsc::channel(64);
    tokio::spawn(record_inventories(c.clone(), pending));
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if active.is_empty() {
                    continue;
                }
                let online = Sessions(&c);
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
                            on_reports(&c, &mut active, &inventories, std::mem::take(&mut reports)).await;
                            on_other(&c, &mut active, &inventories, other).await;
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
                on_reports(&c, &mut active, &inventories, reports).await;
            }
        }
    }
}

/// The most reports handled in one batch, and how long a batch waits for
/// more after its first.
const BATCH: usize = 4096;
const BATCH_WINDOW: Duration = Duration::from_millis(2);

async fn on_other(
    c: &Arc<Controller>,
    active: &mut HashMap<u64, Live>,
    inventories: &Inventories,
    msg: Msg,
) {
    match msg {
        Msg::Started(r) => {
            let id = r.id;
            active.insert(id, Live::new(*r));
            let online = Sessions(c);
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
        Msg::Report { host, report } => {
            on_reports(c, active, inventories, vec![(host, *report)]).await
        }
        Msg::Control { id, action, reply } => {
            let result = control(c, active, id, action).await;
            let _ = reply.send(result);
        }
    }
}

/// What reporting hosts now run, on its way to the store.
type Inventories = mpsc::Sender<Vec<(String, InstalledService)>>;

/// Feeds each report to its rollout, ticks and saves each rollout touched
/// once, sends what they ask for, then hands what the reporting hosts now
/// run to the inventory writer.
async fn on_reports(
    c: &Arc<Controller>,
    active: &mut HashMap<u64, Live>,
    inventories: &Inventories,
    reports: Vec<(String, Report)>,
) {
    if reports.is_empty() {
        return;
    }
    let now = now_ms();
    let mut changes: BTreeMap<u64, Vec<Effect>> = BTreeMap::new();
    for (host, report) in &reports {
        let Some(id) = rollout_of(&report.command_id) else {
            continue;
        };
        let Some(r) = active.get_mut(&id) else {
            tracing::debug!(%host, command = %report.command_id, "report for a finished rollout");
            continue;
        };
        changes
            .entry(id)
            .or_default()
            .extend(engine::step(r, Event::Report { now, host, report }));
    }
    let online = Sessions(c);
    for (id, mut effects) in changes {
        if let Some(r) = active.get_mut(&id) {
            effects.extend(engine::step(
                r,
                Event::Tick {
                    now,
                    online: &online,
                },
            ));
        }
        commit(c, active, id, effects).await;
    }
    // Off the driver's path: the inventory feeds the next plan, not this
    // rollout's decisions.
    let installed = reports.into_iter().map(|(h, r)| (h, r.installed)).collect();
    let _ = inventories.send(installed).await;
}

/// Records reported inventories in arrival order, as many batches per
/// transaction as are waiting.
async fn record_inventories(
    c: Arc<Controller>,
    mut pending: mpsc::Receiver<Vec<(String, InstalledService)>>,
) {
    while let Some(mut installed) = pending.recv().await {
        while let Ok(more) = pending.try_recv() {
            installed.extend(more);
        }
        if let Err(e) = c.store.run(move |s| s.record_installed(&installed)).await {
            tracing::warn!(error = %e, "could not record the reported inventories");
        }
    }
}

async fn control(
    c: &Arc<Controller>,
    active: &mut HashMap<u64, Live>,
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
    let online = Sessions(c);
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
        Some(r) => Ok(r.rollout().clone()),
        None => c
            .store
            .run(move |s| s.rollout(id))
            .await?
            .ok_or_else(|| Error::NotFound(format!("no rollout {id}"))),
    }
}

/// Applies `step` to one rollout; persists, then carries out its effects.
async fn advance(
    c: &Arc<Controller>,
    active: &mut HashMap<u64, Live>,
    id: u64,
    step: impl FnOnce(&mut Live) -> Vec<Effect>,
) {
    let Some(r) = active.get_mut(&id) else { return };
    let effects = step(r);
    commit(c, active, id, effects).await;
}

/// Saves a changed rollout (its fields and the steps that changed) with
/// its events, then sends its commands. On a failed save the rollout is
/// read back from the store: nothing is sent that the store does not know.
async fn commit(
    c: &Arc<Controller>,
    active: &mut HashMap<u64, Live>,
    id: u64,
    effects: Vec<Effect>,
) {
    let Some(r) = active.get_mut(&id) else { return };
    let changed = r.take_changed();
    if changed.is_empty() && effects.is_empty() {
        return;
    }
    let mut lines = Vec::new();
    let mut sends = Vec::new();
    for e in effects {
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
    let saved = match RolloutSave::new(r.rollout(), &changed, lines) {
        Ok(save) => c.store.run(move |s| s.save_rollout(&save)).await,
        Err(e) => Err(e),
    };
    if let Err(e) = saved {
        tracing::error!(rollout = id, error = %e, "could not save rollout state; going back to the stored state and retrying");
        match c.store.run(move |s| s.rollout(id)).await {
            Ok(Some(stored)) => *r = Live::new(stored),
            Ok(None) | Err(_) => {
                tracing::error!(
                    rollout = id,
                    "cannot read the rollout back; it is driven again after a controller restart"
                );
                active.remove(&id);
            }
        }
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

/// The session registry as the engine asks it: a host is online while its
/// session is live.
struct Sessions<'a>(&'a Controller);

impl Online for Sessions<'_> {
    fn session(&self, host: &str) -> Option<u64> {
        self.0
            .sessions
            .get(host)
            .filter(|s| s.is_live(now_ms()))
            .map(|s| s.id)
    }
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
