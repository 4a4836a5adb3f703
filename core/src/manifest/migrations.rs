//! The schema migrations a release carries: `[[migrations]]` entries that
//! pin `migrations/<database>/<version>/<phase>/NNN_name.sql` files by
//! SHA-256 and size (so the manifest's signature covers the SQL), and the
//! `databases` each service owns. `Manifest::parse` checks them here; the
//! path rules ([`check_database`], [`parse_version`], [`Phase::parse`],
//! [`check_name`]) are also what `release build` and `release import` hold
//! a release directory's `migrations/` tree to, so both say the same.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::{check_pin, check_text, shown, Service, MAX_PATH_LEN};
use crate::digest::Sha256Digest;

/// The directory of a release (and of `release build`'s source tree) that
/// holds the migrations.
pub const MIGRATIONS_DIR: &str = "migrations";
/// Where a migration file goes, as errors say it.
pub const LAYOUT: &str = "migrations/<database>/<version>/<phase>/NNN_name.sql";
/// The most `[[migrations]]` one release may pin. A release carries its
/// databases' whole history, so this is the count a product may gather
/// before it squashes old migrations into one; the 1 MiB a manifest may
/// have holds about 4,000 entries of ordinary length anyway.
pub const MAX_MIGRATIONS: usize = 4096;
/// The largest migration file (16 MiB): far above any hand-written SQL.
pub const MAX_MIGRATION_BYTES: u64 = 16 << 20;
/// The most bytes all of a release's migrations may hold together.
pub const MAX_MIGRATIONS_BYTES: u64 = 1 << 30;
/// The most databases one service may own.
pub const MAX_DATABASES: usize = 16;
/// The longest migration file name.
pub const MAX_NAME_LEN: usize = 128;
/// The most data migrations one contract migration may require.
pub const MAX_REQUIRED_DATA: usize = 16;

/// When a migration runs, relative to the rollout of the services owning
/// its database. Ordered as they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Before the rollout: additive changes the old binaries tolerate.
    Expand,
    /// After the rollout succeeded on every host.
    Postdeploy,
    /// Last: removes what only the old binaries needed.
    Contract,
}

impl Phase {
    /// Every phase, in the order they run.
    pub const ALL: [Phase; 3] = [Phase::Expand, Phase::Postdeploy, Phase::Contract];

    /// The word manifests, directories and operators use.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Expand => "expand",
            Phase::Postdeploy => "postdeploy",
            Phase::Contract => "contract",
        }
    }

    pub fn parse(s: &str) -> Result<Phase, String> {
        Phase::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "unknown phase {}; the phases are expand, postdeploy and contract",
                    shown(s)
                )
            })
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One pinned migration file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Migration {
    pub database: String,
    /// The release that introduced it (never above the manifest's own).
    pub version: semver::Version,
    pub phase: Phase,
    /// `NNN_name.sql`.
    pub name: String,
    pub sha256: Sha256Digest,
    pub size: u64,
    /// Relative to the release directory: always [`file_of`] its fields.
    pub file: String,
    /// Contract migrations only: the data migrations (by the name the
    /// owning service gives them) that must be verified before this file
    /// may run. `requires_data_migrations = ["backfill_orders"]` on the
    /// `[[migrations]]` entry.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub requires_data_migrations: Vec<String>,
}

impl Migration {
    /// The order migrations run in: by database, then version, then phase,
    /// then file name (one width of number per directory, so name order is
    /// number order). `Manifest::migrations` is sorted by it.
    pub fn order(&self) -> (&str, &semver::Version, Phase, &str) {
        (&self.database, &self.version, self.phase, &self.name)
    }
}

impl super::Manifest {
    /// The migrations of `database`, in the order they run.
    pub fn migrations_of<'a>(&'a self, database: &'a str) -> impl Iterator<Item = &'a Migration> {
        self.migrations
            .iter()
            .filter(move |m| m.database == database)
    }

