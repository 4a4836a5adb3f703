//! The migration gates end to end (real controller, real CLI, real agents,
//! a real PostgreSQL): plan and upgrade refused while expand is pending
//! and allowed after it; postdeploy refused until the rollout of every
//! owning service succeeded on every host; contract refused before
//! postdeploy and while a required data migration's state is unknown; a
//! database whose ledger cannot be read failing the plan by name; and the
//! plan showing the release's migrations, pending then applied.

use std::path::PathBuf;
use std::time::Duration;

use cutover_cli::bundle::{self, Floor, Migration, Service};
use cutover_core::manifest::migrations::{parse_version, Location};
use cutover_core::manifest::Phase;
use cutover_tests::postgres::Postgres;
use cutover_tests::{bin, eventually, Fleet, Run, Value};
use serde_json::json;

const HOSTS: [&str; 2] = ["h1", "h2"];

const ORDERS: &str = "CREATE TABLE orders (id bigint PRIMARY KEY, legacy int);\n";
const FILL: &str = "INSERT INTO orders VALUES (1, 1);\n";
const DROP: &str = "ALTER TABLE orders DROP COLUMN legacy;\n";

/// A controller whose `[databases.billing]` is `tables` (none: not
/// configured), agents on `hosts` and a fleet config running the sample
/// service "api" on them.
fn world(tables: String, hosts: &[&str]) -> Fleet {
    let mut f = Fleet::new();
    f.controller_tables = tables;
    f.assign_ports(hosts, &["api"]);
    f.start_controller();
    f.start_agents(hosts);
    f.apply_sample_fleet(hosts, &["api"], "max_parallel = 1\nmax_unavailable = 1");
    f
}

/// Release `version` of the sample service "api" owning "billing", with
/// `files` (`PHASE/NNN_name.sql`, SQL) of that version; `edit` changes
/// the manifest before it is signed.
fn release(f: &Fleet, version: &str, files: &[(&str, &str)], edit: impl Fn(String) -> String) {
    let binary = std::fs::read(bin("cutover-sample")).expect("sample binary");
    let api = Service {
        name: "api".into(),
        service_version: version.into(),
        depends_on: Vec::new(),
        databases: vec!["billing".into()],
        data_migrations: Vec::new(),
        files: bundle::sample_files(&binary, version, true),
    };
    let migrations: Vec<Migration> = files
        .iter()
        .map(|(at, sql)| {
            let (phase, name) = at.split_once('/').expect("PHASE/NAME");
            Migration {
                at: Location {
                    database: "billing".into(),
                    version: parse_version(version).expect("version"),
                    phase: Phase::parse(phase).expect("phase"),
                    name: name.into(),
                },
                bytes: sql.as_bytes().to_vec(),
            }
        })
        .collect();
    let mut b = bundle::bundle(version, &[api], &Floor::default(), &migrations).expect("bundle");
    b.manifest = edit(b.manifest);
    let dir: PathBuf = f.path(&format!("release-{version}"));
    let manifest = b.write(&dir).expect("write release");
    cutover_tests::sign_and_import(|a| f.cli(a), &manifest, &f.path("release.key")).ok();
}

fn migrate(f: &Fleet, phase: &str, version: &str) -> Run {
    f.cli(&["migrate", "--phase", phase, "--version", version, "--yes"])
}

/// A refusal: exit 1 and one line on stderr that contains `line`.
fn refused(run: &Run, line: &str) {
    assert_eq!(run.code, 1, "{run:?}");
    let err = run.stderr.trim();
    assert!(err.contains(line), "wanted {line:?} in: {err}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");
}

/// Waits until every host reports `version` of "api" installed: the
/// postdeploy gate reads what hosts report, not the rollout's record.
fn reported(f: &Fleet, hosts: &[&str], version: &str) {
    eventually(Duration::from_secs(30), "inventory reported", || {
        hosts
            .iter()
            .all(|h| {
                f.hosts()[*h]["services"].as_array().is_some_and(|s| {
                    s.iter()
                        .any(|s| s["name"] == "api" && s["current"]["release"] == version)
                })
            })
            .then_some(())
    });
}

