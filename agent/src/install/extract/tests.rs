//! The extractor against hand-built archives: raw headers written byte by
//! byte where the `tar` builder would refuse them (`../x`, sizes that lie,
//! extensions claiming gigabytes), and a real `git archive`.

use super::*;

use std::io::Write as _;
use tar::EntryType as T;

pub(super) const LIMITS: Limits = Limits {
    max_bytes: 1 << 20,
    max_entries: 100,
};

/// A tar archive written header by header.
#[derive(Default)]
pub(super) struct Raw(pub Vec<u8>);

impl Raw {
    /// One header; `name` and `link` go into the old fields as given.
    pub fn header(mut self, kind: T, name: &[u8], size: u64, link: &[u8]) -> Raw {
        let mut h = tar::Header::new_gnu();
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        h.as_old_mut().linkname[..link.len()].copy_from_slice(link);
        h.set_entry_type(kind);
        h.set_size(size);
        h.set_mode(0o4755);
        h.set_cksum();
        self.0.extend_from_slice(h.as_bytes());
        self
    }

    /// Data, padded to a whole block.
    pub fn data(mut self, data: &[u8]) -> Raw {
        self.0.extend_from_slice(data);
        let pad = (512 - data.len() % 512) % 512;
        self.0.extend(std::iter::repeat_n(0, pad));
        self
    }

    pub fn entry(self, kind: T, name: &[u8], data: &[u8], link: &[u8]) -> Raw {
        self.header(kind, name, data.len() as u64, link).data(data)
    }

    /// A GNU long name (`T::GNULongName`) or link record holding `value`.
    pub fn gnu(self, kind: T, value: &[u8]) -> Raw {
        let mut v = value.to_vec();
        v.push(0);
        self.entry(kind, b"././@LongLink", &v, b"")
    }

    /// A PAX header (`T::XHeader` or `T::XGlobalHeader`) of these records.
    pub fn pax(self, kind: T, records: &[(&str, &[u8])]) -> Raw {
        let mut data = Vec::new();
        for (key, value) in records {
            let body = key.len() + value.len() + 3;
            let mut len = body + 1;
            while len != body + len.to_string().len() {
                len = body + len.to_string().len();
            }
            write!(data, "{len} {key}=").unwrap();
            data.extend_from_slice(value);
            data.push(b'\n');
        }
        self.entry(kind, b"pax_header", &data, b"")
    }

    pub fn end(mut self) -> Vec<u8> {
        self.0.extend_from_slice(&[0; 1024]);
        self.0
    }
}

/// A plain entry: name, type, data, link target.
type Plain<'a> = (&'a str, T, &'a [u8], &'a str);

/// A tar of plain entries.
fn raw_tar(entries: &[Plain<'_>]) -> Vec<u8> {
    let mut raw = Raw::default();
    for (name, kind, data, link) in entries {
        raw = raw.entry(*kind, name.as_bytes(), data, link.as_bytes());
    }
    raw.end()
}

fn try_unpack(tar: &[u8]) -> (tempfile::TempDir, Result<Unpacked, ExtractError>) {
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("release");
    let r = unpack_reader(tar, &dest, LIMITS);
    (dir, r)
}

fn refusal(tar: &[u8]) -> String {
    let (_dir, r) = try_unpack(tar);
    let e = r.expect_err("the archive must be refused").to_string();
    assert!(!e.contains('\n'), "one line: {e}");
    e
}

/// Every path under `dir` that is a symlink.
fn symlinks_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(read) = fs::read_dir(dir) else {
        return out;
    };
    for e in read {
        let p = e.unwrap().path();
        let meta = fs::symlink_metadata(&p).unwrap();
        if meta.file_type().is_symlink() {
            out.push(p);
        } else if meta.is_dir() {
            out.extend(symlinks_under(&p));
        }
    }
    out
}

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
        (
            raw_tar(&[("l", T::Symlink, b"", "/etc/passwd")]),
            "absolute",
        ),
        (raw_tar(&[("d/l", T::Symlink, b"", "../../x")]), "outside"),
        (
            raw_tar(&[("l", T::Symlink, b"", "."), ("l/x", T::Regular, b"x", "")]),
            "inside the symlink \"l\"",
        ),
        (
            raw_tar(&[
                ("link", T::Symlink, b"", "../../../.."),
                ("link/evil", T::Regular, b"x", ""),
            ]),
            "entry \"link\": symlink to \"../../../..\" resolves outside the release",
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

/// Bytes after one header: as many as asked for, but reading more than
/// 1 MiB of them fails, so an extractor reading an extension whole is
/// caught without allocating gigabytes.
struct Endless {
    head: Vec<u8>,
    read: u64,
}

impl Read for Endless {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.read > 1 << 20 {
            return Err(io::Error::other("read more than 1 MiB of the extension"));
        }
        let n = buf.len().min(64 * 1024);
        for (i, b) in buf[..n].iter_mut().enumerate() {
            let at = self.read as usize + i;
            *b = self.head.get(at).copied().unwrap_or(b'a');
        }
        self.read += n as u64;
        Ok(n)
    }
}

