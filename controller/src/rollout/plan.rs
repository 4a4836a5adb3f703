//! Planning: from a verified release, the fleet config and what every host
//! reports it runs, the steps a rollout takes. Pure; the caller gathers the
//! inputs and verifies the release first.

use std::collections::HashMap;
use std::sync::Arc;

use cutover_core::fleet::{FleetConfig, ServiceConfig};
use cutover_core::manifest::Manifest;
use cutover_core::rollout::{
    Carried, CarriedCode, HostMove, HostTarget, ImageTarget, Plan, ServicePlan,
};
use cutover_core::views::{ContentIdentity, InstalledService};

/// One host as the planner sees it.
#[derive(Debug, Clone)]
pub struct HostState {
    pub name: String,
    pub online: bool,
    pub revoked: bool,
    pub installed: Vec<InstalledService>,
}

pub struct PlanRequest<'a> {
    pub manifest: &'a Manifest,
    pub fleet: &'a FleetConfig,
    pub hosts: &'a [HostState],
    /// Empty: every service of the release that the fleet runs.
    pub services: &'a [String],
    pub allow_offline: bool,
    /// All hosts in one batch, no canary (the instant path of a rollback).
    pub instant: bool,
}

/// Why no plan could be made; the message says what to do.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct PlanError(pub String);

/// The service's settings as every install command carries them: which
/// hosts and labels select it is the controller's business, and at fleet
/// size that list would otherwise be copied into every command.
pub fn for_agents(config: &ServiceConfig) -> ServiceConfig {
    ServiceConfig {
        hosts: Vec::new(),
        labels: Vec::new(),
        ..config.clone()
    }
}

