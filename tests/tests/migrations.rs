//! `cutover migrate` against a real PostgreSQL (a throwaway cluster per
//! test), a real controller and the real CLI: pending migrations applied
//! in order and never twice, a changed applied file refused with both
//! checksums, a failing file stopping the run at its line with nothing of
//! it left, `CREATE INDEX CONCURRENTLY` outside a transaction while a
//! second migrate waits and refuses naming the holder, the protocol for
//! databases without transactional DDL, lock timeouts retried then
//! failed, repair, `--dry-run`, an unreachable database, and a password
//! that never shows.

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
    let src = f.path(&format!("src-{version}"));
    std::fs::create_dir_all(src.join("api")).unwrap();
    std::fs::write(src.join("api/VERSION"), format!("{version}\n")).unwrap();
    for (file, text) in files {
        let path = src.join("migrations/billing").join(file);
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
        "api=billing",
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
            .contains("1.0.0/expand/002_bad.sql (failed) repaired by operator admin"),
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
fn create_index_concurrently_runs_outside_a_transaction_while_a_second_migrate_waits_then_refuses()
{
    let w = world("lock_timeout = \"10m\"");
    let (f, pg) = (&w.f, &w.pg);
    let index = "-- cutover:no-transaction\nCREATE INDEX CONCURRENTLY orders_x ON orders (x);\n";
    release(f, "1.0.0", &[("1.0.0/expand/001_orders.sql", ORDERS)]);
    migrate(f, "expand", "1.0.0", &["--yes"]).ok();
    release(
        f,
        "1.1.0",
        &[
            ("1.0.0/expand/001_orders.sql", ORDERS),
            ("1.1.0/expand/001_index.sql", index),
        ],
    );
    let dry = migrate(f, "expand", "1.1.0", &["--dry-run"]).ok();
    assert!(
        dry.stdout.contains("1.1.0/expand/001_index.sql")
            && dry.stdout.contains("(outside a transaction)"),
        "{}",
        dry.stdout
    );

    // The test's own transaction holds the table, so the index build waits
    // (holding the migration lock) until it is let go.
    let held = Held::new(pg, "LOCK TABLE orders IN SHARE MODE");
    let mut first = f.spawn_cli(&[
        "migrate",
        "--phase",
        "expand",
        "--version",
        "1.1.0",
        "--yes",
    ]);
    eventually(WAIT, "the index build to wait on the test's lock", || {
        let n = pg.sql("SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%CREATE INDEX CONCURRENTLY orders_x%' AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()");
        (n == "1").then_some(())
    });
    assert_eq!(
        pg.sql("SELECT state FROM _migrations WHERE name = '001_index.sql'"),
        "running"
    );
    let second = migrate(f, "expand", "1.1.0", &["--yes", "--lock-timeout", "1s"]);
    assert_eq!(second.code, 1, "{second:?}");
    assert!(
        second
            .stderr
            .contains("another migrate holds its lock (held by \"cutover-controller "),
        "{second:?}"
    );
    assert!(
        second.stderr.contains("migrate billing\", pid ") && second.stderr.contains("waited 1s"),
        "{second:?}"
    );

    held.release();
    let done = eventually(WAIT, "the first migrate to finish", || {
        first.try_wait().unwrap()
    });
    assert!(done.success(), "first migrate failed");
    assert_eq!(
        pg.sql("SELECT indisvalid FROM pg_index WHERE indexrelid = 'orders_x'::regclass"),
        "t"
    );
    assert_eq!(
        pg.sql("SELECT count(*), min(state) FROM _migrations WHERE name = '001_index.sql'"),
        "1|applied"
    );
    let again = migrate(f, "expand", "1.1.0", &["--yes"]).ok();
    assert!(again.stdout.contains("nothing pending"), "{}", again.stdout);
}

#[test]
fn without_transactional_ddl_each_migration_is_running_then_applied_and_a_dirty_row_blocks() {
    let w = world("transactional_ddl = false");
    let (f, pg) = (&w.f, &w.pg);
    let two = "CREATE TABLE a (x int);\nCREATE TABLE b (y int);\n";
    let bad = "CREATE TABLE c (x int);\n\nINSERT INTO nope VALUES (1);\n";
    release(
        f,
        "1.0.0",
        &[
            ("1.0.0/expand/001_ab.sql", two),
            ("1.0.0/expand/002_bad.sql", bad),
        ],
    );
    let s = status(f, "1.0.0");
    assert_eq!(s["pending"][0]["no_transaction"], true);
    let run = migrate(f, "expand", "1.0.0", &["--yes"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr
            .contains("002_bad.sql at line 3 failed: relation \"nope\" does not exist"),
        "{run:?}"
    );
    assert!(
        run.stderr
            .contains("not rolled back: it ran outside a transaction"),
        "{run:?}"
    );
    // Statement by statement, committed: what ran before the error stays.
    assert_eq!(
        pg.sql(
            "SELECT to_regclass('a') IS NULL, to_regclass('b') IS NULL, to_regclass('c') IS NULL"
        ),
        "f|f|f"
    );
    assert_eq!(
        pg.sql("SELECT name || ' ' || state FROM _migrations ORDER BY id"),
        "001_ab.sql applied\n002_bad.sql failed"
    );

    // A row left `running` (a controller that died mid-file) is dirty and
    // blocks until repaired.
    f.cli(&[
        "migrate",
        "repair",
        "--database",
        "billing",
        "--name",
        "002_bad.sql",
        "--yes",
    ])
    .ok();
    pg.sql("INSERT INTO _migrations (database, version, phase, name, checksum, state, applied_by, started_at) SELECT 'billing', '1.0.0', 'expand', '002_bad.sql', checksum, 'running', 'operator admin via a controller that died', now() FROM _migrations WHERE name = '002_bad.sql'");
    let s = status(f, "1.0.0");
    assert_eq!(s["dirty"][0]["name"], "002_bad.sql");
    let run = migrate(f, "expand", "1.0.0", &["--yes"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr
            .contains("migration 1.0.0/expand/002_bad.sql is dirty"),
        "{run:?}"
    );
    f.cli(&[
        "migrate",
        "repair",
        "--database",
        "billing",
        "--name",
        "1.0.0/expand/002_bad.sql",
        "--yes",
    ])
    .ok();
    assert!(status(f, "1.0.0")["dirty"].as_array().unwrap().is_empty());
}

#[test]
fn a_lock_timeout_is_retried_with_backoff_then_fails_cleanly() {
    let w = world("lock_timeout = \"100ms\"\nlock_retries = 2");
    let (f, pg) = (&w.f, &w.pg);
    release(f, "1.0.0", &[("1.0.0/expand/001_orders.sql", ORDERS)]);
    migrate(f, "expand", "1.0.0", &["--yes"]).ok();
    release(
        f,
        "1.1.0",
        &[
            ("1.0.0/expand/001_orders.sql", ORDERS),
            (
                "1.1.0/expand/001_y.sql",
                "ALTER TABLE orders ADD COLUMN y int;\n",
            ),
        ],
    );
    let held = Held::new(pg, "LOCK TABLE orders IN ACCESS EXCLUSIVE MODE");
    let run = migrate(f, "expand", "1.1.0", &["--yes"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr
            .contains("canceling statement due to lock timeout (SQLSTATE 55P03)"),
        "{run:?}"
    );
    assert!(run.stderr.contains("rolled back, after 3 tries"), "{run:?}");
    assert_eq!(
        f.controller_log()
            .matches("lock timeout; trying again")
            .count(),
        2
    );
    assert_eq!(
        pg.sql("SELECT state FROM _migrations WHERE name = '001_y.sql'"),
        "failed"
    );
    held.release();
    assert_eq!(pg.sql("SELECT count(*) FROM information_schema.columns WHERE table_name = 'orders' AND column_name = 'y'"), "0");
}

#[test]
fn an_unreachable_database_is_one_line_naming_it_without_its_password() {
    let port = cutover_tests::free_port();
    let mut f = Fleet::new();
    f.controller_tables = format!(
        "\n[databases.billing]\nurl = \"postgresql://cutover:hunter2secret@127.0.0.1:{port}/billing\"\n"
    );
    f.start_controller();
    release(&f, "1.0.0", &[("1.0.0/expand/001_orders.sql", ORDERS)]);
    for args in [
        vec!["migrate", "status", "--version", "1.0.0"],
        vec![
            "migrate",
            "--phase",
            "expand",
            "--version",
            "1.0.0",
            "--yes",
        ],
    ] {
        let run = f.cli(&args);
        assert_eq!(run.code, 1, "{run:?}");
        let err = run.stderr.trim();
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.contains(&format!(
                "database \"billing\" (127.0.0.1:{port}): cannot connect"
            )),
            "{err}"
        );
        assert!(!err.contains("hunter2secret"), "{err}");
    }
    assert!(!f.controller_log().contains("hunter2secret"));
}

#[test]
fn tls_to_the_database_is_verified_against_its_ca_file() {
    let mut f = Fleet::new();
    // The fleet's own CA signed a certificate for 127.0.0.1: the server's.
    let pg = Postgres::start_tls(
        "billing",
        &f.pki.join("controller.pem"),
        &f.pki.join("controller-key.pem"),
    );
    let other = f.path("other-pki");
    f.cli(&[
        "pki",
        "init",
        "--dir",
        other.to_str().unwrap(),
        "--controller-host",
        "127.0.0.1",
    ])
    .ok();
    let tls =
        |ca: &std::path::Path| format!("sslmode = \"verify-full\"\nca_file = \"{}\"", ca.display());
    f.controller_tables = format!(
        "{}{}{}",
        pg.config("billing", &tls(&f.pki.join("ca.pem"))),
        pg.config("stranger", &tls(&other.join("ca.pem"))),
        pg.config("plain", ""),
    );
    f.start_controller();
    release(&f, "1.0.0", &[("1.0.0/expand/001_orders.sql", ORDERS)]);
    // The server takes TCP connections over TLS only: this one was.
    migrate(&f, "expand", "1.0.0", &["--yes"]).ok();
    assert_eq!(pg.sql("SELECT count(*) FROM orders"), "2");
    // A server whose certificate another CA signed is refused.
    let run = f.cli(&[
        "migrate",
        "status",
        "--version",
        "1.0.0",
        "--database",
        "stranger",
    ]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr.contains(&format!(
            "database \"stranger\" (127.0.0.1:{}): cannot connect",
            pg.port
        )),
        "{run:?}"
    );
    assert!(run.stderr.to_lowercase().contains("certificate"), "{run:?}");
    // And without TLS the server itself refuses.
    let run = f.cli(&[
        "migrate",
        "status",
        "--version",
        "1.0.0",
        "--database",
        "plain",
    ]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("database \"plain\""), "{run:?}");
}

#[test]
fn a_controller_killed_during_a_no_transaction_migration_leaves_a_dirty_row_that_blocks_until_repair(
) {
    let mut w = world("lock_timeout = \"10m\"");
    let index = "-- cutover:no-transaction\nCREATE INDEX CONCURRENTLY IF NOT EXISTS orders_x ON orders (x);\n";
    release(&w.f, "1.0.0", &[("1.0.0/expand/001_orders.sql", ORDERS)]);
    migrate(&w.f, "expand", "1.0.0", &["--yes"]).ok();
    release(
        &w.f,
        "1.1.0",
        &[
            ("1.0.0/expand/001_orders.sql", ORDERS),
            ("1.1.0/expand/001_index.sql", index),
        ],
    );
    let held = Held::new(&w.pg, "LOCK TABLE orders IN SHARE MODE");
    let mut cli = w.f.spawn_cli(&[
        "migrate",
        "--phase",
        "expand",
        "--version",
        "1.1.0",
        "--yes",
    ]);
    eventually(WAIT, "the index build to wait on the test's lock", || {
        let n = w.pg.sql("SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%CREATE INDEX CONCURRENTLY IF NOT EXISTS orders_x%' AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()");
        (n == "1").then_some(())
    });
    w.f.kill_controller();
    let _ = cli.kill();
    let _ = cli.wait();
    held.release();
    // The dead controller's session ends once its statement does.
    eventually(WAIT, "the dead controller's session to end", || {
        let n = w.pg.sql("SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'cutover-controller%'");
        (n == "0").then_some(())
    });
    assert_eq!(
        w.pg.sql("SELECT state FROM _migrations WHERE name = '001_index.sql'"),
        "running"
    );

    w.f.start_controller();
    let f = &w.f;
    assert_eq!(status(f, "1.1.0")["dirty"][0]["name"], "001_index.sql");
    let run = migrate(f, "expand", "1.1.0", &["--yes"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr
            .contains("migration 1.1.0/expand/001_index.sql is dirty"),
        "{run:?}"
    );
    assert!(
        run.stderr.contains(
            "cutover migrate repair --database billing --name 1.1.0/expand/001_index.sql"
        ),
        "{run:?}"
    );
    // The operator looks, drops what is half built, and repairs.
    w.pg.sql("DROP INDEX IF EXISTS orders_x");
    f.cli(&[
        "migrate",
        "repair",
        "--database",
        "billing",
        "--name",
        "001_index.sql",
        "--yes",
    ])
    .ok();
    migrate(f, "expand", "1.1.0", &["--yes"]).ok();
    assert_eq!(
        w.pg.sql("SELECT indisvalid FROM pg_index WHERE indexrelid = 'orders_x'::regclass"),
        "t"
    );
    assert_eq!(
        w.pg.sql("SELECT state, repaired_at IS NOT NULL FROM _migrations WHERE name = '001_index.sql' ORDER BY id"),
        "running|t\napplied|f"
    );
}

#[test]
fn what_a_file_sets_on_its_session_never_reaches_the_ledger_or_the_next_file() {
    let w = world("");
    let (f, pg) = (&w.f, &w.pg);
    // Each file leaves the session's search path where the ledger is not
    // found and where the next file's unqualified table could not go.
    let away = "SET search_path = pg_catalog;\n";
    release(
        f,
        "1.0.0",
        &[
            (
                "1.0.0/expand/001_in_tx.sql",
                &format!("{away}CREATE TABLE public.a (x int);\n"),
            ),
            (
                "1.0.0/expand/002_outside.sql",
                &format!("-- cutover:no-transaction\n{away}CREATE TABLE public.b (x int);\n"),
            ),
            ("1.0.0/expand/003_next.sql", "CREATE TABLE c (x int);\n"),
        ],
    );
    migrate(f, "expand", "1.0.0", &["--yes"]).ok();
    assert_eq!(
        pg.sql("SELECT string_agg(name || ' ' || state, ', ' ORDER BY id) FROM public._migrations"),
        "001_in_tx.sql applied, 002_outside.sql applied, 003_next.sql applied"
    );
    assert_eq!(
        pg.sql("SELECT to_regclass('public.c') IS NOT NULL"),
        "t",
        "the next file ran with the session's own search path"
    );
}