/// `cutover plan api --version 1.0.0 -o json`, checked against its schema.
fn plan_json(f: &Fleet) -> Value {
    let doc = f.cli_json(&["plan", "api", "--version", "1.0.0"]);
    cutover_tests::schema::check("plan", &doc);
    doc
}

fn rollouts(f: &Fleet) -> usize {
    f.cli_json(&["rollout", "list"]).as_array().unwrap().len()
}

#[test]
fn upgrade_waits_for_expand_postdeploy_for_the_rollout_and_contract_for_postdeploy() {
    let pg = Postgres::start("billing");
    let f = world(pg.config("billing", ""), &HOSTS);
    release(
        &f,
        "1.0.0",
        &[
            ("expand/001_orders.sql", ORDERS),
            ("postdeploy/001_fill.sql", FILL),
            ("contract/001_drop.sql", DROP),
        ],
        |m| m,
    );
    let expand_first = "database billing has 1 pending expand migration of release 1.0.0: run `cutover migrate --phase expand --version 1.0.0` first";
    refused(&f.cli(&["plan", "api", "--version", "1.0.0"]), expand_first);
    refused(&f.upgrade(&["api"], "1.0.0", &[]), expand_first);
    assert_eq!(rollouts(&f), 0, "a refused upgrade starts nothing");

    // Postdeploy and contract wait for expand too.
    refused(
        &migrate(&f, "postdeploy", "1.0.0"),
        "database billing: postdeploy of release 1.0.0 refused: it has 1 pending expand migration; run `cutover migrate --phase expand --version 1.0.0` first",
    );
    migrate(&f, "expand", "1.0.0").ok();
    let text = f.cli(&["plan", "api", "--version", "1.0.0"]).ok().stdout;
    assert!(text.contains("level 0  api"), "{text}");
    assert!(
        text.contains(
            "database billing migrations:\n  expand      1 applied\n  postdeploy  1 pending: 1.0.0/postdeploy/001_fill.sql\n  contract    1 pending: 1.0.0/contract/001_drop.sql\n"
        ),
        "{text}"
    );
    let before = plan_json(&f);
    assert_eq!(before["migrations"][0]["database"], "billing");
    assert_eq!(
        before["migrations"][0]["phases"][1],
        json!({"phase": "postdeploy", "applied": [], "pending": ["1.0.0/postdeploy/001_fill.sql"]})
    );

    // Before the rollout: nothing of 1.0.0 runs anywhere.
    refused(
        &migrate(&f, "postdeploy", "1.0.0"),
        "database billing: postdeploy of release 1.0.0 refused: the rollout of 1.0.0 to the services owning it has not succeeded everywhere: api on h1 (runs nothing), api on h2 (runs nothing); finish it with `cutover upgrade --version 1.0.0`",
    );
    refused(
        &migrate(&f, "contract", "1.0.0"),
        "database billing: contract of release 1.0.0 refused: the rollout of 1.0.0",
    );
    // --dry-run is gated the same way: it says what would run now.
    refused(
        &f.cli(&[
            "migrate",
            "--phase",
            "postdeploy",
            "--version",
            "1.0.0",
            "--dry-run",
        ]),
        "postdeploy of release 1.0.0 refused",
    );
    assert_eq!(pg.sql("SELECT count(*) FROM orders"), "0");

    // While the rollout is unfinished (held paused): still refused.
    f.cli(&["upgrade", "api", "--version", "1.0.0", "--yes"])
        .ok();
    f.cli(&["rollout", "pause", "1"]).ok();
    refused(
        &migrate(&f, "postdeploy", "1.0.0"),
        "rollout 1 still moves api; finish it with `cutover upgrade --version 1.0.0`",
    );
    f.cli(&["rollout", "resume", "1"]).ok();
    f.cli(&["rollout", "watch", "1"]).ok();
    assert_eq!(f.last_rollout()["rollout"]["status"], "succeeded");
    reported(&f, &HOSTS, "1.0.0");

    // Contract before postdeploy.
    refused(
        &migrate(&f, "contract", "1.0.0"),
        "database billing: contract of release 1.0.0 refused: it has 1 pending postdeploy migration; run `cutover migrate --phase postdeploy --version 1.0.0` first",
    );
    migrate(&f, "postdeploy", "1.0.0").ok();
    assert_eq!(pg.sql("SELECT count(*) FROM orders"), "1");
    let after = plan_json(&f);
    assert_eq!(
        after["migrations"][0]["phases"][1],
        json!({"phase": "postdeploy", "applied": ["1.0.0/postdeploy/001_fill.sql"], "pending": []})
    );
    migrate(&f, "contract", "1.0.0").ok();
    assert_eq!(
        pg.sql("SELECT count(*) FROM information_schema.columns WHERE table_name = 'orders' AND column_name = 'legacy'"),
        "0"
    );
    assert_eq!(
        pg.sql("SELECT phase || '/' || name || ' ' || state FROM _migrations ORDER BY id"),
        "expand/001_orders.sql applied\npostdeploy/001_fill.sql applied\ncontract/001_drop.sql applied"
    );
}

