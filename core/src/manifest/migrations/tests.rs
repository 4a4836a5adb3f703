//! Tests of the migrations a manifest pins: every refusal, and the order.

use super::*;
use crate::manifest::{ArtifactOwner, Manifest};

/// The service tarball's digest.
const SHA: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
/// The migrations' digest (other bytes than the tarball's).
const MSHA: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// Release 1.2.0 with a service "api" owning `databases` and `entries`.
fn release(databases: &str, entries: &str) -> String {
    format!(
        "version = \"1.2.0\"\ncreated = 2026-01-01T00:00:00Z\nexpires = 2036-01-01T00:00:00Z\n\
         [[services]]\nname = \"api\"\nservice_version = \"1.0\"\ndatabases = [{databases}]\n\
         tarball = {{ sha256 = \"{SHA}\", size = 3, file = \"api.tar.gz\" }}\n{entries}"
    )
}

/// One `[[migrations]]` entry whose `file` matches its fields.
fn entry(database: &str, version: &str, phase: &str, name: &str) -> String {
    let file = format!("migrations/{database}/{version}/{phase}/{name}");
    entry_at(database, version, phase, name, &file)
}

fn entry_at(database: &str, version: &str, phase: &str, name: &str, file: &str) -> String {
    format!(
        "[[migrations]]\ndatabase = \"{database}\"\nversion = \"{version}\"\nphase = \"{phase}\"\nname = \"{name}\"\nsha256 = \"{MSHA}\"\nsize = 1\nfile = \"{file}\"\n"
    )
}

/// Why release 1.2.0 with one migration at `[database, version, phase,
/// name]` is refused.
fn refused_one(databases: &str, [database, version, phase, name]: [&str; 4]) -> String {
    err(&release(databases, &entry(database, version, phase, name)))
}

fn err(text: &str) -> String {
    let e = Manifest::parse(text).unwrap_err().to_string();
    assert!(!e.contains('\n'), "{e}");
    e
}

#[test]
fn migrations_are_given_by_database_then_version_then_phase_then_name() {
    let entries = [
        entry("ledger", "1.0.0", "expand", "001_a.sql"),
        entry("billing", "1.2.0", "contract", "001_drop.sql"),
        entry("billing", "1.2.0", "expand", "002_b.sql"),
        entry("billing", "1.10.0-rc.1", "expand", "001_x.sql"),
        entry("billing", "1.2.0", "postdeploy", "001_fill.sql"),
        entry("billing", "1.2.0", "expand", "001_a.sql"),
        entry("billing", "1.0.0", "contract", "009_old.sql"),
    ]
    .concat();
    let text = release("\"billing\", \"ledger\"", &entries)
        .replace("1.2.0\"\ncreated", "1.10.0\"\ncreated");
    let m = Manifest::parse(&text).unwrap();
    let order: Vec<String> = m.migrations.iter().map(|m| m.file.clone()).collect();
    assert_eq!(
        order,
        [
            "migrations/billing/1.0.0/contract/009_old.sql",
            "migrations/billing/1.2.0/expand/001_a.sql",
            "migrations/billing/1.2.0/expand/002_b.sql",
            "migrations/billing/1.2.0/postdeploy/001_fill.sql",
            "migrations/billing/1.2.0/contract/001_drop.sql",
            // Semver order, not text order: 1.10.0-rc.1 is after 1.2.0.
            "migrations/billing/1.10.0-rc.1/expand/001_x.sql",
            "migrations/ledger/1.0.0/expand/001_a.sql",
        ]
    );
    assert_eq!(m.migrations_of("ledger").count(), 1);
    assert_eq!(m.migrations_of("billing").count(), 6);
    let owners: Vec<&str> = m.owners("billing").map(|s| s.name.as_str()).collect();
    assert_eq!(owners, ["api"]);
    assert_eq!(m.services[0].databases, ["billing", "ledger"]);
    // Every migration is an artifact, after the service's tarball.
    let artifacts = m.artifacts();
    assert_eq!(artifacts.len(), 8);
    assert_eq!(artifacts[1].owner, ArtifactOwner::Database("billing"));
    assert_eq!(artifacts[1].kind, "migration");
    assert_eq!(
        artifacts[1].file,
        "migrations/billing/1.0.0/contract/009_old.sql"
    );
    assert_eq!(
        Phase::ALL.map(Phase::as_str),
        ["expand", "postdeploy", "contract"]
    );
    assert!(Phase::Expand < Phase::Postdeploy && Phase::Postdeploy < Phase::Contract);
}

