//! Staging directories: where an install unpacks bytes not yet verified.
//! Each install gets a name no other uses, registered as live while it
//! runs; anything else under `releases/.tmp-*` is what a dead install
//! left, and is removed.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// The staging directories of the installs running in this process.
#[derive(Default, Clone)]
pub(crate) struct Live(Arc<Mutex<HashSet<PathBuf>>>);

/// The staging directory of one install: a name no other install uses
/// (`releases/.tmp-<sha256>-<pid>-<n>`), registered as live for as long as
/// the install runs and removed when it ends, whatever the outcome.
pub(crate) struct Staging {
    path: PathBuf,
    live: Live,
}

impl Staging {
    pub(crate) fn new(
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

    pub(crate) fn path(&self) -> &Path {
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

impl Live {
    /// Removes every `.tmp-*` directory among `paths` that is not
    /// registered. Each is judged under the live set's mutex at the moment
    /// it is removed (and the mutex is held while it goes), never against a
    /// copy taken earlier: an install registers its staging before creating
    /// it, so one seen on disk but not registered now is really dead, and
    /// one registered after the listing began is never taken for dead.
    pub(crate) fn remove_dead(&self, paths: impl IntoIterator<Item = PathBuf>) {
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
