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
use cutover_core::rollout::{Evidence, InstallCommand, Report};
use cutover_core::views::{ContentIdentity, InstalledService, ServiceLog};
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

    /// The service's journal: `Ok(None)` when there is none, and
    /// [`Unreadable`] when one is there but cannot be read or parsed. An
    /// unreadable journal is never taken for a missing one: it is kept as
    /// it is and reported.
    pub fn load(data_dir: &Path, service: &str) -> Result<Option<Journal>, Unreadable> {
        let path = Journal::path(data_dir, service);
        let unreadable = |problem: String| Unreadable {
            service: service.to_string(),
            path: path.clone(),
            problem,
            linked: read_current(data_dir, service),
        };
        let bytes = match read_bounded(&path, MAX_JOURNAL_BYTES) {
            Ok(Some(b)) => b,
            Ok(None) => return Ok(None),
            Err(problem) => return Err(unreadable(problem)),
        };
        let j: Journal = serde_json::from_slice(&bytes).map_err(|e| unreadable(e.to_string()))?;
        // A journal names its own directory's service: one that names
        // another would be saved over that service's journal, and an
        // invalid name would make the controller refuse the inventory.
        if j.service != service {
            return Err(unreadable(format!(
                "it names service {:?}, not {service:?} whose directory holds it",
                cutover_core::views::bounded(&j.service, 256)
            )));
        }
        Ok(Some(j))
    }

    /// Every service under the data directory, each as a readable journal,
    /// an unreadable one, or a `current` link without a journal. `Err` only
    /// when `services/` itself cannot be listed.
    ///
    /// An entry whose name is not a valid service name was not made by the
    /// agent: it is logged and left out (and left alone), so one stray
    /// directory cannot make the controller refuse the whole inventory. An
    /// entry that cannot be stat'ed, or whose `current` link cannot be read,
    /// is never taken for an absent one: a valid service is reported
    /// unreadable, any other entry is listed in [`Scan::damaged`]; either
    /// way nothing is deleted while it lasts.
    pub fn scan(data_dir: &Path) -> Result<Scan> {
        let dir = data_dir.join("services");
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Scan::default()),
            Err(e) => return Err(Error::io(dir, e)),
        };
        let mut out = Scan::default();
        for entry in entries {
            let entry = entry.map_err(|e| Error::io(&dir, e))?;
            let path = entry.path();
            let name = entry
                .file_name()
                .to_str()
                .filter(|n| cutover_core::names::validate("service", n).is_ok())
                .map(str::to_string);
            let looked = match std::fs::metadata(&path) {
                // Followed like the agent follows it; a dangling link is
                // nothing there.
                Ok(m) if !m.is_dir() => continue,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Ok(_) => {
                    try_read_current(data_dir, &entry.file_name().to_string_lossy()).map_err(|e| {
                        (
                            current_link(data_dir, &entry.file_name().to_string_lossy()),
                            e,
                        )
                    })
                }
                Err(e) => Err((path.clone(), e)),
            };
            let Some(name) = name else {
                tracing::warn!(entry = %path.display(), "not a valid service name; left alone and out of the inventory");
                match looked {
                    Ok(linked) => out.linked.extend(linked),
                    Err((p, e)) => out.damaged.push(format!("{}: {e}", p.display())),
                }
                continue;
            };
            let linked = match looked {
                Ok(linked) => linked,
                Err((p, e)) => {
                    out.unreadable.push(Unreadable {
                        path: p.clone(),
                        problem: format!("cannot be examined: {e}"),
                        service: name,
                        linked: None,
                    });
                    continue;
                }
            };
            out.linked.extend(linked);
            match Journal::load(data_dir, &name) {
                Ok(Some(j)) => out.journals.push(j),
                Ok(None) => {
                    if let Some(linked) = linked {
                        out.orphans.push(Orphan {
                            pid_file: service_dir(data_dir, &name).join("pid").exists(),
                            path: Journal::path(data_dir, &name),
                            service: name,
                            linked,
                        });
                    }
                }
                Err(u) => out.unreadable.push(u),
            }
        }
        out.journals.sort_by(|a, b| a.service.cmp(&b.service));
        out.unreadable.sort_by(|a, b| a.service.cmp(&b.service));
        out.orphans.sort_by(|a, b| a.service.cmp(&b.service));
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
            health: Default::default(),
        }
    }
}

/// Larger than any journal the agent writes (a command, its config and one
/// bounded report): a bigger file is damage, refused before it is read.
pub const MAX_JOURNAL_BYTES: u64 = 16 << 20;

