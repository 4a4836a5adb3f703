//! The data migrations a release declares, per service:
//! `[[services.data_migrations]]` entries naming a migration the service
//! binary runs (`docs/data-migrations.md`), the database it moves data in
//! and what waits for it. `Manifest::parse` checks them here, and the
//! `requires_data_migrations` of contract entries against them.

use serde::{Deserialize, Serialize};

use super::{check_text, release_version, shown, Migration, Phase, Service};

/// The most data migrations one service may declare in a release.
pub const MAX_PER_SERVICE: usize = 64;
/// The longest data migration id.
pub const MAX_ID_LEN: usize = 64;
/// The longest description.
pub const MAX_DESCRIPTION_LEN: usize = 512;

/// One data migration a service binary runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DataMigration {
    /// `[a-z][a-z0-9_]*`, unique per service.
    pub id: String,
    /// One of the service's `databases`.
    pub database: String,
    pub description: String,
    /// `required_before = "contract"`: this release's contract migrations
    /// of `database` wait for it.
    pub required_before_contract: bool,
    /// No upgrade to this release or a later one starts before it.
    pub required_before_upgrade_to: Option<semver::Version>,
}

/// One `[[services.data_migrations]]` table as written (and `release
/// build`'s `data-migrations.toml` entries, which have the same keys);
/// [`parse`] checks it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDataMigration {
    id: String,
    database: String,
    #[serde(default)]
    description: String,
    required_before: Option<String>,
    required_before_upgrade_to: Option<String>,
}

/// A data migration id: what operators type as `SERVICE.ID`.
pub fn check_id(id: &str) -> Result<(), String> {
    let ok = !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id.as_bytes()[0].is_ascii_lowercase()
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok {
        return Ok(());
    }
    Err(format!(
        "data migration id {} is not a lowercase letter then lowercase letters, digits or '_', at most {MAX_ID_LEN} bytes (e.g. backfill_prices)",
        shown(id)
    ))
}

/// A service's `data_migrations`, checked against its `databases` and the
/// release's version.
pub fn parse(
    raw: &[RawDataMigration],
    databases: &[String],
    release: &semver::Version,
) -> Result<Vec<DataMigration>, String> {
    if raw.len() > MAX_PER_SERVICE {
        return Err(format!(
            "{} data_migrations, at most {MAX_PER_SERVICE} are allowed per service",
            raw.len()
        ));
    }
    let mut out: Vec<DataMigration> = Vec::with_capacity(raw.len());
    for r in raw {
        check_id(&r.id)?;
        let problem = |p: String| format!("data migration {}: {p}", r.id);
        if out.iter().any(|d| d.id == r.id) {
            return Err(problem("declared twice".into()));
        }
        if !databases.contains(&r.database) {
            return Err(problem(format!(
                "database {} is not one of the service's databases; add it to the service's databases = [...]",
                shown(&r.database)
            )));
        }
        check_text("description", &r.description, MAX_DESCRIPTION_LEN).map_err(problem)?;
        let required_before_contract = match r.required_before.as_deref() {
            None => false,
            Some("contract") => true,
            Some(other) => {
                return Err(problem(format!(
                    "required_before = {} is not a phase a data migration can gate; the one value is \"contract\"",
                    shown(other)
                )))
            }
        };
        let required_before_upgrade_to = r
            .required_before_upgrade_to
            .as_deref()
            .map(|v| release_version("required_before_upgrade_to", v).map_err(problem))
            .transpose()?;
        if let Some(v) = &required_before_upgrade_to {
            if v <= release {
                return Err(problem(format!(
                    "required_before_upgrade_to {v} is not above this release's {release}: it is this release's binary that runs the migration, so it can only gate a later release"
                )));
            }
        }
        out.push(DataMigration {
            id: r.id.clone(),
            database: r.database.clone(),
            description: r.description.clone(),
            required_before_contract,
            required_before_upgrade_to,
        });
    }
    Ok(out)
}

/// Every `requires_data_migrations` name of a contract entry is a data
/// migration declared for its database by exactly one of its owners.
pub(super) fn check_required(migrations: &[Migration], services: &[Service]) -> Result<(), String> {
    for m in migrations.iter().filter(|m| m.phase == Phase::Contract) {
        for id in &m.requires_data_migrations {
            let owners: Vec<&str> = services
                .iter()
                .filter(|s| {
                    s.data_migrations
                        .iter()
                        .any(|d| &d.id == id && d.database == m.database)
                })
                .map(|s| s.name.as_str())
                .collect();
            match owners.as_slice() {
                [_] => {}
                [] => {
                    return Err(format!(
                        "migration {} requires data migration {id:?}, which no service declares for database {:?}: declare it under the owning service's [[services.data_migrations]]",
                        m.file, m.database
                    ))
                }
                many => {
                    return Err(format!(
                        "migration {} requires data migration {id:?}, which services {} all declare for database {:?}; give them ids of their own",
                        m.file,
                        many.join(", "),
                        m.database
                    ))
                }
            }
        }
    }
    Ok(())
}

