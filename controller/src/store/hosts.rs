//! Hosts and their join tokens in the store: enrollment, certificate
//! serials, renewal, revocation, forgetting, hellos and disconnects.

use cutover_core::views::{from_ms, now_ms, HostView, InstalledService, JoinTokenView};
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
    Used {
        host: String,
        at: i64,
    },
    Expired {
        host: String,
        at: i64,
    },
    HostRevoked {
        host: String,
    },
    /// The host holds a certificate still valid until `until` and the
    /// token was not made with `--replace`.
    HostEnrolled {
        host: String,
        until: i64,
    },
}

/// What the store holds of a host a token names.
struct Standing {
    revoked: bool,
    serial: String,
    not_after: i64,
}

impl Standing {
    fn of(c: &rusqlite::Connection, host: &str) -> Result<Option<Standing>> {
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
    fn holds_valid_cert(&self, now: i64) -> bool {
        !self.revoked && self.not_after > now
    }
}

impl Store {
    // ------------------------------------------------------------- tokens

    /// A join token for `host` that may not take over an enrolled host.
    pub fn create_token(&self, token_hash: &str, host: &str, expires_at: i64) -> Result<()> {
        self.create_token_with(token_hash, host, expires_at, false)
    }

    /// A join token for `host`. A host that holds a valid certificate gets
    /// one only with `replace`; its certificate is refused once the token
    /// has enrolled a new one. A revoked host gets none.
    pub fn create_token_with(
        &self,
        token_hash: &str,
        host: &str,
        expires_at: i64,
        replace: bool,
    ) -> Result<()> {
        self.with(|c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let standing = Standing::of(&tx, host)?;
            let detail = match &standing {
                Some(s) if s.revoked => {
                    return Err(Error::Conflict(format!(
                        "host {host:?} is revoked and cannot enroll again; `cutover host forget {host}` removes its record so the name can enroll afresh"
                    )))
                }
                Some(s) if s.holds_valid_cert(now_ms()) => {
                    if !replace {
                        return Err(Error::Conflict(format!(
                            "host {host:?} is already enrolled (its certificate is valid until {}); a new token would hand its name to whoever uses it: pass --replace to replace the host's identity (its current certificate is refused once the new one is issued)",
                            when(s.not_after)
                        )));
                    }
                    format!(
                        "join token created to replace certificate {}",
                        s.serial
                    )
                }
                _ => "join token created".to_string(),
            };
            tx.execute(
                "INSERT INTO join_tokens (token_hash, host, created_at, expires_at, replaces) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![token_hash, host, now_ms(), expires_at, replace],
            )?;
            insert_event(&tx, "token.created", Some(host), &detail)?;
            tx.commit()?;
            Ok(())
        })
    }

    /// Join tokens not yet used and not expired at `now`, oldest first.
    pub fn open_tokens(&self, now: i64) -> Result<Vec<JoinTokenView>> {
        self.with(|c| {
            let mut stmt = c.prepare(
                "SELECT host, created_at, expires_at, replaces FROM join_tokens
                 WHERE used_at IS NULL AND expires_at > ?1 ORDER BY created_at, host",
            )?;
            let rows = stmt
                .query_map([now], |r| {
                    Ok(JoinTokenView {
                        host: r.get(0)?,
                        created: from_ms(r.get(1)?),
                        expires: from_ms(r.get(2)?),
                        replaces: r.get(3)?,
                    })
                })?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
    }

    /// Drops `host`'s unused join tokens (expired ones too: none can
    /// enroll any more); returns how many were still usable. Recorded as
    /// an event when there were any.
    pub fn revoke_tokens(&self, host: &str, now: i64) -> Result<usize> {
        self.with(|c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let usable: i64 = tx.query_row(
                "SELECT count(*) FROM join_tokens WHERE host = ?1 AND used_at IS NULL AND expires_at > ?2",
                params![host, now],
                |r| r.get(0),
            )?;
            tx.execute(
                "DELETE FROM join_tokens WHERE host = ?1 AND used_at IS NULL",
                [host],
            )?;
            if usable > 0 {
                insert_event(
                    &tx,
                    "token.revoked",
                    Some(host),
                    &format!("{usable} unused join token(s) revoked by operator"),
                )?;
            }
            tx.commit()?;
            Ok(usize::try_from(usable).unwrap_or(0))
        })
    }

    /// Consumes a join token and records the host's certificate, in one
    /// transaction: a token is used at most once even under races.
    /// `issue` makes the certificate once the token checked out. A token
    /// made without `--replace` does not enroll a host that holds a valid
    /// certificate (another token enrolled it since this one was made).
    pub fn enroll<T>(
        &self,
        token_hash: &str,
        issue: impl FnOnce(&str) -> Result<(T, String, i64)>,
    ) -> Result<std::result::Result<(String, T), TokenProblem>> {
        self.with(|c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let row: Option<(String, i64, Option<i64>, bool)> = tx
                .query_row(
                    "SELECT host, expires_at, used_at, replaces FROM join_tokens WHERE token_hash = ?1",
                    [token_hash],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
                )
                .optional()?;
            let Some((host, expires_at, used_at, replaces)) = row else {
                return Ok(Err(TokenProblem::Unknown));
            };
            if let Some(at) = used_at {
                return Ok(Err(TokenProblem::Used { host, at }));
            }
            let now = now_ms();
            if expires_at <= now {
                return Ok(Err(TokenProblem::Expired {
                    host,
                    at: expires_at,
                }));
            }
            let standing = Standing::of(&tx, &host)?;
            let replaced = match standing {
                Some(s) if s.revoked => return Ok(Err(TokenProblem::HostRevoked { host })),
                Some(s) if s.holds_valid_cert(now) => {
                    if !replaces {
                        return Ok(Err(TokenProblem::HostEnrolled {
                            host,
                            until: s.not_after,
                        }));
                    }
                    Some(s.serial)
                }
                _ => None,
            };
            let (out, serial, not_after) = issue(&host)?;
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
            if let Some(old) = replaced {
                insert_event(
                    &tx,
                    "host.replaced",
                    Some(&host),
                    &format!("certificate {old} revoked: replaced by {serial}, enrolled with a --replace token"),
                )?;
            }
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

fn when(ms: i64) -> String {
    cutover_core::views::from_ms(ms)
        .map(cutover_core::manifest::rfc3339)
        .unwrap_or_else(|| format!("{ms} ms after the epoch"))
}
