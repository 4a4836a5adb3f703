//! The agent's side of the protocol with a real process: a shell script
//! standing in for a service binary, installed as a journal says.

use std::time::Duration;

use cutover_core::fleet::FleetConfig;
use cutover_core::views::ContentIdentity;
use cutover_core::Sha256Digest;

use super::*;
use crate::install::journal::{self, Journal, Slot};

/// The script: `MODE` picks how it misbehaves; `run` and `status` keep
/// the migration's state in `$STATE` (a file).
const SCRIPT: &str = r#"#!/bin/sh
[ "$1" = data-migrate ] || { echo "usage: api --port PORT" >&2; exit 2; }
case "$MODE" in
  garbage) echo "hello"; exit 0 ;;
  fail) echo "cannot reach the database" >&2; exit 3 ;;
  hang) sleep 30; exit 0 ;;
esac
state() { cat "$STATE" 2>/dev/null || echo pending; }
print() { echo "{\"id\":\"$3\",\"state\":\"$1\",\"done\":$2,\"total\":10}"; }
case "$2" in
  status) s=$(state); if [ "$s" = interrupted ]; then echo "{\"id\":\"$3\",\"state\":\"pending\",\"done\":4,\"interrupted\":true}"; else print "$s" 0 "$3"; fi ;;
  run) echo run >> "$STATE.runs"; echo running > "$STATE"; sleep 0.3; echo succeeded > "$STATE"; print succeeded 10 "$3" ;;
  verify) echo "{\"id\":\"$3\",\"state\":\"$(state)\",\"ok\":true,\"checks\":[{\"name\":\"rows\",\"expected\":\"10\",\"actual\":\"10\",\"ok\":true}]}" ;;
  list) echo '{"migrations":[{"id":"backfill","description":"d"}]}' ;;
  *) print "$(state)" 0 "$3" ;;
esac
"#;

struct Host {
    dir: tempfile::TempDir,
}

impl Host {
    /// Service `api` installed with the script as its command.
    fn new(mode: &str, runner: &str) -> Host {
        let dir = tempfile::tempdir().unwrap();
        let sha = Sha256Digest::of(mode.as_bytes());
        let release = journal::release_dir(dir.path(), &sha);
        std::fs::create_dir_all(release.join("bin")).unwrap();
        let bin = release.join("bin/api");
        std::fs::write(&bin, SCRIPT).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        let state = dir.path().join("state");
        let fleet = format!(
            "[services.api]\nhosts=[\"h\"]\nrunner=\"{runner}\"\n{}[services.api.env]\nMODE=\"{mode}\"\nSTATE=\"{}\"\n{}",
            if runner == "docker" { "" } else { "command=\"bin/api\"\n" },
            state.display(),
            if runner == "docker" { "[services.api.container]\n" } else { "" }
        );
        let config = FleetConfig::parse("f", &fleet)
            .unwrap()
            .services
            .remove("api")
            .unwrap();
        let mut j = Journal::new("api");
        j.current = Some(Slot {
            identity: ContentIdentity {
                release: "2.0.0".into(),
                service_version: "2".into(),
                tarball_sha256: Some(sha),
                image_id: None,
            },
            sha256: sha,
            config,
        });
        std::fs::create_dir_all(journal::service_dir(dir.path(), "api")).unwrap();
        j.save(dir.path()).unwrap();
        Host { dir }
    }

    fn migrations(&self) -> Arc<DataMigrations> {
        DataMigrations::new(
            self.dir.path(),
            BTreeMap::new(),
            Duration::from_millis(100),
            Duration::from_secs(1),
        )
    }

    fn state(&self, s: &str) {
        std::fs::write(self.dir.path().join("state"), s).unwrap();
    }
}

async fn status(m: &Arc<DataMigrations>, action: Action) -> Status {
    serde_json::from_str(&m.answer("api", "backfill", action).await.unwrap()).unwrap()
}

