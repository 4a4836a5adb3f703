//! Hosts in the store: certificate serials, renewal, revocation,
//! forgetting, hellos and disconnects. Join tokens and enrollment are in
//! [`super::tokens`].

use cutover_core::views::{now_ms, HostView, InstalledService};
use rusqlite::{params, OptionalExtension, TransactionBehavior};

use super::{insert_event, Store};
use crate::error::{Error, Result};

/// A host's certificates as recorded: the one issued last and the one its
/// last renewal replaced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertSerials {
    pub host: String,
    pub current: String,
    /// Of the current certificate, in ms since the epoch.
    pub not_after: i64,
    pub previous: Option<String>,
}

fn cert_serials_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<CertSerials> {
    Ok(CertSerials {
        host: r.get(0)?,
        current: r.get(1)?,
        not_after: r.get(2)?,
        previous: r.get(3)?,
    })
}

/// What the store holds of a host a token names.
pub(super) struct Standing {
    pub(super) revoked: bool,
    pub(super) serial: String,
    pub(super) not_after: i64,
}

impl Standing {
    pub(super) fn of(c: &rusqlite::Connection, host: &str) -> Result<Option<Standing>> {
        Ok(c.query_row(
            "SELECT revoked_at, cert_serial, cert_not_after FROM hosts WHERE name = ?1",
            [host],
            |r| {
                Ok(Standing {
                    revoked: r.get::<_, Option<i64>>(0)?.is_some(),
                    serial: r.get(1)?,
                    not_after: r.get(2)?,
                })
            },
        )
        .optional()?)
    }

    /// Enrolled with a certificate that still opens sessions: a new
    /// identity under this name takes the host over, so it needs
    /// `--replace`. A host whose certificate expired enrolls again freely.
    pub(super) fn holds_valid_cert(&self, now: i64) -> bool {
        !self.revoked && self.not_after > now
    }
}

impl Store {
    pub fn record_renewal(&self, host: &str, serial: &str, not_after: i64) -> Result<()> {
        self.with(|c| {
            let tx = c.transaction()?;
            tx.execute(
                "UPDATE hosts SET previous_serial = cert_serial, cert_serial = ?2, cert_not_after = ?3
                 WHERE name = ?1",
                params![host, serial, not_after],
            )?;
            insert_event(
                &tx,
                "host.renewed",
                Some(host),
                &format!("certificate {serial}"),
            )?;
            tx.commit()?;
            Ok(())
        })
    }

    /// One host's recorded certificates (a primary-key read).
    pub fn cert_serials(&self, host: &str) -> Result<Option<CertSerials>> {
        self.with(|c| {
            Ok(c.query_row(
                "SELECT name, cert_serial, cert_not_after, previous_serial FROM hosts WHERE name = ?1",
                [host],
                cert_serials_row,
            )
            .optional()?)
        })
    }

