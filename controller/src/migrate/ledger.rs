//! The `_migrations` ledger in each target database: made by the first
//! `migrate` (under the database's lock), versioned by its
//! `_migrations_schema` row, read back bounded, and written one row per
//! migration run. Repaired rows are kept, marked with who repaired them
//! and when, so the ledger is the whole history.

use cutover_core::migration_views::LedgerEntry;
use cutover_core::views::from_ms;
use tokio_postgres::GenericClient;

use super::target::describe;
use crate::error::{Error, Result};

/// The ledger's own schema version, in `_migrations_schema`.
pub const SCHEMA_VERSION: i32 = 1;
/// The most rows of a ledger read; a longer one is refused, not cut.
pub const MAX_ROWS: usize = 100_000;
/// The most bytes of an error kept in a row.
pub const MAX_ERROR: usize = 4096;

const CREATE: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS _migrations_schema (version integer NOT NULL)",
    "CREATE TABLE IF NOT EXISTS _migrations (\
        id bigserial PRIMARY KEY, \
        database text NOT NULL, \
        version text NOT NULL, \
        phase text NOT NULL CHECK (phase IN ('expand', 'postdeploy', 'contract')), \
        name text NOT NULL, \
        checksum text NOT NULL, \
        state text NOT NULL CHECK (state IN ('running', 'applied', 'failed')), \
        applied_by text NOT NULL, \
        started_at timestamptz NOT NULL, \
        finished_at timestamptz, \
        duration_ms bigint, \
        error text, \
        repaired_by text, \
        repaired_at timestamptz)",
    "CREATE UNIQUE INDEX IF NOT EXISTS _migrations_current ON _migrations (version, phase, name) WHERE repaired_at IS NULL",
    "COMMENT ON TABLE _migrations IS 'cutover migration ledger, schema 1: one row per migration run; repaired rows are kept'",
    "INSERT INTO _migrations_schema (version) SELECT 1 WHERE NOT EXISTS (SELECT 1 FROM _migrations_schema)",
];

fn unreadable(database: &str, e: &tokio_postgres::Error) -> Error {
    Error::Unavailable(format!(
        "database {database:?}: cannot read its migration ledger: {}",
        describe(e)
    ))
}

/// The ledger's schema version; `None` when there is no ledger yet.
async fn schema(c: &impl GenericClient, database: &str) -> Result<Option<i32>> {
    let row = c
        .query_one(
            "SELECT to_regclass('_migrations') IS NOT NULL, to_regclass('_migrations_schema') IS NOT NULL",
            &[],
        )
        .await
        .map_err(|e| unreadable(database, &e))?;
    let (table, versioned): (bool, bool) = (row.get(0), row.get(1));
    if !table {
        return Ok(None);
    }
    if !versioned {
        return Err(Error::Refused(format!(
            "database {database:?}: it has a _migrations table without _migrations_schema: not a cutover ledger; cutover will not touch it"
        )));
    }
    let row = c
        .query_one("SELECT max(version) FROM _migrations_schema", &[])
        .await
        .map_err(|e| unreadable(database, &e))?;
    let version: Option<i32> = row.get(0);
    if version.is_none() {
        // Made by a creation cut short where DDL is not transactional
        // (on PostgreSQL the creation is one transaction): resumable only
        // while it holds no row.
        let rows: i64 = c
            .query_one(
                "SELECT count(*) FROM (SELECT 1 FROM _migrations LIMIT 1) AS any_row",
                &[],
            )
            .await
            .map_err(|e| unreadable(database, &e))?
            .get(0);
        if rows == 0 {
            return Ok(None);
        }
    }
    match version {
        Some(v) if v == SCHEMA_VERSION => Ok(Some(v)),
        Some(v) if v > SCHEMA_VERSION => Err(Error::Refused(format!(
            "database {database:?}: its migration ledger has schema {v}, newer than this controller's {SCHEMA_VERSION}; upgrade the controller"
        ))),
        other => Err(Error::Refused(format!(
            "database {database:?}: its migration ledger has schema {other:?}, which this controller does not know"
        ))),
    }
}

/// Makes the ledger if there is none (under the database's lock), in one
/// query string: one implicit transaction, so a creation cut short leaves
/// nothing (and where DDL is not transactional, an empty ledger that the
/// next `migrate` finishes making).
pub async fn ensure(c: &impl GenericClient, database: &str) -> Result<()> {
    if schema(c, database).await?.is_some() {
        return Ok(());
    }
    c.batch_execute(&CREATE.join(";\n")).await.map_err(|e| {
        Error::Unavailable(format!(
            "database {database:?}: cannot create its migration ledger: {}",
            describe(&e)
        ))
    })
}

