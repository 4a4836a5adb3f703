//! What the install lifecycle needs from whatever runs a service's
//! releases: the [`Backend`] trait, with a tarball implementation
//! (`tarball.rs`: fetch, pipeline, `current` link, runners) and a container
//! one (`container.rs`: the Docker engine). [`Backends`] is the one place
//! that picks between them, by the service's `runner`.

use std::path::PathBuf;
use std::sync::Arc;

use cutover_core::fleet::{RunnerKind, ServiceConfig};
use cutover_core::rollout::{Evidence, InstallCommand};
use cutover_core::views::ServiceLog;
use cutover_core::Sha256Digest;

use crate::install::extract::Limits;
use crate::install::fetch::Source;
use crate::install::journal::Slot;
use crate::install::releases::Releases;
use crate::runtime::BoxFuture;
use crate::services::runner::{RunStatus, Runners};

pub mod container;
pub mod tarball;

pub use container::Container;
pub use tarball::Tarball;

/// One way of running releases. Every call is about one service, and the
/// lifecycle holds that service's lock around it.
pub trait Backend: Send + Sync {
    /// Makes the release `c` pins available on this host, verified;
    /// returns the bytes fetched.
    fn prepare<'a>(&'a self, c: &'a InstallCommand) -> BoxFuture<'a, Result<u64, Evidence>>;

    /// For a service without a journal: the release that runs, told from
    /// what is on disk, if it can be.
    fn adopt_unjournalled(&self, _service: &str, _config: &ServiceConfig) -> Option<Slot> {
        None
    }

    /// Stops what runs (`old`, or when `old` is `None` whatever runs
    /// without a journal) and makes `new` the service's release; `back`:
    /// `new` is the previous release, kept for going back to.
    fn switch<'a>(
        &'a self,
        service: &'a str,
        old: Option<&'a Slot>,
        new: &'a Slot,
        back: bool,
    ) -> BoxFuture<'a, Result<(), Evidence>>;

    /// Starts `slot` once the switch to it is journalled.
    fn start<'a>(&'a self, service: &'a str, slot: &'a Slot)
        -> BoxFuture<'a, Result<(), Evidence>>;

    /// Makes `slot` run, adopting what already runs of it.
    fn ensure_running<'a>(
        &'a self,
        service: &'a str,
        slot: &'a Slot,
    ) -> BoxFuture<'a, Result<(), Evidence>>;

    /// Which release the service is really on (after a crash the journal
    /// may be a step behind).
    /// `config` is `None` when neither the journal nor an operation in
    /// progress names one: then only a `current` link can say.
    fn linked<'a>(
        &'a self,
        service: &'a str,
        config: Option<&'a ServiceConfig>,
    ) -> BoxFuture<'a, Option<Sha256Digest>>;

    fn status<'a>(&'a self, service: &'a str, slot: &'a Slot) -> BoxFuture<'a, RunStatus>;

    /// The backend's own word on health beside the checks (a container
    /// image's HEALTHCHECK); `Ok` when it has none.
    fn own_health<'a>(
        &'a self,
        _service: &'a str,
        _slot: &'a Slot,
    ) -> BoxFuture<'a, Result<(), Evidence>> {
        Box::pin(async { Ok(()) })
    }

    /// Where a release's files are and exec checks run.
    fn release_dir(&self, slot: &Slot) -> PathBuf;

    /// The last lines the service wrote.
    fn log_tail<'a>(
        &'a self,
        service: &'a str,
        slot: &'a Slot,
        lines: usize,
    ) -> BoxFuture<'a, Vec<String>>;

    /// `cutover diag`'s entry for the service.
    fn log<'a>(
        &'a self,
        service: &'a str,
        slot: &'a Slot,
        lines: usize,
    ) -> BoxFuture<'a, ServiceLog>;

    /// Stops the service (the agent's `stop_services_on_exit`).
    fn stop<'a>(&'a self, service: &'a str, slot: &'a Slot) -> BoxFuture<'a, Result<(), String>>;

    /// Supervision between commands (restart what crashed, rotate logs).
    fn upkeep(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}

/// The backends of one host, and which one runs a service.
#[derive(Clone)]
pub struct Backends {
    pub tarball: Arc<dyn Backend>,
    pub container: Arc<dyn Backend>,
}

impl Backends {
    /// The real host's: tarballs run by `runners`, containers by the
    /// Docker engine, both fetching from `source`.
    pub fn native(
        releases: &Arc<Releases>,
        limits: Limits,
        runners: Runners,
        source: Arc<dyn Source>,
    ) -> Backends {
        Backends {
            tarball: Arc::new(Tarball::new(
                releases.clone(),
                limits,
                runners,
                source.clone(),
            )),
            container: Arc::new(Container::new(releases.clone(), source)),
        }
    }

    /// The backend a service's config asks for: the Docker engine for
    /// `runner = "docker"`, the tarball backend (process or systemd) for
    /// the rest.
    pub fn for_config(&self, config: &ServiceConfig) -> &dyn Backend {
        match config.runner {
            RunnerKind::Docker => self.container.as_ref(),
            RunnerKind::Process | RunnerKind::Systemd => self.tarball.as_ref(),
        }
    }

    pub fn for_slot(&self, slot: &Slot) -> &dyn Backend {
        self.for_config(&slot.config)
    }

    /// Which release the service is really on; with no config, only the
    /// tarball backend's `current` link can say.
    pub async fn linked(
        &self,
        service: &str,
        config: Option<&ServiceConfig>,
    ) -> Option<Sha256Digest> {
        match config {
            Some(c) => self.for_config(c).linked(service, Some(c)).await,
            None => self.tarball.linked(service, None).await,
        }
    }

    /// Upkeep of every backend.
    pub async fn upkeep(&self) {
        self.tarball.upkeep().await;
        self.container.upkeep().await;
    }
}
