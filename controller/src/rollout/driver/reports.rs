//! Reports on their way in: each is held for the rollout that sent its
//! command (or, late, recorded for a finished one); a report answering no
//! command a rollout knows changes nothing and is logged once, shortened.
//! What reporting hosts run goes to the store off the driver's path.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use cutover_core::command_id::CommandId;
use cutover_core::rollout::Report;
use cutover_core::views::{now_ms, InstalledService};
use tokio::sync::mpsc;

use super::{drive, engine, Active, Event, Port};
use crate::error::Result;
use crate::store::Store;

/// How many bytes of a report's command id a log line shows.
pub(super) const LOGGED_ID: usize = 80;

/// What one reporting host now runs, on its way to the store. `late_of`
/// names the finished rollout a late report answered; it is recorded only
/// if the store knows that rollout moved the service.
#[derive(Clone)]
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
    p: &impl Port,
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
        let id = CommandId::rollout_of(&report.command_id);
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
    for id in touched {
        let _ = drive(p, active, id, false, |r| {
            engine::step(r, Event::Tick { now, online: p })
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
    CommandId::install(id, &report.service, host).answered_by(&report.command_id)
}

/// Records reported inventories in arrival order, as many batches per
/// transaction as are waiting. A batch the store refuses (locked, full) is
/// kept and retried with backoff, never dropped; what arrives meanwhile is
/// merged into it, the latest inventory of each host's service winning, so
/// what is held stays bounded by the fleet's size and the driver is never
/// held up by a full channel.
pub(super) async fn record_inventories(store: Store, pending: mpsc::Receiver<Vec<Inventory>>) {
    record_into(store, pending, RETRY_FIRST, RETRY_MAX).await
}

/// The first wait before a failed batch is retried; it doubles up to
/// [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// Inventories not yet recorded, one per host and service.
type Held = BTreeMap<(String, String), Inventory>;

fn hold(held: &mut Held, batch: Vec<Inventory>) {
    for i in batch {
        held.insert((i.host.clone(), i.installed.name.clone()), i);
    }
}

pub(super) async fn record_into(
    store: Store,
    mut pending: mpsc::Receiver<Vec<Inventory>>,
    first: Duration,
    max: Duration,
) {
    let mut held = Held::new();
    let mut retry = first;
    let mut failures = 0u64;
    loop {
        if held.is_empty() {
            match pending.recv().await {
                Some(batch) => hold(&mut held, batch),
                None => return,
            }
        }
        while let Ok(more) = pending.try_recv() {
            hold(&mut held, more);
        }
        let batch: Vec<Inventory> = held.values().cloned().collect();
        let recorded = store
            .run(move |s| {
                let installed = known_inventories(s, batch)?;
                s.record_installed(&installed)
            })
            .await;
        match recorded {
            Ok(()) => {
                if failures > 0 {
                    tracing::info!(
                        failures,
                        "recorded the reported inventories that were waiting"
                    );
                }
                held.clear();
                retry = first;
                failures = 0;
                continue;
            }
            Err(e) => {
                failures += 1;
                tracing::warn!(error = %e, waiting = held.len(), failures, "could not record the reported inventories; kept, retrying in {retry:?}");
            }
        }
        // Keep taking what arrives while waiting, so senders never block.
        let until = tokio::time::Instant::now() + retry;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(until) => break,
                more = pending.recv() => match more {
                    Some(batch) => hold(&mut held, batch),
                    // No more will come: keep retrying what is held.
                    None => {
                        tokio::time::sleep_until(until).await;
                        break;
                    }
                },
            }
        }
        retry = (retry * 2).min(max);
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// Log lines, as the writer's warnings would reach an operator.
    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Lines {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Lines {
        fn text(&self) -> String {
            String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
        }
    }

    fn inventory(state: &str) -> Inventory {
        Inventory {
            host: "edge-1".into(),
            installed: InstalledService {
                name: "api".into(),
                current: None,
                previous: None,
                state: state.into(),
                health: Default::default(),
            },
            late_of: None,
        }
    }

    fn stored_state(store: &Store) -> Option<String> {
        let hosts = store.hosts().unwrap();
        let host = hosts.iter().find(|h| h.name == "edge-1")?;
        host.services
            .iter()
            .find(|s| s.name == "api")
            .map(|s| s.state.clone())
    }

    async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
        for _ in 0..6000 {
            if done() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("never: {what}");
    }

    // One thread: the writer task logs through this test's subscriber.
    #[tokio::test(flavor = "current_thread")]
    async fn inventories_the_store_refused_are_kept_and_recorded_once_it_takes_writes_latest_winning(
    ) {
        let lines = Lines::default();
        let writer = lines.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        let _guard = tracing::subscriber::set_default(subscriber);

        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("state.db")).unwrap();
        store
            .create_token("t", "edge-1", now_ms() + 60_000)
            .unwrap();
        store
            .enroll("t", |_| Ok(((), "serial".to_string(), now_ms() + 60_000)))
            .unwrap()
            .unwrap();
        store
            .with(|c| {
                c.execute_batch(
                    "CREATE TRIGGER full BEFORE UPDATE ON hosts BEGIN SELECT RAISE(FAIL, 'disk full'); END;",
                )?;
                Ok(())
            })
            .unwrap();
        let (tx, rx) = mpsc::channel(1);
        let writer = tokio::spawn(record_into(
            store.clone(),
            rx,
            Duration::from_millis(10),
            Duration::from_millis(50),
        ));
        tx.send(vec![inventory("starting")]).await.unwrap();
        eventually("a refused batch is logged as kept", || {
            lines.text().contains("kept, retrying")
        })
        .await;
        // More arrive while the store refuses: the channel never stays
        // full, and the newer inventory of the same service replaces the
        // older one.
        for _ in 0..10 {
            tx.send(vec![inventory("starting")]).await.unwrap();
        }
        tx.send(vec![inventory("running")]).await.unwrap();
        let failures_before = lines.text().matches("kept, retrying").count();
        eventually("another retry fails while the store refuses", || {
            lines.text().matches("kept, retrying").count() > failures_before
        })
        .await;
        assert_eq!(stored_state(&store), None);
        assert!(lines.text().contains("disk full"), "{}", lines.text());

        store
            .with(|c| {
                c.execute_batch("DROP TRIGGER full;")?;
                Ok(())
            })
            .unwrap();
        eventually("the kept inventory is recorded", || {
            stored_state(&store).as_deref() == Some("running")
        })
        .await;
        // Nothing is held any more: closing the channel ends the writer.
        drop(tx);
        writer.await.unwrap();
        assert_eq!(stored_state(&store).as_deref(), Some("running"));
    }
}
