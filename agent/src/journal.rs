//! The on-disk journal of each service: what runs now, what ran before,
//! the operation in progress and the last command's report. It is written
//! (temp file, fsync, rename) *before* every side effect it announces, so
//! an agent killed at any point finds out on restart where it stopped.
//!
//! Layout under the data directory:
//! `releases/<sha256>/` unpacked content, shared by digest;
//! `services/<name>/journal.json`, `services/<name>/current` (symlink into
//! `releases/`), `services/<name>/logs/`; `downloads/<sha256>.part`.

use std::path::{Path, PathBuf};

use cutover_core::fleet::ServiceConfig;
use cutover_core::rollout::{InstallCommand, Report};
use cutover_core::views::{ContentIdentity, InstalledService};
use cutover_core::Sha256Digest;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// One installed release of a service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Slot {
    pub identity: ContentIdentity,
    pub sha256: Sha256Digest,
    pub config: ServiceConfig,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Stage {
    /// Downloading and unpacking; the old release is untouched.
    Preparing,
    /// Stopping the old release and flipping `current`; on recovery the
    /// link itself says which side of the flip we are on.
    Swapping,
    /// The new release is current and its health is being checked.
    Checking,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Op {
    Install {
        command: Box<InstallCommand>,
        stage: Stage,
    },
    Rollback {
        command_id: String,
        stage: Stage,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Journal {
    pub service: String,
    pub current: Option<Slot>,
    pub previous: Option<Slot>,
    pub op: Option<Op>,
    /// The new release failed its checks and waits for the controller's
    /// decision (or, if the controller stays away, the agent's own).
    #[serde(default)]
    pub failed_since_ms: Option<i64>,
    pub last_report: Option<Report>,
}

impl Journal {
    pub fn new(service: &str) -> Journal {
        Journal {
            service: service.to_string(),
            current: None,
            previous: None,
            op: None,
            failed_since_ms: None,
            last_report: None,
        }
    }

    pub fn path(data_dir: &Path, service: &str) -> PathBuf {
        service_dir(data_dir, service).join("journal.json")
    }

    pub fn load(data_dir: &Path, service: &str) -> Result<Option<Journal>> {
        let path = Journal::path(data_dir, service);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| Error::Journal {
                    path,
                    problem: e.to_string(),
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(path, e)),
        }
    }

    /// Every journal under the data directory.
    pub fn load_all(data_dir: &Path) -> Result<Vec<Journal>> {
        let dir = data_dir.join("services");
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io(dir, e)),
        };
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| Error::io(&dir, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(j) = Journal::load(data_dir, &name)? {
                out.push(j);
            }
        }
        out.sort_by(|a, b| a.service.cmp(&b.service));
        Ok(out)
    }

    /// Writes the journal durably: temp file, fsync, rename, fsync dir.
    pub fn save(&self, data_dir: &Path) -> Result<()> {
        let path = Journal::path(data_dir, &self.service);
        let bytes = serde_json::to_vec_pretty(self).map_err(|e| Error::Journal {
            path: path.clone(),
            problem: e.to_string(),
        })?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        cutover_core::fsutil::write_atomic(&path, &bytes, 0o600)?;
        Ok(())
    }

    /// What the agent reports for this service.
    pub fn installed(&self, state: &str) -> InstalledService {
        InstalledService {
            name: self.service.clone(),
            current: self.current.as_ref().map(|s| s.identity.clone()),
            previous: self.previous.as_ref().map(|s| s.identity.clone()),
            state: state.to_string(),
        }
    }
}

pub fn service_dir(data_dir: &Path, service: &str) -> PathBuf {
    data_dir.join("services").join(service)
}

/// Where unpacked releases live, each under its digest.
pub fn releases_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("releases")
}

pub fn release_dir(data_dir: &Path, sha256: &Sha256Digest) -> PathBuf {
    releases_dir(data_dir).join(sha256.to_hex())
}

pub fn current_link(data_dir: &Path, service: &str) -> PathBuf {
    service_dir(data_dir, service).join("current")
}

/// The digest `current` points at, if any.
pub fn read_current(data_dir: &Path, service: &str) -> Option<Sha256Digest> {
    let target = std::fs::read_link(current_link(data_dir, service)).ok()?;
    target.file_name()?.to_str()?.parse().ok()
}

/// Points `current` at a release with one atomic rename.
pub fn switch_current(data_dir: &Path, service: &str, sha256: &Sha256Digest) -> Result<()> {
    let link = current_link(data_dir, service);
    let tmp = link.with_file_name(".current.tmp");
    let _ = std::fs::remove_file(&tmp);
    let target = Path::new("../../releases").join(sha256.to_hex());
    std::os::unix::fs::symlink(&target, &tmp).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, &link).map_err(|e| Error::io(&link, e))?;
    if let Some(dir) = link.parent() {
        let _ = cutover_core::fsutil::sync_dir(dir);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn switch_is_atomic_and_readable() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(service_dir(dir.path(), "api")).unwrap();
        let (a, b) = (Sha256Digest::of(b"a"), Sha256Digest::of(b"b"));
        assert_eq!(read_current(dir.path(), "api"), None);
        switch_current(dir.path(), "api", &a).unwrap();
        assert_eq!(read_current(dir.path(), "api"), Some(a));
        switch_current(dir.path(), "api", &b).unwrap();
        assert_eq!(read_current(dir.path(), "api"), Some(b));
        let mut j = Journal::new("api");
        j.failed_since_ms = Some(3);
        j.save(dir.path()).unwrap();
        assert_eq!(Journal::load_all(dir.path()).unwrap(), vec![j]);
    }
}