/// The updates until one says `state`, within 20 s.
async fn until(m: &Arc<DataMigrations>, state: State) -> Status {
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            for (_, s) in m.updates().await {
                if s.state == state {
                    return s;
                }
            }
        }
    })
    .await
    .expect("the state within 20 s")
}

#[tokio::test]
async fn a_binary_off_the_protocol_gives_unknown_with_the_reason() {
    for (mode, want) in [
        ("garbage", "not one JSON object"),
        ("fail", "ended with exit status 3 (does the binary implement the data-migrate protocol?): \"cannot reach the database\""),
        ("hang", "did not answer within 1s; it was killed"),
    ] {
        let h = Host::new(mode, "process");
        let s = status(&h.migrations(), Action::Status).await;
        assert_eq!(s.state, State::Unknown, "{mode}");
        assert!(s.reason.as_deref().unwrap().contains(want), "{mode}: {s:?}");
    }
    let docker = Host::new("ok", "docker");
    let s = status(&docker.migrations(), Action::Status).await;
    assert!(
        s.reason.unwrap().contains("runs in a container"),
        "container"
    );
    let none = Host::new("ok", "process");
    let s: Status = serde_json::from_str(
        &none
            .migrations()
            .answer("other", "backfill", Action::Status)
            .await
            .unwrap(),
    )
    .unwrap();
    assert!(s.reason.unwrap().contains("not installed on this host"));
    let e = none
        .migrations()
        .answer("api", "Bad-Id", Action::Status)
        .await
        .unwrap_err();
    assert!(e.contains("is not a lowercase letter"), "{e}");
}

#[tokio::test]
async fn a_run_is_followed_to_its_end_and_its_follow_file_removed() {
    let h = Host::new("ok", "process");
    let m = h.migrations();
    assert_eq!(
        status(&m, Action::Run { dry_run: false }).await.state,
        State::Running
    );
    assert!(h
        .dir
        .path()
        .join("data-migrations/api.backfill.json")
        .exists());
    let end = until(&m, State::Succeeded).await;
    assert_eq!(end.done, 10);
    // The follower ends, then removes its file.
    for _ in 0..100 {
        if !h
            .dir
            .path()
            .join("data-migrations/api.backfill.json")
            .exists()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!h
        .dir
        .path()
        .join("data-migrations/api.backfill.json")
        .exists());
    // Succeeded: run again does nothing but say so.
    assert_eq!(
        status(&m, Action::Run { dry_run: false }).await.state,
        State::Succeeded
    );
    let v: Verify =
        serde_json::from_str(&m.answer("api", "backfill", Action::Verify).await.unwrap()).unwrap();
    assert!(v.ok, "{v:?}");
    let listed = m.answer("api", "", Action::List).await.unwrap();
    assert!(listed.contains("backfill"), "{listed}");
}

#[tokio::test]
async fn a_restarted_agent_runs_an_interrupted_migration_again() {
    let h = Host::new("ok", "process");
    h.state("interrupted");
    let dir = h.dir.path().join("data-migrations");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("api.backfill.json"),
        r#"{"service":"api","id":"backfill"}"#,
    )
    .unwrap();
    // A file that cannot be read is left where it is.
    std::fs::write(dir.join("junk.json"), "{").unwrap();
    let m = h.migrations();
    m.recover();
    assert_eq!(until(&m, State::Succeeded).await.done, 10);
    assert!(dir.join("junk.json").exists());
}

#[tokio::test]
async fn two_runs_asked_at_once_start_one() {
    let h = Host::new("ok", "process");
    let m = h.migrations();
    let (a, b) = tokio::join!(
        status(&m, Action::Run { dry_run: false }),
        status(&m, Action::Run { dry_run: false })
    );
    assert_eq!((a.state, b.state), (State::Running, State::Running));
    until(&m, State::Succeeded).await;
    let runs = std::fs::read_to_string(h.dir.path().join("state.runs")).unwrap();
    assert_eq!(runs.lines().count(), 1, "{runs}");
}
