//! Tests of the `migrations/` walk on real directories: what it finds, in
//! order, and every layout it refuses.

use super::*;

fn tree() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

/// Writes `bytes` at `rel` under `dir`, making its directories.
fn put(dir: &Path, rel: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, bytes).unwrap();
    path
}

fn refused(dir: &Path) -> String {
    let e = walk(dir).unwrap_err().to_string();
    assert!(!e.contains('\n'), "{e}");
    e
}

#[test]
fn no_migrations_directory_is_no_migrations() {
    let t = tree();
    assert!(walk(t.path()).unwrap().is_empty());
}

#[test]
fn migrations_are_found_in_the_order_they_run() {
    let t = tree();
    for rel in [
        "migrations/ledger/1.0.0/expand/001_a.sql",
        "migrations/billing/1.10.0/expand/001_a.sql",
        "migrations/billing/1.2.0/contract/001_drop.sql",
        "migrations/billing/1.2.0/expand/002_b.sql",
        "migrations/billing/1.2.0/expand/001_a.sql",
        "migrations/billing/1.2.0/postdeploy/001_fill.sql",
    ] {
        put(t.path(), rel, b"SELECT 1;\n");
    }
    // An empty phase directory holds nothing to run; it is no error.
    std::fs::create_dir_all(t.path().join("migrations/ledger/1.0.0/postdeploy")).unwrap();
    let found: Vec<String> = walk(t.path())
        .unwrap()
        .iter()
        .map(|f| f.at.file())
        .collect();
    assert_eq!(
        found,
        [
            "migrations/billing/1.2.0/expand/001_a.sql",
            "migrations/billing/1.2.0/expand/002_b.sql",
            "migrations/billing/1.2.0/postdeploy/001_fill.sql",
            "migrations/billing/1.2.0/contract/001_drop.sql",
            "migrations/billing/1.10.0/expand/001_a.sql",
            "migrations/ledger/1.0.0/expand/001_a.sql",
        ]
    );
}

#[test]
fn an_unknown_phase_directory_is_refused_even_when_empty() {
    let t = tree();
    std::fs::create_dir_all(t.path().join("migrations/billing/1.2.0/expnd")).unwrap();
    let e = refused(t.path());
    assert!(
        e.ends_with("migrations/billing/1.2.0/expnd: unknown phase \"expnd\"; the phases are expand, postdeploy and contract; rename the directory or move its files"),
        "{e}"
    );
}

#[test]
fn badly_named_files_and_directories_are_refused_naming_them() {
    for (rel, expected) in [
        (
            "migrations/billing/1.2.0/expand/1-add.sql",
            "expand/1-add.sql: migration name \"1-add.sql\" is not NNN_name.sql",
        ),
        (
            "migrations/billing/1.2.0/expand/.001_a.sql.swp",
            "is not NNN_name.sql",
        ),
        (
            "migrations/billing/1.2/expand/001_a.sql",
            "migrations/billing/1.2: version \"1.2\" is not semver",
        ),
        (
            "migrations/billing/v1.2.0/expand/001_a.sql",
            "version \"v1.2.0\" is not semver",
        ),
        (
            "migrations/billing/1.2.0+b/expand/001_a.sql",
            "carries build metadata",
        ),
        (
            "migrations/bil ling/1.2.0/expand/001_a.sql",
            "migrations/bil ling: invalid database name \"bil ling\"",
        ),
    ] {
        let t = tree();
        put(t.path(), rel, b"SELECT 1;\n");
        let e = refused(t.path());
        assert!(e.contains(expected), "{rel}: {e}");
        assert!(
            e.ends_with("; rename it") || e.ends_with("; rename the file"),
            "{e}"
        );
    }
}

#[test]
fn files_and_directories_out_of_place_are_refused_with_the_layout() {
    for (rel, expected) in [
        (
            "migrations/README",
            "migrations/README: is a file where a database directory belongs; move it; migrations go in migrations/<database>/<version>/<phase>/NNN_name.sql",
        ),
        (
            "migrations/billing/001_a.sql",
            "billing/001_a.sql: is a file where a version directory belongs",
        ),
        (
            "migrations/billing/1.2.0/001_a.sql",
            "1.2.0/001_a.sql: is a file where a phase directory belongs",
        ),
        (
            "migrations/billing/1.2.0/expand/old/001_a.sql",
            "expand/old: is not a regular file; a phase directory holds only migration files",
        ),
    ] {
        let t = tree();
        put(t.path(), rel, b"SELECT 1;\n");
        let e = refused(t.path());
        assert!(e.contains(expected), "{rel}: {e}");
    }
    let t = tree();
    put(t.path(), "migrations", b"not a directory");
    assert!(refused(t.path()).ends_with("migrations: is not a directory; migrations go in migrations/<database>/<version>/<phase>/NNN_name.sql"));
}

