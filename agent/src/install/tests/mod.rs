//! The installer's sequencing against hand-written fakes of its side
//! effects: a runner that records starts and stops, a prober that fails
//! chosen releases, an artifact source that counts bytes.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cutover_core::fleet::{Check, FleetConfig, ServiceConfig};
use cutover_core::rollout::{Command, Evidence, InstallCommand, Report, RollbackCommand};
use cutover_core::views::ContentIdentity;
use cutover_core::Sha256Digest;

use super::*;
use crate::install::fetch::{Chunks, Source};
use crate::install::journal::{Op, Stage};
use crate::services::health::Prober;
use crate::services::runner::{RunStatus, Runner, Runners};

#[derive(Default)]
struct World {
    /// "start <sha12>" / "stop" per call, in order.
    calls: Mutex<Vec<String>>,
    running: Mutex<HashMap<String, String>>,
    artifacts: Mutex<HashMap<Sha256Digest, Vec<u8>>>,
    served: AtomicU64,
    sick: Mutex<HashSet<String>>,
    /// Transfers opened.
    opens: AtomicU64,
    /// While set, a transfer stops after its first 512 bytes.
    held: std::sync::atomic::AtomicBool,
    /// A release directory another installer "makes" when a transfer opens.
    winner: Mutex<Option<std::path::PathBuf>>,
}

fn short(release: &Path) -> String {
    release.file_name().unwrap().to_string_lossy()[..12].to_string()
}

struct FakeRunner(Arc<World>);

impl Runner for FakeRunner {
    fn start(&self, service: &str, release: &Path, _c: &ServiceConfig) -> crate::Result<()> {
        self.0
            .calls
            .lock()
            .unwrap()
            .push(format!("start {}", short(release)));
        self.0
            .running
            .lock()
            .unwrap()
            .insert(service.into(), short(release));
        Ok(())
    }
    fn stop(&self, service: &str, _c: &ServiceConfig) -> crate::Result<()> {
        self.0.calls.lock().unwrap().push("stop".into());
        self.0.running.lock().unwrap().remove(service);
        Ok(())
    }
    fn status(&self, service: &str, _c: &ServiceConfig) -> RunStatus {
        RunStatus {
            running: self.0.running.lock().unwrap().contains_key(service),
            ..RunStatus::default()
        }
    }
    fn adopt(&self, service: &str, _r: &Path, _c: &ServiceConfig) -> bool {
        self.0.running.lock().unwrap().contains_key(service)
    }
    fn log_tail(&self, _s: &str, _c: &ServiceConfig, _n: usize) -> Vec<String> {
        Vec::new()
    }
}

struct FakeProber(Arc<World>);

impl Prober for FakeProber {
    fn probe<'a>(
        &'a self,
        _check: &'a Check,
        release: &'a Path,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), Evidence>> + Send + 'a>>
    {
        let sick = self.0.sick.lock().unwrap().contains(&short(release));
        Box::pin(async move {
            if sick {
                Err(Evidence {
                    gate: "health".into(),
                    detail: "HTTP 503".into(),
                    status_code: Some(503),
                    ..Evidence::default()
                })
            } else {
                Ok(())
            }
        })
    }
}

struct FakeSource(Arc<World>);