pub fn plan(req: &PlanRequest<'_>) -> Result<Plan, PlanError> {
    let m = req.manifest;
    let release = m.version.to_string();
    let err = |msg: String| PlanError(format!("release {release}: {msg}"));
    for s in req.services {
        if !m.services.iter().any(|x| &x.name == s) {
            return Err(err(format!("has no service {s:?}")));
        }
        if !req.fleet.services.contains_key(s) {
            return Err(err(format!(
                "service {s:?} is not in the fleet config; add it with `cutover fleet apply`"
            )));
        }
    }
    let hosts: HashMap<&str, usize> = req
        .hosts
        .iter()
        .enumerate()
        .map(|(i, h)| (h.name.as_str(), i))
        .collect();
    // What each host runs of each service, gathered in one pass: at fleet
    // size a search of every host's inventory per service dominates.
    let mut running: HashMap<&str, Vec<Option<&ContentIdentity>>> = HashMap::new();
    for (i, h) in req.hosts.iter().enumerate() {
        for s in &h.installed {
            running
                .entry(s.name.as_str())
                .or_insert_with(|| vec![None; req.hosts.len()])[i] = s.current.as_ref();
        }
    }
    // Once per host, not once per (host, service): it parses every
    // release the host reports.
    let floors: Vec<Result<(), String>> = req.hosts.iter().map(|h| check_floor(m, h)).collect();
    let levels = m.levels().map_err(err)?;
    let mut out = Plan {
        release: release.clone(),
        services: Vec::new(),
        carried: Vec::new(),
        offline: Vec::new(),
        skipped: Vec::new(),
        migrations: Vec::new(),
        data_migrations: Vec::new(),
    };
    // Offline hosts that must move, marked by index: at fleet size a set
    // of names searched per (host, service) dominates.
    let mut offline = vec![false; req.hosts.len()];
    type Selection<'a> = (&'a Vec<String>, &'a Vec<String>);
    let mut selections: HashMap<Selection<'_>, Result<Vec<usize>, String>> = HashMap::new();
    for (level, names) in levels.iter().enumerate() {
        for name in names {
            let svc = m
                .services
                .iter()
                .find(|s| &s.name == name)
                .expect("levels come from services");
            let selected = req.services.is_empty() || req.services.contains(name);
            let Some(config) = req.fleet.services.get(name).filter(|_| selected) else {
                if selected {
                    out.carried.push(Carried {
                        service: name.clone(),
                        service_version: svc.service_version.clone(),
                        code: CarriedCode::NotAssigned,
                        reason: "not assigned to any host in the fleet config".into(),
                    });
                }
                continue;
            };
            let docker = config.runner == cutover_core::fleet::RunnerKind::Docker;
            let HostTarget {
                identity: target,
                sha256,
                size,
                image,
            } = service_target(&release, svc, config).map_err(err)?;
            // Services selected the same way run on the same hosts: at
            // fleet size, resolving each selection once saves a name
            // lookup per (host, service).
            let selected = selections
                .entry((&config.labels, &config.hosts))
                .or_insert_with(|| {
                    req.fleet
                        .hosts_of(name)
                        .into_iter()
                        .map(|host| hosts.get(host.as_str()).copied().ok_or(host))
                        .collect::<Result<Vec<usize>, String>>()
                })
                .as_ref()
                .map_err(|host| {
                    err(format!(
                        "the fleet config runs {name:?} on host {host:?}, which is not enrolled; enroll it or remove it from the fleet config"
                    ))
                })?;
            // A canary larger than the service's hosts would put every
            // host in the first batch: no canary at all. Refused, not
            // clamped: the safe default is that the operator decides.
            let canary = config.policy.canary;
            if !req.instant && canary > selected.len() {
                return Err(err(format!(
                    "service {name:?} has policy.canary = {canary} but the fleet config runs it on {} host(s); set canary to at most {} in the fleet config",
                    selected.len(),
                    selected.len().max(1)
                )));
            }
            let mut moves = Vec::with_capacity(selected.len());
            let mut unchanged = Vec::new();
            let mut shared: Option<Arc<ContentIdentity>> = None;
            let running = running.get(name.as_str());
            for &i in selected {
                let h = &req.hosts[i];
                let host = &h.name;
                if h.revoked {
                    return Err(err(format!(
                        "the fleet config runs {name:?} on host {host:?}, which is revoked; remove it from the fleet config"
                    )));
                }
                let current = running.and_then(|r| r[i]);
                let at_target = match &current {
                    Some(c) if docker => c.image_id == target.image_id,
                    Some(c) => c.tarball_sha256 == target.tarball_sha256,
                    None => false,
                };
                if at_target {
                    unchanged.push(host.clone());
                    continue;
                }
                if let Err(e) = &floors[i] {
                    return Err(err(e.clone()));
                }
                if !h.online {
                    offline[i] = true;
                }
                // Hosts that run the same identity share one copy of it.
                let from = current.map(|c| match &shared {
                    Some(s) if **s == *c => s.clone(),
                    _ => shared.insert(Arc::new(c.clone())).clone(),
                });
                moves.push(HostMove {
                    host: host.clone(),
                    from,
                    to: None,
                });
            }
            if moves.is_empty() {
                out.carried.push(Carried {
                    service: name.clone(),
                    service_version: svc.service_version.clone(),
                    code: CarriedCode::AtTarget,
                    reason: format!("already at the target on all {} host(s)", unchanged.len()),
                });
                continue;
            }
            out.services.push(ServicePlan {
                service: name.clone(),
                level,
                target,
                sha256,
                size,
                batches: batches(moves, config, req.instant),
                unchanged,
                config: for_agents(config),
                image,
                swap_back: false,
            });
        }
    }
    let mut offline: Vec<String> = req
        .hosts
        .iter()
        .zip(offline)
        .filter(|(_, off)| *off)
        .map(|(h, _)| h.name.clone())
        .collect();
    offline.sort_unstable();
    if !offline.is_empty() && !req.allow_offline {
        return Err(err(format!(
            "host(s) offline: {}; bring them back or pass --allow-offline (their steps wait for them until the step deadline)",
            offline.join(", ")
        )));
    }
    out.offline = offline;
    Ok(out)
}

