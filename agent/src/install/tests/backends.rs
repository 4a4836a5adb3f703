//! The lifecycle's sequencing against a fake [`Backend`], for each
//! backend's kind of service (a process service goes to the tarball
//! backend, a docker one to the container backend): what is prepared,
//! switched and started, in which order, what the journal then says, and
//! how recovery finishes a swap a crash cut short. The other backend must
//! never be called.

use cutover_core::fleet::RunnerKind;
use cutover_core::rollout::ImageTarget;
use cutover_core::views::ServiceLog;

use std::path::PathBuf;

use super::*;
use crate::install::journal::Slot;
use crate::install::journal::{Op, Stage};
use crate::runtime::BoxFuture;

fn s12(sha: &Sha256Digest) -> String {
    sha.to_hex()[..12].to_string()
}

/// A backend that records its side effects ("prepare", "switch",
/// "start", "ensure_running", "stop", each with the releases it was
/// given) and keeps one service's state: the release that runs and the
/// one it is linked to (a tarball's `current`, a container's image).
struct FakeBackend {
    dir: PathBuf,
    calls: Mutex<Vec<String>>,
    running: Mutex<Option<Sha256Digest>>,
    linked: Mutex<Option<Sha256Digest>>,
}

impl FakeBackend {
    fn new(dir: &Path) -> Arc<FakeBackend> {
        Arc::new(FakeBackend {
            dir: dir.to_path_buf(),
            calls: Mutex::default(),
            running: Mutex::default(),
            linked: Mutex::default(),
        })
    }

    fn call(&self, what: String) {
        self.calls.lock().unwrap().push(what);
    }

    fn calls(&self) -> Vec<String> {
        std::mem::take(&mut *self.calls.lock().unwrap())
    }
}

impl Backend for FakeBackend {
    fn prepare<'a>(&'a self, c: &'a InstallCommand) -> BoxFuture<'a, Result<u64, Evidence>> {
        let key = c.image.as_ref().map(|i| i.id).unwrap_or(c.sha256);
        self.call(format!("prepare {}", s12(&key)));
        Box::pin(async move { Ok(c.size) })
    }

    fn switch<'a>(
        &'a self,
        _service: &'a str,
        old: Option<&'a Slot>,
        new: &'a Slot,
        back: bool,
    ) -> BoxFuture<'a, Result<(), Evidence>> {
        let old = old.map(|o| s12(&o.sha256)).unwrap_or_else(|| "-".into());
        let back = if back { " back" } else { "" };
        self.call(format!("switch {old} -> {}{back}", s12(&new.sha256)));
        *self.running.lock().unwrap() = None;
        *self.linked.lock().unwrap() = Some(new.sha256);
        Box::pin(async { Ok(()) })
    }

    fn start<'a>(&'a self, _s: &'a str, slot: &'a Slot) -> BoxFuture<'a, Result<(), Evidence>> {
        self.call(format!("start {}", s12(&slot.sha256)));
        *self.running.lock().unwrap() = Some(slot.sha256);
        Box::pin(async { Ok(()) })
    }

    fn ensure_running<'a>(
        &'a self,
        _s: &'a str,
        slot: &'a Slot,
    ) -> BoxFuture<'a, Result<(), Evidence>> {
        self.call(format!("ensure_running {}", s12(&slot.sha256)));
        *self.running.lock().unwrap() = Some(slot.sha256);
        *self.linked.lock().unwrap() = Some(slot.sha256);
        Box::pin(async { Ok(()) })
    }

    fn linked<'a>(
        &'a self,
        _s: &'a str,
        _c: Option<&'a ServiceConfig>,
    ) -> BoxFuture<'a, Option<Sha256Digest>> {
        let linked = *self.linked.lock().unwrap();
        Box::pin(async move { linked })
    }

    fn status<'a>(&'a self, _s: &'a str, slot: &'a Slot) -> BoxFuture<'a, RunStatus> {
        let running = *self.running.lock().unwrap() == Some(slot.sha256);
        Box::pin(async move {
            RunStatus {
                running,
                ..RunStatus::default()
            }
        })
    }

    /// Named by the digest, so the world's prober can fail chosen releases.
    fn release_dir(&self, slot: &Slot) -> PathBuf {
        self.dir.join(slot.sha256.to_hex())
    }

    fn log_tail<'a>(
        &'a self,
        _s: &'a str,
        _slot: &'a Slot,
        _n: usize,
    ) -> BoxFuture<'a, Vec<String>> {
        Box::pin(async { Vec::new() })
    }

    fn log<'a>(
        &'a self,
        service: &'a str,
        _slot: &'a Slot,
        _n: usize,
    ) -> BoxFuture<'a, ServiceLog> {
        Box::pin(async move {
            ServiceLog {
                service: service.to_string(),
                pid: None,
                restarts: 0,
                last_exit: None,
                lines: Vec::new(),
                detail: None,
            }
        })
    }

    fn stop<'a>(&'a self, _s: &'a str, _slot: &'a Slot) -> BoxFuture<'a, Result<(), String>> {
        self.call("stop".into());
        *self.running.lock().unwrap() = None;
        Box::pin(async { Ok(()) })
    }
}

