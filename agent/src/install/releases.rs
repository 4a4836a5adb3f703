//! `releases/` and what guards it: one lock per release digest (one
//! installer makes a release, or fetches an image tarball, while others
//! pinning the same bytes wait), the staging directories of the installs
//! running in this process, and garbage collection, which removes what no
//! service needs and nothing while that cannot be known.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use cutover_core::Sha256Digest;

use super::journal::{self, Journal, Op};
use super::staging::Live;

pub struct Releases {
    data_dir: PathBuf,
    /// One lock per release digest, held while `releases/<sha256>/` is
    /// made: one installer creates it, the others wait and then use it,
    /// and garbage collection never removes one that is being made.
    digests: Mutex<HashMap<Sha256Digest, Arc<tokio::sync::Mutex<()>>>>,
    /// Staging directories of installs running in this process: garbage
    /// collection removes every other one.
    staging: Live,
    /// `releases/` entries named like a release that are not a directory:
    /// each is warned about once per run and never removed.
    not_releases: Mutex<HashSet<PathBuf>>,
}

impl Releases {
    pub fn new(data_dir: &Path) -> Arc<Releases> {
        Arc::new(Releases {
            data_dir: data_dir.to_path_buf(),
            digests: Mutex::default(),
            staging: Live::default(),
            not_releases: Mutex::default(),
        })
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The staging directories of the installs running in this process.
    pub(crate) fn live(&self) -> &Live {
        &self.staging
    }

    pub fn digest_lock(&self, sha256: &Sha256Digest) -> Arc<tokio::sync::Mutex<()>> {
        self.digests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(*sha256)
            .or_default()
            .clone()
    }

    /// Removes every staging directory that no install of this process
    /// is using: what a killed agent was unpacking (whatever its pid, which
    /// a restarted agent in a container may share).
    pub fn remove_dead_staging(&self) {
        let Ok(entries) = std::fs::read_dir(journal::releases_dir(&self.data_dir)) else {
            return;
        };
        self.staging
            .remove_dead(entries.flatten().map(|e| e.path()));
    }

    /// Whether `path` (named like a release, not a directory) is new to
    /// this run; the first time, it is logged.
    pub fn note_not_a_release(&self, path: &std::path::Path) -> bool {
        let mut seen = self.not_releases.lock().unwrap_or_else(|p| p.into_inner());
        let new = seen.insert(path.to_path_buf());
        if new {
            tracing::warn!(path = %path.display(), "named like a release but not a release directory; left alone: remove it by hand if it is not needed");
        }
        new
    }

    /// Keeps each service's current and previous release, the release of
    /// an install in progress and whatever any `current` link points at;
    /// removes the rest. While any journal cannot be read (or `services/`
    /// cannot be listed) it removes no release at all: what that journal
    /// needs is unknown.
    pub fn collect_garbage(&self) {
        self.remove_dead_staging();
        // Locks nobody holds or waits for are dropped (a clone is only
        // taken under the map's mutex), so the map holds digests in use.
        self.digests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|_, lock| Arc::strong_count(lock) > 1);
        let Some(unneeded) = self.unneeded_releases() else {
            return;
        };
        // A release being made (or reused) by an install holds its digest's
        // lock; one that is busy is skipped, and the rest are judged again
        // with their locks held, so an install that picked one up after
        // the first look keeps it.
        let mut held = Vec::new();
        for sha in unneeded {
            if let Ok(guard) = self.digest_lock(&sha).try_lock_owned() {
                held.push((sha, guard));
            }
        }
        if held.is_empty() {
            return;
        }
        let Some(unneeded) = self.unneeded_releases() else {
            return;
        };
        for (sha, _guard) in &held {
            if unneeded.contains(sha) {
                tracing::info!(release = %sha, "removing release no service needs");
                if let Err(e) = std::fs::remove_dir_all(journal::release_dir(&self.data_dir, sha)) {
                    tracing::warn!(release = %sha, error = %e, "could not remove release");
                }
            }
        }
    }

    /// The releases on disk that nothing needs, or `None` when that cannot
    /// be known.
    pub fn unneeded_releases(&self) -> Option<HashSet<Sha256Digest>> {
        let scan = match Journal::scan(&self.data_dir) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot list the services; keeping every release");
                return None;
            }
        };
        if let Some(u) = scan.unreadable.first() {
            tracing::warn!(service = %u.service, error = %u.message(), "keeping every release");
            return None;
        }
        if let Some(d) = scan.damaged.first() {
            tracing::warn!(entry = %d, "a services/ entry cannot be examined; keeping every release");
            return None;
        }
        let mut keep: HashSet<Sha256Digest> = scan.linked.iter().copied().collect();
        for j in &scan.journals {
            keep.extend(j.current.iter().chain(j.previous.iter()).map(|s| s.sha256));
            if let Some(Op::Install { command, .. }) = &j.op {
                keep.insert(command.sha256);
            }
        }
        let entries = std::fs::read_dir(journal::releases_dir(&self.data_dir)).ok()?;
        let mut unneeded = HashSet::new();
        for e in entries.flatten() {
            let Some(sha) = e
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<Sha256Digest>().ok())
            else {
                continue;
            };
            if keep.contains(&sha) {
                continue;
            }
            // Only a real directory is a release (a file or a link under
            // a release's name is not, and is never removed).
            match e.file_type() {
                Ok(t) if t.is_dir() => {
                    unneeded.insert(sha);
                }
                Ok(_) => {
                    self.note_not_a_release(&e.path());
                }
                Err(err) => {
                    tracing::warn!(path = %e.path().display(), error = %err, "cannot examine; left alone");
                }
            }
        }
        Some(unneeded)
    }
}