#[test]
fn a_release_without_migrations_has_none() {
    let m = Manifest::parse(&release("", "")).unwrap();
    assert!(m.migrations.is_empty());
    assert!(m.services[0].databases.is_empty());
}

#[test]
fn an_unknown_phase_is_refused_naming_the_entry_and_the_phases() {
    let e = refused_one("\"billing\"", ["billing", "1.2.0", "expnd", "001_a.sql"]);
    assert_eq!(
        e,
        "release 1.2.0: migration \"migrations/billing/1.2.0/expnd/001_a.sql\": unknown phase \"expnd\"; the phases are expand, postdeploy and contract"
    );
}

#[test]
fn badly_named_files_are_refused() {
    for bad in [
        "add_orders.sql",
        "001add.sql",
        "001_.sql",
        "001_Add.sql",
        "001_add-orders.sql",
        "001_add.SQL",
        "001_add.sql.bak",
        "001_add",
        ".001_add.sql",
        "001_a b.sql",
    ] {
        let e = refused_one("\"billing\"", ["billing", "1.2.0", "expand", bad]);
        assert!(
            e.contains(&format!("migration name \"{bad}\" is not NNN_name.sql")),
            "{bad}: {e}"
        );
        assert!(e.contains("(e.g. 001_add_orders.sql)"), "{e}");
    }
    let long = format!("001_{}.sql", "a".repeat(MAX_NAME_LEN));
    let e = refused_one("\"billing\"", ["billing", "1.2.0", "expand", &long]);
    assert!(e.contains("is not NNN_name.sql") && e.len() < 400, "{e}");
    for good in [
        "1_a.sql",
        "001_add_orders.sql",
        "20260101_x9.sql",
        "07_a_b_c.sql",
    ] {
        check_name(good).unwrap();
    }
}

#[test]
fn a_file_path_that_does_not_match_its_fields_is_refused_with_the_right_one() {
    // Why migration 001_a.sql of billing 1.2.0's expand, pinned at `file`, is refused.
    let at_file = |file: &str| {
        err(&release(
            "\"billing\"",
            &entry_at("billing", "1.2.0", "expand", "001_a.sql", file),
        ))
    };
    let e = at_file("migrations/billing/1.1.0/expand/001_a.sql");
    assert_eq!(
        e,
        "release 1.2.0: migration \"migrations/billing/1.1.0/expand/001_a.sql\": file must be \"migrations/billing/1.2.0/expand/001_a.sql\", the path its database, version, phase and name give; fix the fields or move the file"
    );
    let e = at_file("../001_a.sql");
    assert!(e.contains("file must be \"migrations/billing/"), "{e}");
    let e = at_file("migrations/\\u001b[2J");
    assert!(
        e.contains("file \"migrations/\\u{1b}[2J\" contains control characters"),
        "{e}"
    );
    let long = "m".repeat(MAX_PATH_LEN + 1);
    let e = at_file(&long);
    assert!(
        e.contains("is longer than 1024 characters") && e.len() < 300,
        "{e}"
    );
}

#[test]
fn a_migration_pinned_twice_is_refused() {
    let once = entry("billing", "1.2.0", "expand", "001_a.sql");
    let e = err(&release("\"billing\"", &format!("{once}{once}")));
    assert_eq!(
        e,
        "release 1.2.0: migration migrations/billing/1.2.0/expand/001_a.sql is pinned twice"
    );
}

