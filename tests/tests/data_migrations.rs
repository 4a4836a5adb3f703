//! Data migrations end to end (real controller, CLI, agents, PostgreSQL
//! and the sample service's own backfill): a dry run changes nothing, a
//! run moves every row through the agent, contract waits until it has
//! succeeded and passed a verify made after it, a tampered row fails the
//! verify by name and keeps contract refused; pause and resume; the
//! agent killed mid-run makes the state unknown (contract refused), and
//! once it is back the run goes on from its checkpoint with no row moved
//! twice; an upgrade waits for the migration required before it, and a
//! binary that cannot answer leaves the state unknown with its reason.

use std::path::PathBuf;
use std::time::Duration;

use cutover_cli::bundle::{self, Floor, Migration, Service};
use cutover_core::manifest::migrations::{parse_version, Location};
use cutover_core::manifest::{DataMigration, Phase};
use cutover_tests::postgres::Postgres;
use cutover_tests::sample::sample_fleet;
use cutover_tests::{bin, eventually, Fleet, Run};

const KEY: &str = "api.backfill_prices";
const ROWS: u64 = 2000;

const EXPAND: &str = "CREATE TABLE orders (id bigint PRIMARY KEY, doc jsonb NOT NULL);
CREATE TABLE order_prices (order_id bigint PRIMARY KEY, price_cents bigint NOT NULL);
INSERT INTO orders SELECT g, jsonb_build_object('price_cents', g * 3) FROM generate_series(1, 2000) g;
";
const CONTRACT: &str = "ALTER TABLE orders DROP COLUMN doc;\n";

/// A controller migrating `billing`, one agent, the sample service on it
/// connected to the database with batches of `batch` rows `delay_ms`
/// apart, and release 2.0.0 (expand, the backfill, contract) imported.
fn world(pg: &Postgres, batch: u32, delay_ms: u32) -> Fleet {
    let mut f = Fleet::new();
    f.controller_tables = pg.config("billing", "");
    f.assign_ports(&["h1"], &["api"]);
    f.start_controller();
    f.start_agents(&["h1"]);
    let mut fleet = sample_fleet(&["h1"], &["api"], "max_parallel = 1");
    fleet.push_str(&format!(
        "[services.api.env]\nCUTOVER_SAMPLE_DATABASE_URL = \"{}\"\nCUTOVER_SAMPLE_PASSWORD_FILE = \"{}\"\nCUTOVER_SAMPLE_BATCH = \"{batch}\"\nCUTOVER_SAMPLE_BATCH_DELAY_MS = \"{delay_ms}\"\n",
        pg.url(),
        pg.password_file.display()
    ));
    f.apply_fleet_text(&fleet);
    release(&f);
    f.cli(&[
        "migrate",
        "--phase",
        "expand",
        "--version",
        "2.0.0",
        "--yes",
    ])
    .ok();
    f.upgrade(&["api"], "2.0.0", &[]).ok();
    f
}

fn release(f: &Fleet) {
    let binary = std::fs::read(bin("cutover-sample")).expect("sample binary");
    let api = Service {
        name: "api".into(),
        service_version: "2.0.0".into(),
        depends_on: Vec::new(),
        databases: vec!["billing".into()],
        data_migrations: vec![DataMigration {
            id: "backfill_prices".into(),
            database: "billing".into(),
            description: "copy prices out of orders.doc".into(),
            required_before_contract: true,
            required_before_upgrade_to: None,
        }],
        files: bundle::sample_files(&binary, "2.0.0", true),
    };
    let at = |phase: &str, name: &str, sql: &str| Migration {
        at: Location {
            database: "billing".into(),
            version: parse_version("2.0.0").expect("version"),
            phase: Phase::parse(phase).expect("phase"),
            name: name.into(),
        },
        bytes: sql.as_bytes().to_vec(),
    };
    let migrations = [
        at("expand", "001_orders.sql", EXPAND),
        at("contract", "001_drop_doc.sql", CONTRACT),
    ];
    let b = bundle::bundle("2.0.0", &[api], &Floor::default(), &migrations).expect("bundle");
    let dir: PathBuf = f.path("release-2.0.0");
    let manifest = b.write(&dir).expect("write release");
    cutover_tests::sign_and_import(|a| f.cli(a), &manifest, &f.path("release.key")).ok();
}

