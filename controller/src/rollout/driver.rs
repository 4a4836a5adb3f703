//! Runs the rollout state machine: one task owns every unfinished rollout,
//! feeds it reports, operator actions and a clock tick, persists each new
//! state with its events *before* sending the commands it asks for, and
//! resumes whatever the store holds after a restart.
//!
//! One rollout fails alone: one whose stored config is out of bounds, or
//! whose step panics, ends Failed with the reason in its event log while
//! the others go on. A report is kept until a save has stored it: a failed
//! save goes back to the stored state, keeps the rollout's reports and
//! applies them again on the next try (with backoff), and the rollout is
//! not stepped (so no deadline fires) until then.
//!
//! The driver reaches the store and the sessions only through its
//! [`Port`] (load, save, send), so "persisted before sent" is tested
//! against a fake one; wire messages are built at the session edge.

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Duration;

use cutover_core::rollout::{Report, Rollout};
use cutover_core::views::now_ms;
use tokio::sync::{mpsc, oneshot};

use super::engine::{self, Effect, Event, Live};
use crate::error::{Error, Result};
use crate::store::LogLine;
use crate::Controller;
use held::{Held, HeldReports};
pub use port::{ControllerPort, Port};
use reports::{on_reports, record_inventories, Inventories};

const TICK: Duration = Duration::from_millis(250);
/// The first wait after a failed save or load, doubled after each further
/// failure up to [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_millis(250);
const RETRY_MAX: Duration = Duration::from_secs(8);

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
        /// The operator certificate's name, for the event.
        by: Option<String>,
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
        self.control_by(id, action, None).await
    }

    /// [`control`](Self::control) by the operator named `by`, whom the
    /// action's event names.
    pub async fn control_by(&self, id: u64, action: Action, by: Option<String>) -> Result<Rollout> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Msg::Control {
                id,
                action,
                by,
                reply,
            })
            .await
            .map_err(|_| Error::Unavailable("the rollout driver has stopped".into()))?;
        rx.await
            .map_err(|_| Error::Unavailable("the rollout driver has stopped".into()))?
    }
}

pub struct Inbox(mpsc::Receiver<Msg>);

/// One unfinished rollout as the driver holds it.
struct Driven {
    live: Live,
    /// Reports for this rollout not yet stored: applied (again, after a
    /// failed save) before its next step, cleared once a save stored them.
    /// At most one per command id the rollout sent (see [`Live::expects`]).
    held: HeldReports,
    /// Set after a failed save or read-back: the rollout is not stepped
    /// before `at`, unless the operator acts on it.
    retry: Option<Retry>,
    /// The in-memory rollout may be ahead of the store (a save failed and
    /// so did reading it back): read it back before it is stepped again.
    stale: bool,
    /// The rollout cannot be driven: it is to end Failed with this reason
    /// (kept until that is stored).
    fault: Option<String>,
}

#[derive(Debug, Clone, Copy)]
struct Retry {
    at: tokio::time::Instant,
    delay: Duration,
    failures: u32,
}

impl Retry {
    /// The wait after one more failure than `prev`.
    fn after(prev: Option<Retry>) -> Retry {
        let (delay, failures) = match prev {
            None => (RETRY_FIRST, 1),
            Some(r) => (
                r.delay.saturating_mul(2).min(RETRY_MAX),
                r.failures.saturating_add(1),
            ),
        };
        let now = tokio::time::Instant::now();
        Retry {
            at: now.checked_add(delay).unwrap_or(now),
            delay,
            failures,
        }
    }

    fn due(&self) -> bool {
        tokio::time::Instant::now() >= self.at
    }
}

impl Driven {
    fn new(rollout: Rollout) -> Driven {
        let fault = engine::check_plan(&rollout).err();
        Driven {
            live: Live::new(rollout),
            held: HeldReports::default(),
            retry: None,
            stale: false,
            fault,
        }
    }

    /// Keeps `report` until a save stores it; a later report answering
    /// the same command replaces the earlier one (an agent sends its last
    /// report again on a new session). Only reports the rollout expects
    /// are held, so there are at most two per step.
    fn hold(&mut self, host: String, report: Report, at: i64) {
        self.held.hold(host, report, at);
    }
}

type Active = HashMap<u64, Driven>;

/// Starts the driver of `c`'s rollouts, through the real [`Port`], and
/// the writer of the inventories reports carry (off the driver's path).
pub fn spawn(c: Arc<Controller>, inbox: Inbox) -> tokio::task::JoinHandle<()> {
    let (inventories, pending) = mpsc::channel(64);
    tokio::spawn(record_inventories(c.store.clone(), pending));
    tokio::spawn(run(ControllerPort(c), inventories, inbox))
}

