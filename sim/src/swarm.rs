//! Thousands of agents in one process: each enrolled with its own token and
//! key, each holding its own mutual-TLS session through the agent's own
//! session code, each host simulated by [`SimRuntime`].

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use cutover_agent::identity::Identity;
use cutover_agent::session::Agent;
use cutover_cli::client::ConnectArgs;
use cutover_core::views::ContentIdentity;
use futures::StreamExt;
use tokio::task::JoinHandle;

use crate::host::{Behaviour, Observed, SimRuntime};

pub type Result<T> = std::result::Result<T, String>;

/// Where the controller is and where the swarm keeps its identities.
#[derive(Debug, Clone)]
pub struct Setup {
    pub controller: String,
    pub pki: PathBuf,
    /// `agents/NAME/identity.pem` per host, reused across runs.
    pub state: PathBuf,
    pub heartbeat: Duration,
    pub max_backoff: Duration,
}

impl Setup {
    pub fn operator(&self) -> ConnectArgs {
        ConnectArgs {
            controller: self.controller.clone(),
            pki_dir: self.pki.clone(),
            ca: None,
            cert: None,
            key: None,
        }
    }

    pub fn config(&self, host: &str) -> Result<cutover_agent::Config> {
        let text = format!(
            "controller = \"{}\"\nca_cert = \"{}\"\ndata_dir = \"{}\"\nheartbeat_interval = \"{}\"\nreconnect_max_backoff = \"{}\"\n",
            self.controller,
            self.pki.join("ca.pem").display(),
            self.data_dir(host).display(),
            humantime::format_duration(self.heartbeat),
            humantime::format_duration(self.max_backoff),
        );
        let base = std::env::current_dir().map_err(|e| e.to_string())?;
        cutover_agent::Config::parse(&text, &base)
    }

    fn data_dir(&self, host: &str) -> PathBuf {
        self.state.join("agents").join(host)
    }
}

/// `sim-00001` … : names that sort in host order.
pub fn names(count: usize) -> Vec<String> {
    (1..=count).map(|i| format!("sim-{i:05}")).collect()
}

/// Enrolls every host that has no identity yet: a one-time token from the
/// operator API, a key made here, a certificate from the controller's CA.
pub async fn enroll(setup: &Setup, hosts: &[String], parallel: usize) -> Result<usize> {
    let operator = setup
        .operator()
        .operator()
        .await
        .map_err(|e| e.to_string())?;
    let todo: Vec<&String> = hosts
        .iter()
        .filter(|h| !Identity::path(&setup.data_dir(h)).exists())
        .collect();
    let results: Vec<Result<()>> = futures::stream::iter(todo.iter().map(|host| {
        let mut operator = operator.clone();
        async move {
            let token = cutover_cli::commands::token::new_token(
                &mut operator,
                host,
                std::time::Duration::from_secs(3600),
                false,
            )
            .await
            .map_err(|e| format!("token for {host}: {e}"))?
            .token;
            let config = setup.config(host)?;
            std::fs::create_dir_all(&config.data_dir)
                .map_err(|e| format!("{}: {e}", config.data_dir.display()))?;
            cutover_agent::enroll::enroll_once(&config, &token)
                .await
                .map_err(|e| format!("enroll {host}: {e}"))?;
            Ok(())
        }
    }))
    .buffer_unordered(parallel)
    .collect()
    .await;
    results.into_iter().collect::<Result<Vec<()>>>()?;
    Ok(todo.len())
}

/// Running simulated agents.
pub struct Swarm {
    pub agents: Vec<Arc<Agent>>,
    tasks: Vec<JoinHandle<()>>,
    pub observed: Arc<Observed>,
}

impl Swarm {
    /// Starts one session per host, every host running `initial`.
    pub fn start(
        setup: &Setup,
        hosts: &[String],
        initial: &[(String, ContentIdentity)],
        behaviour: Behaviour,
    ) -> Result<Swarm> {
        let behaviour = Arc::new(behaviour);
        let observed = Arc::new(Observed::default());
        let mut agents = Vec::with_capacity(hosts.len());
        let mut tasks = Vec::with_capacity(hosts.len());
        for host in hosts {
            let config = setup.config(host)?;
            let identity = Identity::load(&config.data_dir)
                .map_err(|e| e.to_string())?
                .ok_or_else(|| format!("{host} is not enrolled"))?;
            let (runtime, outbox) =
                SimRuntime::new(host, initial, behaviour.clone(), observed.clone());
            let agent = Agent::simulated(config, identity, Box::new(runtime), outbox)
                .map_err(|e| e.to_string())?;
            let a = agent.clone();
            tasks.push(tokio::spawn(async move {
                cutover_agent::session::run(a, std::future::pending()).await
            }));
            agents.push(agent);
        }
        Ok(Swarm {
            agents,
            tasks,
            observed,
        })
    }

    /// How many hosts hold a session the controller has welcomed.
    pub fn online(&self) -> usize {
        self.agents.iter().filter(|a| a.is_connected()).count()
    }

    /// Waits until every host is online; returns false at `timeout`.
    pub async fn wait_online(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        while self.online() < self.agents.len() {
            if tokio::time::Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }

    /// Ends every session (the connections close).
    pub async fn stop(self) {
        for t in &self.tasks {
            t.abort();
        }
        for t in self.tasks {
            let _ = t.await;
        }
    }
}