    /// Every host's recorded certificates, in one read (at start).
    pub fn all_cert_serials(&self) -> Result<Vec<CertSerials>> {
        self.with(|c| {
            let mut stmt =
                c.prepare("SELECT name, cert_serial, cert_not_after, previous_serial FROM hosts")?;
            let rows = stmt
                .query_map([], cert_serials_row)?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
    }

    /// Marks a host revoked. Returns false when it was already revoked.
    pub fn revoke_host(&self, host: &str) -> Result<bool> {
        self.with(|c| {
            let tx = c.transaction()?;
            let state: Option<Option<i64>> = tx
                .query_row(
                    "SELECT revoked_at FROM hosts WHERE name = ?1",
                    [host],
                    |r| r.get(0),
                )
                .optional()?;
            match state {
                None => return Err(Error::NotFound(format!("no host named {host:?}"))),
                Some(Some(_)) => return Ok(false),
                Some(None) => {}
            }
            tx.execute(
                "UPDATE hosts SET revoked_at = ?2 WHERE name = ?1",
                params![host, now_ms()],
            )?;
            tx.execute(
                "DELETE FROM join_tokens WHERE host = ?1 AND used_at IS NULL",
                [host],
            )?;
            insert_event(&tx, "host.revoked", Some(host), "revoked by operator")?;
            tx.commit()?;
            Ok(true)
        })
    }

    pub fn revoked_hosts(&self) -> Result<Vec<String>> {
        self.with(|c| {
            let mut stmt = c.prepare("SELECT name FROM hosts WHERE revoked_at IS NOT NULL")?;
            let rows = stmt
                .query_map([], |r| r.get(0))?
                .collect::<Result<Vec<String>, _>>()?;
            Ok(rows)
        })
    }

    /// Removes a revoked host's record and its unused join tokens, so its
    /// name can enroll again with a fresh identity. Its events and the
    /// rollouts that name it are kept. Refused for a host not revoked.
    pub fn forget_host(&self, host: &str) -> Result<()> {
        self.with(|c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            match Standing::of(&tx, host)? {
                None => return Err(Error::NotFound(format!("no host named {host:?}"))),
                Some(s) if !s.revoked => {
                    return Err(Error::Conflict(format!(
                        "host {host:?} is not revoked; only a revoked host can be forgotten: `cutover host revoke {host}` first"
                    )))
                }
                Some(_) => {}
            }
            tx.execute("DELETE FROM hosts WHERE name = ?1", [host])?;
            tx.execute(
                "DELETE FROM join_tokens WHERE host = ?1 AND used_at IS NULL",
                [host],
            )?;
            // What the old machine ran is no guide for whatever enrolls
            // under the name next: a manual rollback must not send it there.
            tx.execute("DELETE FROM host_releases WHERE host = ?1", [host])?;
            insert_event(
                &tx,
                "host.forgotten",
                Some(host),
                "record removed by operator; the name may enroll again with a new join token",
            )?;
            tx.commit()?;
            Ok(())
        })
    }

    pub fn record_hello(
        &self,
        host: &str,
        agent_version: &str,
        inventory: &[InstalledService],
    ) -> Result<bool> {
        use cutover_core::views::{STATE_JOURNAL_MISSING, STATE_JOURNAL_UNREADABLE};
        // A broken journal is an event as well as a state: the operator
        // learns of it from `cutover events`, not only by looking.
        let broken: Vec<String> = inventory
            .iter()
            .filter(|s| s.state == STATE_JOURNAL_UNREADABLE || s.state == STATE_JOURNAL_MISSING)
            .map(|s| format!("{} ({})", s.name, s.state))
            .collect();
        let inventory = serde_json::to_string(inventory)
            .map_err(|e| Error::Internal(format!("inventory of {host}: {e}")))?;
        self.with(|c| {
            let tx = c.transaction()?;
            let n = tx.execute(
                "UPDATE hosts SET agent_version = ?2, inventory = ?3, last_seen = ?4 WHERE name = ?1 AND revoked_at IS NULL",
                params![host, agent_version, inventory, now_ms()],
            )?;
            if n == 1 && !broken.is_empty() {
                let detail = format!(
                    "journal of {}: the agent keeps every release and refuses commands for these services until journal.json is repaired or removed (cutover diag {host} names the file)",
                    broken.join(", ")
                );
                insert_event(&tx, "host.journal_broken", Some(host), &detail)?;
            }
            tx.commit()?;
            Ok(n == 1)
        })
    }

    pub fn record_disconnect(&self, host: &str, last_seen: i64, reason: &str) -> Result<()> {
        self.with(|c| {
            let tx = c.transaction()?;
            tx.execute(
                "UPDATE hosts SET last_seen = ?2 WHERE name = ?1",
                params![host, last_seen],
            )?;
            insert_event(&tx, "session.closed", Some(host), reason)?;
            tx.commit()?;
            Ok(())
        })
    }

    /// Every host as stored; liveness is filled in by the caller.
    pub fn hosts(&self) -> Result<Vec<HostView>> {
        self.with(|c| {
            let mut stmt = c.prepare(
                "SELECT name, enrolled_at, cert_serial, cert_not_after, revoked_at, agent_version, last_seen, inventory
                 FROM hosts ORDER BY name",
            )?;
            let rows = stmt
                .query_map([], |r| {
                    let inventory: String = r.get(7)?;
                    Ok(HostView {
                        name: r.get(0)?,
                        online: false,
                        revoked: r.get::<_, Option<i64>>(4)?.is_some(),
                        agent_version: r.get(5)?,
                        enrolled_at: cutover_core::views::from_ms(r.get(1)?),
                        last_seen: r
                            .get::<_, Option<i64>>(6)?
                            .and_then(cutover_core::views::from_ms),
                        connected_since: None,
                        cert_serial: r.get(2)?,
                        cert_not_after: cutover_core::views::from_ms(r.get(3)?),
                        services: serde_json::from_str(&inventory).unwrap_or_default(),
                    })
                })?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
    }
}