/// What [`Journal::scan`] found under `services/`.
#[derive(Debug, Default)]
pub struct Scan {
    pub journals: Vec<Journal>,
    /// Journals that exist but cannot be read: nothing may be deleted on
    /// their account, and their services are not touched until repaired.
    pub unreadable: Vec<Unreadable>,
    /// Services with a `current` link but no journal (it was deleted).
    pub orphans: Vec<Orphan>,
    /// Where every `services/*/current` link points, journal or not.
    pub linked: Vec<Sha256Digest>,
    /// Entries that are not services but could not be examined (a failed
    /// stat or readlink): while any is listed, nothing may be deleted.
    pub damaged: Vec<String>,
}

/// A `journal.json` that exists but cannot be read or parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct Unreadable {
    pub service: String,
    pub path: PathBuf,
    pub problem: String,
    /// Where the service's `current` link points, if it does.
    pub linked: Option<Sha256Digest>,
}

/// The state a service with an unreadable journal is reported in.
pub const UNREADABLE: &str = cutover_core::views::STATE_JOURNAL_UNREADABLE;
/// The state of a service whose journal is gone but whose `current` link
/// remains.
pub const MISSING: &str = cutover_core::views::STATE_JOURNAL_MISSING;

impl Unreadable {
    /// The service in the inventory: its state says the journal is broken.
    pub fn installed(&self) -> InstalledService {
        InstalledService {
            name: self.service.clone(),
            current: linked_identity(self.linked),
            previous: None,
            state: UNREADABLE.into(),
            health: Default::default(),
        }
    }

    /// The service's entry in `cutover diag`: what is wrong and the fix.
    pub fn log(&self) -> ServiceLog {
        ServiceLog {
            service: self.service.clone(),
            detail: Some(self.message()),
            ..ServiceLog::default()
        }
    }

    /// The failed report a command for this service gets instead of being
    /// carried out.
    pub fn refusal(&self, command_id: &str) -> Report {
        Report {
            command_id: command_id.to_string(),
            service: self.service.clone(),
            ok: false,
            evidence: Some(Evidence::new("journal", self.message())),
            installed: self.installed(),
            auto_rolled_back: false,
            fetched_bytes: 0,
            restarted: false,
            duration_ms: 0,
        }
    }

    /// One line for the operator: the file, what is wrong, the fix.
    pub fn message(&self) -> String {
        format!(
            "journal {} cannot be read ({}): repair or remove it; nothing was deleted and service {} is left as it is until then",
            self.path.display(),
            self.problem,
            self.service
        )
    }
}

/// A service whose journal is gone while its `current` link remains: its
/// release is kept, it stays in the inventory, and the next install stops
/// whatever its pid file names before starting anything.
#[derive(Debug, Clone, PartialEq)]
pub struct Orphan {
    pub service: String,
    pub path: PathBuf,
    pub linked: Sha256Digest,
    pub pid_file: bool,
}

impl Orphan {
    pub fn installed(&self) -> InstalledService {
        InstalledService {
            name: self.service.clone(),
            current: linked_identity(Some(self.linked)),
            previous: None,
            state: MISSING.into(),
            health: Default::default(),
        }
    }

    pub fn log(&self) -> ServiceLog {
        ServiceLog {
            service: self.service.clone(),
            detail: Some(self.message()),
            ..ServiceLog::default()
        }
    }

    pub fn message(&self) -> String {
        format!(
            "journal {} is missing; current points at release {}{}: the next install of {} stops it first and writes a new journal",
            self.path.display(),
            self.linked,
            if self.pid_file { " and a pid file names its process" } else { "" },
            self.service
        )
    }
}

/// What a service reports when only its `current` link is known: the
/// digest, without a release or version to name.
pub fn linked_identity(linked: Option<Sha256Digest>) -> Option<ContentIdentity> {
    linked.map(|sha| ContentIdentity {
        release: "unknown".into(),
        service_version: "unknown".into(),
        tarball_sha256: Some(sha),
        image_id: None,
    })
}

