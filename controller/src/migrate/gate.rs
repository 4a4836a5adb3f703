//! The gates of a release's migrations, pure and failing closed: an
//! upgrade (and its plan) waits for the release's expand migrations;
//! postdeploy waits until every host the fleet config assigns to a service
//! owning the database runs the release's identity of it and no unfinished
//! rollout moves one; contract waits for postdeploy, that same rollout
//! rule, and every data migration the release requires before it
//! (succeeded, and verified since: `data_migration::Record::ready`). Each
//! refusal is one line naming the
//! database, the phase, the release and the command that fixes it.

use cutover_core::data_migration::Record;
use cutover_core::fleet::{FleetConfig, RunnerKind};
use cutover_core::manifest::{Manifest, Phase};
use cutover_core::migration_views::{DatabaseStatus, PlanMigrations, PlanPhase};
use cutover_core::rollout::Rollout;

use super::decide::{blocked, pending_in};
use crate::rollout::plan::{service_target, HostState};

/// The most lagging (service, host) pairs a refusal names.
const SHOWN: usize = 5;

fn plural(n: usize, word: &str) -> String {
    format!(
        "{n} pending {word} migration{}",
        if n == 1 { "" } else { "s" }
    )
}

/// Whether the upgrade (and plan) of release `version` may go on, given
/// the ledger of a database a service of the release owns.
pub fn expand_gate(version: &str, status: &DatabaseStatus) -> Result<(), String> {
    if let Some(why) = blocked(status) {
        return Err(format!("release {version} cannot be planned: {why}"));
    }
    let n = pending_in(status, Phase::Expand).len();
    if n > 0 {
        return Err(format!(
            "database {} has {} of release {version}: run `cutover migrate --phase expand --version {version}` first",
            status.database,
            plural(n, "expand")
        ));
    }
    Ok(())
}

/// The plan's refusal when a database's ledger cannot be read: whether its
/// expand migrations ran is unknown, which is never "nothing pending".
pub fn unreadable(version: &str, database: &str, why: &str) -> String {
    format!(
        "release {version} cannot be planned: the migration ledger of database {database} cannot be read ({why}); fix that, check with `cutover migrate status --database {database} --version {version}`, then plan again"
    )
}

/// Why release `m`'s rollout of the services owning `database` is not done
/// (empty: done): every host the fleet config assigns to each owning
/// service must run the identity the planner would install there (so a
/// new plan of the release would move none of them), and a service the
/// fleet runs nowhere is not done. Unfinished rollouts are
/// [`in_flight`]'s.
pub fn not_rolled_out(
    m: &Manifest,
    fleet: &FleetConfig,
    hosts: &[HostState],
    database: &str,
) -> Vec<String> {
    let release = m.version.to_string();
    let mut out = Vec::new();
    for svc in m.owners(database) {
        let name = &svc.name;
        let Some(config) = fleet.services.get(name) else {
            out.push(format!("service {name} is not in the fleet config"));
            continue;
        };
        let assigned = fleet.hosts_of(name);
        if assigned.is_empty() {
            out.push(format!("service {name} is assigned to no host"));
            continue;
        }
        let target = match service_target(&release, svc, config) {
            Ok(t) => t.identity,
            Err(e) => {
                out.push(e);
                continue;
            }
        };
        let docker = config.runner == RunnerKind::Docker;
        for host in assigned {
            let Some(h) = hosts.iter().find(|h| h.name == host) else {
                out.push(format!("{name} on {host} (not enrolled)"));
                continue;
            };
            let current = h
                .installed
                .iter()
                .find(|s| &s.name == name)
                .and_then(|s| s.current.as_ref());
            let at_target = match current {
                Some(c) if docker => c.image_id.is_some() && c.image_id == target.image_id,
                Some(c) => c.tarball_sha256.is_some() && c.tarball_sha256 == target.tarball_sha256,
                None => false,
            };
            if h.revoked {
                out.push(format!("{name} on {host} (revoked)"));
            } else if !at_target {
                let runs =
                    current.map_or("nothing".to_string(), |c| format!("release {}", c.release));
                out.push(format!("{name} on {host} (runs {runs})"));
            }
        }
    }
    out
}

/// An unfinished rollout as the gates see it: its id and the services it
/// moves.
#[derive(Debug, Clone)]
pub struct Moving {
    pub id: u64,
    pub services: Vec<String>,
}

impl Moving {
    pub fn of(r: &Rollout) -> Moving {
        let mut services: Vec<String> = r.steps.iter().map(|s| s.service.clone()).collect();
        services.sort();
        services.dedup();
        Moving { id: r.id, services }
    }
}

