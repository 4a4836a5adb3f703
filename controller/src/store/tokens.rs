//! Join tokens in the store: creating, listing and revoking them, and
//! enrollment, which consumes one and records the host's certificate.

use cutover_core::views::{from_ms, now_ms, JoinTokenView};
use rusqlite::{params, OptionalExtension, TransactionBehavior};

use super::hosts::Standing;
use super::{insert_event, Store};
use crate::error::{Error, Result};

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

impl Store {
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
}

fn when(ms: i64) -> String {
    cutover_core::views::from_ms(ms)
        .map(cutover_core::manifest::rfc3339)
        .unwrap_or_else(|| format!("{ms} ms after the epoch"))
}
