//! `cutover demo --postgres URL`: the whole platform upgrade of a sample
//! shop against a real PostgreSQL database, in the order an operator's
//! runbook gives it. Release A (1.0.0) keeps each order's price inside
//! `orders.doc` (JSONB); release B (2.0.0) adds `order_prices` (expand),
//! reads both shapes and writes both, and brings the data migration that
//! copies the prices across; release C (3.0.0) reads `order_prices` alone
//! and its contract drops `orders.doc`. Between the steps the demo shows
//! the gates refusing what must wait, and the shop's price total from a
//! host, the same before and after.

use std::path::{Path, PathBuf};
use std::time::Duration;

use cutover_core::manifest::migrations::{parse_version, Location};
use cutover_core::manifest::{DataMigration, Phase};

use super::{apply_fleet, publish, wait_for, Started};
use crate::bundle::{self, Floor, Migration, Service};
use crate::client::ConnectArgs;
use crate::commands::data_migrate::{self as dm, DataMigrateCommand};
use crate::commands::migrate::{self, MigrateArgs};
use crate::commands::{fleet, rollout};
use crate::error::{Error, Result};
use crate::output::Format;

/// What releases call the shop's database, and the shop service.
const DATABASE: &str = "shop";
const SERVICE: &str = "shop";
const BACKFILL: &str = "backfill_prices";
const KEY: &str = "shop.backfill_prices";
/// Orders release A starts with.
const ORDERS: u64 = 50_000;

/// The longest the backfill (run, pause, resume) may take in the demo.
const DATA_MIGRATION_LIMIT: Duration = Duration::from_secs(300);

/// The agents' own settings: data-migration progress every 250 ms.
pub(super) const AGENT_CONFIG: &str = "data_migrate_poll = \"250ms\"\n";

/// The database the demo works on, checked before anything starts.
pub(super) struct Database {
    url: String,
    password_file: Option<PathBuf>,
}

/// The longest `--postgres` taken (as the controller's `url`).
const MAX_URL: usize = 2048;

/// Whether connection string `url` carries a password, in either form.
fn carries_password(url: &str) -> bool {
    let in_userinfo = url.split_once("://").is_some_and(|(_, rest)| {
        let authority = rest.split(['/', '?']).next().unwrap_or("");
        authority
            .rsplit_once('@')
            .is_some_and(|(userinfo, _)| userinfo.contains(':'))
    });
    in_userinfo || url.to_ascii_lowercase().contains("password=")
}

impl Database {
    /// Checks what was given before anything starts: nothing of it is
    /// written anywhere unless it passes.
    pub(super) fn new(url: &str, password_file: Option<&Path>) -> Result<Database> {
        if url.is_empty() || url.len() > MAX_URL || url.chars().any(char::is_control) {
            return Err(Error::Usage(format!(
                "--postgres must be a connection string of 1 to {MAX_URL} bytes without control characters, such as postgresql://cutover@127.0.0.1:5432/shop"
            )));
        }
        if carries_password(url) {
            return Err(Error::Usage(
                "--postgres carries a password; take it out of the URL, put it alone in a file only you can read, and pass --postgres-password-file FILE".into(),
            ));
        }
        // The fleet config expands ${name} in a service's env.
        if url.contains("${") {
            return Err(Error::Usage(
                "--postgres holds \"${\", which the fleet config would expand as a variable; give a URL without it".into(),
            ));
        }
        let password_file = password_file.map(check_password_file).transpose()?;
        Ok(Database {
            url: url.to_string(),
            password_file,
        })
    }

