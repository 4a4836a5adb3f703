//! The operator edge of `cutover migrate`: checks the request, resolves the
//! release (verified again) and reads each migration file from the
//! artifact store (its digest checked again), then hands each database to
//! `crate::migrate`. A migrate runs in a task of its own, so a client that
//! goes away does not cut a migration short.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use cutover_core::manifest::{Manifest, Phase};
use cutover_core::migration_views::{MigrateRun, MigrationStatus};
use cutover_proto::v1;

use crate::error::{Error, Result};
use crate::migrate::{self, decide::Wanted, gate, RunAsk, Target, Who};
use crate::Controller;

/// The longest `--name` of a repair (VERSION/PHASE/FILE).
const MAX_NAME: usize = 512;

/// The release `version` names (a channel, a version, or "" for the
/// default channel), verified again.
async fn release(c: &Arc<Controller>, version: &str) -> Result<Manifest> {
    let version = super::rollouts::resolve(c, version).await?;
    let v = version.clone();
    let stored = c.store.run(move |s| s.release(&v)).await?.ok_or_else(|| {
        Error::NotFound(format!(
            "{version:?} is neither a channel nor an imported release; see `cutover channel list` and `cutover release list`"
        ))
    })?;
    Ok(super::import::verify(c, &stored.manifest, &stored.signatures)?.0)
}

/// The databases asked about: `database`, or every one the release has
/// migrations for, in order.
fn databases(c: &Controller, m: &Manifest, database: &str) -> Result<Vec<String>> {
    if !database.is_empty() {
        migrate_name(database)?;
        if !c.config.databases.contains_key(database) && m.migrations_of(database).next().is_none()
        {
            return Err(Error::NotFound(format!(
                "database {database:?} is neither in release {} nor in the controller's config",
                m.version
            )));
        }
        return Ok(vec![database.to_string()]);
    }
    let mut names: Vec<String> = m.migrations.iter().map(|x| x.database.clone()).collect();
    names.dedup();
    Ok(names)
}

fn migrate_name(database: &str) -> Result<()> {
    cutover_core::manifest::migrations::check_database(database).map_err(Error::Invalid)
}

/// The release's migrations of `database` as its manifest pins them, no
/// text read yet.
fn pinned(c: &Controller, m: &Manifest, database: &str) -> Result<Vec<Wanted>> {
    let transactional = c
        .config
        .databases
        .get(database)
        .ok_or_else(|| {
            Error::Invalid(format!(
                "database {database:?}: release {} has migrations for it, but the controller's config has no [databases.{database}]",
                m.version
            ))
        })?
        .transactional_ddl;
    Ok(m.migrations_of(database)
        .map(|x| Wanted {
            version: x.version.to_string(),
            phase: x.phase,
            name: x.name.clone(),
            sha256: x.sha256,
            size: x.size,
            text: None,
            no_transaction: !transactional,
        })
        .collect())
}

/// `wanted` with the text of those `needed` says (all: `None`) read from
/// the artifact store and checked against their pins.
async fn read_texts(
    c: &Arc<Controller>,
    database: &str,
    mut wanted: Vec<Wanted>,
    needed: Option<&HashSet<String>>,
) -> Result<Vec<Wanted>> {
    let store = c.clone();
    let database = database.to_string();
    let needed = needed.cloned();
    tokio::task::spawn_blocking(move || {
        for w in &mut wanted {
            let key = w.key();
            if needed.as_ref().is_some_and(|n| !n.contains(&key)) {
                continue;
            }
            let what = format!("database {database:?}: migration {key}");
            let path = store.artifacts.path(&w.sha256);
            let f = std::fs::File::open(&path)
                .map_err(|e| Error::Internal(format!("{what}: stored copy: {e}")))?;
            let bytes = cutover_core::fsutil::read_bounded(f, &path, w.size)
                .map_err(|e| Error::Internal(format!("{what}: stored copy: {e}")))?;
            if cutover_core::Sha256Digest::of(&bytes) != w.sha256 {
                return Err(Error::Internal(format!(
                    "{what}: the stored copy no longer matches its pin; import the release again to repair it"
                )));
            }
            let text = String::from_utf8(bytes)
                .map_err(|_| Error::Invalid(format!("{what}: not UTF-8 text")))?;
            w.no_transaction |= migrate::sql::wants_no_transaction(&text);
            w.text = Some(text);
        }
        Ok(wanted)
    })
    .await
    .map_err(|e| Error::Internal(format!("reading migrations: {e}")))?
}

