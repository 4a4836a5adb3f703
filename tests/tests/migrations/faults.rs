//! Migrations under contention and failure: `CREATE INDEX CONCURRENTLY`
//! outside a transaction while a second migrate waits and refuses naming
//! the holder, the protocol for databases without transactional DDL, lock
//! timeouts retried then failed, a controller killed mid-file leaving a
//! dirty row until repair, a migrate at work told from a crash, and a
//! COMMIT cut off told as unknown.

use super::*;

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
    let mut first = spawn_migrate(f, "1.1.0");
    eventually(WAIT, "the index build to wait on the test's lock", || {
        let n = pg.sql("SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%CREATE INDEX CONCURRENTLY orders_x%' AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()");
        (n == "1").then_some(())
    });
    assert_eq!(
        pg.sql("SELECT state FROM _migrations WHERE name = '001_index.sql'"),
        "running"
    );
    // Its `running` row is a migrate at work, not one cut short: the lock
    // says so, and nobody is told to repair it.
    let s = status(f, "1.1.0");
    assert_eq!(s["dirty"][0]["name"], "001_index.sql");
    assert!(
        s["migrating"]
            .as_str()
            .unwrap()
            .starts_with("held by \"cutover-controller "),
        "{s}"
    );
    let text = f
        .cli(&["migrate", "status", "--version", "1.1.0"])
        .ok()
        .stdout;
    assert!(
        text.contains("running  1.1.0/expand/001_index.sql")
            && text.contains("a migrate is at work"),
        "{text}"
    );
    let dry = migrate(f, "expand", "1.1.0", &["--dry-run"]);
    assert!(
        dry.stderr
            .contains("migration 1.1.0/expand/001_index.sql is running now")
            && !dry.stderr.contains("repair"),
        "{dry:?}"
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
    let mut cli = spawn_migrate(&w.f, "1.1.0");
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
fn a_commit_cut_off_is_told_as_unknown_and_writes_no_failed_row() {
    let w = world("");
    let (f, pg) = (&w.f, &w.pg);
    // A deferred constraint trigger runs at COMMIT and waits there.
    let slow = "CREATE TABLE s (x int);\n\
        CREATE FUNCTION s_wait() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_sleep(60); RETURN NULL; END $$;\n\
        CREATE CONSTRAINT TRIGGER s_slow AFTER INSERT ON s DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION s_wait();\n\
        INSERT INTO s VALUES (1);\n";
    release(f, "1.0.0", &[("1.0.0/expand/001_slow.sql", slow)]);
    let mut run = spawn_migrate(f, "1.0.0");
    let at_commit = "FROM pg_stat_activity WHERE query = 'COMMIT' AND application_name LIKE 'cutover-controller %'";
    eventually(WAIT, "the migration to wait in its COMMIT", || {
        (pg.sql(&format!(
            "SELECT count(*) {at_commit} AND wait_event = 'PgSleep'"
        )) == "1")
            .then_some(())
    });
    pg.sql(&format!("SELECT pg_terminate_backend(pid) {at_commit}"));
    let done = eventually(WAIT, "the migrate to end", || run.try_wait().unwrap());
    assert_eq!(done.code(), Some(1));
    let mut err = String::new();
    std::io::Read::read_to_string(run.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(
        err.contains("migration 1.0.0/expand/001_slow.sql failed")
            && err.contains("its COMMIT did not complete, so whether it applied is unknown"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    // What happened is in the ledger: nothing committed, no `failed` row
    // claiming to know; the migration is pending again.
    assert_eq!(pg.sql("SELECT count(*) FROM _migrations"), "0");
    assert_eq!(pg.sql("SELECT to_regclass('s') IS NULL"), "t");
    assert_eq!(
        names(&status(f, "1.0.0")["pending"]),
        ["expand/001_slow.sql"]
    );
}

#[test]
fn a_file_that_lets_go_of_every_lock_does_not_let_a_second_migrate_in() {
    let w = world("");
    let (f, pg) = (&w.f, &w.pg);
    // The lock is not on the session the file runs on: what the file
    // gives back is not the migration lock.
    let sly = "-- cutover:no-transaction\nDISCARD ALL;\nSELECT pg_advisory_unlock_all();\nSELECT pg_sleep(10);\nCREATE TABLE once (x int PRIMARY KEY);\n";
    release(f, "1.0.0", &[("1.0.0/expand/001_sly.sql", sly)]);
    let mut first = spawn_migrate(f, "1.0.0");
    eventually(WAIT, "the file to sleep", || {
        (pg.sql("SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%SELECT pg_sleep(10)%' AND application_name LIKE 'cutover-controller %'") == "1").then_some(())
    });
    let second = migrate(f, "expand", "1.0.0", &["--yes", "--lock-timeout", "1s"]);
    assert_eq!(second.code, 1, "{second:?}");
    assert!(
        second.stderr.contains("another migrate holds its lock"),
        "{second:?}"
    );
    let s = status(f, "1.0.0");
    assert!(
        s["migrating"]
            .as_str()
            .is_some_and(|h| h.starts_with("held by")),
        "{s}"
    );
    // Ctrl-C on the CLI says the migrate goes on, and it does.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(first.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let done = eventually(WAIT, "the first CLI to exit", || first.try_wait().unwrap());
    assert_eq!(done.code(), Some(130));
    let mut err = String::new();
    std::io::Read::read_to_string(first.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(
        err.contains("the migrate goes on on the controller")
            && err.contains("cutover migrate status"),
        "{err}"
    );
    let repair = f.cli(&[
        "migrate",
        "repair",
        "--database",
        "billing",
        "--name",
        "001_sly.sql",
        "--yes",
    ]);
    assert_eq!(
        repair.code, 1,
        "a repair waits for the lock too: {repair:?}"
    );
    eventually(WAIT, "the migration to be applied", || {
        (pg.sql("SELECT count(*), min(state) FROM _migrations WHERE name = '001_sly.sql'")
            == "1|applied")
            .then_some(())
    });
}
