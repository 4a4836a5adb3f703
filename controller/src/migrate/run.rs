//! Running one migration file on a database's locked session. In a
//! transaction with its ledger row when it can; otherwise (`--
//! cutover:no-transaction`, or `transactional_ddl = false`) as a committed
//! `running` row, its statements one by one, then `applied`, so a crash
//! in between leaves the row dirty. Statements go one by one, as `psql`
//! sends them, so an error names its line even without a position. A
//! lock timeout (SQLSTATE 55P03) is tried again a bounded number of times
//! with backoff; any other error fails the migration with PostgreSQL's
//! message and the file's line.

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
    /// The file's line: where PostgreSQL's error position points, or the
    /// first line of the statement that failed; `None` when no statement
    /// was to blame (the connection, the ledger).
    pub line: Option<usize>,
    /// PostgreSQL's error (or the client's), one line.
    pub error: String,
    /// How many times it was tried.
    pub tries: u32,
    /// What of it stays in the database.
    pub left: Left,
}

/// What a migration that did not apply left in the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Left {
    /// Its transaction was rolled back: nothing.
    RolledBack,
    /// It ran outside a transaction: what its statements before the
    /// failing one did.
    InPlace,
    /// The connection failed during its `COMMIT`: whether it committed
    /// is unknown until the ledger is read again.
    Unknown,
}

impl Left {
    /// How an error message says it.
    pub fn said(self) -> &'static str {
        match self {
            Left::RolledBack => "rolled back",
            Left::InPlace => "not rolled back: it ran outside a transaction",
            Left::Unknown => "its COMMIT did not complete, so whether it applied is unknown: look with `cutover migrate status`",
        }
    }
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

/// Whether PostgreSQL answered `e` with an ERROR (the transaction is
/// gone, the session goes on), not a FATAL or no answer at all.
fn said_error(e: &tokio_postgres::Error) -> bool {
    e.as_db_error()
        .is_some_and(|d| d.parsed_severity() == Some(tokio_postgres::error::Severity::Error))
}

fn is_lock_timeout(e: &tokio_postgres::Error) -> bool {
    e.code() == Some(&SqlState::LOCK_NOT_AVAILABLE)
}

/// The line in `text` of the error `e` of its statement `stmt`: where
/// PostgreSQL's position points, or else the statement's first line.
fn line_in(text: &str, stmt: &sql::Statement<'_>, e: &tokio_postgres::Error) -> Option<usize> {
    use tokio_postgres::error::ErrorPosition;
    let at = match e.as_db_error().and_then(|d| d.position()) {
        Some(ErrorPosition::Original(p)) => usize::try_from(*p).ok(),
        _ => None,
    };
    at.and_then(|p| sql::line_of(text, stmt.chars_before.checked_add(p)?))
        .or_else(|| sql::first_line(text, stmt))
}

/// How many statements of a file in a transaction are in flight at once:
/// they are sent without waiting for each answer (pipelined), in order,
/// so that a file of 200,000 INSERTs is not 200,000 round trips. Inside a
/// transaction that is safe: after the first error PostgreSQL refuses the
/// rest, and the first error is the one reported.
const IN_FLIGHT: usize = 64;

/// Runs the statements of `text` in order on the transaction `tx`,
/// pipelined; the first error, with its line.
async fn run_pipelined(
    tx: &tokio_postgres::Transaction<'_>,
    text: &str,
) -> Result<(), (Option<usize>, tokio_postgres::Error)> {
    use futures::stream::{FuturesOrdered, StreamExt};
    let mut next = sql::statements(text);
    let mut in_flight = FuturesOrdered::new();
    loop {
        while in_flight.len() < IN_FLIGHT {
            match next.next() {
                Some(stmt) => in_flight.push_back(execute(tx, stmt)),
                None => break,
            }
        }
        match in_flight.next().await {
            None => return Ok(()),
            Some(Ok(())) => {}
            Some(Err((stmt, e))) => return Err((line_in(text, &stmt, &e), e)),
        }
    }
}

/// One statement on `tx`, its error kept with it.
async fn execute<'a>(
    tx: &tokio_postgres::Transaction<'_>,
    stmt: sql::Statement<'a>,
) -> Result<(), (sql::Statement<'a>, tokio_postgres::Error)> {
    tx.batch_execute(stmt.text).await.map_err(|e| (stmt, e))
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
        left: Left::RolledBack,
    };
    let text = w
        .text
        .as_deref()
        .ok_or_else(|| plain("its text was never read from the artifact store".into(), 0))?;
    client
        .batch_execute(&timeouts(db))
        .await
        .map_err(|e| plain(describe(&e), 0))?;
    if w.no_transaction {
        return apply_outside(client, w, text, db.lock_retries, &row(now_ms())).await;
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
        let (line, e, left) = match run_pipelined(&tx, text).await {
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
                    Ok(_) => match tx.commit().await {
                        Ok(()) => return Ok(()),
                        // PostgreSQL said no with an ERROR (a deferred
                        // constraint, a serialization failure): it rolled
                        // back. No answer, or a FATAL that ends the
                        // session (which may come after a local commit,
                        // as when a synchronous-replication wait is
                        // cut): nobody knows.
                        Err(e) if said_error(&e) => (None, e, Left::RolledBack),
                        Err(e) => (None, e, Left::Unknown),
                    },
                    Err(e) => {
                        let _ = tx.rollback().await;
                        (None, e, Left::RolledBack)
                    }
                }
            }
            Err((line, e)) => {
                let _ = tx.rollback().await;
                (line, e, Left::RolledBack)
            }
        };
        if is_lock_timeout(&e) && tries <= db.lock_retries {
            tracing::info!(database, migration = %w.key(), tries, "lock timeout; trying again");
            tokio::time::sleep(backoff(tries)).await;
            continue;
        }
        let failed = Failed {
            line,
            error: describe(&e),
            tries,
            left,
        };
        // A row saying `failed` for a migration that may have committed
        // would be a lie; the ledger says which it was.
        if left == Left::RolledBack {
            let ending = Ending {
                state: "failed",
                finished_ms: now_ms(),
                duration_ms: millis(t0),
                error: Some(&failed.recorded()),
            };
            if let Err(e) = ledger::insert(&*client, &row(started_ms), Some(&ending)).await {
                tracing::warn!(database, migration = %w.key(), error = %describe(&e), "the failed migration's ledger row could not be written");
            }
        }
        return Err(failed);
    }
}

/// The protocol outside a transaction: `running` committed, each
/// statement on its own, then `applied` (or `failed`).
async fn apply_outside(
    client: &Client,
    w: &Wanted,
    text: &str,
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
            left: Left::RolledBack,
        })?;
    let mut tries = 1u32;
    // One at a time, each answer awaited: outside a transaction a
    // statement sent after a failing one would still run.
    for stmt in sql::statements(text) {
        let mut attempt = 0u32;
        loop {
            attempt = attempt.saturating_add(1);
            tries = tries.max(attempt);
            let e = match client.batch_execute(stmt.text).await {
                Ok(()) => break,
                Err(e) => e,
            };
            let line = line_in(text, &stmt, &e);
            if is_lock_timeout(&e) && attempt <= retries && retryable_alone(stmt.text) {
                tracing::info!(database = row.database, migration = %w.key(), attempt, "lock timeout; trying the statement again");
                tokio::time::sleep(backoff(attempt)).await;
                continue;
            }
            let failed = Failed {
                line,
                error: describe(&e),
                tries,
                left: Left::InPlace,
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
        left: Left::InPlace,
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
            left: Left::RolledBack,
        };
        assert_eq!(f.recorded(), "line 3: syntax error");
    }
}