/// Drives every unfinished rollout until the process ends.
async fn run(port: impl Port, inventories: Inventories, Inbox(mut inbox): Inbox) {
    let p = &port;
    let mut active: Active = HashMap::new();
    // Until the unfinished rollouts are loaded, loading is tried again
    // with backoff; rollouts started meanwhile are driven already.
    let mut load_retry = match load(p, &mut active).await {
        Ok(()) => None,
        Err(e) => {
            let retry = Retry::after(None);
            tracing::error!(error = %e, retry_in = ?retry.delay, "cannot load the unfinished rollouts; trying again");
            Some(retry)
        }
    };
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if let Some(r) = load_retry.filter(Retry::due) {
                    load_retry = match load(p, &mut active).await {
                        Ok(()) => None,
                        Err(e) => {
                            let retry = Retry::after(Some(r));
                            tracing::error!(error = %e, retry_in = ?retry.delay, "cannot load the unfinished rollouts; trying again");
                            Some(retry)
                        }
                    };
                }
                if active.is_empty() {
                    continue;
                }
                let ids: Vec<u64> = active.keys().copied().collect();
                for id in ids {
                    let _ = drive(p, &mut active, id, false, |r| engine::step(r, Event::Tick { now: now_ms(), online: p })).await;
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
                            on_reports(p, &mut active, &inventories, std::mem::take(&mut reports)).await;
                            on_other(p, &mut active, &inventories, other).await;
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
                on_reports(p, &mut active, &inventories, reports).await;
            }
        }
    }
}

/// The most reports handled in one batch, and how long a batch waits for
/// more after its first.
const BATCH: usize = 4096;
const BATCH_WINDOW: Duration = Duration::from_millis(2);

/// Takes on the unfinished rollouts the store holds that are not driven
/// yet. One that cannot be read is left in the store as it is and named;
/// the others are driven.
async fn load(p: &impl Port, active: &mut Active) -> Result<()> {
    let stored = p.unfinished().await?;
    for r in stored {
        match r {
            Ok(r) if !active.contains_key(&r.id) => {
                let id = r.id;
                tracing::info!(rollout = id, "resuming rollout");
                admit(p, active, r).await;
            }
            Ok(_) => {}
            Err(e) => tracing::error!(
                error = %e,
                "an unfinished rollout cannot be read from the store; it is left there as it is and not driven"
            ),
        }
    }
    Ok(())
}

/// Starts driving `r`; one the controller cannot drive ends Failed.
async fn admit(p: &impl Port, active: &mut Active, r: Rollout) {
    let id = r.id;
    active.insert(id, Driven::new(r));
    let _ = drive(p, active, id, true, |r| {
        engine::step(
            r,
            Event::Tick {
                now: now_ms(),
                online: p,
            },
        )
    })
    .await;
}

async fn on_other(p: &impl Port, active: &mut Active, inventories: &Inventories, msg: Msg) {
    match msg {
        Msg::Started(r) => admit(p, active, *r).await,
        Msg::Report { host, report } => {
            on_reports(p, active, inventories, vec![(host, *report)]).await
        }
        Msg::Control {
            id,
            action,
            by,
            reply,
        } => {
            let result = control(p, active, id, action, by.as_deref()).await;
            let _ = reply.send(result);
        }
    }
}

async fn control(
    p: &impl Port,
    active: &mut Active,
    id: u64,
    action: Action,
    by: Option<&str>,
) -> Result<Rollout> {
    if let Some(d) = active.get(&id).filter(|d| d.live.status.is_final()) {
        // Ended, its last steps in flight still followed.
        return Err(Error::Conflict(format!(
            "rollout {id} already ended {}",
            d.live.status
        )));
    }
    if !active.contains_key(&id) {
        return match p.load(id).await? {
            Some(r) => Err(Error::Conflict(format!(
                "rollout {id} already ended {}",
                r.status
            ))),
            None => Err(Error::NotFound(format!(
                "no rollout {id}; see `cutover rollout list`"
            ))),
        };
    }
    drive(p, active, id, true, |r| {
        let now = now_ms();
        let mut fx = engine::step(
            r,
            match action {
                Action::Pause => Event::Pause { now, by },
                Action::Resume => Event::Resume { now, by },
                Action::Abort => Event::Abort { now, by },
            },
        );
        fx.extend(engine::step(r, Event::Tick { now, online: p }));
        fx
    })
    .await
    .map_err(|e| {
        Error::Unavailable(format!(
            "rollout {id}: the {} was not applied, the store could not record it ({e}); try again",
            format!("{action:?}").to_lowercase()
        ))
    })?;
    match active.get(&id) {
        Some(d) => Ok(d.live.rollout().clone()),
        None => p
            .load(id)
            .await?
            .ok_or_else(|| Error::NotFound(format!("no rollout {id}"))),
    }
}

