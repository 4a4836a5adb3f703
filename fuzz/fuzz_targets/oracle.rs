//! What every extraction target checks after the extractor ran: nothing
//! was written beside the destination, and (when the archive was accepted)
//! no symlink inside the release resolves outside it.

use std::fs;
use std::path::{Component, Path, PathBuf};

use cutover_agent::extract::Limits;

pub const LIMITS: Limits = Limits {
    max_bytes: 1 << 20,
    max_entries: 256,
};

const SENTINEL: &[u8] = b"nothing may touch this";

/// A jail holding a sentinel file; the extractor unpacks into `jail/dest`.
pub struct Jail {
    pub dir: tempfile::TempDir,
}

impl Jail {
    pub fn new() -> Jail {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(dir.path().join("sentinel"), SENTINEL).expect("sentinel");
        Jail { dir }
    }

    pub fn dest(&self) -> PathBuf {
        self.dir.path().join("dest")
    }

    /// Panics (a fuzzer finding) if the extractor escaped.
    pub fn check(&self, accepted: bool) {
        let jail = self.dir.path();
        for entry in fs::read_dir(jail).expect("read jail") {
            let name = entry.expect("jail entry").file_name();
            assert!(
                name == "dest" || name == "sentinel",
                "extractor created {name:?} beside the destination"
            );
        }
        let sentinel = fs::symlink_metadata(jail.join("sentinel")).expect("sentinel");
        assert!(sentinel.is_file(), "sentinel replaced");
        assert_eq!(fs::read(jail.join("sentinel")).expect("sentinel"), SENTINEL);
        if accepted {
            let root = fs::canonicalize(self.dest()).expect("dest exists when accepted");
            walk(&root, &root);
        }
    }
}

fn walk(root: &Path, dir: &Path) {
    for entry in fs::read_dir(dir).expect("read dir") {
        let path = entry.expect("entry").path();
        let meta = fs::symlink_metadata(&path).expect("metadata");
        if meta.file_type().is_symlink() {
            let resolved = resolve(&path, 0);
            assert!(
                resolved.starts_with(root),
                "{} resolves to {} outside the release",
                path.display(),
                resolved.display()
            );
        } else if meta.is_dir() {
            walk(root, &path);
        }
    }
}

/// Resolves `path` through the real filesystem, following symlinks, and
/// lexically past components that do not exist (a dangling link is judged
/// by where it would point).
fn resolve(path: &Path, depth: u32) -> PathBuf {
    assert!(depth < 64, "{} is a symlink loop", path.display());
    let mut out = PathBuf::from("/");
    for component in path.components() {
        match component {
            Component::RootDir | Component::Prefix(_) => out = PathBuf::from("/"),
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(name) => {
                let next = out.join(name);
                match fs::read_link(&next) {
                    Ok(target) => {
                        let joined = if target.is_absolute() {
                            target
                        } else {
                            out.join(target)
                        };
                        out = resolve(&joined, depth + 1);
                    }
                    Err(_) => out = next,
                }
            }
        }
    }
    out
}
