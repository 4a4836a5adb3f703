//! Staging directories: where an install unpacks bytes not yet verified.
//! Each install gets a name no other uses, registered as live while it
//! runs; anything else under `releases/.tmp-*` is what a dead install
//! left, and is removed. Also where a release directory is made: one
//! installer per digest, under that digest's lock, published whole.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use cutover_core::fsutil;
use cutover_core::rollout::{Evidence, InstallCommand};

use super::Installer;
use crate::install::{journal, pipeline};

/// The staging directories of the installs running in this process.
#[derive(Default, Clone)]
pub(super) struct Live(Arc<Mutex<HashSet<PathBuf>>>);

/// The staging directory of one install: a name no other install uses
/// (`releases/.tmp-<sha256>-<pid>-<n>`), registered as live for as long as
/// the install runs and removed when it ends, whatever the outcome.
pub(super) struct Staging {
    path: PathBuf,
    live: Live,
}

impl Staging {
    pub(super) fn new(
        live: &Live,
        releases: &Path,
        sha256: &cutover_core::Sha256Digest,
    ) -> Staging {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = releases.join(format!(
            ".tmp-{}-{}-{n}",
            sha256.to_hex(),
            std::process::id()
        ));
        // Registered before the directory can exist, so garbage collection
        // never sees it unregistered.
        live.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(path.clone());
        Staging {
            path,
            live: live.clone(),
        }
    }

    pub(super) fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        // After a rename it is gone; otherwise it is unverified scratch.
        let _ = std::fs::remove_dir_all(&self.path);
        self.live
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.path);
    }
}

impl Installer {
    pub(super) fn digest_lock(
        &self,
        sha256: &cutover_core::Sha256Digest,
    ) -> Arc<tokio::sync::Mutex<()>> {
        self.digests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(*sha256)
            .or_default()
            .clone()
    }

    /// Makes `releases/<sha256>/` exist: from the cache, or fetched,
    /// verified and unpacked in one pass. Returns the bytes fetched.
    pub(super) async fn prepare(&self, c: &InstallCommand) -> Result<u64, Evidence> {
        let dest = journal::release_dir(&self.data_dir, &c.sha256);
        // One installer per digest makes the release (and owns its
        // `.part` file); another service pinning the same bytes waits and
        // then finds it whole.
        let lock = self.digest_lock(&c.sha256);
        let _making = lock.lock().await;
        if dest.is_dir() {
            return Ok(0);
        }
        let releases = journal::releases_dir(&self.data_dir);
        std::fs::create_dir_all(&releases)
            .map_err(|e| Evidence::new("unpack", format!("{}: {e}", releases.display())))?;
        let staging = Staging::new(&self.staging, &releases, &c.sha256);
        let (fetched, unpacked) = pipeline::fetch_and_unpack(
            self.source.as_ref(),
            &self.data_dir,
            &c.sha256,
            c.size,
            staging.path(),
            self.limits,
        )
        .await?;
        tracing::info!(service = %c.service, files = unpacked.files, bytes = unpacked.bytes, "unpacked");
        // Verified and on disk: only now does the release appear under its
        // digest, and the rename is made durable before anything points at it.
        match pipeline::publish(staging.path(), &dest) {
            Ok(pipeline::Published::Renamed) => {}
            Ok(pipeline::Published::AlreadyThere) => {
                tracing::info!(service = %c.service, release = %dest.display(), "another installer made this release first; using it");
            }
            Err(e) => return Err(Evidence::new("unpack", format!("{}: {e}", dest.display()))),
        }
        fsutil::sync_dir(&releases)
            .map_err(|e| Evidence::new("unpack", format!("{}: {e}", releases.display())))?;
        Ok(fetched.transferred)
    }

    /// Removes every staging directory that no install of this process
    /// is using: what a killed agent was unpacking (whatever its pid, which
    /// a restarted agent in a container may share).
    pub(super) fn remove_dead_staging(&self) {
        let Ok(entries) = std::fs::read_dir(journal::releases_dir(&self.data_dir)) else {
            return;
        };
        self.staging
            .remove_dead(entries.flatten().map(|e| e.path()));
    }
}

impl Live {
    /// Removes every `.tmp-*` directory among `paths` that is not
    /// registered. Each is judged under the live set's mutex at the moment
    /// it is removed (and the mutex is held while it goes), never against a
    /// copy taken earlier: an install registers its staging before creating
    /// it, so one seen on disk but not registered now is really dead, and
    /// one registered after the listing began is never taken for dead.
    pub(super) fn remove_dead(&self, paths: impl IntoIterator<Item = PathBuf>) {
        for path in paths {
            let Some(name) = path.file_name().map(|n| n.to_string_lossy().into_owned()) else {
                continue;
            };
            if !name.starts_with(".tmp-") {
                continue;
            }
            let live = self.0.lock().unwrap_or_else(|p| p.into_inner());
            if live.contains(&path) {
                continue;
            }
            tracing::info!(staging = %name, "removing what an earlier install left unpacking");
            let _ = std::fs::remove_dir_all(&path);
            drop(live);
        }
    }
}