/// The text a panic carried.
fn panic_text(p: &(dyn std::any::Any + Send)) -> &str {
    p.downcast_ref::<&str>()
        .copied()
        .or_else(|| p.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("no message")
}

/// Steps one rollout: its held reports, then `step` (or, for a rollout
/// that cannot be driven, [`Event::Fault`]); saves; sends. Waits out the
/// backoff of an earlier failed save unless `now` is set (an operator's
/// action). A panic while stepping fails this rollout alone: it is read
/// back from the store and ended Failed with the panic's text. An error
/// means nothing was stored or sent.
async fn drive(
    p: &impl Port,
    active: &mut Active,
    id: u64,
    now: bool,
    step: impl FnOnce(&mut Live) -> Vec<Effect>,
) -> Result<()> {
    let mut step = Some(step);
    loop {
        let Some(d) = active.get_mut(&id) else {
            return Ok(());
        };
        if !now && d.retry.is_some_and(|r| !r.due()) {
            return Ok(());
        }
        if d.stale {
            match p.load(id).await {
                Ok(Some(stored)) => {
                    let live = Live::new(stored);
                    if live.status.is_final() && !live.following() {
                        active.remove(&id);
                        return Ok(());
                    }
                    d.live = live;
                    d.stale = false;
                }
                Ok(None) => {
                    tracing::error!(
                        rollout = id,
                        "the rollout is no longer in the store; it is not driven"
                    );
                    active.remove(&id);
                    return Err(Error::NotFound(format!("no rollout {id}")));
                }
                Err(e) => {
                    d.retry = Some(Retry::after(d.retry));
                    return Err(e);
                }
            }
        }
        let fault = d.fault.clone();
        let held = d.held.take();
        let live = &mut d.live;
        let stepped = catch_unwind(AssertUnwindSafe(|| {
            if let Some(reason) = fault.clone() {
                return engine::step(
                    live,
                    Event::Fault {
                        now: now_ms(),
                        reason,
                    },
                );
            }
            let mut fx = Vec::new();
            for h in &held {
                fx.extend(engine::step(
                    live,
                    Event::Report {
                        now: h.at,
                        host: &h.host,
                        report: &h.report,
                    },
                ));
            }
            if let Some(step) = step.take() {
                fx.extend(step(live));
            }
            fx
        }));
        match stepped {
            Ok(effects) => return commit(p, active, id, effects, held).await,
            Err(panic) if fault.is_none() => {
                let reason = format!("stepping it panicked ({})", panic_text(&*panic));
                tracing::error!(
                    rollout = id,
                    "{reason}; it ends Failed, the other rollouts go on"
                );
                // It may be half changed: start again from the store.
                d.fault = Some(reason);
                d.stale = true;
                d.retry = None;
            }
            Err(panic) => {
                tracing::error!(
                    rollout = id,
                    "ending the rollout panicked too ({}); it is no longer driven",
                    panic_text(&*panic)
                );
                active.remove(&id);
                return Err(Error::Internal(format!("rollout {id} cannot be driven")));
            }
        }
    }
}

/// Saves a changed rollout (its fields and the steps that changed) with
/// its events, then sends its commands. On a failed save nothing is sent:
/// the rollout goes back to what the store holds, `held` (the reports just
/// applied) is kept for the next try, which waits a backoff.
async fn commit(
    p: &impl Port,
    active: &mut Active,
    id: u64,
    effects: Vec<Effect>,
    held: Vec<Held>,
) -> Result<()> {
    let Some(d) = active.get_mut(&id) else {
        return Ok(());
    };
    let changed = d.live.take_changed();
    let mut lines = Vec::new();
    let mut sends = Vec::new();
    for e in effects {
        match e {
            Effect::Log { kind, host, detail } => lines.push(LogLine {
                kind: kind.into(),
                host,
                detail,
            }),
            Effect::Send { host, command } => sends.push((host, command)),
        }
    }
    let saved = if changed.is_empty() && lines.is_empty() && sends.is_empty() {
        Ok(())
    } else {
        p.save(d.live.rollout(), &changed, lines.clone()).await
    };
    if let Err(e) = saved {
        d.held.restore(held);
        let retry = Retry::after(d.retry);
        d.retry = Some(retry);
        tracing::error!(
            rollout = id,
            error = %e,
            held_reports = d.held.len(),
            failures = retry.failures,
            retry_in = ?retry.delay,
            "could not save the rollout; nothing was sent, its reports are kept and applied again when the store can be written"
        );
        // Nothing may stay in memory that the store does not know.
        match p.load(id).await {
            Ok(Some(stored)) => d.live = Live::new(stored),
            Ok(None) => {
                tracing::error!(
                    rollout = id,
                    "the rollout is no longer in the store; it is not driven"
                );
                active.remove(&id);
            }
            Err(_) => d.stale = true,
        }
        return Err(e);
    }
    for LogLine { kind, host, detail } in &lines {
        tracing::info!(
            rollout = id,
            kind = kind.as_str(),
            host = host.as_deref().unwrap_or(""),
            "{detail}"
        );
    }
    if let Some(r) = d.retry.take() {
        tracing::info!(
            rollout = id,
            failures = r.failures,
            "the rollout is saved again"
        );
    }
    // An ended rollout is still driven while steps sent before it ended
    // are in flight (an abort, a stop at another host), so that each gets
    // the outcome its host reports; one that cannot be driven is not.
    let faulted = d.fault.take().is_some();
    if d.live.status.is_final() && (faulted || !d.live.following()) {
        active.remove(&id);
    }
    for (host, command) in sends {
        p.send(&host, command).await;
    }
    Ok(())
}

mod held;
mod port;
mod reports;
#[cfg(test)]
mod tests;
