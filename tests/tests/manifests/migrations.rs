//! Releases that carry schema migrations: pinned files go in and are
//! stored under their digests like any artifact; a release directory with
//! a missing, unpinned, misplaced or badly named file under `migrations/`
//! is refused naming it, and nothing is stored; `release build` pins a
//! source tree's migrations and refuses bad layouts the same way.

use super::*;

/// The migrations of the release `with_migrations` writes.
const FILES: &[(&str, &[u8])] = &[
    (
        "migrations/billing/1.0.0/expand/001_orders.sql",
        b"CREATE TABLE orders (id bigint PRIMARY KEY);\n",
    ),
    (
        "migrations/billing/1.0.0/postdeploy/001_fill.sql",
        b"UPDATE orders SET id = id;\n",
    ),
    (
        "migrations/billing/0.9.0/contract/001_drop_old.sql",
        b"DROP TABLE IF EXISTS old_orders;\n",
    ),
];

/// Release 1.0.0 of service "db" owning database "billing", pinning and
/// holding [`FILES`].
fn with_migrations(f: &Fleet, name: &str) -> Release {
    let r = release(f, name, &[("db", "")], |t| {
        let mut t = t.replace(
            "depends_on = []\n",
            "depends_on = []\ndatabases = [\"billing\"]\n",
        );
        for (file, bytes) in FILES {
            let parts: Vec<&str> = file.split('/').collect();
            t.push_str(&format!(
                "\n[[migrations]]\ndatabase = \"{}\"\nversion = \"{}\"\nphase = \"{}\"\nname = \"{}\"\nsha256 = \"{}\"\nsize = {}\nfile = \"{file}\"\n",
                parts[1],
                parts[2],
                parts[3],
                parts[4],
                Sha256Digest::of(bytes),
                bytes.len()
            ));
        }
        t
    });
    for (file, bytes) in FILES {
        let path = r.dir.join(file);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }
    sign(f, &r);
    r
}

fn nothing_stored(f: &Fleet) {
    assert_eq!(f.cli_json(&["release", "list"]), serde_json::json!([]));
    assert!(stored_artifacts(f).is_empty(), "{:?}", stored_artifacts(f));
    assert!(staging_is_empty(f));
}

#[test]
fn a_release_with_migrations_imports_and_stores_each_file_under_its_digest() {
    let mut f = Fleet::new();
    f.start_controller();
    let r = with_migrations(&f, "migrations");
    let out = import(&f, &r).ok();
    assert!(
        out.stdout
            .contains("imported release 1.0.0: 1 service(s), 4 artifact(s) stored"),
        "{}",
        out.stdout
    );
    for (file, bytes) in FILES {
        let stored = f
            .path("controller/artifacts")
            .join(Sha256Digest::of(bytes).to_hex());
        assert_eq!(
            std::fs::read(&stored).unwrap_or_else(|e| panic!("{file}: {e}")),
            *bytes,
            "{file}"
        );
    }
    assert_eq!(stored_artifacts(&f).len(), 4);
    // Imported again: every stored migration is verified, none re-sent.
    assert!(import(&f, &r)
        .ok()
        .stdout
        .contains("already imported (same manifest); artifacts verified (0 repaired)"));
    // A damaged stored migration is repaired like any artifact.
    let (file, bytes) = FILES[0];
    let stored = f
        .path("controller/artifacts")
        .join(Sha256Digest::of(bytes).to_hex());
    std::fs::write(&stored, b"DROP TABLE orders;\n").unwrap();
    assert!(
        import(&f, &r).ok().stdout.contains("(1 repaired)"),
        "{file}"
    );
    assert_eq!(std::fs::read(&stored).unwrap(), bytes);
}

