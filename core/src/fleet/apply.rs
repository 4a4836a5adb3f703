//! What `cutover fleet apply` checks a fleet config against before the
//! controller stores it, and what it reports: a service that selects no
//! enrolled host (refused unless the operator allows it), a host the
//! config names that never enrolled or is revoked, a label no host
//! carries, each with the nearest real name when one is close; and what
//! changed since the stored config. Pure: the controller gives it the
//! enrolled hosts. Every list it returns is bounded.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::{Deserialize, Serialize};

use super::{FleetConfig, ServiceConfig};
use crate::suggest::nearest;
use crate::text::shown;

/// Longest list of names a report carries (the count is always whole).
pub const MAX_LISTED: usize = 1_000;
/// Longest list of hosts one changed service carries.
pub const MAX_LISTED_PER_SERVICE: usize = 20;
/// Changed services a report details.
pub const MAX_CHANGED_LISTED: usize = 200;
/// Warnings a report carries.
pub const MAX_WARNINGS: usize = 100;
/// Names looked up for a suggestion in one check (each lookup compares
/// against every candidate).
pub const MAX_SUGGESTIONS: usize = 10;
/// Services with an empty selection that a refusal names.
const MAX_REFUSAL_NAMED: usize = 3;

/// The hosts the controller knows, by name.
#[derive(Debug, Default, Clone)]
pub struct Enrolled {
    /// Enrolled and not revoked.
    pub active: BTreeSet<String>,
    pub revoked: BTreeSet<String>,
}

/// A bounded list of names: `count` of them, the first [`MAX_LISTED`] (or
/// fewer) in `names`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Names {
    pub count: usize,
    pub names: Vec<String>,
}

impl Names {
    fn of<'a>(names: impl IntoIterator<Item = &'a str>, max: usize) -> Names {
        let mut out = Names::default();
        for n in names {
            if out.names.len() < max {
                out.names.push(n.to_string());
            }
            out.count += 1;
        }
        out
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
}

/// One service present before and after, changed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceChange {
    pub service: String,
    /// The service's keys whose values changed (`policy`, `checks`, …).
    pub keys: Vec<String>,
    /// Hosts its selection gained and lost.
    pub hosts_added: Names,
    pub hosts_removed: Names,
}

/// What an apply changes, against the stored config.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Changes {
    /// No config was stored before.
    pub first: bool,
    pub services_added: Names,
    pub services_removed: Names,
    /// How many services changed; the first [`MAX_CHANGED_LISTED`] are
    /// in `services_changed`.
    pub services_changed_count: usize,
    pub services_changed: Vec<ServiceChange>,
    /// Hosts that run a service now and did not, and the reverse.
    pub hosts_added: Names,
    pub hosts_removed: Names,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.services_added.is_empty()
            && self.services_removed.is_empty()
            && self.services_changed_count == 0
            && self.hosts_added.is_empty()
            && self.hosts_removed.is_empty()
    }
}

/// What `cutover fleet apply` prints (`-o json`: this document).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplyReport {
    pub file: String,
    /// `--dry-run`: checked and compared, not stored.
    pub dry_run: bool,
    pub stored: bool,
    pub services: usize,
    pub hosts_with_labels: usize,
    pub changes: Changes,
    pub warnings: Names,
}

/// A service whose selection holds no enrolled host, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmptySelection {
    pub service: String,
    pub why: String,
}

/// The outcome of [`check`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Findings {
    pub empty: Vec<EmptySelection>,
    pub warnings: Vec<String>,
}

impl Findings {
    /// The one-line refusal of a config with empty selections, if any.
    pub fn refusal(&self) -> Option<String> {
        let first = self.empty.first()?;
        let mut line = if self.empty.len() == 1 {
            format!(
                "services.{} selects no enrolled host: {}",
                first.service, first.why
            )
        } else {
            let named: Vec<String> = self
                .empty
                .iter()
                .take(MAX_REFUSAL_NAMED)
                .map(|e| format!("services.{} ({})", e.service, e.why))
                .collect();
            let more = self.empty.len().saturating_sub(MAX_REFUSAL_NAMED);
            format!(
                "{} services select no enrolled host: {}{}",
                self.empty.len(),
                named.join(", "),
                if more > 0 {
                    format!(" and {more} more")
                } else {
                    String::new()
                }
            )
        };
        line.push_str(
            "; fix the selection, enroll the hosts first (`cutover token create HOST`), or pass --allow-empty",
        );
        Some(line)
    }