    /// The services that own `database`.
    pub fn owners<'a>(&'a self, database: &'a str) -> impl Iterator<Item = &'a Service> {
        self.services
            .iter()
            .filter(move |s| s.databases.iter().any(|d| d == database))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMigration {
    database: String,
    version: String,
    phase: String,
    name: String,
    sha256: Sha256Digest,
    size: u64,
    file: String,
    #[serde(default)]
    requires_data_migrations: Vec<String>,
}

/// Where a migration file lives in a release directory, from the names of
/// its directories and its own. Ordered as migrations run.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Location {
    pub database: String,
    pub version: semver::Version,
    pub phase: Phase,
    pub name: String,
}

impl Location {
    /// Relative to the release directory.
    pub fn file(&self) -> String {
        file_of(&self.database, &self.version, self.phase, &self.name)
    }
}

/// The path a migration's fields give, relative to the release directory.
pub fn file_of(database: &str, version: &semver::Version, phase: Phase, name: &str) -> String {
    format!("{MIGRATIONS_DIR}/{database}/{version}/{phase}/{name}")
}

/// A database name: a name as hosts and services have (it is a directory
/// and the controller's `[databases.NAME]` key).
pub fn check_database(name: &str) -> Result<(), String> {
    crate::names::validate("database", name).map_err(|e| e.to_string())
}

/// A migration's version: a release version (semver, no build metadata),
/// written the one way semver prints it, as its directory is named.
pub fn parse_version(s: &str) -> Result<semver::Version, String> {
    let version = super::release_version("version", s)?;
    if version.to_string() != s {
        return Err(format!(
            "version {} is not written as semver prints it ({version})",
            shown(s)
        ));
    }
    Ok(version)
}

/// `NNN_name.sql`: digits, `_`, then lowercase letters, digits and `_`,
/// then `.sql`.
pub fn check_name(name: &str) -> Result<(), String> {
    let well_formed = name.len() <= MAX_NAME_LEN
        && name.strip_suffix(".sql").is_some_and(|stem| {
            let digits = stem.bytes().take_while(u8::is_ascii_digit).count();
            let rest = &stem.as_bytes()[digits..];
            digits > 0
                && rest.len() > 1
                && rest[0] == b'_'
                && rest
                    .iter()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'_')
        });
    if well_formed {
        return Ok(());
    }
    Err(format!(
        "migration name {} is not NNN_name.sql: digits, '_', then lowercase letters, digits or '_', then .sql, at most {MAX_NAME_LEN} bytes (e.g. 001_add_orders.sql)",
        shown(name)
    ))
}

/// The digits a (well-formed) migration name starts with.
fn number(name: &str) -> &str {
    let digits = name.bytes().take_while(u8::is_ascii_digit).count();
    &name[..digits]
}

/// A service's `databases`: bounded, names, no repeats.
pub(super) fn check_databases(databases: &[String]) -> Result<(), String> {
    check_names(
        "databases",
        "database",
        databases,
        MAX_DATABASES,
        " for one service",
    )
}

/// A list of names under `key`: at most `max`, each a name of `kind`, no
/// repeats; `per` says what the bound is per.
fn check_names(
    key: &str,
    kind: &str,
    names: &[String],
    max: usize,
    per: &str,
) -> Result<(), String> {
    if names.len() > max {
        return Err(format!(
            "{key} lists {} {kind}s, at most {max} are allowed{per}",
            names.len()
        ));
    }
    let mut seen = BTreeSet::new();
    for n in names {
        crate::names::validate(kind, n).map_err(|e| format!("{key}: {e}"))?;
        if !seen.insert(n.as_str()) {
            return Err(format!("{key} lists {n:?} twice"));
        }
    }
    Ok(())
}

