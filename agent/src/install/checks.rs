//! Health checking of the release an install or rollback just started:
//! rounds of "is it running, does every check pass" until the health
//! window gives a verdict, cut short by a rollback or a lost controller.

use std::path::Path;
use std::time::{Duration, Instant};

use cutover_core::rollout::Evidence;

use super::stage::Kind;
use super::Installer;
use crate::install::journal::{Journal, Slot, Stage};
use crate::services::health::{FailFast, HealthWindow, Probed, Verdict};

impl Installer {
    /// Probes until healthy or the checking stage's deadline; how long
    /// the checks must pass, and whether they may be cut short, depend on
    /// the command's `kind`.
    pub(super) async fn check_health(
        &self,
        j: &Journal,
        started: Instant,
        kind: Kind,
    ) -> Result<(), Evidence> {
        let Some(slot) = j.current.clone() else {
            return Err(Evidence::new("health", "nothing installed"));
        };
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
        let dir = self.backends.for_slot(&slot).release_dir(&slot);
        loop {
            let mut probed = Vec::with_capacity(slot.config.checks.len());
            let round = self.round(&j.service, &slot, &dir, &mut probed).await;
            match window.observe_round(Instant::now(), round, &probed) {
                Verdict::Healthy => return Ok(()),
                Verdict::Failed(mut e) => {
                    e.elapsed_ms = started.elapsed().as_millis() as u64;
                    return Err(e);
                }
                Verdict::Pending => {}
            }
            if kind.checks_cut_short() && self.commands.rollback_waiting(&j.service) {
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
                && self.link.lost_for() > self.autonomous_rollback_after
            {
                let mut e = window
                    .last_failure(Instant::now())
                    .unwrap_or_else(|| Evidence::new("health", "failing"));
                e.detail = format!(
                    "{} (controller unreachable for {}s)",
                    e.detail,
                    self.link.lost_for().as_secs()
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
        &self,
        service: &str,
        slot: &Slot,
        dir: &Path,
        probed: &mut Vec<Probed>,
    ) -> Result<(), Evidence> {
        let backend = self.backends.for_slot(slot);
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
            match self.prober.probe(check, dir).await {
                Ok(()) => probed.push(Probed::Passed),
                Err(e) => {
                    probed.push(Probed::Failed);
                    return Err(e);
                }
            }
        }
        backend.own_health(service, slot).await
    }
}