#[test]
fn header_extensions_claiming_gigabytes_are_refused_before_they_are_read() {
    for (kind, claim, name) in [
        (T::GNULongName, 2u64 << 30, "GNU long name"),
        (T::GNULongLink, 2 << 30, "GNU long link"),
        (T::XHeader, 1 << 30, "PAX header"),
        (T::XGlobalHeader, 1 << 30, "PAX global header"),
        // Just past the bounds: a name of PATH_MAX, a 64 KiB PAX set.
        (T::GNULongName, 4097, "GNU long name"),
        (T::XHeader, 64 * 1024 + 1, "PAX header"),
    ] {
        let head = Raw::default().header(kind, b"././@LongLink", claim, b"").0;
        let mut bytes = Endless { head, read: 0 };
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("release");
        fs::create_dir(&dest).unwrap();
        let e = unpack_from(&mut bytes, &dest, LIMITS).unwrap_err();
        assert!(
            matches!(e, ExtractError::Header { offset: 0, .. }),
            "{name}: {e}"
        );
        let e = e.to_string();
        assert!(
            e.contains(name) && e.contains(&format!("claims {claim} bytes")),
            "{e}"
        );
        assert!(bytes.read <= 64 * 1024, "{name}: read {} bytes", bytes.read);
    }
}

#[test]
fn a_gnu_long_name_claiming_2_gib_with_few_bytes_present_is_refused() {
    let tar = Raw::default()
        .header(T::GNULongName, b"././@LongLink", 2 << 30, b"")
        .data(&[b'a'; 2048])
        .end();
    let e = refusal(&tar);
    assert!(
        e.contains("claims 2147483648 bytes, more than the 4096"),
        "{e}"
    );
}

#[test]
fn long_names_and_links_within_the_bounds_are_applied() {
    let deep = format!("{}/app", vec!["d".repeat(200); 3].join("/"));
    let target = format!("../../{deep}");
    let tar = Raw::default()
        .gnu(T::GNULongName, deep.as_bytes())
        .entry(T::Regular, b"ignored", b"hi", b"")
        .pax(
            T::XHeader,
            &[("path", b"x/y/link"), ("linkpath", target.as_bytes())],
        )
        .entry(T::Symlink, b"ignored-too", b"", b"")
        .gnu(T::GNULongName, b"z/gnu-link")
        .gnu(T::GNULongLink, format!("../{deep}").as_bytes())
        .entry(T::Symlink, b"ignored-3", b"", b"")
        .end();
    let (dir, r) = try_unpack(&tar);
    r.unwrap();
    let release = dir.path().join("release");
    assert_eq!(fs::read(release.join(&deep)).unwrap(), b"hi");
    assert_eq!(fs::read(release.join("x/y/link")).unwrap(), b"hi");
    assert_eq!(fs::read(release.join("z/gnu-link")).unwrap(), b"hi");
    assert!(!release.join("ignored").exists());
}