fn contract(f: &Fleet) -> Run {
    f.cli(&[
        "migrate",
        "--phase",
        "contract",
        "--version",
        "2.0.0",
        "--yes",
    ])
}

fn refused(run: &Run, needle: &str) {
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains(needle), "{needle}: {run:?}");
}

/// The stored state of the backfill, as `list -o json` shows it.
fn stored(f: &Fleet) -> serde_json::Value {
    let all = f.cli_json(&["data-migrate", "list"]);
    cutover_tests::schema::check("data-migrations", &all);
    all.as_array()
        .and_then(|a| a.iter().find(|e| e["id"] == "backfill_prices").cloned())
        .expect("the backfill is listed")
}

fn state(f: &Fleet) -> String {
    stored(f)["record"]["status"]["state"]
        .as_str()
        .unwrap_or("never run")
        .to_string()
}

#[test]
fn a_verified_backfill_opens_contract_and_a_tampered_row_keeps_it_shut() {
    let pg = Postgres::start("billing");
    let f = world(&pg, 500, 0);
    assert_eq!(state(&f), "never run");
    refused(
        &contract(&f),
        "requires data migration api.backfill_prices, which has never run",
    );

    let dry = f.cli(&["data-migrate", "run", KEY, "--dry-run"]).ok();
    assert!(
        dry.stdout
            .contains(&format!("would move {ROWS} rows (dry run on h1;")),
        "{dry:?}"
    );
    assert_eq!(
        pg.sql("SELECT count(*) FROM order_prices"),
        "0",
        "a dry run moves nothing"
    );

    f.cli(&["data-migrate", "run", KEY, "--wait"]).ok();
    assert_eq!(
        pg.sql("SELECT count(*) FROM order_prices"),
        ROWS.to_string()
    );
    let s = stored(&f);
    assert_eq!(s["record"]["status"]["state"], "succeeded");
    assert_eq!(s["record"]["status"]["done"], ROWS);
    assert_eq!(s["record"]["host"], "h1");
    refused(&contract(&f), "has not been verified since it finished");

    pg.sql("UPDATE order_prices SET price_cents = price_cents + 1 WHERE order_id = 42");
    let bad = f.cli(&["data-migrate", "verify", KEY]);
    assert_eq!(bad.code, 1, "{bad:?}");
    assert!(bad.stderr.contains("price total: expected"), "{bad:?}");
    refused(&contract(&f), "its verify failed: ");
    assert_eq!(
        pg.sql("SELECT count(*) FROM information_schema.columns WHERE table_name = 'orders' AND column_name = 'doc'"),
        "1",
        "nothing of contract ran"
    );

    pg.sql("UPDATE order_prices SET price_cents = price_cents - 1 WHERE order_id = 42");
    let good = f.cli(&["data-migrate", "verify", KEY]).ok();
    assert!(good.stdout.contains("verify passed"), "{good:?}");
    let plan = f.cli_json(&["plan", "api", "--version", "2.0.0"]);
    cutover_tests::schema::check("plan", &plan);
    let one = f.cli_json(&["data-migrate", "status", KEY]);
    cutover_tests::schema::check("data-migration", &one);
    assert_eq!(one["record"]["verify"]["ok"], true, "{one}");
    assert_eq!(plan["data_migrations"][0]["key"], KEY, "{plan}");
    assert_eq!(plan["data_migrations"][0]["ready"], true, "{plan}");
    contract(&f).ok();
    assert_eq!(
        pg.sql("SELECT count(*) FROM information_schema.columns WHERE table_name = 'orders' AND column_name = 'doc'"),
        "0"
    );
    // Who asked is in the event log.
    let events = f.cli(&["events", "--limit", "50"]).ok().stdout;
    assert!(
        events.contains("api.backfill_prices: run asked by"),
        "{events}"
    );
    assert!(events.contains("verify failed on h1"), "{events}");
}