/// An installer whose `kind` services go to `used` and every other
/// service to `unused`.
struct Faked {
    _dir: tempfile::TempDir,
    world: Arc<World>,
    kind: RunnerKind,
    used: Arc<FakeBackend>,
    unused: Arc<FakeBackend>,
    installer: Arc<Installer>,
    outbox: Outbox,
}

fn faked(kind: RunnerKind) -> Faked {
    let dir = tempfile::tempdir().unwrap();
    let world = Arc::new(World::default());
    let (used, unused) = (FakeBackend::new(dir.path()), FakeBackend::new(dir.path()));
    let (tarball, container) = match kind {
        RunnerKind::Docker => (unused.clone(), used.clone()),
        _ => (used.clone(), unused.clone()),
    };
    let (installer, outbox) = Installer::new(Parts {
        releases: Releases::new(dir.path()),
        backends: Backends { tarball, container },
        prober: Box::new(FakeProber(world.clone())),
        link: Arc::new(Link::default()),
        autonomous_rollback_after: Duration::from_secs(300),
        vars: BTreeMap::new(),
    });
    Faked {
        _dir: dir,
        world,
        kind,
        used,
        unused,
        installer,
        outbox,
    }
}

impl Faked {
    /// A release of `version`: its digest names the tarball, or the image
    /// for a docker service.
    fn release(&self, version: &str) -> Sha256Digest {
        Sha256Digest::of(version.as_bytes())
    }

    fn install(&self, id: &str, version: &str) -> Box<InstallCommand> {
        let sha = self.release(version);
        let Command::Install(mut c) = install(id, version, (sha, 100)) else {
            unreachable!()
        };
        c.config.runner = self.kind;
        if self.kind == RunnerKind::Docker {
            c.image = Some(ImageTarget {
                id: sha,
                reference: None,
            });
        }
        c
    }

    async fn run(&mut self, cmd: Command) -> Report {
        self.installer.execute(cmd).await;
        self.outbox.recv().await.unwrap()
    }

    fn make_sick(&self, sha: &Sha256Digest) {
        self.world.sick.lock().unwrap().insert(s12(sha));
    }

    fn journal(&self) -> Journal {
        Journal::load(&self.installer.data_dir, "api")
            .unwrap()
            .unwrap()
    }

    fn calls(&self) -> Vec<String> {
        assert!(
            self.unused.calls().is_empty(),
            "{:?}: the other backend was called",
            self.kind
        );
        self.used.calls()
    }
}

const KINDS: [RunnerKind; 2] = [RunnerKind::Process, RunnerKind::Docker];

#[tokio::test]
async fn a_successful_install_is_prepared_switched_started_and_checked_through_its_backend() {
    for kind in KINDS {
        let mut f = faked(kind);
        let v1 = f.release("1");
        let r = f.run(Command::Install(f.install("c1", "1"))).await;
        assert!(
            r.ok && r.restarted && r.fetched_bytes == 100,
            "{kind:?}: {r:?}"
        );
        assert_eq!(
            f.calls(),
            [
                format!("prepare {}", s12(&v1)),
                format!("switch - -> {}", s12(&v1)),
                format!("start {}", s12(&v1)),
            ],
            "{kind:?}"
        );
        let j = f.journal();
        assert_eq!(j.current.map(|s| s.sha256), Some(v1), "{kind:?}");
        assert_eq!((j.op, j.failed_since_ms), (None, None), "{kind:?}");

        // The same release again: nothing prepared, switched or started.
        let r = f.run(Command::Install(f.install("c2", "1"))).await;
        assert!(
            r.ok && !r.restarted && r.fetched_bytes == 0,
            "{kind:?}: {r:?}"
        );
        assert!(f.calls().is_empty(), "{kind:?}");
    }
}