impl super::Manifest {
    /// Every data migration the release declares, with its service.
    pub fn data_migrations(&self) -> impl Iterator<Item = (&Service, &DataMigration)> {
        self.services
            .iter()
            .flat_map(|s| s.data_migrations.iter().map(move |d| (s, d)))
    }

    /// The data migrations this release's contract of `database` waits
    /// for: declared `required_before = "contract"` for it, or named by
    /// one of its contract entries. By (service, id), each once.
    pub fn required_before_contract(&self, database: &str) -> Vec<(&Service, &DataMigration)> {
        let named = |d: &DataMigration| {
            self.migrations_of(database)
                .filter(|m| m.phase == Phase::Contract)
                .any(|m| m.requires_data_migrations.contains(&d.id))
        };
        self.data_migrations()
            .filter(|(_, d)| d.database == database && (d.required_before_contract || named(d)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use crate::manifest::Manifest;

    fn manifest(entries: &str, contract: &str) -> Result<Manifest, String> {
        let text = format!(
            r#"version = "2.0.0"
created = 2026-01-01T00:00:00Z
expires = 2099-01-01T00:00:00Z
[[services]]
name = "orders"
service_version = "2.0.0"
databases = ["billing"]
tarball = {{ sha256 = "{z}", size = 1, file = "orders.tar.gz" }}
{entries}
{contract}"#,
            z = "a".repeat(64)
        );
        Manifest::parse(&text).map_err(|e| e.to_string())
    }

    const CONTRACT: &str = r#"[[migrations]]
database = "billing"
version = "2.0.0"
phase = "contract"
name = "001_drop.sql"
sha256 = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
size = 1
file = "migrations/billing/2.0.0/contract/001_drop.sql"
"#;

    #[test]
    fn a_service_declares_its_data_migrations_and_what_waits_for_them() {
        let m = manifest(
            r#"[[services.data_migrations]]
id = "backfill_prices"
database = "billing"
description = "copy prices"
required_before = "contract"
required_before_upgrade_to = "3.0.0"
[[services.data_migrations]]
id = "tidy"
database = "billing"
"#,
            CONTRACT,
        )
        .unwrap();
        let all: Vec<_> = m.data_migrations().map(|(s, d)| (&s.name, &d.id)).collect();
        assert_eq!(all.len(), 2);
        let d = &m.services[0].data_migrations[0];
        assert!(d.required_before_contract);
        assert_eq!(d.required_before_upgrade_to, Some("3.0.0".parse().unwrap()));
        let before: Vec<_> = m
            .required_before_contract("billing")
            .into_iter()
            .map(|(_, d)| d.id.as_str())
            .collect();
        assert_eq!(before, ["backfill_prices"]);
        assert!(m.required_before_contract("other").is_empty());
    }

    #[test]
    fn a_contract_entry_may_name_a_declared_data_migration_and_only_that() {
        let declared = "[[services.data_migrations]]\nid = \"tidy\"\ndatabase = \"billing\"\n";
        let named = CONTRACT.replace(
            "phase = \"contract\"\n",
            "phase = \"contract\"\nrequires_data_migrations = [\"tidy\"]\n",
        );
        let m = manifest(declared, &named).unwrap();
        assert_eq!(m.required_before_contract("billing").len(), 1);
        let err = manifest("", &named).unwrap_err();
        assert!(
            err.contains("requires data migration \"tidy\", which no service declares"),
            "{err}"
        );
    }

    #[test]
    fn bad_declarations_are_refused_naming_the_fix() {
        let one = |body: &str| {
            manifest(&format!("[[services.data_migrations]]\n{body}\n"), CONTRACT).unwrap_err()
        };
        let cases = [
            (
                "id = \"Bad-Id\"\ndatabase = \"billing\"",
                "is not a lowercase letter",
            ),
            (
                "id = \"x\"\ndatabase = \"other\"",
                "not one of the service's databases",
            ),
            (
                "id = \"x\"\ndatabase = \"billing\"\nrequired_before = \"expand\"",
                "the one value is \"contract\"",
            ),
            (
                "id = \"x\"\ndatabase = \"billing\"\nrequired_before_upgrade_to = \"2.0.0\"",
                "is not above this release's 2.0.0",
            ),
            (
                "id = \"x\"\ndatabase = \"billing\"\ndescription = \"a\\u0007b\"",
                "control characters",
            ),
            (
                "id = \"x\"\ndatabase = \"billing\"\nextra = 1",
                "unknown field",
            ),
        ];
        for (body, want) in cases {
            let err = one(body);
            assert!(err.contains(want), "{body}: {err}");
        }
        let twice = manifest(
            "[[services.data_migrations]]\nid = \"x\"\ndatabase = \"billing\"\n[[services.data_migrations]]\nid = \"x\"\ndatabase = \"billing\"\n",
            "",
        )
        .unwrap_err();
        assert!(twice.contains("declared twice"), "{twice}");
        let many: String = (0..65)
            .map(|i| {
                format!("[[services.data_migrations]]\nid = \"m{i}\"\ndatabase = \"billing\"\n")
            })
            .collect();
        assert!(manifest(&many, "").unwrap_err().contains("at most 64"));
    }
}
