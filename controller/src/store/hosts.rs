//! Hosts and their join tokens in the store: enrollment, certificate
//! serials, renewal, revocation, forgetting, hellos and disconnects.

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

/// Why a join token was not accepted.
#[derive(Debug, PartialEq, Eq)]
pub enum TokenProblem {
    Unknown,
    Used { host: String, at: i64 },
    Expired { host: String, at: i64 },
    HostRevoked { host: String },
}

impl Store {
    // ------------------------------------------------------------- tokens

    pub fn create_token(&self, token_hash: &str, host: &str, expires_at: i64) -> Result<()> {
        self.with(|c| {
            let revoked: Option<Option<i64>> = c
                .query_row("SELECT revoked_at FROM hosts WHERE name = ?1", [host], |r| {
                    r.get(0)
                })
                .optional()?;
            if let Some(Some(_)) = revoked {
                return Err(Error::Conflict(format!(
                    "host {host:?} is revoked; a revoked host cannot enroll again"
                )));
            }
            let tx = c.transaction()?;
            tx.execute(
                "INSERT INTO join_tokens (token_hash, host, created_at, expires_at) VALUES (?1, ?2, ?3, ?4)",
                params![token_hash, host, now_ms(), expires_at],
            )?;
            insert_event(&tx, "token.created", Some(host), "join token created")?;
            tx.commit()?;
            Ok(())
        })
    }

    /// Consumes a join token and records the host's certificate, in one
    /// transaction: a token is used at most once even under races.
    /// `issue` makes the certificate once the token checked out.
    pub fn enroll<T>(
        &self,
        token_hash: &str,
        issue: impl FnOnce(&str) -> Result<(T, String, i64)>,
    ) -> Result<std::result::Result<(String, T), TokenProblem>> {
        self.with(|c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let row: Option<(String, i64, Option<i64>)> = tx
                .query_row(
                    "SELECT host, expires_at, used_at FROM join_tokens WHERE token_hash = ?1",
                    [token_hash],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .optional()?;
            let Some((host, expires_at, used_at)) = row else {
                return Ok(Err(TokenProblem::Unknown));
            };
            if let Some(at) = used_at {
                return Ok(Err(TokenProblem::Used { host, at }));
            }
            if expires_at <= now_ms() {
                return Ok(Err(TokenProblem::Expired {
                    host,
                    at: expires_at,
                }));
            }
            let revoked: Option<i64> = tx
                .query_row("SELECT revoked_at FROM hosts WHERE name = ?1", [&host], |r| {
                    r.get(0)
                })
                .optional()?
                .flatten();
            if revoked.is_some() {
                return Ok(Err(TokenProblem::HostRevoked { host }));
            }
            let (out, serial, not_after) = issue(&host)?;
            let now = now_ms();
            tx.execute(
                "UPDATE join_tokens SET used_at = ?1 WHERE token_hash = ?2",
                params![now, token_hash],
            )?;
            tx.execute(
                "INSERT INTO hosts (name, enrolled_at, cert_serial, cert_not_after) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT(name) DO UPDATE SET enrolled_at = ?2, cert_serial = ?3, cert_not_after = ?4,
                                                 previous_serial = NULL",
                params![host, now, serial, not_after],
            )?;
            insert_event(&tx, "host.enrolled", Some(&host), &format!("certificate {serial}"))?;
            tx.commit()?;
            Ok(Ok((host, out)))
        })
    }

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

    // -------------------------------------------------------------- hosts

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