impl Source for FakeSource {
    fn open<'a>(
        &'a self,
        sha256: &'a Sha256Digest,
        offset: u64,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Chunks, String>> + Send + 'a>>
    {
        Box::pin(async move {
            let bytes = self
                .0
                .artifacts
                .lock()
                .unwrap()
                .get(sha256)
                .cloned()
                .ok_or("not found")?;
            let rest = bytes[offset as usize..].to_vec();
            self.0.served.fetch_add(rest.len() as u64, Ordering::SeqCst);
            self.0.opens.fetch_add(1, Ordering::SeqCst);
            if let Some(dir) = self.0.winner.lock().unwrap().take() {
                std::fs::create_dir_all(&dir).unwrap();
                std::fs::write(dir.join("WINNER"), "made first").unwrap();
            }
            let (head, tail) = rest.split_at(rest.len().min(512));
            let (head, tail) = (head.to_vec(), tail.to_vec());
            let world = self.0.clone();
            let tail = futures::stream::once(async move {
                while world.held.load(Ordering::SeqCst) {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Ok(tail)
            });
            Ok(Box::pin(futures::StreamExt::chain(
                futures::stream::iter(vec![Ok(head)]),
                tail,
            )) as Chunks)
        })
    }
}

fn config() -> ServiceConfig {
    FleetConfig::parse(
        "f",
        "[services.api]\nhosts=[\"h\"]\nrunner=\"process\"\ncommand=\"bin/api\"\nmin_healthy_time=\"0s\"\nhealthy_deadline=\"600ms\"\n[[services.api.checks]]\nkind=\"tcp\"\naddress=\"127.0.0.1:1\"\ninterval=\"100ms\"\n",
    )
    .unwrap()
    .services
    .remove("api")
    .unwrap()
}

/// A release tarball holding one file that names `version`.
fn artifact(world: &World, version: &str) -> (Sha256Digest, u64) {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_ustar();
    h.set_size(version.len() as u64);
    h.set_mode(0o644);
    b.append_data(&mut h, "VERSION", version.as_bytes())
        .unwrap();
    let bytes = b.into_inner().unwrap();
    let sha = Sha256Digest::of(&bytes);
    let size = bytes.len() as u64;
    world.artifacts.lock().unwrap().insert(sha, bytes);
    (sha, size)
}

fn install(id: &str, version: &str, art: (Sha256Digest, u64)) -> Command {
    install_of("api", id, version, art)
}

fn install_of(
    service: &str,
    id: &str,
    version: &str,
    (sha256, size): (Sha256Digest, u64),
) -> Command {
    Command::Install(Box::new(InstallCommand {
        command_id: id.into(),
        service: service.into(),
        target: ContentIdentity {
            release: version.into(),
            service_version: version.into(),
            tarball_sha256: Some(sha256),
            image_id: None,
        },
        sha256,
        size,
        config: config(),
        image: None,
    }))
}

struct Harness {
    _dir: tempfile::TempDir,
    world: Arc<World>,
    installer: Arc<Installer>,
    outbox: Outbox,
    /// The container backend the installer uses (its image store is
    /// passed in by the tests that use it).
    container: Arc<crate::install::backend::Container>,
}

const LIMITS: crate::install::extract::Limits = crate::install::extract::Limits {
    max_bytes: 1 << 20,
    max_entries: 100,
};

/// An installer over `dir` whose side effects are `world`'s fakes: the
/// real tarball and container backends over a fake runner and source.
fn installer(
    dir: &Path,
    world: &Arc<World>,
    link: Arc<Link>,
    autonomous_rollback_after: Duration,
) -> (
    Arc<Installer>,
    Outbox,
    Arc<crate::install::backend::Container>,
) {
    let releases = Releases::new(dir);
    let runners = Runners {
        process: Arc::new(FakeRunner(world.clone())),
        systemd: Arc::new(FakeRunner(world.clone())),
    };
    let source: Arc<dyn Source> = Arc::new(FakeSource(world.clone()));
    let container = Arc::new(crate::install::backend::Container::new(
        releases.clone(),
        source.clone(),
    ));
    let backends = Backends {
        tarball: Arc::new(crate::install::backend::Tarball::new(
            releases.clone(),
            LIMITS,
            runners,
            source,
        )),
        container: container.clone(),
    };
    let (installer, outbox) = Installer::new(Parts {
        releases,
        backends,
        prober: Box::new(FakeProber(world.clone())),
        link,
        autonomous_rollback_after,
        vars: BTreeMap::new(),
    });
    (installer, outbox, container)
}

fn harness() -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let world = Arc::new(World::default());
    let (installer, outbox, container) = installer(
        dir.path(),
        &world,
        Arc::new(Link::default()),
        Duration::from_secs(300),
    );
    Harness {
        _dir: dir,
        world,
        installer,
        outbox,
        container,
    }
}

impl Harness {
    async fn run(&mut self, cmd: Command) -> Report {
        self.installer.execute(cmd).await;
        self.outbox.recv().await.unwrap()
    }

    fn make_sick(&self, sha: &Sha256Digest) {
        self.world
            .sick
            .lock()
            .unwrap()
            .insert(sha.to_hex()[..12].to_string());
    }

    fn calls(&self) -> Vec<String> {
        std::mem::take(&mut *self.world.calls.lock().unwrap())
    }

    fn journal(&self) -> Journal {
        Journal::load(&self.installer.data_dir, "api")
            .unwrap()
            .unwrap()
    }

    /// A new installer over the same data directory and world: the agent
    /// restarted.
    fn restart(&mut self) {
        let (installer, outbox, container) = installer(
            &self.installer.data_dir,
            &self.world,
            Arc::new(Link::default()),
            Duration::from_secs(300),
        );
        (self.installer, self.outbox, self.container) = (installer, outbox, container);
    }

