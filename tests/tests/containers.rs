//! Container services on the real Docker engine: images built locally from
//! scratch, delivered as verified tarballs, swapped and rolled back by real
//! agents. Without an engine these tests fail; they never skip.

use std::time::Duration;

use cutover_tests::docker::{container_fleet, docker, Image, Scope};
use cutover_tests::sample::{http_get, steps};
use cutover_tests::{eventually, Fleet};

const HOSTS: [&str; 3] = ["h1", "h2", "h3"];

fn world(scope: &Scope, extra: &str) -> Fleet {
    let mut f = Fleet::new();
    f.assign_ports(&HOSTS, &["web"]);
    f.start_controller();
    f.start_agents(&HOSTS);
    f.apply_fleet_text(&container_fleet(&scope.prefix, &HOSTS, "web", extra));
    f
}

fn import(f: &Fleet, version: &str, image: &Image) {
    f.image_release(version, "web", image, &image.id).ok();
}

fn served(f: &Fleet, host: &str) -> Option<String> {
    http_get(f.port_of(host, "web"), "/").map(|b| b.trim().to_string())
}

#[test]
fn containers_roll_forward_and_a_failing_image_is_rolled_back_with_its_settings() {
    let mut scope = Scope::new("roll");
    let f = world(&scope, "");
    let dir = f.path("images");
    let (v1, v2, v3) = (
        scope.image(&dir, "1.0.0", true),
        scope.image(&dir, "2.0.0", true),
        scope.image(&dir, "3.0.0", false),
    );
    import(&f, "1.0.0", &v1);
    import(&f, "2.0.0", &v2);
    import(&f, "3.0.0", &v3);
    f.upgrade(&["web"], "1.0.0", &[]).ok();
    f.upgrade(&["web"], "2.0.0", &[]).ok();
    // The three agents share this machine's engine: once h1 has loaded an
    // image, the others find it by ID and fetch nothing.
    let tarball_sha = cutover_core::Sha256Digest::of(&std::fs::read(&v2.tarball).unwrap()).to_hex();
    let fetches = f
        .controller_log()
        .lines()
        .filter(|l| l.contains("artifact fetch") && l.contains(&tarball_sha))
        .count();
    assert_eq!(fetches, 1, "an image already present was fetched again");
    for h in HOSTS {
        assert_eq!(served(&f, h).as_deref(), Some("2.0.0"), "{h}");
        let name = format!("{}-{h}", scope.prefix);
        assert_eq!(scope.running(&name), [(name.clone(), v2.id.clone())]);
        // The previous container is kept, stopped, for the way back.
        let previous = docker(&[
            "inspect",
            "--format",
            "{{.Image}} {{.State.Running}}",
            &format!("{name}-previous"),
        ]);
        assert_eq!(previous, format!("{} false", v1.id));
    }
    f.upgrade(&["web"], "3.0.0", &[])
        .fails_with("ended rolled_back");
    let r = f.last_rollout();
    assert_eq!(steps(&r, "rolled_back").len(), 1, "{r}");
    for h in HOSTS {
        let name = format!("{}-{h}", scope.prefix);
        assert_eq!(scope.running(&name), [(name.clone(), v2.id.clone())], "{h}");
        assert_eq!(served(&f, h).as_deref(), Some("2.0.0"));
        let settings = docker(&[
            "inspect",
            "--format",
            "{{json .Config.Env}} {{index .Config.Labels \"team\"}} {{.HostConfig.RestartPolicy.Name}} {{json .HostConfig.PortBindings}}",
            &name,
        ]);
        assert!(
            settings.contains("GREETING=hello") && settings.contains(" edge unless-stopped "),
            "{settings}"
        );
        assert!(
            settings.contains(&format!("\"HostPort\":\"{}\"", f.port_of(h, "web"))),
            "{settings}"
        );
    }
    let diag = f.cli(&["diag", "h1"]).ok().stdout;
    assert!(diag.contains(&format!("image {} running", v2.id)), "{diag}");
    let hosts = f.hosts();
    assert_eq!(
        hosts["h1"]["services"][0]["current"]["image_id"],
        v2.id.trim_start_matches("sha256:"),
        "{hosts:?}"
    );
}

