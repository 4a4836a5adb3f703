//! `cutover migrate` against a real PostgreSQL (a throwaway cluster per
//! test), a real controller and the real CLI. Here: pending migrations
//! applied in order and never twice, `--dry-run`, a changed applied file
//! refused with both checksums, a failing file stopping the run at its
//! line with nothing of it left, a file added behind one that ran, a
//! `BEGIN ATOMIC` body, and a run over two databases. `migrations/faults`
//! holds locks, crashes and the protocol outside a transaction;
//! `migrations/connection` the connection, its TLS and its credentials.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::Child;

use cutover_core::Sha256Digest;
use cutover_tests::postgres::Postgres;
use cutover_tests::{eventually, Fleet, Run, Value};

const WAIT: std::time::Duration = std::time::Duration::from_secs(60);

struct World {
    f: Fleet,
    pg: Postgres,
}

/// A cluster with database `billing`, and a controller whose
/// `[databases.billing]` points at it with `extra` keys.
fn world(extra: &str) -> World {
    let pg = Postgres::start("billing");
    let mut f = Fleet::new();
    f.controller_tables = pg.config("billing", extra);
    f.start_controller();
    World { f, pg }
}

/// Builds release `version` of service "api" owning "billing" with
/// `files` (paths under migrations/billing/), signs and imports it.
fn release(f: &Fleet, version: &str, files: &[(&str, &str)]) -> PathBuf {
    let files: Vec<(String, &str)> = files
        .iter()
        .map(|(path, text)| (format!("billing/{path}"), *text))
        .collect();
    release_of(f, version, "billing", &files)
}

/// [`release`] with "api" owning `databases` (`a,b`) and `files` as paths
/// under migrations/.
fn release_of(f: &Fleet, version: &str, databases: &str, files: &[(String, &str)]) -> PathBuf {
    let src = f.path(&format!("src-{version}"));
    std::fs::create_dir_all(src.join("api")).unwrap();
    std::fs::write(src.join("api/VERSION"), format!("{version}\n")).unwrap();
    for (file, text) in files {
        let path = src.join("migrations").join(file);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    let out = f.path(&format!("dist-{version}"));
    f.cli(&[
        "release",
        "build",
        src.to_str().unwrap(),
        "--version",
        version,
        "--service",
        "api",
        "--databases",
        &format!("api={databases}"),
        "--out",
        out.to_str().unwrap(),
    ])
    .ok();
    let manifest = out.join(format!("release-{version}.toml"));
    cutover_tests::sign_and_import(|a| f.cli(a), &manifest, &f.path("release.key")).ok();
    manifest
}

fn checksum(text: &str) -> String {
    Sha256Digest::of(text.as_bytes()).to_hex()
}

fn migrate(f: &Fleet, phase: &str, version: &str, extra: &[&str]) -> Run {
    let mut args = vec!["migrate", "--phase", phase, "--version", version];
    args.extend_from_slice(extra);
    f.cli(&args)
}

/// `cutover migrate --phase expand --version VERSION --yes`, started
/// without waiting for it.
fn spawn_migrate(f: &Fleet, version: &str) -> Child {
    f.spawn_cli(&[
        "migrate",
        "--phase",
        "expand",
        "--version",
        version,
        "--yes",
    ])
}

fn status(f: &Fleet, version: &str) -> Value {
    let s = f.cli_json(&["migrate", "status", "--version", version]);
    s["databases"][0].clone()
}

fn names(list: &Value) -> Vec<String> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|m| {
            format!(
                "{}/{}",
                m["phase"].as_str().unwrap(),
                m["name"].as_str().unwrap()
            )
        })
        .collect()
}

/// A psql session of the test's own holding `sql` (run in an open
/// transaction) until it is dropped or committed.
struct Held(Child);

