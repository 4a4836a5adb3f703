//! The tarball backend: a release is a verified tarball unpacked into
//! `releases/<sha256>/` (fetched, hashed and unpacked in one pass by
//! [`pipeline`]), a service's release is its `current` link, and its
//! processes are run by the process or systemd runner. The runners are
//! synchronous and may block (a stop waits out the grace period), so every
//! call to one goes through [`Tarball::blocking`], on a blocking thread.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use cutover_core::fleet::ServiceConfig;
use cutover_core::fsutil;
use cutover_core::rollout::{Evidence, InstallCommand};
use cutover_core::views::ServiceLog;
use cutover_core::Sha256Digest;

use super::Backend;
use crate::install::extract::Limits;
use crate::install::fetch::Source;
use crate::install::journal::{self, Slot};
use crate::install::pipeline;
use crate::install::releases::Releases;
use crate::install::staging::Staging;
use crate::runtime::BoxFuture;
use crate::services::runner::{RunStatus, Runner, Runners};

pub struct Tarball {
    releases: Arc<Releases>,
    limits: Limits,
    runners: Runners,
    source: Arc<dyn Source>,
}

impl Tarball {
    pub fn new(
        releases: Arc<Releases>,
        limits: Limits,
        runners: Runners,
        source: Arc<dyn Source>,
    ) -> Tarball {
        Tarball {
            releases,
            limits,
            runners,
            source,
        }
    }

    fn data_dir(&self) -> &Path {
        self.releases.data_dir()
    }

    /// The runner `config` asks for; a container service has none here.
    fn runner(&self, service: &str, config: &ServiceConfig) -> Result<Arc<dyn Runner>, Evidence> {
        self.runners.for_config(config).cloned().ok_or_else(|| {
            Evidence::new(
                "config",
                format!(
                    "service {service} runs in a container; no process or systemd runner runs it"
                ),
            )
        })
    }

    /// Runs `f` with `config`'s runner on a blocking thread: the one place
    /// a runner is called.
    async fn blocking<T: Send + 'static>(
        &self,
        service: &str,
        config: &ServiceConfig,
        f: impl FnOnce(&dyn Runner, &str, &ServiceConfig) -> T + Send + 'static,
    ) -> Result<T, Evidence> {
        let runner = self.runner(service, config)?;
        let (owned, config) = (service.to_string(), config.clone());
        tokio::task::spawn_blocking(move || f(runner.as_ref(), &owned, &config))
            .await
            .map_err(|e| {
                Evidence::new(
                    "runner",
                    format!("service {service}: the runner stopped: {e}"),
                )
            })
    }
}

impl Backend for Tarball {
    /// Makes `releases/<sha256>/` exist: from the cache, or fetched,
    /// verified and unpacked in one pass.
    fn prepare<'a>(&'a self, c: &'a InstallCommand) -> BoxFuture<'a, Result<u64, Evidence>> {
        Box::pin(async move {
            let data_dir = self.data_dir();
            let dest = journal::release_dir(data_dir, &c.sha256);
            // One installer per digest makes the release (and owns its
            // `.part` file); another service pinning the same bytes waits
            // and then finds it whole.
            let lock = self.releases.digest_lock(&c.sha256);
            let _making = lock.lock().await;
            if dest.is_dir() {
                return Ok(0);
            }
            let releases = journal::releases_dir(data_dir);
            std::fs::create_dir_all(&releases)
                .map_err(|e| Evidence::new("unpack", format!("{}: {e}", releases.display())))?;
            let staging = Staging::new(self.releases.live(), &releases, &c.sha256);
            let (fetched, unpacked) = pipeline::fetch_and_unpack(
                self.source.as_ref(),
                data_dir,
                &c.sha256,
                c.size,
                staging.path(),
                self.limits,
            )
            .await?;
            tracing::info!(service = %c.service, files = unpacked.files, bytes = unpacked.bytes, "unpacked");
            // Verified and on disk: only now does the release appear under
            // its digest, and the rename is made durable before anything
            // points at it.
            match pipeline::publish(staging.path(), &dest) {
                Ok(pipeline::Published::Renamed) => {}
                Ok(pipeline::Published::AlreadyThere) => {
                    tracing::info!(service = %c.service, release = %dest.display(), "another installer made this release first; using it");
                }
                Err(e) => return Err(Evidence::new("unpack", format!("{}: {e}", dest.display()))),
            }
            fsutil::sync_dir(&releases)
                .map_err(|e| Evidence::new("unpack", format!("{}: {e}", releases.display())))?;
            Ok(fetched.transferred)
        })
    }

    /// A service whose journal is gone while its `current` link still
    /// points at a release on disk: that release is taken as the one
    /// running (known by its digest only; release and version unknown, its
    /// config the install's), so the install records it as `previous`, GC
    /// keeps it and a failed install rolls back to it.
    fn adopt_unjournalled(&self, service: &str, config: &ServiceConfig) -> Option<Slot> {
        let data_dir = self.data_dir();
        let sha = journal::read_current(data_dir, service)?;
        let is_release = std::fs::symlink_metadata(journal::release_dir(data_dir, &sha))
            .is_ok_and(|m| m.is_dir());
        let identity = journal::linked_identity(Some(sha)).filter(|_| is_release)?;
        tracing::warn!(%service, release = %sha, "no journal: the release `current` points at is taken as the running one, kept and gone back to if this install fails");
        Some(Slot {
            identity,
            sha256: sha,
            config: config.clone(),
        })
    }