#[test]
fn tampered_image_tarballs_are_refused_and_the_running_container_is_untouched() {
    let mut scope = Scope::new("tamper");
    let f = world(&scope, "");
    let dir = f.path("images");
    let (v1, v2) = (
        scope.image(&dir, "1.0.0", true),
        scope.image(&dir, "2.0.0", true),
    );
    import(&f, "1.0.0", &v1);
    f.upgrade(&["web"], "1.0.0", &[]).ok();
    // A tarball that carries v2 but is pinned as v1's image.
    f.image_release("2.0.0", "web", &v2, &v1.id)
        .fails_with(&format!(
            "holds image {}, but the manifest pins {}",
            v2.id, v1.id
        ));
    // A tarball whose config was edited after the digest was pinned.
    let mut bytes = std::fs::read(&v2.tarball).unwrap();
    let config = format!("{}.json", v2.id.trim_start_matches("sha256:"));
    let at = bytes
        .windows(config.len())
        .position(|w| w == config.as_bytes())
        .unwrap();
    let body = at + 512 + 2;
    bytes[body] ^= 0x01;
    let tampered = Image {
        id: v2.id.clone(),
        tarball: dir.join("tampered.tar"),
    };
    std::fs::write(&tampered.tarball, &bytes).unwrap();
    f.image_release("2.0.1", "web", &tampered, &v2.id)
        .fails_with("but the manifest pins");
    for h in HOSTS {
        let name = format!("{}-{h}", scope.prefix);
        assert_eq!(scope.running(&name), [(name.clone(), v1.id.clone())]);
    }
}

#[test]
fn a_foreign_container_with_the_same_name_is_never_removed() {
    let mut scope = Scope::new("foreign");
    let f = world(&scope, "");
    let dir = f.path("images");
    let v1 = scope.image(&dir, "1.0.0", true);
    import(&f, "1.0.0", &v1);
    // Someone else's container under h1's configured name.
    docker(&["load", "-i", v1.tarball.to_str().unwrap()]);
    let name = format!("{}-h1", scope.prefix);
    let foreign = docker(&["create", "--name", &name, &v1.id]);
    f.upgrade(&["web"], "1.0.0", &[])
        .fails_with("ended rolled_back");
    let r = f.last_rollout();
    let detail = r["rollout"]["failure"]["evidence"]["detail"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        detail.contains("is taken by a container cutover does not manage"),
        "{detail}"
    );
    assert_eq!(
        docker(&["inspect", "--format", "{{.Id}}", &name]),
        foreign,
        "the foreign container was touched"
    );
}

#[test]
fn agent_killed_while_swapping_containers_comes_back_with_exactly_one_running() {
    let mut scope = Scope::new("kill");
    // busybox httpd runs as PID 1 and ignores SIGTERM: every stop takes
    // the whole grace period, a wide window in the middle of the swap.
    let mut f = world(&scope, "");
    f.apply_fleet_text(
        &container_fleet(&scope.prefix, &HOSTS, "web", "")
            .replace("stop_grace = \"1s\"", "stop_grace = \"4s\""),
    );
    let dir = f.path("images");
    let (v1, v2) = (
        scope.image(&dir, "1.0.0", true),
        scope.image(&dir, "2.0.0", true),
    );
    import(&f, "1.0.0", &v1);
    import(&f, "2.0.0", &v2);
    f.upgrade(&["web"], "1.0.0", &[]).ok();
    f.cli(&["upgrade", "web", "--version", "2.0.0", "--yes"])
        .ok();
    eventually(Duration::from_secs(60), "h1 swapping", || {
        (f.journal_stage("h1", "web").as_deref() == Some("Swapping")).then_some(())
    });
    std::thread::sleep(Duration::from_millis(1500));
    f.kill_agent("h1");
    std::thread::sleep(Duration::from_secs(4));
    f.spawn_agent("h1", "500ms", None);
    let name = format!("{}-h1", scope.prefix);
    eventually(
        Duration::from_secs(30),
        "exactly one container on h1",
        || (scope.running(&name).len() == 1).then_some(()),
    );
    f.cli(&["rollout", "watch", "2"]).ok();
    for h in HOSTS {
        let name = format!("{}-{h}", scope.prefix);
        assert_eq!(scope.running(&name), [(name.clone(), v2.id.clone())], "{h}");
    }
    assert!(
        f.agent_log("h1").contains("interrupted"),
        "{}",
        f.agent_log("h1")
    );
}