    /// The empty selections as warnings (`--allow-empty`), then the rest.
    pub fn allowed(self) -> Vec<String> {
        let mut out: Vec<String> = self
            .empty
            .into_iter()
            .map(|e| {
                format!(
                    "services.{} selects no enrolled host ({}); kept as asked (--allow-empty)",
                    e.service, e.why
                )
            })
            .collect();
        out.extend(self.warnings);
        out
    }
}

/// Label → the hosts of `[hosts]` that carry it, in name order.
fn label_index(fleet: &FleetConfig) -> BTreeMap<&str, Vec<&str>> {
    let mut index: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (host, config) in &fleet.hosts {
        for label in &config.labels {
            let hosts = index.entry(label.as_str()).or_default();
            if hosts.last() != Some(&host.as_str()) {
                hosts.push(host);
            }
        }
    }
    index
}

/// Suggestions within the lookup budget.
struct Suggester<'a> {
    left: usize,
    labels: Vec<&'a str>,
    hosts: Vec<&'a str>,
}

impl Suggester<'_> {
    fn hint(found: Option<&str>) -> String {
        found.map_or(String::new(), |n| format!("; did you mean {n:?}?"))
    }

    fn label(&mut self, typed: &str) -> String {
        if self.left == 0 {
            return String::new();
        }
        self.left -= 1;
        Self::hint(nearest(typed, self.labels.iter().copied()))
    }

    fn host(&mut self, typed: &str) -> String {
        if self.left == 0 {
            return String::new();
        }
        self.left -= 1;
        Self::hint(nearest(typed, self.hosts.iter().copied()))
    }
}

/// Checks `fleet` against the hosts the controller knows.
pub fn check(fleet: &FleetConfig, enrolled: &Enrolled) -> Findings {
    let index = label_index(fleet);
    // Every host the config names, with the first place that names it.
    let mut named: BTreeMap<&str, String> = BTreeMap::new();
    for host in fleet.hosts.keys() {
        named.entry(host).or_insert_with(|| format!("hosts.{host}"));
    }
    for (service, svc) in &fleet.services {
        for host in &svc.hosts {
            named
                .entry(host)
                .or_insert_with(|| format!("services.{service}.hosts"));
        }
    }
    let mut suggest = Suggester {
        left: MAX_SUGGESTIONS,
        labels: index.keys().copied().collect(),
        // A host the config already names is no one's typo.
        hosts: enrolled
            .active
            .iter()
            .map(String::as_str)
            .filter(|h| !named.contains_key(h))
            .collect(),
    };
    let mut out = Findings::default();
    let mut label_enrolled: HashMap<&str, bool> = HashMap::new();
    for (service, svc) in &fleet.services {
        let mut selects = svc.hosts.iter().any(|h| enrolled.active.contains(h));
        let mut reasons: Vec<String> = Vec::new();
        let mut unknown: Vec<String> = Vec::new();
        for label in &svc.labels {
            match index.get(label.as_str()) {
                None => unknown.push(format!(
                    "label {} is on no host in [hosts]{}",
                    shown(label, 64),
                    suggest.label(label)
                )),
                Some(hosts) => {
                    let any = *label_enrolled
                        .entry(label.as_str())
                        .or_insert_with(|| hosts.iter().any(|h| enrolled.active.contains(*h)));
                    if any {
                        selects = true;
                    } else {
                        reasons.push(format!(
                            "label {} is on {} host(s), none of them enrolled",
                            shown(label, 64),
                            hosts.len()
                        ));
                    }
                }
            }
        }
        if selects {
            for u in unknown {
                out.warnings.push(format!("services.{service}.labels: {u}"));
            }
            continue;
        }
        let mut why = unknown;
        why.append(&mut reasons);
        let mut missing = svc.hosts.iter().filter(|h| !enrolled.active.contains(*h));
        if let Some(first) = missing.next() {
            let more = missing.count();
            let state = if enrolled.revoked.contains(first) {
                "is revoked".to_string()
            } else {
                format!("has not enrolled{}", suggest.host(first))
            };
            why.push(match more {
                0 => format!("host {first:?} {state}"),
                n => format!("host {first:?} {state}, and {n} more named host(s) are not enrolled"),
            });
        }
        why.truncate(2);
        out.empty.push(EmptySelection {
            service: service.clone(),
            why: why.join("; "),
        });
    }
    for (host, place) in &named {
        if enrolled.revoked.contains(*host) {
            out.warnings.push(format!(
                "host {host:?} ({place}) is revoked: plans that include it fail; remove it from the fleet config"
            ));
        } else if !enrolled.active.contains(*host) {
            out.warnings.push(format!(
                "host {host:?} ({place}) has not enrolled: plans that include it fail until it does (`cutover token create {host}`){}",
                suggest.host(host)
            ));
        }
    }
    out
}