#[test]
fn pause_resume_and_an_agent_killed_mid_run_lose_no_row_and_count_none_twice() {
    let pg = Postgres::start("billing");
    // 100 batches at least 200 ms apart: 20 s or more, so that the pause
    // and the kill below land mid-run however busy the machine is (at
    // 50 ms apart a loaded CI run once finished before the pause).
    let mut f = world(&pg, 20, 200);
    f.cli(&["data-migrate", "run", KEY]).ok();
    eventually(Duration::from_secs(30), "running with progress", || {
        let s = stored(&f);
        (s["record"]["status"]["state"] == "running"
            && s["record"]["status"]["done"].as_u64() > Some(0))
        .then_some(())
    });
    f.cli(&["data-migrate", "pause", KEY]).ok();
    eventually(Duration::from_secs(30), "paused", || {
        (state(&f) == "paused").then_some(())
    });
    let moved: u64 = pg.sql("SELECT count(*) FROM order_prices").parse().unwrap();
    assert!(moved < ROWS, "paused before the end: {moved}");
    refused(&contract(&f), "is paused");

    f.cli(&["data-migrate", "resume", KEY]).ok();
    eventually(Duration::from_secs(30), "running again", || {
        (state(&f) == "running").then_some(())
    });
    // The agent dies mid-run: what runs there is out of sight.
    f.kill_agent("h1");
    eventually(
        Duration::from_secs(30),
        "unknown once the host is gone",
        || (state(&f) == "unknown").then_some(()),
    );
    refused(&contract(&f), "went offline while it ran");
    f.spawn_agent("h1", "1s", None);
    eventually(
        Duration::from_secs(120),
        "succeeded after the agent came back",
        || (state(&f) == "succeeded").then_some(()),
    );
    assert_eq!(
        pg.sql("SELECT count(*) FROM order_prices"),
        ROWS.to_string()
    );
    assert_eq!(
        pg.sql("SELECT sum(price_cents) FROM order_prices"),
        (3 * ROWS * (ROWS + 1) / 2).to_string()
    );
    assert_eq!(
        stored(&f)["record"]["status"]["done"],
        ROWS,
        "no row counted twice"
    );
    f.cli(&["data-migrate", "verify", KEY]).ok();
    contract(&f).ok();
}

#[test]
fn an_upgrade_waits_for_its_data_migration_and_a_binary_that_cannot_answer_gives_unknown() {
    let pg = Postgres::start("billing");
    let mut f = Fleet::new();
    f.controller_tables = pg.config("billing", "");
    f.assign_ports(&["h1"], &["api"]);
    f.start_controller();
    f.start_agents(&["h1"]);
    // No database settings in the service's environment: every
    // data-migrate command of the binary fails.
    f.apply_sample_fleet(&["h1"], &["api"], "max_parallel = 1");
    let binary = std::fs::read(bin("cutover-sample")).expect("sample binary");
    for (version, gate) in [("2.0.0", Some("3.0.0")), ("3.0.0", None)] {
        let api = Service {
            name: "api".into(),
            service_version: version.into(),
            depends_on: Vec::new(),
            databases: vec!["billing".into()],
            data_migrations: vec![DataMigration {
                id: "backfill_prices".into(),
                database: "billing".into(),
                description: String::new(),
                required_before_contract: false,
                required_before_upgrade_to: gate.map(|g| g.parse().expect("version")),
            }],
            files: bundle::sample_files(&binary, version, true),
        };
        let b = bundle::bundle(version, &[api], &Floor::default(), &[]).expect("bundle");
        let manifest = b
            .write(&f.path(&format!("release-{version}")))
            .expect("write");
        cutover_tests::sign_and_import(|a| f.cli(a), &manifest, &f.path("release.key")).ok();
    }
    f.upgrade(&["api"], "2.0.0", &[]).ok();
    let up = f.upgrade(&["api"], "3.0.0", &[]);
    refused(
        &up,
        "release 3.0.0 cannot be planned: data migration api.backfill_prices must be done before an upgrade to 3.0.0, and it has never run",
    );
    let run = f.cli(&["data-migrate", "run", KEY]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr.contains("state unknown") && run.stderr.contains("CUTOVER_SAMPLE_DATABASE_URL"),
        "the reason names the binary's own complaint: {run:?}"
    );
    assert_eq!(state(&f), "unknown");
    refused(&f.upgrade(&["api"], "3.0.0", &[]), "is in state unknown");
    refused(
        &f.cli(&["plan", "api", "--version", "3.0.0"]),
        "must be done before an upgrade to 3.0.0",
    );
}