    fn releases(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.installer.data_dir.join("releases"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }
}

/// Polls `f` until it holds; panics (naming `what`) if it never does.
async fn until(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..6000 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("never happened: {what}");
}

/// A release tarball of `files` files of 8 KiB each, so unpacking it takes
/// many writes.
fn big_artifact(world: &World, files: usize) -> (Sha256Digest, u64) {
    let mut b = tar::Builder::new(Vec::new());
    for i in 0..files {
        let data = vec![i as u8; 8 * 1024];
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, format!("data/{i}.bin"), &data[..])
            .unwrap();
    }
    let bytes = b.into_inner().unwrap();
    let sha = Sha256Digest::of(&bytes);
    let size = bytes.len() as u64;
    world.artifacts.lock().unwrap().insert(sha, bytes);
    (sha, size)
}

#[tokio::test(flavor = "multi_thread")]
async fn installs_then_carries_an_unchanged_digest_without_fetch_or_restart() {
    let mut h = harness();
    let v1 = artifact(&h.world, "1");
    let r = h.run(install("c1", "1", v1)).await;
    assert!(r.ok && r.restarted, "{r:?}");
    assert_eq!(r.fetched_bytes, v1.1);
    assert_eq!(h.calls(), [format!("start {}", &v1.0.to_hex()[..12])]);
    let r = h.run(install("c2", "1", v1)).await;
    assert!(r.ok && !r.restarted && r.fetched_bytes == 0, "{r:?}");
    assert!(h.calls().is_empty(), "carried component was touched");
    assert_eq!(h.world.served.load(Ordering::SeqCst), v1.1);
}