    /// Fails unless the database answers and holds no table: the demo
    /// makes its own and must not add to, or fail halfway over, anyone
    /// else's. Asked through the sample shop's binary (the PostgreSQL
    /// client the demo has) before anything starts.
    pub(super) fn check_empty(&self, sample: &Path) -> Result<()> {
        let mut cmd = std::process::Command::new(sample);
        cmd.arg("tables")
            .env_clear()
            .env("CUTOVER_SAMPLE_DATABASE_URL", &self.url)
            .stdin(std::process::Stdio::null());
        if let Some(p) = &self.password_file {
            cmd.env("CUTOVER_SAMPLE_PASSWORD_FILE", p);
        }
        let out = cmd
            .output()
            .map_err(|e| Error::Failed(format!("cannot run {}: {e}", sample.display())))?;
        let said = |bytes: &[u8]| {
            let text = String::from_utf8_lossy(bytes);
            let line = text
                .lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("")
                .trim();
            let line = line.strip_prefix("cutover-sample tables: ").unwrap_or(line);
            crate::output::escape(line)
                .replace("CUTOVER_SAMPLE_DATABASE_URL", "--postgres")
                .replace("CUTOVER_SAMPLE_PASSWORD_FILE", "--postgres-password-file")
        };
        if !out.status.success() {
            return Err(Error::Failed(format!(
                "the demo cannot use the PostgreSQL database given: {}; or start a throwaway one with scripts/start-postgres and pass the --postgres URL and --postgres-password-file it prints",
                said(&out.stderr)
            )));
        }
        match said(&out.stdout).parse::<u64>() {
            Ok(0) => Ok(()),
            Ok(n) => Err(Error::Failed(format!(
                "the database given holds {n} table(s) already; the demo makes its own and needs an empty database (nothing was changed): give an empty one, or start a throwaway one with scripts/start-postgres"
            ))),
            Err(_) => Err(Error::Failed(format!(
                "{} tables answered {:?}, not a count",
                sample.display(),
                said(&out.stdout)
            ))),
        }
    }

    /// A TOML basic string (JSON's escapes are TOML's; the text holds
    /// no control character, which is where they differ).
    fn quoted(text: &str) -> String {
        serde_json::Value::String(text.to_string()).to_string()
    }

    fn password_file(&self) -> Option<String> {
        self.password_file
            .as_ref()
            .map(|p| Self::quoted(&p.display().to_string()))
    }

    /// The controller's `[databases.shop]`.
    pub(super) fn controller_config(&self) -> String {
        let mut t = format!(
            "\n[databases.{DATABASE}]\nurl = {}\n",
            Self::quoted(&self.url)
        );
        if let Some(p) = self.password_file() {
            t.push_str(&format!("password_file = {p}\n"));
        }
        t
    }

    /// The shop service's environment in the fleet config.
    fn service_env(&self) -> String {
        let mut t = format!(
            "\n[services.{SERVICE}.env]\nCUTOVER_SAMPLE_DATABASE_URL = {}\nCUTOVER_SAMPLE_BATCH = \"1000\"\nCUTOVER_SAMPLE_BATCH_DELAY_MS = \"100\"\n",
            Self::quoted(&self.url)
        );
        if let Some(p) = self.password_file() {
            t.push_str(&format!("CUTOVER_SAMPLE_PASSWORD_FILE = {p}\n"));
        }
        t
    }
}

/// The password file, absolute: a regular file only its owner can read,
/// not empty, its path one the configs can hold.
fn check_password_file(p: &Path) -> Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let flag =
        |why: String| Error::Usage(format!("--postgres-password-file {}: {why}", p.display()));
    let full = std::fs::canonicalize(p)
        .map_err(|e| flag(format!("{e}; give the file holding the password")))?;
    let meta = std::fs::metadata(&full).map_err(|e| flag(e.to_string()))?;
    if !meta.is_file() {
        return Err(flag(
            "not a regular file; give the file holding the password".into(),
        ));
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(flag(format!(
            "others can read it (mode {mode:o}); make it private with `chmod 600 {}`",
            p.display()
        )));
    }
    if meta.len() == 0 {
        return Err(flag("it is empty; put the password in it".into()));
    }
    match full.to_str() {
        Some(s) if !s.chars().any(char::is_control) && !s.contains("${") => Ok(full),
        _ => Err(flag(
            "the path must be UTF-8 without control characters or \"${\"; move the file".into(),
        )),
    }
}

