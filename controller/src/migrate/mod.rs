//! `cutover migrate`: schema migrations applied by the controller (where
//! the credentials live) to the PostgreSQL databases of its config.
//! `target` connects, `lock` takes the database's advisory lock, `ledger`
//! reads and writes `_migrations`, `run` runs one file, `decide` holds
//! the pure decisions (pending, drift, dirty), `gate` the pure gates of
//! upgrade, postdeploy and contract, and `sql` reads a file's
//! text. This module runs one database's status, migrate and repair; the
//! operator edge (`api/migrate.rs`) resolves the release and its files.

pub mod decide;
pub mod gate;
pub mod ledger;
pub mod lock;
pub mod run;
pub mod sql;
pub mod target;

use std::time::Duration;

use cutover_core::manifest::Phase;
use cutover_core::migration_views::{DatabaseRun, DatabaseStatus, PendingMigration, Repaired};
use cutover_core::views::{from_ms, now_ms};

use crate::config::DatabaseConfig;
use crate::error::{Error, Result};
use crate::store::Store;
use decide::Wanted;

/// One database and the release's migrations of it, in the order they run.
pub struct Target<'a> {
    pub name: &'a str,
    pub config: &'a DatabaseConfig,
    pub wanted: Vec<Wanted>,
}

/// Who asks: the operator's certificate name and this controller.
#[derive(Debug, Clone)]
pub struct Who {
    pub operator: String,
    pub controller: String,
}

impl Who {
    pub fn new(operator: Option<String>) -> Who {
        Who {
            operator: operator.unwrap_or_else(|| "unknown operator".into()),
            controller: controller_host(),
        }
    }

    /// What the ledger's `applied_by` and the events say.
    pub fn applied_by(&self) -> String {
        format!(
            "operator {} via cutover-controller on {}",
            self.operator, self.controller
        )
    }
}

/// This controller's host name, for `applied_by` and `application_name`.
pub fn controller_host() -> String {
    nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .map(|h| cutover_core::views::bounded(&h, 64).into_owned())
        .unwrap_or_else(|_| "unknown-host".into())
}

/// What `migrate --phase` was asked.
pub struct RunAsk {
    pub phase: Phase,
    pub dry_run: bool,
    pub lock_wait: Duration,
}

/// The database's ledger against its migrations (reads only).
pub async fn status(t: &Target<'_>) -> Result<DatabaseStatus> {
    let app = target::application_name(&controller_host(), t.name);
    let client = target::connect(t.name, t.config, &app).await?;
    assessed(&client, t).await
}

/// The ledger read on `client` against `t`'s migrations, without holding
/// the lock: a `running` row is then a crash's or the row of a migrate at
/// work, and the lock's holder says which.
async fn assessed(client: &tokio_postgres::Client, t: &Target<'_>) -> Result<DatabaseStatus> {
    let rows = ledger::read(client, t.name).await?;
    let mut status = decide::assess(t.name, &t.wanted, rows.as_deref());
    if !status.dirty.is_empty() {
        // Not knowing shows the row as dirty: a repair takes the lock, so
        // it cannot clear the row of a migrate at work.
        status.migrating = lock::holder_now(client, t.name)
            .await
            .unwrap_or_else(|e| {
                tracing::warn!(database = t.name, error = %e, "who holds the migration lock is unknown");
                None
            });
    }
    Ok(status)
}

async fn event(store: &Store, kind: &'static str, detail: String) -> Result<()> {
    store.run(move |s| s.event(kind, None, &detail)).await
}

/// Applies the pending migrations of `ask.phase`, in order, under the
/// database's lock; stops at the first that fails. With `dry_run` it only
/// reads the ledger and says what would run.
pub async fn apply(store: &Store, t: &Target<'_>, ask: &RunAsk, who: &Who) -> Result<DatabaseRun> {
    let app = target::application_name(&who.controller, t.name);
    let mut client = target::connect(t.name, t.config, &app).await?;
    if ask.dry_run {
        let status = assessed(&client, t).await?;
        if let Some(why) = decide::blocked(&status) {
            return Err(Error::Refused(why));
        }
        refuse_unrunnable(t, &decide::pending_in(&status, ask.phase))?;
        return Ok(DatabaseRun {
            database: t.name.into(),
            migrations: decide::pending_in(&status, ask.phase)
                .into_iter()
                .cloned()
                .collect(),
        });
    }
    // The lock lives on a session of its own that no file runs on: a
    // file's `DISCARD ALL` or `pg_advisory_unlock_all()` must not let a
    // second migrate in while it runs.
    let lock_session = target::connect(t.name, t.config, &app).await?;
    let held = lock::acquire(&lock_session, t.name, ask.lock_wait).await?;
    let result = apply_locked(store, &mut client, (&lock_session, &held), t, ask, who).await;
    lock::release(&lock_session, t.name, held).await;
    result
}

/// Refuses the run, before anything of it runs, when a file of `todo`
/// holds a statement cutover must not send (`sql::refusal`).
fn refuse_unrunnable(t: &Target<'_>, todo: &[&PendingMigration]) -> Result<()> {
    for p in todo {
        let text = t
            .wanted
            .iter()
            .find(|w| w.key() == p.key())
            .and_then(|w| w.text.as_deref());
        if let Some((line, why)) = text.and_then(sql::refusal) {
            return Err(Error::Refused(format!(
                "database {:?}: migration {} line {line}: {why}; nothing ran",
                t.name,
                p.key()
            )));
        }
    }
    Ok(())
}

