//! Operator calls about the fleet config, plans and rollouts. The operator
//! service delegates here; planning itself is pure ([`crate::rollout::plan`]).

use std::sync::Arc;

use cutover_core::rollout::{Plan, Rollout, RolloutDetail, RolloutKind, Started};
use cutover_core::views::now_ms;
use cutover_proto::v1;

use crate::error::{Error, Result};
use crate::fleet_view;
use crate::rollout::driver::Action;
use crate::rollout::new_rollout;
use crate::rollout::plan::{plan, PlanRequest};
use crate::Controller;

/// What the operator asked to plan.
pub struct Ask {
    pub services: Vec<String>,
    pub version: String,
    pub allow_offline: bool,
}

/// A channel name, an exact version, or "" for the default channel.
pub(super) async fn resolve(c: &Controller, version: &str) -> Result<String> {
    let channels = c.store.run(|s| s.channels()).await?;
    if version.is_empty() {
        return channels
            .iter()
            .find(|ch| ch.is_default)
            .map(|ch| ch.version.clone())
            .ok_or_else(|| {
                Error::Invalid(
                    "no --version given and no default channel; pass --version or set one with `cutover channel default NAME`"
                        .into(),
                )
            });
    }
    if let Some(ch) = channels.iter().find(|ch| ch.name == version) {
        return Ok(ch.version.clone());
    }
    Ok(version.to_string())
}

pub async fn make_plan(c: &Arc<Controller>, ask: &Ask, instant: bool) -> Result<Plan> {
    let fleet = fleet_view::fleet_config(c).await?;
    let version = resolve(c, &ask.version).await?;
    let v = version.clone();
    let stored = c.store.run(move |s| s.release(&v)).await?.ok_or_else(|| {
        Error::NotFound(format!(
            "{version:?} is neither a channel nor an imported release; see `cutover channel list` and `cutover release list`"
        ))
    })?;
    let (manifest, _) = super::import::verify(c, &stored.manifest, &stored.signatures)?;
    // The expand gate (not for a rollback's instant plan: going back must
    // not wait on a database).
    let (ledgers, data) = if instant {
        (Vec::new(), Vec::new())
    } else {
        (
            super::migrate::plan_gate(c, &manifest, &ask.services).await?,
            super::data_migrate::plan_gate(c, &manifest, &ask.services).await?,
        )
    };
    let hosts = fleet_view::host_states(c).await?;
    let mut plan = plan(&PlanRequest {
        manifest: &manifest,
        fleet: &fleet,
        hosts: &hosts,
        services: &ask.services,
        allow_offline: ask.allow_offline,
        instant,
    })
    .map_err(|e| Error::Invalid(e.0))?;
    plan.migrations = ledgers
        .iter()
        .map(|s| crate::migrate::gate::plan_view(&manifest, s))
        .collect();
    plan.data_migrations = data;
    Ok(plan)
}

/// Persists a rollout for `plan` and hands it to the driver; its
/// `rollout.created` event names the operator `by`.
pub(super) async fn start_by(
    c: &Arc<Controller>,
    plan: Plan,
    kind: RolloutKind,
    no_rollback: bool,
    by: Option<String>,
) -> Result<Started> {
    if plan.services.is_empty() {
        return Ok(Started {
            plan,
            rollout: None,
        });
    }
    let p = plan.clone();
    let rollout = c
        .store
        .run(move |s| {
            s.create_rollout_by(
                |id| new_rollout(id, kind, p, no_rollback, now_ms()),
                by.as_deref(),
            )
        })
        .await?;
    tracing::info!(rollout = rollout.id, release = %rollout.release, steps = rollout.steps.len(), "rollout started");
    c.rollouts.started(rollout.clone()).await;
    Ok(Started {
        plan,
        rollout: Some(rollout),
    })
}

/// Plans and starts an upgrade; `by` is the operator who asked.
pub async fn upgrade(
    c: &Arc<Controller>,
    ask: &Ask,
    no_rollback: bool,
    by: Option<String>,
) -> Result<Started> {
    let plan = make_plan(c, ask, false).await?;
    start_by(c, plan, RolloutKind::Upgrade, no_rollback, by).await
}

pub async fn detail(c: &Controller, id: u64) -> Result<RolloutDetail> {
    c.store
        .run(move |s| {
            let rollout = s.rollout(id)?.ok_or_else(|| {
                Error::NotFound(format!("no rollout {id}; see `cutover rollout list`"))
            })?;
            let events = s.events(Some(id), 500)?;
            Ok(RolloutDetail { rollout, events })
        })
        .await
}

/// The driver's action for a peer's `RolloutAction`. A value this
/// controller does not know (a newer CLI's, or none) is refused by
/// number, never taken for another action.
pub fn action_of(wire: i32) -> Result<Action> {
    match v1::RolloutAction::try_from(wire) {
        Ok(v1::RolloutAction::Pause) => Ok(Action::Pause),
        Ok(v1::RolloutAction::Resume) => Ok(Action::Resume),
        Ok(v1::RolloutAction::Abort) => Ok(Action::Abort),
        Ok(v1::RolloutAction::Unspecified) => Err(Error::Invalid(
            "no rollout action given; use pause, resume or abort".into(),
        )),
        Err(_) => Err(Error::Invalid(format!(
            "unknown rollout action {wire} (this controller knows 1 pause, 2 resume, 3 abort); use pause, resume or abort, or a controller as new as your cutover"
        ))),
    }
}

/// How an operator names `action`.
pub fn action_name(action: Action) -> &'static str {
    match action {
        Action::Pause => "pause",
        Action::Resume => "resume",
        Action::Abort => "abort",
    }
}

/// Pauses, resumes or aborts rollout `id`; `by` is the operator who asked.
pub async fn control(
    c: &Controller,
    id: u64,
    action: Action,
    by: Option<String>,
) -> Result<Rollout> {
    c.rollouts.control_by(id, action, by).await
}
