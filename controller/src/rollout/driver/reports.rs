//! Reports on their way in: each is held for the rollout that sent its
//! command (or, late, recorded for a finished one); a report answering no
//! command a rollout knows changes nothing and is logged once, shortened.
//! What reporting hosts run goes to the store off the driver's path.

use std::collections::BTreeSet;
use std::sync::Arc;

use cutover_core::rollout::Report;
use cutover_core::views::{now_ms, InstalledService};
use tokio::sync::mpsc;

use super::{drive, engine, rollout_of, Active, Event, Sessions};
use crate::error::Result;
use crate::store::Store;
use crate::Controller;

/// How many bytes of a report's command id a log line shows.
pub(super) const LOGGED_ID: usize = 80;

/// What one reporting host now runs, on its way to the store. `late_of`
/// names the finished rollout a late report answered; it is recorded only
/// if the store knows that rollout moved the service.
pub(super) struct Inventory {
    pub(super) host: String,
    pub(super) installed: InstalledService,
    pub(super) late_of: Option<u64>,
}

pub(super) type Inventories = mpsc::Sender<Vec<Inventory>>;

/// `id`, a peer's value, as a log line shows it: quoted, its control
/// characters escaped, cut to [`LOGGED_ID`] bytes (see
/// [`cutover_core::text::shown`]).
pub(super) fn shown(id: &str) -> String {
    cutover_core::text::shown(id, LOGGED_ID)
}

/// Holds each report for its rollout, steps (ticks) and saves each
/// rollout touched once, sends what they ask for, then hands what the
/// reporting hosts now run to the inventory writer. A report no rollout
/// sent the command of changes nothing and is logged once, shortened.
pub(super) async fn on_reports(
    c: &Arc<Controller>,
    active: &mut Active,
    inventories: &Inventories,
    reports: Vec<(String, Report)>,
) {
    if reports.is_empty() {
        return;
    }
    let now = now_ms();
    let mut touched = BTreeSet::new();
    let mut installed = Vec::new();
    let mut unknown: Option<(String, String)> = None;
    let mut unknowns = 0usize;
    for (host, report) in reports {
        let id = rollout_of(&report.command_id);
        match id.and_then(|id| active.get_mut(&id).map(|d| (id, d))) {
            Some((id, d)) if d.live.expects(&host, &report) => {
                installed.push(Inventory {
                    host: host.clone(),
                    installed: report.installed.clone(),
                    late_of: None,
                });
                d.hold(host, report, now);
                touched.insert(id);
            }
            // A late answer to a rollout that has ended: what the host
            // runs is still news, if the command id is the one this
            // controller gave that host for that service.
            None if id.is_some_and(|id| late_id_fits(id, &host, &report)) => {
                tracing::debug!(%host, command = %shown(&report.command_id), "report for a finished rollout");
                installed.push(Inventory {
                    host,
                    installed: report.installed,
                    late_of: id,
                });
            }
            _ => {
                unknowns += 1;
                unknown.get_or_insert((host, report.command_id));
            }
        }
    }
    if let Some((host, command)) = unknown {
        tracing::warn!(
            %host,
            command = %shown(&command),
            others = unknowns - 1,
            "ignored report(s) answering no command of an unfinished rollout"
        );
    }
    let online = Sessions(c);
    for id in touched {
        let _ = drive(c, active, id, false, |r| {
            engine::step(
                r,
                Event::Tick {
                    now,
                    online: &online,
                },
            )
        })
        .await;
    }
    // Off the driver's path: the inventory feeds the next plan, not this
    // rollout's decisions.
    if !installed.is_empty() {
        let _ = inventories.send(installed).await;
    }
}

/// Whether `report` from `host` carries the command id rollout `id` gave
/// that host for the report's service.
pub(super) fn late_id_fits(id: u64, host: &str, report: &Report) -> bool {
    let install = format!("r{id}-{}-{host}", report.service);
    report.command_id == install || report.command_id == engine::rollback_id(&install)
}

/// Records reported inventories in arrival order, as many batches per
/// transaction as are waiting.
pub(super) async fn record_inventories(
    c: Arc<Controller>,
    mut pending: mpsc::Receiver<Vec<Inventory>>,
) {
    while let Some(mut batch) = pending.recv().await {
        while let Ok(more) = pending.try_recv() {
            batch.extend(more);
        }
        let recorded = c
            .store
            .run(move |s| {
                let installed = known_inventories(s, batch)?;
                s.record_installed(&installed)
            })
            .await;
        if let Err(e) = recorded {
            tracing::warn!(error = %e, "could not record the reported inventories");
        }
    }
}

/// The inventories of `batch` worth recording: every one from a report an
/// unfinished rollout expected, and a late one only if the store has the
/// rollout it names moving that service.
pub(super) fn known_inventories(
    s: &Store,
    batch: Vec<Inventory>,
) -> Result<Vec<(String, InstalledService)>> {
    let mut installed = Vec::with_capacity(batch.len());
    for i in batch {
        if let Some(id) = i.late_of {
            if !s.rollout_moves(id, &i.installed.name)? {
                tracing::warn!(host = %i.host, rollout = id, "ignored a report for a rollout the store does not know");
                continue;
            }
        }
        installed.push((i.host, i.installed));
    }
    Ok(installed)
}
