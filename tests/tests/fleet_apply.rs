//! `cutover fleet apply` catches the mistakes people make, against the
//! real controller and enrolled agents: a selection that matches no
//! enrolled host is refused (unless `--allow-empty`), a named host that
//! never enrolled is a warning, a typo gets the nearest real name, and a
//! re-apply says what changed (`--dry-run`: without storing; `-o json`:
//! the report).

use std::process::Command;

use cutover_tests::{Fleet, Run};

/// A controller with agents `edge-1` and `edge-2` enrolled and online.
fn world() -> Fleet {
    let mut f = Fleet::new();
    f.start_controller();
    f.start_agents(&["edge-1", "edge-2"]);
    f
}

const HOSTS: &str = "[hosts.edge-1]\nlabels = [\"edge\"]\n[hosts.edge-2]\nlabels = [\"edge\"]\n";

fn service(name: &str, selection: &str, extra: &str) -> String {
    format!(
        "[services.{name}]\n{selection}\nrunner = \"process\"\ncommand = \"bin/{name}\"\n{extra}"
    )
}

fn apply(f: &Fleet, text: &str, flags: &[&str]) -> Run {
    let path = f.path("fleet.toml");
    std::fs::write(&path, text).expect("write fleet");
    let mut args = vec!["fleet", "apply", path.to_str().expect("utf-8")];
    args.extend_from_slice(flags);
    f.cli(&args)
}

fn stored(f: &Fleet) -> Option<String> {
    let run = f.cli(&["fleet", "show"]);
    (run.code == 0).then_some(run.stdout)
}

#[test]
fn a_label_typo_that_selects_no_enrolled_host_is_refused_naming_the_nearest_label() {
    let f = world();
    let text = format!("{HOSTS}{}", service("api", "labels = [\"egde\"]", ""));
    apply(&f, &text, &[]).fails_with(
        "services.api selects no enrolled host: label \"egde\" is on no host in [hosts]; did you mean \"edge\"?; fix the selection, enroll the hosts first (`cutover token create HOST`), or pass --allow-empty",
    );
    assert_eq!(stored(&f), None, "a refused config was stored");
    // --dry-run refuses the same way.
    apply(&f, &text, &["--dry-run"]).fails_with("did you mean \"edge\"?");
}

