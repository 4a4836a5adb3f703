//! Health after the rollout: the agent keeps probing each installed
//! service at `health_probe_interval` and tells the controller when a
//! service's health changes. [`transition`] is the pure part (only a change
//! is news); [`Watch`] keeps what was last said and the changes waiting for
//! the session; [`Schedule`] says when the next round of probes is due.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use cutover_core::rollout::Evidence;
use cutover_core::views::{bounded, limits, HealthState, InstalledService, ServiceHealth};

/// What one probe of a service found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Why it is unhealthy; `None`: every check passed.
    pub evidence: Option<String>,
    /// Restarts of its process so far.
    pub restarts: u32,
}

/// The evidence of a failed round as one bounded line: the check (or
/// gate), what it said, and the first line of the service's answer.
pub fn evidence_text(e: &Evidence) -> String {
    let what = e.check.as_deref().unwrap_or(&e.gate);
    let mut text = format!("{what}: {}", e.detail);
    if let Some(line) = e.output.lines().map(str::trim).find(|l| !l.is_empty()) {
        text.push_str(" (");
        text.push_str(line);
        text.push(')');
    }
    bounded(&text, limits::HEALTH_EVIDENCE).into_owned()
}

/// The health to report after `outcome`, or `None` when nothing an
/// operator cares about changed: the same state with the same restart count
/// is not news, even if the evidence's words differ (a timing in them would
/// otherwise make every probe a report).
pub fn transition(last: &ServiceHealth, outcome: &Outcome, now_ms: i64) -> Option<ServiceHealth> {
    let state = match outcome.evidence {
        Some(_) => HealthState::Unhealthy,
        None => HealthState::Healthy,
    };
    if state == last.state && outcome.restarts == last.restarts {
        return None;
    }
    Some(ServiceHealth {
        state,
        since_ms: if state == last.state {
            last.since_ms
        } else {
            now_ms
        },
        evidence: outcome
            .evidence
            .as_deref()
            .map(|e| bounded(e, limits::HEALTH_EVIDENCE).into_owned())
            .unwrap_or_default(),
        restarts: outcome.restarts,
    })
}

/// What the agent last said about each service's health, and the changes
/// no session has carried yet.
#[derive(Default)]
pub struct Watch {
    inner: Mutex<Inner>,
    notify: tokio::sync::Notify,
}

#[derive(Default)]
struct Inner {
    last: HashMap<String, ServiceHealth>,
    /// One entry per service: a newer change replaces an older one.
    pending: BTreeMap<String, InstalledService>,
}

impl Watch {
    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The service's health as last said (unknown if never probed).
    pub fn get(&self, service: &str) -> ServiceHealth {
        self.inner().last.get(service).cloned().unwrap_or_default()
    }

    /// Records a probe of `installed`; a change is queued for the session.
    /// Returns whether it changed.
    pub fn observe(&self, mut installed: InstalledService, outcome: &Outcome, now_ms: i64) -> bool {
        let mut inner = self.inner();
        let last = inner.last.get(&installed.name).cloned().unwrap_or_default();
        let Some(next) = transition(&last, outcome, now_ms) else {
            return false;
        };
        inner.last.insert(installed.name.clone(), next.clone());
        installed.health = next;
        inner.pending.insert(installed.name.clone(), installed);
        drop(inner);
        self.notify.notify_one();
        true
    }

    /// Sets a service's health without queueing it: a command's report
    /// carries it. A change still queued for the service is stale and
    /// dropped.
    pub fn set(&self, service: &str, health: ServiceHealth) {
        let mut inner = self.inner();
        inner.pending.remove(service);
        inner.last.insert(service.to_string(), health);
    }

    /// The changes no session has carried yet, once there are any.
    /// Cancel-safe: the changes are taken in the poll that sees the
    /// notification.
    pub async fn changed(&self) -> Vec<InstalledService> {
        loop {
            self.notify.notified().await;
            let pending = std::mem::take(&mut self.inner().pending);
            if !pending.is_empty() {
                return pending.into_values().collect();
            }
        }
    }
}

/// `health_probe_interval`'s rounds: one at a time, each at least the
/// interval after the last one started.
pub struct Schedule {
    pub every: Duration,
    last: Mutex<Option<Instant>>,
    running: AtomicBool,
}