#[test]
fn the_controller_verifies_pinned_migrations_itself() {
    let mut f = Fleet::new();
    f.start_controller();
    let r = with_migrations(&f, "raw");
    let (file, bytes) = FILES[0];
    let digest = Sha256Digest::of(bytes);
    // Not uploaded, not stored: refused by the controller, naming it.
    let e = import_raw(&f, vec![header(&r)]).unwrap_err();
    assert!(
        e.contains("InvalidArgument") && e.contains("database \"billing\": migration"),
        "{e}"
    );
    // Other bytes under the migration's pin.
    let mut chunks = vec![header(&r)];
    chunks.push(v1::ImportChunk {
        part: Some(v1::import_chunk::Part::Artifact(v1::ArtifactStart {
            sha256: digest.to_hex(),
            size: bytes.len() as u64,
        })),
    });
    let mut other = bytes.to_vec();
    other[0] ^= 1;
    chunks.push(v1::ImportChunk {
        part: Some(v1::import_chunk::Part::Data(other)),
    });
    let e = import_raw(&f, chunks).unwrap_err();
    assert!(
        e.contains(&format!(
            "release 1.0.0: database \"billing\": migration {file}"
        )) && e.contains("bytes hash to sha256"),
        "{e}"
    );
    // And through the CLI, a file edited after signing.
    std::fs::write(r.dir.join(file), b"DROP TABLE orders;\n").unwrap();
    import(&f, &r).fails_with("database \"billing\": migration");
    nothing_stored(&f);
}

#[test]
fn import_refuses_missing_unpinned_misplaced_and_badly_named_migrations() {
    let mut f = Fleet::new();
    f.start_controller();

    let r = with_migrations(&f, "missing");
    std::fs::remove_file(r.dir.join(FILES[1].0)).unwrap();
    import(&f, &r).fails_with(&format!(
        "release 1.0.0: database \"billing\": migration file {} is missing; put the file the manifest pins there",
        r.dir.join(FILES[1].0).display()
    ));

    let r = with_migrations(&f, "unpinned");
    let extra = r.dir.join("migrations/billing/1.0.0/expand/002_more.sql");
    std::fs::write(&extra, b"ALTER TABLE orders ADD note text;\n").unwrap();
    import(&f, &r).fails_with(&format!(
        "release 1.0.0: {}: not pinned by the manifest of release 1.0.0, and a release carries only what it pins: pin it (`cutover release build` pins every file of its source tree's migrations/) or remove it",
        extra.display()
    ));

    let r = with_migrations(&f, "phase");
    let phase = r.dir.join("migrations/billing/1.0.0/expnd");
    std::fs::create_dir_all(&phase).unwrap();
    std::fs::write(phase.join("001_a.sql"), b"SELECT 1;\n").unwrap();
    import(&f, &r).fails_with(&format!(
        "{}: unknown phase \"expnd\"; the phases are expand, postdeploy and contract; rename the directory or move its files",
        phase.display()
    ));

    let r = with_migrations(&f, "badname");
    let bad = r.dir.join("migrations/billing/1.0.0/expand/002-More.sql");
    std::fs::write(&bad, b"SELECT 1;\n").unwrap();
    import(&f, &r).fails_with(&format!(
        "{}: migration name \"002-More.sql\" is not NNN_name.sql",
        bad.display()
    ));

    let r = with_migrations(&f, "linked");
    let real = f.path("elsewhere.sql");
    std::fs::rename(r.dir.join(FILES[0].0), &real).unwrap();
    std::os::unix::fs::symlink(&real, r.dir.join(FILES[0].0)).unwrap();
    import(&f, &r).fails_with(
        "001_orders.sql: the migration of database \"billing\" is a symbolic link, refused",
    );

    nothing_stored(&f);
}

