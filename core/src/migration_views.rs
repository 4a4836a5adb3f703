//! What `cutover migrate` reports, as the controller sends it and the CLI
//! prints it (`-o json` is these): a database's ledger against a release
//! (`MigrationStatus`), what a run applied or would apply (`MigrateRun`)
//! and a repair (`Repaired`), and what a plan shows of them
//! (`PlanMigrations`). Shared by both ends through `JsonDocument`.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// One row of a database's `_migrations` ledger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerEntry {
    pub version: String,
    pub phase: String,
    pub name: String,
    /// The SHA-256 of the exact bytes that ran, 64 lowercase hex digits.
    pub checksum: String,
    /// `running`, `applied` or `failed`.
    pub state: String,
    pub applied_by: String,
    #[serde(with = "time::serde::rfc3339")]
    pub started_at: OffsetDateTime,
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub finished_at: Option<OffsetDateTime>,
    #[serde(default)]
    /// How long it ran (the ledger's `duration_ms`).
    pub elapsed_ms: Option<i64>,
    #[serde(default)]
    pub error: Option<String>,
}

impl LedgerEntry {
    /// `1.0.0/expand/001_orders.sql`, how errors and the CLI name it.
    pub fn key(&self) -> String {
        format!("{}/{}/{}", self.version, self.phase, self.name)
    }
}

/// A migration of the release that has not run on the database.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingMigration {
    pub version: String,
    pub phase: String,
    pub name: String,
    pub checksum: String,
    /// Whether it runs outside a transaction (`-- cutover:no-transaction`,
    /// or a database without transactional DDL).
    #[serde(default)]
    pub no_transaction: bool,
}

impl PendingMigration {
    pub fn key(&self) -> String {
        format!("{}/{}/{}", self.version, self.phase, self.name)
    }
}

/// An applied migration whose file in the release is not what ran.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Drift {
    pub version: String,
    pub phase: String,
    pub name: String,
    /// What the ledger says ran.
    pub applied: String,
    /// What the release carries now.
    pub release: String,
    /// The two differ only in line endings (CRLF against LF).
    pub line_endings_only: bool,
}

/// One database's ledger against the target release.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatabaseStatus {
    pub database: String,
    /// Whether the ledger table exists yet (the first `migrate` makes it).
    pub ledger: bool,
    /// Applied rows of the release's migrations. Every ledger row is in
    /// exactly one of `applied`, `failed`, `dirty` and `unknown`.
    pub applied: Vec<LedgerEntry>,
    /// In the order they would run.
    pub pending: Vec<PendingMigration>,
    /// Failed rows, whether the release carries their migration or not.
    pub failed: Vec<LedgerEntry>,
    /// `running` rows: a migration outside a transaction that did not
    /// finish, or one that runs now (see `migrating`). They block the
    /// database until that migrate ends, or else until `cutover migrate
    /// repair`.
    pub dirty: Vec<LedgerEntry>,
    /// Who holds the database's migration lock now, asked only when a row
    /// is dirty: a migrate at work (its `running` row is not a crash).
    #[serde(default)]
    pub migrating: Option<String>,
    pub drift: Vec<Drift>,
    /// Pending migrations that come before one of the same phase the
    /// ledger already has: added behind it; they block the database.
    #[serde(default)]
    pub out_of_order: Vec<PendingMigration>,
    /// Applied rows of migrations the release does not carry (the history
    /// of earlier releases, squashed out of this one).
    pub unknown: Vec<LedgerEntry>,
}

/// `cutover migrate status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrationStatus {
    /// The release the ledgers were held against.
    pub version: String,
    pub databases: Vec<DatabaseStatus>,
}

/// What one database got from `cutover migrate --phase P`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatabaseRun {
    pub database: String,
    /// With `--dry-run`: what would run, in order; otherwise what ran.
    pub migrations: Vec<PendingMigration>,
}

/// `cutover migrate --phase P`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrateRun {
    pub version: String,
    pub phase: String,
    pub dry_run: bool,
    pub databases: Vec<DatabaseRun>,
}

/// `cutover migrate repair`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Repaired {
    pub database: String,
    /// The row as it was: kept in the ledger, marked repaired.
    pub entry: LedgerEntry,
    pub repaired_by: String,
    #[serde(with = "time::serde::rfc3339")]
    pub repaired_at: OffsetDateTime,
}

/// A plan's view of one database the release's services own: its
/// migrations in the release by phase, each `VERSION/PHASE/NAME`, pending
/// or applied (a plan with a failed, dirty or changed one is refused).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanMigrations {
    pub database: String,
    /// The phases the release has migrations in, in the order they run.
    pub phases: Vec<PlanPhase>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanPhase {
    pub phase: String,
    pub applied: Vec<String>,
    pub pending: Vec<String>,
}
