//! The fleet config, rollouts and host inventories as reports update them.
//! A rollout is stored whole (its state machine's value) together with the
//! events of the step that produced it, in one transaction.

use cutover_core::rollout::{EventView, Rollout};
use cutover_core::views::{now_ms, InstalledService};
use rusqlite::{params, OptionalExtension, TransactionBehavior};

use super::{insert_event, Store};
use crate::error::{Error, Result};

/// One event line a rollout step produced.
pub struct LogLine {
    pub kind: String,
    pub host: Option<String>,
    pub detail: String,
}

const UNFINISHED: &str = "status IN ('Running', 'Paused', 'RollingBack')";

fn encode(r: &Rollout) -> Result<String> {
    serde_json::to_string(r).map_err(|e| Error::Internal(format!("rollout {}: {e}", r.id)))
}

fn decode(id: u64, json: &str) -> Result<Rollout> {
    serde_json::from_str(json)
        .map_err(|e| Error::Internal(format!("rollout {id} in the store cannot be read: {e}")))
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
                    return Err(Error::Conflict(format!(
                        "rollout {other} ({status}) is already moving service {s:?}; wait for it to finish, or `cutover rollout abort {other}`"
                    )));
                }
            }
            tx.execute(
                "INSERT INTO rollouts (id, status, release, services, created_at, updated_at, state)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?5, ?6)",
                params![id, r.status.to_string(), r.release, services.join(","), r.created_ms, encode(&r)?],
            )?;
            tx.execute(
                "INSERT INTO events (at, kind, host, detail, rollout) VALUES (?1, 'rollout.created', NULL, ?2, ?3)",
                params![now_ms(), format!("{:?} to release {} of {}", r.kind, r.release, services.join(", ")), id],
            )?;
            tx.commit()?;
            Ok(r)
        })
    }

    /// Saves a rollout's new state with the events that explain it.
    pub fn save_rollout(&self, r: &Rollout, events: &[LogLine]) -> Result<()> {
        let state = encode(r)?;
        self.with(|c| {
            let tx = c.transaction()?;
            tx.execute(
                "UPDATE rollouts SET status = ?2, updated_at = ?3, state = ?4 WHERE id = ?1",
                params![r.id, r.status.to_string(), r.updated_ms, state],
            )?;
            for e in events {
                tx.execute(
                    "INSERT INTO events (at, kind, host, detail, rollout) VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![r.updated_ms, e.kind, e.host, e.detail, r.id],
                )?;
            }
            tx.commit()?;
            Ok(())
        })
    }

    pub fn rollout(&self, id: u64) -> Result<Option<Rollout>> {
        let json: Option<String> = self.with(|c| {
            Ok(
                c.query_row("SELECT state FROM rollouts WHERE id = ?1", [id], |r| {
                    r.get(0)
                })
                .optional()?,
            )
        })?;
        json.map(|j| decode(id, &j)).transpose()
    }

    /// Rollouts, newest first.
    pub fn rollouts(&self, limit: usize) -> Result<Vec<Rollout>> {
        self.load(&format!(
            "SELECT id, state FROM rollouts ORDER BY id DESC LIMIT {limit}"
        ))
    }

    pub fn unfinished_rollouts(&self) -> Result<Vec<Rollout>> {
        self.load(&format!(
            "SELECT id, state FROM rollouts WHERE {UNFINISHED} ORDER BY id"
        ))
    }

    fn load(&self, sql: &str) -> Result<Vec<Rollout>> {
        let rows: Vec<(u64, String)> = self.with(|c| {
            let mut stmt = c.prepare(sql)?;
            let rows = stmt
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })?;
        rows.iter().map(|(id, j)| decode(*id, j)).collect()
    }

    /// The event log, oldest first; one rollout's events when `rollout` is set.
    pub fn events(&self, rollout: Option<u64>, limit: usize) -> Result<Vec<EventView>> {
        self.with(|c| {
            let mut stmt = c.prepare(
                "SELECT at, kind, host, rollout, detail FROM
                   (SELECT id, at, kind, host, rollout, detail FROM events
                    WHERE ?1 IS NULL OR rollout = ?1 ORDER BY id DESC LIMIT ?2)
                 ORDER BY id",
            )?;
            let rows = stmt
                .query_map(params![rollout, limit as i64], |r| {
                    Ok(EventView {
                        at_ms: r.get(0)?,
                        kind: r.get(1)?,
                        host: r.get(2)?,
                        rollout: r.get(3)?,
                        detail: r.get(4)?,
                    })
                })?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
    }

    /// Replaces one service in a host's stored inventory, as its report says.
    /// Records what each (host, service) now runs, in one transaction.
    pub fn record_installed(&self, reported: &[(String, InstalledService)]) -> Result<()> {
        self.with(|c| {
            let tx = c.transaction()?;
            for (host, installed) in reported {
                let json: Option<String> = tx
                    .query_row("SELECT inventory FROM hosts WHERE name = ?1", [host], |r| {
                        r.get(0)
                    })
                    .optional()?;
                let Some(json) = json else { continue };
                let mut inventory: Vec<InstalledService> =
                    serde_json::from_str(&json).unwrap_or_default();
                inventory.retain(|s| s.name != installed.name);
                inventory.push(installed.clone());
                inventory.sort_by(|a, b| a.name.cmp(&b.name));
                let json = serde_json::to_string(&inventory)
                    .map_err(|e| Error::Internal(format!("inventory of {host}: {e}")))?;
                tx.execute(
                    "UPDATE hosts SET inventory = ?2 WHERE name = ?1",
                    params![host, json],
                )?;
            }
            tx.commit()?;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cutover_core::rollout::{Plan, RolloutKind, RolloutStatus};

    fn rollout(id: u64, services: &[&str]) -> Rollout {
        let mut r = crate::rollout::new_rollout(
            id,
            RolloutKind::Upgrade,
            Plan {
                release: "1.0.0".into(),
                services: vec![],
                carried: vec![],
                offline: vec![],
            },
            false,
            1,
        );
        // Only the names matter for conflicts.
        let fleet = cutover_core::fleet::FleetConfig::parse(
            "f",
            "[services.x]\nhosts=[\"h\"]\nrunner=\"systemd\"\nunit=\"x\"\n",
        )
        .unwrap();
        for s in services {
            r.plan.services.push(cutover_core::rollout::ServicePlan {
                service: s.to_string(),
                level: 0,
                target: Default::default(),
                sha256: cutover_core::Sha256Digest::of(b""),
                size: 0,
                batches: vec![],
                unchanged: vec![],
                config: fleet.services["x"].clone(),
                image: None,
                swap_back: false,
            });
        }
        r
    }

    #[test]
    fn a_second_rollout_of_a_busy_service_is_refused_until_the_first_ends() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("state.db")).unwrap();
        let mut first = s.create_rollout(|id| rollout(id, &["api", "db"])).unwrap();
        assert_eq!(first.id, 1);
        let e = s
            .create_rollout(|id| rollout(id, &["db"]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("rollout 1 (Running) is already moving service \"db\""),
            "{e}"
        );
        assert_eq!(s.create_rollout(|id| rollout(id, &["web"])).unwrap().id, 2);
        first.status = RolloutStatus::Succeeded;
        s.save_rollout(
            &first,
            &[LogLine {
                kind: "k".into(),
                host: None,
                detail: "done".into(),
            }],
        )
        .unwrap();
        assert_eq!(s.create_rollout(|id| rollout(id, &["db"])).unwrap().id, 3);
        assert_eq!(s.unfinished_rollouts().unwrap().len(), 2);
        let ev = s.events(Some(1), 10).unwrap();
        assert_eq!(
            ev.iter().map(|e| e.kind.as_str()).collect::<Vec<_>>(),
            ["rollout.created", "k"]
        );
    }
}
