//! A release directory's `migrations/` tree, walked and held to the layout
//! of `cutover_core::manifest::migrations`
//! (`migrations/<database>/<version>/<phase>/NNN_name.sql`): what
//! `release build` reads from its source tree and checks its `--out`
//! against, and what `release import` checks beside the manifest. Only the
//! CLI sees the directory (the controller gets the manifest and the bytes
//! it pins), so a file the manifest does not pin is refused here.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use cutover_core::manifest::migrations::{
    self, Location, Phase, LAYOUT, MAX_MIGRATIONS, MAX_MIGRATIONS_BYTES, MAX_MIGRATION_BYTES,
    MIGRATIONS_DIR,
};
use cutover_core::manifest::Manifest;

use crate::error::{Error, Result};

/// The most directory entries a walk looks at, files and directories
/// together: every migration a release may carry, in directories of their
/// own at every level, and some to spare.
pub const MAX_ENTRIES: usize = 4 * MAX_MIGRATIONS;

/// One migration file found in the tree.
#[derive(Debug)]
pub struct Found {
    pub at: Location,
    /// On disk.
    pub path: PathBuf,
}

/// Every migration file under `dir/migrations/`, in the order they run;
/// none when there is no `migrations/`. Anything else in the tree (a link,
/// a file where a directory belongs, a name the layout does not allow, an
/// unknown phase, an empty or oversized file) is refused naming it and
/// the fix. A directory that cannot be read is an error, never "no
/// migrations".
pub fn walk(dir: &Path) -> Result<Vec<Found>> {
    let root = dir.join(MIGRATIONS_DIR);
    match std::fs::symlink_metadata(&root) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(&root, e)),
        Ok(m) if m.file_type().is_symlink() => return Err(linked(&root)),
        Ok(m) if !m.is_dir() => {
            return Err(layout(&root, "is not a directory", "migrations go in"))
        }
        Ok(_) => {}
    }
    let mut walk = Walk {
        entries: 0,
        bytes: 0,
        found: Vec::new(),
    };
    for (database, path) in walk.dirs(&root, "database")? {
        migrations::check_database(&database).map_err(|e| named(&path, &e, "rename it"))?;
        for (version, path) in walk.dirs(&path, "version")? {
            let version =
                migrations::parse_version(&version).map_err(|e| named(&path, &e, "rename it"))?;
            for (phase, path) in walk.dirs(&path, "phase")? {
                let phase = Phase::parse(&phase)
                    .map_err(|e| named(&path, &e, "rename the directory or move its files"))?;
                for (name, path) in walk.entries(&path)? {
                    let at = Location {
                        database: database.clone(),
                        version: version.clone(),
                        phase,
                        name,
                    };
                    walk.file(at, path)?;
                }
            }
        }
    }
    let mut found = walk.found;
    found.sort_by(|a, b| a.at.cmp(&b.at));
    Ok(found)
}

/// Refuses a release directory whose `migrations/` holds anything the
/// manifest does not pin (or anything [`walk`] refuses). Pinned files that
/// are missing are the artifact checks' to name.
pub fn check_pinned(dir: &Path, manifest: &Manifest) -> Result<()> {
    let pinned: BTreeSet<&str> = manifest
        .migrations
        .iter()
        .map(|m| m.file.as_str())
        .collect();
    for f in walk(dir)? {
        if !pinned.contains(f.at.file().as_str()) {
            return Err(Error::Failed(format!(
                "{}: not pinned by the manifest of release {}, and a release carries only what it pins: pin it (`cutover release build` pins every file of its source tree's migrations/) or remove it",
                f.path.display(),
                manifest.version
            )));
        }
    }
    Ok(())
}

struct Walk {
    entries: usize,
    bytes: u64,
    found: Vec<Found>,
}

