//! The hardened tarball extractor. An archive is untrusted until it is
//! unpacked: it may only create regular files, directories and symlinks
//! that stay inside the destination, within size and entry limits. It never
//! changes ownership and drops setuid, setgid and sticky bits. Gzip is
//! detected by its magic bytes; plain tar is accepted too.

use std::collections::HashSet;
use std::fs;
use std::io::{self, BufReader, Read};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_bytes: u64,
    pub max_entries: u64,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Unpacked {
    pub files: u64,
    pub bytes: u64,
}

/// Why an archive was refused; `entry` is the path as the archive gives it.
#[derive(Debug, thiserror::Error)]
pub enum ExtractError {
    #[error("entry {entry:?}: {problem}")]
    Refused { entry: String, problem: String },
    #[error("archive holds more than {0} entries (max_entries)")]
    TooManyEntries(u64),
    #[error("archive unpacks to more than {0} bytes (max_unpacked_bytes)")]
    TooLarge(u64),
    #[error("archive is corrupt: {0}")]
    Corrupt(io::Error),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

fn refused(entry: &str, problem: impl Into<String>) -> ExtractError {
    ExtractError::Refused {
        entry: entry.to_string(),
        problem: problem.into(),
    }
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> ExtractError + '_ {
    move |source| ExtractError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Unpacks `archive` into `dest`, which must not exist yet. On error the
/// caller removes `dest`; nothing outside it is ever written.
pub fn unpack(archive: &Path, dest: &Path, limits: Limits) -> Result<Unpacked, ExtractError> {
    let file = fs::File::open(archive).map_err(io_at(archive))?;
    unpack_reader(file, dest, limits)
}

/// Unpacks the archive `bytes` yields, as [`unpack`] does a file.
pub fn unpack_reader(
    bytes: impl Read,
    dest: &Path,
    limits: Limits,
) -> Result<Unpacked, ExtractError> {
    let mut bytes = BufReader::with_capacity(256 * 1024, bytes);
    let gz = {
        use std::io::BufRead;
        let head = bytes.fill_buf().map_err(ExtractError::Corrupt)?;
        head.starts_with(&[0x1f, 0x8b])
    };
    let reader: Box<dyn Read> = if gz {
        Box::new(flate2::bufread::MultiGzDecoder::new(bytes))
    } else {
        Box::new(bytes)
    };
    fs::create_dir(dest).map_err(io_at(dest))?;
    unpack_from(reader, dest, limits)
}

fn unpack_from(reader: impl Read, dest: &Path, limits: Limits) -> Result<Unpacked, ExtractError> {
    let mut archive = tar::Archive::new(reader);
    let mut seen: HashSet<PathBuf> = HashSet::new();
    let mut symlinks: HashSet<PathBuf> = HashSet::new();
    let mut entries = 0u64;
    let mut out = Unpacked::default();
    for entry in archive.entries().map_err(ExtractError::Corrupt)? {
        let mut entry = entry.map_err(ExtractError::Corrupt)?;
        entries += 1;
        if entries > limits.max_entries {
            return Err(ExtractError::TooManyEntries(limits.max_entries));
        }
        let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let Some(rel) = safe_relative(&raw)? else {
            continue;
        };
        if !seen.insert(rel.clone()) {
            return Err(refused(&raw, "appears twice in the archive"));
        }
        if rel.ancestors().skip(1).any(|a| symlinks.contains(a)) {
            return Err(refused(&raw, "is inside a symlink the archive created"));
        }
        let target = dest.join(&rel);
        let kind = entry.header().entry_type();
        let mode = entry.header().mode().unwrap_or(0o644) & 0o777;
        match kind {
            tar::EntryType::Directory => {
                fs::create_dir_all(&target).map_err(io_at(&target))?;
                fs::set_permissions(&target, fs::Permissions::from_mode(mode | 0o700))
                    .map_err(io_at(&target))?;
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let size = entry.header().size().map_err(ExtractError::Corrupt)?;
                if out.bytes.saturating_add(size) > limits.max_bytes {
                    return Err(ExtractError::TooLarge(limits.max_bytes));
                }
                if let Some(parent) = target.parent() {
                    fs::create_dir_all(parent).map_err(io_at(parent))?;
                }
                let mut f = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(mode)
                    .open(&target)
                    .map_err(io_at(&target))?;
                let copied = io::copy(&mut (&mut entry).take(size), &mut f)
                    .map_err(ExtractError::Corrupt)?;
                if copied != size {
                    return Err(refused(&raw, "is shorter than its header says"));
                }
                // The umask may have narrowed the mode; setuid bits never survive.
                f.set_permissions(fs::Permissions::from_mode(mode))
                    .map_err(io_at(&target))?;
                out.bytes += size;
                out.files += 1;
            }
            tar::EntryType::Symlink => {
                let link = entry
                    .link_name()
                    .map_err(ExtractError::Corrupt)?
                    .ok_or_else(|| refused(&raw, "symlink without a target"))?;
                if !stays_inside(&rel, &link) {
                    return Err(refused(
                        &raw,
                        format!(
                            "symlink to {:?} resolves outside the release",
                            link.display()
                        ),
                    ));
                }
                if let Some(parent) = target.parent() {
                    fs::create_dir_all(parent).map_err(io_at(parent))?;
                }
                std::os::unix::fs::symlink(&link, &target).map_err(io_at(&target))?;
                symlinks.insert(rel);
            }
            tar::EntryType::Link => return Err(refused(&raw, "hard links are not allowed")),
            tar::EntryType::Char | tar::EntryType::Block => {
                return Err(refused(&raw, "device files are not allowed"))
            }
            tar::EntryType::Fifo => return Err(refused(&raw, "FIFOs are not allowed")),
            other => {
                return Err(refused(
                    &raw,
                    format!("entry type {other:?} is not allowed"),
                ))
            }
        }
    }
    Ok(out)
}

/// The entry's path relative to the destination; `None` for the root
/// itself (`./`). Absolute paths and `..` are refused.
fn safe_relative(raw: &str) -> Result<Option<PathBuf>, ExtractError> {
    let path = Path::new(raw);
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            Component::ParentDir => return Err(refused(raw, "path contains `..`")),
            Component::RootDir | Component::Prefix(_) => {
                return Err(refused(raw, "absolute paths are not allowed"))
            }
        }
    }
    Ok((!out.as_os_str().is_empty()).then_some(out))
}

