//! The fleet as the controller sees it: the stored fleet config, parsed
//! once per stored text ([`ParsedFleet`]), and every host as stored with its
//! liveness from the live sessions. The operator's host list, the planner's
//! input and the manual rollback all read the fleet through here, so no API
//! module reaches into another for it.

use std::sync::{Arc, Mutex};

use cutover_core::fleet::FleetConfig;
use cutover_core::views::{from_ms, now_ms, HostView};

use crate::error::{Error, Result};
use crate::rollout::plan::HostState;
use crate::Controller;

/// The stored fleet config, parsed. A 10,000-host config takes tens of
/// milliseconds to parse, so the parse is kept until the stored text
/// changes; comparing the text keeps the cache exact whoever wrote it.
#[derive(Default)]
pub struct ParsedFleet(Mutex<Option<(String, Arc<FleetConfig>)>>);

impl ParsedFleet {
    fn get(&self, toml: &str) -> Option<Arc<FleetConfig>> {
        let cached = self.0.lock().unwrap_or_else(|p| p.into_inner());
        cached
            .as_ref()
            .filter(|(text, _)| text == toml)
            .map(|(_, fleet)| fleet.clone())
    }

    fn put(&self, toml: String, fleet: Arc<FleetConfig>) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some((toml, fleet));
    }
}

/// The stored fleet config, parsed (from the cache while the stored text
/// is unchanged).
pub async fn fleet_config(c: &Controller) -> Result<Arc<FleetConfig>> {
    let stored = c.store.run(|s| s.fleet()).await?;
    let (toml, _) = stored.ok_or_else(|| {
        Error::Invalid(
            "no fleet config yet; apply one with `cutover fleet apply FLEET.toml`".into(),
        )
    })?;
    if let Some(fleet) = c.fleet.get(&toml) {
        return Ok(fleet);
    }
    let fleet = Arc::new(FleetConfig::parse("stored fleet config", &toml)?);
    c.fleet.put(toml, fleet.clone());
    Ok(fleet)
}

/// Every host as stored, with what its live session (if any) says: online,
/// agent version, connected since, last seen.
pub async fn hosts(c: &Controller) -> Result<Vec<HostView>> {
    let mut hosts = c.store.run(|s| s.hosts()).await?;
    let now = now_ms();
    for h in &mut hosts {
        if let Some(s) = c.sessions.get(&h.name) {
            h.online = s.is_live(now);
            h.agent_version = s.agent_version.clone();
            h.connected_since = from_ms(s.connected_since_ms);
            h.last_seen = from_ms(s.last_seen_ms.load(std::sync::atomic::Ordering::Relaxed));
        }
    }
    Ok(hosts)
}

/// Every host as the planner needs it: name, liveness, revocation and what
/// it reported running.
pub async fn host_states(c: &Controller) -> Result<Vec<HostState>> {
    let views = hosts(c).await?;
    Ok(views
        .into_iter()
        .map(|h| HostState {
            name: h.name,
            online: h.online,
            revoked: h.revoked,
            installed: h.services,
        })
        .collect())
}