#[test]
fn links_anywhere_in_the_tree_are_refused() {
    let t = tree();
    let real = put(t.path(), "elsewhere/001_a.sql", b"SELECT 1;\n");
    std::fs::create_dir_all(t.path().join("migrations/billing/1.2.0/expand")).unwrap();
    std::os::unix::fs::symlink(
        &real,
        t.path().join("migrations/billing/1.2.0/expand/001_a.sql"),
    )
    .unwrap();
    let e = refused(t.path());
    assert!(
        e.contains("expand/001_a.sql: a symbolic link under migrations/, refused"),
        "{e}"
    );

    let t = tree();
    put(t.path(), "elsewhere/expand/001_a.sql", b"SELECT 1;\n");
    std::fs::create_dir_all(t.path().join("migrations/billing/1.2.0")).unwrap();
    std::os::unix::fs::symlink(
        t.path().join("elsewhere/expand"),
        t.path().join("migrations/billing/1.2.0/expand"),
    )
    .unwrap();
    assert!(refused(t.path()).contains("1.2.0/expand: a symbolic link under migrations/"));

    let t = tree();
    put(
        t.path(),
        "elsewhere/billing/1.2.0/expand/001_a.sql",
        b"SELECT 1;\n",
    );
    std::os::unix::fs::symlink(t.path().join("elsewhere"), t.path().join("migrations")).unwrap();
    assert!(refused(t.path()).contains("migrations: a symbolic link under migrations/"));
}

#[test]
fn a_name_that_is_not_utf8_is_refused() {
    use std::os::unix::ffi::OsStrExt;
    let t = tree();
    let dir = t.path().join("migrations/billing/1.2.0/expand");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(std::ffi::OsStr::from_bytes(b"001_\xff.sql")), b"x").unwrap();
    assert!(refused(t.path()).contains("has a name that is not UTF-8"));
}

#[test]
fn empty_and_oversized_files_are_refused() {
    let t = tree();
    put(t.path(), "migrations/billing/1.2.0/expand/001_a.sql", b"");
    assert!(refused(t.path())
        .ends_with("001_a.sql: the migration is empty (0 bytes); write its SQL or remove it"));

    let t = tree();
    let path = put(t.path(), "migrations/billing/1.2.0/expand/001_a.sql", b"");
    // Sparse: no disk is used.
    std::fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(MAX_MIGRATION_BYTES + 1)
        .unwrap();
    assert!(refused(t.path()).ends_with(
        "001_a.sql: 16777217 bytes, more than the 16777216 one migration may have; split it"
    ));

    // Sixty-five of the largest files: more than 1 GiB in all.
    let t = tree();
    for i in 0..65 {
        let path = put(
            t.path(),
            &format!("migrations/billing/1.2.0/expand/{i:03}_a.sql"),
            b"",
        );
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(MAX_MIGRATION_BYTES)
            .unwrap();
    }
    assert!(refused(t.path())
        .contains("the migrations hold more than the 1073741824 bytes a release may carry in all"));
}

#[test]
fn the_count_of_files_and_entries_is_bounded() {
    let t = tree();
    let dir = t.path().join("migrations/d/1.0.0/expand");
    std::fs::create_dir_all(&dir).unwrap();
    for i in 0..=MAX_MIGRATIONS {
        std::fs::write(dir.join(format!("{i:05}_a.sql")), b"x").unwrap();
    }
    let e = refused(t.path());
    assert!(
        e.contains("more than 4096 migration files; a release carries at most 4096"),
        "{e}"
    );

    let t = tree();
    let dir = t.path().join("migrations/d/1.0.0/expand");
    std::fs::create_dir_all(&dir).unwrap();
    for i in 0..=MAX_ENTRIES {
        std::fs::write(dir.join(format!("{i:05}_a.sql")), b"x").unwrap();
    }
    let e = refused(t.path());
    assert!(
        e.contains("more than 16384 files and directories under migrations/"),
        "{e}"
    );
}

#[test]
fn a_file_the_manifest_does_not_pin_is_refused_naming_it() {
    let t = tree();
    let sql = b"SELECT 1;\n";
    put(t.path(), "migrations/billing/1.0.0/expand/001_a.sql", sql);
    let manifest = Manifest::parse(&format!(
        "version = \"1.0.0\"\ncreated = 2026-01-01T00:00:00Z\nexpires = 2036-01-01T00:00:00Z\n\
         [[services]]\nname = \"api\"\nservice_version = \"1\"\ndatabases = [\"billing\"]\n\
         tarball = {{ sha256 = \"{}\", size = 1, file = \"api.tar.gz\" }}\n\
         [[migrations]]\ndatabase = \"billing\"\nversion = \"1.0.0\"\nphase = \"expand\"\nname = \"001_a.sql\"\n\
         sha256 = \"{}\"\nsize = {}\nfile = \"migrations/billing/1.0.0/expand/001_a.sql\"\n",
        cutover_core::Sha256Digest::of(b"x"),
        cutover_core::Sha256Digest::of(sql),
        sql.len()
    ))
    .unwrap();
    check_pinned(t.path(), &manifest).unwrap();
    put(t.path(), "migrations/billing/1.0.0/expand/002_b.sql", sql);
    let e = check_pinned(t.path(), &manifest).unwrap_err().to_string();
    assert!(
        e.ends_with("migrations/billing/1.0.0/expand/002_b.sql: not pinned by the manifest of release 1.0.0, and a release carries only what it pins: pin it (`cutover release build` pins every file of its source tree's migrations/) or remove it"),
        "{e}"
    );
}