#[test]
fn a_migration_of_a_later_release_is_refused() {
    let e = refused_one("\"billing\"", ["billing", "1.3.0", "expand", "001_a.sql"]);
    assert!(
        e.contains("version 1.3.0 is above this release's 1.2.0: a release carries the migrations of its own version and earlier ones"),
        "{e}"
    );
    // A pre-release of the release's own version comes before it.
    Manifest::parse(&release(
        "\"billing\"",
        &entry("billing", "1.2.0-rc.1", "expand", "001_a.sql"),
    ))
    .unwrap();
}

#[test]
fn versions_are_semver_without_build_metadata_as_semver_prints_them() {
    for (bad, expected) in [
        ("1.2", "version \"1.2\" is not semver"),
        ("1.0.0+b", "version \"1.0.0+b\" carries build metadata"),
        ("01.0.0", "version \"01.0.0\" is not semver"),
    ] {
        let e = refused_one("\"billing\"", ["billing", bad, "expand", "001_a.sql"]);
        assert!(e.contains(expected), "{bad}: {e}");
    }
}

#[test]
fn migrations_of_a_database_no_service_owns_are_refused() {
    let e = refused_one("\"ledger\"", ["billing", "1.2.0", "expand", "001_a.sql"]);
    assert_eq!(
        e,
        "release 1.2.0: migration migrations/billing/1.2.0/expand/001_a.sql is for database \"billing\", which no service owns: add databases = [\"billing\"] to the [[services]] entry that uses it"
    );
}

#[test]
fn database_names_are_names_and_bounded_per_service() {
    let e = err(&release("\"bil ling\"", ""));
    assert!(
        e.contains("service \"api\": databases: invalid database name \"bil ling\""),
        "{e}"
    );
    let e = err(&release("\"billing\", \"billing\"", ""));
    assert!(
        e.contains("service \"api\": databases lists \"billing\" twice"),
        "{e}"
    );
    let many: Vec<String> = (0..=MAX_DATABASES).map(|i| format!("\"db{i}\"")).collect();
    let e = err(&release(&many.join(", "), ""));
    assert!(
        e.contains("databases lists 17 databases, at most 16 are allowed for one service"),
        "{e}"
    );
    let most: Vec<String> = (0..MAX_DATABASES).map(|i| format!("\"db{i}\"")).collect();
    Manifest::parse(&release(&most.join(", "), "")).unwrap();
    let e = refused_one("\"-x\"", ["-x", "1.2.0", "expand", "001_a.sql"]);
    assert!(e.contains("invalid database name \"-x\""), "{e}");
}

#[test]
fn sizes_are_bounded_per_file_and_in_all() {
    let one = entry("billing", "1.2.0", "expand", "001_a.sql");
    let e = err(&release(
        "\"billing\"",
        &one.replace("size = 1", "size = 0"),
    ));
    assert!(
        e.contains("migration migrations/billing/1.2.0/expand/001_a.sql is pinned with size 0; an artifact must have bytes"),
        "{e}"
    );
    let over = (MAX_MIGRATION_BYTES + 1).to_string();
    let e = err(&release(
        "\"billing\"",
        &one.replace("size = 1", &format!("size = {over}")),
    ));
    assert!(
        e.contains(&format!(
            "is pinned with size {over}, more than the 16777216 bytes one migration may have"
        )),
        "{e}"
    );
    // Sixty-five files of the largest size: more than 1 GiB in all. Each
    // pins other bytes (one digest has one size, checked after).
    let full: String = (0..=64)
        .map(|i| {
            entry("billing", "1.2.0", "expand", &format!("{i:03}_a.sql"))
                .replace("size = 1", &format!("size = {MAX_MIGRATION_BYTES}"))
                .replace(MSHA, &Sha256Digest::of(&[i as u8]).to_hex())
        })
        .collect();
    let e = err(&release("\"billing\"", &full));
    assert!(
        e.contains("the migrations pin more than the 1073741824 bytes a release may carry in all"),
        "{e}"
    );
}