    /// Stops the old release and flips `current` to the new one with one
    /// rename.
    fn switch<'a>(
        &'a self,
        service: &'a str,
        old: Option<&'a Slot>,
        new: &'a Slot,
        _back: bool,
    ) -> BoxFuture<'a, Result<(), Evidence>> {
        Box::pin(async move {
            let data_dir = self.data_dir();
            if old.is_none() && journal::read_current(data_dir, service).is_some() {
                // A `current` link the journal does not know: what ran
                // before the journal was lost. Its process (found by its
                // pid file) goes first, or the new one could not take its
                // port.
                let stopped = self
                    .blocking(service, &new.config, |r, s, c| r.stop(s, c))
                    .await;
                if let Err(e) = flatten(stopped) {
                    tracing::warn!(%service, error = %e, "stopping what ran without a journal failed; swapping anyway");
                }
            }
            if let Some(old) = old {
                // Stopping blocks up to the grace period.
                let stopped = self
                    .blocking(service, &old.config, |r, s, c| r.stop(s, c))
                    .await;
                if let Err(e) = flatten(stopped) {
                    tracing::warn!(%service, error = %e, "stopping the old release failed; swapping anyway");
                }
            }
            journal::switch_current(data_dir, service, &new.sha256)
                .map_err(|e| Evidence::new("swap", e.to_string()))
        })
    }

    fn start<'a>(
        &'a self,
        service: &'a str,
        slot: &'a Slot,
    ) -> BoxFuture<'a, Result<(), Evidence>> {
        Box::pin(async move {
            let dir = self.release_dir(slot);
            self.blocking(service, &slot.config, move |r, s, c| r.start(s, &dir, c))
                .await?
                .map_err(|e| Evidence::new("start", e.to_string()))
        })
    }

    fn ensure_running<'a>(
        &'a self,
        service: &'a str,
        slot: &'a Slot,
    ) -> BoxFuture<'a, Result<(), Evidence>> {
        Box::pin(async move {
            let dir = self.release_dir(slot);
            self.blocking(service, &slot.config, move |r, s, c| {
                if r.adopt(s, &dir, c) {
                    return Ok(());
                }
                // Whatever still runs from before (a half-done swap) goes
                // first.
                let _ = r.stop(s, c);
                r.start(s, &dir, c)
            })
            .await?
            .map_err(|e| Evidence::new("start", e.to_string()))
        })
    }

    /// Where the `current` link points.
    fn linked<'a>(
        &'a self,
        service: &'a str,
        _config: Option<&'a ServiceConfig>,
    ) -> BoxFuture<'a, Option<Sha256Digest>> {
        Box::pin(async move { journal::read_current(self.data_dir(), service) })
    }

    fn status<'a>(&'a self, service: &'a str, slot: &'a Slot) -> BoxFuture<'a, RunStatus> {
        Box::pin(async move {
            self.blocking(service, &slot.config, |r, s, c| r.status(s, c))
                .await
                .unwrap_or_else(|e| RunStatus {
                    last_exit: Some(e.detail),
                    ..RunStatus::default()
                })
        })
    }

    fn release_dir(&self, slot: &Slot) -> PathBuf {
        journal::release_dir(self.data_dir(), &slot.sha256)
    }

    fn log_tail<'a>(
        &'a self,
        service: &'a str,
        slot: &'a Slot,
        lines: usize,
    ) -> BoxFuture<'a, Vec<String>> {
        Box::pin(async move {
            self.blocking(service, &slot.config, move |r, s, c| {
                r.log_tail(s, c, lines)
            })
            .await
            .unwrap_or_else(|e| vec![e.detail])
        })
    }

    fn log<'a>(
        &'a self,
        service: &'a str,
        slot: &'a Slot,
        lines: usize,
    ) -> BoxFuture<'a, ServiceLog> {
        Box::pin(async move {
            let read = self
                .blocking(service, &slot.config, move |r, s, c| {
                    (r.status(s, c), r.log_tail(s, c, lines))
                })
                .await;
            let (st, lines) = read.unwrap_or_else(|e| (RunStatus::default(), vec![e.detail]));
            ServiceLog {
                service: service.to_string(),
                pid: st.pid,
                restarts: st.restarts,
                last_exit: st.last_exit,
                lines,
                detail: None,
            }
        })
    }

    fn stop<'a>(&'a self, service: &'a str, slot: &'a Slot) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            flatten(
                self.blocking(service, &slot.config, |r, s, c| r.stop(s, c))
                    .await,
            )
        })
    }

    /// Restarts crashed processes and rotates their logs.
    fn upkeep(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let process = self.runners.process.clone();
            let _ = tokio::task::spawn_blocking(move || process.supervise()).await;
        })
    }
}

/// A runner's result, or why the runner could not be called, as text.
fn flatten(r: Result<crate::Result<()>, Evidence>) -> Result<(), String> {
    match r {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(e) => Err(e.detail),
    }
}
