//! Fleet config parsing, with hostile values as well as good ones.

use super::*;

const GOOD: &str = r#"
[hosts.a]
labels = ["edge"]
[hosts.b]
labels = ["edge"]

[services.api]
hosts = ["c"]
labels = ["edge"]
runner = "process"
command = "bin/api"
min_healthy_time = "2s"
[[services.api.checks]]
kind = "http"
url = "http://127.0.0.1:1/healthz"
body_contains = "ok"
[services.api.policy]
max_parallel = 2
rollback_scope = "host"
"#;

#[test]
fn a_host_both_named_and_labelled_is_selected_once_in_order() {
    let f = FleetConfig::parse(
        "f.toml",
        &GOOD.replace("hosts = [\"c\"]", "hosts = [\"b\", \"0\"]"),
    )
    .unwrap();
    assert_eq!(f.hosts_of("api"), ["0", "a", "b"]);
}

#[test]
fn parses_with_defaults_and_resolves_labels() {
    let f = FleetConfig::parse("fleet.toml", GOOD).unwrap();
    assert_eq!(f.hosts_of("api"), ["a", "b", "c"]);
    let api = &f.services["api"];
    assert_eq!(api.policy.canary, 1);
    assert_eq!(api.policy.batch_size(), 1, "capped by max_unavailable");
    assert_eq!(api.policy.rollback_scope, RollbackScope::Host);
    assert_eq!(api.healthy_deadline, Duration::from_secs(60));
    assert!(matches!(
        api.checks[0].probe().unwrap(),
        Probe::Http {
            expect_status: 200,
            body_contains: Some("ok"),
            ..
        }
    ));
}

#[test]
fn unknown_key_names_file_and_key() {
    let text = GOOD.replace("max_parallel = 2", "max_paralel = 2");
    let e = FleetConfig::parse("fleet.toml", &text)
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("fleet.toml: line"), "{e}");
    assert!(e.contains("max_paralel"), "{e}");
}

#[test]
fn unknown_key_in_a_check_is_refused() {
    let text = GOOD.replace("body_contains", "body_contans");
    let e = FleetConfig::parse("fleet.toml", &text)
        .unwrap_err()
        .to_string();
    assert!(e.contains("body_contans"), "{e}");
}

#[test]
fn host_variables_are_substituted_and_unknown_ones_named() {
    let text = GOOD.replace(
        "http://127.0.0.1:1/healthz",
        "http://127.0.0.1:${port}/healthz",
    );
    let f = FleetConfig::parse("f.toml", &text).unwrap();
    let vars = BTreeMap::from([("port".to_string(), "8081".to_string())]);
    let c = f.services["api"].with_vars(&vars).unwrap();
    assert_eq!(
        c.checks[0].url.as_deref(),
        Some("http://127.0.0.1:8081/healthz")
    );
    let e = f.services["api"].with_vars(&BTreeMap::new()).unwrap_err();
    assert!(e.contains("`${port}` is not set"), "{e}");
}

#[test]
fn refuses_inconsistent_services() {
    for (from, to, want) in [
        ("command = \"bin/api\"", "", "command: required"),
        (
            "runner = \"process\"",
            "runner = \"systemd\"",
            "unit: required",
        ),
        (
            "min_healthy_time = \"2s\"",
            "min_healthy_time = \"2m\"",
            "healthy_deadline",
        ),
        (
            "hosts = [\"c\"]\nlabels = [\"edge\"]",
            "",
            "no `hosts` or `labels`",
        ),
        ("rollback_scope = \"host\"", "canary = 0", "canary"),
        ("url = ", "address = ", "checks[0].address: not used"),
    ] {
        let text = GOOD.replace(from, to);
        let e = FleetConfig::parse("f.toml", &text).unwrap_err().to_string();
        assert!(e.contains(want), "{want}: {e}");
    }
}

fn refusal(from: &str, to: &str) -> String {
    let text = GOOD.replace(from, to);
    assert_ne!(text, GOOD, "{from:?} is not in the test config");
    FleetConfig::parse("fleet.toml", &text)
        .unwrap_err()
        .to_string()
}