#[test]
fn allow_empty_stores_a_config_whose_hosts_have_not_enrolled_yet_and_warns() {
    let mut f = Fleet::new();
    f.start_controller();
    let text = service("db", "hosts = [\"db-1\"]", "");
    apply(&f, &text, &[]).fails_with(
        "services.db selects no enrolled host: host \"db-1\" has not enrolled; fix the selection",
    );
    let run = apply(&f, &text, &["--allow-empty"]).ok();
    assert!(
        run.stderr.contains("warning: services.db selects no enrolled host (host \"db-1\" has not enrolled); kept as asked (--allow-empty)"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("warning: host \"db-1\" (services.db.hosts) has not enrolled: plans that include it fail until it does (`cutover token create db-1`)"),
        "{}",
        run.stderr
    );
    assert!(stored(&f).is_some_and(|s| s.contains("[services.db]")));
}

#[test]
fn a_named_host_that_never_enrolled_is_a_warning_with_the_nearest_enrolled_name_and_the_apply_goes_on(
) {
    let f = world();
    let text = service("api", "hosts = [\"edge-1\", \"edeg-2\"]", "");
    let run = apply(&f, &text, &[]).ok();
    let warnings: Vec<&str> = run.stderr.lines().collect();
    assert_eq!(
        warnings,
        ["warning: host \"edeg-2\" (services.api.hosts) has not enrolled: plans that include it fail until it does (`cutover token create edeg-2`); did you mean \"edge-2\"?"],
    );
    assert!(
        run.stdout.starts_with("fleet config ") && run.stdout.contains(" applied: 1 service(s)"),
        "{}",
        run.stdout
    );
    assert!(stored(&f).is_some_and(|s| s.contains("edeg-2")));
}

#[test]
fn reapplying_prints_what_changed_and_dry_run_shows_it_without_storing() {
    let f = world();
    let first = format!(
        "{HOSTS}{}{}",
        service("api", "labels = [\"edge\"]", ""),
        service("old", "hosts = [\"edge-1\"]", "")
    );
    let run = apply(&f, &first, &[]).ok();
    assert!(
        run.stdout
            .contains("changes (no fleet config was stored before):\n  + service api, old\n  + host edge-1, edge-2\n"),
        "{}",
        run.stdout
    );
    let before = stored(&f).expect("stored");

    let second = format!(
        "[hosts.edge-1]\nlabels = [\"edge\"]\n[hosts.edge-2]\nlabels = [\"core\"]\n{}{}",
        service(
            "api",
            "labels = [\"edge\"]",
            "[services.api.policy]\nmax_parallel = 2\n"
        ),
        service("web", "hosts = [\"edge-1\"]", "")
    );
    let expected = "  + service web\n  - service old\n  ~ service api: policy; hosts -edge-2\n  - host edge-2\n";
    let dry = apply(&f, &second, &["--dry-run"]).ok();
    assert!(
        dry.stdout.contains(
            "checked, not stored (--dry-run): 2 service(s), 2 host(s) with labels\nwould change:\n"
        ) && dry.stdout.ends_with(expected),
        "{}",
        dry.stdout
    );
    assert_eq!(
        stored(&f).as_deref(),
        Some(before.as_str()),
        "--dry-run stored"
    );

    let run = apply(&f, &second, &[]).ok();
    assert!(
        run.stdout
            .contains(" applied: 2 service(s), 2 host(s) with labels\nchanges:\n")
            && run.stdout.ends_with(expected),
        "{}",
        run.stdout
    );
    let again = apply(&f, &second, &[]).ok();
    assert!(
        again
            .stdout
            .ends_with("no changes since the stored fleet config\n"),
        "{}",
        again.stdout
    );
    let events = f.cli(&["events"]).ok().stdout;
    assert!(
        events.contains("services +1 -1 ~1, hosts +0 -1; 0 warning(s)"),
        "{events}"
    );
}

#[test]
fn fleet_apply_output_json_is_the_report_with_changes_and_warnings() {
    let f = world();
    let text = format!(
        "{HOSTS}{}",
        service(
            "api",
            "labels = [\"edge\", \"eu-wset\"]\nhosts = [\"edge-3\"]",
            ""
        )
    );
    let path = f.path("fleet.toml");
    std::fs::write(&path, &text).expect("write");
    let p = path.to_str().expect("utf-8");
    let dry = f.cli_json(&["fleet", "apply", p, "--dry-run"]);
    assert_eq!(dry["dry_run"], true);
    assert_eq!(dry["stored"], false);
    assert_eq!(dry["changes"]["first"], true);
    assert_eq!(dry["changes"]["services_added"]["names"][0], "api");
    assert_eq!(dry["changes"]["hosts_added"]["count"], 3);
    assert_eq!(dry["warnings"]["count"], 2);
    let warnings = dry["warnings"]["names"].to_string();
    assert!(
        warnings.contains("label \\\"eu-wset\\\" is on no host in [hosts]")
            && warnings.contains("host \\\"edge-3\\\" (services.api.hosts) has not enrolled"),
        "{warnings}"
    );
    assert_eq!(stored(&f), None);
    let applied = f.cli_json(&["fleet", "apply", p]);
    assert_eq!(applied["stored"], true);
    assert_eq!(applied["services"], 1);
    // -o json: stdout is the report alone; the warnings are said on stderr
    // as in text, for the person watching the script.
    let run = f.cli(&["fleet", "apply", p, "-o", "json"]).ok();
    let said: Vec<&str> = run.stderr.lines().collect();
    assert_eq!(said.len(), 2, "{}", run.stderr);
    assert!(
        said.iter().all(|l| l.starts_with("warning: ")),
        "{}",
        run.stderr
    );
    assert_eq!(run.json()["changes"]["services_changed_count"], 0);
    assert_eq!(run.json()["warnings"]["count"], 2);
}

#[test]
fn a_stored_fleet_config_the_controller_cannot_read_is_reported_and_replaced() {
    let f = world();
    apply(
        &f,
        &format!("{HOSTS}{}", service("api", "labels = [\"edge\"]", "")),
        &[],
    )
    .ok();
    let db = f.path("controller").join("state.db");
    let out = Command::new("sqlite3")
        .arg("-cmd")
        .arg(".timeout 10000")
        .arg(&db)
        .arg("UPDATE fleet SET toml = 'services = [' WHERE id = 1")
        .output()
        .expect("the sqlite3 shell is needed by this test (scripts/install-test-deps)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run = apply(
        &f,
        &format!("{HOSTS}{}", service("api", "labels = [\"edge\"]", "")),
        &[],
    )
    .ok();
    assert!(
        run.stderr
            .starts_with("warning: the stored fleet config: line 1")
            && run
                .stderr
                .contains("it is replaced, and every service is shown as added"),
        "{}",
        run.stderr
    );
    assert!(run.stdout.contains("  + service api\n"), "{}", run.stdout);
    assert!(stored(&f).is_some_and(|s| s.contains("[services.api]")));
}

#[test]
fn a_fleet_config_larger_than_the_controller_takes_is_refused_before_it_is_sent() {
    let mut f = Fleet::new();
    f.start_controller();
    let text = format!("# {}\n{HOSTS}", "x".repeat(5 << 20));
    apply(&f, &text, &[]).fails_with(
        "bytes; a fleet config may have at most 4128768 (what the controller takes in one message)",
    );
    assert_eq!(stored(&f), None);
}
