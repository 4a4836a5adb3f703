//! The controller config: loading, bounds, database targets and the files it names.

use super::*;

#[test]
fn unknown_key_names_file_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("controller.toml");
    std::fs::write(
        &path,
        "listen = \"127.0.0.1:1\"\ndata_dir = \"d\"\nlisten_port = 3\n[tls]\nca_cert=\"a\"\nca_key=\"b\"\ncert=\"c\"\nkey=\"d\"\n[releases]\ntrusted_keys=[]\n",
    )
    .unwrap();
    let e = Config::load(&path).unwrap_err().to_string();
    assert!(e.contains("controller.toml"), "{e}");
    assert!(e.contains("unknown field `listen_port`"), "{e}");
}

#[test]
fn relative_paths_resolve_beside_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(
        &path,
        "listen = \"127.0.0.1:1\"\ndata_dir = \"d\"\nagent_cert_ttl = \"1h\"\n[tls]\nca_cert=\"a\"\nca_key=\"b\"\ncert=\"c\"\nkey=\"/k\"\n[releases]\ntrusted_keys=[\"r.pub\"]\n",
    )
    .unwrap();
    let c = Config::load(&path).unwrap();
    assert_eq!(c.data_dir, dir.path().join("d"));
    assert_eq!(c.tls.key, PathBuf::from("/k"));
    assert_eq!(c.releases.trusted_keys, vec![dir.path().join("r.pub")]);
    assert_eq!(c.agent_cert_ttl, Duration::from_secs(3600));
}

#[test]
fn a_relative_config_path_gives_absolute_paths_beside_the_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("controller.toml"),
        "listen = \"127.0.0.1:1\"\ndata_dir = \"d\"\n[tls]\nca_cert=\"a\"\nca_key=\"b\"\ncert=\"c\"\nkey=\"k\"\n[releases]\ntrusted_keys=[\"r.pub\"]\n",
    )
    .unwrap();
    // The file named relative to the working directory (`..` up to the
    // root and down again), as `--config controller.toml` from a
    // service's directory names it.
    let up: PathBuf = std::env::current_dir()
        .unwrap()
        .components()
        .skip(1)
        .map(|_| "..")
        .collect();
    let rel = up.join(
        dir.path()
            .strip_prefix("/")
            .unwrap()
            .join("controller.toml"),
    );
    assert!(rel.is_relative());
    let c = Config::load(&rel).unwrap();
    let beside = |p: &Path| {
        assert!(p.is_absolute(), "{p:?}");
        std::fs::canonicalize(p.parent().unwrap()).unwrap()
            == std::fs::canonicalize(dir.path()).unwrap()
    };
    assert!(beside(&c.data_dir) && c.data_dir.ends_with("d"));
    assert!(beside(&c.tls.key) && beside(&c.tls.ca_cert));
    assert!(beside(&c.releases.trusted_keys[0]));
    // With no directory part at all, the working directory made absolute.
    let bare = cutover_core::fsutil::config_dir(Path::new("controller.toml")).unwrap();
    assert_eq!(bare, std::env::current_dir().unwrap());
}

#[test]
fn durations_and_counts_outside_their_bounds_are_refused_naming_key_and_bound() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("controller.toml");
    for (extra, releases, want) in [
        (
            "agent_cert_ttl = \"18446744073709551615s\"",
            "",
            "agent_cert_ttl = \"18446744073709551615s\": must be between 3s and 8784h",
        ),
        (
            "agent_cert_ttl = \"1s\"",
            "",
            "agent_cert_ttl = \"1s\": must be between 3s",
        ),
        (
            "fetch_rate_limit = 0",
            "",
            "fetch_rate_limit = 0: must be between 1024 and",
        ),
        (
            "",
            "signature_threshold = 0",
            "releases.signature_threshold = 0: must be between 1 and 64",
        ),
        ("", "signature_threshold = 18446744073709551615", "line"),
        (
            "shutdown_grace = \"0s\"",
            "",
            "shutdown_grace = \"0s\": must be between 1s and 10m",
        ),
        (
            "shutdown_grace = \"1h\"",
            "",
            "shutdown_grace = \"1h\": must be between 1s and 10m",
        ),
    ] {
        std::fs::write(
            &path,
            format!("listen = \"127.0.0.1:1\"\ndata_dir = \"d\"\n{extra}\n[tls]\nca_cert=\"a\"\nca_key=\"b\"\ncert=\"c\"\nkey=\"d\"\n[releases]\ntrusted_keys=[]\n{releases}\n"),
        )
        .unwrap();
        let e = Config::load(&path).unwrap_err().to_string();
        assert!(
            e.contains("controller.toml") && e.contains(want),
            "{want}: {e}"
        );
    }
}

