//! A simulated host behind a real agent session: installs and rollbacks
//! finish after a configurable delay, fail at a configurable rate (or on
//! named hosts), and are reported exactly as the real installer reports.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cutover_agent::diag::SessionFigures;
use cutover_agent::runtime::{BoxFuture, Runtime};
use cutover_core::rollout::{Command, Evidence, Report};
use cutover_core::views::{ContentIdentity, DiagReport, InstalledService};
use tokio::sync::mpsc;

/// How every simulated host behaves.
#[derive(Debug, Clone, Default)]
pub struct Behaviour {
    /// Time an install (fetch, swap, checks) or a rollback takes.
    pub install_delay: Duration,
    /// Share of installs that fail their health checks, 0.0 to 1.0.
    pub fail_rate: f64,
    /// Hosts whose installs always fail.
    pub fail_hosts: BTreeSet<String>,
}

/// What the swarm observes across its hosts, for the benchmarks.
#[derive(Default)]
pub struct Observed {
    /// When the first failed report was queued.
    pub failed_at: Mutex<Option<Instant>>,
    /// Rollback commands that arrived.
    pub rollbacks: Mutex<Arrivals>,
}

/// When the first and the last of some commands arrived, and how many.
#[derive(Debug, Default, Clone, Copy)]
pub struct Arrivals {
    pub first: Option<Instant>,
    pub last: Option<Instant>,
    pub count: u64,
}

pub struct SimHost {
    host: String,
    behaviour: Arc<Behaviour>,
    observed: Arc<Observed>,
    services: Mutex<BTreeMap<String, InstalledService>>,
    reports: Mutex<BTreeMap<String, Report>>,
    outbox: mpsc::UnboundedSender<Report>,
    /// Commands run one at a time, in arrival order, from this queue (as
    /// the real installer's queue per service); started on first use.
    queue: Mutex<Option<mpsc::UnboundedSender<Command>>>,
}

/// The runtime handed to `Agent::simulated`.
pub struct SimRuntime(Arc<SimHost>);

impl SimRuntime {
    /// A host running `initial` (service name → identity); returns the
    /// runtime and the outbox its reports arrive on.
    pub fn new(
        host: &str,
        initial: &[(String, ContentIdentity)],
        behaviour: Arc<Behaviour>,
        observed: Arc<Observed>,
    ) -> (SimRuntime, mpsc::UnboundedReceiver<Report>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let services = initial
            .iter()
            .map(|(name, id)| {
                (
                    name.clone(),
                    InstalledService {
                        name: name.clone(),
                        current: Some(id.clone()),
                        previous: None,
                        state: "running".into(),
                        health: Default::default(),
                    },
                )
            })
            .collect();
        let host = SimHost {
            host: host.to_string(),
            behaviour,
            observed,
            services: Mutex::new(services),
            reports: Mutex::new(BTreeMap::new()),
            outbox: tx,
            queue: Mutex::new(None),
        };
        (SimRuntime(Arc::new(host)), rx)
    }
}

impl SimHost {
    async fn execute(&self, command: Command) {
        let started = Instant::now();
        if !self.behaviour.install_delay.is_zero() {
            tokio::time::sleep(self.behaviour.install_delay).await;
        }
        let service = command.service().to_string();
        let (ok, evidence) = match &command {
            Command::Install(c) => {
                let fail = self.behaviour.fail_hosts.contains(&self.host)
                    || rand::random::<f64>() < self.behaviour.fail_rate;
                if fail {
                    let evidence = Evidence {
                        gate: "health".into(),
                        detail: "simulated health check failure".into(),
                        elapsed_ms: started.elapsed().as_millis() as u64,
                        ..Evidence::default()
                    };
                    (false, Some(evidence))
                } else {
                    self.move_to(&service, Some(c.target.clone()));
                    (true, None)
                }
            }
            Command::Rollback(_) => {
                let previous = self.installed(&service).previous;
                if previous.is_some() {
                    self.move_to(&service, previous);
                }
                (true, None)
            }
        };
        let report = Report {
            command_id: command.id().to_string(),
            service: service.clone(),
            ok,
            evidence,
            installed: self.installed(&service),
            auto_rolled_back: false,
            fetched_bytes: 0,
            restarted: ok,
            duration_ms: started.elapsed().as_millis() as u64,
        };
        if !ok {
            let mut at = self.observed.failed_at.lock().unwrap();
            at.get_or_insert_with(Instant::now);
        }
        self.reports.lock().unwrap().insert(service, report.clone());
        let _ = self.outbox.send(report);
    }

    fn installed(&self, service: &str) -> InstalledService {
        self.services
            .lock()
            .unwrap()
            .get(service)
            .cloned()
            .unwrap_or_else(|| InstalledService {
                name: service.to_string(),
                current: None,
                previous: None,
                state: "not installed".into(),
                health: Default::default(),
            })
    }

