//! The emergency path's edge: `cutover rollback SERVICE` and `cutover
//! rollout abort ID --rollback`. The plan is the pure planner's
//! ([`crate::rollout::rollback_plan`]); this gathers what it reads (the
//! fleet, the hosts, each host's release history) and resolves the
//! releases it picks from the store, verified again.

use std::collections::HashMap;
use std::sync::Arc;

use cutover_core::rollout::{HostTarget, Plan, Rollout, RolloutKind};
use cutover_core::views::ContentIdentity;
use serde::Serialize;

use super::rollouts::{make_plan, start_by, Ask};
use crate::error::{Error, Result};
use crate::fleet_view::{fleet_config as fleet, host_states as hosts};
use crate::rollout::driver::Action;
use crate::rollout::known_good::{release_key, Seen};
use crate::rollout::plan::service_target;
use crate::rollout::rollback_plan::{
    empty_plan, refuse_known_bad, rollback_plan, scopes_after_abort, Resolve, RollbackRequest,
    Scope,
};
use crate::store::Store;
use crate::Controller;

/// What `cutover rollback` asked.
pub struct RollbackAsk {
    pub service: String,
    /// Empty: each host to its own last known-good release.
    pub to: String,
    pub allow_offline: bool,
    pub dry_run: bool,
    /// The fingerprint of the preview the operator confirmed, or empty.
    pub expect_plan: String,
    /// With `to`: even where a failed step tried it.
    pub force: bool,
    /// The operator, for the rollout's events.
    pub by: Option<String>,
}

/// `cutover rollback SERVICE [--to VERSION] [--dry-run]`.
pub async fn rollback(
    c: &Arc<Controller>,
    ask: RollbackAsk,
) -> Result<cutover_core::rollout::Started> {
    let plan = if ask.to.is_empty() {
        known_good_plan(c, vec![Scope::service(ask.service)], ask.allow_offline).await?
    } else {
        let to = Ask {
            services: vec![ask.service],
            version: ask.to,
            allow_offline: ask.allow_offline,
        };
        let plan = make_plan(c, &to, true).await?;
        if !ask.force {
            let services = plan.services.iter().map(|p| p.service.clone()).collect();
            let history = c.store.run(move |s| histories(s, services)).await?;
            refuse_known_bad(&plan, &history).map_err(|e| Error::Invalid(e.0))?;
        }
        plan
    };
    if ask.dry_run {
        return Ok(cutover_core::rollout::Started {
            plan,
            rollout: None,
        });
    }
    if !ask.expect_plan.is_empty() && plan.fingerprint() != ask.expect_plan {
        return Err(Error::Conflict(
            "the hosts have changed since the preview you confirmed, so its plan no longer holds; nothing was started: run the rollback again to see the plan as it is now".into(),
        ));
    }
    start_by(c, plan, RolloutKind::Rollback, true, ask.by).await
}

/// The answer to `cutover rollout abort ID --rollback`.
#[derive(Debug, Serialize)]
pub struct AbortedAndBack {
    pub aborted: Rollout,
    pub rollback: cutover_core::rollout::Started,
}

/// Aborts rollout `id`, then rolls back every host it moved (a step sent,
/// healthy or failed) to what that host ran before it.
pub async fn abort_and_roll_back(
    c: &Arc<Controller>,
    id: u64,
    allow_offline: bool,
    by: Option<String>,
) -> Result<AbortedAndBack> {
    let aborted = c
        .rollouts
        .control_by(id, Action::Abort, by.clone())
        .await
        .map_err(|e| match e {
            Error::Conflict(why) => Error::Conflict(format!(
                "{why}; to take its hosts back, `cutover rollback SERVICE` (each host to its last known-good release)"
            )),
            other => other,
        })?;
    let scopes = scopes_after_abort(&aborted);
    let rollback = if scopes.is_empty() {
        cutover_core::rollout::Started {
            plan: empty_plan(),
            rollout: None,
        }
    } else {
        let plan = known_good_plan(c, scopes, allow_offline).await?;
        start_by(c, plan, RolloutKind::Rollback, true, by).await?
    };
    Ok(AbortedAndBack { aborted, rollback })
}

/// Per service, each host's releases as its steps ended.
fn histories(
    s: &Store,
    services: Vec<String>,
) -> Result<HashMap<String, HashMap<String, Vec<Seen>>>> {
    services
        .into_iter()
        .map(|service| Ok((service.clone(), s.host_releases(&service)?)))
        .collect()
}

/// The planner's plan for `scopes`, over the fleet and hosts as they are
/// now. It runs as one store task: the releases it picks are read there,
/// one at a time, only as far as it needs them.
async fn known_good_plan(
    c: &Arc<Controller>,
    scopes: Vec<Scope>,
    allow_offline: bool,
) -> Result<Plan> {
    let fleet = fleet(c).await?;
    let hosts = hosts(c).await?;
    let c = c.clone();
    c.clone()
        .store
        .run(move |s| {
            let services = scopes.iter().map(|p| p.service.clone()).collect();
            let history = histories(s, services)?;
            let req = RollbackRequest {
                fleet: &fleet,
                hosts: &hosts,
                scopes: &scopes,
                history: &history,
                allow_offline,
            };
            let mut releases = Releases {
                c: &c,
                store: s,
                known: HashMap::new(),
            };
            rollback_plan(&req, &mut releases).map_err(|e| Error::Invalid(e.0))
        })
        .await
}

/// Releases read from the store and verified once per rollback, by key.
struct Releases<'a> {
    c: &'a Controller,
    store: &'a Store,
    known: HashMap<String, std::result::Result<Arc<HostTarget>, String>>,
}

impl Resolve for Releases<'_> {
    /// The install target for `identity` from its release as stored,
    /// verified again; it must pin the same artifact the host ran.
    fn resolve(
        &mut self,
        service: &str,
        config: &cutover_core::fleet::ServiceConfig,
        identity: &ContentIdentity,
    ) -> std::result::Result<Arc<HostTarget>, String> {
        let key = release_key(identity).unwrap_or_default();
        if let Some(known) = self.known.get(&key) {
            return known.clone();
        }
        let answer = resolve(self.c, self.store, service, config, identity);
        self.known.insert(key, answer.clone());
        answer
    }
}

fn resolve(
    c: &Controller,
    store: &Store,
    service: &str,
    config: &cutover_core::fleet::ServiceConfig,
    identity: &ContentIdentity,
) -> std::result::Result<Arc<HostTarget>, String> {
    let version = identity.release.clone();
    let stored = store
        .release(&version)
        .map_err(|e| format!("release {version} cannot be read ({e})"))?
        .ok_or_else(|| format!("its last known-good release {version} is no longer imported"))?;
    let (manifest, _) = super::import::verify(c, &stored.manifest, &stored.signatures)
        .map_err(|e| format!("release {version} no longer verifies ({e})"))?;
    let svc = manifest
        .services
        .iter()
        .find(|s| s.name == service)
        .ok_or_else(|| format!("release {version} has no service {service:?}"))?;
    let target =
        service_target(&version, svc, config).map_err(|e| format!("release {version}: {e}"))?;
    if release_key(&target.identity) != release_key(identity) {
        return Err(format!(
            "release {version} as imported pins another artifact of {service} than the host ran"
        ));
    }
    Ok(Arc::new(target))
}