#[test]
fn database_targets_are_bounded_and_each_bad_value_is_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("controller.toml");
    let base = "listen = \"127.0.0.1:1\"\ndata_dir = \"d\"\n[tls]\nca_cert=\"a\"\nca_key=\"b\"\ncert=\"c\"\nkey=\"d\"\n[releases]\ntrusted_keys=[]\n";
    let url = "url = \"postgresql://app@127.0.0.1:5432/billing\"";
    std::fs::write(
        &path,
        format!("{base}[databases.billing]\n{url}\npassword_file = \"pw\"\n"),
    )
    .unwrap();
    let c = Config::load(&path).unwrap();
    let db = &c.databases["billing"];
    assert!(db.transactional_ddl);
    assert_eq!(db.lock_timeout, Duration::from_secs(5));
    assert_eq!(db.lock_retries, 3);
    assert_eq!(db.statement_timeout, None);
    assert_eq!(db.sslmode, SslMode::Disable);
    assert_eq!(
        db.password_file.as_deref(),
        Some(dir.path().join("pw").as_path())
    );
    for (table, want) in [
        (
            "lock_timeout = \"1ms\"",
            "databases.billing.lock_timeout = \"1ms\": must be between 10ms and 10m",
        ),
        (
            "lock_timeout = \"1h\"",
            "databases.billing.lock_timeout = \"1h\": must be between",
        ),
        (
            "statement_timeout = \"1ms\"",
            "databases.billing.statement_timeout = \"1ms\": must be between 100ms and 24h",
        ),
        (
            "lock_retries = 11",
            "databases.billing.lock_retries = 11: must be between 0 and 10",
        ),
        (
            "sslmode = \"require\"",
            "databases.billing.sslmode: TLS needs databases.billing.ca_file",
        ),
        ("sslmode = \"prefer\"", "unknown variant `prefer`"),
        (
            "transactional_dll = false",
            "unknown field `transactional_dll`",
        ),
    ] {
        std::fs::write(
            &path,
            format!("{base}[databases.billing]\n{url}\n{table}\n"),
        )
        .unwrap();
        let e = Config::load(&path).unwrap_err().to_string();
        assert!(
            e.contains("controller.toml") && e.contains(want),
            "{want}: {e}"
        );
        assert_eq!(e.lines().count(), 1, "{e}");
    }
    // A url carrying a password is refused without quoting it.
    for bad in [
        "postgresql://app:hunter2@db:notaport/x",
        "postgresql://app:hunter2@127.0.0.1/billing",
        "host=db password=hunter2",
    ] {
        std::fs::write(
            &path,
            format!("{base}[databases.billing]\nurl = \"{bad}\"\n"),
        )
        .unwrap();
        let e = Config::load(&path).unwrap_err().to_string();
        assert!(
            e.contains("databases.billing.url") && !e.contains("hunter2"),
            "{e}"
        );
        assert_eq!(e.lines().count(), 1, "{e}");
    }
    std::fs::write(&path, format!("{base}[databases.\"Bad Name\"]\n{url}\n")).unwrap();
    assert!(Config::load(&path)
        .unwrap_err()
        .to_string()
        .contains("[databases."));
}

#[test]
fn a_database_url_shows_in_debug_as_its_address_alone() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("controller.toml");
    std::fs::write(&path, "listen = \"127.0.0.1:1\"\ndata_dir = \"d\"\n[tls]\nca_cert=\"a\"\nca_key=\"b\"\ncert=\"c\"\nkey=\"d\"\n[releases]\ntrusted_keys=[]\n[databases.billing]\nurl = \"postgresql://app@127.0.0.1/billing?options=-csecret%3Dx\"\n").unwrap();
    let c = Config::load(&path).unwrap();
    let shown = format!("{c:?}");
    assert!(
        !shown.contains("secret") && shown.contains("url: \"127.0.0.1:5432\""),
        "{shown}"
    );
}

#[test]
fn a_password_file_is_checked_at_start_and_named_by_its_database() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    for f in ["a", "b", "c", "d", "pw"] {
        std::fs::write(dir.path().join(f), "x\n").unwrap();
    }
    let path = dir.path().join("controller.toml");
    std::fs::write(&path, "listen = \"127.0.0.1:1\"\ndata_dir = \"d\"\n[tls]\nca_cert=\"a\"\nca_key=\"b\"\ncert=\"c\"\nkey=\"d\"\n[releases]\ntrusted_keys=[]\n[databases.billing]\nurl = \"postgresql://app@127.0.0.1/billing\"\npassword_file = \"pw\"\n").unwrap();
    let c = Config::load(&path).unwrap();
    let pw = dir.path().join("pw");
    let check = |mode: u32, text: &str| {
        std::fs::write(&pw, text).unwrap();
        std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(mode)).unwrap();
        c.check_files(&path).map_err(|e| e.to_string())
    };
    check(0o600, "secret\n").unwrap();
    for (mode, text, want) in [
        (
            0o644,
            "secret\n",
            "databases.billing.password_file: password_file",
        ),
        (0o644, "secret\n", "chmod 600"),
        (0o600, "\n", "is empty"),
    ] {
        let e = check(mode, text).unwrap_err();
        assert!(e.contains(want) && !e.contains("secret"), "{want}: {e}");
    }
    std::fs::remove_file(&pw).unwrap();
    let e = c.check_files(&path).unwrap_err().to_string();
    assert!(e.contains("databases.billing.password_file = "), "{e}");
}

#[test]
fn the_packaged_example_is_valid() {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/controller.toml");
    Config::load(&path).unwrap();
}