/// Release A's expand: the orders, each price inside its document.
const A_EXPAND: &str = "CREATE TABLE orders (id bigint PRIMARY KEY, doc jsonb NOT NULL);
INSERT INTO orders SELECT g, jsonb_build_object('price_cents', (g % 997) + 100) FROM generate_series(1, 50000) g;
";
/// Release B's expand: the normalised prices, empty until the backfill.
const B_EXPAND: &str =
    "CREATE TABLE order_prices (order_id bigint PRIMARY KEY, price_cents bigint NOT NULL);\n";
/// Release B's postdeploy, once B runs everywhere.
const B_POSTDEPLOY: &str =
    "ALTER TABLE order_prices ADD CONSTRAINT price_not_negative CHECK (price_cents >= 0);\n";
/// Release C's contract: the old shape goes.
const C_CONTRACT: &str = "ALTER TABLE orders DROP COLUMN doc;\n";

fn backfill(required_before_contract: bool, upgrade_to: Option<&str>) -> DataMigration {
    DataMigration {
        id: BACKFILL.into(),
        database: DATABASE.into(),
        description: "copy each order's price out of orders.doc into order_prices".into(),
        required_before_contract,
        required_before_upgrade_to: upgrade_to.map(|v| parse_version(v).expect("a version")),
    }
}

/// Builds, signs and imports release `version` of the shop in `shape`.
async fn release(
    dir: &Path,
    connect: &ConnectArgs,
    binary: &[u8],
    version: &str,
    shape: &str,
    data_migrations: Vec<DataMigration>,
    migrations: &[(&str, &str, &str)],
) -> Result<()> {
    let mut files = bundle::sample_files(binary, version, true);
    files.push(bundle::File::new("SHAPE", format!("{shape}\n"), 0o644));
    let shop = Service {
        name: SERVICE.into(),
        service_version: version.into(),
        depends_on: Vec::new(),
        databases: vec![DATABASE.into()],
        data_migrations,
        files,
    };
    let mut pinned = Vec::new();
    for (phase, name, sql) in migrations {
        pinned.push(Migration {
            at: Location {
                database: DATABASE.into(),
                version: parse_version(version)
                    .map_err(|e| Error::Failed(format!("version {version}: {e}")))?,
                phase: Phase::parse(phase).map_err(Error::Failed)?,
                name: (*name).into(),
            },
            bytes: sql.as_bytes().to_vec(),
        });
    }
    let bundle = bundle::bundle(version, &[shop], &Floor::default(), &pinned)?;
    publish(dir, connect, version, &bundle).await
}

fn migrate_args(phase: &str, version: &str, dry_run: bool) -> MigrateArgs {
    MigrateArgs {
        command: None,
        phase: Some(phase.into()),
        version: Some(version.into()),
        database: None,
        dry_run,
        yes: true,
        lock_timeout: Duration::from_secs(30),
    }
}

async fn apply(connect: &ConnectArgs, phase: &str, version: &str, dry_run: bool) -> Result<()> {
    println!(
        "\n$ cutover migrate --phase {phase} --version {version} {}",
        if dry_run { "--dry-run" } else { "--yes" }
    );
    migrate::migrate(connect, migrate_args(phase, version, dry_run), Format::Text).await
}

async fn migrate_status(connect: &ConnectArgs, version: &str) -> Result<()> {
    println!("\n$ cutover migrate status --version {version}");
    let args = MigrateArgs {
        command: Some(migrate::MigrateCommand::Status {
            database: None,
            version: Some(version.into()),
        }),
        ..migrate_args("expand", version, false)
    };
    migrate::migrate(connect, args, Format::Text).await
}

fn upgrade_args(version: &str) -> rollout::UpgradeArgs {
    rollout::UpgradeArgs {
        plan: rollout::PlanArgs {
            services: vec![SERVICE.into()],
            version: version.into(),
            allow_offline: false,
        },
        dry_run: false,
        yes: true,
        no_rollback: false,
        wait: true,
    }
}

async fn upgrade(connect: &ConnectArgs, version: &str) -> Result<()> {
    println!("\n$ cutover upgrade {SERVICE} --version {version} --yes --wait");
    rollout::upgrade(connect, upgrade_args(version), Format::Text).await
}

