//! Running one migration file on a database's locked session. In a
//! transaction with its ledger row when it can; otherwise (`--
//! cutover:no-transaction`, or `transactional_ddl = false`) as a committed
//! `running` row, its statements one by one, then `applied`, so a crash
//! in between leaves the row dirty. A lock timeout (SQLSTATE 55P03) is
//! tried again a bounded number of times with backoff; any other error
//! fails the migration with PostgreSQL's message and the file's line.

use std::time::{Duration, Instant};

use cutover_core::views::now_ms;
use tokio_postgres::error::SqlState;
use tokio_postgres::Client;

use super::decide::Wanted;
use super::ledger::{self, Ending, NewRow};
use super::sql;
use super::target::describe;
use crate::config::DatabaseConfig;

/// Why a migration did not apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failed {
    /// The file's line PostgreSQL's error position points at, if it gave one.
    pub line: Option<usize>,
    /// PostgreSQL's error (or the client's), one line.
    pub error: String,
    /// How many times it was tried.
    pub tries: u32,
    /// Whether what it did was rolled back.
    pub rolled_back: bool,
}

impl Failed {
    /// The error as the ledger row keeps it.
    pub fn recorded(&self) -> String {
        match self.line {
            Some(l) => format!("line {l}: {}", self.error),
            None => self.error.clone(),
        }
    }
}

/// The pause before try `n` (1-based) after a lock timeout: 200 ms
/// doubling, at most 5 s.
pub fn backoff(n: u32) -> Duration {
    Duration::from_millis(200)
        .saturating_mul(2u32.saturating_pow(n.saturating_sub(1)))
        .min(Duration::from_secs(5))
}

fn is_lock_timeout(e: &tokio_postgres::Error) -> bool {
    e.code() == Some(&SqlState::LOCK_NOT_AVAILABLE)
}

/// The line of `e`'s position in `text`, the statement starting
/// `chars_before` characters into it.
fn line_of_error(text: &str, chars_before: usize, e: &tokio_postgres::Error) -> Option<usize> {
    use tokio_postgres::error::ErrorPosition;
    match e.as_db_error()?.position()? {
        ErrorPosition::Original(p) => {
            sql::line_of(text, chars_before.checked_add(usize::try_from(*p).ok()?)?)
        }
        ErrorPosition::Internal { .. } => None,
    }
}

/// What a file may have changed in its session that a ledger write or the
/// next file must not inherit: the role and the search path. Run before
/// each ledger write after a file, and (after `RESET ALL`, which resets
/// the other settings) before each file. Neither touches the advisory
/// lock, as `DISCARD ALL` would; the `application_name` given at
/// connection survives `RESET ALL`.
const AS_CONNECTED: &str = "RESET ROLE; SET SESSION AUTHORIZATION DEFAULT; RESET search_path;";

/// What runs before each migration: the session as it was at connection
/// (a file before it may have set a role or a search path, which would
/// change what the next one does and where the ledger is found), then the
/// database's timeouts.
pub fn timeouts(db: &DatabaseConfig) -> String {
    let mut set = format!(
        "RESET ALL; {AS_CONNECTED} SET lock_timeout = '{}ms';",
        db.lock_timeout.as_millis()
    );
    if let Some(t) = db.statement_timeout {
        set.push_str(&format!(" SET statement_timeout = '{}ms';", t.as_millis()));
    }
    set
}

