//! What the controller last saw of each data migration, one row per
//! (service, id), with every change of state in the event log. A row that
//! cannot be read is an error naming it, never taken for "never ran".

use cutover_core::data_migration::{Record, State, Status, Verify};
use rusqlite::{params, Connection, OptionalExtension};

use super::{insert_event, Store};
use crate::error::{Error, Result};

fn read(c: &Connection, service: &str, id: &str) -> Result<Option<Record>> {
    let json: Option<String> = c
        .query_row(
            "SELECT record FROM data_migrations WHERE service = ?1 AND id = ?2",
            params![service, id],
            |r| r.get(0),
        )
        .optional()?;
    json.map(|j| parse(service, id, &j)).transpose()
}

fn parse(service: &str, id: &str, json: &str) -> Result<Record> {
    serde_json::from_str(json).map_err(|e| {
        Error::Internal(format!(
            "the stored state of data migration {service}.{id} cannot be read ({e}); it is kept as it is: run `cutover data-migrate status {service}.{id}` to ask its host again"
        ))
    })
}

fn write(c: &Connection, r: &Record) -> Result<()> {
    let json = serde_json::to_string(r)
        .map_err(|e| Error::Internal(format!("data migration {}: {e}", r.key())))?;
    c.execute(
        "INSERT INTO data_migrations (service, id, record) VALUES (?1, ?2, ?3)
         ON CONFLICT (service, id) DO UPDATE SET record = excluded.record",
        params![r.service, r.id, json],
    )?;
    Ok(())
}

impl Store {
    /// Whether `host`'s stored inventory lists `service`.
    pub fn host_runs(&self, host: &str, service: &str) -> Result<bool> {
        self.with(|c| {
            let json: Option<String> = c
                .query_row("SELECT inventory FROM hosts WHERE name = ?1", [host], |r| {
                    r.get(0)
                })
                .optional()?;
            let Some(json) = json else { return Ok(false) };
            let inventory: Vec<cutover_core::views::InstalledService> = serde_json::from_str(&json)
                .map_err(|e| Error::Internal(format!("stored inventory of {host}: {e}")))?;
            Ok(inventory.iter().any(|s| s.name == service))
        })
    }

    pub fn data_migration(&self, service: &str, id: &str) -> Result<Option<Record>> {
        self.with(|c| read(c, service, id))
    }