/// The release's migrations of `database`, every text read: what a run
/// applies.
async fn wanted(c: &Arc<Controller>, m: &Manifest, database: &str) -> Result<Vec<Wanted>> {
    read_texts(c, database, pinned(c, m, database)?, None).await
}

/// `database`'s ledger against release `m`, reading only the files whose
/// text the answer needs (pending or changed ones): a status of a release
/// whose 1,000 migrations all ran reads none.
async fn assessed(
    c: &Arc<Controller>,
    m: &Manifest,
    database: &str,
) -> Result<cutover_core::migration_views::DatabaseStatus> {
    let wanted = pinned(c, m, database)?;
    let t = Target {
        name: database,
        config: configured(c, database)?,
        wanted,
    };
    let mut status = migrate::status(&t).await?;
    let needed = migrate::decide::texts_needed(&status);
    if !needed.is_empty() {
        let read = read_texts(c, database, t.wanted, Some(&needed)).await?;
        migrate::decide::complete(&mut status, &read);
    }
    Ok(status)
}

/// The ledgers of the databases owned by the services of `m` a plan moves
/// (`services`; empty: all), each held to the expand gate: the upgrade
/// (and plan) waits for the release's expand migrations, and a ledger that
/// cannot be read refuses the plan naming the database. A release without
/// migrations reads nothing.
pub(super) async fn plan_gate(
    c: &Arc<Controller>,
    m: &Manifest,
    services: &[String],
) -> Result<Vec<cutover_core::migration_views::DatabaseStatus>> {
    let mut names: Vec<&str> = m
        .services
        .iter()
        .filter(|s| services.is_empty() || services.contains(&s.name))
        .flat_map(|s| s.databases.iter().map(String::as_str))
        .filter(|d| m.migrations_of(d).next().is_some())
        .collect();
    names.sort();
    names.dedup();
    let version = m.version.to_string();
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        let status = assessed(c, m, name)
            .await
            .map_err(|e| Error::Refused(gate::unreadable(&version, name, &e.to_string())))?;
        gate::expand_gate(&version, &status).map_err(Error::Refused)?;
        out.push(status);
    }
    Ok(out)
}

/// `cutover migrate status`.
pub async fn status(c: &Arc<Controller>, r: v1::MigrateRequest) -> Result<MigrationStatus> {
    let m = release(c, &r.version).await?;
    let mut out = MigrationStatus {
        version: m.version.to_string(),
        databases: Vec::new(),
    };
    for name in databases(c, &m, &r.database)? {
        out.databases.push(assessed(c, &m, &name).await?);
    }
    Ok(out)
}

fn configured<'a>(c: &'a Controller, name: &str) -> Result<&'a crate::config::DatabaseConfig> {
    c.config.databases.get(name).ok_or_else(|| {
        Error::Invalid(format!(
            "database {name:?}: the controller's config has no [databases.{name}]"
        ))
    })
}

