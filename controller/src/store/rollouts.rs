//! The fleet config, rollouts and host inventories as reports update them.
//! A rollout is stored as a row of `rollouts` (its own fields, and its plan
//! written once) and a row of `rollout_steps` per step holding what of the
//! step changes as the rollout runs; the rest of a step follows from the
//! plan. A save writes the rollout's fields, the steps that changed and the
//! events that explain them, in one transaction.

use cutover_core::rollout::{
    Evidence, Failure, Plan, Rollout, RolloutKind, RolloutStatus, RolloutSummary, Step, StepPhase,
};
use cutover_core::views::{now_ms, InstalledService};
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use serde::{Deserialize, Serialize};

use super::{host_releases, insert_event, Store};
use crate::error::{Error, Result};
use crate::rollout::new_rollout;

/// One event line a rollout step produced.
#[derive(Debug, Clone)]
pub struct LogLine {
    pub kind: String,
    pub host: Option<String>,
    pub detail: String,
}

const UNFINISHED: &str = "status IN ('Running', 'Paused', 'RollingBack')";
/// Rollouts the driver takes on at start: the unfinished ones, and those
/// that ended (aborted, stopped) with steps still in flight, followed
/// until each reports. A succeeded rollout has none.
const DRIVEN: &str = "status IN ('Running', 'Paused', 'RollingBack') OR (status IN ('Aborted', 'RolledBack', 'Failed') AND EXISTS (SELECT 1 FROM rollout_steps s WHERE s.rollout = rollouts.id AND s.phase IN ('Installing', 'RollingBack')))";

/// A rollout's own fields: everything but its plan and steps.
#[derive(Serialize, Deserialize)]
struct Head {
    id: u64,
    kind: RolloutKind,
    release: String,
    status: RolloutStatus,
    no_rollback: bool,
    created_ms: i64,
    updated_ms: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    finished_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    failure: Option<Failure>,
}

impl Head {
    fn of(r: &Rollout) -> Head {
        Head {
            id: r.id,
            kind: r.kind,
            release: r.release.clone(),
            status: r.status,
            no_rollback: r.no_rollback,
            created_ms: r.created_ms,
            updated_ms: r.updated_ms,
            finished_ms: r.finished_ms,
            failure: r.failure.clone(),
        }
    }

    fn with(self, plan: Plan, steps: Vec<Step>) -> Rollout {
        Rollout {
            id: self.id,
            kind: self.kind,
            release: self.release,
            status: self.status,
            no_rollback: self.no_rollback,
            created_ms: self.created_ms,
            updated_ms: self.updated_ms,
            finished_ms: self.finished_ms,
            plan,
            steps,
            failure: self.failure,
        }
    }
}

/// How the store spells a status or phase in its columns: the variant's
/// name (`RolledBack`), as every row since the first schema has it and
/// the queries above match. Operators see [`RolloutStatus::as_str`]'s
/// spelling instead.
fn stored_name(value: impl std::fmt::Debug) -> String {
    format!("{value:?}")
}

/// A status column as operators read it (`rolled_back`); a value no
/// status has is shown as it is.
fn shown_status(stored: &str) -> String {
    serde_json::from_value::<RolloutStatus>(serde_json::Value::String(stored.into()))
        .map(|s| s.as_str().to_string())
        .unwrap_or_else(|_| stored.to_string())
}

fn encode(id: u64, value: &impl Serialize) -> Result<String> {
    serde_json::to_string(value).map_err(|e| Error::Internal(format!("rollout {id}: {e}")))
}

fn decode<T: serde::de::DeserializeOwned>(id: u64, what: &str, json: &str) -> Result<T> {
    serde_json::from_str(json).map_err(|e| {
        Error::Internal(format!(
            "rollout {id} in the store cannot be read ({what}): {e}"
        ))
    })
}

/// What one save of a rollout writes, encoded before the store is locked.
pub struct RolloutSave {
    id: u64,
    status: String,
    updated_ms: i64,
    head: String,
    steps: Vec<EncodedStep>,
    events: Vec<LogLine>,
    /// What the steps that ended teach of each host's releases.
    outcomes: Vec<host_releases::Outcome>,
    /// The rollout's services, when this save finishes it: their release
    /// records are pruned.
    finished: Vec<String>,
}

/// A step as its row holds it: index, phase (for counts) and its
/// [`StepState`] as JSON.
struct EncodedStep(usize, String, String);

