//! A migration target's connection: an unreachable database named in one
//! line without its password, a password file others can read refused,
//! TLS verified against the configured CA, and a session a file changed
//! never reaching the ledger or the next file.

use super::*;

#[test]
fn an_unreachable_database_is_one_line_naming_it_without_its_password() {
    let port = cutover_tests::free_port();
    let mut f = Fleet::new();
    let password = f.path("password");
    std::fs::write(&password, "hunter2secret\n").unwrap();
    std::fs::set_permissions(
        &password,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    f.controller_tables = format!(
        "\n[databases.billing]\nurl = \"postgresql://cutover@127.0.0.1:{port}/billing\"\npassword_file = \"{}\"\n",
        password.display()
    );
    f.start_controller();
    release(&f, "1.0.0", &[("1.0.0/expand/001_orders.sql", ORDERS)]);
    // A password file others can read is refused before any connection.
    std::fs::set_permissions(
        &password,
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .unwrap();
    let open = f.cli(&["migrate", "status", "--version", "1.0.0"]);
    assert_eq!(open.code, 1, "{open:?}");
    assert!(
        open.stderr
            .contains("is open to others (mode 644); make it private with `chmod 600")
            && !open.stderr.contains("hunter2secret"),
        "{open:?}"
    );
    std::fs::set_permissions(
        &password,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    for args in [
        vec!["migrate", "status", "--version", "1.0.0"],
        vec![
            "migrate",
            "--phase",
            "expand",
            "--version",
            "1.0.0",
            "--yes",
        ],
    ] {
        let run = f.cli(&args);
        assert_eq!(run.code, 1, "{run:?}");
        let err = run.stderr.trim();
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.contains(&format!(
                "database \"billing\" (127.0.0.1:{port}): cannot connect"
            )),
            "{err}"
        );
        assert!(!err.contains("hunter2secret"), "{err}");
    }
    assert!(!f.controller_log().contains("hunter2secret"));
}

#[test]
fn tls_to_the_database_is_verified_against_its_ca_file() {
    let mut f = Fleet::new();
    // The fleet's own CA signed a certificate for 127.0.0.1: the server's.
    let pg = Postgres::start_tls(
        "billing",
        &f.pki.join("controller.pem"),
        &f.pki.join("controller-key.pem"),
    );
    let other = f.path("other-pki");
    f.cli(&[
        "pki",
        "init",
        "--dir",
        other.to_str().unwrap(),
        "--controller-host",
        "127.0.0.1",
    ])
    .ok();
    let tls =
        |ca: &std::path::Path| format!("sslmode = \"verify-full\"\nca_file = \"{}\"", ca.display());
    f.controller_tables = format!(
        "{}{}{}",
        pg.config("billing", &tls(&f.pki.join("ca.pem"))),
        pg.config("stranger", &tls(&other.join("ca.pem"))),
        pg.config("plain", ""),
    );
    f.start_controller();
    release(&f, "1.0.0", &[("1.0.0/expand/001_orders.sql", ORDERS)]);
    // The server takes TCP connections over TLS only: this one was.
    migrate(&f, "expand", "1.0.0", &["--yes"]).ok();
    assert_eq!(pg.sql("SELECT count(*) FROM orders"), "2");
    // A server whose certificate another CA signed is refused.
    let run = f.cli(&[
        "migrate",
        "status",
        "--version",
        "1.0.0",
        "--database",
        "stranger",
    ]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr.contains(&format!(
            "database \"stranger\" (127.0.0.1:{}): cannot connect",
            pg.port
        )),
        "{run:?}"
    );
    assert!(run.stderr.to_lowercase().contains("certificate"), "{run:?}");
    // And without TLS the server itself refuses.
    let run = f.cli(&[
        "migrate",
        "status",
        "--version",
        "1.0.0",
        "--database",
        "plain",
    ]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("database \"plain\""), "{run:?}");
}

#[test]
fn what_a_file_sets_on_its_session_never_reaches_the_ledger_or_the_next_file() {
    let w = world("");
    let (f, pg) = (&w.f, &w.pg);
    // Each file leaves the session's search path where the ledger is not
    // found and where the next file's unqualified table could not go.
    let away = "SET search_path = pg_catalog;\n";
    release(
        f,
        "1.0.0",
        &[
            (
                "1.0.0/expand/001_in_tx.sql",
                &format!("{away}CREATE TABLE public.a (x int);\n"),
            ),
            (
                "1.0.0/expand/002_outside.sql",
                &format!("-- cutover:no-transaction\n{away}CREATE TABLE public.b (x int);\n"),
            ),
            ("1.0.0/expand/003_next.sql", "CREATE TABLE c (x int);\n"),
        ],
    );
    migrate(f, "expand", "1.0.0", &["--yes"]).ok();
    assert_eq!(
        pg.sql("SELECT string_agg(name || ' ' || state, ', ' ORDER BY id) FROM public._migrations"),
        "001_in_tx.sql applied, 002_outside.sql applied, 003_next.sql applied"
    );
    assert_eq!(
        pg.sql("SELECT to_regclass('public.c') IS NOT NULL"),
        "t",
        "the next file ran with the session's own search path"
    );
}
