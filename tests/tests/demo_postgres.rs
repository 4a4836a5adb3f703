//! `cutover demo --postgres`, the whole platform upgrade, against the
//! PostgreSQL `scripts/start-postgres` starts (the script a new operator
//! runs): every step of the runbook in order, the gates refusing, and the
//! database left in release C's shape with every price moved once. Without
//! a reachable PostgreSQL, or with a database that is not empty, it exits
//! 1 naming the script; a URL the controller refuses is named too.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use cutover_tests::bin;

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../scripts/start-postgres")
        .canonicalize()
        .expect("scripts/start-postgres")
}

/// A cluster `scripts/start-postgres` started, stopped with `--stop` on drop.
struct Started {
    dir: PathBuf,
    url: String,
    password_file: PathBuf,
    port: String,
}

impl Started {
    fn new(parent: &Path) -> Started {
        let dir = parent.join("pg");
        let out = Command::new(script())
            .arg(&dir)
            .output()
            .expect("run the script");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // The line it prints is the command to run.
        let demo = text
            .lines()
            .find(|l| l.trim_start().starts_with("cutover demo --postgres "))
            .unwrap_or_else(|| panic!("no demo command printed: {text}"));
        let words: Vec<&str> = demo.split_whitespace().collect();
        let url = words[3].to_string();
        let password_file = PathBuf::from(words[5]);
        let port = url
            .rsplit_once(':')
            .and_then(|(_, p)| p.split_once('/'))
            .map(|(p, _)| p.to_string())
            .expect("a port in the url");
        Started {
            dir,
            url,
            password_file,
            port,
        }
    }

    /// One value from `sql` on the shop database, as its owner.
    fn sql(&self, sql: &str) -> String {
        let out = Command::new("psql")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port,
                "-U",
                "cutover",
                "-d",
                "shop",
            ])
            .args(["-tAc", sql])
            .env(
                "PGPASSWORD",
                std::fs::read_to_string(&self.password_file).unwrap().trim(),
            )
            .output()
            .expect("psql");
        assert!(out.status.success(), "{sql}: {out:?}");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

impl Drop for Started {
    fn drop(&mut self) {
        let _ = Command::new(script()).arg("--stop").arg(&self.dir).output();
    }
}

fn demo(work: &Path, url: &str, password_file: Option<&Path>) -> Output {
    let mut c = Command::new(bin("cutover"));
    c.args(["demo", "--dir", work.to_str().unwrap(), "--postgres", url]);
    if let Some(p) = password_file {
        c.arg("--postgres-password-file").arg(p);
    }
    c.output().expect("run the demo")
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_platform_demo_takes_the_shop_from_a_to_c_through_every_gate() {
    let tmp = tempfile::tempdir().unwrap();
    let pg = Started::new(tmp.path());
    let out = demo(&tmp.path().join("demo"), &pg.url, Some(&pg.password_file));
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    // The runbook's steps, in order.
    let mut at = 0;
    for step in [
        "$ cutover migrate --phase expand --version 1.0.0 --yes",
        "$ cutover upgrade shop --version 1.0.0 --yes --wait",
        "$ cutover status",
        "$ cutover migrate status --version 2.0.0",
        "$ cutover migrate --phase expand --version 2.0.0 --dry-run",
        "$ cutover migrate --phase expand --version 2.0.0 --yes",
        "$ cutover plan shop --version 2.0.0",
        "$ cutover upgrade shop --version 2.0.0 --yes --wait",
        "demo: refused, as it must be: release 3.0.0 cannot be planned: data migration shop.backfill_prices must be done before an upgrade to 3.0.0",
        "a run now would move 50000 rows (dry run on edge-1; nothing changed)",
        "$ cutover data-migrate pause shop.backfill_prices",
        "demo: the run stopped after its batch: data migration shop.backfill_prices is paused",
        "$ cutover data-migrate resume shop.backfill_prices --wait",
        "shop.backfill_prices: succeeded 50000/50000 rows (100.0%)",
        "price total             29836625  29836625  ok",
        "shop.backfill_prices: verify passed",
        "$ cutover migrate --phase postdeploy --version 2.0.0 --yes",
        "$ cutover upgrade shop --version 3.0.0 --yes --wait",
        "demo: edge-1 (release C) serves a price total of 29836625 cents",
        "applied 3.0.0/contract/001_drop_doc.sql",
        "demo: edge-1 (release C, after contract) serves a price total of 29836625 cents",
        "edge-3  online  shop@3.0.0 [running, healthy]",
    ] {
        match stdout[at..].find(step) {
            Some(i) => at += i + step.len(),
            None => panic!("{step:?} missing or out of order in:\n{stdout}"),
        }
    }
    // The database is in C's shape, every price moved exactly once.
    assert_eq!(
        pg.sql("SELECT count(*) FROM information_schema.columns WHERE table_name = 'orders' AND column_name = 'doc'"),
        "0"
    );
    assert_eq!(pg.sql("SELECT count(*) FROM order_prices"), "50000");
    assert_eq!(
        pg.sql("SELECT sum(price_cents) FROM order_prices"),
        "29836625"
    );
    assert_eq!(
        pg.sql("SELECT count(*) FROM _migrations"),
        "4",
        "each migration applied once"
    );

    // The same database a second time: not empty, refused before
    // anything starts, nothing touched.
    let tables = pg.sql("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'");
    let again = demo(&tmp.path().join("again"), &pg.url, Some(&pg.password_file));
    let (_, stderr) = text(&again);
    assert_eq!(again.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "the database given holds {tables} table(s) already"
        )) && stderr.contains("scripts/start-postgres"),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(!tmp.path().join("again").exists(), "nothing started");
    assert_eq!(pg.sql("SELECT count(*) FROM _migrations"), "4");
}

