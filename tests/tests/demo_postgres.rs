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

    // The same database a second time: not empty, refused, nothing touched.
    let again = demo(&tmp.path().join("again"), &pg.url, Some(&pg.password_file));
    let (_, stderr) = text(&again);
    assert_eq!(again.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("already has a migration ledger")
            && stderr.contains("scripts/start-postgres"),
        "{stderr}"
    );
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
            && stderr.contains("start a throwaway one with scripts/start-postgres"),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
}

#[test]
fn a_url_the_controller_refuses_or_a_missing_password_file_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    // The controller refuses a password in the URL at start: the demo
    // gives its reason rather than waiting for it.
    let out = demo(
        &tmp.path().join("demo"),
        "postgresql://cutover:hunter2@127.0.0.1:1/shop",
        None,
    );
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("the controller exited") && stderr.contains("password"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("hunter2"),
        "the password is never shown: {stderr}"
    );

    let out = demo(
        &tmp.path().join("demo2"),
        "postgresql://cutover@127.0.0.1:1/shop",
        Some(&tmp.path().join("no-such-file")),
    );
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--postgres-password-file"), "{stderr}");
    assert!(
        !tmp.path().join("demo2").exists(),
        "checked before anything started"
    );
    for bad in ["", "postgresql://a@b/c\nd"] {
        let out = demo(&tmp.path().join("demo3"), bad, None);
        assert_eq!(out.status.code(), Some(2), "{bad:?}: {:?}", text(&out));
    }
}