#[test]
fn names_past_path_max_are_refused_in_one_short_line() {
    let long = "a/".repeat(2600);
    let tar = Raw::default()
        .pax(T::XHeader, &[("path", long.as_bytes())])
        .entry(T::Regular, b"x", b"", b"")
        .end();
    let e = refusal(&tar);
    assert!(
        e.contains("is 5200 bytes long, more than the 4095 allowed"),
        "{e}"
    );
    assert!(e.len() < 300, "the name is cut short: {e}");
    let tar = raw_tar(&[(&"n".repeat(99), T::Regular, b"", "")]);
    let (_d, r) = try_unpack(&tar);
    r.unwrap();
    let wide = "c".repeat(256);
    let tar = Raw::default()
        .pax(T::XHeader, &[("path", wide.as_bytes())])
        .entry(T::Regular, b"x", b"", b"")
        .end();
    assert!(refusal(&tar).contains("component of 256 bytes"));
}

#[test]
fn names_and_link_targets_with_control_characters_are_refused() {
    for bad in [
        "evil\nname",
        "tab\there",
        "esc\x1b[31m",
        "del\x7f",
        "cr\r",
        "csi\u{9b}31m",
    ] {
        let tar = raw_tar(&[(bad, T::Regular, b"x", "")]);
        let e = refusal(&tar);
        assert!(
            e.contains("names may not contain control characters"),
            "{e}"
        );
        let tar = raw_tar(&[("link", T::Symlink, b"", bad)]);
        let e = refusal(&tar);
        assert!(e.contains("symlink target"), "{e}");
        assert!(e.contains("control character"), "{e}");
    }
    let tar = raw_tar(&[("caf\u{e9}/ok name", T::Regular, b"x", "")]);
    let (_d, r) = try_unpack(&tar);
    r.unwrap();
    let tar = raw_tar(&[("replacement-\u{fffd}", T::Regular, b"x", "")]);
    let (_d, r) = try_unpack(&tar);
    r.unwrap();
    let mut tar = raw_tar(&[("bad-\u{e9}", T::Regular, b"x", "")]);
    // Turn the é's lead byte into a lone continuation byte: not UTF-8.
    let at = tar.iter().position(|b| *b == 0xc3).unwrap();
    tar[at] = 0x80;
    let mut h = tar::Header::from_byte_slice(&tar[..512]).clone();
    h.set_cksum();
    tar[..512].copy_from_slice(h.as_bytes());
    assert!(refusal(&tar).contains("is not UTF-8"));
}