#[tokio::test(flavor = "multi_thread")]
async fn what_a_killed_agent_left_half_unpacked_is_removed_and_this_agents_install_lands() {
    let mut h = harness();
    let releases = h.installer.data_dir.join("releases");
    let v1 = artifact(&h.world, "1");
    // pid 1 is never this test's process.
    let left = releases.join(format!(".tmp-{}-1", v1.0.to_hex()));
    std::fs::create_dir_all(left.join("data")).unwrap();
    let r = h.run(install("c1", "1", v1)).await;
    assert!(r.ok, "{r:?}");
    let names: Vec<String> = std::fs::read_dir(&releases)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, [v1.0.to_hex()]);
    assert_eq!(
        std::fs::read_to_string(releases.join(v1.0.to_hex()).join("VERSION")).unwrap(),
        "1"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_repeated_command_id_is_answered_from_the_journal() {
    let mut h = harness();
    let v1 = artifact(&h.world, "1");
    let first = h.run(install("c1", "1", v1)).await;
    h.calls();
    let again = h.run(install("c1", "1", v1)).await;
    assert_eq!(first, again);
    assert!(h.calls().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn failed_health_keeps_the_previous_release_and_rollback_restores_it() {
    let mut h = harness();
    let (v1, v2) = (artifact(&h.world, "1"), artifact(&h.world, "2"));
    h.run(install("c1", "1", v1)).await;
    h.make_sick(&v2.0);
    h.calls();
    let r = h.run(install("c2", "2", v2)).await;
    let e = r.evidence.as_ref().unwrap();
    assert!(
        !r.ok && e.status_code == Some(503) && e.probes >= 2,
        "{r:?}"
    );
    assert_eq!(
        h.calls(),
        [
            "stop".to_string(),
            format!("start {}", &v2.0.to_hex()[..12])
        ]
    );
    assert!(h.journal().failed_since_ms.is_some());
    assert_eq!(
        journal::read_current(&h.installer.data_dir, "api"),
        Some(v2.0)
    );

    let back = RollbackCommand {
        command_id: "c2-rollback".into(),
        service: "api".into(),
        from: v2.0,
    };
    let r = h.run(Command::Rollback(back.clone())).await;
    assert!(r.ok, "{r:?}");
    assert_eq!(
        h.calls(),
        [
            "stop".to_string(),
            format!("start {}", &v1.0.to_hex()[..12])
        ]
    );
    let j = h.journal();
    assert_eq!(
        (j.current.unwrap().sha256, j.previous.unwrap().sha256),
        (v1.0, v2.0)
    );
    // Asked again under a new id: it is no longer on `from`, nothing to do.
    let r = h
        .run(Command::Rollback(RollbackCommand {
            command_id: "x".into(),
            ..back
        }))
        .await;
    assert!(r.ok && !r.restarted);
}

#[tokio::test(flavor = "multi_thread")]
async fn recovery_keeps_the_old_release_before_the_flip_and_rechecks_the_new_one_after() {
    let mut h = harness();
    let (v1, v2) = (artifact(&h.world, "1"), artifact(&h.world, "2"));
    h.run(install("c1", "1", v1)).await;
    let dir = h.installer.data_dir.clone();
    let Command::Install(c2) = install("c2", "2", v2) else {
        unreachable!()
    };

    // Killed while swapping, before the link moved: old release, no report.
    let mut j = h.journal();
    j.op = Some(Op::Install {
        command: c2.clone(),
        stage: Stage::Swapping,
    });
    j.save(&dir).unwrap();
    h.world.running.lock().unwrap().clear();
    h.calls();
    h.installer.recover().await;
    assert_eq!(
        h.calls(),
        [
            "stop".to_string(),
            format!("start {}", &v1.0.to_hex()[..12])
        ]
    );
    assert_eq!(h.journal().op, None);

    // Killed after the flip: the new release is current, checked again and
    // reported under the interrupted command's id.
    std::fs::create_dir_all(journal::release_dir(&dir, &v2.0)).unwrap();
    journal::switch_current(&dir, "api", &v2.0).unwrap();
    let mut j = h.journal();
    j.op = Some(Op::Install {
        command: c2,
        stage: Stage::Swapping,
    });
    j.save(&dir).unwrap();
    h.calls();
    h.installer.recover().await;
    let r = h.outbox.recv().await.unwrap();
    assert!(r.ok && r.command_id == "c2", "{r:?}");
    let j = h.journal();
    assert_eq!(
        (j.current.unwrap().sha256, j.previous.unwrap().sha256),
        (v2.0, v1.0)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn lost_controller_and_failing_release_roll_back_on_the_agents_own_authority() {
    let mut h = harness();
    let (v1, v2) = (artifact(&h.world, "1"), artifact(&h.world, "2"));
    h.run(install("c1", "1", v1)).await;
    h.make_sick(&v2.0);
    let failed = h.run(install("c2", "2", v2)).await;
    assert!(!failed.ok);
    // Connected: the controller decides.
    h.installer.autonomous_rollbacks().await;
    assert_eq!(h.journal().current.unwrap().sha256, v2.0);
    // Gone for longer than allowed: the agent goes back and says so.
    let (installer, mut outbox, _) = installer(
        &h.installer.data_dir,
        &h.world,
        Arc::new(Link::new_lost()),
        Duration::ZERO,
    );
    tokio::time::sleep(Duration::from_millis(5)).await;
    installer.autonomous_rollbacks().await;
    let r = outbox.recv().await.unwrap();
    assert!(r.auto_rolled_back && r.command_id == "c2", "{r:?}");
    assert_eq!(h.journal().current.unwrap().sha256, v1.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rollback_cuts_short_the_checks_of_the_install_it_undoes() {
    let mut h = harness();
    let (v1, v2) = (artifact(&h.world, "1"), artifact(&h.world, "2"));
    h.run(install("c1", "1", v1)).await;
    h.make_sick(&v2.0);
    let Command::Install(mut slow) = install("c2", "2", v2) else {
        unreachable!()
    };
    slow.config.healthy_deadline = Duration::from_secs(60);
    let started = std::time::Instant::now();
    h.installer.submit(Command::Install(slow));
    tokio::time::sleep(Duration::from_millis(300)).await;
    h.installer.submit(Command::Rollback(RollbackCommand {
        command_id: "c2-rollback".into(),
        service: "api".into(),
        from: v2.0,
    }));
    let install = h.outbox.recv().await.unwrap();
    let rollback = h.outbox.recv().await.unwrap();
    assert!(
        !install.ok
            && install
                .evidence
                .unwrap()
                .detail
                .contains("asked for a rollback")
    );
    assert!(
        rollback.ok && rollback.command_id == "c2-rollback",
        "{rollback:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "waited for the health deadline"
    );
    assert_eq!(h.journal().current.unwrap().sha256, v1.0);
}

mod backends;
mod concurrency;
mod journals;
mod probing;

#[tokio::test]
async fn a_failures_evidence_times_the_whole_step_fetch_included() {
    let mut h = harness();
    let art = artifact(&h.world, "v2");
    // Bytes that do not match their pin, delivered slowly: the verdict
    // comes at the end of the transfer, not at its start.
    if let Some(bytes) = h.world.artifacts.lock().unwrap().get_mut(&art.0) {
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
    }
    h.world.held.store(true, Ordering::SeqCst);
    let world = h.world.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        world.held.store(false, Ordering::SeqCst);
    });
    let r = h.run(install("c1", "v2", art)).await;
    assert!(!r.ok);
    let e = r.evidence.unwrap();
    assert_eq!(e.gate, "verify", "{e:?}");
    assert!(e.elapsed_ms >= 300, "{e:?}");
    assert_eq!(e.elapsed_ms, r.duration_ms);
}