fn batches(
    moves: Vec<HostMove>,
    config: &cutover_core::fleet::ServiceConfig,
    instant: bool,
) -> Vec<Vec<HostMove>> {
    if instant {
        return vec![moves];
    }
    // Each move is moved once, into its batch.
    let canary = config.policy.canary.min(moves.len());
    let size = config.policy.batch_size();
    let mut out = Vec::with_capacity(2 + moves.len() / size);
    let mut moves = moves.into_iter();
    out.push(moves.by_ref().take(canary).collect());
    while moves.len() > 0 {
        out.push(moves.by_ref().take(size).collect());
    }
    out
}

/// The lowest release a host runs, from its services' identities.
fn host_release(h: &HostState) -> Option<semver::Version> {
    let mut lowest: Option<semver::Version> = None;
    let mut last: Option<&str> = None;
    for c in h.installed.iter().filter_map(|i| i.current.as_ref()) {
        // A host's services mostly come from one release: parse it once.
        if last == Some(c.release.as_str()) {
            continue;
        }
        last = Some(&c.release);
        if let Ok(v) = semver::Version::parse(&c.release) {
            if lowest.as_ref().is_none_or(|l| v < *l) {
                lowest = Some(v);
            }
        }
    }
    lowest
}

/// The compatibility floor and required intermediate releases. Going down
/// (a rollback to an older release) is not an upgrade and is not checked.
fn check_floor(m: &Manifest, h: &HostState) -> Result<(), String> {
    let Some(from) = host_release(h) else {
        return Ok(());
    };
    if from >= m.version {
        return Ok(());
    }
    if let Some(floor) = &m.min_upgrade_from {
        if &from < floor {
            return Err(format!(
                "host {:?} runs release {from}, below this release's compatibility floor {floor}; upgrade it to {floor} or later first",
                h.name
            ));
        }
    }
    for step in &m.requires_intermediate {
        if &from < step {
            return Err(format!(
                "host {:?} runs release {from}; release {} requires {step} to be installed first: upgrade to {step}, then to {}",
                h.name, m.version, m.version
            ));
        }
    }
    Ok(())
}

