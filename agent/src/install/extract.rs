//! The hardened tarball extractor. An archive is untrusted until it is
//! unpacked: it may only create regular files, directories and symlinks
//! that stay inside the destination, within size and entry limits. It never
//! changes ownership and drops setuid, setgid and sticky bits. Gzip is
//! detected by its magic bytes; plain tar is accepted too.
//!
//! Headers are read raw: GNU long names and links and PAX records are
//! bounded before they are read (`headers`). Symlinks are created last,
//! after every file and directory, and only once each one, resolved through
//! all the others, is known to stay inside (`links`): nothing is ever
//! written through a symlink, and no link on disk ever points outside.

mod headers;
mod links;
#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;

use std::collections::HashSet;
use std::fs;
use std::io::{self, BufReader, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use headers::{Extension, Member, Pending, MAX_NAME_BYTES};
use links::Links;

/// The most bytes one path component may have (NAME_MAX).
const MAX_COMPONENT_BYTES: usize = 255;
/// The most components a path may have.
const MAX_DEPTH: usize = 256;
/// The most bytes of an archive's name an error message repeats.
const SHOWN_BYTES: usize = 100;
/// The most bytes all names and link targets of one archive may add up
/// to: the extractor keeps every name until the end, so this bounds its
/// memory whatever `max_entries` allows.
const MAX_NAMES_TOTAL: u64 = 64 << 20;

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

/// Why an archive was refused. Every message is one line: names from the
/// archive are escaped and cut to [`SHOWN_BYTES`] bytes.
#[derive(Debug, thiserror::Error)]
pub enum ExtractError {
    /// `entry` is the entry's name as the archive gives it, already escaped.
    #[error("entry {entry}: {problem}")]
    Refused { entry: String, problem: String },
    /// A GNU long name or link or a PAX header, at its byte offset.
    #[error("archive header at byte {offset} ({kind}): {problem}")]
    Header {
        offset: u64,
        kind: &'static str,
        problem: String,
    },
    #[error("archive holds more than {0} entries (max_entries)")]
    TooManyEntries(u64),
    #[error("archive unpacks to more than {0} bytes (max_unpacked_bytes)")]
    TooLarge(u64),
    #[error("archive is corrupt: {}", one_line(.0))]
    Corrupt(io::Error),
    #[error("{}: {source}", shown_path(path))]
    Io { path: PathBuf, source: io::Error },
}

fn refused(entry: &[u8], problem: impl Into<String>) -> ExtractError {
    ExtractError::Refused {
        entry: shown(entry),
        problem: problem.into(),
    }
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> ExtractError + '_ {
    move |source| ExtractError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Bytes from the archive as an error message may show them
/// ([`cutover_core::text::shown`]): quoted, escaped, and cut short (saying
/// how long they were).
fn shown(bytes: &[u8]) -> String {
    cutover_core::text::shown(&String::from_utf8_lossy(bytes), SHOWN_BYTES)
}

fn shown_path(path: &Path) -> String {
    shown(path.as_os_str().as_bytes())
}

/// An error from the `tar` crate (which may quote header bytes) in one
/// bounded line.
fn one_line(e: &io::Error) -> String {
    cutover_core::text::shown(&e.to_string(), 300)
}

/// Unpacks `archive` into `dest`, which must not exist yet. On error the
/// caller removes `dest`; nothing outside it is ever written.
pub fn unpack(archive: &Path, dest: &Path, limits: Limits) -> Result<Unpacked, ExtractError> {
    let file = fs::File::open(archive).map_err(io_at(archive))?;
    unpack_reader(file, dest, limits)
}

/// Unpacks the archive `bytes` yields (gzip or plain tar) into `dest`,
/// which must not exist yet, as [`unpack`] does a file. This is the
/// extractor's whole surface: any bytes at all may be handed to it (the
/// fuzz targets do), and whatever it returns, nothing outside `dest` was
/// written and, when it returns `Ok`, no symlink in `dest` resolves
/// outside it. On error the caller removes `dest`.
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
    let mut tree = Tree {
        dest,
        limits,
        seen: HashSet::new(),
        links: Links::default(),
        entries: 0,
        names: 0,
        out: Unpacked::default(),
    };
    let mut pending = Pending::default();
    // Raw: the `tar` crate would read extensions whole, whatever they claim.
    for entry in archive.entries().map_err(ExtractError::Corrupt)?.raw(true) {
        let mut entry = entry.map_err(ExtractError::Corrupt)?;
        let kind = entry.header().entry_type();
        if let Some(ext) = Extension::of(kind) {
            if matches!(ext, Extension::PaxGlobal) {
                tree.count()?;
            }
            pending.read(ext, &mut entry)?;
            continue;
        }
        tree.count()?;
        let member = pending
            .member(entry.header())
            .map_err(|p| refused(&entry.header().path_bytes(), p))?;
        tree.add(member, &mut entry)?;
    }
    if !pending.is_empty() {
        return Err(ExtractError::Corrupt(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "it ends with a GNU long name or PAX header that no entry follows",
        )));
    }
    tree.finish()
}