/// Reads a whole file of at most `max` bytes; `Ok(None)` if it is absent.
fn read_bounded(path: &Path, max: u64) -> std::result::Result<Option<Vec<u8>>, String> {
    use std::io::Read;
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    let mut bytes = Vec::new();
    file.take(max.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|e| e.to_string())?;
    if bytes.len() as u64 > max {
        return Err(format!("larger than {max} bytes"));
    }
    Ok(Some(bytes))
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

/// The digest `current` points at, if any (for callers that delete
/// nothing on its account; [`try_read_current`] tells failures apart).
pub fn read_current(data_dir: &Path, service: &str) -> Option<Sha256Digest> {
    try_read_current(data_dir, service).ok().flatten()
}

/// The digest `current` points at: `Ok(None)` when there is no link (or
/// `current` is not a link, or points at no release); any other failure to
/// read it is an error, never "nothing linked".
pub fn try_read_current(data_dir: &Path, service: &str) -> std::io::Result<Option<Sha256Digest>> {
    match std::fs::read_link(current_link(data_dir, service)) {
        Ok(target) => Ok(target
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.parse().ok())),
        Err(e) if no_link(&e) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Whether a `read_link` error means there is no link to read: absent
/// (`ENOENT`) or not a symlink (`EINVAL`). Every other error means it could
/// not be read.
fn no_link(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::NotFound | std::io::ErrorKind::InvalidInput
    )
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
        assert_eq!(Journal::scan(dir.path()).unwrap().journals, vec![j]);
    }

    #[test]
    fn scan_tells_unreadable_and_missing_journals_from_absent_ones() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (Sha256Digest::of(b"a"), Sha256Digest::of(b"b"));
        Journal::new("ok").save(dir.path()).unwrap();
        std::fs::create_dir_all(service_dir(dir.path(), "bad")).unwrap();
        std::fs::write(Journal::path(dir.path(), "bad"), b"not json").unwrap();
        switch_current(dir.path(), "bad", &a).unwrap();
        std::fs::create_dir_all(service_dir(dir.path(), "gone")).unwrap();
        switch_current(dir.path(), "gone", &b).unwrap();
        std::fs::create_dir_all(service_dir(dir.path(), "empty")).unwrap();
        let scan = Journal::scan(dir.path()).unwrap();
        assert_eq!(scan.journals.len(), 1);
        assert_eq!(scan.unreadable.len(), 1);
        let u = &scan.unreadable[0];
        assert_eq!((u.service.as_str(), u.linked), ("bad", Some(a)));
        assert!(u.message().contains("expected ident"), "{}", u.message());
        assert_eq!(scan.orphans.len(), 1);
        assert_eq!(
            (scan.orphans[0].service.as_str(), scan.orphans[0].linked),
            ("gone", b)
        );
        let mut linked = scan.linked.clone();
        linked.sort();
        let mut want = vec![a, b];
        want.sort();
        assert_eq!(linked, want);
    }

    #[test]
    fn an_oversized_journal_is_refused_before_it_is_read() {
        let dir = tempfile::tempdir().unwrap();
        Journal::new("api").save(dir.path()).unwrap();
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(Journal::path(dir.path(), "api"))
            .unwrap();
        f.set_len(MAX_JOURNAL_BYTES + 1).unwrap();
        let e = Journal::load(dir.path(), "api").unwrap_err();
        assert!(e.problem.contains("larger than"), "{}", e.problem);
    }

    #[test]
    fn only_an_absent_link_or_a_non_link_reads_as_no_current() {
        use std::io::{Error, ErrorKind};
        assert!(no_link(&Error::from(ErrorKind::NotFound)));
        assert!(no_link(&Error::from_raw_os_error(nix::libc::EINVAL)));
        for errno in [
            nix::libc::EIO,
            nix::libc::EACCES,
            nix::libc::ELOOP,
            nix::libc::ENAMETOOLONG,
        ] {
            assert!(!no_link(&Error::from_raw_os_error(errno)), "errno {errno}");
        }
        // `current` a directory (EINVAL) or a link to no release: none.
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(current_link(dir.path(), "api")).unwrap();
        assert_eq!(try_read_current(dir.path(), "api").unwrap(), None);
        std::fs::create_dir_all(service_dir(dir.path(), "web")).unwrap();
        std::os::unix::fs::symlink("/etc", current_link(dir.path(), "web")).unwrap();
        assert_eq!(try_read_current(dir.path(), "web").unwrap(), None);
    }

    #[test]
    fn a_journal_naming_another_service_is_unreadable() {
        let dir = tempfile::tempdir().unwrap();
        Journal::new("bad name!").save(dir.path()).unwrap();
        let moved = service_dir(dir.path(), "api");
        std::fs::rename(service_dir(dir.path(), "bad name!"), &moved).unwrap();
        let e = Journal::load(dir.path(), "api").unwrap_err();
        assert!(e.problem.contains("bad name!"), "{}", e.problem);
        let scan = Journal::scan(dir.path()).unwrap();
        assert!(scan.journals.is_empty());
        assert_eq!(scan.unreadable[0].installed().name, "api");
    }
}
