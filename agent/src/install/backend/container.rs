//! The container backend: the image arrives as a verified tarball (loaded
//! into the engine) or by digest from a registry, and the engine must then
//! report exactly the pinned image ID; swaps and rollbacks go through
//! [`Engine`], which keeps the previous container, and recovery asks it
//! which container runs. Exec checks run in the data directory.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use cutover_core::fleet::ServiceConfig;
use cutover_core::rollout::{Evidence, InstallCommand};
use cutover_core::views::ServiceLog;
use cutover_core::Sha256Digest;

use super::Backend;
use crate::install::fetch::{self, Source};
use crate::install::journal::Slot;
use crate::install::releases::Releases;
use crate::runtime::BoxFuture;
use crate::services::docker::{self, Engine};
use crate::services::runner::RunStatus;

type Boxed<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// The engine's image store, as the installer uses it: the real
/// [`Engine`], or a fake in the tests.
pub trait Images: Send + Sync {
    fn has_image<'a>(&'a self, id: &'a Sha256Digest) -> Boxed<'a, bool>;
    fn load<'a>(&'a self, tarball: &'a Path, id: &'a Sha256Digest)
        -> Boxed<'a, Result<(), String>>;
    fn pull<'a>(
        &'a self,
        reference: &'a str,
        id: &'a Sha256Digest,
    ) -> Boxed<'a, Result<(), String>>;
}

impl Images for Engine {
    fn has_image<'a>(&'a self, id: &'a Sha256Digest) -> Boxed<'a, bool> {
        Box::pin(Engine::has_image(self, id))
    }

    fn load<'a>(
        &'a self,
        tarball: &'a Path,
        id: &'a Sha256Digest,
    ) -> Boxed<'a, Result<(), String>> {
        Box::pin(Engine::load(self, tarball, id))
    }

    fn pull<'a>(
        &'a self,
        reference: &'a str,
        id: &'a Sha256Digest,
    ) -> Boxed<'a, Result<(), String>> {
        Box::pin(Engine::pull(self, reference, id))
    }
}

pub struct Container {
    releases: Arc<Releases>,
    source: Arc<dyn Source>,
    /// Connected on first use (and again after a failure, so an engine
    /// that comes up later is found).
    engine: tokio::sync::Mutex<Option<Arc<Engine>>>,
}

impl Container {
    pub fn new(releases: Arc<Releases>, source: Arc<dyn Source>) -> Container {
        Container {
            releases,
            source,
            engine: tokio::sync::Mutex::new(None),
        }
    }

    /// The Docker engine, connected on first use (and again after a
    /// failure, so an engine that comes up later is found).
    async fn engine(&self) -> Result<Arc<Engine>, Evidence> {
        let mut engine = self.engine.lock().await;
        if let Some(e) = engine.as_ref() {
            return Ok(e.clone());
        }
        let connected = Arc::new(
            Engine::connect()
                .await
                .map_err(|e| Evidence::new("docker", e))?,
        );
        *engine = Some(connected.clone());
        Ok(connected)
    }

    /// Makes `images` hold the pinned image. One install per tarball digest
    /// fetches it (and owns its `downloads/<sha256>.part`); another service
    /// pinning the same tarball waits for that lock and then finds the image
    /// loaded, so two transfers never append to one file and neither
    /// removes the file the other is about to load.
    pub async fn ensure_image(
        &self,
        images: &dyn Images,
        c: &InstallCommand,
    ) -> Result<u64, Evidence> {
        let image = c.image.as_ref().ok_or_else(|| {
            Evidence::new(
                "config",
                format!("service {}: a docker service needs an image", c.service),
            )
        })?;
        if images.has_image(&image.id).await {
            return Ok(0);
        }
        let lock = self.releases.digest_lock(&c.sha256);
        let _fetching = lock.lock().await;
        // Whoever held the lock before may have loaded it meanwhile.
        if images.has_image(&image.id).await {
            return Ok(0);
        }
        if c.size == 0 {
            let reference = image.reference.as_deref().ok_or_else(|| {
                Evidence::new(
                    "fetch",
                    format!(
                        "image {} is neither delivered as a tarball nor given a registry reference",
                        image.id.to_prefixed()
                    ),
                )
            })?;
            images
                .pull(reference, &image.id)
                .await
                .map_err(|e| Evidence::new("verify", e))?;
            return Ok(0);
        }
        let (part, fetched) = fetch::fetch(
            self.source.as_ref(),
            self.releases.data_dir(),
            &c.sha256,
            c.size,
            fetch::Tee::none(),
        )
        .await?;
        let p = part.clone();
        let carried = tokio::task::spawn_blocking(move || {
            std::fs::File::open(&p)
                .map_err(|e| format!("{}: {e}", p.display()))
                .and_then(cutover_core::image::image_id)
        })
        .await
        .map_err(|e| Evidence::new("verify", e.to_string()))?;
        match carried {
            Ok(id) if id == image.id => {}
            Ok(id) => {
                let _ = std::fs::remove_file(&part);
                return Err(Evidence::new(
                    "verify",
                    format!(
                        "image tarball holds image {}, but the release pins {}; refused",
                        id.to_prefixed(),
                        image.id.to_prefixed()
                    ),
                ));
            }
            Err(e) => {
                let _ = std::fs::remove_file(&part);
                return Err(Evidence::new(
                    "verify",
                    format!("image tarball refused: {e}"),
                ));
            }
        }
        let loaded = images.load(&part, &image.id).await;
        let _ = std::fs::remove_file(&part);
        loaded.map_err(|e| Evidence::new("verify", e))?;
        Ok(fetched.transferred)
    }
}

