//! The manual rollback's plan, pure: `cutover rollback SERVICE` takes
//! every host of the service to its own last known-good release
//! ([`super::known_good`]), `cutover rollout abort ID --rollback` the
//! hosts the rollout moved back to what they ran before it. Each host's
//! move carries its own target; the service's settings are stripped of
//! the fleet's host lists ([`for_agents`]) as in any plan. Releases are
//! turned into install targets through [`Resolve`], which the edge
//! implements over the store (verifying each again) and tests fake.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use cutover_core::fleet::{FleetConfig, ServiceConfig};
use cutover_core::rollout::{
    HostMove, HostTarget, Plan, Rollout, ServicePlan, SkipCode, SkippedHost, StepPhase,
    LAST_KNOWN_GOOD,
};
use cutover_core::views::ContentIdentity;

use super::known_good::{candidates, release_key, Seen};
use super::plan::{for_agents, HostState, PlanError};

/// The most hosts named in a refusal; the plan lists them all.
const NAMED: usize = 10;

/// What to roll back of one service.
pub struct Scope {
    pub service: String,
    /// Only these hosts (those a rollout moved); `None`: every host of the
    /// service in the fleet config.
    pub hosts: Option<HashSet<String>>,
    /// Releases that are never targets (what an aborted rollout tried).
    pub exclude: Vec<String>,
    /// Per host, what it ran before an aborted rollout moved it: the
    /// target when it is not known bad, whatever the host runs now (its
    /// install may still be in flight).
    pub before: HashMap<String, ContentIdentity>,
}

impl Scope {
    /// Every host of `service`, each to its own last known-good release.
    pub fn service(service: String) -> Scope {
        Scope {
            service,
            hosts: None,
            exclude: Vec::new(),
            before: HashMap::new(),
        }
    }
}

/// One scope per service `aborted` moved (a step sent, healthy or
/// failed): those hosts back to what each ran before it, never to what
/// the rollout tried.
pub fn scopes_after_abort(aborted: &Rollout) -> Vec<Scope> {
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
    scopes
}

/// A rollback that moves nothing.
pub fn empty_plan() -> Plan {
    Plan {
        release: LAST_KNOWN_GOOD.into(),
        services: vec![],
        carried: vec![],
        offline: vec![],
        skipped: vec![],
        migrations: vec![],
        data_migrations: vec![],
    }
}

/// Turns a release a host ran into the install target that takes it
/// back there, or says why it cannot.
pub trait Resolve {
    fn resolve(
        &mut self,
        service: &str,
        config: &ServiceConfig,
        identity: &ContentIdentity,
    ) -> Result<Arc<HostTarget>, String>;
}

/// What the rollback planner reads.
pub struct RollbackRequest<'a> {
    pub fleet: &'a FleetConfig,
    pub hosts: &'a [HostState],
    pub scopes: &'a [Scope],
    /// Per service of the scopes: per host, the releases its steps ended on.
    pub history: &'a HashMap<String, HashMap<String, Vec<Seen>>>,
    pub allow_offline: bool,
}

/// One service plan per scope, each host with its own target.
pub fn rollback_plan(
    req: &RollbackRequest<'_>,
    releases: &mut impl Resolve,
) -> Result<Plan, PlanError> {
    let fleet = req.fleet;
    let hosts = req.hosts;
    let no_history = HashMap::new();
    let mut plan = empty_plan();
    for scope in req.scopes {
        let service = scope.service.clone();
        let config = fleet.services.get(&service).ok_or_else(|| {
            PlanError(format!(
                "service {service:?} is not in the fleet config; apply one that runs it"
            ))
        })?;
        let history = req.history.get(&service).unwrap_or(&no_history);
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
        for h in hosts {
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
                match releases.resolve(&service, config, option) {
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
            config: for_agents(config),
            image: main.image.clone(),
            swap_back: false,
        });
    }
    plan.offline.sort_unstable();
    plan.offline.dedup();
    if !plan.offline.is_empty() && !req.allow_offline {
        return Err(PlanError(format!(
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
        return Err(PlanError(format!(
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

/// Refuses a `--to` plan whose target a failed or rolled-back step tried
/// on a host of its service (the last word there), naming them: a release
/// that failed on one is no safe place to send the others. `history` is
/// per service, then per host.
pub fn refuse_known_bad(
    plan: &Plan,
    history: &HashMap<String, HashMap<String, Vec<Seen>>>,
) -> Result<(), PlanError> {
    for p in &plan.services {
        let Some(history) = history.get(&p.service) else {
            continue;
        };
        let key = release_key(&p.target);
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
        return Err(PlanError(format!(
            "release {} of {} failed or was rolled back on {named}{more} when a step last tried it; nothing was started: pass --force to install it there anyway",
            p.target.release, p.service
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
