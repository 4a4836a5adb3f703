//! The apply checks and the change report, on small fleets.

use super::*;

fn fleet(text: &str) -> FleetConfig {
    FleetConfig::parse("f.toml", text).unwrap()
}

fn enrolled(active: &[&str], revoked: &[&str]) -> Enrolled {
    Enrolled {
        active: active.iter().map(|s| s.to_string()).collect(),
        revoked: revoked.iter().map(|s| s.to_string()).collect(),
    }
}

const EDGE: &str = r#"
[hosts.edge-1]
labels = ["edge"]
[hosts.edge-2]
labels = ["edge"]
[services.api]
labels = ["edge"]
runner = "process"
command = "bin/api"
"#;

#[test]
fn a_label_typo_selects_no_enrolled_host_and_the_refusal_suggests_the_label() {
    let f = fleet(&EDGE.replace("labels = [\"edge\"]\nrunner", "labels = [\"egde\"]\nrunner"));
    let found = check(&f, &enrolled(&["edge-1", "edge-2"], &[]));
    let refusal = found.refusal().unwrap();
    assert_eq!(
        refusal,
        "services.api selects no enrolled host: label \"egde\" is on no host in [hosts]; did you mean \"edge\"?; fix the selection, enroll the hosts first (`cutover token create HOST`), or pass --allow-empty"
    );
    let allowed = found.allowed();
    assert!(
        allowed[0].contains("kept as asked (--allow-empty)"),
        "{allowed:?}"
    );
}

#[test]
fn a_selection_of_hosts_none_of_which_enrolled_is_empty_and_named_hosts_get_warnings() {
    let f = fleet(EDGE);
    let found = check(&f, &enrolled(&["edge-9"], &[]));
    assert_eq!(found.empty.len(), 1);
    assert_eq!(
        found.empty[0].why,
        "label \"edge\" is on 2 host(s), none of them enrolled"
    );
    assert_eq!(found.warnings.len(), 2, "{:?}", found.warnings);
    assert!(found.warnings[0].starts_with("host \"edge-1\" (hosts.edge-1) has not enrolled"));
    // edge-9 is enrolled and named nowhere: the nearest real host.
    assert!(
        found.warnings[0].ends_with("did you mean \"edge-9\"?"),
        "{:?}",
        found.warnings
    );
}

#[test]
fn a_named_host_typo_suggests_an_enrolled_host_the_config_does_not_name() {
    let f = fleet(
        "[services.db]\nhosts = [\"db-l\"]\nrunner = \"systemd\"\nunit = \"db.service\"\n[services.web]\nhosts = [\"db-2\"]\nrunner = \"systemd\"\nunit = \"w.service\"\n",
    );
    let found = check(&f, &enrolled(&["db-1", "db-2"], &[]));
    let refusal = found.refusal().unwrap();
    assert!(
        refusal.starts_with("services.db selects no enrolled host: host \"db-l\" has not enrolled; did you mean \"db-1\"?"),
        "{refusal}"
    );
    assert_eq!(found.warnings.len(), 1, "{:?}", found.warnings);
    assert!(
        found.warnings[0].contains("(services.db.hosts)"),
        "{:?}",
        found.warnings
    );
}

#[test]
fn a_service_that_selects_an_enrolled_host_passes_with_warnings_for_the_rest() {
    let f = fleet(
        &EDGE
            .replace(
                "labels = [\"edge\"]\nrunner",
                "labels = [\"edge\", \"eu-wset\"]\nhosts = [\"edge-3\"]\nrunner",
            )
            .replace(
                "[hosts.edge-2]\nlabels = [\"edge\"]",
                "[hosts.edge-2]\nlabels = [\"edge\", \"eu-west\"]",
            ),
    );
    let found = check(&f, &enrolled(&["edge-1"], &["edge-2"]));
    assert!(found.refusal().is_none());
    assert_eq!(
        found.warnings,
        [
            "services.api.labels: label \"eu-wset\" is on no host in [hosts]; did you mean \"eu-west\"?",
            "host \"edge-2\" (hosts.edge-2) is revoked: plans that include it fail; remove it from the fleet config",
            "host \"edge-3\" (services.api.hosts) has not enrolled: plans that include it fail until it does (`cutover token create edge-3`)",
        ]
    );
}

#[test]
fn many_empty_services_are_counted_and_only_the_first_named() {
    let mut text = String::new();
    for i in 0..10 {
        text.push_str(&format!(
            "[services.s{i}]\nlabels = [\"l{i}\"]\nrunner = \"process\"\ncommand = \"x\"\n"
        ));
    }
    let found = check(&fleet(&text), &Enrolled::default());
    let refusal = found.refusal().unwrap();
    assert!(
        refusal.starts_with("10 services select no enrolled host: services.s0 ("),
        "{refusal}"
    );
    assert!(
        refusal.contains(" and 7 more; fix the selection"),
        "{refusal}"
    );
    // Suggestions stop after their budget; the rest still get reasons.
    assert_eq!(found.empty.len(), 10);
}

