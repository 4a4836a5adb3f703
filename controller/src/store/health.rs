//! Services' health as their agents report it between rollouts: each
//! change updates the host's stored inventory, and a service turning
//! unhealthy (or healthy again) is an event naming host, service and
//! evidence. Only transitions are events, so a repeated report is quiet.

use cutover_core::views::{HealthState, InstalledService};
use rusqlite::OptionalExtension;

use super::{insert_event, Store};
use crate::error::{Error, Result};

/// An event a health change makes: its kind and detail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthEvent {
    pub kind: &'static str,
    pub detail: String,
}

/// Applies `changed` to `inventory` and says which changes are events.
/// A change for a service the inventory does not list, or that names
/// another release than the one stored (a report raced it), is stale and
/// dropped: health never changes what a host is recorded to run.
pub fn apply_health(
    inventory: &mut [InstalledService],
    changed: &[InstalledService],
) -> Vec<HealthEvent> {
    let mut events = Vec::new();
    for c in changed {
        let Some(stored) = inventory
            .iter_mut()
            .find(|s| s.name == c.name && s.current == c.current)
        else {
            continue;
        };
        let was = stored.health.state;
        stored.health = c.health.clone();
        stored.state = c.state.clone();
        let h = &c.health;
        match h.state {
            HealthState::Unhealthy if was != HealthState::Unhealthy => events.push(HealthEvent {
                kind: "service.unhealthy",
                detail: format!(
                    "{}: unhealthy ({}); restarts: {}",
                    c.name, h.evidence, h.restarts
                ),
            }),
            HealthState::Healthy if was == HealthState::Unhealthy => events.push(HealthEvent {
                kind: "service.healthy",
                detail: format!("{}: healthy again; restarts: {}", c.name, h.restarts),
            }),
            _ => {}
        }
    }
    events
}

impl Store {
    /// Records the health changes `host`'s agent reported, with their
    /// events, in one transaction. An inventory that cannot be read is
    /// left as it is and is an error.
    pub fn record_health(&self, host: &str, changed: &[InstalledService]) -> Result<()> {
        self.with(|c| {
            let tx = c.transaction()?;
            let json: Option<String> = tx
                .query_row("SELECT inventory FROM hosts WHERE name = ?1", [host], |r| {
                    r.get(0)
                })
                .optional()?;
            let Some(json) = json else { return Ok(()) };
            let mut inventory: Vec<InstalledService> = serde_json::from_str(&json)
                .map_err(|e| Error::Internal(format!("stored inventory of {host}: {e}")))?;
            let events = apply_health(&mut inventory, changed);
            let json = serde_json::to_string(&inventory)
                .map_err(|e| Error::Internal(format!("inventory of {host}: {e}")))?;
            tx.execute(
                "UPDATE hosts SET inventory = ?2 WHERE name = ?1",
                rusqlite::params![host, json],
            )?;
            for e in &events {
                insert_event(&tx, e.kind, Some(host), &e.detail)?;
            }
            tx.commit()?;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cutover_core::views::{ContentIdentity, ServiceHealth};

    fn api(release: &str, state: HealthState) -> InstalledService {
        InstalledService {
            name: "api".into(),
            current: Some(ContentIdentity {
                release: release.into(),
                ..ContentIdentity::default()
            }),
            previous: None,
            state: "running".into(),
            health: ServiceHealth {
                state,
                since_ms: 7,
                evidence: if state == HealthState::Unhealthy {
                    "http: 503".into()
                } else {
                    String::new()
                },
                restarts: 0,
            },
        }
    }

    #[test]
    fn only_turning_unhealthy_or_healthy_again_is_an_event() {
        let mut inv = vec![api("1.0", HealthState::Healthy)];
        let e = apply_health(&mut inv, &[api("1.0", HealthState::Unhealthy)]);
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].kind, "service.unhealthy");
        assert!(e[0].detail.contains("api: unhealthy (http: 503)"), "{e:?}");
        assert_eq!(inv[0].health.state, HealthState::Unhealthy);
        assert!(apply_health(&mut inv, &[api("1.0", HealthState::Unhealthy)]).is_empty());
        let e = apply_health(&mut inv, &[api("1.0", HealthState::Healthy)]);
        assert_eq!(e[0].kind, "service.healthy");
        // Unknown to healthy (a fresh install) is no news.
        let mut inv = vec![api("1.0", HealthState::Unknown)];
        assert!(apply_health(&mut inv, &[api("1.0", HealthState::Healthy)]).is_empty());
        assert_eq!(inv[0].health.state, HealthState::Healthy);
    }

    #[test]
    fn a_stale_change_never_alters_what_a_host_runs() {
        let mut inv = vec![api("2.0", HealthState::Healthy)];
        let before = inv.clone();
        let mut other = api("1.0", HealthState::Unhealthy);
        assert!(apply_health(&mut inv, std::slice::from_ref(&other)).is_empty());
        other.name = "db".into();
        assert!(apply_health(&mut inv, &[other]).is_empty());
        assert_eq!(inv, before);
    }
}
