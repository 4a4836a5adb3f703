//! What a session drives on its host. The real agent drives the
//! [`Installer`]; the fleet simulator (`cutover-sim`) drives a stand-in
//! whose installs finish after a delay, so thousands of real sessions can
//! share one process.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use cutover_core::rollout::{Command, Report};
use cutover_core::views::{DiagReport, InstalledService};

use cutover_core::data_migration::Status;

use crate::data_migrate::{Action, DataMigrations, Key};
use crate::diag::SessionFigures;
use crate::install::Installer;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

pub trait Runtime: Send + Sync + 'static {
    /// Brings installed services to a consistent state; runs once, before
    /// the first session.
    fn recover(&self) -> BoxFuture<'_, ()>;
    /// How often [`Runtime::upkeep`] runs; `None`: never.
    fn upkeep_every(&self) -> Option<Duration>;
    /// Supervision between commands.
    fn upkeep(&self) -> BoxFuture<'_, ()>;
    /// What every service runs, for hello and diagnostics.
    fn inventory(&self) -> BoxFuture<'_, Vec<InstalledService>>;
    /// Queues a command; its report arrives on the outbox.
    fn submit(&self, command: Command);
    /// The last report of every service, sent again on each new session.
    fn last_reports(&self) -> Vec<Report>;
    /// Answers `cutover diag`.
    fn diag(
        &self,
        uptime_s: u64,
        session: SessionFigures,
    ) -> BoxFuture<'_, Result<DiagReport, String>>;
    /// Stops the services it supervises (when the agent exits, if asked).
    fn stop_all(&self) -> BoxFuture<'_, ()>;
    /// Services whose health changed since last taken, once there are
    /// any; cancel-safe. A runtime that does not probe never has any.
    fn health_changes(&self) -> BoxFuture<'_, Vec<InstalledService>> {
        Box::pin(std::future::pending())
    }
    /// Asks a service binary about one of its data migrations
    /// (`data_migrate::DataMigrations::answer`).
    fn data_migrate<'a>(
        &'a self,
        service: &'a str,
        id: &'a str,
        _action: Action,
    ) -> BoxFuture<'a, Result<String, String>> {
        let _ = (service, id);
        Box::pin(async { Err("this host runs no data migrations".to_string()) })
    }
    /// Data migrations followed whose state changed since last taken, once
    /// there are any; cancel-safe.
    fn data_migration_updates(&self) -> BoxFuture<'_, Vec<(Key, Status)>> {
        Box::pin(std::future::pending())
    }
    /// A new session: every followed migration's state is sent again.
    fn resend_data_migrations(&self) {}
}

/// The real host: the installer and its runners.
pub struct Native {
    pub installer: Arc<Installer>,
    pub data_dir: std::path::PathBuf,
    /// `health_probe_interval`'s rounds of health probes.
    pub health_probes: Arc<crate::services::health::watch::Schedule>,
    pub data_migrations: Arc<DataMigrations>,
}

impl Runtime for Native {
    fn recover(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            self.installer.recover().await;
            self.data_migrations.recover();
        })
    }

    fn upkeep_every(&self) -> Option<Duration> {
        Some(Duration::from_millis(500))
    }

    fn upkeep(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            self.installer.upkeep().await;
            self.installer.autonomous_rollbacks().await;
            // Probes run beside supervision, never holding it up.
            if self.health_probes.start(std::time::Instant::now()) {
                let (installer, schedule) = (self.installer.clone(), self.health_probes.clone());
                tokio::spawn(async move {
                    installer.probe_health().await;
                    schedule.done();
                });
            }
        })
    }

    fn inventory(&self) -> BoxFuture<'_, Vec<InstalledService>> {
        Box::pin(self.installer.inventory())
    }

    fn submit(&self, command: Command) {
        self.installer.submit(command);
    }

    fn last_reports(&self) -> Vec<Report> {
        self.installer.last_reports()
    }

    fn diag(
        &self,
        uptime_s: u64,
        session: SessionFigures,
    ) -> BoxFuture<'_, Result<DiagReport, String>> {
        Box::pin(async move {
            let (inventory, logs) = (
                self.installer.inventory().await,
                self.installer.logs(20).await,
            );
            let data_dir = self.data_dir.clone();
            tokio::task::spawn_blocking(move || {
                crate::diag::gather(&data_dir, uptime_s, session, inventory, logs)
            })
            .await
            .map_err(|e| format!("diagnostics failed: {e}"))
        })
    }

    fn stop_all(&self) -> BoxFuture<'_, ()> {
        Box::pin(self.installer.stop_all())
    }

    fn health_changes(&self) -> BoxFuture<'_, Vec<InstalledService>> {
        Box::pin(self.installer.health.changed())
    }

    fn data_migrate<'a>(
        &'a self,
        service: &'a str,
        id: &'a str,
        action: Action,
    ) -> BoxFuture<'a, Result<String, String>> {
        Box::pin(self.data_migrations.answer(service, id, action))
    }

    fn data_migration_updates(&self) -> BoxFuture<'_, Vec<(Key, Status)>> {
        Box::pin(self.data_migrations.updates())
    }

    fn resend_data_migrations(&self) {
        self.data_migrations.resend();
    }
}
