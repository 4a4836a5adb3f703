//! Health checking, as free functions over the [`Backend`] and [`Prober`]
//! they use: [`check_health`], the rounds of "is it running, does every
//! check pass" after an install or rollback until the health window gives
//! a verdict (or [`CutShort`] stops them), and [`round`], one such round,
//! which the probes between commands share.

use std::path::Path;
use std::time::{Duration, Instant};

use cutover_core::rollout::Evidence;

use super::backend::Backend;
use super::stage::Kind;
use crate::install::journal::{Slot, Stage};
use crate::services::health::{FailFast, HealthWindow, Probed, Prober, Verdict};

/// What may stop a command's checks before the health window's verdict,
/// asked after every round that gave none (only for a kind whose checks
/// may be cut short).
pub(super) struct CutShort<'a> {
    /// Whether the controller has asked for a rollback of the service.
    pub rollback_waiting: &'a (dyn Fn() -> bool + Sync),
    /// How long the controller has been unreachable.
    pub lost_for: &'a (dyn Fn() -> Duration + Sync),
    /// How long it may be unreachable before failing checks stop.
    pub lost_limit: Duration,
}

/// Probes `slot`, the release `service` is on, until healthy or the
/// checking stage's deadline; how long the checks must pass, and whether
/// they may be cut short, depend on the command's `kind`.
pub(super) async fn check_health(
    backend: &dyn Backend,
    prober: &dyn Prober,
    service: &str,
    slot: &Slot,
    kind: Kind,
    started: Instant,
    cut_short: &CutShort<'_>,
) -> Result<(), Evidence> {
    let min = kind.min_healthy(&slot.config);
    let deadline = Stage::Checking
        .timeout(&slot.config)
        .unwrap_or(slot.config.healthy_deadline);
    let mut window = HealthWindow::new(Instant::now(), min, deadline)
        .with_fail_fast(FailFast::new(&slot.config.checks));
    let interval = slot
        .config
        .checks
        .iter()
        .map(|c| c.interval)
        .min()
        .unwrap_or(Duration::from_millis(500));
    let dir = backend.release_dir(slot);
    loop {
        let mut probed = Vec::with_capacity(slot.config.checks.len());
        let round = round(backend, prober, service, slot, &dir, &mut probed).await;
        match window.observe_round(Instant::now(), round, &probed) {
            Verdict::Healthy => return Ok(()),
            Verdict::Failed(mut e) => {
                e.elapsed_ms = started.elapsed().as_millis() as u64;
                return Err(e);
            }
            Verdict::Pending => {}
        }
        if kind.checks_cut_short() && (cut_short.rollback_waiting)() {
            let mut e = window
                .last_failure(Instant::now())
                .unwrap_or_else(|| Evidence::new("health", "not yet healthy"));
            e.detail = format!(
                "{} (checks stopped: the controller asked for a rollback)",
                e.detail
            );
            return Err(e);
        }
        if kind.checks_cut_short()
            && window.failing()
            && (cut_short.lost_for)() > cut_short.lost_limit
        {
            let mut e = window
                .last_failure(Instant::now())
                .unwrap_or_else(|| Evidence::new("health", "failing"));
            e.detail = format!(
                "{} (controller unreachable for {}s)",
                e.detail,
                (cut_short.lost_for)().as_secs()
            );
            return Err(e);
        }
        tokio::time::sleep(interval).await;
    }
}

/// One round: the service must run, then every check must pass, in
/// order; `probed` gets what it did with each check (a service that
/// is not running fails them all, a failed check skips the rest).
pub(super) async fn round(
    backend: &dyn Backend,
    prober: &dyn Prober,
    service: &str,
    slot: &Slot,
    dir: &Path,
    probed: &mut Vec<Probed>,
) -> Result<(), Evidence> {
    let st = backend.status(service, slot).await;
    if !st.running {
        probed.extend(slot.config.checks.iter().map(|_| Probed::Failed));
        let how = st.last_exit.unwrap_or_else(|| "not running".into());
        let mut e = Evidence::new(
            "start",
            format!("service is not running: {how} (restarts: {})", st.restarts),
        );
        e.output = backend.log_tail(service, slot, 5).await.join("\n");
        return Err(e);
    }
    for check in &slot.config.checks {
        match prober.probe(check, dir).await {
            Ok(()) => probed.push(Probed::Passed),
            Err(e) => {
                probed.push(Probed::Failed);
                return Err(e);
            }
        }
    }
    backend.own_health(service, slot).await
}
