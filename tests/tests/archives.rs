//! Hostile and unusual tarballs through the real controller and agent:
//! header extensions that claim gigabytes, a symlink that leaves the
//! release through another one, a name holding a newline, and a real
//! `git archive` tarball with its PAX global header.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use cutover_cli::bundle::{self, Floor};
use cutover_tests::sample::Svc;
use cutover_tests::{bin, Fleet};

fn world() -> Fleet {
    let mut f = Fleet::new();
    f.assign_ports(&["h1"], &["api"]);
    f.start_controller();
    f.start_agent("h1", "500ms");
    f.wait_online("h1");
    f.apply_fleet_text(&cutover_tests::sample::sample_fleet(&["h1"], &["api"], ""));
    f.sample_release("1.0.0", &[Svc::new("api", "1.0")], Floor::default());
    f.upgrade(&["api"], "1.0.0", &[]).ok();
    f
}

/// One ustar header written by hand (`size` may lie), then `data` padded.
fn header(out: &mut Vec<u8>, name: &[u8], kind: u8, size: u64, link: &str, data: &[u8]) {
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name);
    h[100..107].copy_from_slice(b"0000644");
    h[108..115].copy_from_slice(b"0000000");
    h[116..123].copy_from_slice(b"0000000");
    h[124..135].copy_from_slice(format!("{size:011o}").as_bytes());
    h[136..147].copy_from_slice(b"00000000000");
    h[156] = kind;
    h[157..157 + link.len()].copy_from_slice(link.as_bytes());
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|b| u32::from(*b)).sum();
    h[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
    out.extend_from_slice(&h);
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512, 0);
}

fn end(mut out: Vec<u8>) -> Vec<u8> {
    out.resize(out.len() + 1024, 0);
    out
}

#[test]
fn hostile_archives_are_refused_by_the_agent_in_one_short_line_and_it_stays_online() {
    let f = world();
    let pid = f.service_pid("h1", "api");
    let outside = f.path("evil");
    // The shape: a 2 MB tarball whose GNU long name claims 2 GiB.
    let mut long_name = Vec::new();
    header(
        &mut long_name,
        b"././@LongLink",
        b'L',
        2 << 30,
        "",
        &vec![b'a'; 2 << 20],
    );
    let mut pax = Vec::new();
    header(&mut pax, b"pax", b'x', 1 << 30, "", &vec![b'9'; 4096]);
    let mut chain = Vec::new();
    header(&mut chain, b"d/up", b'2', 0, "..", b"");
    header(&mut chain, b"d/evil", b'2', 0, "up/../../evil", b"");
    let mut newline = Vec::new();
    header(&mut newline, b"VERSION\nx", b'0', 1, "", b"1");
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (
            long_name,
            "(GNU long name): claims 2147483648 bytes, more than the 4096 allowed",
        ),
        (
            end(pax),
            "(PAX header): claims 1073741824 bytes, more than the 65536 allowed",
        ),
        (
            end(chain),
            "resolves outside the release through the archive's symlink \"d/up\"",
        ),
        (
            end(newline),
            "entry \"VERSION\\nx\": name holds the control character U+000A",
        ),
    ];
    for (i, (bytes, expected)) in cases.into_iter().enumerate() {
        let version = format!("1.0.{}", i + 1);
        f.raw_release(&version, "api", &bytes);
        f.upgrade(&["api"], &version, &[])
            .fails_with("ended rolled_back");
        let r = f.last_rollout();
        let e = &r["rollout"]["failure"]["evidence"];
        assert_eq!(e["gate"], "unpack", "{expected}: {e}");
        let detail = e["detail"].as_str().unwrap();
        assert!(detail.contains(expected), "{expected}: {detail}");
        assert!(
            detail.len() < 1024 && !detail.contains('\n'),
            "one short line: {detail}"
        );
        assert!(!outside.exists(), "{expected}: wrote outside");
        assert!(f.is_online("h1"), "{expected}: h1 went offline");
        assert_eq!(f.served_version("h1", "api").as_deref(), Some("1.0"));
        assert_eq!(f.service_pid("h1", "api"), pid);
        let journal = f.agent_dir("h1").join("services/api/journal.json");
        let size = std::fs::metadata(&journal).unwrap().len();
        assert!(size < 64 * 1024, "{expected}: journal.json is {size} bytes");
    }
    let log = f.agent_log("h1");
    let longest = log.lines().map(str::len).max().unwrap_or(0);
    assert!(
        longest < 16 * 1024,
        "the agent logged a {longest}-byte line"
    );
}

fn git(repo: &Path, args: &[&str]) -> Vec<u8> {
    let out = Command::new("git")
        .args(["-c", "user.name=t", "-c", "user.email=t@example.com"])
        .args(args)
        .current_dir(repo)
        .output()
        .expect("git is needed by this test");
    assert!(out.status.success(), "git {args:?}: {out:?}");
    out.stdout
}

#[test]
fn a_git_archive_tarball_with_its_pax_global_header_installs() {
    let f = world();
    let repo = tempfile::tempdir().unwrap();
    let binary = std::fs::read(bin("cutover-sample")).expect("sample binary");
    for file in bundle::sample_files(&binary, "1.1", true) {
        let path = repo.path().join(&file.path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &file.bytes).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(file.mode)).unwrap();
    }
    git(repo.path(), &["init", "-q"]);
    git(repo.path(), &["add", "."]);
    git(repo.path(), &["commit", "-q", "-m", "1.1"]);
    let tarball = git(repo.path(), &["archive", "--format=tar.gz", "HEAD"]);
    f.raw_release("1.1.0", "api", &tarball);
    f.upgrade(&["api"], "1.1.0", &[]).ok();
    assert_eq!(f.served_version("h1", "api").as_deref(), Some("1.1"));
}