impl Schedule {
    pub fn new(every: Duration) -> Schedule {
        Schedule {
            every,
            last: Mutex::new(None),
            running: AtomicBool::new(false),
        }
    }

    /// Whether a round is due at `now`; if so it counts as started and
    /// [`Schedule::done`] must follow.
    pub fn start(&self, now: Instant) -> bool {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_some_and(|t| now.saturating_duration_since(t) < self.every) {
            return false;
        }
        if self.running.swap(true, Ordering::AcqRel) {
            return false;
        }
        *last = Some(now);
        true
    }

    pub fn done(&self) {
        self.running.store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sick(why: &str, restarts: u32) -> Outcome {
        Outcome {
            evidence: Some(why.into()),
            restarts,
        }
    }

    fn well(restarts: u32) -> Outcome {
        Outcome {
            evidence: None,
            restarts,
        }
    }

    fn api() -> InstalledService {
        InstalledService {
            name: "api".into(),
            current: None,
            previous: None,
            state: "running".into(),
            health: ServiceHealth::default(),
        }
    }

    #[test]
    fn only_transitions_are_reported_and_since_is_when_the_state_changed() {
        let unknown = ServiceHealth::default();
        let healthy = transition(&unknown, &well(0), 10).expect("unknown to healthy");
        assert_eq!(
            (healthy.state, healthy.since_ms),
            (HealthState::Healthy, 10)
        );
        assert_eq!(transition(&healthy, &well(0), 20), None, "still healthy");
        let sick1 = transition(&healthy, &sick("http: 503", 0), 30).expect("to unhealthy");
        assert_eq!(
            (sick1.state, sick1.since_ms, sick1.evidence.as_str()),
            (HealthState::Unhealthy, 30, "http: 503")
        );
        assert_eq!(
            transition(&sick1, &sick("http: 503 after 12ms", 0), 40),
            None,
            "other words, same state"
        );
        let restarted = transition(&sick1, &sick("start: not running", 1), 50).expect("restart");
        assert_eq!(
            (restarted.since_ms, restarted.restarts),
            (30, 1),
            "since kept"
        );
        let back = transition(&restarted, &well(1), 60).expect("to healthy");
        assert_eq!((back.state, back.since_ms), (HealthState::Healthy, 60));
        assert!(back.evidence.is_empty());
    }

    #[test]
    fn evidence_is_bounded() {
        let h = transition(&ServiceHealth::default(), &sick(&"x".repeat(10_000), 0), 1).unwrap();
        assert!(h.evidence.len() <= limits::HEALTH_EVIDENCE);
        let mut e = Evidence::new("health", "y".repeat(10_000));
        e.check = Some("http GET /healthz".into());
        let text = evidence_text(&e);
        assert!(
            text.starts_with("http GET /healthz: yyy") && text.len() <= limits::HEALTH_EVIDENCE
        );
        let mut e = Evidence::new("health", "HTTP 503, expected 200");
        e.output = "\nunhealthy: db down\nmore\n".into();
        assert_eq!(
            evidence_text(&e),
            "health: HTTP 503, expected 200 (unhealthy: db down)"
        );
    }

    #[tokio::test]
    async fn a_change_waits_for_the_session_and_a_commands_health_replaces_it() {
        let w = Watch::default();
        assert!(w.observe(api(), &sick("http: 503", 0), 5));
        assert!(!w.observe(api(), &sick("http: 503", 0), 6), "no news");
        let changed = w.changed().await;
        assert_eq!(changed.len(), 1);
        assert_eq!(changed[0].health.state, HealthState::Unhealthy);
        assert_eq!(w.get("api").state, HealthState::Unhealthy);
        // A change the session has not taken yet, then a command's report.
        assert!(w.observe(api(), &well(0), 7));
        w.set("api", ServiceHealth::default());
        assert!(w.inner().pending.is_empty(), "the report carries it");
    }

    #[test]
    fn rounds_are_one_at_a_time_and_an_interval_apart() {
        let s = Schedule::new(Duration::from_secs(30));
        let t0 = Instant::now();
        assert!(s.start(t0));
        s.done();
        assert!(!s.start(t0 + Duration::from_secs(29)));
        assert!(s.start(t0 + Duration::from_secs(30)));
        assert!(!s.start(t0 + Duration::from_secs(90)), "still running");
        s.done();
        assert!(s.start(t0 + Duration::from_secs(90)));
    }
}
