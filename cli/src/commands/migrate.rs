//! `cutover migrate`: a phase's pending schema migrations applied by the
//! controller (`--phase`, with `--dry-run` to see what would run and a
//! confirmation unless `--yes`), each database's ledger against a release
//! (`status`) and a failed or dirty ledger row cleared (`repair`).

use std::time::Duration;

use cutover_core::migration_views::{DatabaseStatus, LedgerEntry, PendingMigration};
use cutover_proto::v1;

use super::rollout::decode;
use crate::client::ConnectArgs;
use crate::doc::migrate::{MigrateRun, MigrationStatus, Repaired};
use crate::error::{Error, Result};
use crate::output::{self, escape, Format};

/// The longest `--lock-timeout` (as the controller allows).
const MAX_LOCK_TIMEOUT: Duration = Duration::from_secs(3600);

/// `cutover migrate`'s arguments.
#[derive(clap::Args)]
#[command(
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true,
    after_help = "Examples:\n  cutover migrate --phase expand --version 1.4.0 --dry-run\n  cutover migrate --phase expand --version 1.4.0 --yes\n  cutover migrate status --database billing\n  cutover migrate repair --database billing --name 002_index.sql"
)]
pub struct MigrateArgs {
    #[command(subcommand)]
    pub command: Option<MigrateCommand>,
    /// The phase to apply: expand, postdeploy or contract.
    #[arg(long, required = true, value_parser = ["expand", "postdeploy", "contract"])]
    pub phase: Option<String>,
    /// The release (a channel or a version; default: the default channel).
    #[arg(long)]
    pub version: Option<String>,
    /// Only this database (default: every database the release migrates).
    #[arg(long)]
    pub database: Option<String>,
    /// Print what would run, in order, with each file's checksum; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Apply without asking.
    #[arg(long, short)]
    pub yes: bool,
    /// How long to wait for another migrate of the same database (at most 1h).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "30s")]
    pub lock_timeout: Duration,
}

#[derive(clap::Subcommand)]
pub enum MigrateCommand {
    /// Each database's ledger against a release: applied, pending (by
    /// phase), failed or dirty rows, changed files, rows no release carries.
    Status {
        /// Only this database (default: every database the release migrates).
        #[arg(long)]
        database: Option<String>,
        /// The release (a channel or a version; default: the default channel).
        #[arg(long)]
        version: Option<String>,
    },
    /// Clear a failed or dirty ledger row once the database was fixed by
    /// hand (the row is kept, marked with who repaired it and when); the
    /// migration is then pending again.
    Repair {
        /// The database whose ledger row to repair.
        #[arg(long)]
        database: String,
        /// The migration's file name, or VERSION/PHASE/FILE.
        #[arg(long)]
        name: String,
        /// Repair without asking.
        #[arg(long, short)]
        yes: bool,
    },
}

pub async fn migrate(c: &ConnectArgs, args: MigrateArgs, out: Format) -> Result<()> {
    match args.command {
        Some(MigrateCommand::Status { database, version }) => {
            status(c, database, version, out).await
        }
        Some(MigrateCommand::Repair {
            database,
            name,
            yes,
        }) => repair(c, database, name, yes, out).await,
        None => {
            let phase = args
                .phase
                .clone()
                .ok_or_else(|| Error::Usage("--phase is required".into()))?;
            apply(c, &args, phase, out).await
        }
    }
}

async fn status(
    c: &ConnectArgs,
    database: Option<String>,
    version: Option<String>,
    out: Format,
) -> Result<()> {
    let doc = c
        .operator()
        .await?
        .migrate_status(v1::MigrateRequest {
            database: database.unwrap_or_default(),
            version: version.unwrap_or_default(),
            ..Default::default()
        })
        .await?
        .into_inner();
    let status: MigrationStatus = decode("migration status", doc)?;
    if out == Format::Json {
        output::json(&status);
        return Ok(());
    }
    println!("release {}", escape(&status.version));
    for db in &status.databases {
        print_status(db);
    }
    if status.databases.is_empty() {
        println!("the release has no migrations");
    }
    Ok(())
}

fn entry_line(label: &str, e: &LedgerEntry) {
    let when = e
        .finished_at
        .map(cutover_core::manifest::rfc3339)
        .unwrap_or_else(|| cutover_core::manifest::rfc3339(e.started_at));
    let mut line = format!(
        "  {label:<8} {}  {}  {when}  by {}",
        escape(&e.key()),
        escape(&e.checksum),
        escape(&e.applied_by)
    );
    if let Some(err) = &e.error {
        line.push_str(&format!("\n           error: {}", escape(err)));
    }
    println!("{line}");
}

fn pending_line(p: &PendingMigration, behind: bool) {
    println!(
        "  {:<8} {}  {}{}{}",
        "pending",
        escape(&p.key()),
        escape(&p.checksum),
        if p.no_transaction {
            "  (outside a transaction)"
        } else {
            ""
        },
        if behind {
            "  (added behind a migration that ran: blocks the database)"
        } else {
            ""
        }
    );
}

/// The applied rows the release does not carry, one line per version
/// (in the order the ledger first has each): a long-lived database has
/// thousands; `-o json` lists each.
fn unknown_lines(rows: &[LedgerEntry]) {
    let mut versions: Vec<(&str, usize)> = Vec::new();
    let mut at: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for r in rows {
        let i = *at.entry(&r.version).or_insert_with(|| {
            versions.push((&r.version, 0));
            versions.len() - 1
        });
        versions[i].1 += 1;
    }
    for (version, n) in versions {
        println!(
            "  {:<8} {}: {n} applied row{} of migrations this release does not carry",
            "earlier",
            escape(version),
            if n == 1 { "" } else { "s" }
        );
    }
}