/// Unfinished rollouts that move a service owning `database`, and
/// rollouts that cannot be read (they might): each a reason postdeploy and
/// contract wait.
pub fn in_flight(
    m: &Manifest,
    database: &str,
    unfinished: &[Result<Moving, String>],
) -> Vec<String> {
    let mut out = Vec::new();
    for r in unfinished {
        match r {
            Err(e) => out.push(format!("a stored rollout cannot be read ({e})")),
            Ok(r) => {
                if let Some(s) = m.owners(database).find(|o| r.services.contains(&o.name)) {
                    out.push(format!("rollout {} still moves {}", r.id, s.name));
                }
            }
        }
    }
    out
}

fn refusal(database: &str, phase: Phase, version: &str, why: &str, fix: &str) -> String {
    format!("database {database}: {phase} of release {version} refused: {why}; {fix}")
}

fn listed(reasons: &[String]) -> String {
    let mut s = reasons
        .iter()
        .take(SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if reasons.len() > SHOWN {
        s.push_str(&format!(" and {} more", reasons.len() - SHOWN));
    }
    s
}

/// Whether `migrate --phase postdeploy` of release `version` may run on
/// the database `status` describes; `behind` is [`not_rolled_out`] and
/// [`in_flight`] together.
pub fn postdeploy_gate(
    version: &str,
    status: &DatabaseStatus,
    behind: &[String],
) -> Result<(), String> {
    let db = &status.database;
    let expand = pending_in(status, Phase::Expand).len();
    if expand > 0 {
        return Err(refusal(
            db,
            Phase::Postdeploy,
            version,
            &format!("it has {}", plural(expand, "expand")),
            &format!("run `cutover migrate --phase expand --version {version}` first"),
        ));
    }
    if !behind.is_empty() {
        return Err(refusal(
            db,
            Phase::Postdeploy,
            version,
            &format!(
                "the rollout of {version} to the services owning it has not succeeded everywhere: {}",
                listed(behind)
            ),
            &format!("finish it with `cutover upgrade --version {version}` (see `cutover status`), then run `cutover migrate --phase postdeploy --version {version}`"),
        ));
    }
    Ok(())
}

/// Whether `migrate --phase contract` of release `m` may run on the
/// database `status` describes: the postdeploy gate holds (`behind` as
/// for [`postdeploy_gate`]), every postdeploy migration of the release is
/// applied, and, while contract migrations are pending, every data
/// migration the release requires before contract of the database is
/// ready; `data` holds what the controller knows of each
/// ([`Manifest::required_before_contract`], as `SERVICE.ID`).
pub fn contract_gate(
    m: &Manifest,
    status: &DatabaseStatus,
    behind: &[String],
    data: &[(String, Option<Record>)],
) -> Result<(), String> {
    let version = m.version.to_string();
    let db = status.database.as_str();
    postdeploy_gate(&version, status, behind).map_err(|e| {
        e.replacen(
            &format!("postdeploy of release {version} refused"),
            &format!("contract of release {version} refused"),
            1,
        )
    })?;
    let post = pending_in(status, Phase::Postdeploy).len();
    if post > 0 {
        return Err(refusal(
            db,
            Phase::Contract,
            &version,
            &format!("it has {}", plural(post, "postdeploy")),
            &format!("run `cutover migrate --phase postdeploy --version {version}` first"),
        ));
    }
    if pending_in(status, Phase::Contract).is_empty() {
        return Ok(());
    }
    for (key, record) in data {
        if let Err(why) = Record::ready(key, record.as_ref()) {
            return Err(refusal(
                db,
                Phase::Contract,
                &version,
                &format!("it requires data migration {key}, which {why}"),
                "contract runs once every data migration it requires has succeeded and passed its verify (`cutover data-migrate list`)",
            ));
        }
    }
    Ok(())
}

/// What a plan shows of the release's migrations of the database
/// `status` describes: by phase, each pending or applied. Called once the
/// expand gate passed, so what is not pending is applied.
pub fn plan_view(m: &Manifest, status: &DatabaseStatus) -> PlanMigrations {
    let db = status.database.as_str();
    let mut phases: Vec<PlanPhase> = Vec::new();
    for p in Phase::ALL {
        let mut view = PlanPhase {
            phase: p.as_str().into(),
            applied: Vec::new(),
            pending: Vec::new(),
        };
        for x in m.migrations_of(db).filter(|x| x.phase == p) {
            let key = format!("{}/{p}/{}", x.version, x.name);
            if status.pending.iter().any(|w| w.key() == key) {
                view.pending.push(key);
            } else {
                view.applied.push(key);
            }
        }
        if !(view.applied.is_empty() && view.pending.is_empty()) {
            phases.push(view);
        }
    }
    PlanMigrations {
        database: db.into(),
        phases,
    }
}

#[cfg(test)]
#[path = "gate/tests.rs"]
mod tests;