#[test]
fn images_are_pulled_by_digest_from_a_registry_and_a_different_image_is_refused() {
    let mut scope = Scope::new("pull");
    let f = world(&scope, "");
    let registry = cutover_tests::docker::Registry::start(&f.path("registry"));
    let dir = f.path("images");
    let (v1, v1_ref) = scope.pushed(&dir, "1.0.0", &registry);
    let (v2, _) = scope.pushed(&dir, "2.0.0", &registry);
    let (_, v3_ref) = scope.pushed(&dir, "3.0.0", &registry);
    f.registry_release("1.0.0", "web", &v1, &v1_ref);
    f.upgrade(&["web"], "1.0.0", &[]).ok();
    for h in HOSTS {
        let name = format!("{}-{h}", scope.prefix);
        assert_eq!(scope.running(&name), [(name.clone(), v1.clone())], "{h}");
    }
    // Pinned to v2's ID, but the reference answers with v3.
    f.registry_release("2.0.0", "web", &v2, &v3_ref);
    f.upgrade(&["web"], "2.0.0", &[])
        .fails_with("ended rolled_back");
    let r = f.last_rollout();
    let e = &r["rollout"]["failure"]["evidence"];
    assert_eq!(e["gate"], "verify", "{e}");
    assert!(
        e["detail"]
            .as_str()
            .unwrap()
            .contains(&format!("but the release pins {v2}")),
        "{e}"
    );
    for h in HOSTS {
        let name = format!("{}-{h}", scope.prefix);
        assert_eq!(scope.running(&name), [(name.clone(), v1.clone())], "{h}");
    }
}

#[test]
fn the_images_own_healthcheck_gates_the_install_too() {
    let mut scope = Scope::new("healthcheck");
    let f = world(&scope, "");
    let dir = f.path("images");
    let probe = |path: &str| {
        format!("--interval=1s --timeout=1s --retries=2 CMD [\"/bin/busybox\", \"wget\", \"-q\", \"-O\", \"/dev/null\", \"http://127.0.0.1:8080/{path}\"]")
    };
    let v1 = scope.image_with(&dir, "1.0.0", true, Some(&probe("healthz")));
    // Our HTTP check passes; the image's own HEALTHCHECK never does.
    let v2 = scope.image_with(&dir, "2.0.0", true, Some(&probe("missing")));
    import(&f, "1.0.0", &v1);
    import(&f, "2.0.0", &v2);
    f.upgrade(&["web"], "1.0.0", &[]).ok();
    f.upgrade(&["web"], "2.0.0", &[])
        .fails_with("ended rolled_back");
    let r = f.last_rollout();
    let e = &r["rollout"]["failure"]["evidence"];
    assert_eq!(e["check"], "docker HEALTHCHECK", "{e}");
    assert!(
        e["detail"]
            .as_str()
            .unwrap()
            .contains("the image's own health check says unhealthy"),
        "{e}"
    );
    let name = format!("{}-h1", scope.prefix);
    assert_eq!(scope.running(&name), [(name.clone(), v1.id.clone())]);
}