async fn apply_locked(
    store: &Store,
    client: &mut tokio_postgres::Client,
    lock: (&tokio_postgres::Client, &lock::Held),
    t: &Target<'_>,
    ask: &RunAsk,
    who: &Who,
) -> Result<DatabaseRun> {
    ledger::ensure(&*client, t.name).await?;
    let rows = ledger::read(&*client, t.name).await?;
    let status = decide::assess(t.name, &t.wanted, rows.as_deref());
    if let Some(why) = decide::blocked(&status) {
        return Err(Error::Refused(why));
    }
    let by = who.applied_by();
    let mut done = DatabaseRun {
        database: t.name.into(),
        migrations: Vec::new(),
    };
    let todo: Vec<&PendingMigration> = decide::pending_in(&status, ask.phase);
    refuse_unrunnable(t, &todo)?;
    for p in todo {
        let Some(w) = t.wanted.iter().find(|w| w.key() == p.key()) else {
            continue;
        };
        // A lock session gone (its connection cut) is a lock gone: nothing
        // more runs without it.
        lock::still_held(lock.0, t.name, lock.1)
            .await
            .map_err(|e| {
                if done.migrations.is_empty() {
                    e
                } else {
                    e.noted(&format!("{} applied before it", done.migrations.len()))
                }
            })?;
        let what = format!(
            "database {}: {} ({}{}) by {by}",
            t.name,
            w.key(),
            w.checksum(),
            if w.no_transaction {
                ", outside a transaction"
            } else {
                ""
            }
        );
        // Nothing runs that the event log was not told of.
        event(store, "migration.started", what.clone()).await?;
        match run::apply(client, t.name, t.config, w, &by).await {
            Ok(()) => {
                if let Err(e) = event(store, "migration.applied", what).await {
                    tracing::warn!(error = %e, "could not record migration.applied");
                }
                done.migrations.push(p.clone());
            }
            Err(f) => {
                let at = f.line.map(|l| format!(" at line {l}")).unwrap_or_default();
                let detail = format!("{what}: failed{at}: {} ({})", f.error, f.left.said());
                if let Err(e) = event(store, "migration.failed", detail).await {
                    tracing::warn!(error = %e, "could not record migration.failed");
                }
                let after = if done.migrations.is_empty() {
                    String::new()
                } else {
                    format!("; {} applied before it", done.migrations.len())
                };
                let fix = if f.left == run::Left::Unknown {
                    String::new()
                } else {
                    format!(
                        "; fix the database (and the file, in a new release), then `cutover migrate repair --database {} --name {}`",
                        t.name,
                        w.key()
                    )
                };
                return Err(Error::Refused(format!(
                    "database {:?}: migration {}{at} failed: {} ({}{}); later migrations did not run{after}{fix}",
                    t.name,
                    w.key(),
                    f.error,
                    f.left.said(),
                    if f.tries > 1 { format!(", after {} tries", f.tries) } else { String::new() },
                )));
            }
        }
    }
    Ok(done)
}

/// Marks the failed or dirty row `name` repaired by `who` (kept in the
/// ledger as history), so that the migration is pending again.
pub async fn repair(store: &Store, t: &Target<'_>, name: &str, who: &Who) -> Result<Repaired> {
    let app = target::application_name(&who.controller, t.name);
    let client = target::connect(t.name, t.config, &app).await?;
    // A repair while a migrate runs would clear the row it is writing.
    let held = lock::acquire(&client, t.name, Duration::from_secs(5)).await?;
    let result = async {
        let rows = ledger::read(&client, t.name).await?.unwrap_or_default();
        let entry = decide::find_row(&rows, name)
            .map_err(|e| Error::NotFound(format!("database {:?}: {e}", t.name)))?
            .clone();
        if entry.state == "applied" {
            return Err(Error::Refused(format!(
                "database {:?}: migration {} is applied; repair clears only failed or dirty rows",
                t.name,
                entry.key()
            )));
        }
        let at = now_ms();
        let by = who.applied_by();
        let n = ledger::repair(&client, &entry, &by, at).await.map_err(|e| {
            Error::Unavailable(format!(
                "database {:?}: cannot write its ledger: {}",
                t.name,
                target::describe(&e)
            ))
        })?;
        if n == 0 {
            return Err(Error::Refused(format!(
                "database {:?}: the row of {} changed meanwhile; look again with `cutover migrate status`",
                t.name,
                entry.key()
            )));
        }
        let detail = format!(
            "database {}: {} ({}) marked repaired by {by}",
            t.name,
            entry.key(),
            entry.state
        );
        if let Err(e) = event(store, "migration.repaired", detail).await {
            tracing::warn!(error = %e, "could not record migration.repaired");
        }
        Ok(Repaired {
            database: t.name.into(),
            entry,
            repaired_by: by,
            repaired_at: from_ms(at).unwrap_or(time::OffsetDateTime::UNIX_EPOCH),
        })
    }
    .await;
    lock::release(&client, t.name, held).await;
    result
}