impl Backend for Container {
    /// Makes the engine hold the pinned image.
    fn prepare<'a>(&'a self, c: &'a InstallCommand) -> BoxFuture<'a, Result<u64, Evidence>> {
        Box::pin(async move {
            let engine = self.engine().await?;
            self.ensure_image(engine.as_ref(), c).await
        })
    }

    /// Swaps the service's container to `new` (`back`: to the kept
    /// previous container); the engine starts it.
    fn switch<'a>(
        &'a self,
        service: &'a str,
        _old: Option<&'a Slot>,
        new: &'a Slot,
        back: bool,
    ) -> BoxFuture<'a, Result<(), Evidence>> {
        Box::pin(async move {
            let engine = self.engine().await?;
            let result = if back {
                engine.restore_previous(service, &new.config).await
            } else {
                engine.replace(service, &new.config, &new.sha256).await
            };
            result.map_err(|e| Evidence::new("start", e))
        })
    }

    /// Started already by the switch.
    fn start<'a>(
        &'a self,
        _service: &'a str,
        _slot: &'a Slot,
    ) -> BoxFuture<'a, Result<(), Evidence>> {
        Box::pin(async { Ok(()) })
    }

    /// Brings the engine to exactly one running container of `slot`.
    fn ensure_running<'a>(
        &'a self,
        service: &'a str,
        slot: &'a Slot,
    ) -> BoxFuture<'a, Result<(), Evidence>> {
        Box::pin(async move {
            let engine = self.engine().await?;
            engine
                .recover(service, &slot.config, &slot.sha256)
                .await
                .map_err(|e| Evidence::new("start", e))
        })
    }

    /// The image of the container that runs (or, if a swap was cut short,
    /// of the previous container that will).
    fn linked<'a>(
        &'a self,
        service: &'a str,
        config: Option<&'a ServiceConfig>,
    ) -> BoxFuture<'a, Option<Sha256Digest>> {
        Box::pin(async move {
            let engine = self.engine().await.ok()?;
            engine
                .image_of(service, config?)
                .await
                .and_then(|i| Sha256Digest::parse_prefixed(&i).ok())
        })
    }

    fn status<'a>(&'a self, service: &'a str, slot: &'a Slot) -> BoxFuture<'a, RunStatus> {
        Box::pin(async move {
            let Ok(engine) = self.engine().await else {
                return RunStatus::default();
            };
            let st = engine.status(service, &slot.config).await;
            let wrong_image = st
                .image
                .as_deref()
                .is_some_and(|i| i != slot.sha256.to_prefixed());
            RunStatus {
                running: st.running && !wrong_image,
                pid: st.pid,
                restarts: st.restarts,
                last_exit: match (st.exists, st.running, wrong_image) {
                    (false, _, _) => Some("container missing".into()),
                    (_, _, true) => Some(format!(
                        "container runs image {}",
                        st.image.unwrap_or_default()
                    )),
                    (_, false, _) => st.exit_code.map(|c| format!("exited with code {c}")),
                    _ => None,
                },
            }
        })
    }

    /// The image's own HEALTHCHECK verdict as a failed round, if it has
    /// one that is not healthy.
    fn own_health<'a>(
        &'a self,
        service: &'a str,
        slot: &'a Slot,
    ) -> BoxFuture<'a, Result<(), Evidence>> {
        Box::pin(async move {
            let engine = self.engine().await?;
            match engine.status(service, &slot.config).await.health.as_deref() {
                None | Some("healthy") => Ok(()),
                Some(other) => Err(Evidence {
                    gate: "health".into(),
                    check: Some("docker HEALTHCHECK".into()),
                    detail: format!("the image's own health check says {other}"),
                    ..Evidence::default()
                }),
            }
        })
    }

    fn release_dir(&self, _slot: &Slot) -> PathBuf {
        self.releases.data_dir().to_path_buf()
    }

    fn log_tail<'a>(
        &'a self,
        service: &'a str,
        slot: &'a Slot,
        lines: usize,
    ) -> BoxFuture<'a, Vec<String>> {
        Box::pin(async move { self.log(service, slot, lines).await.lines })
    }

    /// `cutover diag` lines for a container service.
    fn log<'a>(
        &'a self,
        service: &'a str,
        slot: &'a Slot,
        lines: usize,
    ) -> BoxFuture<'a, ServiceLog> {
        Box::pin(async move {
            let (st, tail) = match self.engine().await {
                Ok(engine) => (
                    engine.status(service, &slot.config).await,
                    engine.logs(service, &slot.config, lines).await,
                ),
                Err(e) => (Default::default(), vec![e.detail]),
            };
            ServiceLog {
                service: service.to_string(),
                pid: st.pid,
                restarts: st.restarts,
                last_exit: st
                    .exit_code
                    .filter(|_| !st.running)
                    .map(|c| format!("exited with code {c}")),
                lines: tail,
                detail: Some(format!(
                    "container {} image {} {}, health {}, started {}",
                    docker::container_name(service, &slot.config),
                    st.image.as_deref().unwrap_or("-"),
                    if st.running { "running" } else { "not running" },
                    st.health.as_deref().unwrap_or("-"),
                    st.started_at.as_deref().unwrap_or("-"),
                )),
            }
        })
    }

    fn stop<'a>(&'a self, service: &'a str, slot: &'a Slot) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            match self.engine().await {
                Ok(engine) => engine.stop_service(service, &slot.config).await,
                Err(e) => Err(e.detail),
            }
        })
    }
}