#[test]
fn git_archive_tarballs_with_a_pax_global_header_are_accepted() {
    let repo = tempfile::tempdir().unwrap();
    let git = |args: &[&str]| {
        let out = std::process::Command::new("git")
            .args(["-c", "user.name=t", "-c", "user.email=t@example.com"])
            .args(args)
            .current_dir(repo.path())
            .output()
            .expect("git runs");
        assert!(out.status.success(), "git {args:?}: {out:?}");
        out.stdout
    };
    git(&["init", "-q"]);
    fs::create_dir(repo.path().join("bin")).unwrap();
    fs::write(repo.path().join("bin/app"), "#!/bin/sh\necho hi\n").unwrap();
    fs::set_permissions(
        repo.path().join("bin/app"),
        fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    std::os::unix::fs::symlink("bin/app", repo.path().join("run")).unwrap();
    git(&["add", "."]);
    git(&["commit", "-q", "-m", "release"]);
    for format in ["tar", "tar.gz"] {
        let tar = git(&["archive", &format!("--format={format}"), "HEAD"]);
        if format == "tar" {
            // The first header is the global one holding the commit id.
            assert_eq!(tar[156], b'g', "git archive writes a PAX global header");
        }
        let (dir, r) = try_unpack(&tar);
        assert_eq!(r.unwrap().files, 1, "{format}");
        let release = dir.path().join("release");
        assert_eq!(
            fs::read(release.join("run")).unwrap(),
            b"#!/bin/sh\necho hi\n"
        );
        let mode = fs::metadata(release.join("bin/app")).unwrap().permissions();
        assert_eq!(mode.mode() & 0o111, 0o111, "still executable");
    }
}

#[test]
fn global_headers_that_would_rename_later_entries_are_refused() {
    for key in ["path", "linkpath", "size", "GNU.sparse.map"] {
        let tar = Raw::default()
            .pax(T::XGlobalHeader, &[("comment", b"abc"), (key, b"1")])
            .entry(T::Regular, b"f", b"", b"")
            .end();
        let e = refusal(&tar);
        assert!(
            e.contains(&format!("sets \"{key}\" for every later entry")),
            "{e}"
        );
    }
}

#[test]
fn ambiguous_or_dangling_extensions_are_refused() {
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (
            Raw::default()
                .gnu(T::GNULongName, b"a")
                .gnu(T::GNULongName, b"b")
                .entry(T::Regular, b"f", b"", b"")
                .end(),
            "follows another one for the same entry",
        ),
        (
            Raw::default()
                .gnu(T::GNULongName, b"a")
                .pax(T::XHeader, &[("path", b"b")])
                .entry(T::Regular, b"f", b"", b"")
                .end(),
            "both a GNU long name and a PAX path",
        ),
        (
            Raw::default()
                .pax(T::XHeader, &[("path", b"a"), ("path", b"b")])
                .entry(T::Regular, b"f", b"", b"")
                .end(),
            "gives \"path\" twice",
        ),
        (
            Raw::default()
                .pax(T::XHeader, &[("size", b"5")])
                .entry(T::Regular, b"f", b"abc", b"")
                .end(),
            "PAX size 5 differs from its header's 3",
        ),
        (
            Raw::default()
                .pax(T::XHeader, &[("GNU.sparse.major", b"1")])
                .entry(T::Regular, b"f", b"", b"")
                .end(),
            "sparse files are not allowed",
        ),
        (
            Raw::default().gnu(T::GNULongName, b"a").end(),
            "no entry follows",
        ),
        (
            {
                let mut short = Raw::default().header(T::XHeader, b"pax", 100, b"");
                short.0.extend_from_slice(&[b'9'; 10]);
                short.0
            },
            "the archive ends after 10 of its 100 bytes",
        ),
    ];
    for (tar, want) in cases {
        let e = refusal(&tar);
        assert!(e.contains(want), "{want}: {e}");
    }
    let tar = Raw::default()
        .pax(T::XHeader, &[("size", b"3"), ("mtime", b"1.5")])
        .entry(T::Regular, b"f", b"abc", b"")
        .end();
    let (_d, r) = try_unpack(&tar);
    assert_eq!(r.unwrap().bytes, 3);
}

#[test]
fn a_symlink_through_an_earlier_symlink_that_resolves_outside_is_refused() {
    // Each target, counted alone from where its link sits, stays inside.
    for entries in [
        vec![
            ("d/", T::Directory, &b""[..], ""),
            ("d/s", T::Symlink, b"", ".."),
            ("d/t", T::Symlink, b"", "s/../etc/passwd"),
        ],
        vec![
            ("d/up", T::Symlink, b"", ".."),
            ("d/tmp", T::Symlink, b"", "up/../../tmp"),
        ],
        // The same with the links in the other order.
        vec![
            ("d/tmp", T::Symlink, b"", "up/../../tmp"),
            ("d/up", T::Symlink, b"", ".."),
        ],
    ] {
        let tar = raw_tar(&entries);
        let (dir, r) = try_unpack(&tar);
        let e = r.unwrap_err().to_string();
        assert!(
            e.contains("resolves outside the release through the archive's symlink \"d/"),
            "{e}"
        );
        // No link was put on disk, not even the harmless one.
        assert_eq!(symlinks_under(dir.path()), Vec::<PathBuf>::new());
    }
}