/// What the archive has made so far.
struct Tree<'a> {
    dest: &'a Path,
    limits: Limits,
    /// Every entry's path, relative to `dest`.
    seen: HashSet<PathBuf>,
    /// Symlinks, created only by [`Tree::finish`].
    links: Links,
    entries: u64,
    /// Bytes of every name and link target so far.
    names: u64,
    out: Unpacked,
}

impl Tree<'_> {
    fn count(&mut self) -> Result<(), ExtractError> {
        self.entries += 1;
        if self.entries > self.limits.max_entries {
            return Err(ExtractError::TooManyEntries(self.limits.max_entries));
        }
        Ok(())
    }

    fn add(
        &mut self,
        member: Member,
        entry: &mut tar::Entry<'_, impl Read>,
    ) -> Result<(), ExtractError> {
        let raw = &member.path[..];
        let kind = entry.header().entry_type();
        // Setuid, setgid and sticky bits are dropped here.
        let mode = entry.header().mode().unwrap_or(0o644) & 0o777;
        let name = checked_name(raw).map_err(|p| refused(raw, format!("name {p}")))?;
        let Some(rel) = safe_relative(name).map_err(|p| refused(raw, p))? else {
            return match kind {
                tar::EntryType::Directory => Ok(()),
                _ => Err(refused(raw, "names the release root itself")),
            };
        };
        if !self.seen.insert(rel.clone()) {
            return Err(refused(raw, "appears twice in the archive"));
        }
        if !self.links.is_empty() {
            if let Some(link) = self.links.link_above(&rel) {
                return Err(refused(
                    raw,
                    format!(
                        "is inside the symlink {} the archive created",
                        shown_path(link)
                    ),
                ));
            }
        }
        let link_len = member.link.as_ref().map_or(0, Vec::len);
        self.names = self
            .names
            .saturating_add(rel.as_os_str().len() as u64)
            .saturating_add(link_len as u64);
        if self.names > MAX_NAMES_TOTAL {
            return Err(refused(
                raw,
                format!("brings the archive's names to more than {MAX_NAMES_TOTAL} bytes"),
            ));
        }
        let target = self.dest.join(&rel);
        let no_data = |what: &str| {
            if member.size == 0 {
                Ok(())
            } else {
                Err(refused(
                    raw,
                    format!("is a {what} carrying {} bytes of data", member.size),
                ))
            }
        };
        match kind {
            tar::EntryType::Directory => {
                no_data("directory")?;
                fs::create_dir_all(&target).map_err(io_at(&target))?;
                fs::set_permissions(&target, fs::Permissions::from_mode(mode | 0o700))
                    .map_err(io_at(&target))?;
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let size = member.size;
                if self.out.bytes.saturating_add(size) > self.limits.max_bytes {
                    return Err(ExtractError::TooLarge(self.limits.max_bytes));
                }
                if let Some(parent) = target.parent() {
                    fs::create_dir_all(parent).map_err(io_at(parent))?;
                }
                let mut f = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(mode)
                    .open(&target)
                    .map_err(|e| match e.kind() {
                        io::ErrorKind::AlreadyExists => {
                            refused(raw, "is a file where the archive already made a directory")
                        }
                        _ => io_at(&target)(e),
                    })?;
                let copied = io::copy(&mut entry.by_ref().take(size), &mut f)
                    .map_err(ExtractError::Corrupt)?;
                if copied != size {
                    return Err(refused(raw, "is shorter than its header says"));
                }
                // The umask may have narrowed the mode; setuid bits never survive.
                f.set_permissions(fs::Permissions::from_mode(mode))
                    .map_err(io_at(&target))?;
                self.out.bytes += size;
                self.out.files += 1;
            }
            tar::EntryType::Symlink => {
                no_data("symlink")?;
                let link = match member.link.as_deref() {
                    None | Some([]) => return Err(refused(raw, "symlink without a target")),
                    Some(link) => link,
                };
                let link = checked_name(link)
                    .map_err(|p| refused(raw, format!("symlink target {} {p}", shown(link))))?;
                let link = Path::new(link);
                if link.has_root() {
                    return Err(refused(
                        raw,
                        format!(
                            "symlink to {} is absolute, so it resolves outside the release",
                            shown_path(link)
                        ),
                    ));
                }
                if fs::symlink_metadata(&target).is_ok() {
                    return Err(refused(
                        raw,
                        "is a symlink where the archive already made a directory",
                    ));
                }
                if let Some(parent) = target.parent() {
                    fs::create_dir_all(parent).map_err(io_at(parent))?;
                }
                let index = self.links.insert(rel, link.to_path_buf());
                // Judged now against the links so far (so an entry inside
                // it is refused for where it leads), and again in `finish`
                // against all of them.
                self.judge(index)?;
            }
            tar::EntryType::Link => return Err(refused(raw, "hard links are not allowed")),
            tar::EntryType::Char | tar::EntryType::Block => {
                return Err(refused(raw, "device files are not allowed"))
            }
            tar::EntryType::Fifo => return Err(refused(raw, "FIFOs are not allowed")),
            other => return Err(refused(raw, format!("entry type {other:?} is not allowed"))),
        }
        Ok(())
    }

    /// Whether link number `index`, resolved through the links known so
    /// far, stays inside.
    fn judge(&self, index: usize) -> Result<(), ExtractError> {
        self.links.check(index).map_err(|why| {
            let (rel, target) = self.links.get(index);
            refused(
                rel.as_os_str().as_bytes(),
                format!("symlink to {} {why}", shown_path(target)),
            )
        })
    }

    /// Judges every symlink against the finished tree, then creates them
    /// all: no link is on disk before all of them are known to stay inside.
    fn finish(self) -> Result<Unpacked, ExtractError> {
        for (index, _, _) in self.links.iter() {
            self.judge(index)?;
        }
        for (_, rel, target) in self.links.iter() {
            let at = self.dest.join(rel);
            std::os::unix::fs::symlink(target, &at).map_err(io_at(&at))?;
        }
        Ok(self.out)
    }
}

