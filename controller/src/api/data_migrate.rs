//! The operator edge of `cutover data-migrate` and the data-migration
//! gates: the catalog of what the stored releases declare, the host a
//! migration runs on (online, running a release that declares it), the
//! request through that host's agent and what its answer and its later
//! updates leave in the store.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use cutover_core::data_migration::{Entry, Record, Required, Status, Verify};
use cutover_core::manifest::Manifest;
use cutover_proto::v1;

use crate::error::{Error, Result};
use crate::Controller;

/// How long the controller waits for an agent's answer: above the agent's
/// default `data_migrate_timeout` (60 s), which bounds every command but
/// `run`, and `run` answers at once.
const ANSWER_WITHIN: Duration = Duration::from_secs(150);

/// One declared migration, gathered over the stored releases.
#[derive(Debug, Clone)]
struct Declared {
    service: String,
    id: String,
    database: String,
    description: String,
    declared_in: Vec<semver::Version>,
    contract_of: Vec<semver::Version>,
    upgrade_to: Option<semver::Version>,
}

impl Declared {
    fn key(&self) -> String {
        format!("{}.{}", self.service, self.id)
    }
}

/// Every stored release's manifest (verified at import; parsed again).
/// One that no longer parses is skipped with a warning: it cannot be
/// planned either.
async fn manifests(c: &Controller) -> Result<Vec<Manifest>> {
    let stored = c.store.run(|s| s.releases()).await?;
    let mut out = Vec::new();
    for r in stored {
        match std::str::from_utf8(&r.manifest)
            .map_err(|e| e.to_string())
            .and_then(|t| Manifest::parse(t).map_err(|e| e.to_string()))
        {
            Ok(m) => out.push(m),
            Err(e) => {
                tracing::warn!(release = %r.version, error = %e, "stored manifest unreadable; its data migrations are not listed")
            }
        }
    }
    out.sort_by(|a, b| a.version.cmp(&b.version));
    Ok(out)
}

/// What the releases up to `to` (all: `None`) declare, by (service, id).
fn catalog(
    manifests: &[Manifest],
    to: Option<&semver::Version>,
) -> BTreeMap<(String, String), Declared> {
    let mut out: BTreeMap<(String, String), Declared> = BTreeMap::new();
    for m in manifests
        .iter()
        .filter(|m| to.is_none_or(|t| &m.version <= t))
    {
        for (s, d) in m.data_migrations() {
            let e = out
                .entry((s.name.clone(), d.id.clone()))
                .or_insert_with(|| Declared {
                    service: s.name.clone(),
                    id: d.id.clone(),
                    database: d.database.clone(),
                    description: d.description.clone(),
                    declared_in: Vec::new(),
                    contract_of: Vec::new(),
                    upgrade_to: None,
                });
            // The newest release's words describe it.
            e.description = d.description.clone();
            e.database = d.database.clone();
            e.declared_in.push(m.version.clone());
            if m.required_before_contract(&d.database)
                .iter()
                .any(|(x, y)| x.name == s.name && y.id == d.id)
            {
                e.contract_of.push(m.version.clone());
            }
            if let Some(v) = &d.required_before_upgrade_to {
                if e.upgrade_to.as_ref().is_none_or(|u| v < u) {
                    e.upgrade_to = Some(v.clone());
                }
            }
        }
    }
    out
}

/// `SERVICE.ID` split and checked.
fn parse_key(key: &str) -> Result<(String, String)> {
    let (service, id) = key
        .split_once('.')
        .filter(|(s, _)| !s.is_empty())
        .ok_or_else(|| {
            Error::Invalid(format!(
            "{} is not SERVICE.ID (e.g. orders.backfill_prices); see `cutover data-migrate list`",
            cutover_core::text::shown(key, 80)
        ))
        })?;
    // A service name may hold dots; an id may not: the last dot splits.
    let (service, id) = key.rsplit_once('.').unwrap_or((service, id));
    cutover_core::names::validate("service", service).map_err(|e| Error::Invalid(e.to_string()))?;
    cutover_core::manifest::data_migrations::check_id(id).map_err(Error::Invalid)?;
    Ok((service.to_string(), id.to_string()))
}

async fn records(c: &Controller) -> Result<BTreeMap<(String, String), Record>> {
    let all = c.store.run(|s| s.data_migrations()).await?;
    let mut out = BTreeMap::new();
    for r in all {
        let r = r?;
        out.insert((r.service.clone(), r.id.clone()), r);
    }
    Ok(out)
}

