//! `-o json` is a contract: every command that prints something prints,
//! with `-o json`, one document that its JSON Schema in `docs/json/`
//! accepts (or, streaming, one such object per line), ending with a
//! newline; instants are RFC 3339, identifiers strings, enum values the
//! text's own words. One fleet of real agents walks through every command,
//! a failed rollout and a manual rollback among them, and every schema in
//! the repository is checked against real output at least once.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::time::Duration;

use cutover_cli::bundle::{self, Floor, Service};
use cutover_tests::postgres::Postgres;
use cutover_tests::sample::Svc;
use cutover_tests::{bin, eventually, id, schema, Fleet, Run, Value};

const HOSTS: [&str; 2] = ["h1", "h2"];

/// Checks runs of the CLI against the schemas and remembers which ones
/// were used.
struct Contract {
    checked: BTreeSet<String>,
}

impl Contract {
    /// `run`'s stdout is one `name` document ending with a newline.
    fn doc(&mut self, name: &str, run: &Run) -> Value {
        assert_eq!(run.code, 0, "{name}: command failed: {run:?}");
        assert!(
            run.stdout.ends_with('\n'),
            "{name}: no final newline: {run:?}"
        );
        let value: Value = serde_json::from_str(&run.stdout)
            .unwrap_or_else(|e| panic!("{name}: stdout is not one JSON document ({e}): {run:?}"));
        schema::check(name, &value);
        self.checked.insert(name.to_string());
        value
    }

    /// Every line of `text` is one `name` object.
    fn lines(&mut self, name: &str, text: &str) -> Vec<Value> {
        assert!(text.ends_with('\n'), "{name}: no final newline: {text}");
        let lines: Vec<Value> = text
            .lines()
            .map(|l| {
                serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("{name}: not one object per line ({e}): {l}"))
            })
            .collect();
        assert!(!lines.is_empty(), "{name}: no lines");
        for l in &lines {
            assert!(l.is_object(), "{name}: {l} is not an object");
            schema::check(name, l);
        }
        self.checked.insert(name.to_string());
        lines
    }
}

/// The fleet, its controller migrating database "billing" of `pg`.
fn world(pg: &Postgres) -> Fleet {
    let mut f = Fleet::new();
    f.controller_tables = pg.config("billing", "");
    f.assign_ports(&HOSTS, &["api"]);
    f.start_controller();
    f.start_agents(&HOSTS);
    f.apply_sample_fleet(&HOSTS, &["api"], "");
    f
}

fn s(p: &std::path::Path) -> &str {
    p.to_str().expect("utf-8 path")
}