/// Runs `step`, which its gate must refuse with words holding `because`.
async fn refused(
    what: &str,
    because: &str,
    step: impl std::future::Future<Output = Result<()>>,
) -> Result<()> {
    match step.await {
        Err(Error::Rpc(why) | Error::Failed(why)) if why.contains(because) => {
            println!("demo: refused, as it must be: {why}");
            Ok(())
        }
        Ok(()) => Err(Error::Failed(format!(
            "{what} went ahead where its gate should have refused it"
        ))),
        Err(e) => Err(e),
    }
}

/// The shop's price total as a host's service answers it (`GET /orders/total`).
async fn total(port: u16) -> Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let ask = async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        s.write_all(b"GET /orders/total HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            .await?;
        let mut reply = Vec::new();
        // An answer is a few dozen bytes.
        s.take(64 * 1024).read_to_end(&mut reply).await?;
        Ok::<_, std::io::Error>(String::from_utf8_lossy(&reply).into_owned())
    };
    let reply = tokio::time::timeout(Duration::from_secs(5), ask)
        .await
        .map_err(|_| Error::Failed(format!("the shop on port {port} did not answer in 5s")))?
        .map_err(|e| Error::Failed(format!("the shop on port {port}: {e}")))?;
    match reply.split_once("\r\n\r\n") {
        Some((head, body))
            if head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200") =>
        {
            Ok(body.trim().to_string())
        }
        _ => Err(Error::Failed(format!(
            "the shop on port {port} answered {}",
            crate::output::escape(reply.lines().next().unwrap_or(""))
        ))),
    }
}

/// The total `host` serves, printed, and checked against `want` once known.
async fn show_total(started: &Started, want: &mut Option<String>, release: &str) -> Result<()> {
    let (host, port) = &started.hosts[0];
    let got = total(*port).await?;
    println!("demo: {host} (release {release}) serves a price total of {got} cents");
    match want {
        Some(w) if *w != got => Err(Error::Failed(format!(
            "the price total changed from {w} to {got} during the upgrade"
        ))),
        Some(_) => Ok(()),
        None => {
            *want = Some(got);
            Ok(())
        }
    }
}

/// `run --wait` with a pause sent once it has moved some rows: the run
/// stops after its batch, the follower says so, and `resume --wait`
/// takes it on from its checkpoint to the end.
async fn run_pause_resume(connect: &ConnectArgs) -> Result<()> {
    println!("\n$ cutover data-migrate run {KEY} --wait   (and, once it moves, data-migrate pause {KEY})");
    let run = dm::data_migrate(
        connect,
        DataMigrateCommand::Run {
            migration: KEY.into(),
            dry_run: false,
            host: None,
            wait: true,
        },
        Format::Text,
    );
    let pause = async {
        wait_for(
            Duration::from_secs(60),
            "the backfill to move rows",
            || async {
                let e = dm::list(connect, String::new(), KEY.into()).await?;
                let status = e.first().and_then(|e| e.record.as_ref()).map(|r| &r.status);
                match status {
                    Some(s) if s.done > 0 => Ok(()),
                    _ => Err(Error::Failed("no row moved yet".into())),
                }
            },
        )
        .await?;
        println!("\n$ cutover data-migrate pause {KEY}");
        dm::data_migrate(
            connect,
            DataMigrateCommand::Pause {
                migration: KEY.into(),
            },
            Format::Text,
        )
        .await
    };
    let (ran, paused) = tokio::join!(run, pause);
    paused?;
    match ran {
        Err(Error::Failed(why)) => println!("demo: the run stopped after its batch: {why}"),
        Ok(()) => {
            return Err(Error::Failed(
                "the backfill finished before the pause reached it".into(),
            ))
        }
        Err(e) => return Err(e),
    }
    println!("\n$ cutover data-migrate resume {KEY} --wait");
    dm::data_migrate(
        connect,
        DataMigrateCommand::Resume {
            migration: KEY.into(),
            wait: true,
        },
        Format::Text,
    )
    .await
}