fn entry(d: &Declared, record: Option<Record>) -> Entry {
    let ready = Record::ready(&d.key(), record.as_ref());
    Entry {
        service: d.service.clone(),
        id: d.id.clone(),
        database: d.database.clone(),
        description: d.description.clone(),
        declared_in: d.declared_in.iter().map(ToString::to_string).collect(),
        required_before_contract_of: d.contract_of.iter().map(ToString::to_string).collect(),
        required_before_upgrade_to: d.upgrade_to.as_ref().map(ToString::to_string),
        record,
        ready: ready.is_ok(),
        not_ready: ready.err(),
    }
}

/// `cutover data-migrate list` (every one) and `status KEY` (that one,
/// asked of its host first when one is online).
pub async fn list(c: &Arc<Controller>, r: v1::DataMigrationsRequest) -> Result<Vec<Entry>> {
    let to = match r.to_version.as_str() {
        "" => None,
        v => Some(
            semver::Version::parse(&super::rollouts::resolve(c, v).await?)
                .map_err(|e| Error::Invalid(format!("--to-version {v:?}: {e}")))?,
        ),
    };
    let declared = catalog(&manifests(c).await?, to.as_ref());
    if !r.key.is_empty() {
        let key = parse_key(&r.key)?;
        let d = known(&declared, &key)?.clone();
        if let Ok(host) = pick_host(c, &d, "").await {
            let _ = ask(c, &host, &d, v1::DataMigrateAction::Status, false).await;
        }
        let record = c
            .store
            .run(move |s| s.data_migration(&key.0, &key.1))
            .await?;
        return Ok(vec![entry(&d, record)]);
    }
    let mut records = records(c).await?;
    Ok(declared
        .values()
        .map(|d| entry(d, records.remove(&(d.service.clone(), d.id.clone()))))
        .collect())
}

fn known<'a>(
    declared: &'a BTreeMap<(String, String), Declared>,
    key: &(String, String),
) -> Result<&'a Declared> {
    declared.get(key).ok_or_else(|| {
        let names: Vec<String> = declared.values().take(10).map(Declared::key).collect();
        Error::NotFound(format!(
            "no imported release declares data migration {}.{}{}",
            key.0,
            key.1,
            if names.is_empty() {
                "; no release declares any".to_string()
            } else {
                format!("; declared: {}", names.join(", "))
            }
        ))
    })
}

/// The host to ask: `wanted`, or the one that ran it last, or any online
/// host running a release of the service that declares it. Each must be
/// online and run such a release.
async fn pick_host(c: &Arc<Controller>, d: &Declared, wanted: &str) -> Result<String> {
    let hosts = crate::fleet_view::host_states(c).await?;
    let now = cutover_core::views::now_ms();
    let releases: Vec<String> = d.declared_in.iter().map(ToString::to_string).collect();
    let runs = |h: &crate::rollout::plan::HostState| {
        h.installed
            .iter()
            .find(|s| s.name == d.service)
            .and_then(|s| s.current.as_ref())
            .map(|cur| cur.release.clone())
    };
    let online = |name: &str| c.sessions.get(name).is_some_and(|s| s.is_live(now));
    let fit = |h: &crate::rollout::plan::HostState| {
        !h.revoked && online(&h.name) && runs(h).is_some_and(|r| releases.contains(&r))
    };
    if !wanted.is_empty() {
        let h = hosts
            .iter()
            .find(|h| h.name == wanted)
            .ok_or_else(|| Error::NotFound(format!("host {wanted:?} is not enrolled")))?;
        if !online(wanted) {
            return Err(Error::Unavailable(format!(
                "host {wanted} is offline; pick an online one with --host, or leave --host out"
            )));
        }
        return match runs(h) {
            Some(r) if releases.contains(&r) => Ok(wanted.to_string()),
            Some(r) => Err(Error::Refused(format!("host {wanted} runs {} of release {r}, which does not declare {}; releases that do: {}", d.service, d.key(), releases.join(", ")))),
            None => Err(Error::Refused(format!("host {wanted} does not run {}", d.service))),
        };
    }
    let key = (d.service.clone(), d.id.clone());
    let last = c
        .store
        .run(move |s| s.data_migration(&key.0, &key.1))
        .await?
        .and_then(|r| r.host);
    if let Some(h) = last
        .and_then(|l| hosts.iter().find(|h| h.name == l))
        .filter(|h| fit(h))
    {
        return Ok(h.name.clone());
    }
    if let Some(h) = hosts.iter().find(|h| fit(h)) {
        return Ok(h.name.clone());
    }
    let running: Vec<String> = hosts
        .iter()
        .filter_map(|h| {
            runs(h).map(|r| {
                format!(
                    "{} (release {r}, {})",
                    h.name,
                    if online(&h.name) { "online" } else { "offline" }
                )
            })
        })
        .take(5)
        .collect();
    Err(Error::Unavailable(format!(
        "no online host runs {} at a release that declares {} ({}); hosts running it: {}",
        d.service,
        d.key(),
        releases.join(", "),
        if running.is_empty() {
            "none".to_string()
        } else {
            running.join(", ")
        }
    )))
}