impl EncodedStep {
    fn new(id: u64, i: usize, s: &Step) -> Result<EncodedStep> {
        Ok(EncodedStep(
            i,
            stored_name(s.phase),
            encode(id, &StepState::of(s))?,
        ))
    }
}

/// What of a step changes as its rollout runs. The rest (service, host,
/// level, batch, command id, `from`) follows from the plan through
/// [`new_rollout`], so a row holds only this.
#[derive(Serialize, Deserialize)]
struct StepState {
    phase: StepPhase,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sent_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    session: Option<u64>,
    sends: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    finished_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    evidence: Option<Evidence>,
}

impl StepState {
    fn of(s: &Step) -> StepState {
        StepState {
            phase: s.phase,
            sent_ms: s.sent_ms,
            session: s.session,
            sends: s.sends,
            finished_ms: s.finished_ms,
            evidence: s.evidence.clone(),
        }
    }

    fn apply(self, s: &mut Step) {
        s.phase = self.phase;
        s.sent_ms = self.sent_ms;
        s.session = self.session;
        s.sends = self.sends;
        s.finished_ms = self.finished_ms;
        s.evidence = self.evidence;
    }
}

impl RolloutSave {
    /// The rollout's fields, the steps `changed` names, and `events`.
    pub fn new(r: &Rollout, changed: &[usize], events: Vec<LogLine>) -> Result<RolloutSave> {
        let steps = changed
            .iter()
            .map(|&i| EncodedStep::new(r.id, i, &r.steps[i]))
            .collect::<Result<_>>()?;
        Ok(RolloutSave {
            id: r.id,
            status: stored_name(r.status),
            updated_ms: r.updated_ms,
            head: encode(r.id, &Head::of(r))?,
            steps,
            events,
            outcomes: host_releases::outcomes(r, changed)?,
            finished: if r.status.is_final() {
                r.plan.services.iter().map(|p| p.service.clone()).collect()
            } else {
                Vec::new()
            },
        })
    }
}

fn insert_steps(c: &Connection, id: u64, steps: &[EncodedStep]) -> Result<()> {
    let mut stmt = c.prepare_cached(
        "INSERT INTO rollout_steps (rollout, idx, phase, step) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT(rollout, idx) DO UPDATE SET phase = ?3, step = ?4",
    )?;
    for EncodedStep(i, phase, json) in steps {
        let i = i64::try_from(*i)
            .map_err(|_| Error::Internal(format!("rollout {id}: step index {i} out of range")))?;
        stmt.execute(params![id, i, phase, json])?;
    }
    Ok(())
}