/// Whether a symlink at `rel` pointing to `link` resolves inside the root,
/// given that no parent of `rel` is a symlink.
fn stays_inside(rel: &Path, link: &Path) -> bool {
    if link.is_absolute() {
        return false;
    }
    let mut depth: i64 = rel.components().count() as i64 - 1;
    for c in link.components() {
        match c {
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::ParentDir => {
                depth -= 1;
                if depth < 0 {
                    return false;
                }
            }
            Component::RootDir | Component::Prefix(_) => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_bytes: 1 << 20,
        max_entries: 100,
    };

    /// A tar with one entry written header by hand, so names the `tar`
    /// builder would refuse (like `../x`) can be made.
    fn raw_tar(entries: &[(&str, tar::EntryType, &[u8], &str)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, kind, data, link) in entries {
            let mut h = tar::Header::new_gnu();
            h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
            h.set_entry_type(*kind);
            h.set_size(data.len() as u64);
            h.set_mode(0o4755);
            if !link.is_empty() {
                h.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
            }
            h.set_cksum();
            b.append(&h, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    fn try_unpack(tar: &[u8]) -> (tempfile::TempDir, Result<Unpacked, ExtractError>) {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("release");
        fs::create_dir(&dest).unwrap();
        let r = unpack_from(tar, &dest, LIMITS);
        (dir, r)
    }

    use tar::EntryType as T;

    #[test]
    fn unpacks_files_dirs_and_inside_symlinks_without_setuid() {
        let tar = raw_tar(&[
            ("./", T::Directory, b"", ""),
            ("bin/", T::Directory, b"", ""),
            ("bin/app", T::Regular, b"#!/bin/sh\n", ""),
            ("current-app", T::Symlink, b"", "bin/app"),
        ]);
        let (dir, r) = try_unpack(&tar);
        assert_eq!(
            r.unwrap(),
            Unpacked {
                files: 1,
                bytes: 10
            }
        );
        let app = dir.path().join("release/bin/app");
        assert_eq!(
            fs::metadata(&app).unwrap().permissions().mode() & 0o7777,
            0o755
        );
        assert_eq!(
            fs::read(dir.path().join("release/current-app")).unwrap(),
            b"#!/bin/sh\n"
        );
    }

    #[test]
    fn refuses_every_malicious_class() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (raw_tar(&[("../evil", T::Regular, b"x", "")]), "`..`"),
            (raw_tar(&[("a/../../evil", T::Regular, b"x", "")]), "`..`"),
            (raw_tar(&[("/tmp/evil", T::Regular, b"x", "")]), "absolute"),
            (raw_tar(&[("l", T::Symlink, b"", "/etc/passwd")]), "outside"),
            (raw_tar(&[("d/l", T::Symlink, b"", "../../x")]), "outside"),
            (
                raw_tar(&[("l", T::Symlink, b"", "."), ("l/x", T::Regular, b"x", "")]),
                "inside a symlink",
            ),
            (raw_tar(&[("h", T::Link, b"", "/etc/passwd")]), "hard links"),
            (raw_tar(&[("dev", T::Char, b"", "")]), "device"),
            (raw_tar(&[("blk", T::Block, b"", "")]), "device"),
            (raw_tar(&[("p", T::Fifo, b"", "")]), "FIFO"),
            (
                raw_tar(&[("f", T::Regular, b"1", ""), ("./f", T::Regular, b"2", "")]),
                "twice",
            ),
        ];
        for (tar, want) in cases {
            let (dir, r) = try_unpack(&tar);
            let e = r.unwrap_err().to_string();
            assert!(e.contains(want), "{want}: {e}");
            assert!(!dir.path().join("evil").exists());
        }
    }

    #[test]
    fn enforces_size_and_entry_limits() {
        let big = vec![0u8; 600 * 1024];
        let tar = raw_tar(&[("a", T::Regular, &big, ""), ("b", T::Regular, &big, "")]);
        let (_d, r) = try_unpack(&tar);
        assert!(matches!(r, Err(ExtractError::TooLarge(_))));
        let many: Vec<String> = (0..101).map(|i| format!("f{i}")).collect();
        let entries: Vec<_> = many
            .iter()
            .map(|n| (n.as_str(), T::Regular, &b""[..], ""))
            .collect();
        let (_d, r) = try_unpack(&raw_tar(&entries));
        assert!(matches!(r, Err(ExtractError::TooManyEntries(100))));
    }
}