/// `cutover migrate --phase P`.
pub async fn run(
    c: &Arc<Controller>,
    r: v1::MigrateRequest,
    operator: Option<String>,
) -> Result<MigrateRun> {
    let phase = Phase::parse(&r.phase).map_err(Error::Invalid)?;
    let lock_wait = match r.lock_timeout_ms {
        0 => migrate::lock::DEFAULT_WAIT,
        ms => Duration::from_millis(u64::from(ms)),
    };
    if lock_wait > migrate::lock::MAX_WAIT {
        return Err(Error::Invalid(format!(
            "--lock-timeout {}: at most {}",
            cutover_core::fleet::show_duration(lock_wait),
            cutover_core::fleet::show_duration(migrate::lock::MAX_WAIT)
        )));
    }
    let m = release(c, &r.version).await?;
    let names = databases(c, &m, &r.database)?;
    let mut targets = Vec::new();
    for name in names {
        configured(c, &name)?;
        targets.push((wanted(c, &m, &name).await?, name));
    }
    if phase != Phase::Expand {
        gate(c, &m, phase, &targets).await?;
    }
    let ask = RunAsk {
        phase,
        dry_run: r.dry_run,
        lock_wait,
    };
    let who = Who::new(operator);
    let c = c.clone();
    let version = m.version.to_string();
    // Its own task: the operator's connection going away must not cut a
    // migration short.
    tokio::spawn(async move {
        let mut out = MigrateRun {
            version,
            phase: phase.as_str().into(),
            dry_run: ask.dry_run,
            databases: Vec::new(),
        };
        for (wanted, name) in targets {
            let config = configured(&c, &name)?;
            let t = Target {
                name: &name,
                config,
                wanted,
            };
            match migrate::apply(&c.store, &t, &ask, &who).await {
                Ok(run) => out.databases.push(run),
                // What the databases before it got is not lost with it.
                Err(e) if !out.databases.is_empty() => return Err(e.noted(&earlier(&out))),
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    })
    .await
    .map_err(|e| Error::Internal(format!("migrate: {e}")))?
}

/// What the databases a run finished before one failed got, as one
/// clause: "before it, database "a" applied 3 migrations (…), …".
fn earlier(run: &MigrateRun) -> String {
    let each: Vec<String> = run
        .databases
        .iter()
        .map(|d| {
            let n = d.migrations.len();
            let last = d
                .migrations
                .last()
                .map(|m| format!(", the last {}", m.key()))
                .unwrap_or_default();
            format!(
                "database {:?} {} {n} migration{}{last}",
                d.database,
                if run.dry_run {
                    "would apply"
                } else {
                    "applied"
                },
                if n == 1 { "" } else { "s" }
            )
        })
        .collect();
    format!("before it, {}", each.join(", "))
}

/// The gate of postdeploy or contract (`migrate::gate`) for each target,
/// before anything runs (a `--dry-run` too): the rollout as the store
/// knows it (fleet config, what hosts report, unfinished rollouts) and
/// each database's ledger. Anything unreadable refuses.
async fn gate(
    c: &Arc<Controller>,
    m: &Manifest,
    phase: Phase,
    targets: &[(Vec<Wanted>, String)],
) -> Result<()> {
    let version = m.version.to_string();
    let refused = |name: &str, why: String| {
        Error::Refused(format!(
            "database {name}: {phase} of release {version} refused: {why}; fix that, then run `cutover migrate --phase {phase} --version {version}` again"
        ))
    };
    for (wanted, name) in targets {
        let rollout = async {
            let fleet = crate::fleet_view::fleet_config(c).await?;
            let hosts = crate::fleet_view::host_states(c).await?;
            let unfinished = c.store.run(|s| s.unfinished_rollouts()).await?;
            Ok::<_, Error>((fleet, hosts, unfinished))
        }
        .await;
        let (fleet, hosts, unfinished) = rollout
            .map_err(|e| refused(name, format!("the rollout's state cannot be read ({e})")))?;
        let moving: Vec<std::result::Result<gate::Moving, String>> = unfinished
            .iter()
            .map(|r| r.as_ref().map(gate::Moving::of).map_err(|e| e.to_string()))
            .collect();
        let mut behind = gate::not_rolled_out(m, &fleet, &hosts, name);
        behind.extend(gate::in_flight(m, name, &moving));
        let status = migrate::status(&Target {
            name,
            config: configured(c, name)?,
            wanted: wanted.clone(),
        })
        .await
        .map_err(|e| refused(name, format!("its ledger cannot be read ({e})")))?;

        match phase {
            Phase::Postdeploy => gate::postdeploy_gate(&version, &status, &behind),
            Phase::Contract => {
                let needs = super::data_migrate::contract_needs(c, m, name)
                    .await
                    .map_err(|e| {
                        refused(
                            name,
                            format!("the state of its data migrations cannot be read ({e})"),
                        )
                    })?;
                gate::contract_gate(m, &status, &behind, &needs)
            }
            Phase::Expand => Ok(()),
        }
        .map_err(Error::Refused)?;
    }
    Ok(())
}

/// `cutover migrate repair`.
pub async fn repair(
    c: &Arc<Controller>,
    r: v1::MigrateRepairRequest,
    operator: Option<String>,
) -> Result<cutover_core::migration_views::Repaired> {
    migrate_name(&r.database)?;
    if r.name.is_empty() || r.name.len() > MAX_NAME {
        return Err(Error::Invalid(format!(
            "--name: give the migration's file name (at most {MAX_NAME} bytes)"
        )));
    }
    let config = configured(c, &r.database)?;
    let t = Target {
        name: &r.database,
        config,
        wanted: Vec::new(),
    };
    migrate::repair(&c.store, &t, &r.name, &Who::new(operator)).await
}