impl Held {
    fn new(pg: &Postgres, sql: &str) -> Held {
        let mut child = pg.session();
        let stdin = child.stdin.as_mut().unwrap();
        writeln!(stdin, "BEGIN; {sql}; SELECT 'held';").unwrap();
        stdin.flush().unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "held", "the test's session took its lock");
        Held(child)
    }

    fn release(mut self) {
        let mut stdin = self.0.stdin.take().unwrap();
        writeln!(stdin, "COMMIT;").unwrap();
        drop(stdin);
        let _ = self.0.wait();
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

const ORDERS: &str = "CREATE TABLE orders (id bigint PRIMARY KEY, x int);\nINSERT INTO orders VALUES (1, 1), (2, 2);\n";
const ITEMS: &str = "CREATE TABLE items (id bigint PRIMARY KEY);\n";
const FILL: &str = "UPDATE orders SET x = id;\n";

#[path = "migrations/faults.rs"]
mod faults;

#[path = "migrations/connection.rs"]
mod connection;

#[test]
fn pending_migrations_apply_in_order_a_rerun_applies_nothing_and_dry_run_changes_nothing() {
    let w = world("");
    let (f, pg) = (&w.f, &w.pg);
    release(
        f,
        "1.0.0",
        &[
            ("1.0.0/expand/001_orders.sql", ORDERS),
            ("1.0.0/expand/002_items.sql", ITEMS),
            ("1.0.0/postdeploy/001_fill.sql", FILL),
        ],
    );
    // Dry: what would run, in order, with checksums; nothing touched (not
    // even the ledger made).
    let dry = migrate(f, "expand", "1.0.0", &["--dry-run"]).ok();
    let lines: Vec<&str> = dry.stdout.lines().collect();
    assert_eq!(
        lines[0], "database billing: would run, in order:",
        "{}",
        dry.stdout
    );
    assert_eq!(
        lines[1],
        format!("  1.0.0/expand/001_orders.sql  {}", checksum(ORDERS))
    );
    assert_eq!(
        lines[2],
        format!("  1.0.0/expand/002_items.sql  {}", checksum(ITEMS))
    );
    assert_eq!(
        pg.sql("SELECT to_regclass('_migrations') IS NULL, to_regclass('orders') IS NULL"),
        "t|t"
    );
    let s = status(f, "1.0.0");
    assert_eq!(s["ledger"], false);
    assert_eq!(
        names(&s["pending"]),
        [
            "expand/001_orders.sql",
            "expand/002_items.sql",
            "postdeploy/001_fill.sql"
        ]
    );

    // Not on a terminal and no --yes: refused, nothing applied.
    let asked = migrate(f, "expand", "1.0.0", &[]);
    assert_eq!(asked.code, 2, "{asked:?}");
    assert!(asked.stderr.contains("pass --yes"), "{asked:?}");
    assert_eq!(pg.sql("SELECT to_regclass('orders') IS NULL"), "t");

    let run = migrate(f, "expand", "1.0.0", &["--yes"]).ok();
    assert!(
        run.stdout
            .contains("database billing: applied 1.0.0/expand/001_orders.sql"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout
            .contains("database billing: applied 1.0.0/expand/002_items.sql"),
        "{}",
        run.stdout
    );
    assert_eq!(pg.sql("SELECT count(*) FROM orders"), "2");
    assert_eq!(
        pg.sql("SELECT version || '/' || phase || '/' || name || ' ' || state || ' ' || checksum FROM _migrations ORDER BY id"),
        format!(
            "1.0.0/expand/001_orders.sql applied {}\n1.0.0/expand/002_items.sql applied {}",
            checksum(ORDERS),
            checksum(ITEMS)
        )
    );
    let by = pg.sql("SELECT DISTINCT applied_by FROM _migrations");
    assert!(
        by.starts_with("operator admin via cutover-controller on "),
        "{by}"
    );
    assert_eq!(
        pg.sql("SELECT count(*) FROM _migrations WHERE finished_at IS NULL OR duration_ms IS NULL"),
        "0"
    );
    assert_eq!(pg.sql("SELECT version FROM _migrations_schema"), "1");

    // Again: nothing pending, nothing run twice.
    let again = migrate(f, "expand", "1.0.0", &["--yes"]).ok();
    assert!(
        again
            .stdout
            .contains("database billing: nothing pending in phase expand of release 1.0.0"),
        "{}",
        again.stdout
    );
    assert_eq!(pg.sql("SELECT count(*) FROM _migrations"), "2");

    let s = status(f, "1.0.0");
    assert_eq!(
        names(&s["applied"]),
        ["expand/001_orders.sql", "expand/002_items.sql"]
    );
    assert_eq!(names(&s["pending"]), ["postdeploy/001_fill.sql"]);
    assert!(
        s["drift"].as_array().unwrap().is_empty() && s["unknown"].as_array().unwrap().is_empty()
    );
    // Postdeploy waits for a rollout of "api" that this fleet never had
    // (tests/migration_gates.rs runs it after one).
    let post = migrate(f, "postdeploy", "1.0.0", &["--yes"]);
    assert_eq!(post.code, 1, "{post:?}");
    assert!(
        post.stderr
            .contains("database billing: postdeploy of release 1.0.0 refused"),
        "{post:?}"
    );
    assert_eq!(pg.sql("SELECT count(*) FROM _migrations"), "2");

    // Every start and finish in the event log, with the operator.
    let events = f.cli_json(&["events"]);
    let of = |kind: &str| {
        events
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["kind"] == kind)
            .map(|e| e["detail"].as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(of("migration.started").len(), 2);
    assert_eq!(of("migration.applied").len(), 2);
    assert!(
        of("migration.applied")[0].contains("database billing: 1.0.0/expand/001_orders.sql"),
        "{:?}",
        of("migration.applied")
    );
    assert!(of("migration.applied")[0].contains("operator admin"));

    // The password is nowhere: log, outputs, events, the status JSON.
    let everything = format!(
        "{}{}{}{}{events}{s}",
        f.controller_log(),
        dry.stdout,
        run.stdout,
        again.stdout
    );
    assert!(!everything.contains(&pg.password), "the password leaked");
}

#[test]
fn an_applied_migration_whose_file_changed_is_refused_with_both_checksums() {
    let w = world("");
    let f = &w.f;
    release(f, "1.0.0", &[("1.0.0/expand/001_orders.sql", ORDERS)]);
    migrate(f, "expand", "1.0.0", &["--yes"]).ok();
    let edited = "CREATE TABLE orders (id bigint PRIMARY KEY, x bigint);\n";
    release(
        f,
        "1.1.0",
        &[
            ("1.0.0/expand/001_orders.sql", edited),
            ("1.1.0/expand/001_items.sql", ITEMS),
        ],
    );
    let run = migrate(f, "expand", "1.1.0", &["--yes"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr
            .contains("applied migration 1.0.0/expand/001_orders.sql has changed since it ran"),
        "{run:?}"
    );
    assert!(
        run.stderr.contains(&checksum(ORDERS)) && run.stderr.contains(&checksum(edited)),
        "{run:?}"
    );
    assert!(!run.stderr.contains("line endings"), "{run:?}");
    assert_eq!(w.pg.sql("SELECT to_regclass('items') IS NULL"), "t");
    let s = status(f, "1.1.0");
    assert_eq!(s["drift"][0]["applied"], checksum(ORDERS));
    assert_eq!(s["drift"][0]["release"], checksum(edited));

    let crlf = ORDERS.replace('\n', "\r\n");
    release(f, "1.2.0", &[("1.0.0/expand/001_orders.sql", &crlf)]);
    let run = migrate(f, "expand", "1.2.0", &["--yes"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr.contains("(only its line endings differ)"),
        "{run:?}"
    );
    assert_eq!(status(f, "1.2.0")["drift"][0]["line_endings_only"], true);
}

#[test]
fn a_failing_migration_stops_the_run_at_its_line_and_leaves_nothing_until_repaired() {
    let w = world("");
    let (f, pg) = (&w.f, &w.pg);
    let bad = "CREATE TABLE b (x int);\nINSERT INTO b VALUES (1);\nINSERT INTO nope VALUES (1);\n";
    release(
        f,
        "1.0.0",
        &[
            ("1.0.0/expand/001_a.sql", "CREATE TABLE a (x int);\n"),
            ("1.0.0/expand/002_bad.sql", bad),
            ("1.0.0/expand/003_c.sql", "CREATE TABLE c (x int);\n"),
        ],
    );
    let run = migrate(f, "expand", "1.0.0", &["--yes"]);
    assert_eq!(run.code, 1, "{run:?}");
    let err = run.stderr.trim();
    assert!(err.contains("migration 1.0.0/expand/002_bad.sql at line 3 failed: relation \"nope\" does not exist (SQLSTATE 42P01)"), "{err}");
    assert!(
        err.contains("rolled back")
            && err.contains("later migrations did not run; 1 applied before it"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    // 001 applied; 002 rolled back whole; 003 never ran.
    assert_eq!(
        pg.sql(
            "SELECT to_regclass('a') IS NULL, to_regclass('b') IS NULL, to_regclass('c') IS NULL"
        ),
        "f|t|t"
    );
    assert_eq!(
        pg.sql("SELECT name || ' ' || state || ' ' || coalesce(error, '') FROM _migrations ORDER BY id"),
        "001_a.sql applied \n002_bad.sql failed line 3: relation \"nope\" does not exist (SQLSTATE 42P01)"
    );
    let events = f.cli(&["events"]).ok().stdout;
    assert!(events.contains("migration.failed"), "{events}");

    // A failed row blocks the database until repaired.
    let again = migrate(f, "expand", "1.0.0", &["--yes"]);
    assert_eq!(again.code, 1, "{again:?}");
    assert!(
        again
            .stderr
            .contains("migration 1.0.0/expand/002_bad.sql failed")
            && again.stderr.contains("cutover migrate repair"),
        "{again:?}"
    );
    assert_eq!(status(f, "1.0.0")["failed"][0]["name"], "002_bad.sql");

    let asked = f.cli(&[
        "migrate",
        "repair",
        "--database",
        "billing",
        "--name",
        "002_bad.sql",
    ]);
    assert_eq!(asked.code, 2, "{asked:?}");
    let repaired = f
        .cli(&[
            "migrate",
            "repair",
            "--database",
            "billing",
            "--name",
            "002_bad.sql",
            "--yes",
        ])
        .ok();
    assert!(
        repaired
            .stdout
            .contains("the failed row of 1.0.0/expand/002_bad.sql repaired by operator admin"),
        "{}",
        repaired.stdout
    );
    // Kept as history, marked with who and when; pending again.
    assert_eq!(pg.sql("SELECT state, repaired_by LIKE 'operator admin%', repaired_at IS NOT NULL FROM _migrations WHERE name = '002_bad.sql'"), "failed|t|t");
    let s = status(f, "1.0.0");
    assert_eq!(
        names(&s["pending"]),
        ["expand/002_bad.sql", "expand/003_c.sql"]
    );
    assert!(s["failed"].as_array().unwrap().is_empty());
    // The operator fixed the database by hand: the file now applies.
    pg.sql("CREATE TABLE nope (x int); ALTER TABLE nope OWNER TO cutover");
    migrate(f, "expand", "1.0.0", &["--yes"]).ok();
    assert_eq!(
        pg.sql("SELECT to_regclass('b') IS NULL, to_regclass('c') IS NULL"),
        "f|f"
    );
    // An applied row is not repaired.
    let r = f.cli(&[
        "migrate",
        "repair",
        "--database",
        "billing",
        "--name",
        "001_a.sql",
        "--yes",
    ]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr
            .contains("is applied; repair clears only failed or dirty rows"),
        "{r:?}"
    );
}

#[test]
fn a_migration_added_behind_one_that_ran_is_refused_by_name() {
    let w = world("");
    let (f, pg) = (&w.f, &w.pg);
    let table = |t: &str| format!("CREATE TABLE {t} (x int);\n");
    let (a, b, c) = (table("a"), table("b"), table("c"));
    release(
        f,
        "1.0.0",
        &[
            ("1.0.0/expand/001_a.sql", &a),
            ("1.0.0/expand/003_c.sql", &c),
        ],
    );
    migrate(f, "expand", "1.0.0", &["--yes"]).ok();
    // 002 appears in a later release, behind 003 that already ran.
    let files = [
        ("1.0.0/expand/001_a.sql", a.as_str()),
        ("1.0.0/expand/002_b.sql", &b),
        ("1.0.0/expand/003_c.sql", &c),
    ];
    release(f, "1.0.1", &files);
    let run = migrate(f, "expand", "1.0.1", &["--yes"]);
    assert_eq!(run.code, 1, "{run:?}");
    let err = run.stderr.trim();
    assert!(
        err.contains("migration 1.0.0/expand/002_b.sql is pending, but a later file of 1.0.0/expand/ already ran")
            && err.contains("give it a later number or put it in a later version"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    assert_eq!(pg.sql("SELECT to_regclass('b') IS NULL"), "t");
    let s = status(f, "1.0.1");
    assert_eq!(names(&s["out_of_order"]), ["expand/002_b.sql"]);
    let text = f
        .cli(&["migrate", "status", "--version", "1.0.1"])
        .ok()
        .stdout;
    assert!(
        text.contains("002_b.sql") && text.contains("added behind a migration that ran"),
        "{text}"
    );
}

#[test]
fn statements_run_as_psql_sends_them_and_an_error_without_a_position_names_its_line() {
    let w = world("");
    let (f, pg) = (&w.f, &w.pg);
    // A SQL-standard function body holds `;` that end no statement, in a
    // transaction and outside one.
    let atomic = |name: &str| {
        format!("CREATE FUNCTION {name}(x int) RETURNS int LANGUAGE sql\nBEGIN ATOMIC\n  SELECT CASE WHEN x > 0 THEN 1 ELSE 0 END;\nEND;\n")
    };
    let outside = format!("-- cutover:no-transaction\n{}", atomic("g"));
    // A duplicate key has no error position: the failing statement's
    // first line is named.
    let dup = "CREATE TABLE u (x int PRIMARY KEY);\nINSERT INTO u VALUES (1);\n-- once more\nINSERT INTO u\n  VALUES (1);\n";
    release(
        f,
        "1.0.0",
        &[
            ("1.0.0/expand/001_f.sql", &atomic("f")),
            ("1.0.0/expand/002_g.sql", &outside),
            ("1.0.0/expand/003_dup.sql", dup),
        ],
    );
    let run = migrate(f, "expand", "1.0.0", &["--yes"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr.contains("migration 1.0.0/expand/003_dup.sql at line 4 failed: duplicate key value violates unique constraint"),
        "{run:?}"
    );
    assert_eq!(pg.sql("SELECT f(5), g(-1)"), "1|0");
    assert_eq!(pg.sql("SELECT to_regclass('u') IS NULL"), "t");
    assert!(pg
        .sql("SELECT error FROM _migrations WHERE name = '003_dup.sql'")
        .starts_with("line 4: duplicate key value"));
}

#[test]
fn a_run_failing_in_its_second_database_says_what_the_first_applied() {
    let pg = Postgres::start("billing");
    pg.psql(
        "postgres",
        &format!(
            "CREATE DATABASE orders OWNER {}",
            cutover_tests::postgres::ROLE
        ),
    );
    let mut f = Fleet::new();
    f.controller_tables = format!(
        "{}{}",
        pg.config("billing", ""),
        pg.config("orders", "").replace("/billing\"", "/orders\"")
    );
    f.start_controller();
    let files = [
        (
            "billing/1.0.0/expand/001_a.sql".to_string(),
            "CREATE TABLE a (x int);\n",
        ),
        (
            "billing/1.0.0/expand/002_b.sql".to_string(),
            "CREATE TABLE b (x int);\n",
        ),
        (
            "orders/1.0.0/expand/001_bad.sql".to_string(),
            "CREATE TABLE nope (x nosuchtype);\n",
        ),
    ];
    release_of(&f, "1.0.0", "billing,orders", &files);
    let run = migrate(&f, "expand", "1.0.0", &["--yes"]);
    assert_eq!(run.code, 1, "{run:?}");
    let err = run.stderr.trim();
    assert!(
        err.contains("database \"orders\": migration 1.0.0/expand/001_bad.sql at line 1 failed")
            && err.contains("before it, database \"billing\" applied 2 migrations, the last 1.0.0/expand/002_b.sql"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[test]
fn a_file_that_controls_its_own_transaction_is_refused_before_anything_runs() {
    let w = world("");
    let (f, pg) = (&w.f, &w.pg);
    let tx = "CREATE TABLE b (x int);\n-- done:\nCOMMIT;\n";
    release(
        f,
        "1.0.0",
        &[
            ("1.0.0/expand/001_a.sql", "CREATE TABLE a (x int);\n"),
            ("1.0.0/expand/002_tx.sql", tx),
        ],
    );
    for extra in [&["--dry-run"][..], &["--yes"]] {
        let run = migrate(f, "expand", "1.0.0", extra);
        assert_eq!(run.code, 1, "{run:?}");
        let err = run.stderr.trim();
        assert!(
            err.contains(
                "migration 1.0.0/expand/002_tx.sql line 3: `COMMIT` controls the transaction"
            ) && err.ends_with("nothing ran"),
            "{err}"
        );
    }
    // Not even the file before it: the run was refused whole.
    assert_eq!(pg.sql("SELECT to_regclass('a') IS NULL"), "t");
}