#[test]
fn suggestions_and_warnings_stay_bounded_at_fleet_size() {
    let mut text = String::from("[services.api]\nrunner = \"process\"\ncommand = \"x\"\nhosts = [");
    for i in 0..5_000 {
        text.push_str(&format!("\"h-{i:05}\","));
    }
    text.push_str("]\n");
    let f = fleet(&text);
    let active: Vec<String> = (0..5_000).map(|i| format!("x-{i:05}")).collect();
    let found = check(
        &f,
        &Enrolled {
            active: active.into_iter().collect(),
            revoked: BTreeSet::new(),
        },
    );
    let with_hint = found
        .warnings
        .iter()
        .filter(|w| w.contains("did you mean"))
        .count();
    assert!(with_hint <= MAX_SUGGESTIONS, "{with_hint}");
    let w = bounded_warnings(&found.warnings);
    assert_eq!(w.count, 5_000);
    assert_eq!(w.names.len(), MAX_WARNINGS);
}

#[test]
fn a_first_apply_adds_everything() {
    let c = changes(None, &fleet(EDGE));
    assert!(c.first);
    assert_eq!(c.services_added.names, ["api"]);
    assert_eq!(c.hosts_added.names, ["edge-1", "edge-2"]);
    assert_eq!(c.services_changed_count, 0);
}

#[test]
fn reapplying_the_same_config_changes_nothing() {
    let f = fleet(EDGE);
    let c = changes(Some(&f), &f);
    assert!(!c.first);
    assert!(c.is_empty(), "{c:?}");
}

#[test]
fn reapplying_reports_services_added_removed_and_changed_and_hosts_moved() {
    let old = fleet(&format!(
        "{EDGE}[services.old]\nhosts = [\"edge-1\"]\nrunner = \"process\"\ncommand = \"x\"\n"
    ));
    let new = fleet(&format!(
        "{}\n[hosts.edge-3]\nlabels = [\"edge\"]\n[services.api.policy]\nmax_parallel = 2\n[services.web]\nhosts = [\"edge-1\"]\nrunner = \"process\"\ncommand = \"x\"\n",
        EDGE.replace("[hosts.edge-2]\nlabels = [\"edge\"]\n", "")
    ));
    let c = changes(Some(&old), &new);
    assert_eq!(c.services_added.names, ["web"]);
    assert_eq!(c.services_removed.names, ["old"]);
    assert_eq!(c.services_changed_count, 1);
    let api = &c.services_changed[0];
    assert_eq!(api.service, "api");
    assert_eq!(api.keys, ["policy"]);
    assert_eq!(api.hosts_added.names, ["edge-3"]);
    assert_eq!(api.hosts_removed.names, ["edge-2"]);
    assert_eq!(c.hosts_added.names, ["edge-3"]);
    assert_eq!(c.hosts_removed.names, ["edge-2"]);
}

#[test]
fn a_label_moved_between_hosts_changes_the_selection_of_the_services_using_it() {
    let old = fleet(EDGE);
    let new = fleet(&EDGE.replace(
        "[hosts.edge-2]\nlabels = [\"edge\"]",
        "[hosts.edge-2]\nlabels = [\"core\"]",
    ));
    let c = changes(Some(&old), &new);
    assert_eq!(c.services_changed_count, 1);
    assert!(c.services_changed[0].keys.is_empty());
    assert_eq!(c.services_changed[0].hosts_removed.names, ["edge-2"]);
    assert_eq!(c.hosts_removed.names, ["edge-2"]);
}

#[test]
fn long_lists_of_changes_are_counted_whole_and_listed_in_part() {
    let mut text = String::new();
    for i in 0..(MAX_CHANGED_LISTED + 5) {
        text.push_str(&format!(
            "[services.s{i}]\nhosts = [\"h\"]\nrunner = \"process\"\ncommand = \"x\"\n"
        ));
    }
    let old = fleet(&text);
    let new = fleet(&text.replace("command = \"x\"", "command = \"y\""));
    let c = changes(Some(&old), &new);
    assert_eq!(c.services_changed_count, MAX_CHANGED_LISTED + 5);
    assert_eq!(c.services_changed.len(), MAX_CHANGED_LISTED);
    let many = Names::of((0..5_000).map(|_| "h"), MAX_LISTED);
    assert_eq!((many.count, many.names.len()), (5_000, MAX_LISTED));
}
