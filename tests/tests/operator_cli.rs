//! The operator's bookkeeping commands against the real binaries: join
//! tokens waiting to be used (`token list`, `token revoke`), the event log
//! followed live (`events --follow`, `--since`), releases built from
//! directories (`release build`), man pages.

use std::io::{BufRead, BufReader};
use std::process::Child;
use std::time::Duration;

use cutover_tests::{eventually, Fleet};

fn interrupt(child: &Child) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .expect("SIGINT");
}

/// Reads lines of `child`'s stdout on a thread; they arrive on the channel.
fn lines_of(child: &mut Child) -> std::sync::mpsc::Receiver<String> {
    let stdout = child.stdout.take().expect("stdout piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Waits for a line of `rx` that satisfies `pred`, returning it.
fn line_where(
    rx: &std::sync::mpsc::Receiver<String>,
    what: &str,
    pred: impl Fn(&str) -> bool,
) -> String {
    eventually(Duration::from_secs(30), what, || {
        while let Ok(line) = rx.try_recv() {
            if pred(&line) {
                return Some(line);
            }
        }
        None
    })
}

fn exit_code(mut child: Child) -> i32 {
    eventually(Duration::from_secs(30), "the CLI to exit", || {
        child.try_wait().expect("try_wait")
    })
    .code()
    .unwrap_or(-1)
}

#[test]
fn token_list_shows_unused_unexpired_tokens_without_the_secret_and_revoke_drops_them() {
    let mut f = Fleet::new();
    f.start_controller();
    let secret = f.token("edge-1", "10m");
    f.token("edge-1", "10m");
    f.token("edge-2", "1s");
    // Used: not listed.
    f.start_agent("db-1", "500ms");
    f.wait_online("db-1");
    // Expired: not listed.
    eventually(Duration::from_secs(10), "edge-2's token to expire", || {
        let list = f.cli_json(&["token", "list"]);
        let hosts: Vec<&str> = list
            .as_array()
            .expect("a list")
            .iter()
            .map(|t| t["host"].as_str().expect("host"))
            .collect();
        (hosts == ["edge-1", "edge-1"]).then_some(())
    });
    let list = f.cli_json(&["token", "list"]);
    let first = &list[0];
    assert_eq!(first["replaces"], false);
    assert!(first["created_at"].is_string() && first["expires_at"].is_string());
    let text = f.cli(&["token", "list"]).ok().stdout;
    assert!(text.starts_with("HOST"), "{text}");
    assert!(text.contains("edge-1") && !text.contains("db-1"), "{text}");
    assert!(!text.contains(&secret) && !list.to_string().contains(&secret));

    let r = f.cli(&["token", "revoke", "edge-1"]).ok();
    assert_eq!(r.stdout, "revoked 2 unused join tokens for host edge-1\n");
    assert!(f
        .cli_json(&["token", "list"])
        .as_array()
        .unwrap()
        .is_empty());
    let again = f.cli(&["token", "revoke", "edge-1"]).ok();
    assert_eq!(again.stdout, "host edge-1 had no unused join tokens\n");
    // A revoked token enrolls nothing.
    let rt = cutover_tests::grpc::runtime();
    let refused = rt.block_on(async {
        let ch = cutover_tests::grpc::channel(&f.url(), &f.pki.join("ca.pem"), None)
            .await
            .expect("channel");
        let (_key, csr_pem) = cutover_core::pki::new_csr("x").unwrap();
        cutover_tests::grpc::agent(ch)
            .enroll(cutover_proto::v1::EnrollRequest {
                token: secret.clone(),
                csr_pem,
            })
            .await
            .map(|_| ())
            .map_err(|s| cutover_tests::grpc::status_text(&s))
    });
    assert!(refused.is_err(), "a revoked token enrolled");
    let events = f.cli_json(&["events"]);
    assert!(events.to_string().contains("token.revoked"), "{events}");
    f.cli(&["token", "revoke", "bad name"])
        .fails_with("invalid host name");
}

#[test]
fn events_follow_prints_each_new_event_as_one_json_line_and_ctrl_c_exits_130() {
    let mut f = Fleet::new();
    f.start_controller();
    f.token("old-1", "5m");
    let mut child = f.spawn_cli(&["events", "--follow", "-o", "json"]);
    let rx = lines_of(&mut child);
    // What was there first is shown first, one object per line.
    let old = line_where(&rx, "the old event", |l| l.contains("old-1"));
    let old: serde_json::Value = serde_json::from_str(&old).expect("one JSON object per line");
    assert_eq!(old["kind"], "token.created");
    f.token("new-1", "5m");
    let new = line_where(&rx, "the new event", |l| l.contains("new-1"));
    let new: serde_json::Value = serde_json::from_str(&new).expect("one JSON object per line");
    assert_eq!(new["kind"], "token.created");
    assert_eq!(new["host"], "new-1");
    assert!(cutover_tests::id(&new["id"]) > cutover_tests::id(&old["id"]));
    interrupt(&child);
    assert_eq!(exit_code(child), 130);
}

#[test]
fn events_follow_ends_quietly_with_exit_0_when_the_reader_closes_the_pipe() {
    let mut f = Fleet::new();
    f.start_controller();
    f.token("old-1", "5m");
    for format in ["text", "json"] {
        let mut child = f.spawn_cli(&["events", "--follow", "-o", format]);
        let mut reader = BufReader::new(child.stdout.take().expect("stdout piped"));
        let mut first = String::new();
        reader.read_line(&mut first).expect("first line");
        assert!(first.contains("old-1"), "{first}");
        drop(reader);
        // The next event's write finds the pipe closed.
        f.token("new-1", "5m");
        let mut stderr = child.stderr.take().expect("stderr piped");
        assert_eq!(exit_code(child), 0, "{format}");
        let mut said = String::new();
        std::io::Read::read_to_string(&mut stderr, &mut said).unwrap();
        assert_eq!(said, "", "{format}");
    }
}

#[test]
fn events_since_shows_only_what_came_after_and_refuses_an_unbounded_duration() {
    let mut f = Fleet::new();
    f.start_controller();
    f.token("before-1", "5m");
    let all = f.cli_json(&["events"]);
    let at = all
        .as_array()
        .unwrap()
        .iter()
        .map(|e| cutover_tests::instant(&e["at"]))
        .max()
        .unwrap();
    // An RFC 3339 time just after the last event: it is not shown.
    let after = (at + time::Duration::milliseconds(1))
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    eventually(
        Duration::from_secs(5),
        "the clock to pass the event",
        || (time::OffsetDateTime::now_utc() > at + time::Duration::milliseconds(1)).then_some(()),
    );
    f.token("after-1", "5m");
    let since = f.cli(&["events", "--since", &after]).ok().stdout;
    assert!(
        since.contains("after-1") && !since.contains("before-1"),
        "{since}"
    );
    let recent = f.cli(&["events", "--since", "1h"]).ok().stdout;
    assert!(
        recent.contains("after-1") && recent.contains("before-1"),
        "{recent}"
    );
    let r = f.cli(&["events", "--since", "400d"]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("more than a year"), "{r:?}");

    // Followed from --since: only the later event comes first.
    let mut child = f.spawn_cli(&["events", "--follow", "--since", &after]);
    let rx = lines_of(&mut child);
    let first = line_where(&rx, "a first line", |_| true);
    assert!(first.contains("after-1"), "{first}");
    interrupt(&child);
    assert_eq!(exit_code(child), 130);
}

/// Writes DIR/SERVICE with the sample service's files, as an operator
/// would lay a release out.
fn service_dir(root: &std::path::Path, service: &str, version: &str) {
    let binary = std::fs::read(cutover_tests::bin("cutover-sample")).expect("sample binary");
    for f in cutover_cli::bundle::sample_files(&binary, version, true) {
        let path = root.join(service).join(&f.path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &f.bytes).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(f.mode)).unwrap();
    }
}

#[test]
fn release_build_makes_deterministic_tarballs_and_a_manifest_that_signs_imports_and_plans() {
    let mut f = Fleet::new();
    f.assign_ports(&["h1"], &["db", "api"]);
    f.start_controller();
    f.start_agent("h1", "500ms");
    f.wait_online("h1");
    f.apply_sample_fleet(&["h1"], &["db", "api"], "");
    let src = f.path("services");
    service_dir(&src, "db", "14.1");
    service_dir(&src, "api", "2.0.0");
    let build = |out: &str| {
        let out = f.path(out);
        f.cli(&[
            "release",
            "build",
            src.to_str().unwrap(),
            "--version",
            "2.0.0",
            "--service",
            "db=14.1",
            "--service",
            "api",
            "--depends-on",
            "api=db",
            "--out",
            out.to_str().unwrap(),
        ])
        .ok();
        out
    };
    let out = build("dist");
    let again = build("dist-again");
    for file in ["db-14.1.tar.gz", "api-2.0.0.tar.gz"] {
        let a = std::fs::read(out.join(file)).expect(file);
        assert_eq!(
            a,
            std::fs::read(again.join(file)).unwrap(),
            "{file} differs"
        );
        let manifest = std::fs::read_to_string(out.join("release-2.0.0.toml")).unwrap();
        let sha = cutover_core::Sha256Digest::of(&a).to_string();
        assert!(manifest.contains(&sha), "{manifest} lacks {sha}");
        assert!(
            manifest.contains(&format!("size = {}", a.len())),
            "{manifest}"
        );
    }
    let manifest = out.join("release-2.0.0.toml");
    cutover_tests::sign_and_import(|a| f.cli(a), &manifest, &f.path("release.key")).ok();
    let plan = f.cli_json(&["plan", "--all", "--version", "2.0.0"]);
    let order: Vec<&str> = plan["services"]
        .as_array()
        .expect("services")
        .iter()
        .map(|s| s["service"].as_str().unwrap())
        .collect();
    assert_eq!(order, ["db", "api"], "{plan}");

    // A service directory that is not there is named.
    let r = f.cli(&[
        "release",
        "build",
        src.to_str().unwrap(),
        "--version",
        "2.0.1",
        "--service",
        "cache",
        "--out",
        f.path("dist-bad").to_str().unwrap(),
    ]);
    r.fails_with("cache");
}

#[test]
fn man_writes_a_roff_page_for_every_main_verb_with_its_examples() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("man1");
    let r = cutover_tests::run_cli(
        "https://127.0.0.1:1",
        dir.path(),
        &["man", "--out", out.to_str().unwrap()],
    )
    .ok();
    assert!(r.stdout.contains("cutover-upgrade.1"), "{}", r.stdout);
    for verb in [
        "cutover",
        "plan",
        "upgrade",
        "rollback",
        "rollout-watch",
        "events",
        "token-list",
        "token-revoke",
        "release-build",
        "release-sign",
        "fleet-apply",
        "hosts",
        "status",
        "man",
    ] {
        let name = if verb == "cutover" {
            "cutover.1".to_string()
        } else {
            format!("cutover-{verb}.1")
        };
        let page =
            std::fs::read_to_string(out.join(&name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        let th = page
            .lines()
            .find(|l| l.starts_with(".TH "))
            .unwrap_or_else(|| panic!("{name} has no .TH: {page}"));
        assert!(th.contains(&name[..name.len() - 2]), "{name}: {th}");
        assert!(page.contains(".SH NAME"), "{name}");
        // roff: a request line starts with '.' or '\''; no raw control bytes.
        assert!(
            !page
                .chars()
                .any(|c| c.is_control() && c != '\n' && c != '\t'),
            "{name} holds control characters"
        );
    }
    let upgrade = std::fs::read_to_string(out.join("cutover-upgrade.1")).unwrap();
    assert!(
        upgrade.contains("cutover upgrade \\-\\-all \\-\\-version stable"),
        "{upgrade}"
    );
}