#[test]
fn durations_outside_their_bounds_are_refused_naming_key_value_file_and_bound() {
    let max = u64::MAX;
    for (from, to, want) in [
        (
            "min_healthy_time = \"2s\"",
            format!("min_healthy_time = \"2s\"\nhealthy_deadline = \"{max}s\""),
            format!("fleet.toml: services.api.healthy_deadline = \"{max}s\": must be between 100ms and 24h"),
        ),
        (
            "min_healthy_time = \"2s\"",
            "min_healthy_time = \"2s\"\nhealthy_deadline = \"0s\"".to_string(),
            "healthy_deadline = \"0s\": must be between 100ms and 24h".to_string(),
        ),
        (
            "min_healthy_time = \"2s\"",
            format!("min_healthy_time = \"{max}s\""),
            format!("min_healthy_time = \"{max}s\": must be between 0s and 1h"),
        ),
        (
            "rollback_scope = \"host\"",
            "step_deadline = \"0s\"".to_string(),
            "services.api.policy.step_deadline = \"0s\": must be between 1s and 48h".to_string(),
        ),
        (
            "rollback_scope = \"host\"",
            format!("step_deadline = \"{max}s\""),
            format!("policy.step_deadline = \"{max}s\": must be between 1s and 48h"),
        ),
        (
            "min_healthy_time = \"2s\"",
            format!("min_healthy_time = \"2s\"\nstop_grace = \"{max}s\""),
            format!("stop_grace = \"{max}s\": must be between 0s and 1h"),
        ),
        (
            "body_contains = \"ok\"",
            "body_contains = \"ok\"\ninterval = \"0s\"".to_string(),
            "checks[0].interval = \"0s\": must be between 10ms and 1h".to_string(),
        ),
        (
            "body_contains = \"ok\"",
            format!("body_contains = \"ok\"\ntimeout = \"{max}s\""),
            format!("checks[0].timeout = \"{max}s\": must be between 10ms and 10m"),
        ),
    ] {
        let e = refusal(from, &to);
        assert!(e.contains(&want), "want {want:?}, got {e}");
    }
}

#[test]
fn counts_outside_their_bounds_are_refused() {
    let huge = i64::MAX;
    for (to, want) in [
        (
            format!("canary = {huge}"),
            format!("canary = {huge}: must be between 1 and 100000"),
        ),
        (
            "max_parallel = 100001".to_string(),
            "max_parallel = 100001: must be between 1 and 100000".to_string(),
        ),
        (
            "max_unavailable = 0".to_string(),
            "max_unavailable = 0: must be between 1".to_string(),
        ),
    ] {
        let e = refusal("max_parallel = 2", &to);
        assert!(e.contains(&want), "want {want:?}, got {e}");
    }
    let many = "[[services.api.checks]]\nkind = \"exec\"\ncommand = \"true\"\n".repeat(33);
    let e = FleetConfig::parse("f.toml", &format!("{GOOD}{many}"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("services.api.checks = 34: must be between 0 and 32"),
        "{e}"
    );
}

#[test]
fn checks_must_target_the_host_itself_on_a_real_port() {
    for (url, want) in [
        ("http://example.com/healthz", "must target the host itself"),
        ("http://10.0.0.1:80/", "must target the host itself"),
        (
            "http://127.0.0.1@example.com/",
            "must not carry a user name",
        ),
        ("http://127.0.0.1:70000/", "not a number from 1 to 65535"),
        ("http://127.0.0.1:0/", "not a number from 1 to 65535"),
        ("http://localhost:-1/", "not a number from 1 to 65535"),
        ("http://${ip}x:80/", "must target the host itself"),
    ] {
        let e = refusal("http://127.0.0.1:1/healthz", url);
        assert!(
            e.contains("services.api.checks[0].url") && e.contains(want),
            "{url}: {e}"
        );
    }
    for url in [
        "http://localhost/healthz",
        "http://127.0.0.2:65535/",
        "http://[::1]:8080/x?y",
        "http://${addr}:${port}/healthz",
    ] {
        let text = GOOD.replace("http://127.0.0.1:1/healthz", url);
        FleetConfig::parse("f.toml", &text).unwrap_or_else(|e| panic!("{url}: {e}"));
    }
    let tcp = |address: &str| {
        GOOD.replace(
            "url = \"http://127.0.0.1:1/healthz\"",
            &format!("address = \"{address}\""),
        )
        .replace("kind = \"http\"", "kind = \"tcp\"")
        .replace("body_contains = \"ok\"", "")
    };
    for (address, want) in [
        ("db.internal:5432", "must target the host itself"),
        ("127.0.0.1:0", "not a number from 1 to 65535"),
        ("127.0.0.1", "needs a :PORT"),
    ] {
        let e = FleetConfig::parse("f.toml", &tcp(address))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("checks[0].address") && e.contains(want),
            "{address}: {e}"
        );
    }
    FleetConfig::parse("f.toml", &tcp("[::1]:5432")).unwrap();
}