#[test]
fn without_a_reachable_postgres_the_demo_exits_1_and_names_the_script() {
    let tmp = tempfile::tempdir().unwrap();
    // A loopback port nothing listens on.
    let port = cutover_tests::free_port();
    let out = demo(
        &tmp.path().join("demo"),
        &format!("postgresql://cutover@127.0.0.1:{port}/shop"),
        None,
    );
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("the demo cannot use the PostgreSQL database given")
            && stderr.contains(&format!("127.0.0.1:{port}"))
            && stderr.contains("check --postgres, --postgres-password-file")
            && stderr.contains("start a throwaway one with scripts/start-postgres"),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(
        !tmp.path().join("demo").exists(),
        "checked before anything started"
    );
}

#[test]
fn a_password_in_the_url_or_a_bad_password_file_is_refused_before_anything_is_written() {
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path().join("demo");
    for url in [
        "postgresql://cutover:hunter2@127.0.0.1:1/shop",
        "postgresql://cutover@127.0.0.1:1/shop?password=hunter2",
        "host=127.0.0.1 user=cutover password=hunter2 dbname=shop",
    ] {
        let out = demo(&work, url, None);
        let (_, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(2), "{url}: {stderr}");
        assert!(
            stderr.contains("--postgres carries a password")
                && stderr.contains("--postgres-password-file"),
            "{stderr}"
        );
        assert!(
            !stderr.contains("hunter2"),
            "the password is never shown: {stderr}"
        );
        assert!(!work.exists(), "nothing written");
    }
    use std::os::unix::fs::PermissionsExt;
    let open = tmp.path().join("open");
    std::fs::write(&open, "pw\n").unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o644)).unwrap();
    let empty = tmp.path().join("empty");
    std::fs::write(&empty, "").unwrap();
    std::fs::set_permissions(&empty, std::fs::Permissions::from_mode(0o600)).unwrap();
    let cases = [
        (
            open.clone(),
            format!(
                "others can read it (mode 644); make it private with `chmod 600 {}`",
                open.display()
            ),
        ),
        (tmp.path().to_path_buf(), "not a regular file".to_string()),
        (empty, "it is empty".to_string()),
        (tmp.path().join("no-such-file"), "No such file".to_string()),
    ];
    for (file, needle) in cases {
        let out = demo(&work, "postgresql://cutover@127.0.0.1:1/shop", Some(&file));
        let (_, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(
            stderr.contains("--postgres-password-file") && stderr.contains(&needle),
            "{needle}: {stderr}"
        );
        assert!(!work.exists(), "nothing written");
    }
    for bad in ["", "postgresql://a@b/c\nd", "postgresql://a@b/${x}"] {
        let out = demo(&work, bad, None);
        assert_eq!(out.status.code(), Some(2), "{bad:?}: {:?}", text(&out));
    }
}
