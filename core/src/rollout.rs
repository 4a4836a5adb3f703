//! Plans, rollouts and the commands and reports that move them, as domain
//! types: the controller's engine advances them, the store keeps them, the
//! CLI prints them and `cutover-proto` carries the commands and reports.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::fleet::ServiceConfig;
use crate::views::{ContentIdentity, InstalledService};
use crate::Sha256Digest;

/// What the controller asks one agent to do. Ids are stable, so sending a
/// command twice does it once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Command {
    Install(Box<InstallCommand>),
    Rollback(RollbackCommand),
}

impl Command {
    pub fn id(&self) -> &str {
        match self {
            Command::Install(c) => &c.command_id,
            Command::Rollback(c) => &c.command_id,
        }
    }

    pub fn service(&self) -> &str {
        match self {
            Command::Install(c) => &c.service,
            Command::Rollback(c) => &c.service,
        }
    }
}

/// Install `target`. For a native service `sha256` and `size` pin its
/// tarball; for a container service they pin the image tarball (size 0
/// when the image comes from a registry) and `image` says which image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstallCommand {
    pub command_id: String,
    pub service: String,
    pub target: ContentIdentity,
    pub sha256: Sha256Digest,
    pub size: u64,
    pub config: ServiceConfig,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<ImageTarget>,
}

/// A container image pinned by ID, with where to pull it from if it is not
/// delivered as a tarball.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageTarget {
    pub id: Sha256Digest,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
}

/// Go back to the previous release if `from` is what runs now; if the host
/// never moved to `from`, there is nothing to do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RollbackCommand {
    pub command_id: String,
    pub service: String,
    pub from: Sha256Digest,
}

/// Why a step failed: the gate that said no and what it saw.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Evidence {
    /// `fetch`, `verify`, `unpack`, `start`, `health`, `deadline`,
    /// `disconnected`, `rollback`.
    pub gate: String,
    pub detail: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_code: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// The start of the response body or command output.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub output: String,
    /// Time from the start of the step to the verdict.
    pub elapsed_ms: u64,
    /// Health probes run before the verdict.
    pub probes: u32,
}

/// An agent's answer to one command.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub command_id: String,
    pub service: String,
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evidence: Option<Evidence>,
    /// What the service runs after the command.
    pub installed: InstalledService,
    /// The agent lost the controller while the install failed and went
    /// back by itself.
    pub auto_rolled_back: bool,
    pub fetched_bytes: u64,
    pub restarted: bool,
    pub duration_ms: u64,
}

/// The steps a rollout would take, before it is started.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    /// The release every host goes to, or [`LAST_KNOWN_GOOD`] (`null` in
    /// JSON) when each host goes to its own.
    #[serde(with = "codes::release")]
    pub release: String,
    /// Services that move, in dependency order.
    pub services: Vec<ServicePlan>,
    /// Services of the release that move on no host.
    pub carried: Vec<Carried>,
    /// Offline hosts the operator allowed; their steps wait for them.
    pub offline: Vec<String>,
    /// Hosts a manual rollback does not move (no release to go back to).
    #[serde(default)]
    pub skipped: Vec<SkippedHost>,
    /// The release's migrations of the databases its moving services own
    /// (absent when there are none), shown next to the service steps.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub migrations: Vec<crate::migration_views::PlanMigrations>,
    /// The data migrations the release's contracts and this upgrade wait
    /// for, with their states (absent when there are none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub data_migrations: Vec<crate::data_migration::Required>,
}