#[test]
fn every_command_prints_with_o_json_a_document_its_schema_accepts() {
    let mut c = Contract {
        checked: BTreeSet::new(),
    };
    let pg = Postgres::start("billing");
    let mut f = world(&pg);
    let json = |f: &Fleet, args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        f.cli(&all)
    };

    // Local commands: files made, keys, builds, signatures, pages.
    let pki = f.path("pki-2");
    let written = c.doc(
        "written",
        &json(
            &f,
            &[
                "pki",
                "init",
                "--dir",
                s(&pki),
                "--controller-host",
                "localhost",
            ],
        ),
    );
    assert!(written["written"].as_array().is_some_and(|w| !w.is_empty()));
    let key = c.doc(
        "release-keygen",
        &json(
            &f,
            &["release", "keygen", "--out", s(&f.path("keys/second.key"))],
        ),
    );
    assert!(
        key["public_key"].as_str().unwrap().ends_with("second.pub"),
        "{key}"
    );
    let src = f.path("src");
    std::fs::create_dir_all(src.join("api/bin")).unwrap();
    std::fs::write(src.join("api/bin/run"), "#!/bin/sh\n").unwrap();
    let built = c.doc(
        "written",
        &json(
            &f,
            &[
                "release",
                "build",
                s(&src),
                "--version",
                "9.0.0",
                "--service",
                "api",
                "--out",
                s(&f.path("dist")),
            ],
        ),
    );
    assert!(
        built["written"][1]
            .as_str()
            .unwrap()
            .ends_with("release-9.0.0.toml"),
        "{built}"
    );
    c.doc("written", &json(&f, &["man", "--out", s(&f.path("man"))]));
    for refused in [&["completions", "bash"][..], &["demo"]] {
        let r = json(&f, refused);
        assert_eq!(r.code, 2, "{r:?}");
        assert!(r.stdout.is_empty(), "{r:?}");
        assert!(r.stderr.contains("-o json does not apply"), "{r:?}");
    }

    // A release signed and imported by hand, declaring a data migration.
    let binary = std::fs::read(bin("cutover-sample")).unwrap();
    let service = |version: &str, healthy: bool| Service {
        name: "api".into(),
        service_version: version.into(),
        depends_on: Vec::new(),
        databases: vec!["billing".into()],
        data_migrations: vec![cutover_core::manifest::DataMigration {
            id: "backfill_prices".into(),
            database: "billing".into(),
            description: "copy prices out of orders.doc".into(),
            required_before_contract: false,
            required_before_upgrade_to: None,
        }],
        files: bundle::sample_files(&binary, version, healthy),
    };
    let dir = f.path("release-1.0.0");
    let manifest =
        bundle::write_release(&dir, "1.0.0", &[service("1.0", true)], &Floor::default()).unwrap();
    let signed = c.doc(
        "release-sign",
        &json(
            &f,
            &[
                "release",
                "sign",
                s(&manifest),
                "--key",
                s(&f.path("release.key")),
            ],
        ),
    );
    assert_eq!(signed["release"], "1.0.0");
    let imported = c.doc(
        "release-import",
        &json(&f, &["release", "import", s(&manifest)]),
    );
    assert_eq!(imported["already_imported"], false);
    f.sample_release("1.1.0", &[Svc::new("api", "1.1")], Floor::default());
    f.sample_release("1.2.0", &[Svc::new("api", "1.2").sick()], Floor::default());

    // Reading the fleet.
    let version = c.doc("version", &json(&f, &["version"]));
    assert_eq!(version["cli"], version["controller"]);
    let hosts = c.doc("hosts", &json(&f, &["hosts"]));
    assert_eq!(hosts[0]["state"], "online");
    c.doc("status", &json(&f, &["status"]));
    c.doc("diag", &json(&f, &["diag", "h1"]));
    c.doc("fleet", &json(&f, &["fleet", "show"]));
    let fleet = f.path("fleet.toml");
    let applied = c.doc(
        "fleet-apply",
        &json(&f, &["fleet", "apply", s(&fleet), "--dry-run"]),
    );
    assert_eq!(applied["stored"], false);
    c.doc("releases", &json(&f, &["release", "list"]));
    let set = c.doc(
        "channel-set",
        &json(&f, &["channel", "set", "stable", "1.0.0"]),
    );
    assert_eq!(
        (&set["name"], &set["version"]),
        (&"stable".into(), &"1.0.0".into())
    );
    let default = c.doc("channel-set", &json(&f, &["channel", "default", "stable"]));
    assert_eq!(
        (&default["version"], &default["is_default"]),
        (&"1.0.0".into(), &true.into())
    );
    c.doc("channels", &json(&f, &["channel", "list"]));
    let token = c.doc(
        "token-create",
        &json(&f, &["token", "create", "h3", "--ttl", "10m"]),
    );
    assert!(token["token"].as_str().is_some_and(|t| !t.is_empty()));
    c.doc("tokens", &json(&f, &["token", "list"]));
    let revoked = c.doc("token-revoke", &json(&f, &["token", "revoke", "h3"]));
    assert_eq!(revoked["revoked"], 1);

    // A rollout, followed line by line.
    let plan = c.doc("plan", &json(&f, &["plan", "api", "--version", "1.0.0"]));
    assert_eq!(plan["release"], "1.0.0");
    c.doc(
        "plan",
        &json(&f, &["upgrade", "api", "--version", "1.0.0", "--dry-run"]),
    );
    let started = c.doc(
        "started",
        &json(&f, &["upgrade", "api", "--version", "1.0.0", "--yes"]),
    );
    let first = id(&started["rollout"]["id"]);
    let watched = json(&f, &["rollout", "watch", &first.to_string()]);
    assert_eq!(watched.code, 0, "{watched:?}");
    let lines = c.lines("rollout-watch-line", &watched.stdout);
    let last = lines.last().unwrap();
    assert_eq!(
        (&last["type"], &last["final"], &last["status"]),
        (
            &Value::from("progress"),
            &Value::from(true),
            &Value::from("succeeded")
        ),
        "{last}"
    );
    assert!(lines.iter().any(|l| l["type"] == "event"), "{lines:?}");
    let list = c.doc("rollouts", &json(&f, &["rollout", "list"]));
    assert_eq!(list[0]["status"], "succeeded");
    let shown = c.doc(
        "rollout-detail",
        &json(&f, &["rollout", "show", &first.to_string()]),
    );
    assert_eq!(shown["rollout"]["steps"][0]["phase"], "healthy");

    // Data migrations: the catalog, and one asked of its host, whose
    // binary has no database to answer with (unknown, with the reason).
    let all = c.doc("data-migrations", &json(&f, &["data-migrate", "list"]));
    assert_eq!(all[0]["id"], "backfill_prices", "{all}");
    let one = c.doc(
        "data-migration",
        &json(&f, &["data-migrate", "status", "api.backfill_prices"]),
    );
    assert_eq!(one["record"]["status"]["state"], "unknown", "{one}");

    // A failure: the failure's machine fields beside its words.
    f.upgrade(&["api"], "1.1.0", &[]).ok();
    let failed = json(
        &f,
        &["upgrade", "api", "--version", "1.2.0", "--yes", "--wait"],
    );
    assert_eq!(failed.code, 1, "{failed:?}");
    let lines = c.lines("rollout-watch-line", &failed.stdout);
    assert_eq!(lines[0]["type"], "started", "{lines:?}");
    let last = lines.last().unwrap();
    assert_eq!(last["status"], "rolled_back", "{last}");
    assert_eq!(last["failure"]["batch"], 0, "{last}");
    assert_eq!(last["failure"]["action"], "rolling_back", "{last}");
    let bad = c.doc(
        "rollout-detail",
        &json(&f, &["rollout", "show", last["rollout"].as_str().unwrap()]),
    );
    assert_eq!(bad["rollout"]["failure"]["boundary"], "canary");

    // --wait with nothing to move: its one line says so.
    let nothing = json(
        &f,
        &["upgrade", "api", "--version", "1.1.0", "--yes", "--wait"],
    );
    let lines = c.lines("rollout-watch-line", &nothing.stdout);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(
        (&lines[0]["type"], &lines[0]["rollout"]),
        (&"started".into(), &Value::Null)
    );

    // A manual rollback: each host to its own last known-good release.
    let preview = c.doc("plan", &json(&f, &["rollback", "api", "--dry-run"]));
    assert_eq!(preview["release"], Value::Null, "{preview}");
    let back = c.doc("started", &json(&f, &["rollback", "api", "--yes"]));
    assert_eq!(back["rollout"]["kind"], "rollback");
    assert_eq!(back["rollout"]["release"], Value::Null);
    let back = back["rollout"]["id"].as_str().unwrap().to_string();
    let watched = json(&f, &["rollout", "watch", &back]);
    assert_eq!(watched.code, 0, "{watched:?}");
    c.lines("rollout-watch-line", &watched.stdout);
    let listed = c.doc("rollouts", &json(&f, &["rollout", "list"]));
    assert_eq!(listed[0]["release"], Value::Null, "{listed}");

    // Pause, resume and abort-with-rollback of a rollout that waits for an
    // offline host.
    f.kill_agent("h2");
    eventually(Duration::from_secs(30), "h2 to be offline", || {
        (!f.is_online("h2")).then_some(())
    });
    let runs = f.hosts()["h1"]["services"][0]["current"]["release"].clone();
    let other = if runs == "1.0.0" { "1.1.0" } else { "1.0.0" };
    let waiting = c.doc(
        "started",
        &json(
            &f,
            &[
                "upgrade",
                "api",
                "--version",
                other,
                "--yes",
                "--allow-offline",
            ],
        ),
    );
    let waiting = id(&waiting["rollout"]["id"]).to_string();
    let paused = c.doc("rollout", &json(&f, &["rollout", "pause", &waiting]));
    assert_eq!(paused["status"], "paused");
    c.doc("rollout", &json(&f, &["rollout", "resume", &waiting]));
    let aborted = c.doc(
        "rollout-abort-rollback",
        &json(
            &f,
            &[
                "rollout",
                "abort",
                &waiting,
                "--rollback",
                "--yes",
                "--allow-offline",
            ],
        ),
    );
    assert_eq!(aborted["aborted"]["status"], "aborted");

    // The event log, whole and followed.
    let events = c.doc("events", &json(&f, &["events"]));
    assert!(events.as_array().is_some_and(|e| e.len() > 5));
    let mut child = f.spawn_cli(&["events", "--follow", "--limit", "3", "-o", "json"]);
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut followed = String::new();
    for _ in 0..3 {
        stdout.read_line(&mut followed).expect("a line");
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(130));
    assert_eq!(c.lines("event", &followed).len(), 3);

    // Host administration.
    f.start_agent("h3", "500ms");
    f.wait_online("h3");
    let gone = c.doc("host-change", &json(&f, &["host", "revoke", "h3", "--yes"]));
    assert_eq!(gone["action"], "revoked");
    let forgotten = c.doc("host-change", &json(&f, &["host", "forget", "h3"]));
    assert_eq!(forgotten["action"], "forgotten");

    // Schema migrations, against the test's own PostgreSQL.
    let src = f.path("mig-src");
    std::fs::create_dir_all(src.join("api")).unwrap();
    std::fs::write(src.join("api/VERSION"), b"9.0.0\n").unwrap();
    for (file, sql) in [
        ("9.0.0/expand/001_a.sql", "CREATE TABLE a (x int);\n"),
        ("9.0.0/expand/002_bad.sql", "SELECT * FROM nope;\n"),
    ] {
        let path = src.join("migrations/billing").join(file);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, sql).unwrap();
    }
    let dist = f.path("mig-dist");
    f.cli(&[
        "release",
        "build",
        s(&src),
        "--version",
        "9.0.0",
        "--service",
        "api",
        "--databases",
        "api=billing",
        "--out",
        s(&dist),
    ])
    .ok();
    cutover_tests::sign_and_import(
        |a| f.cli(a),
        &dist.join("release-9.0.0.toml"),
        &f.path("release.key"),
    )
    .ok();
    let migrate = |extra: &[&str]| {
        let mut args = vec!["migrate", "--version", "9.0.0"];
        args.extend_from_slice(extra);
        json(&f, &args)
    };
    let dry = c.doc("migrate-run", &migrate(&["--phase", "expand", "--dry-run"]));
    assert_eq!(dry["databases"][0]["migrations"][0]["name"], "001_a.sql");
    let fresh = c.doc(
        "migrate-status",
        &json(&f, &["migrate", "status", "--version", "9.0.0"]),
    );
    assert_eq!(fresh["databases"][0]["ledger"], false);
    // 001_a applies, 002_bad fails: the run's document is the error's.
    assert_eq!(migrate(&["--phase", "expand", "--yes"]).code, 1);
    let status = c.doc(
        "migrate-status",
        &json(&f, &["migrate", "status", "--version", "9.0.0"]),
    );
    assert_eq!(status["databases"][0]["applied"][0]["name"], "001_a.sql");
    assert_eq!(status["databases"][0]["failed"][0]["name"], "002_bad.sql");
    let repaired = c.doc(
        "migrate-repair",
        &json(
            &f,
            &[
                "migrate",
                "repair",
                "--database",
                "billing",
                "--name",
                "002_bad.sql",
                "--yes",
            ],
        ),
    );
    assert_eq!(repaired["entry"]["state"], "failed");

    let unused: Vec<String> = schema::all()
        .into_iter()
        .map(|(n, _)| n)
        .filter(|n| n != "defs" && !c.checked.contains(n))
        .collect();
    assert!(
        unused.is_empty(),
        "schemas no command output was checked against: {unused:?}"
    );
}