    fn move_to(&self, service: &str, to: Option<ContentIdentity>) {
        let mut services = self.services.lock().unwrap();
        let entry = services
            .entry(service.to_string())
            .or_insert_with(|| InstalledService {
                name: service.to_string(),
                current: None,
                previous: None,
                state: "running".into(),
                health: Default::default(),
            });
        entry.previous = std::mem::replace(&mut entry.current, to);
        entry.state = "running".into();
    }
}

impl Runtime for SimRuntime {
    fn recover(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }

    fn upkeep_every(&self) -> Option<Duration> {
        None
    }

    fn upkeep(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }

    fn inventory(&self) -> BoxFuture<'_, Vec<InstalledService>> {
        let services = self.0.services.lock().unwrap().values().cloned().collect();
        Box::pin(async move { services })
    }

    fn submit(&self, command: Command) {
        if matches!(command, Command::Rollback(_)) {
            let now = Instant::now();
            let mut r = self.0.observed.rollbacks.lock().unwrap();
            r.first.get_or_insert(now);
            r.last = Some(now);
            r.count += 1;
        }
        let mut queue = self.0.queue.lock().unwrap();
        let tx = queue.get_or_insert_with(|| {
            let (tx, mut rx) = mpsc::unbounded_channel::<Command>();
            // Weak: the queue ends when the host is dropped.
            let host = Arc::downgrade(&self.0);
            tokio::spawn(async move {
                while let Some(command) = rx.recv().await {
                    let Some(host) = host.upgrade() else { break };
                    host.execute(command).await;
                }
            });
            tx
        });
        let _ = tx.send(command);
    }

    fn last_reports(&self) -> Vec<Report> {
        self.0.reports.lock().unwrap().values().cloned().collect()
    }

    fn diag(
        &self,
        uptime_s: u64,
        session: SessionFigures,
    ) -> BoxFuture<'_, Result<DiagReport, String>> {
        let report = DiagReport {
            hostname: self.0.host.clone(),
            os: "simulated".into(),
            agent_version: cutover_core::VERSION.into(),
            agent_uptime_s: uptime_s,
            rtt_ms: session.rtt_ms,
            clock_offset_ms: session.clock_offset_ms,
            services: self.0.services.lock().unwrap().values().cloned().collect(),
            ..DiagReport::default()
        };
        Box::pin(async move { Ok(report) })
    }

    fn stop_all(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cutover_core::rollout::{InstallCommand, RollbackCommand};

    fn identity(release: &str) -> ContentIdentity {
        ContentIdentity {
            release: release.into(),
            service_version: release.into(),
            tarball_sha256: None,
            image_id: None,
        }
    }

    fn install(id: &str, release: &str) -> Command {
        Command::Install(Box::new(InstallCommand {
            command_id: id.into(),
            service: "web".into(),
            target: identity(release),
            sha256: cutover_core::Sha256Digest::of(release.as_bytes()),
            size: 1,
            config: serde_json::from_value(
                serde_json::json!({"runner": "process", "command": "bin/web"}),
            )
            .unwrap(),
            image: None,
        }))
    }

    #[tokio::test]
    async fn installs_fail_on_named_hosts_and_roll_back_in_order() {
        let behaviour = Arc::new(Behaviour {
            fail_hosts: ["h2".to_string()].into(),
            ..Behaviour::default()
        });
        let observed = Arc::new(Observed::default());
        let initial = [("web".to_string(), identity("1"))];
        let (good, mut good_out) =
            SimRuntime::new("h1", &initial, behaviour.clone(), observed.clone());
        let (bad, mut bad_out) = SimRuntime::new("h2", &initial, behaviour, observed.clone());

        good.submit(install("c1", "2"));
        good.submit(Command::Rollback(RollbackCommand {
            command_id: "c1-rollback".into(),
            service: "web".into(),
            from: cutover_core::Sha256Digest::of(b"2"),
        }));
        let first = good_out.recv().await.unwrap();
        assert!(first.ok && first.command_id == "c1");
        assert_eq!(first.installed.current, Some(identity("2")));
        let back = good_out.recv().await.unwrap();
        assert_eq!(back.command_id, "c1-rollback");
        assert_eq!(back.installed.current, Some(identity("1")));
        assert_eq!(good.last_reports(), vec![back]);

        bad.submit(install("c2", "2"));
        let failed = bad_out.recv().await.unwrap();
        assert!(!failed.ok);
        assert_eq!(failed.evidence.unwrap().gate, "health");
        assert_eq!(failed.installed.current, Some(identity("1")));
        assert!(observed.failed_at.lock().unwrap().is_some());
        assert_eq!(observed.rollbacks.lock().unwrap().count, 1);
    }
}