#[tokio::test]
async fn a_failed_check_leaves_the_service_failed_and_the_rollback_switches_back() {
    for kind in KINDS {
        let mut f = faked(kind);
        let (v1, v2) = (f.release("1"), f.release("2"));
        assert!(f.run(Command::Install(f.install("c1", "1"))).await.ok);
        f.calls();
        f.make_sick(&v2);
        let r = f.run(Command::Install(f.install("c2", "2"))).await;
        let e = r.evidence.clone().expect("evidence");
        assert!(
            !r.ok && r.restarted && e.status_code == Some(503),
            "{kind:?}: {r:?}"
        );
        assert_eq!(
            f.calls(),
            [
                format!("prepare {}", s12(&v2)),
                format!("switch {} -> {}", s12(&v1), s12(&v2)),
                format!("start {}", s12(&v2)),
            ],
            "{kind:?}"
        );
        assert!(f.journal().failed_since_ms.is_some(), "{kind:?}");

        let r = f
            .run(Command::Rollback(RollbackCommand {
                command_id: "c2-rollback".into(),
                service: "api".into(),
                from: v2,
            }))
            .await;
        assert!(r.ok && r.restarted, "{kind:?}: {r:?}");
        assert_eq!(
            f.calls(),
            [
                format!("switch {} -> {} back", s12(&v2), s12(&v1)),
                format!("start {}", s12(&v1)),
            ],
            "{kind:?}"
        );
        let j = f.journal();
        assert_eq!(
            (j.current.map(|s| s.sha256), j.previous.map(|s| s.sha256)),
            (Some(v1), Some(v2)),
            "{kind:?}"
        );
        assert_eq!((j.op, j.failed_since_ms), (None, None), "{kind:?}");
    }
}

#[tokio::test]
async fn recovery_after_a_crash_mid_swap_keeps_the_old_release_or_rechecks_the_new_one() {
    for kind in KINDS {
        let mut f = faked(kind);
        let (v1, v2) = (f.release("1"), f.release("2"));
        assert!(f.run(Command::Install(f.install("c1", "1"))).await.ok);
        let dir = f.installer.data_dir.clone();

        // Killed while swapping, before the backend switched: the old
        // release is brought back up, and nothing is reported.
        let mut j = f.journal();
        j.op = Some(Op::Install {
            command: f.install("c2", "2"),
            stage: Stage::Swapping,
        });
        j.save(&dir).unwrap();
        *f.used.running.lock().unwrap() = None;
        f.calls();
        f.installer.recover().await;
        assert_eq!(
            f.calls(),
            [format!("ensure_running {}", s12(&v1))],
            "{kind:?}"
        );
        let j = f.journal();
        assert_eq!(
            (j.op, j.current.map(|s| s.sha256)),
            (None, Some(v1)),
            "{kind:?}"
        );
        assert!(f.outbox.try_recv().is_err(), "{kind:?}: reported");

        // Killed after the switch: the new release is current, run,
        // checked again and reported under the interrupted command's id.
        let mut j = f.journal();
        j.op = Some(Op::Install {
            command: f.install("c2", "2"),
            stage: Stage::Swapping,
        });
        j.save(&dir).unwrap();
        *f.used.linked.lock().unwrap() = Some(v2);
        *f.used.running.lock().unwrap() = None;
        f.installer.recover().await;
        let r = f.outbox.recv().await.unwrap();
        assert!(
            r.ok && r.command_id == "c2" && r.restarted,
            "{kind:?}: {r:?}"
        );
        assert_eq!(
            f.calls(),
            [format!("ensure_running {}", s12(&v2))],
            "{kind:?}"
        );
        let j = f.journal();
        assert_eq!(
            (j.current.map(|s| s.sha256), j.previous.map(|s| s.sha256)),
            (Some(v2), Some(v1)),
            "{kind:?}"
        );
        assert_eq!(j.op, None, "{kind:?}");
    }
}