#[test]
fn a_contract_that_requires_a_data_migration_is_refused_while_it_never_ran() {
    let pg = Postgres::start("billing");
    let f = world(pg.config("billing", ""), &HOSTS[..1]);
    release(
        &f,
        "1.0.0",
        &[
            ("expand/001_orders.sql", ORDERS),
            ("contract/001_drop.sql", DROP),
        ],
        |m| {
            m.replacen(
                "\n[[migrations]]",
                "[[services.data_migrations]]\nid = \"backfill_orders\"\ndatabase = \"billing\"\n\n[[migrations]]",
                1,
            )
            .replace(
                "phase = \"contract\"\n",
                "phase = \"contract\"\nrequires_data_migrations = [\"backfill_orders\"]\n",
            )
        },
    );
    migrate(&f, "expand", "1.0.0").ok();
    f.upgrade(&["api"], "1.0.0", &[]).ok();
    reported(&f, &HOSTS[..1], "1.0.0");
    refused(
        &migrate(&f, "contract", "1.0.0"),
        "database billing: contract of release 1.0.0 refused: it requires data migration api.backfill_orders, which has never run (its state is unknown to cutover)",
    );
    assert_eq!(
        pg.sql("SELECT count(*) FROM information_schema.columns WHERE table_name = 'orders' AND column_name = 'legacy'"),
        "1",
        "nothing of contract ran"
    );
}

#[test]
fn a_database_whose_ledger_cannot_be_read_fails_the_plan_naming_it() {
    let port = cutover_tests::free_port();
    let f = world(
        format!("\n[databases.billing]\nurl = \"postgresql://cutover@127.0.0.1:{port}/billing\"\n"),
        &HOSTS[..1],
    );
    release(&f, "1.0.0", &[("expand/001_orders.sql", ORDERS)], |m| m);
    for run in [
        f.cli(&["plan", "--all", "--version", "1.0.0"]),
        f.upgrade(&["--all"], "1.0.0", &[]),
    ] {
        refused(&run, "release 1.0.0 cannot be planned: the migration ledger of database billing cannot be read (");
        assert!(
            run.stderr.contains("check with `cutover migrate status --database billing --version 1.0.0`, then plan again"),
            "{run:?}"
        );
    }
    assert_eq!(rollouts(&f), 0);

    // No [databases.billing] in the controller's config: the same.
    let g = world(String::new(), &HOSTS[..1]);
    release(&g, "1.0.0", &[("expand/001_orders.sql", ORDERS)], |m| m);
    refused(
        &g.cli(&["plan", "--all", "--version", "1.0.0"]),
        "the migration ledger of database billing cannot be read (database \"billing\": release 1.0.0 has migrations for it, but the controller's config has no [databases.billing])",
    );
}