/// The ledger's rows that are not repaired, oldest first; `None` when
/// there is no ledger yet. Text columns are cut where they are read.
pub async fn read(c: &impl GenericClient, database: &str) -> Result<Option<Vec<LedgerEntry>>> {
    if schema(c, database).await?.is_none() {
        return Ok(None);
    }
    let limit = i64::try_from(MAX_ROWS + 1).unwrap_or(i64::MAX);
    let rows = c
        .query(
            "SELECT left(version, 256), left(phase, 32), left(name, 256), left(checksum, 80), \
             left(state, 32), left(applied_by, 512), \
             (extract(epoch FROM started_at) * 1000)::bigint, \
             (extract(epoch FROM finished_at) * 1000)::bigint, duration_ms, left(error, $2) \
             FROM _migrations WHERE repaired_at IS NULL ORDER BY id LIMIT $1",
            &[&limit, &(MAX_ERROR as i32)],
        )
        .await
        .map_err(|e| unreadable(database, &e))?;
    if rows.len() > MAX_ROWS {
        return Err(Error::Refused(format!(
            "database {database:?}: its migration ledger has more than {MAX_ROWS} current rows; cutover reads no more"
        )));
    }
    Ok(Some(
        rows.iter()
            .map(|r| LedgerEntry {
                version: r.get(0),
                phase: r.get(1),
                name: r.get(2),
                checksum: r.get(3),
                state: r.get(4),
                applied_by: r.get(5),
                started_at: from_ms(r.get(6)).unwrap_or(time::OffsetDateTime::UNIX_EPOCH),
                finished_at: r.get::<_, Option<i64>>(7).and_then(from_ms),
                elapsed_ms: r.get(8),
                error: r.get(9),
            })
            .collect(),
    ))
}

/// A row about to be written.
pub struct NewRow<'a> {
    pub database: &'a str,
    pub version: &'a str,
    pub phase: &'a str,
    pub name: &'a str,
    pub checksum: &'a str,
    pub applied_by: &'a str,
    pub started_ms: i64,
}

/// How a run ended, for its row.
pub struct Ending<'a> {
    pub state: &'a str,
    pub finished_ms: i64,
    pub duration_ms: i64,
    pub error: Option<&'a str>,
}

/// Writes `row` as `running` (no ending) or as it ended; its id.
pub async fn insert(
    c: &impl GenericClient,
    row: &NewRow<'_>,
    ending: Option<&Ending<'_>>,
) -> std::result::Result<i64, tokio_postgres::Error> {
    let error = ending
        .and_then(|e| e.error)
        .map(|e| cutover_core::views::bounded(e, MAX_ERROR).into_owned());
    let got = c
        .query_one(
            "INSERT INTO _migrations (database, version, phase, name, checksum, state, applied_by, started_at, finished_at, duration_ms, error) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, to_timestamp($8::bigint / 1000.0), to_timestamp($9::bigint / 1000.0), $10, $11) RETURNING id",
            &[
                &row.database,
                &row.version,
                &row.phase,
                &row.name,
                &row.checksum,
                &ending.map_or("running", |e| e.state),
                &row.applied_by,
                &row.started_ms,
                &ending.map(|e| e.finished_ms),
                &ending.map(|e| e.duration_ms),
                &error,
            ],
        )
        .await?;
    Ok(got.get(0))
}

/// Ends the `running` row `id` as `ending` says.
pub async fn finish(
    c: &impl GenericClient,
    id: i64,
    ending: &Ending<'_>,
) -> std::result::Result<(), tokio_postgres::Error> {
    let error = ending
        .error
        .map(|e| cutover_core::views::bounded(e, MAX_ERROR).into_owned());
    c.execute(
        "UPDATE _migrations SET state = $2, finished_at = to_timestamp($3::bigint / 1000.0), duration_ms = $4, error = $5 WHERE id = $1",
        &[&id, &ending.state, &ending.finished_ms, &ending.duration_ms, &error],
    )
    .await?;
    Ok(())
}

/// Marks the current row of `entry` (failed or running) repaired by `by`
/// at `at_ms`; how many rows it marked (0: it changed meanwhile).
pub async fn repair(
    c: &impl GenericClient,
    entry: &LedgerEntry,
    by: &str,
    at_ms: i64,
) -> std::result::Result<u64, tokio_postgres::Error> {
    c.execute(
        "UPDATE _migrations SET repaired_by = $5, repaired_at = to_timestamp($6::bigint / 1000.0) \
         WHERE version = $1 AND phase = $2 AND name = $3 AND state = $4 AND state <> 'applied' AND repaired_at IS NULL",
        &[&entry.version, &entry.phase, &entry.name, &entry.state, &by, &at_ms],
    )
    .await
}