/// Asks `host`'s agent and records its answer. An agent that cannot be
/// reached records nothing (what was stored stays) and is an error.
async fn ask(
    c: &Arc<Controller>,
    host: &str,
    d: &Declared,
    action: v1::DataMigrateAction,
    dry_run: bool,
) -> Result<Record> {
    let body = v1::request::Body::DataMigrate(v1::DataMigrateRequest {
        service: d.service.clone(),
        id: d.id.clone(),
        action: action as i32,
        dry_run,
    });
    let asked = time::OffsetDateTime::now_utc();
    let reply = c.sessions.request(host, body, ANSWER_WITHIN).await?;
    let json = match reply {
        v1::reply::Body::DataMigrationJson(j) => Ok(j),
        v1::reply::Body::Error(e) => Err(e),
        _ => Err("the agent answered something else".to_string()),
    };
    let (host, key) = (host.to_string(), (d.service.clone(), d.id.clone()));
    if action == v1::DataMigrateAction::Verify {
        let verify = json
            .and_then(|j| {
                serde_json::from_str::<Verify>(&j)
                    .map_err(|e| format!("malformed verify from the agent: {e}"))
            })
            .map(Verify::bound)
            .unwrap_or_else(Verify::failed);
        return c
            .store
            .run(move |s| s.verified_data_migration(&host, (&key.0, &key.1), verify, asked))
            .await;
    }
    let status = json
        .and_then(|j| {
            serde_json::from_str::<Status>(&j)
                .map_err(|e| format!("malformed status from the agent: {e}"))
        })
        .map(Status::bound)
        .unwrap_or_else(Status::unknown);
    let dry = status.would_move.is_some();
    let record = c
        .store
        .run(move |s| {
            s.observe_data_migration(&host, (&key.0, &key.1), status.clone())
                .map(|mut r| {
                    if dry {
                        // The answer itself and who gave it, not the
                        // (unchanged) record's.
                        r.status = status;
                        r.host = Some(host);
                    }
                    r
                })
        })
        .await?;
    Ok(record)
}

/// `cutover data-migrate run|verify|pause|resume KEY`.
pub async fn act(
    c: &Arc<Controller>,
    operator: &str,
    r: v1::OperatorDataMigrateRequest,
) -> Result<Entry> {
    use v1::DataMigrateAction as A;
    let action = match A::try_from(r.action) {
        Ok(a @ (A::Run | A::Verify | A::Pause | A::Resume)) => a,
        _ => {
            return Err(Error::Invalid(format!(
            "data-migrate action {} is not one this controller knows (run, verify, pause, resume)",
            r.action
        )))
        }
    };
    if !r.host.is_empty() {
        cutover_core::names::validate("host", &r.host)
            .map_err(|e| Error::Invalid(e.to_string()))?;
    }
    let key = parse_key(&r.key)?;
    let declared = catalog(&manifests(c).await?, None);
    let d = known(&declared, &key)?.clone();
    let host = pick_host(c, &d, &r.host).await?;
    let what = match (action, r.dry_run) {
        (A::Run, true) => "dry run",
        (A::Run, false) => "run",
        (A::Verify, _) => "verify",
        (A::Pause, _) => "pause",
        _ => "resume",
    };
    let (o, h, k) = (operator.to_string(), host.clone(), key.clone());
    c.store
        .run(move |s| s.data_migration_requested(&o, &h, (&k.0, &k.1), what))
        .await?;
    let record = ask(c, &host, &d, action, r.dry_run && action == A::Run).await?;
    Ok(entry(&d, Some(record)))
}