/// `release build` of service "api" from `src`, with `extra` arguments.
fn build(f: &Fleet, src: &Path, out: &Path, extra: &[&str]) -> cutover_tests::Run {
    let mut args = vec![
        "release",
        "build",
        src.to_str().unwrap(),
        "--version",
        "1.0.0",
        "--service",
        "api",
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    f.cli(&args)
}

#[test]
fn release_build_pins_a_trees_migrations_and_refuses_bad_layouts() {
    let mut f = Fleet::new();
    f.start_controller();
    let src = f.path("src");
    std::fs::create_dir_all(src.join("api")).unwrap();
    std::fs::write(src.join("api/VERSION"), b"1.0.0\n").unwrap();
    for (file, bytes) in FILES {
        let path = src.join(file);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }
    let out = f.path("dist");
    let run = build(&f, &src, &out, &["--databases", "api=billing"]).ok();
    // Written in the order they run.
    let wrote: Vec<&str> = run
        .stdout
        .lines()
        .filter_map(|l| l.strip_prefix("wrote "))
        .collect();
    let at = |file: &str| out.join(file).display().to_string();
    assert_eq!(
        wrote,
        [
            at("api-1.0.0.tar.gz"),
            at(FILES[2].0),
            at(FILES[0].0),
            at(FILES[1].0),
            at("release-1.0.0.toml"),
        ],
        "{}",
        run.stdout
    );
    let manifest = out.join("release-1.0.0.toml");
    let text = std::fs::read_to_string(&manifest).unwrap();
    assert!(text.contains("databases = [\"billing\"]"), "{text}");
    for (file, bytes) in FILES {
        assert_eq!(std::fs::read(out.join(file)).unwrap(), *bytes, "{file}");
        assert!(
            text.contains(&format!(
                "sha256 = \"{}\"\nsize = {}\nfile = \"{file}\"",
                Sha256Digest::of(bytes),
                bytes.len()
            )),
            "{text}"
        );
    }
    let imported = cutover_tests::sign_and_import(|a| f.cli(a), &manifest, &f.path("release.key"));
    assert!(
        imported.ok().stdout.contains("4 artifact(s) stored"),
        "imported"
    );
    for (_, bytes) in FILES {
        assert!(stored_artifacts(&f).contains(&Sha256Digest::of(bytes).to_hex()));
    }

    // No service owns the database: the flag that gives it one is named.
    let run = build(&f, &src, &f.path("dist-noowner"), &[]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(
        run.stderr.contains("a migration of database \"billing\", which no service of this release owns; give the service that uses it --databases SERVICE=billing"),
        "{run:?}"
    );
    assert!(!f.path("dist-noowner").exists());
    let run = build(
        &f,
        &src,
        &f.path("dist-cache"),
        &["--databases", "cache=billing"],
    );
    assert_eq!(run.code, 2, "{run:?}");
    assert!(
        run.stderr
            .contains("--databases cache: no --service cache in this release"),
        "{run:?}"
    );
    // DIR/migrations is the migrations tree, never a service's files.
    let run = build(&f, &src, &f.path("dist-svc"), &["--service", "migrations"]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(
        run.stderr.contains("--service migrations: DIR/migrations holds the release's migrations, so no service can be built from it"),
        "{run:?}"
    );

    // A bad layout is refused with the message import gives.
    let phase = src.join("migrations/billing/1.0.0/expnd");
    std::fs::create_dir_all(&phase).unwrap();
    build(&f, &src, &f.path("dist-phase"), &["--databases", "api=billing"]).fails_with(&format!(
        "{}: unknown phase \"expnd\"; the phases are expand, postdeploy and contract; rename the directory or move its files",
        phase.display()
    ));
    std::fs::remove_dir(&phase).unwrap();
    let later = src.join("migrations/billing/1.1.0/expand/001_next.sql");
    std::fs::create_dir_all(later.parent().unwrap()).unwrap();
    std::fs::write(&later, b"SELECT 1;\n").unwrap();
    build(&f, &src, &f.path("dist-later"), &["--databases", "api=billing"]).fails_with(
        "migration \"migrations/billing/1.1.0/expand/001_next.sql\": version 1.1.0 is above this release's 1.0.0",
    );
    assert!(!f.path("dist-later").exists());
    std::fs::remove_file(&later).unwrap();

    // A --out holding another build's migration: import would refuse it.
    let stale = out.join("migrations/billing/0.9.0/expand/001_gone.sql");
    std::fs::create_dir_all(stale.parent().unwrap()).unwrap();
    std::fs::write(&stale, b"SELECT 1;\n").unwrap();
    build(&f, &src, &out, &["--databases", "api=billing"]).fails_with(&format!(
        "{}: not pinned by the manifest of release 1.0.0",
        stale.display()
    ));
    assert!(stale.exists(), "the stale file is the operator's to remove");
}