/// `limit` for SQL's `LIMIT`: a cast would wrap a huge one to -1, which
/// SQLite reads as no limit at all.
pub(crate) fn sql_limit(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

/// A rollout id from a request as SQLite's integer: `None` past
/// `i64::MAX`, where no rollout can be (ids count up from 1), so the caller
/// answers "not found" rather than failing the conversion.
pub(crate) fn sql_id(id: u64) -> Option<i64> {
    i64::try_from(id).ok()
}

impl Store {
    pub fn apply_fleet(&self, toml: &str, summary: &str) -> Result<()> {
        self.with(|c| {
            let tx = c.transaction()?;
            tx.execute(
                "INSERT INTO fleet (id, toml, applied_at) VALUES (1, ?1, ?2)
                 ON CONFLICT(id) DO UPDATE SET toml = ?1, applied_at = ?2",
                params![toml, now_ms()],
            )?;
            insert_event(&tx, "fleet.applied", None, summary)?;
            tx.commit()?;
            Ok(())
        })
    }

    /// The fleet config as applied, and when.
    pub fn fleet(&self) -> Result<Option<(String, i64)>> {
        self.with(|c| {
            Ok(
                c.query_row("SELECT toml, applied_at FROM fleet WHERE id = 1", [], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })
                .optional()?,
            )
        })
    }

    /// Stores a new rollout made by `make` from the next id, unless an
    /// unfinished rollout already moves one of its services.
    pub fn create_rollout(&self, make: impl FnOnce(u64) -> Rollout) -> Result<Rollout> {
        self.create_rollout_by(make, None)
    }

    /// [`create_rollout`](Self::create_rollout), its `rollout.created`
    /// event naming the operator `by`.
    pub fn create_rollout_by(
        &self,
        make: impl FnOnce(u64) -> Rollout,
        by: Option<&str>,
    ) -> Result<Rollout> {
        let by = match by {
            Some(name) => format!(" by operator {name:?}"),
            None => String::new(),
        };
        self.with(|c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let id: u64 = tx.query_row("SELECT COALESCE(MAX(id), 0) + 1 FROM rollouts", [], |r| r.get(0))?;
            let r = make(id);
            let services: Vec<&str> = r.plan.services.iter().map(|s| s.service.as_str()).collect();
            let mut stmt = tx.prepare(&format!("SELECT id, status, services FROM rollouts WHERE {UNFINISHED}"))?;
            let busy = stmt
                .query_map([], |row| Ok((row.get::<_, u64>(0)?, row.get::<_, String>(1)?, row.get::<_, String>(2)?)))?
                .collect::<Result<Vec<_>, _>>()?;
            drop(stmt);
            for (other, status, theirs) in busy {
                if let Some(s) = theirs.split(',').find(|s| services.contains(s)) {
                    let status = shown_status(&status);
                    return Err(Error::Conflict(format!(
                        "rollout {other} ({status}) is already moving service {s:?}; wait for it to finish, or `cutover rollout abort {other}`"
                    )));
                }
            }
            tx.execute(
                "INSERT INTO rollouts (id, status, release, services, created_at, updated_at, state, plan)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?5, ?6, ?7)",
                params![id, stored_name(r.status), r.release, services.join(","), r.created_ms,
                        encode(id, &Head::of(&r))?, encode(id, &r.plan)?],
            )?;
            let steps = r.steps.iter().enumerate()
                .map(|(i, s)| EncodedStep::new(id, i, s))
                .collect::<Result<Vec<_>>>()?;
            insert_steps(&tx, id, &steps)?;
            tx.execute(
                "INSERT INTO events (at, kind, host, detail, rollout) VALUES (?1, 'rollout.created', NULL, ?2, ?3)",
                params![now_ms(), format!("{} to release {} of {}{by}", r.kind.as_str(), r.release, services.join(", ")), id],
            )?;
            tx.commit()?;
            Ok(r)
        })
    }

    /// Saves a rollout's new fields and changed steps with the events that
    /// explain them.
    pub fn save_rollout(&self, save: &RolloutSave) -> Result<()> {
        self.with(|c| {
            let tx = c.transaction()?;
            tx.execute(
                "UPDATE rollouts SET status = ?2, updated_at = ?3, state = ?4 WHERE id = ?1",
                params![save.id, save.status, save.updated_ms, save.head],
            )?;
            insert_steps(&tx, save.id, &save.steps)?;
            host_releases::record(&tx, &save.outcomes)?;
            for service in &save.finished {
                host_releases::prune(&tx, service)?;
            }
            {
                let mut stmt = tx.prepare_cached(
                    "INSERT INTO events (at, kind, host, detail, rollout) VALUES (?1, ?2, ?3, ?4, ?5)",
                )?;
                for e in &save.events {
                    stmt.execute(params![save.updated_ms, e.kind, e.host, e.detail, save.id])?;
                }
            }
            tx.commit()?;
            Ok(())
        })
    }

    pub fn rollout(&self, id: u64) -> Result<Option<Rollout>> {
        let Some(id) = sql_id(id) else {
            return Ok(None);
        };
        Ok(self.load(&format!("WHERE id = {id}"))?.into_iter().next())
    }

    /// Rollouts without their plans and steps, newest first.
    pub fn rollout_summaries(&self, limit: usize) -> Result<Vec<RolloutSummary>> {
        self.with(|c| {
            let mut stmt = c.prepare(
                "SELECT r.id, r.state, r.services,
                   (SELECT count(*) FROM rollout_steps s WHERE s.rollout = r.id),
                   (SELECT count(*) FROM rollout_steps s WHERE s.rollout = r.id
                      AND s.phase NOT IN ('Pending', 'Installing'))
                 FROM rollouts r ORDER BY r.id DESC LIMIT ?1",
            )?;
            let rows = stmt
                .query_map([sql_limit(limit)], |r| {
                    Ok((
                        r.get::<_, u64>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, usize>(3)?,
                        r.get::<_, usize>(4)?,
                    ))
                })?
                .collect::<Result<Vec<_>, _>>()?;
            rows.into_iter()
                .map(|(id, head, services, steps, steps_done)| {
                    let h: Head = decode(id, "its fields", &head)?;
                    Ok(RolloutSummary {
                        id,
                        kind: h.kind,
                        release: h.release,
                        services: services.split(',').map(str::to_string).collect(),
                        status: h.status,
                        steps_done,
                        steps,
                        created_ms: h.created_ms,
                        updated_ms: h.updated_ms,
                        finished_ms: h.finished_ms,
                        failure: h.failure,
                    })
                })
                .collect()
        })
    }

    /// Every unfinished rollout, each read on its own: one that cannot be
    /// read is an error of its own (naming it), not the end of the others.
    /// Ended ones with steps in flight are among them (see [`DRIVEN`]).
    pub fn unfinished_rollouts(&self) -> Result<Vec<Result<Rollout>>> {
        self.load_each(&format!("WHERE {DRIVEN} ORDER BY id"))
    }

    /// Whether rollout `id` is stored and moves `service`.
    pub fn rollout_moves(&self, id: u64, service: &str) -> Result<bool> {
        let Some(id) = sql_id(id) else {
            return Ok(false);
        };
        self.with(|c| {
            let services: Option<String> = c
                .query_row("SELECT services FROM rollouts WHERE id = ?1", [id], |r| {
                    r.get(0)
                })
                .optional()?;
            Ok(services.is_some_and(|s| s.split(',').any(|s| s == service)))
        })
    }

    /// The rollouts `filter` (a WHERE/ORDER BY/LIMIT clause) selects, whole.
    fn load(&self, filter: &str) -> Result<Vec<Rollout>> {
        self.load_each(filter)?.into_iter().collect()
    }

    /// [`Store::load`], with a result per rollout.
    fn load_each(&self, filter: &str) -> Result<Vec<Result<Rollout>>> {
        self.with(|c| {
            let mut stmt = c.prepare(&format!("SELECT id, state, plan FROM rollouts {filter}"))?;
            let rows = stmt
                .query_map([], |r| {
                    Ok((
                        r.get::<_, u64>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                    ))
                })?
                .collect::<Result<Vec<_>, _>>()?;
            let mut states =
                c.prepare_cached("SELECT idx, step FROM rollout_steps WHERE rollout = ?1")?;
            Ok(rows
                .into_iter()
                .map(|(id, head, plan)| {
                    let head: Head = decode(id, "its fields", &head)?;
                    let plan: Plan = decode(id, "its plan", &plan)?;
                    let Rollout {
                        plan, mut steps, ..
                    } = new_rollout(id, head.kind, plan, head.no_rollback, head.created_ms);
                    let rows = states
                        .query_map([id], |r| Ok((r.get::<_, usize>(0)?, r.get::<_, String>(1)?)))?;
                    for row in rows {
                        let (i, json) = row?;
                        let state: StepState = decode(id, "a step", &json)?;
                        let made = steps.len();
                        let step = steps.get_mut(i).ok_or_else(|| {
                            Error::Internal(format!(
                                "rollout {id} in the store has step {i}, beyond the {made} its plan makes"
                            ))
                        })?;
                        state.apply(step);
                    }
                    Ok(head.with(plan, steps))
                })
                .collect())
        })
    }

    /// Replaces each reported service in its host's stored inventory, in one
    /// transaction.
    pub fn record_installed(&self, reported: &[(String, InstalledService)]) -> Result<()> {
        self.with(|c| {
            let tx = c.transaction()?;
            let mut read = tx.prepare_cached("SELECT inventory FROM hosts WHERE name = ?1")?;
            let mut write = tx.prepare_cached("UPDATE hosts SET inventory = ?2 WHERE name = ?1")?;
            for (host, installed) in reported {
                let json: Option<String> = read.query_row([host], |r| r.get(0)).optional()?;
                let Some(json) = json else { continue };
                let mut inventory: Vec<InstalledService> =
                    serde_json::from_str(&json).unwrap_or_default();
                inventory.retain(|s| s.name != installed.name);
                inventory.push(installed.clone());
                inventory.sort_by(|a, b| a.name.cmp(&b.name));
                let json = serde_json::to_string(&inventory)
                    .map_err(|e| Error::Internal(format!("inventory of {host}: {e}")))?;
                write.execute(params![host, json])?;
            }
            drop((read, write));
            tx.commit()?;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests;
