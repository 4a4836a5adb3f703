//! The container side of the installer: the image arrives as a verified
//! tarball (loaded into the engine) or by digest from a registry, and the
//! engine must then report exactly the pinned image ID; swaps and rollbacks
//! go through [`crate::services::docker::Engine`], which keeps the previous container.

use std::path::Path;
use std::sync::Arc;

use cutover_core::fleet::RunnerKind;
use cutover_core::rollout::{Evidence, InstallCommand};
use cutover_core::Sha256Digest;

use super::Installer;
use crate::install::fetch;
use crate::install::journal::Slot;
use crate::services::docker::Engine;
use crate::services::runner::RunStatus;

pub fn is_container(slot: &Slot) -> bool {
    slot.config.runner == RunnerKind::Docker
}

type Boxed<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// The engine's image store, as the installer uses it: the real
/// [`Engine`], or a fake in the tests.
pub(super) trait Images: Send + Sync {
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

impl Installer {
    /// The Docker engine, connected on first use (and again after a
    /// failure, so an engine that comes up later is found).
    pub(super) async fn engine(&self) -> Result<Arc<Engine>, Evidence> {
        let mut engine = self.docker.lock().await;
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

    /// Makes the engine hold the pinned image; returns the bytes fetched.
    pub(super) async fn prepare_image(&self, c: &InstallCommand) -> Result<u64, Evidence> {
        let engine = self.engine().await?;
        self.ensure_image(engine.as_ref(), c).await
    }

    /// Makes `images` hold the pinned image. One install per tarball digest
    /// fetches it (and owns its `downloads/<sha256>.part`); another service
    /// pinning the same tarball waits for that lock and then finds the image
    /// loaded, so two transfers never append to one file and neither
    /// removes the file the other is about to load.
    pub(super) async fn ensure_image(
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
        let lock = self.digest_lock(&c.sha256);
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
            &self.data_dir,
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

    /// Swaps the service's container to `new` (`back`: to the kept previous
    /// container).
    pub(super) async fn swap_container(
        &self,
        service: &str,
        new: &Slot,
        back: bool,
    ) -> Result<(), Evidence> {
        let engine = self.engine().await?;
        let result = if back {
            engine.restore_previous(service, &new.config).await
        } else {
            engine.replace(service, &new.config, &new.sha256).await
        };
        result.map_err(|e| Evidence::new("start", e))
    }

    pub(super) async fn container_status(&self, slot: &Slot, service: &str) -> RunStatus {
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
    }

    /// The image's own HEALTHCHECK verdict as a failed round, if it has one
    /// that is not healthy.
    pub(super) async fn container_health(
        &self,
        slot: &Slot,
        service: &str,
    ) -> Result<(), Evidence> {
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
    }

    /// `cutover diag` lines for a container service.
    pub(super) async fn container_log(
        &self,
        slot: &Slot,
        service: &str,
        lines: usize,
    ) -> cutover_core::views::ServiceLog {
        let (st, tail) = match self.engine().await {
            Ok(engine) => (
                engine.status(service, &slot.config).await,
                engine.logs(service, &slot.config, lines).await,
            ),
            Err(e) => (Default::default(), vec![e.detail]),
        };
        cutover_core::views::ServiceLog {
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
                crate::services::docker::container_name(service, &slot.config),
                st.image.as_deref().unwrap_or("-"),
                if st.running { "running" } else { "not running" },
                st.health.as_deref().unwrap_or("-"),
                st.started_at.as_deref().unwrap_or("-"),
            )),
        }
    }
}