/// An update from the agent following a run. Refused (logged) when the
/// host does not run the service or the document is off the protocol.
pub async fn update(c: &Controller, host: &str, u: v1::DataMigrationUpdate) {
    let checked = cutover_core::names::validate("service", &u.service)
        .map_err(|e| e.to_string())
        .and_then(|_| cutover_core::manifest::data_migrations::check_id(&u.id))
        .and_then(|_| serde_json::from_str::<Status>(&u.status_json).map_err(|e| e.to_string()));
    let status = match checked {
        Ok(s) => s.bound(),
        Err(e) => {
            tracing::warn!(%host, error = %e, "ignored malformed data migration update");
            return;
        }
    };
    let (h, service, id) = (host.to_string(), u.service, u.id);
    let result = c
        .store
        .run(move |s| {
            if !s.host_runs(&h, &service)? {
                return Err(Error::Refused(format!("host {h} reported data migration {service}.{id}, but it does not run {service}")));
            }
            s.followed_data_migration(&h, (&service, &id), status)
        })
        .await;
    if let Err(e) = result {
        tracing::warn!(%host, error = %e, "data migration update not recorded");
    }
}

/// The data migrations a plan of release `m` for `services` (empty: all)
/// waits for or shows: those its contracts require, and those required
/// before an upgrade to it, of the services it moves or the databases
/// they own. `Err` names the first that blocks the upgrade.
pub(super) async fn plan_gate(
    c: &Arc<Controller>,
    m: &Manifest,
    services: &[String],
) -> Result<Vec<Required>> {
    let moving: Vec<&cutover_core::manifest::Service> = m
        .services
        .iter()
        .filter(|s| services.is_empty() || services.contains(&s.name))
        .collect();
    let databases: Vec<&str> = moving
        .iter()
        .flat_map(|s| s.databases.iter().map(String::as_str))
        .collect();
    let all = manifests(c).await?;
    let declared = catalog(&all, Some(&m.version));
    if declared.is_empty() {
        return Ok(Vec::new());
    }
    let records = records(c).await?;
    let version = m.version.to_string();
    let mut out = Vec::new();
    let mut blocked: Option<String> = None;
    for d in declared.values() {
        let record = records.get(&(d.service.clone(), d.id.clone()));
        let ready = Record::ready(&d.key(), record);
        let mut before = Vec::new();
        if d.contract_of.contains(&m.version) {
            before.push(format!("contract of {version}"));
        }
        let concerned =
            moving.iter().any(|s| s.name == d.service) || databases.contains(&d.database.as_str());
        if let Some(v) = d
            .upgrade_to
            .as_ref()
            .filter(|v| *v <= &m.version && concerned)
        {
            before.push(format!("upgrade to {v}"));
            if let (Err(why), None) = (&ready, &blocked) {
                blocked = Some(format!(
                    "release {version} cannot be planned: data migration {} must be done before an upgrade to {v}, and it {why}",
                    d.key()
                ));
            }
        }
        if before.is_empty() {
            continue;
        }
        out.push(Required {
            key: d.key(),
            database: d.database.clone(),
            before: before.join(", "),
            state: record.map(|r| r.status.state),
            ready: ready.is_ok(),
            not_ready: ready.err(),
        });
    }
    match blocked {
        Some(why) => Err(Error::Refused(why)),
        None => Ok(out),
    }
}

/// What the contract of `m` for `database` waits for, as the gate reads it.
pub(super) async fn contract_needs(
    c: &Arc<Controller>,
    m: &Manifest,
    database: &str,
) -> Result<Vec<(String, Option<Record>)>> {
    let needs: Vec<(String, String)> = m
        .required_before_contract(database)
        .into_iter()
        .map(|(s, d)| (s.name.clone(), d.id.clone()))
        .collect();
    if needs.is_empty() {
        return Ok(Vec::new());
    }
    let mut records = records(c).await?;
    Ok(needs
        .into_iter()
        .map(|k| (format!("{}.{}", k.0, k.1), records.remove(&k)))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_service_dot_id_and_checked() {
        assert_eq!(
            parse_key("orders.backfill_prices").unwrap(),
            ("orders".into(), "backfill_prices".into())
        );
        assert_eq!(
            parse_key("eu.orders.backfill").unwrap(),
            ("eu.orders".into(), "backfill".into())
        );
        for bad in ["orders", ".x", "orders.", "orders.Bad", "a b.c"] {
            assert!(parse_key(bad).is_err(), "{bad}");
        }
    }
}