/// Checks every `[[migrations]]` entry against the release and returns
/// them in the order they run ([`Migration::order`]).
pub(super) fn parse(
    raw: &[RawMigration],
    release: &semver::Version,
    services: &[Service],
) -> Result<Vec<Migration>, String> {
    if raw.len() > MAX_MIGRATIONS {
        return Err(format!(
            "{} [[migrations]], at most {MAX_MIGRATIONS} are allowed in one release; squash the oldest into one",
            raw.len()
        ));
    }
    let mut out = Vec::with_capacity(raw.len());
    let mut total: u64 = 0;
    for r in raw {
        let m = entry(r, release).map_err(|p| format!("migration {}: {p}", shown(&r.file)))?;
        total = total
            .checked_add(m.size)
            .filter(|t| *t <= MAX_MIGRATIONS_BYTES)
            .ok_or_else(|| {
                format!(
                    "the migrations pin more than the {MAX_MIGRATIONS_BYTES} bytes a release may carry in all"
                )
            })?;
        out.push(m);
    }
    out.sort_by(|a, b| a.order().cmp(&b.order()));
    for pair in out.windows(2) {
        if pair[0].order() == pair[1].order() {
            return Err(format!("migration {} is pinned twice", pair[0].file));
        }
    }
    check_widths(&out)?;
    // A database with migrations must be owned by a service: the gates
    // decide when a database's migrations may run from the services that
    // own it (expand before their upgrade, postdeploy once every one of
    // them rolled out). Migrations no service owns would gate nothing and
    // their gates would pass with no one to wait for, so they are refused
    // rather than run unguarded.
    let owned: BTreeSet<&str> = services
        .iter()
        .flat_map(|s| s.databases.iter().map(String::as_str))
        .collect();
    if let Some(m) = out.iter().find(|m| !owned.contains(m.database.as_str())) {
        return Err(format!(
            "migration {} is for database {:?}, which no service owns: add databases = [{:?}] to the [[services]] entry that uses it",
            m.file, m.database, m.database
        ));
    }
    Ok(out)
}

fn entry(r: &RawMigration, release: &semver::Version) -> Result<Migration, String> {
    check_text("file", &r.file, MAX_PATH_LEN)?;
    check_database(&r.database)?;
    let version = parse_version(&r.version)?;
    let phase = Phase::parse(&r.phase)?;
    check_name(&r.name)?;
    let file = file_of(&r.database, &version, phase, &r.name);
    if r.file != file {
        return Err(format!(
            "file must be {file:?}, the path its database, version, phase and name give; fix the fields or move the file"
        ));
    }
    if version > *release {
        return Err(format!(
            "version {version} is above this release's {release}: a release carries the migrations of its own version and earlier ones; give the release a version of at least {version}, or move the file"
        ));
    }
    check_pin("migration", &r.file, r.size, MAX_MIGRATION_BYTES)?;
    check_required_data(phase, &r.requires_data_migrations)?;
    Ok(Migration {
        database: r.database.clone(),
        version,
        phase,
        name: r.name.clone(),
        sha256: r.sha256,
        size: r.size,
        file,
        requires_data_migrations: r.requires_data_migrations.clone(),
    })
}

/// `requires_data_migrations`: on a contract entry only (contract is what
/// must wait for a backfill), bounded, names, no repeats.
fn check_required_data(phase: Phase, names: &[String]) -> Result<(), String> {
    if names.is_empty() {
        return Ok(());
    }
    if phase != Phase::Contract {
        return Err(format!(
            "requires_data_migrations is for contract migrations only (this one is {phase}): only contract waits for a data migration"
        ));
    }
    check_names(
        "requires_data_migrations",
        "data migration",
        names,
        MAX_REQUIRED_DATA,
        "",
    )
}

/// In one phase directory every number has one width, so that the order
/// files run in (name order) is their numbers' order: `10_b.sql` would
/// otherwise run before `9_a.sql`. `sorted` is in [`Migration::order`].
fn check_widths(sorted: &[Migration]) -> Result<(), String> {
    let mut first: BTreeMap<(&str, &semver::Version, Phase), &Migration> = BTreeMap::new();
    for m in sorted {
        let dir = (m.database.as_str(), &m.version, m.phase);
        let f = *first.entry(dir).or_insert(m);
        let (wa, wb) = (number(&f.name).len(), number(&m.name).len());
        if wa != wb {
            let (short, width) = if wa < wb {
                (&f.name, wb)
            } else {
                (&m.name, wa)
            };
            return Err(format!(
                "migrations {} and {} in {MIGRATIONS_DIR}/{}/{}/{}/ are numbered with different widths, and files run in name order: give every number in a directory the same width (e.g. {short} as {short:0>w$})",
                f.name,
                m.name,
                m.database,
                m.version,
                m.phase,
                w = short.len() + width - number(short).len(),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
