//! Judging an archive's symlinks against the whole tree the archive makes.
//! A link is resolved the way the kernel will once every link is on disk:
//! component by component from the directory holding it, following the
//! archive's other links (whichever entry came first), so `d/s -> ..`
//! followed by `d/t -> s/../..` is seen to leave the release even though
//! each target counted alone stays inside.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::path::{Component, Path, PathBuf};

/// Links followed while resolving one link (the kernel's own limit).
const MAX_HOPS: u32 = 40;
/// Path components walked while resolving one link, links included.
const MAX_STEPS: u32 = 4096;

/// Why a link cannot stay in the release.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Escape {
    /// It resolves (or would, once what it names exists) outside the root.
    Outside {
        through: Option<PathBuf>,
    },
    Absolute {
        through: Option<PathBuf>,
    },
    Loop,
    TooLong,
}

impl std::fmt::Display for Escape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let via = |f: &mut std::fmt::Formatter<'_>, through: &Option<PathBuf>| match through {
            Some(p) => write!(f, " through the archive's symlink {}", super::shown_path(p)),
            None => Ok(()),
        };
        match self {
            Escape::Outside { through } => {
                f.write_str("resolves outside the release")?;
                via(f, through)
            }
            Escape::Absolute { through } => {
                f.write_str("resolves to an absolute path")?;
                via(f, through)
            }
            Escape::Loop => write!(f, "is a symlink loop (more than {MAX_HOPS} links deep)"),
            Escape::TooLong => write!(f, "takes more than {MAX_STEPS} steps to resolve"),
        }
    }
}

/// Every symlink of the archive, by its path relative to the root (its
/// parents are real directories: the extractor refuses entries inside a
/// symlink), with its target.
#[derive(Default)]
pub(super) struct Links {
    targets: HashMap<PathBuf, PathBuf>,
    order: Vec<PathBuf>,
}

impl Links {
    pub(super) fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    pub(super) fn contains(&self, rel: &Path) -> bool {
        self.targets.contains_key(rel)
    }

    pub(super) fn insert(&mut self, rel: PathBuf, target: PathBuf) {
        self.order.push(rel.clone());
        self.targets.insert(rel, target);
    }

    /// The target of the link at `rel`, which must be one.
    pub(super) fn target(&self, rel: &Path) -> &Path {
        &self.targets[rel]
    }

    /// The links in archive order, with their targets.
    pub(super) fn iter(&self) -> impl Iterator<Item = (&Path, &Path)> {
        self.order
            .iter()
            .map(|rel| (rel.as_path(), self.targets[rel].as_path()))
    }

    /// Resolves the link at `rel`. Components that name nothing in the
    /// archive are walked lexically, so a dangling link is judged by where
    /// it would point; a regular file followed by `..` is walked the same
    /// way (the kernel refuses it, which is no escape either).
    pub(super) fn check(&self, rel: &Path) -> Result<(), Escape> {
        let mut here: Vec<&OsStr> = match rel.parent() {
            Some(p) => p.iter().collect(),
            None => Vec::new(),
        };
        // Components still to walk, the next one last.
        let mut pending: Vec<Component<'_>> = self.targets[rel].components().rev().collect();
        let mut through: Option<&Path> = None;
        let (mut hops, mut steps) = (0u32, 0u32);
        while let Some(c) = pending.pop() {
            steps += 1;
            if steps > MAX_STEPS {
                return Err(Escape::TooLong);
            }
            match c {
                Component::RootDir | Component::Prefix(_) => {
                    return Err(Escape::Absolute {
                        through: through.map(Path::to_path_buf),
                    })
                }
                Component::CurDir => {}
                Component::ParentDir => {
                    if here.pop().is_none() {
                        return Err(Escape::Outside {
                            through: through.map(Path::to_path_buf),
                        });
                    }
                }
                Component::Normal(name) => {
                    here.push(name);
                    let at: PathBuf = here.iter().collect();
                    if let Some((link, target)) = self.targets.get_key_value(&at) {
                        hops += 1;
                        if hops > MAX_HOPS {
                            return Err(Escape::Loop);
                        }
                        here.pop();
                        pending.extend(target.components().rev());
                        through = Some(link.as_path());
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn links(pairs: &[(&str, &str)]) -> Links {
        let mut l = Links::default();
        for (at, to) in pairs {
            l.insert(PathBuf::from(at), PathBuf::from(to));
        }
        l
    }

    #[test]
    fn a_link_through_an_earlier_link_is_judged_by_where_it_lands() {
        let l = links(&[("d/s", ".."), ("d/t", "s/../..")]);
        assert_eq!(l.check(Path::new("d/s")), Ok(()));
        assert_eq!(
            l.check(Path::new("d/t")),
            Err(Escape::Outside {
                through: Some(PathBuf::from("d/s"))
            })
        );
    }

    #[test]
    fn a_link_through_a_later_link_is_judged_the_same() {
        // Order does not matter: all links are on disk in the end.
        let l = links(&[("d/t", "s/../.."), ("d/s", "..")]);
        assert!(matches!(
            l.check(Path::new("d/t")),
            Err(Escape::Outside { .. })
        ));
    }

    #[test]
    fn chains_and_dangling_links_inside_are_accepted() {
        let l = links(&[
            ("lib/libfoo.so", "libfoo.so.1"),
            ("lib/libfoo.so.1", "libfoo.so.1.2.3"),
            ("current", "v1"),
            ("bin/app", "../current/bin/app"),
            ("later", "not/yet/there/../x"),
        ]);
        for (at, _) in l.iter() {
            assert_eq!(l.check(at), Ok(()), "{}", at.display());
        }
    }

    #[test]
    fn a_chain_to_an_absolute_target_is_refused() {
        let l = links(&[("a", "b"), ("b", "/etc")]);
        assert_eq!(
            l.check(Path::new("a")),
            Err(Escape::Absolute {
                through: Some(PathBuf::from("b"))
            })
        );
    }

    #[test]
    fn loops_are_refused() {
        let l = links(&[("a", "b"), ("b", "a")]);
        assert_eq!(l.check(Path::new("a")), Err(Escape::Loop));
        let l = links(&[("a", "a/x")]);
        assert_eq!(l.check(Path::new("a")), Err(Escape::Loop));
    }

    #[test]
    fn resolution_work_is_bounded() {
        // Each hop walks 201 steps; the step bound ends it before the hops do.
        let wide = "x/../".repeat(100);
        let l = links(&[("a", &format!("{wide}b")), ("b", &format!("{wide}a"))]);
        assert_eq!(l.check(Path::new("a")), Err(Escape::TooLong));
    }
}