/// What hosts of `svc` install for release `release` under `config`: the
/// image for the docker runner, the tarball otherwise.
pub fn service_target(
    release: &str,
    svc: &cutover_core::manifest::Service,
    config: &ServiceConfig,
) -> Result<HostTarget, String> {
    let name = &svc.name;
    if config.runner == cutover_core::fleet::RunnerKind::Docker {
        let Some(img) = &svc.image else {
            return Err(format!(
                "service {name:?} runs with runner \"docker\" but the release pins no image for it"
            ));
        };
        let (sha256, size) = img
            .tarball
            .as_ref()
            .map(|t| (t.sha256, t.size))
            .unwrap_or((img.id, 0));
        return Ok(HostTarget {
            identity: ContentIdentity {
                release: release.to_string(),
                service_version: svc.service_version.clone(),
                tarball_sha256: None,
                image_id: Some(img.id),
            },
            sha256,
            size,
            image: Some(ImageTarget {
                id: img.id,
                reference: img.reference.clone(),
            }),
        });
    }
    let Some(tarball) = &svc.tarball else {
        return Err(format!(
            "service {name:?} ships only a container image, which the {:?} runner cannot install; use runner = \"docker\"",
            config.runner
        ));
    };
    Ok(HostTarget {
        identity: ContentIdentity {
            release: release.to_string(),
            service_version: svc.service_version.clone(),
            tarball_sha256: Some(tarball.sha256),
            image_id: None,
        },
        sha256: tarball.sha256,
        size: tarball.size,
        image: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(extra: &str) -> Manifest {
        let sha = |c: char| c.to_string().repeat(64);
        crate::testing::manifest(&format!(
            r#"
{extra}
[[services]]
name = "db"
service_version = "14"
tarball = {{ sha256 = "{}", size = 10, file = "db.tgz" }}
[[services]]
name = "api"
service_version = "2"
depends_on = ["db"]
tarball = {{ sha256 = "{}", size = 10, file = "api.tgz" }}
"#,
            sha('a'),
            sha('b')
        ))
    }

    fn fleet() -> FleetConfig {
        FleetConfig::parse(
            "f.toml",
            r#"
[hosts.h1]
labels = ["all"]
[hosts.h2]
labels = ["all"]
[hosts.h3]
labels = ["all"]
[hosts.h4]
labels = ["all"]
[services.db]
labels = ["all"]
runner = "process"
command = "bin/db"
[services.api]
labels = ["all"]
runner = "process"
command = "bin/api"
[services.api.policy]
max_parallel = 2
max_unavailable = 2
"#,
        )
        .unwrap()
    }

    fn host(name: &str, online: bool, running: &[(&str, &str, char)]) -> HostState {
        HostState {
            name: name.into(),
            online,
            revoked: false,
            installed: running
                .iter()
                .map(|(svc, release, c)| InstalledService {
                    name: svc.to_string(),
                    current: Some(ContentIdentity {
                        release: release.to_string(),
                        service_version: "x".into(),
                        tarball_sha256: Some(c.to_string().repeat(64).parse().unwrap()),
                        image_id: None,
                    }),
                    previous: None,
                    state: "running".into(),
                    health: Default::default(),
                })
                .collect(),
        }
    }

    fn req<'a>(m: &'a Manifest, f: &'a FleetConfig, hosts: &'a [HostState]) -> PlanRequest<'a> {
        PlanRequest {
            manifest: m,
            fleet: f,
            hosts,
            services: &[],
            allow_offline: false,
            instant: false,
        }
    }

    #[test]
    fn orders_services_by_dependency_and_hosts_in_canary_then_batches() {
        let (m, f) = (manifest(""), fleet());
        let hosts: Vec<_> = ["h1", "h2", "h3", "h4"]
            .iter()
            .map(|h| host(h, true, &[]))
            .collect();
        let p = plan(&req(&m, &f, &hosts)).unwrap();
        let names: Vec<_> = p
            .services
            .iter()
            .map(|s| (s.service.as_str(), s.level))
            .collect();
        assert_eq!(names, [("db", 0), ("api", 1)]);
        let api: Vec<Vec<&str>> = p.services[1]
            .batches
            .iter()
            .map(|b| b.iter().map(|m| m.host.as_str()).collect())
            .collect();
        assert_eq!(api, [vec!["h1"], vec!["h2", "h3"], vec!["h4"]]);
        assert_eq!(
            p.services[0].batches.len(),
            4,
            "db: canary then batches of one"
        );
        // Which hosts and labels select a service is the controller's
        // business: every install command carries this config.
        let config = &p.services[1].config;
        assert!(config.hosts.is_empty() && config.labels.is_empty());
        assert_eq!(config.command.as_deref(), Some("bin/api"));
        assert_eq!(config.policy.max_parallel, 2);
    }

    #[test]
    fn hosts_at_the_target_are_carried() {
        let (m, f) = (manifest(""), fleet());
        let hosts: Vec<_> = ["h1", "h2", "h3", "h4"]
            .iter()
            .map(|h| host(h, true, &[("db", "2.0.0", 'a'), ("api", "1.0.0", 'c')]))
            .collect();
        let p = plan(&req(&m, &f, &hosts)).unwrap();
        assert_eq!(p.services.len(), 1);
        assert_eq!(p.services[0].service, "api");
        assert_eq!(p.carried[0].service, "db");
        assert!(p.carried[0].reason.contains("all 4"), "{:?}", p.carried);
    }

    #[test]
    fn offline_hosts_fail_the_plan_unless_allowed() {
        let (m, f) = (manifest(""), fleet());
        let mut hosts: Vec<_> = ["h1", "h2", "h3", "h4"]
            .iter()
            .map(|h| host(h, true, &[]))
            .collect();
        hosts[2].online = false;
        let e = plan(&req(&m, &f, &hosts)).unwrap_err().to_string();
        assert!(
            e.contains("offline: h3") && e.contains("--allow-offline"),
            "{e}"
        );
        let mut r = req(&m, &f, &hosts);
        r.allow_offline = true;
        assert_eq!(plan(&r).unwrap().offline, ["h3"]);
    }

    #[test]
    fn refuses_below_floor_and_without_intermediate() {
        let f = fleet();
        let hosts: Vec<_> = ["h1", "h2", "h3", "h4"]
            .iter()
            .map(|h| host(h, true, &[("db", "1.0.0", 'c')]))
            .collect();
        let m = manifest("min_upgrade_from = \"1.5.0\"");
        let e = plan(&req(&m, &f, &hosts)).unwrap_err().to_string();
        assert!(
            e.contains("runs release 1.0.0, below this release's compatibility floor 1.5.0"),
            "{e}"
        );
        let m = manifest("requires_intermediate = [\"1.5.0\"]");
        let e = plan(&req(&m, &f, &hosts)).unwrap_err().to_string();
        assert!(e.contains("requires 1.5.0 to be installed first"), "{e}");
    }

    #[test]
    fn services_selected_differently_each_get_their_own_hosts() {
        let mut f = fleet();
        // db: labelled hosts plus a named one; api: the label alone.
        f.services.get_mut("db").unwrap().hosts = vec!["h5".into()];
        f.hosts.remove("h4");
        let hosts: Vec<_> = ["h1", "h2", "h3", "h4", "h5"]
            .iter()
            .map(|h| host(h, true, &[]))
            .collect();
        let p = plan(&req(&manifest(""), &f, &hosts)).unwrap();
        let moved = |i: usize| -> Vec<String> {
            let s: &ServicePlan = &p.services[i];
            s.batches.iter().flatten().map(|m| m.host.clone()).collect()
        };
        assert_eq!(p.services[0].service, "db");
        assert_eq!(moved(0), ["h1", "h2", "h3", "h5"]);
        assert_eq!(moved(1), ["h1", "h2", "h3"]);
    }

    #[test]
    fn a_canary_larger_than_the_services_hosts_is_refused_naming_both() {
        let m = manifest("");
        let mut f = fleet();
        f.services.get_mut("api").unwrap().policy.canary = 5;
        let hosts: Vec<_> = ["h1", "h2", "h3", "h4"]
            .iter()
            .map(|h| host(h, true, &[]))
            .collect();
        let e = plan(&req(&m, &f, &hosts)).unwrap_err().to_string();
        assert!(
            e.contains("service \"api\" has policy.canary = 5 but the fleet config runs it on 4 host(s); set canary to at most 4"),
            "{e}"
        );
        // Equal is a canary of every host, which the operator asked for;
        // hosts already at the target still count as the service's hosts.
        f.services.get_mut("api").unwrap().policy.canary = 4;
        let mut at_target = hosts.clone();
        at_target[3] = host("h4", true, &[("api", "2.0.0", 'b')]);
        let p = plan(&req(&m, &f, &at_target)).unwrap();
        let api = p.services.iter().find(|s| s.service == "api").unwrap();
        assert_eq!(api.batches.len(), 1);
        assert_eq!(api.batches[0].len(), 3);
        // The instant path of a rollback has no canary to check.
        f.services.get_mut("api").unwrap().policy.canary = 9;
        let mut r = req(&m, &f, &hosts);
        r.instant = true;
        assert!(plan(&r).is_ok());
    }

    #[test]
    fn unknown_and_unenrolled_are_named() {
        let (m, f) = (manifest(""), fleet());
        let hosts = vec![host("h1", true, &[])];
        let e = plan(&req(&m, &f, &hosts)).unwrap_err().to_string();
        assert!(e.contains("host \"h2\", which is not enrolled"), "{e}");
        let svc = ["web".to_string()];
        let mut r = req(&m, &f, &hosts);
        r.services = &svc;
        assert!(plan(&r)
            .unwrap_err()
            .to_string()
            .contains("has no service \"web\""));
    }
}