#[test]
fn a_port_from_the_hosts_vars_is_checked_after_substitution() {
    let text = GOOD.replace(
        "http://127.0.0.1:1/healthz",
        "http://${addr}:${port}/healthz",
    );
    let f = FleetConfig::parse("f.toml", &text).unwrap();
    let vars = |port: &str| {
        BTreeMap::from([
            ("addr".to_string(), "192.0.2.7".to_string()),
            ("port".to_string(), port.to_string()),
        ])
    };
    let c = f.services["api"].with_vars(&vars("8081")).unwrap();
    assert_eq!(
        c.checks[0].url.as_deref(),
        Some("http://192.0.2.7:8081/healthz")
    );
    for bad in ["70000", "0", "80@example.com"] {
        let e = f.services["api"].with_vars(&vars(bad)).unwrap_err();
        assert!(
            e.contains("checks[0].url") && e.contains("after the host's [vars]"),
            "{bad}: {e}"
        );
    }
}

#[test]
fn container_limits_and_ports_are_bounded() {
    let docker = |container: &str| {
        format!("[services.web]\nhosts = [\"a\"]\nrunner = \"docker\"\n[services.web.container]\n{container}\n")
    };
    for (container, want) in [
        (
            "memory_bytes = -1",
            "container.memory_bytes = -1: must be between",
        ),
        ("cpus = 0.0", "container.cpus = 0: must be between"),
        ("cpus = nan", "container.cpus = NaN: must be between"),
        (
            "ports = [\"127.0.0.1:70000:80\"]",
            "container.ports: \"127.0.0.1:70000:80\" has a port",
        ),
        (
            "ports = [\"8080:0/udp\"]",
            "has a port that is not a number",
        ),
    ] {
        let e = FleetConfig::parse("f.toml", &docker(container))
            .unwrap_err()
            .to_string();
        assert!(e.contains(want), "{container}: {e}");
    }
    FleetConfig::parse(
        "f.toml",
        &docker("ports = [\"127.0.0.1:${p}:8080/tcp\"]\ncpus = 0.5"),
    )
    .unwrap();
}

#[test]
fn a_step_deadline_from_an_unchecked_config_saturates_instead_of_overflowing() {
    let p = Policy::default();
    assert_eq!(p.step_deadline_for(Duration::MAX), Duration::MAX);
    assert_eq!(
        p.step_deadline_for(Duration::from_secs(60)),
        Duration::from_secs(180)
    );
}

#[test]
fn durations_show_in_the_unit_that_divides_them() {
    assert_eq!(show_duration(Duration::from_secs(24 * 3600)), "24h");
    assert_eq!(show_duration(Duration::from_millis(100)), "100ms");
    assert_eq!(show_duration(Duration::from_secs(90)), "90s");
    assert_eq!(show_duration(Duration::ZERO), "0s");
    assert_eq!(
        show_duration(Duration::from_secs(u64::MAX)),
        format!("{}s", u64::MAX)
    );
    assert_eq!(show_duration(Duration::from_nanos(7)), "7ns");
}

#[test]
fn the_packaged_example_is_valid() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../packaging/fleet.toml");
    let f = FleetConfig::parse(path, &std::fs::read_to_string(path).unwrap()).unwrap();
    assert_eq!(f.hosts_of("api"), ["edge-1", "edge-2"]);
}