/// Runs `w` on `client`, recording it in the ledger; `Err` when it failed
/// (its row says `failed`), or when the ledger could not be written (a
/// `running` row then stays, dirty).
pub async fn apply(
    client: &mut Client,
    database: &str,
    db: &DatabaseConfig,
    w: &Wanted,
    by: &str,
) -> Result<(), Failed> {
    let checksum = w.checksum();
    let phase = w.phase.as_str();
    let row = |started_ms| NewRow {
        database,
        version: &w.version,
        phase,
        name: &w.name,
        checksum: &checksum,
        applied_by: by,
        started_ms,
    };
    let plain = |error: String, tries: u32| Failed {
        line: None,
        error,
        tries,
        rolled_back: false,
    };
    client
        .batch_execute(&timeouts(db))
        .await
        .map_err(|e| plain(describe(&e), 0))?;
    if w.no_transaction {
        return apply_outside(client, w, db.lock_retries, &row(now_ms())).await;
    }
    let mut tries = 0u32;
    loop {
        tries = tries.saturating_add(1);
        let started_ms = now_ms();
        let t0 = Instant::now();
        let tx = client
            .transaction()
            .await
            .map_err(|e| plain(describe(&e), tries))?;
        let ran = tx.batch_execute(&w.text).await;
        let done = match ran {
            Ok(()) => {
                let ending = Ending {
                    state: "applied",
                    finished_ms: now_ms(),
                    duration_ms: millis(t0),
                    error: None,
                };
                // The ledger row is written as the connecting role, with the
                // session's search path, whatever the file set for itself.
                let recorded = match tx.batch_execute(AS_CONNECTED).await {
                    Ok(()) => ledger::insert(&tx, &row(started_ms), Some(&ending)).await,
                    Err(e) => Err(e),
                };
                match recorded {
                    Ok(_) => tx.commit().await,
                    Err(e) => {
                        let _ = tx.rollback().await;
                        Err(e)
                    }
                }
            }
            Err(e) => {
                let _ = tx.rollback().await;
                Err(e)
            }
        };
        let e = match done {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        if is_lock_timeout(&e) && tries <= db.lock_retries {
            tracing::info!(database, migration = %w.key(), tries, "lock timeout; trying again");
            tokio::time::sleep(backoff(tries)).await;
            continue;
        }
        let failed = Failed {
            line: line_of_error(&w.text, 0, &e),
            error: describe(&e),
            tries,
            rolled_back: true,
        };
        let ending = Ending {
            state: "failed",
            finished_ms: now_ms(),
            duration_ms: millis(t0),
            error: Some(&failed.recorded()),
        };
        if let Err(e) = ledger::insert(&*client, &row(started_ms), Some(&ending)).await {
            tracing::warn!(database, migration = %w.key(), error = %describe(&e), "the failed migration's ledger row could not be written");
        }
        return Err(failed);
    }
}

/// The protocol outside a transaction: `running` committed, each
/// statement on its own, then `applied` (or `failed`).
async fn apply_outside(
    client: &Client,
    w: &Wanted,
    retries: u32,
    row: &NewRow<'_>,
) -> Result<(), Failed> {
    let t0 = Instant::now();
    let id = ledger::insert(client, row, None)
        .await
        .map_err(|e| Failed {
            line: None,
            error: format!("cannot write its ledger row: {}", describe(&e)),
            tries: 0,
            rolled_back: true,
        })?;
    let mut tries = 1u32;
    for stmt in sql::statements(&w.text) {
        let mut attempt = 0u32;
        loop {
            attempt = attempt.saturating_add(1);
            tries = tries.max(attempt);
            let e = match client.batch_execute(stmt.text).await {
                Ok(()) => break,
                Err(e) => e,
            };
            if is_lock_timeout(&e) && attempt <= retries && retryable_alone(stmt.text) {
                tracing::info!(database = row.database, migration = %w.key(), attempt, "lock timeout; trying the statement again");
                tokio::time::sleep(backoff(attempt)).await;
                continue;
            }
            let blank = stmt.text.chars().take_while(|c| c.is_whitespace()).count();
            let failed = Failed {
                line: line_of_error(&w.text, stmt.chars_before, &e)
                    .or_else(|| sql::line_of(&w.text, stmt.chars_before + blank + 1)),
                error: describe(&e),
                tries,
                rolled_back: false,
            };
            let ending = Ending {
                state: "failed",
                finished_ms: now_ms(),
                duration_ms: millis(t0),
                error: Some(&failed.recorded()),
            };
            if let Err(e) = finish(client, id, &ending).await {
                tracing::warn!(database = row.database, migration = %w.key(), error = %describe(&e), "the failed migration's row stays running (dirty)");
            }
            return Err(failed);
        }
    }
    let ending = Ending {
        state: "applied",
        finished_ms: now_ms(),
        duration_ms: millis(t0),
        error: None,
    };
    finish(client, id, &ending).await.map_err(|e| Failed {
        line: None,
        error: format!(
            "its statements ran but its ledger row could not be marked applied ({}); it stays dirty",
            describe(&e)
        ),
        tries,
        rolled_back: false,
    })
}

/// Ends a row written outside a transaction, as the connecting role.
async fn finish(
    client: &Client,
    id: i64,
    ending: &Ending<'_>,
) -> Result<(), tokio_postgres::Error> {
    client.batch_execute(AS_CONNECTED).await?;
    ledger::finish(client, id, ending).await
}

/// Whether a statement run outside a transaction may be tried again after
/// a lock timeout: it rolled back whole, unless it was a `CONCURRENTLY`
/// one, which leaves an invalid index behind (a retry with `IF NOT EXISTS`
/// would then pass over it and record the migration applied).
fn retryable_alone(statement: &str) -> bool {
    !statement.to_ascii_uppercase().contains("CONCURRENTLY")
}

fn millis(t0: Instant) -> i64 {
    i64::try_from(t0.elapsed().as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_concurrent_index_build_is_never_tried_again_alone() {
        assert!(!retryable_alone("CREATE INDEX concurrently i ON t (x);"));
        assert!(!retryable_alone("DROP INDEX CONCURRENTLY IF EXISTS i;"));
        assert!(retryable_alone("ALTER TABLE t ADD COLUMN y int;"));
    }

    #[test]
    fn the_session_is_reset_before_the_timeouts_are_set() {
        let db: DatabaseConfig =
            cutover_core::toml_text::parse("url = \"postgresql://u@h/db\"").unwrap();
        let set = timeouts(&db);
        assert!(set.starts_with("RESET ALL; RESET ROLE;"), "{set}");
        assert!(set.contains("SET lock_timeout = '5000ms'"), "{set}");
    }

    #[test]
    fn backoff_doubles_from_200ms_to_at_most_5s() {
        assert_eq!(backoff(1), Duration::from_millis(200));
        assert_eq!(backoff(2), Duration::from_millis(400));
        assert_eq!(backoff(3), Duration::from_millis(800));
        assert_eq!(backoff(40), Duration::from_secs(5));
    }

    #[test]
    fn a_failure_is_recorded_with_its_line() {
        let f = Failed {
            line: Some(3),
            error: "syntax error".into(),
            tries: 1,
            rolled_back: true,
        };
        assert_eq!(f.recorded(), "line 3: syntax error");
    }
}