    /// Every stored record, each readable or the error naming it.
    pub fn data_migrations(&self) -> Result<Vec<std::result::Result<Record, Error>>> {
        self.with(|c| {
            let mut stmt =
                c.prepare("SELECT service, id, record FROM data_migrations ORDER BY service, id")?;
            let rows = stmt
                .query_map([], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                    ))
                })?
                .collect::<std::result::Result<Vec<_>, _>>()?;
            Ok(rows.iter().map(|(s, i, j)| parse(s, i, j)).collect())
        })
    }

    /// What an agent following a run reports: taken only for a migration
    /// this controller asked that host about last (the record names it), so
    /// a host can neither make up migrations nor speak for another's.
    pub fn followed_data_migration(
        &self,
        host: &str,
        (service, id): (&str, &str),
        status: Status,
    ) -> Result<Record> {
        let asked = self.data_migration(service, id)?;
        if asked.as_ref().and_then(|r| r.host.as_deref()) != Some(host)
            || status.would_move.is_some()
        {
            return Err(Error::Refused(format!(
                "host {host} reported data migration {service}.{id}, which this controller did not ask it about"
            )));
        }
        self.observe_data_migration(host, (service, id), status)
    }

    /// Records what `host` said of (service, id), with an event when its
    /// state changed; returns the record.
    pub fn observe_data_migration(
        &self,
        host: &str,
        (service, id): (&str, &str),
        status: Status,
    ) -> Result<Record> {
        self.with(|c| {
            let tx = c.transaction()?;
            let prev = read(&tx, service, id)?;
            let dry = status.would_move.is_some();
            let (r, event) = Record::observe(
                prev,
                (service, id),
                host,
                status,
                time::OffsetDateTime::now_utc(),
            );
            if dry {
                return Ok(r);
            }
            write(&tx, &r)?;
            if let Some(detail) = event {
                let kind = format!("data_migration.{}", r.status.state);
                insert_event(&tx, &kind, Some(host), &detail)?;
            }
            tx.commit()?;
            Ok(r)
        })
    }

    /// An operator asked for `action` of (service, id) on `host`: the
    /// request is an event with their name, and the record remembers them.
    pub fn data_migration_requested(
        &self,
        operator: &str,
        host: &str,
        (service, id): (&str, &str),
        action: &str,
    ) -> Result<()> {
        self.with(|c| {
            let tx = c.transaction()?;
            if let Some(mut r) = read(&tx, service, id)? {
                r.requested_by = Some(operator.to_string());
                write(&tx, &r)?;
            }
            insert_event(
                &tx,
                "data_migration.requested",
                Some(host),
                &format!("{service}.{id}: {action} asked by {operator} on {host}"),
            )?;
            tx.commit()?;
            Ok(())
        })
    }

    /// Records a verify of (service, id) made on `host`.
    pub fn verified_data_migration(
        &self,
        host: &str,
        (service, id): (&str, &str),
        verify: Verify,
        asked: time::OffsetDateTime,
    ) -> Result<Record> {
        self.with(|c| {
            let tx = c.transaction()?;
            // What a verify says is about the data as of when it was asked.
            let now = asked;
            let mut r = match read(&tx, service, id)? {
                Some(r) => r,
                None => {
                    Record::observe(
                        None,
                        (service, id),
                        host,
                        Status::unknown("not yet asked"),
                        now,
                    )
                    .0
                }
            };
            let detail = if verify.ok {
                format!(
                    "{}: verify passed on {host} ({} checks)",
                    r.key(),
                    verify.checks.len()
                )
            } else if let Some(why) = &verify.reason {
                format!("{}: verify gave no verdict on {host}: {why}", r.key())
            } else {
                format!(
                    "{}: verify failed on {host}: {}",
                    r.key(),
                    verify.failures().join("; ")
                )
            };
            let kind = if verify.ok {
                "data_migration.verified"
            } else {
                "data_migration.verify_failed"
            };
            r.verify = Some(verify);
            r.verified_at = Some(now);
            write(&tx, &r)?;
            insert_event(&tx, kind, Some(host), &detail)?;
            tx.commit()?;
            Ok(r)
        })
    }

    /// `host` went offline: what it was running is now unknown.
    pub fn data_migrations_lost_with(&self, host: &str) -> Result<usize> {
        let records = self.data_migrations()?;
        let mut lost = 0;
        for r in records.into_iter().flatten() {
            if r.host.as_deref() == Some(host) && r.status.state == State::Running {
                let mut s = r.status.clone();
                s.state = State::Unknown;
                s.rate = None;
                s.reason = Some(format!(
                    "host {host} went offline while it ran; the run may go on there, cutover cannot see it"
                ));
                self.observe_data_migration(host, (&r.service, &r.id), s)?;
                lost += 1;
            }
        }
        Ok(lost)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn running() -> Status {
        Status {
            state: State::Running,
            done: 1,
            ..Status::unknown("")
        }
    }

    #[test]
    fn a_host_reports_only_what_it_was_asked_about_and_a_dry_run_stores_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("state.db")).unwrap();
        let k = ("orders", "backfill");
        // Made up, or another host's: refused, nothing stored.
        assert!(s.followed_data_migration("h1", k, running()).is_err());
        assert!(s.data_migration(k.0, k.1).unwrap().is_none());
        let dry = Status {
            would_move: Some(5),
            ..running()
        };
        s.observe_data_migration("h1", k, dry.clone()).unwrap();
        assert!(
            s.data_migration(k.0, k.1).unwrap().is_none(),
            "a dry run stores nothing"
        );
        s.observe_data_migration("h1", k, running()).unwrap();
        assert!(s.followed_data_migration("h2", k, running()).is_err());
        assert!(s.followed_data_migration("h1", k, dry).is_err());
        let r = s
            .followed_data_migration(
                "h1",
                k,
                Status {
                    done: 7,
                    ..running()
                },
            )
            .unwrap();
        assert_eq!(r.status.done, 7);
        // Gone offline: unknown, with the reason.
        assert_eq!(s.data_migrations_lost_with("h1").unwrap(), 1);
        let r = s.data_migration(k.0, k.1).unwrap().unwrap();
        assert_eq!(r.status.state, State::Unknown);
        assert!(r.status.reason.unwrap().contains("went offline"));
    }
}