#[test]
fn an_oversized_value_is_refused_naming_its_key() {
    let long = "x".repeat(MAX_TEXT + 1);
    for (from, to, want) in [
        (
            "command = \"bin/api\"",
            format!("command = \"bin/api\"\nargs = [\"{long}\"]"),
            "services.api.args: a value of 16385 bytes",
        ),
        (
            "body_contains = \"ok\"",
            format!("body_contains = \"{long}\""),
            "services.api.checks[0].body_contains: a value of 16385 bytes",
        ),
        (
            "command = \"bin/api\"",
            format!("command = \"bin/api\"\nenv = {{ K = \"{long}\" }}"),
            "services.api.env: a value",
        ),
    ] {
        let e = FleetConfig::parse("f.toml", &GOOD.replace(from, &to))
            .unwrap_err()
            .to_string();
        assert!(e.contains(want), "{want}: {e}");
    }
}

#[test]
fn values_no_process_can_be_given_are_refused_at_parse() {
    for (from, to, want) in [
        (
            "command = \"bin/api\"",
            "command = \"bin/api\"\nargs = [\"a\\u0000b\"]",
            "services.api.args: \"a\\0b\" contains a NUL byte",
        ),
        (
            "command = \"bin/api\"",
            "command = \"bin/api\"\nenv = { \"C\" = \"nul\\u0000byte\" }",
            "services.api.env: \"nul\\0byte\" contains a NUL byte",
        ),
        (
            "command = \"bin/api\"",
            "command = \"bin/api\"\nenv = { \"A\\u0000\" = \"x\" }",
            "services.api.env: \"A\\0\" contains a NUL byte",
        ),
        (
            "command = \"bin/api\"",
            "command = \"bin/api\"\nenv = { \"A=B\" = \"x\" }",
            "services.api.env: variable name \"A=B\" contains `=`",
        ),
        (
            "command = \"bin/api\"",
            "command = \"bin/api\"\nenv = { \"\" = \"x\" }",
            "services.api.env: an empty variable name",
        ),
        (
            "command = \"bin/api\"",
            "command = \"bin/a\\u0000pi\"",
            "services.api.command: \"bin/a\\0pi\" contains a NUL byte",
        ),
        (
            "command = \"bin/api\"",
            "command = \"bin/api\"\nworking_dir = \"d\\u0000\"",
            "services.api.working_dir: \"d\\0\" contains a NUL byte",
        ),
        (
            "body_contains = \"ok\"",
            "body_contains = \"o\\u0000k\"",
            "services.api.checks[0].body_contains: \"o\\0k\" contains a NUL byte",
        ),
        (
            "command = \"bin/api\"",
            "command = \"../../../../bin/sh\"",
            "services.api.command: \"../../../../bin/sh\" has a `..` component; a relative command is inside the release directory (write an absolute path, such as /usr/bin/java",
        ),
        (
            "command = \"bin/api\"",
            "command = \"bin/../../sh\"",
            "has a `..` component",
        ),
    ] {
        let e = FleetConfig::parse("f.toml", &GOOD.replace(from, to))
            .unwrap_err()
            .to_string();
        assert!(e.contains(want), "{want}: {e}");
    }
    // A systemd unit and a container's settings too.
    let systemd = GOOD.replace(
        "runner = \"process\"\ncommand = \"bin/api\"",
        "runner = \"systemd\"\nunit = \"api\\u0000.service\"",
    );
    let e = FleetConfig::parse("f.toml", &systemd)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("services.api.unit: \"api\\0.service\" contains a NUL byte"),
        "{e}"
    );
    let docker = GOOD.replace(
        "runner = \"process\"\ncommand = \"bin/api\"",
        "runner = \"docker\"\ncontainer = { env = { \"X=Y\" = \"1\" } }",
    );
    let e = FleetConfig::parse("f.toml", &docker)
        .unwrap_err()
        .to_string();
    assert!(e.contains("container.env: variable name \"X=Y\""), "{e}");
    // An absolute command is the operator's to choose.
    let java = GOOD.replace("command = \"bin/api\"", "command = \"/usr/bin/java\"");
    FleetConfig::parse("f.toml", &java).unwrap();
}