#[test]
fn the_count_of_migrations_is_bounded() {
    let entries = |n: usize| -> String {
        (0..n)
            .map(|i| entry("d", "1.0.0", "expand", &format!("{i:04}_a.sql")))
            .collect()
    };
    let e = err(&release("\"d\"", &entries(MAX_MIGRATIONS + 1)));
    assert!(
        e.contains("4097 [[migrations]], at most 4096 are allowed in one release"),
        "{e}"
    );
    let m = Manifest::parse(&release("\"d\"", &entries(MAX_MIGRATIONS))).unwrap();
    assert_eq!(m.migrations.len(), MAX_MIGRATIONS);
}

#[test]
fn numbers_of_different_widths_in_one_directory_are_refused() {
    let entries = [
        entry("billing", "1.2.0", "expand", "9_a.sql"),
        entry("billing", "1.2.0", "expand", "10_b.sql"),
    ]
    .concat();
    let e = err(&release("\"billing\"", &entries));
    assert_eq!(
        e,
        "release 1.2.0: migrations 10_b.sql and 9_a.sql in migrations/billing/1.2.0/expand/ are numbered with different widths, and files run in name order: give every number in a directory the same width (e.g. 9_a.sql as 09_a.sql)"
    );
    // Widths may differ between directories.
    let entries = [
        entry("billing", "1.2.0", "expand", "9_a.sql"),
        entry("billing", "1.2.0", "contract", "10_b.sql"),
    ]
    .concat();
    Manifest::parse(&release("\"billing\"", &entries)).unwrap();
}

#[test]
fn an_unknown_key_in_an_entry_is_named() {
    let e = err(&release(
        "\"billing\"",
        &entry("billing", "1.2.0", "expand", "001_a.sql").replace("phase =", "stage ="),
    ));
    assert!(e.contains("unknown field `stage`"), "{e}");
}

#[test]
fn one_digest_pinned_by_a_tarball_and_a_migration_has_one_size() {
    let e = err(&release(
        "\"billing\"",
        &entry("billing", "1.2.0", "expand", "001_a.sql").replace(MSHA, SHA),
    ));
    assert_eq!(
        e,
        format!("release 1.2.0: sha256 {SHA} is pinned with size 3 by service \"api\" and size 1 by database \"billing\"; one digest has one size")
    );
}

#[test]
fn a_contract_migration_may_require_data_migrations_bounded_and_named() {
    let with = |phase: &str, list: &str| {
        // The names are data migrations the owning service declares
        // (`data_migrations.rs` checks that).
        let declared: String = ["backfill_orders".to_string(), "a".into()]
            .into_iter()
            .chain((0..=MAX_REQUIRED_DATA).map(|i| format!("d{i}")))
            .map(|id| {
                format!("[[services.data_migrations]]\nid = \"{id}\"\ndatabase = \"billing\"\n")
            })
            .collect();
        release(
            "\"billing\"",
            &format!(
                "{declared}{}requires_data_migrations = [{list}]\n",
                entry("billing", "1.2.0", phase, "001_a.sql")
            ),
        )
    };
    let m = Manifest::parse(&with("contract", "\"backfill_orders\"")).unwrap();
    assert_eq!(
        m.migrations[0].requires_data_migrations,
        ["backfill_orders"]
    );
    let none = Manifest::parse(&release(
        "\"billing\"",
        &entry("billing", "1.2.0", "contract", "001_a.sql"),
    ))
    .unwrap();
    assert!(none.migrations[0].requires_data_migrations.is_empty());
    assert!(err(&with("expand", "\"backfill_orders\"")).contains("for contract migrations only"));
    assert!(err(&with("contract", "\"a\", \"a\"")).contains("lists \"a\" twice"));
    assert!(err(&with("contract", "\"no spaces\"")).contains("requires_data_migrations"));
    let many: Vec<String> = (0..=MAX_REQUIRED_DATA)
        .map(|i| format!("\"d{i}\""))
        .collect();
    assert!(err(&with("contract", &many.join(", "))).contains("at most 16"));
}