/// The act: A installed, then everything it takes to reach C.
pub(super) async fn upgrade_platform(dir: &Path, started: &Started, db: &Database) -> Result<()> {
    let connect = &started.connect;
    let binary =
        std::fs::read(&started.sample_bin).map_err(|e| Error::io(&started.sample_bin, e))?;
    apply_fleet(dir, started, SERVICE, &db.service_env()).await?;

    println!("\n$ cutover release import  (shop 1.0.0: A, prices in orders.doc; 2.0.0: B, both shapes, the backfill; 3.0.0: C, order_prices only, contract drops orders.doc)");
    let a = [("expand", "001_orders.sql", A_EXPAND)];
    release(dir, connect, &binary, "1.0.0", "A", Vec::new(), &a).await?;
    let b = [
        ("expand", "001_order_prices.sql", B_EXPAND),
        ("postdeploy", "001_price_check.sql", B_POSTDEPLOY),
    ];
    let b_data = vec![backfill(false, Some("3.0.0"))];
    release(dir, connect, &binary, "2.0.0", "B", b_data, &b).await?;
    let c = [("contract", "001_drop_doc.sql", C_CONTRACT)];
    let c_data = vec![backfill(true, None)];
    release(dir, connect, &binary, "3.0.0", "C", c_data, &c).await?;

    println!(
        "\ndemo: first, release A in place: its expand makes the orders table with {ORDERS} orders"
    );
    apply(connect, "expand", "1.0.0", false).await?;
    upgrade(connect, "1.0.0").await?;
    let mut want = None;
    show_total(started, &mut want, "A").await?;

    println!("\ndemo: now the upgrade to B and on to C, step by step");
    println!("\n$ cutover status");
    fleet::status(connect, Format::Text).await?;
    migrate_status(connect, "2.0.0").await?;
    apply(connect, "expand", "2.0.0", true).await?;
    apply(connect, "expand", "2.0.0", false).await?;
    println!("\n$ cutover plan {SERVICE} --version 2.0.0");
    rollout::plan(connect, &upgrade_args("2.0.0").plan, Format::Text).await?;
    upgrade(connect, "2.0.0").await?;
    show_total(started, &mut want, "B").await?;

    println!("\n$ cutover upgrade {SERVICE} --version 3.0.0 --yes   (before the backfill)");
    refused(
        "the upgrade to 3.0.0",
        "must be done before an upgrade to 3.0.0",
        rollout::upgrade(connect, upgrade_args("3.0.0"), Format::Text),
    )
    .await?;
    println!("\n$ cutover data-migrate run {KEY} --dry-run");
    dm::data_migrate(
        connect,
        DataMigrateCommand::Run {
            migration: KEY.into(),
            dry_run: true,
            host: None,
            wait: false,
        },
        Format::Text,
    )
    .await?;
    // Bounded: a run that stops moving (another demo's on the same
    // database, say) must not keep the demo up for good.
    tokio::time::timeout(DATA_MIGRATION_LIMIT, run_pause_resume(connect))
        .await
        .map_err(|_| {
            Error::Failed(format!(
                "the backfill did not finish within {}s; see `cutover data-migrate status {KEY}`",
                DATA_MIGRATION_LIMIT.as_secs()
            ))
        })??;
    println!("\n$ cutover data-migrate verify {KEY}");
    dm::data_migrate(
        connect,
        DataMigrateCommand::Verify {
            migration: KEY.into(),
            host: None,
        },
        Format::Text,
    )
    .await?;
    apply(connect, "postdeploy", "2.0.0", false).await?;
    upgrade(connect, "3.0.0").await?;
    show_total(started, &mut want, "C").await?;
    apply(connect, "contract", "3.0.0", false).await?;
    show_total(started, &mut want, "C, after contract").await?;

    migrate_status(connect, "3.0.0").await?;
    println!("\n$ cutover data-migrate list");
    dm::data_migrate(
        connect,
        DataMigrateCommand::List { to_version: None },
        Format::Text,
    )
    .await?;
    println!("\n$ cutover status");
    fleet::status(connect, Format::Text).await?;
    println!(
        "\ndemo: the shop went from A to C with every gate kept; the price total never changed"
    );
    Ok(())
}