#[test]
fn the_contract_rules_catch_what_the_schemas_forbid() {
    // The checker itself: a document breaking each rule is caught.
    let problems = |v: Value| schema::problems("event", &v);
    let good = serde_json::json!({
        "id": "1", "at": "2026-12-01T10:00:00.5Z", "kind": "rollout.finished",
        "host": null, "rollout": "3", "detail": "rollout 3 succeeded"
    });
    assert!(
        problems(good.clone()).is_empty(),
        "{:?}",
        problems(good.clone())
    );
    let mut number_id = good.clone();
    number_id["id"] = 1.into();
    assert!(problems(number_id)
        .iter()
        .any(|p| p.contains("ids are strings")));
    let mut ms = good.clone();
    ms["at"] = 1_764_600_000_000i64.into();
    assert!(problems(ms).iter().any(|p| p.contains("RFC 3339")));
    let mut local = good.clone();
    local["at"] = "2026-12-01T10:00:00+01:00".into();
    assert!(!problems(local).is_empty());
    let mut extra = good.clone();
    extra["at_ms"] = 5.into();
    assert!(problems(extra)
        .iter()
        .any(|p| p.contains("instants are RFC 3339")));
    let mut misnamed = good;
    misnamed["detail"] = "2026-12-01T10:00:00Z".into();
    assert!(problems(misnamed)
        .iter()
        .any(|p| p.contains("does not say so")));
    // Every schema names itself and is a valid schema.
    for (name, s) in schema::all() {
        assert_eq!(
            s["$id"].as_str(),
            Some(format!("https://cutover.invalid/json/{name}.schema.json").as_str())
        );
        if name != "defs" {
            let _ = schema::problems(&name, &Value::Null);
        }
    }
}
