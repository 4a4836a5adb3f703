//! The emergency path: `cutover rollback SERVICE` takes every host of the
//! service, at once, to its own last known-good release
//! ([`crate::rollout::known_good`]), and `cutover rollout abort ID
//! --rollback` stops a rollout and takes the hosts it moved back to what
//! they ran before it. Each host's step is an install of that release, so
//! it gets the health checks and `min_healthy_time` of any install. A host
//! with no release to go back to is listed in the plan and left alone.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use cutover_core::rollout::{
    HostMove, HostTarget, Plan, Rollout, RolloutKind, ServicePlan, SkipCode, SkippedHost,
    StepPhase, LAST_KNOWN_GOOD,
};
use cutover_core::views::ContentIdentity;
use serde::Serialize;

use super::rollouts::{fleet, hosts, make_plan, start_by, Ask};
use crate::error::{Error, Result};
use crate::rollout::driver::Action;
use crate::rollout::known_good::{candidates, release_key, Seen};
use crate::rollout::plan::{for_agents, service_target};
use crate::Controller;

/// The most skipped hosts named in a refusal; the plan lists them all.
const NAMED: usize = 10;

/// What to roll back of one service.
struct Scope {
    service: String,
    /// Only these hosts (those a rollout moved); `None`: every host of the
    /// service in the fleet config.
    hosts: Option<HashSet<String>>,
    /// Releases that are never targets (what an aborted rollout tried).
    exclude: Vec<String>,
    /// Per host, what it ran before an aborted rollout moved it: the
    /// target when it is not known bad, whatever the host runs now (its
    /// install may still be in flight).
    before: HashMap<String, ContentIdentity>,
}

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
        let scope = Scope {
            service: ask.service,
            hosts: None,
            exclude: Vec::new(),
            before: HashMap::new(),
        };
        known_good_plan(c, vec![scope], ask.allow_offline).await?
    } else {
        let to = Ask {
            services: vec![ask.service],
            version: ask.to,
            allow_offline: ask.allow_offline,
        };
        let plan = make_plan(c, &to, true).await?;
        if !ask.force {
            refuse_known_bad(c, &plan).await?;
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

/// Refuses a `--to` plan whose target a failed or rolled-back step tried
/// on a host of the service (the last word there), naming them.
async fn refuse_known_bad(c: &Arc<Controller>, plan: &Plan) -> Result<()> {
    for p in &plan.services {
        let s = p.service.clone();
        let history = c.store.run(move |st| st.host_releases(&s)).await?;
        let key = release_key(&p.target);
        // On any host of the service: a release that failed on one is
        // no safe place to send the others.
        let mut bad: Vec<&str> = history
            .iter()
            .filter(|(_, seen)| {
                seen.iter()
                    .any(|s| release_key(&s.identity) == key && s.is_bad())
            })
            .map(|(host, _)| host.as_str())
            .collect();
        if bad.is_empty() {
            continue;
        }
        bad.sort_unstable();
        let more = bad.len().saturating_sub(NAMED);
        let named = bad.into_iter().take(NAMED).collect::<Vec<_>>().join(", ");
        let more = if more > 0 {
            format!(" and {more} more")
        } else {
            String::new()
        };
        return Err(Error::Invalid(format!(
            "release {} of {} failed or was rolled back on {named}{more} when a step last tried it; nothing was started: pass --force to install it there anyway",
            p.target.release, p.service
        )));
    }
    Ok(())
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
    let mut scopes = Vec::new();
    for p in &aborted.plan.services {
        let moved: Vec<_> = aborted
            .steps
            .iter()
            .filter(|s| s.service == p.service)
            .filter(|s| {
                matches!(
                    s.phase,
                    StepPhase::Installing | StepPhase::Healthy | StepPhase::Failed
                )
            })
            .collect();
        if moved.is_empty() {
            continue;
        }
        let mut exclude: Vec<String> = moved
            .iter()
            .filter_map(|s| s.to.as_ref().and_then(|t| release_key(&t.identity)))
            .collect();
        if !p.swap_back {
            exclude.extend(release_key(&p.target));
        }
        scopes.push(Scope {
            service: p.service.clone(),
            hosts: Some(moved.iter().map(|s| s.host.clone()).collect()),
            exclude,
            before: moved
                .iter()
                .filter_map(|s| Some((s.host.clone(), (**s.from.as_ref()?).clone())))
                .collect(),
        });
    }
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

fn empty_plan() -> Plan {
    Plan {
        release: LAST_KNOWN_GOOD.into(),
        services: vec![],
        carried: vec![],
        offline: vec![],
        skipped: vec![],
    }
}

/// One service plan per scope, each host with its own target.
async fn known_good_plan(
    c: &Arc<Controller>,
    scopes: Vec<Scope>,
    allow_offline: bool,
) -> Result<Plan> {
    let fleet = fleet(c).await?;
    let hosts = hosts(c).await?;
    let mut plan = empty_plan();
    let mut releases = Releases::default();
    for scope in scopes {
        let service = scope.service.clone();
        let config = fleet.services.get(&service).cloned().ok_or_else(|| {
            Error::Invalid(format!(
                "service {service:?} is not in the fleet config; apply one that runs it"
            ))
        })?;
        let s = service.clone();
        let history = c.store.run(move |st| st.host_releases(&s)).await?;
        let selected: HashSet<String> = fleet.hosts_of(&service).into_iter().collect();
        if scope.hosts.is_none() {
            let enrolled: HashSet<&str> = hosts.iter().map(|h| h.name.as_str()).collect();
            let mut missing: Vec<&String> = selected
                .iter()
                .filter(|h| !enrolled.contains(h.as_str()))
                .collect();
            missing.sort_unstable();
            plan.skipped
                .extend(missing.into_iter().map(|h| SkippedHost {
                    host: h.clone(),
                    service: service.clone(),
                    code: SkipCode::NotEnrolled,
                    reason: "not enrolled".into(),
                }));
        }
        let mut moves = Vec::new();
        let mut shared: HashMap<String, Arc<HostTarget>> = HashMap::new();
        for h in &hosts {
            let in_scope = match &scope.hosts {
                Some(only) => only.contains(&h.name),
                None => selected.contains(&h.name),
            };
            if !in_scope {
                continue;
            }
            let skip = |code: SkipCode, reason: String| SkippedHost {
                host: h.name.clone(),
                service: service.clone(),
                code,
                reason,
            };
            if h.revoked {
                plan.skipped.push(skip(SkipCode::Revoked, "revoked".into()));
                continue;
            }
            let installed = h.installed.iter().find(|s| s.name == service);
            let current = installed.and_then(|s| s.current.as_ref());
            let previous = installed.and_then(|s| s.previous.as_ref());
            if current.is_none() && !scope.before.contains_key(&h.name) {
                plan.skipped.push(skip(
                    SkipCode::NotInstalled,
                    format!("runs nothing of {service}"),
                ));
                continue;
            }
            let seen: &[Seen] = history.get(&h.name).map(Vec::as_slice).unwrap_or(&[]);
            let mut options = match candidates(current, previous, seen, &scope.exclude) {
                Ok(list) => list,
                Err(_) if scope.before.contains_key(&h.name) => Vec::new(),
                Err(why) => {
                    plan.skipped.push(skip(SkipCode::NoKnownGood, why));
                    continue;
                }
            };
            if let Some(before) = scope.before.get(&h.name) {
                let key = release_key(before);
                let bad = seen
                    .iter()
                    .any(|s| release_key(&s.identity) == key && s.is_bad())
                    || scope.exclude.iter().any(|e| Some(e) == key.as_ref());
                if !bad {
                    options.insert(0, before.clone());
                }
            }
            let mut why_not = Vec::new();
            let mut target = None;
            for option in &options {
                match releases.resolve(c, &service, &config, option).await {
                    Ok(t) => {
                        target = Some(t);
                        break;
                    }
                    Err(e) => why_not.push(e),
                }
            }
            let Some(target) = target else {
                let skipped = if why_not.is_empty() {
                    skip(SkipCode::NoKnownGood, "what it ran before is known bad here and no other release is known healthy on it; use --to VERSION".to_string())
                } else {
                    skip(SkipCode::NotResolvable, why_not.join("; "))
                };
                plan.skipped.push(skipped);
                continue;
            };
            let key = release_key(&target.identity).unwrap_or_default();
            let target = shared.entry(key).or_insert(target).clone();
            if !h.online {
                plan.offline.push(h.name.clone());
            }
            moves.push(HostMove {
                host: h.name.clone(),
                from: current.map(|c| Arc::new(c.clone())),
                to: Some(target),
            });
        }
        // The plan's own target is the one most hosts go to (what a
        // summary shows); every step carries its host's.
        let Some(main) = most_common(&moves) else {
            continue;
        };
        plan.services.push(ServicePlan {
            service: service.clone(),
            level: 0,
            target: main.identity.clone(),
            sha256: main.sha256,
            size: main.size,
            batches: vec![moves],
            unchanged: vec![],
            config: for_agents(&config),
            image: main.image.clone(),
            swap_back: false,
        });
    }
    plan.offline.sort_unstable();
    plan.offline.dedup();
    if !plan.offline.is_empty() && !allow_offline {
        return Err(Error::Invalid(format!(
            "host(s) offline: {}; bring them back or pass --allow-offline",
            plan.offline.join(", ")
        )));
    }
    if plan.services.is_empty() && !plan.skipped.is_empty() {
        let named: Vec<String> = plan
            .skipped
            .iter()
            .take(NAMED)
            .map(|s| format!("{} {}", s.host, s.reason))
            .collect();
        let more = plan.skipped.len().saturating_sub(NAMED);
        let more = if more > 0 {
            format!(" (and {more} more)")
        } else {
            String::new()
        };
        return Err(Error::Invalid(format!(
            "no host can be rolled back: {}{more}; a rollback goes only to an older release healthy on the host and never to one a failed or rolled-back step tried there; choose one with --to VERSION",
            named.join("; ")
        )));
    }
    Ok(plan)
}

fn most_common(moves: &[HostMove]) -> Option<Arc<HostTarget>> {
    let mut counts: HashMap<*const HostTarget, (usize, &Arc<HostTarget>)> = HashMap::new();
    for m in moves {
        if let Some(t) = &m.to {
            counts.entry(Arc::as_ptr(t)).or_insert((0, t)).0 += 1;
        }
    }
    counts
        .into_values()
        .max_by_key(|(n, t)| (*n, std::cmp::Reverse(t.identity.release.clone())))
        .map(|(_, t)| t.clone())
}

/// Releases read and verified once per rollback, by key.
#[derive(Default)]
struct Releases(HashMap<String, std::result::Result<Arc<HostTarget>, String>>);

impl Releases {
    /// The install target for `identity` from its release as stored,
    /// verified again; it must pin the same artifact the host ran.
    async fn resolve(
        &mut self,
        c: &Arc<Controller>,
        service: &str,
        config: &cutover_core::fleet::ServiceConfig,
        identity: &ContentIdentity,
    ) -> std::result::Result<Arc<HostTarget>, String> {
        let key = release_key(identity).unwrap_or_default();
        if let Some(known) = self.0.get(&key) {
            return known.clone();
        }
        let answer = resolve(c, service, config, identity).await;
        self.0.insert(key, answer.clone());
        answer
    }
}

async fn resolve(
    c: &Arc<Controller>,
    service: &str,
    config: &cutover_core::fleet::ServiceConfig,
    identity: &ContentIdentity,
) -> std::result::Result<Arc<HostTarget>, String> {
    let version = identity.release.clone();
    let v = version.clone();
    let stored = c
        .store
        .run(move |s| s.release(&v))
        .await
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