fn print_status(db: &DatabaseStatus) {
    println!(
        "database {}{}",
        escape(&db.database),
        if db.ledger {
            ""
        } else {
            " (no ledger yet: never migrated)"
        }
    );
    db.applied.iter().for_each(|e| entry_line("applied", e));
    let behind: std::collections::HashSet<String> =
        db.out_of_order.iter().map(PendingMigration::key).collect();
    for p in &db.pending {
        pending_line(p, behind.contains(&p.key()));
    }
    db.failed.iter().for_each(|e| entry_line("failed", e));
    match &db.migrating {
        Some(holder) => {
            db.dirty.iter().for_each(|e| entry_line("running", e));
            println!(
                "           a migrate is at work: its lock is {}",
                escape(holder)
            );
        }
        None => db.dirty.iter().for_each(|e| entry_line("dirty", e)),
    }
    for d in &db.drift {
        println!(
            "  {:<8} {}/{}/{}  changed since it ran: ledger {}, release {}{}",
            "drift",
            escape(&d.version),
            escape(&d.phase),
            escape(&d.name),
            escape(&d.applied),
            escape(&d.release),
            if d.line_endings_only {
                " (only line endings differ)"
            } else {
                ""
            }
        );
    }
    unknown_lines(&db.unknown);
}

async fn call(c: &ConnectArgs, req: v1::MigrateRequest) -> Result<MigrateRun> {
    let doc = c.operator().await?.migrate(req).await?.into_inner();
    decode("migrate result", doc)
}

async fn apply(c: &ConnectArgs, args: &MigrateArgs, phase: String, out: Format) -> Result<()> {
    if args.lock_timeout > MAX_LOCK_TIMEOUT || args.lock_timeout.is_zero() {
        return Err(Error::Usage(format!(
            "--lock-timeout: from 1ms to {}",
            humantime::format_duration(MAX_LOCK_TIMEOUT)
        )));
    }
    let request = |dry_run, version: String| v1::MigrateRequest {
        database: args.database.clone().unwrap_or_default(),
        version,
        phase: phase.clone(),
        dry_run,
        lock_timeout_ms: u32::try_from(args.lock_timeout.as_millis()).unwrap_or(u32::MAX),
    };
    // What was asked for: a version, a channel or the default channel.
    let mut version = args.version.clone().unwrap_or_default();
    if args.dry_run || !args.yes {
        let preview = call(c, request(true, version.clone())).await?;
        if args.dry_run {
            return print_run(&preview, out);
        }
        let count: usize = preview.databases.iter().map(|d| d.migrations.len()).sum();
        if count == 0 {
            return print_run(&preview, out);
        }
        print_run(&preview, Format::Text)?;
        super::confirm(
            &format!(
                "apply these {count} {phase} migration(s) of release {}?",
                preview.version
            ),
            "nothing applied",
        )?;
        // The release confirmed, not what a channel points at by now.
        version = preview.version;
    }
    let done = tokio::select! {
        done = call(c, request(false, version)) => done.map_err(|e| match e {
            // The controller runs it apart from this connection.
            lost @ Error::Lost { .. } => Error::Failed(format!(
                "{}; the migrate may have gone on: see what it applied with `cutover migrate status`",
                lost.at_controller(&c.controller)
            )),
            other => other,
        })?,
        _ = tokio::signal::ctrl_c() => return Err(Error::MigrateGoesOn),
    };
    print_run(&done, out)
}

fn print_run(run: &MigrateRun, out: Format) -> Result<()> {
    if out == Format::Json {
        output::json(run);
        return Ok(());
    }
    for db in &run.databases {
        let name = escape(&db.database);
        if db.migrations.is_empty() {
            println!(
                "database {name}: nothing pending in phase {} of release {}",
                run.phase, run.version
            );
            continue;
        }
        if run.dry_run {
            println!("database {name}: would run, in order:");
        }
        for m in &db.migrations {
            let how = if m.no_transaction {
                " (outside a transaction)"
            } else {
                ""
            };
            if run.dry_run {
                println!("  {}  {}{how}", escape(&m.key()), escape(&m.checksum));
            } else {
                println!(
                    "database {name}: applied {}  {}{how}",
                    escape(&m.key()),
                    escape(&m.checksum)
                );
            }
        }
    }
    Ok(())
}

async fn repair(
    c: &ConnectArgs,
    database: String,
    name: String,
    yes: bool,
    out: Format,
) -> Result<()> {
    if !yes {
        super::confirm(
            &format!(
                "mark migration {} of database {} repaired (it becomes pending again)?",
                escape(&name),
                escape(&database)
            ),
            "nothing repaired",
        )?;
    }
    let doc = c
        .operator()
        .await?
        .migrate_repair(v1::MigrateRepairRequest { database, name })
        .await?
        .into_inner();
    let done: Repaired = decode("repair", doc)?;
    if out == Format::Json {
        output::json(&done);
        return Ok(());
    }
    println!(
        "database {}: the {} row of {} repaired by {} at {}; it is pending again",
        escape(&done.database),
        if done.entry.state == "failed" {
            "failed"
        } else {
            "dirty"
        },
        escape(&done.entry.key()),
        escape(&done.repaired_by),
        cutover_core::manifest::rfc3339(done.repaired_at)
    );
    Ok(())
}