#[test]
fn nothing_is_written_through_a_symlink_of_the_archive() {
    let cases: Vec<(Vec<Plain<'_>>, &str)> = vec![
        (
            vec![
                ("sub/", T::Directory, b"", ""),
                ("l", T::Symlink, b"", "sub"),
                ("l/x", T::Regular, b"x", ""),
            ],
            "inside the symlink \"l\"",
        ),
        (
            vec![
                ("l", T::Symlink, b"", "sub"),
                ("l/d/", T::Directory, b"", ""),
            ],
            "inside the symlink \"l\"",
        ),
        (
            vec![("l", T::Symlink, b"", "sub"), ("l/y", T::Symlink, b"", "z")],
            "inside the symlink \"l\"",
        ),
        (
            vec![("a/x", T::Regular, b"x", ""), ("a", T::Symlink, b"", "..")],
            "a symlink where the archive already made a directory",
        ),
        (
            vec![("a/x", T::Symlink, b"", "y"), ("a", T::Symlink, b"", "b")],
            "a symlink where the archive already made a directory",
        ),
        (
            vec![("a/x", T::Regular, b"x", ""), ("a", T::Regular, b"", "")],
            "a file where the archive already made a directory",
        ),
        (
            vec![("d/", T::Directory, b"", ""), ("d", T::Symlink, b"", "..")],
            "twice",
        ),
    ];
    for (entries, want) in cases {
        let (dir, r) = try_unpack(&raw_tar(&entries));
        let e = r.unwrap_err().to_string();
        assert!(e.contains(want), "{want}: {e}");
        assert_eq!(symlinks_under(dir.path()), Vec::<PathBuf>::new());
        assert!(!dir.path().join("release/sub/x").exists());
    }
}

#[test]
fn directories_and_symlinks_carrying_data_are_refused() {
    let e = refusal(&raw_tar(&[("d/", T::Directory, b"junk", "")]));
    assert!(e.contains("is a directory carrying 4 bytes of data"), "{e}");
    let e = refusal(&raw_tar(&[("l", T::Symlink, b"junk", "x")]));
    assert!(e.contains("is a symlink carrying 4 bytes of data"), "{e}");
    let e = refusal(&raw_tar(&[("./", T::Regular, b"x", "")]));
    assert!(e.contains("names the release root itself"), "{e}");
}

#[test]
fn error_messages_escape_and_cut_what_the_archive_says() {
    assert_eq!(shown(b"a\nb\x1b"), r#""a\nb\u{1b}""#);
    let long = shown(&[b'x'; 5000]);
    assert!(long.ends_with("\"… (5000 bytes)"), "{long}");
    assert!(long.len() < 130);
    let e = ExtractError::Corrupt(io::Error::other(format!("bad {}\nline", "y".repeat(1000))));
    let e = e.to_string();
    assert!(!e.contains('\n') && e.len() < 340, "{e}");
}

#[test]
fn the_names_of_one_archive_are_bounded_in_total() {
    // Symlinks, so nothing but their names and targets is kept until the
    // end: 9,000 of 3,770 + 3,764 bytes pass 64 MiB, within max_entries.
    let long = |c: &str| vec![c.repeat(250); 15].join("/");
    let (parent, target) = (long("p"), long("q"));
    let n: usize = std::env::var("N")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(9000);
    let mut raw = Raw::default();
    for i in 0..n {
        raw = raw
            .gnu(T::GNULongName, format!("{parent}/l{i}").as_bytes())
            .gnu(T::GNULongLink, target.as_bytes())
            .entry(T::Symlink, b"x", b"", b"");
    }
    let tar = raw.end();
    let dir = tempfile::tempdir().unwrap();
    let limits = Limits {
        max_bytes: 1 << 20,
        max_entries: 1_000_000,
    };
    let e = unpack_reader(&tar[..], &dir.path().join("release"), limits)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("brings the archive's names to more than 67108864 bytes"),
        "{e}"
    );
}
