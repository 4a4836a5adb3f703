//! The extractor over random archives of directories, files, symlinks and
//! hard links with adversarial names and targets (`..`, absolute paths,
//! links through links, control characters, names for GNU long-name and
//! PAX records). The oracle looks only at the real filesystem: whatever the
//! extractor answers, nothing beside the destination changed, and no
//! symlink under it resolves, following links, outside it.

use std::fs;
use std::path::{Component, Path, PathBuf};

use proptest::prelude::*;
use tar::EntryType as T;

use super::tests::{Raw, LIMITS};
use super::unpack_reader;

const SENTINEL: &[u8] = b"nothing may touch this";

#[derive(Debug, Clone)]
enum Piece {
    Dot,
    DotDot,
    Root,
    Name(&'static str),
    /// The jail's own absolute path (where the sentinel lives).
    Jail,
    Long,
    /// The last component of another entry's name (index modulo the
    /// entries): a target through a sibling, which is how links chain.
    Sibling(usize),
}

#[derive(Debug, Clone)]
enum Kind {
    Dir,
    File(Vec<u8>),
    Symlink(Vec<Piece>),
    HardLink(Vec<Piece>),
}

#[derive(Debug, Clone)]
struct Entry {
    name: Vec<Piece>,
    kind: Kind,
    /// 0: in the header, 1: GNU long name/link, 2: PAX path/linkpath.
    encoding: u8,
}

/// A piece of an entry's name: mostly plain, so that many archives are
/// accepted and their links judged on disk, sometimes hostile.
fn name_piece() -> impl Strategy<Value = Piece> {
    prop_oneof![
        80 => prop::sample::select(vec!["a", "b", "l", "m"]).prop_map(Piece::Name),
        1 => Just(Piece::Dot),
        1 => Just(Piece::DotDot),
        1 => Just(Piece::Root),
        1 => Just(Piece::Long),
        1 => prop::sample::select(vec!["x\ny", "e\x1b", "sentinel"]).prop_map(Piece::Name),
    ]
}

/// A piece of a link target: climbing out is what a link attack needs.
fn target_piece() -> impl Strategy<Value = Piece> {
    prop_oneof![
        8 => prop::sample::select(vec!["a", "b", "l", "m", "sentinel"]).prop_map(Piece::Name),
        8 => Just(Piece::DotDot),
        8 => (0usize..8).prop_map(Piece::Sibling),
        1 => Just(Piece::Dot),
        1 => Just(Piece::Root),
        1 => Just(Piece::Jail),
        1 => Just(Piece::Long),
    ]
}

fn entry() -> impl Strategy<Value = Entry> {
    let target = || prop::collection::vec(target_piece(), 1..5);
    let kind = prop_oneof![
        4 => Just(Kind::Dir),
        4 => prop::collection::vec(any::<u8>(), 0..4).prop_map(Kind::File),
        16 => target().prop_map(Kind::Symlink),
        1 => target().prop_map(Kind::HardLink),
    ];
    (prop::collection::vec(name_piece(), 1..3), kind, 0u8..3).prop_map(|(name, kind, encoding)| {
        Entry {
            name,
            kind,
            encoding,
        }
    })
}

fn render(pieces: &[Piece], jail: &Path, names: &[Vec<Piece>]) -> String {
    let mut out = String::new();
    for (i, p) in pieces.iter().enumerate() {
        if i > 0 && !matches!(p, Piece::Root | Piece::Jail) {
            out.push('/');
        }
        match p {
            Piece::Dot => out.push('.'),
            Piece::DotDot => out.push_str(".."),
            Piece::Root => out.push('/'),
            Piece::Name(n) => out.push_str(n),
            Piece::Jail => out.push_str(&jail.display().to_string()),
            Piece::Long => out.push_str(&"q".repeat(120)),
            Piece::Sibling(i) => {
                let name = render(&names[i % names.len()], jail, &[]);
                out.push_str(name.rsplit('/').next().unwrap_or("."));
            }
        }
    }
    out
}

fn archive(entries: &[Entry], jail: &Path) -> Vec<u8> {
    let names: Vec<Vec<Piece>> = entries.iter().map(|e| e.name.clone()).collect();
    let render = |pieces: &[Piece]| render(pieces, jail, &names);
    let mut raw = Raw::default();
    for e in entries {
        let name = render(&e.name);
        let (kind, data, link) = match &e.kind {
            Kind::Dir => (T::Directory, Vec::new(), String::new()),
            Kind::File(d) => (T::Regular, d.clone(), String::new()),
            Kind::Symlink(t) => (T::Symlink, Vec::new(), render(t)),
            Kind::HardLink(t) => (T::Link, Vec::new(), render(t)),
        };
        let fits = name.len() <= 100 && link.len() <= 100;
        raw = match (e.encoding, fits) {
            (0, true) => raw.entry(kind, name.as_bytes(), &data, link.as_bytes()),
            (1, _) | (0, false) => {
                raw = raw.gnu(T::GNULongName, name.as_bytes());
                if !link.is_empty() {
                    raw = raw.gnu(T::GNULongLink, link.as_bytes());
                }
                raw.entry(kind, b"short", &data, b"")
            }
            _ => {
                let mut records: Vec<(&str, &[u8])> = vec![("path", name.as_bytes())];
                if !link.is_empty() {
                    records.push(("linkpath", link.as_bytes()));
                }
                raw.pax(T::XHeader, &records)
                    .entry(kind, b"short", &data, b"")
            }
        };
    }
    raw.end()
}

/// Where `path` lands on the real filesystem, following every symlink and
/// walking past components that do not exist (a dangling link is judged
/// by where it would point); `None` for a loop, which resolves nowhere.
fn resolve(path: &Path, hops: &mut u32) -> Option<PathBuf> {
    let mut out = PathBuf::from("/");
    for c in path.components() {
        match c {
            Component::RootDir | Component::Prefix(_) => out = PathBuf::from("/"),
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(n) => {
                let next = out.join(n);
                match fs::read_link(&next) {
                    Ok(target) => {
                        *hops += 1;
                        if *hops > 64 {
                            return None;
                        }
                        out = resolve(&out.join(target), hops)?;
                    }
                    Err(_) => out = next,
                }
            }
        }
    }
    Some(out)
}

fn check_links(root: &Path, dir: &Path) -> Result<(), String> {
    let Ok(read) = fs::read_dir(dir) else {
        return Ok(());
    };
    for e in read {
        let p = e.map_err(|e| e.to_string())?.path();
        let meta = fs::symlink_metadata(&p).map_err(|e| e.to_string())?;
        if meta.file_type().is_symlink() {
            if let Some(to) = resolve(&p, &mut 0) {
                if !to.starts_with(root) {
                    return Err(format!("{} resolves to {}", p.display(), to.display()));
                }
            }
        } else if meta.is_dir() {
            check_links(root, &p)?;
        }
    }
    Ok(())
}

/// The oracle; `Err` says what escaped.
fn extract_and_judge(entries: &[Entry]) -> Result<bool, String> {
    let jail = tempfile::tempdir().unwrap();
    let jail_path = fs::canonicalize(jail.path()).unwrap();
    fs::write(jail_path.join("sentinel"), SENTINEL).unwrap();
    let dest = jail_path.join("dest");
    let bytes = archive(entries, &jail_path);
    let accepted = unpack_reader(&bytes[..], &dest, LIMITS).is_ok();
    for e in fs::read_dir(&jail_path).unwrap() {
        let name = e.unwrap().file_name();
        if name != "dest" && name != "sentinel" {
            return Err(format!("created {name:?} beside the destination"));
        }
    }
    let sentinel = fs::symlink_metadata(jail_path.join("sentinel")).unwrap();
    if !sentinel.is_file() || fs::read(jail_path.join("sentinel")).unwrap() != SENTINEL {
        return Err("the sentinel beside the destination changed".into());
    }
    // Refused or not, no link under the destination may point out of it:
    // links go on disk only once all of them are judged.
    check_links(&dest, &dest)?;
    Ok(accepted)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn random_archives_never_escape_the_destination(
        entries in prop::collection::vec(entry(), 1..8)
    ) {
        if let Err(escape) = extract_and_judge(&entries) {
            prop_assert!(false, "{escape}");
        }
    }
}

/// Symlinks only, side by side in one directory, whose targets climb and
/// go through each other: the shape of a link-through-link escape.
fn link_chain() -> impl Strategy<Value = Vec<Entry>> {
    let target = prop::collection::vec(
        prop_oneof![
            3 => (0usize..8).prop_map(Piece::Sibling),
            3 => Just(Piece::DotDot),
            1 => prop::sample::select(vec!["a", "x"]).prop_map(Piece::Name),
        ],
        1..4,
    );
    let link = (
        prop::sample::select(vec!["a", "b", "l", "m"]),
        target,
        0u8..3,
    );
    prop::collection::vec(link, 2..6).prop_map(|links| {
        links
            .into_iter()
            .map(|(name, target, encoding)| Entry {
                name: vec![Piece::Name("d"), Piece::Name(name)],
                kind: Kind::Symlink(target),
                encoding,
            })
            .collect()
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    #[test]
    fn random_link_chains_never_escape_the_destination(entries in link_chain()) {
        if let Err(escape) = extract_and_judge(&entries) {
            prop_assert!(false, "{escape}");
        }
    }
}

/// The oracle itself catches the escape the old extractor let through, so
/// the property above is not vacuous; and the generator reaches accepted
/// archives with symlinks, not only refusals.
#[test]
fn the_oracle_sees_a_link_through_a_link_and_accepts_good_archives() {
    let jail = tempfile::tempdir().unwrap();
    let root = fs::canonicalize(jail.path()).unwrap().join("dest");
    fs::create_dir_all(root.join("d")).unwrap();
    std::os::unix::fs::symlink("..", root.join("d/s")).unwrap();
    std::os::unix::fs::symlink("s/../sentinel", root.join("d/t")).unwrap();
    let e = check_links(&root, &root).unwrap_err();
    assert!(e.contains("d/t resolves to"), "{e}");

    let good = [
        Entry {
            name: vec![Piece::Name("a"), Piece::Name("b")],
            kind: Kind::File(vec![1]),
            encoding: 1,
        },
        Entry {
            name: vec![Piece::Name("l")],
            kind: Kind::Symlink(vec![Piece::Name("a"), Piece::Dot, Piece::Name("b")]),
            encoding: 2,
        },
        Entry {
            name: vec![Piece::Name("m")],
            kind: Kind::Symlink(vec![Piece::Name("l")]),
            encoding: 0,
        },
    ];
    assert_eq!(extract_and_judge(&good), Ok(true));
}