/// The hosts one service's config selects, given the label index.
fn selection<'a>(
    svc: &'a ServiceConfig,
    index: &BTreeMap<&'a str, Vec<&'a str>>,
) -> BTreeSet<&'a str> {
    let mut out: BTreeSet<&str> = svc.hosts.iter().map(String::as_str).collect();
    for label in &svc.labels {
        if let Some(hosts) = index.get(label.as_str()) {
            out.extend(hosts.iter().copied());
        }
    }
    out
}

/// Every host any service runs on.
fn placed(fleet: &FleetConfig) -> BTreeSet<&str> {
    let used: BTreeSet<&str> = fleet
        .services
        .values()
        .flat_map(|s| s.labels.iter().map(String::as_str))
        .collect();
    let mut out: BTreeSet<&str> = fleet
        .services
        .values()
        .flat_map(|s| s.hosts.iter().map(String::as_str))
        .collect();
    for (host, config) in &fleet.hosts {
        if config.labels.iter().any(|l| used.contains(l.as_str())) {
            out.insert(host);
        }
    }
    out
}

/// The service's settings whose values differ, by key.
fn changed_keys(old: &ServiceConfig, new: &ServiceConfig) -> Vec<String> {
    let as_map = |s: &ServiceConfig| match serde_json::to_value(s) {
        Ok(serde_json::Value::Object(m)) => m,
        _ => serde_json::Map::new(),
    };
    let (old, new) = (as_map(old), as_map(new));
    let keys: BTreeSet<&String> = old.keys().chain(new.keys()).collect();
    keys.into_iter()
        .filter(|k| old.get(*k) != new.get(*k))
        .cloned()
        .collect()
}

/// What storing `new` changes when `old` is stored (`None`: nothing is).
pub fn changes(old: Option<&FleetConfig>, new: &FleetConfig) -> Changes {
    let empty = FleetConfig::default();
    let first = old.is_none();
    let old = old.unwrap_or(&empty);
    let (old_index, new_index) = (label_index(old), label_index(new));
    let mut out = Changes {
        first,
        services_added: Names::of(
            new.services
                .keys()
                .filter(|s| !old.services.contains_key(*s))
                .map(String::as_str),
            MAX_LISTED,
        ),
        services_removed: Names::of(
            old.services
                .keys()
                .filter(|s| !new.services.contains_key(*s))
                .map(String::as_str),
            MAX_LISTED,
        ),
        ..Changes::default()
    };
    // A label whose hosts are the same in both selects the same hosts.
    let mut same_label: HashMap<&str, bool> = HashMap::new();
    for (name, now) in &new.services {
        let Some(before) = old.services.get(name) else {
            continue;
        };
        let keys = changed_keys(before, now);
        let same_inputs = before.hosts == now.hosts
            && before.labels == now.labels
            && now.labels.iter().all(|l| {
                *same_label
                    .entry(l.as_str())
                    .or_insert_with(|| old_index.get(l.as_str()) == new_index.get(l.as_str()))
            });
        let (added, removed) = if same_inputs {
            (Names::default(), Names::default())
        } else {
            let (b, n) = (selection(before, &old_index), selection(now, &new_index));
            (
                Names::of(n.difference(&b).copied(), MAX_LISTED_PER_SERVICE),
                Names::of(b.difference(&n).copied(), MAX_LISTED_PER_SERVICE),
            )
        };
        if keys.is_empty() && added.is_empty() && removed.is_empty() {
            continue;
        }
        out.services_changed_count += 1;
        if out.services_changed.len() < MAX_CHANGED_LISTED {
            out.services_changed.push(ServiceChange {
                service: name.clone(),
                keys,
                hosts_added: added,
                hosts_removed: removed,
            });
        }
    }
    let (before, now) = (placed(old), placed(new));
    out.hosts_added = Names::of(now.difference(&before).copied(), MAX_LISTED);
    out.hosts_removed = Names::of(before.difference(&now).copied(), MAX_LISTED);
    out
}

/// The warnings a report carries: all counted, the first
/// [`MAX_WARNINGS`] kept.
pub fn bounded_warnings(warnings: &[String]) -> Names {
    Names::of(warnings.iter().map(String::as_str), MAX_WARNINGS)
}

#[cfg(test)]
mod tests;