impl Plan {
    /// What the plan would do, as a digest: per service its target and per
    /// host where it moves from and to. A preview's fingerprint sent back
    /// with the confirmation lets the controller refuse to start a plan
    /// that is no longer the one the operator saw.
    pub fn fingerprint(&self) -> String {
        let key = |c: Option<&ContentIdentity>| {
            c.and_then(|c| c.image_id.or(c.tarball_sha256))
                .map(|d| d.to_hex())
                .unwrap_or_default()
        };
        let mut lines = Vec::new();
        for s in &self.services {
            lines.push(format!("service {} {}", s.service, s.sha256.to_hex()));
            for m in s.batches.iter().flatten() {
                lines.push(format!(
                    "move {} {} {} {}",
                    s.service,
                    m.host,
                    key(m.from.as_deref()),
                    key(m.to.as_deref().map(|t| &t.identity))
                ));
            }
        }
        lines.sort_unstable();
        Sha256Digest::of(lines.join("\n").as_bytes()).to_hex()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServicePlan {
    pub service: String,
    /// Dependency level: level n starts when levels < n are healthy.
    pub level: usize,
    pub target: ContentIdentity,
    pub sha256: Sha256Digest,
    pub size: u64,
    /// Batch 0 is the canary. In JSON a batch is a list of runs of hosts
    /// that move from the same identity (see [`batches`]).
    #[serde(with = "batches")]
    pub batches: Vec<Vec<HostMove>>,
    /// Hosts that already run the target identity: not touched.
    pub unchanged: Vec<String>,
    pub config: ServiceConfig,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<ImageTarget>,
    /// Steps swap each host back to its previous release instead of
    /// installing `target`: how earlier controllers planned `cutover
    /// rollback SERVICE` (now each host gets an install of its own
    /// last known-good release, [`HostMove::to`]). Still driven when read
    /// back from the store.
    #[serde(default)]
    pub swap_back: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostMove {
    pub host: String,
    /// What the host runs now. Shared: at fleet size most hosts move from
    /// the same identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<Arc<ContentIdentity>>,
    /// Where this host goes, when not to the service plan's target: a
    /// manual rollback takes each host to its own last known-good release.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<Arc<HostTarget>>,
}

/// One host's own target: what an install command names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostTarget {
    pub identity: ContentIdentity,
    pub sha256: Sha256Digest,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<ImageTarget>,
}

/// A host a manual rollback leaves as it is, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkippedHost {
    pub host: String,
    pub service: String,
    /// Why, for scripts; `reason` says it in words.
    #[serde(default)]
    pub code: SkipCode,
    pub reason: String,
}

mod batches;
mod codes;
pub use codes::{CarriedCode, SkipCode, StopAction, LAST_KNOWN_GOOD};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Carried {
    pub service: String,
    pub service_version: String,
    /// Why, for scripts; `reason` says it in words.
    #[serde(default)]
    pub code: CarriedCode,
    pub reason: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RolloutKind {
    Upgrade,
    Rollback,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RolloutStatus {
    Running,
    Paused,
    RollingBack,
    Succeeded,
    RolledBack,
    Failed,
    Aborted,
}

impl RolloutStatus {
    pub fn is_final(self) -> bool {
        matches!(
            self,
            RolloutStatus::Succeeded
                | RolloutStatus::RolledBack
                | RolloutStatus::Failed
                | RolloutStatus::Aborted
        )
    }
}

impl std::fmt::Display for RolloutStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A rollout as the store keeps it and `cutover rollout show` prints it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rollout {
    pub id: u64,
    pub kind: RolloutKind,
    pub release: String,
    pub status: RolloutStatus,
    pub no_rollback: bool,
    pub created_ms: i64,
    pub updated_ms: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_ms: Option<i64>,
    pub plan: Plan,
    pub steps: Vec<Step>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<Failure>,
}

/// One line of `cutover rollout list`: a rollout without its plan and
/// steps, which at fleet size are megabytes each.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RolloutSummary {
    pub id: u64,
    pub kind: RolloutKind,
    pub release: String,
    pub services: Vec<String>,
    pub status: RolloutStatus,
    /// Steps done (healthy or resolved by rollback), as
    /// [`Rollout::progress`] counts them, and all steps.
    pub steps_done: usize,
    pub steps: usize,
    pub created_ms: i64,
    pub updated_ms: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<Failure>,
}

/// One host moving one service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Step {
    pub service: String,
    pub host: String,
    pub level: usize,
    pub batch: usize,
    pub phase: StepPhase,
    /// Install command id; the rollback command id adds `-rollback`.
    pub command_id: String,
    /// While the step is in flight: since when its current command's
    /// deadline clock runs (when it was sent, or for an offline host when
    /// its batch began; cleared when the host reports), and on which
    /// session it was sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sent_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<u64>,
    /// Times the current command was sent (resends after reconnects).
    pub sends: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evidence: Option<Evidence>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<Arc<ContentIdentity>>,
    /// The host's own target (see [`HostMove::to`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<Arc<HostTarget>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum StepPhase {
    Pending,
    Installing,
    Healthy,
    Failed,
    RollingBack,
    RolledBack,
    RollbackFailed,
}

impl std::fmt::Display for StepPhase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The one thing that stopped a rollout, for `rollout show`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Failure {
    pub service: String,
    pub host: String,
    /// The failed step's batch (0: the canary).
    #[serde(default)]
    pub batch: usize,
    /// Which boundary stopped, in words: `canary`, `batch 2`.
    pub boundary: String,
    pub evidence: Evidence,
    /// What the controller did next, for scripts; `action` says it in
    /// words.
    #[serde(default)]
    pub next: StopAction,
    pub action: String,
}

/// One line of the controller's event log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventView {
    /// Its place in the log (ids only grow): `events --follow` goes on
    /// after the last one it printed. 0 from controllers that did not say.
    #[serde(default)]
    pub id: u64,
    pub at_ms: i64,
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<u64>,
    pub detail: String,
}

/// `rollout show`: the rollout and its events.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RolloutDetail {
    pub rollout: Rollout,
    pub events: Vec<EventView>,
}

/// What `cutover upgrade` and `cutover rollback` did: the plan, and the
/// rollout started for it (none when no host needs to move).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Started {
    pub plan: Plan,
    pub rollout: Option<Rollout>,
}

impl Rollout {
    /// Steps done (healthy or resolved by rollback) out of all steps.
    pub fn progress(&self) -> (usize, usize) {
        let done = self
            .steps
            .iter()
            .filter(|s| !matches!(s.phase, StepPhase::Pending | StepPhase::Installing))
            .count();
        (done, self.steps.len())
    }

    /// Ended, and no step is still in flight: an aborted rollout follows
    /// the commands it had sent until their hosts report (or their
    /// deadline passes), so its record is complete only then.
    pub fn settled(&self) -> bool {
        self.status.is_final()
            && !self
                .steps
                .iter()
                .any(|s| matches!(s.phase, StepPhase::Installing | StepPhase::RollingBack))
    }

    pub fn count(&self, phase: StepPhase) -> usize {
        self.steps.iter().filter(|s| s.phase == phase).count()
    }
}

mod bound;
