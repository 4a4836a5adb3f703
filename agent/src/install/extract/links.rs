//! Judging an archive's symlinks against the whole tree the archive makes.
//! A link is resolved the way the kernel will once every link is on disk:
//! component by component from the directory holding it, following the
//! archive's other links (whichever entry came first), so `d/s -> ..`
//! followed by `d/t -> s/../..` is seen to leave the release even though
//! each target counted alone stays inside.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
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
/// symlink), with its target. The places links sit are kept as a tree of
/// components, so each step of a resolution is one lookup of one name, not
/// a hash of the whole path walked so far.
#[derive(Default)]
pub(super) struct Links {
    /// Node 0 is the root; every other node is a directory or a link.
    nodes: Vec<Node>,
    /// Links in archive order: where (as given and as a node) and target.
    order: Vec<(PathBuf, usize, PathBuf)>,
}

#[derive(Default)]
struct Node {
    parent: usize,
    children: HashMap<OsString, usize>,
    /// The index in `order` of the link this node is.
    link: Option<usize>,
}

impl Links {
    fn root(&mut self) {
        if self.nodes.is_empty() {
            self.nodes.push(Node::default());
        }
    }

    fn child(&self, node: usize, name: &OsStr) -> Option<usize> {
        self.nodes.get(node)?.children.get(name).copied()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// The nearest strict ancestor of `rel` that is a link, if any.
    pub(super) fn link_above(&self, rel: &Path) -> Option<&Path> {
        let parent = rel.parent()?;
        let mut node = 0;
        for name in parent.iter() {
            node = self.child(node, name)?;
            if let Some(i) = self.nodes[node].link {
                return Some(&self.order[i].0);
            }
        }
        None
    }

    /// Records the link at `rel` (not yet on disk); returns its index.
    pub(super) fn insert(&mut self, rel: PathBuf, target: PathBuf) -> usize {
        self.root();
        let mut node = 0;
        for name in rel.iter() {
            node = match self.child(node, name) {
                Some(n) => n,
                None => {
                    self.nodes.push(Node {
                        parent: node,
                        ..Node::default()
                    });
                    let n = self.nodes.len() - 1;
                    self.nodes[node].children.insert(name.to_os_string(), n);
                    n
                }
            };
        }
        let index = self.order.len();
        self.nodes[node].link = Some(index);
        self.order.push((rel, node, target));
        index
    }

    /// Where link number `index` sits, and its target.
    pub(super) fn get(&self, index: usize) -> (&Path, &Path) {
        let (rel, _, target) = &self.order[index];
        (rel, target)
    }

    /// The links in archive order, with their targets.
    pub(super) fn iter(&self) -> impl Iterator<Item = (usize, &Path, &Path)> {
        self.order
            .iter()
            .enumerate()
            .map(|(i, (rel, _, target))| (i, rel.as_path(), target.as_path()))
    }

    /// Resolves link number `index`. Components that name nothing in the
    /// archive are walked lexically, so a dangling link is judged by where
    /// it would point; a regular file followed by `..` is walked the same
    /// way (the kernel refuses it, which is no escape either).
    pub(super) fn check(&self, index: usize) -> Result<(), Escape> {
        let (_, node, target) = &self.order[index];
        // Where the walk is: a node of the tree, then names below it that
        // are no place of a link (so nothing to follow there).
        let mut at = self.nodes[*node].parent;
        let mut beyond: Vec<&OsStr> = Vec::new();
        // Components still to walk, the next one last.
        let mut pending: Vec<Component<'_>> = target.components().rev().collect();
        let mut through: Option<usize> = None;
        let (mut hops, mut steps) = (0u32, 0u32);
        let via = |through: Option<usize>| through.map(|i| self.order[i].0.clone());
        while let Some(c) = pending.pop() {
            steps += 1;
            if steps > MAX_STEPS {
                return Err(Escape::TooLong);
            }
            match c {
                Component::RootDir | Component::Prefix(_) => {
                    return Err(Escape::Absolute {
                        through: via(through),
                    })
                }
                Component::CurDir => {}
                Component::ParentDir => {
                    if beyond.pop().is_none() {
                        if at == 0 {
                            return Err(Escape::Outside {
                                through: via(through),
                            });
                        }
                        at = self.nodes[at].parent;
                    }
                }
                Component::Normal(name) => {
                    let next = if beyond.is_empty() {
                        self.child(at, name)
                    } else {
                        None
                    };
                    match next {
                        None => beyond.push(name),
                        Some(n) => match self.nodes[n].link {
                            None => at = n,
                            Some(link) => {
                                hops += 1;
                                if hops > MAX_HOPS {
                                    return Err(Escape::Loop);
                                }
                                // A relative target starts where the link sits.
                                pending.extend(self.order[link].2.components().rev());
                                through = Some(link);
                            }
                        },
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

    /// Resolves the link at `rel`.
    impl Links {
        fn check_at(&self, rel: &str) -> Result<(), Escape> {
            let i = self.order.iter().position(|(p, _, _)| p == Path::new(rel));
            self.check(i.expect("a link"))
        }
    }

    #[test]
    fn a_link_through_an_earlier_link_is_judged_by_where_it_lands() {
        let l = links(&[("d/s", ".."), ("d/t", "s/../..")]);
        assert_eq!(l.check_at("d/s"), Ok(()));
        assert_eq!(
            l.check_at("d/t"),
            Err(Escape::Outside {
                through: Some(PathBuf::from("d/s"))
            })
        );
    }

    #[test]
    fn a_link_through_a_later_link_is_judged_the_same() {
        // Order does not matter: all links are on disk in the end.
        let l = links(&[("d/t", "s/../.."), ("d/s", "..")]);
        assert!(matches!(l.check_at("d/t"), Err(Escape::Outside { .. })));
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
        for (i, at, _) in l.iter() {
            assert_eq!(l.check(i), Ok(()), "{}", at.display());
        }
    }

    #[test]
    fn a_chain_to_an_absolute_target_is_refused() {
        let l = links(&[("a", "b"), ("b", "/etc")]);
        assert_eq!(
            l.check_at("a"),
            Err(Escape::Absolute {
                through: Some(PathBuf::from("b"))
            })
        );
    }

    #[test]
    fn loops_are_refused() {
        let l = links(&[("a", "b"), ("b", "a")]);
        assert_eq!(l.check_at("a"), Err(Escape::Loop));
        let l = links(&[("a", "a/x")]);
        assert_eq!(l.check_at("a"), Err(Escape::Loop));
    }

    #[test]
    fn resolution_work_is_bounded() {
        // Each hop walks 201 steps; the step bound ends it before the hops do.
        let wide = "x/../".repeat(100);
        let l = links(&[("a", &format!("{wide}b")), ("b", &format!("{wide}a"))]);
        assert_eq!(l.check_at("a"), Err(Escape::TooLong));
    }
}