/// `raw` as a name the extractor may create: UTF-8, without control
/// characters (U+0000-U+001F, U+007F-U+009F), within PATH_MAX, NAME_MAX and [`MAX_DEPTH`].
fn checked_name(raw: &[u8]) -> Result<&str, String> {
    if raw.len() > MAX_NAME_BYTES {
        return Err(format!(
            "is {} bytes long, more than the {MAX_NAME_BYTES} allowed",
            raw.len()
        ));
    }
    let name = std::str::from_utf8(raw).map_err(|_| "is not UTF-8".to_string())?;
    // C0, DEL and C1: a terminal may act on any of them (U+009B is CSI).
    if let Some(c) = name.chars().find(|c| c.is_control()) {
        return Err(format!(
            "holds the control character U+{:04X}; names may not contain control characters",
            c as u32
        ));
    }
    if let Some(long) = name.split('/').find(|c| c.len() > MAX_COMPONENT_BYTES) {
        return Err(format!(
            "has a component of {} bytes, more than the {MAX_COMPONENT_BYTES} allowed",
            long.len()
        ));
    }
    if name.split('/').filter(|c| !c.is_empty()).count() > MAX_DEPTH {
        return Err(format!("is more than {MAX_DEPTH} components deep"));
    }
    Ok(name)
}

/// The entry's path relative to the destination; `None` for the root
/// itself (`./`). Absolute paths and `..` are refused.
fn safe_relative(raw: &str) -> Result<Option<PathBuf>, String> {
    let path = Path::new(raw);
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            Component::ParentDir => return Err("path contains `..`".into()),
            Component::RootDir | Component::Prefix(_) => {
                return Err("absolute paths are not allowed".into())
            }
        }
    }
    Ok((!out.as_os_str().is_empty()).then_some(out))
}