impl Walk {
    /// The entries of `dir` by name, counted against [`MAX_ENTRIES`]; a
    /// link is refused.
    fn entries(&mut self, dir: &Path) -> Result<Vec<(String, PathBuf)>> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
            let entry = entry.map_err(|e| Error::io(dir, e))?;
            self.entries = self.entries.saturating_add(1);
            if self.entries > MAX_ENTRIES {
                return Err(Error::Failed(format!(
                    "{}: more than {MAX_ENTRIES} files and directories under {MIGRATIONS_DIR}/; a release carries at most {MAX_MIGRATIONS} migrations",
                    dir.display()
                )));
            }
            let path = entry.path();
            let Some(name) = entry.file_name().to_str().map(String::from) else {
                return Err(layout(
                    &path,
                    "has a name that is not UTF-8",
                    "rename it; migrations go in",
                ));
            };
            out.push((name, path));
        }
        out.sort();
        Ok(out)
    }

    /// The entries of `dir`, which must all be directories: the level of
    /// the layout named `level`.
    fn dirs(&mut self, dir: &Path, level: &str) -> Result<Vec<(String, PathBuf)>> {
        let entries = self.entries(dir)?;
        for (_, path) in &entries {
            let meta = std::fs::symlink_metadata(path).map_err(|e| Error::io(path, e))?;
            if meta.file_type().is_symlink() {
                return Err(linked(path));
            }
            if !meta.is_dir() {
                return Err(layout(
                    path,
                    &format!("is a file where a {level} directory belongs"),
                    "move it; migrations go in",
                ));
            }
        }
        Ok(entries)
    }

    /// One entry of a phase directory: a regular, non-empty file named
    /// `NNN_name.sql` of at most [`MAX_MIGRATION_BYTES`].
    fn file(&mut self, at: Location, path: PathBuf) -> Result<()> {
        let meta = std::fs::symlink_metadata(&path).map_err(|e| Error::io(&path, e))?;
        if meta.file_type().is_symlink() {
            return Err(linked(&path));
        }
        if !meta.is_file() {
            return Err(layout(
                &path,
                "is not a regular file; a phase directory holds only migration files",
                "move it; migrations go in",
            ));
        }
        migrations::check_name(&at.name).map_err(|e| named(&path, &e, "rename the file"))?;
        let size = meta.len();
        if size == 0 {
            return Err(Error::Failed(format!(
                "{}: the migration is empty (0 bytes); write its SQL or remove it",
                path.display()
            )));
        }
        if size > MAX_MIGRATION_BYTES {
            return Err(Error::Failed(format!(
                "{}: {size} bytes, more than the {MAX_MIGRATION_BYTES} one migration may have; split it",
                path.display()
            )));
        }
        self.bytes = self
            .bytes
            .checked_add(size)
            .filter(|b| *b <= MAX_MIGRATIONS_BYTES)
            .ok_or_else(|| {
                Error::Failed(format!(
                    "{}: the migrations hold more than the {MAX_MIGRATIONS_BYTES} bytes a release may carry in all",
                    path.display()
                ))
            })?;
        if self.found.len() >= MAX_MIGRATIONS {
            return Err(Error::Failed(format!(
                "{}: more than {MAX_MIGRATIONS} migration files; a release carries at most {MAX_MIGRATIONS}: squash the oldest into one",
                path.display()
            )));
        }
        self.found.push(Found { at, path });
        Ok(())
    }
}

/// `path: problem; fix LAYOUT`.
fn layout(path: &Path, problem: &str, fix: &str) -> Error {
    Error::Failed(format!("{}: {problem}; {fix} {LAYOUT}", path.display()))
}

/// `path: problem from core; fix`.
fn named(path: &Path, problem: &str, fix: &str) -> Error {
    Error::Failed(format!("{}: {problem}; {fix}", path.display()))
}

fn linked(path: &Path) -> Error {
    Error::Failed(format!(
        "{}: a symbolic link under {MIGRATIONS_DIR}/, refused: migrations are read only from regular files and directories (copy the file into place instead of linking it)",
        path.display()
    ))
}

#[cfg(test)]
mod tests;