#[test]
fn a_hosts_var_cannot_bring_a_nul_or_a_way_out_of_the_release() {
    let f = FleetConfig::parse(
        "f.toml",
        &GOOD.replace(
            "command = \"bin/api\"",
            "command = \"${prog}\"\nargs = [\"${arg}\"]",
        ),
    )
    .unwrap();
    let svc = &f.services["api"];
    let vars = |prog: &str, arg: &str| {
        BTreeMap::from([
            ("prog".to_string(), prog.to_string()),
            ("arg".to_string(), arg.to_string()),
        ])
    };
    svc.with_vars(&vars("bin/api", "x")).unwrap();
    let e = svc.with_vars(&vars("../../bin/sh", "x")).unwrap_err();
    assert!(
        e.contains("has a `..` component") && e.contains("after the host's [vars]"),
        "{e}"
    );
    let e = svc.with_vars(&vars("bin/api", "a\0b")).unwrap_err();
    assert!(e.contains("args: \"a\\0b\" contains a NUL byte"), "{e}");
}

#[test]
fn a_canary_larger_than_the_named_hosts_is_refused_at_parse() {
    let named = GOOD
        .replace("labels = [\"edge\"]\nrunner", "runner")
        .replace("hosts = [\"c\"]", "hosts = [\"edge-3\", \"edge-3\"]")
        .replace("max_parallel = 2", "canary = 5\nmax_parallel = 2");
    let e = FleetConfig::parse("f.toml", &named)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("f.toml: services.api.policy.canary = 5: the service runs on 1 named host(s), so at most 1 can be the canary"),
        "{e}"
    );
    FleetConfig::parse("f.toml", &named.replace("canary = 5", "canary = 1")).unwrap();
    // Labels resolve only at plan time, which judges those.
    let labelled = GOOD.replace("max_parallel = 2", "canary = 5\nmax_parallel = 2");
    FleetConfig::parse("f.toml", &labelled).unwrap();
}

#[test]
fn a_failure_threshold_is_parsed_with_its_startup_grace_and_bounded() {
    let text = GOOD.replace(
        "body_contains = \"ok\"",
        "body_contains = \"ok\"\nfailure_threshold = 3\nstartup_grace = \"20s\"",
    );
    let fleet = FleetConfig::parse("fleet.toml", &text).unwrap();
    let check = &fleet.services["api"].checks[0];
    assert_eq!(check.failure_threshold, Some(3));
    assert_eq!(check.startup_grace, Some(Duration::from_secs(20)));
    // Without it nothing changes: no threshold, no grace.
    let plain = FleetConfig::parse("fleet.toml", GOOD).unwrap();
    assert_eq!(plain.services["api"].checks[0].failure_threshold, None);
    // It reaches the agent inside the install command's config as JSON.
    let json = serde_json::to_string(check).unwrap();
    let back: Check = serde_json::from_str(&json).unwrap();
    assert_eq!(&back, check);

    for (to, want) in [
        (
            "failure_threshold = 0",
            "services.api.checks[0].failure_threshold = 0: must be between 1 and 1000",
        ),
        (
            "failure_threshold = 1001",
            "checks[0].failure_threshold = 1001: must be between 1 and 1000",
        ),
        (
            "failure_threshold = 2\nstartup_grace = \"25h\"",
            "checks[0].startup_grace = \"25h\": must be between 0s and 24h",
        ),
        (
            "startup_grace = \"5s\"",
            "startup_grace: only counts with failure_threshold",
        ),
    ] {
        let e = refusal(
            "body_contains = \"ok\"",
            &format!("body_contains = \"ok\"\n{to}"),
        );
        assert!(e.contains(want), "want {want:?}, got {e}");
    }
    let e = refusal(
        "body_contains = \"ok\"",
        "body_contains = \"ok\"\nfailure_threshold = -1",
    );
    // Below zero is not a count: refused where it stands.
    assert!(e.contains("line 17, column 21") && e.contains("-1"), "{e}");
}
