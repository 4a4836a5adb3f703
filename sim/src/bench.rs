//! The scale benchmarks: the fleet ones start a real controller on
//! loopback, attach simulated agents through the agent's own session code,
//! and print what they measured. Figures, never assertions: the only
//! failures are a swarm that does not come online or a rollout that does
//! not end as it must.

use std::path::Path;
use std::time::{Duration, Instant};

use cutover_cli::bundle;
use cutover_core::views::ContentIdentity;

use crate::host::Behaviour;
use crate::lab::Lab;
use crate::swarm::{self, Result, Swarm};

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Name {
    /// Time until N agents are online; controller RSS per agent.
    Connect,
    /// Controller SIGKILLed and restarted with N agents attached.
    Storm,
    /// Controller SIGTERMed with N agents attached: time to exit, then
    /// restarted: time until all are back.
    Shutdown,
    /// Controller CPU share at N agents with 10 s heartbeats.
    Heartbeat,
    /// One service across N hosts, max_parallel 1,000, instant installs;
    /// then three times with host N/2 failing.
    Rollout,
    /// 200 agents and a short rollout; fails unless every host moved.
    Smoke,
    /// The install pipeline on a 200 MiB and a 1 GiB tarball against
    /// `sha256sum` + `tar xzf`.
    Pipeline,
    /// SHA-256 throughput: ring (the agent's) against sha2 and `openssl speed`.
    Sha,
    /// A real agent's idle RSS, and the release binaries' sizes.
    Agent,
    /// The planner over 10,000 hosts x 50 services, in process and
    /// through `cutover plan`.
    Plan,
    /// 1,000 migrations by `cutover migrate` against `psql -f` of the same
    /// files, on a real PostgreSQL; `migrate status` on a 10,000-row ledger.
    Migrate,
    /// The sample's data migration over 1,000,000 rows (`--agents N`
    /// rows) against one `INSERT ... SELECT` in `psql`, alone and through
    /// the agent; the overhead per progress report.
    DataMigrate,
}

const MIB: f64 = 1024.0 * 1024.0;

pub async fn run(name: Name, agents: &[usize], dir: &Path) -> Result<()> {
    let first = |default: usize| agents.first().copied().unwrap_or(default);
    let lab = |heartbeat: Duration| -> Result<Lab> {
        let mut lab = Lab::new(dir, heartbeat)?;
        lab.start_controller()?;
        Ok(lab)
    };
    let ten = Duration::from_secs(10);
    match name {
        Name::Connect => {
            let sizes = if agents.is_empty() {
                vec![1000, 5000, 10000]
            } else {
                agents.to_vec()
            };
            let mut lab = lab(ten)?;
            enroll(&lab, *sizes.iter().max().unwrap_or(&0)).await?;
            for n in sizes {
                connect(&mut lab, n).await?;
            }
            Ok(())
        }
        Name::Storm => storm(&mut lab(ten)?, first(10000)).await,
        Name::Shutdown => shutdown(&mut lab(ten)?, first(10000)).await,
        Name::Heartbeat => heartbeat_share(&mut lab(ten)?, first(10000)).await,
        Name::Rollout => {
            let (lab, n) = (lab(ten)?, first(10000));
            enroll(&lab, n).await?;
            rollout(&lab, n, 1000, None).await?;
            // The failure path three times: on a shared machine one figure
            // alone says little.
            for _ in 0..3 {
                rollout(&lab, n, 1000, Some(n / 2)).await?;
            }
            Ok(())
        }
        Name::Smoke => {
            let (lab, n) = (lab(Duration::from_secs(1))?, first(200));
            enroll(&lab, n).await?;
            rollout(&lab, n, 50, None).await?;
            rollout(&lab, n, 50, Some(n / 2)).await
        }
        Name::Pipeline => {
            let sizes = if agents.is_empty() {
                vec![200, 1024]
            } else {
                agents.to_vec()
            };
            let lab = lab(ten)?;
            for mb in sizes {
                crate::pipeline::pipeline(&lab, mb).await?;
            }
            Ok(())
        }
        Name::Agent => crate::pipeline::agent(&lab(ten)?).await,
        Name::Sha => crate::pipeline::sha(),
        Name::Plan => {
            let n = first(10000);
            crate::plan::plan(n, 50)?;
            let lab = lab(ten)?;
            enroll(&lab, n).await?;
            crate::plan::through_cli(&lab, n, 50)
        }
        Name::Migrate => crate::migrate::migrate(dir, first(1000)),
        Name::DataMigrate => crate::data_migrate::data_migrate(dir, first(1_000_000)),
    }
}

async fn enroll(lab: &Lab, n: usize) -> Result<()> {
    let t = Instant::now();
    let fresh = swarm::enroll(&lab.setup, &swarm::names(n), 16).await?;
    if fresh > 0 {
        println!(
            "enrolled {fresh} host(s) in {:.1} s",
            t.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

async fn online(lab: &Lab, n: usize, behaviour: Behaviour) -> Result<(Swarm, Duration)> {
    let t = Instant::now();
    let swarm = Swarm::start(&lab.setup, &swarm::names(n), &initial(), behaviour)?;
    if !swarm.wait_online(Duration::from_secs(300)).await {
        return Err(format!(
            "only {} of {n} agents online after 300 s",
            swarm.online()
        ));
    }
    Ok((swarm, t.elapsed()))
}

/// Connect N agents to a freshly started controller.
async fn connect(lab: &mut Lab, n: usize) -> Result<()> {
    lab.kill_controller();
    lab.start_controller()?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let base = lab.rss()?;
    let (swarm, took) = online(lab, n, Behaviour::default()).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss = lab.rss()?;
    println!(
        "connect {n:>6} agents: all online in {:>6.2} s; controller RSS {:.1} MiB (idle {:.1} MiB), {:.1} KiB per agent",
        took.as_secs_f64(),
        rss as f64 / MIB,
        base as f64 / MIB,
        rss.saturating_sub(base) as f64 / 1024.0 / n as f64
    );
    swarm.stop().await;
    Ok(())
}

/// Kill the controller under N attached agents; time until all are back.
async fn storm(lab: &mut Lab, n: usize) -> Result<()> {
    enroll(lab, n).await?;
    let (swarm, _) = online(lab, n, Behaviour::default()).await?;
    lab.kill_controller();
    let t = Instant::now();
    while swarm.online() > 0 && t.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let t = Instant::now();
    lab.start_controller()?;
    let up = t.elapsed();
    if !swarm.wait_online(Duration::from_secs(300)).await {
        return Err(format!("only {} of {n} back after 300 s", swarm.online()));
    }
    println!(
        "reconnect storm {n} agents: controller answering {:.2} s after restart, all back in {:.2} s",
        up.as_secs_f64(),
        t.elapsed().as_secs_f64()
    );
    swarm.stop().await;
    Ok(())
}

async fn shutdown(lab: &mut Lab, n: usize) -> Result<()> {
    enroll(lab, n).await?;
    let (swarm, _) = online(lab, n, Behaviour::default()).await?;
    let (took, clean) = lab.terminate_controller(Duration::from_secs(120))?;
    let t = Instant::now();
    while swarm.online() > 0 && t.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let t = Instant::now();
    lab.start_controller()?;
    if !swarm.wait_online(Duration::from_secs(300)).await {
        return Err(format!("only {} of {n} back after 300 s", swarm.online()));
    }
    println!(
        "shutdown with {n} agents: controller exited {} {:.2} s after SIGTERM; after a restart all back in {:.2} s",
        if clean { "0" } else { "non-zero" },
        took.as_secs_f64(),
        t.elapsed().as_secs_f64()
    );
    swarm.stop().await;
    Ok(())
}

/// Controller CPU over 30 s at N agents with 10 s heartbeats.
async fn heartbeat_share(lab: &mut Lab, n: usize) -> Result<()> {
    enroll(lab, n).await?;
    let (swarm, _) = online(lab, n, Behaviour::default()).await?;
    tokio::time::sleep(Duration::from_secs(12)).await;
    let (cpu, t) = (lab.cpu()?, Instant::now());
    tokio::time::sleep(Duration::from_secs(30)).await;
    let used = lab.cpu()? - cpu;
    println!(
        "steady state {n} agents, 10 s heartbeats: controller used {:.2} s CPU in {:.1} s = {:.2} % of one core",
        used.as_secs_f64(),
        t.elapsed().as_secs_f64(),
        100.0 * used.as_secs_f64() / t.elapsed().as_secs_f64()
    );
    swarm.stop().await;
    Ok(())
}

/// What every simulated host runs before a rollout.
fn initial() -> Vec<(String, ContentIdentity)> {
    vec![(
        "web".into(),
        ContentIdentity {
            release: "1.0.0".into(),
            service_version: "1.0.0".into(),
            tarball_sha256: Some(cutover_core::Sha256Digest::of(b"1.0.0")),
            image_id: None,
        },
    )]
}

/// Imports a fresh release of `web` (signed with the lab's key) and
/// applies a fleet that runs it on the first `n` hosts.
fn prepare(lab: &Lab, n: usize, max_parallel: usize) -> Result<String> {
    lab.abort_unfinished()?;
    let version = format!(
        "2.0.{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_err(|e| e.to_string())?
            .as_millis()
    );
    let service = bundle::Service {
        name: "web".into(),
        service_version: version.clone(),
        depends_on: vec![],
        databases: Vec::new(),
        data_migrations: Vec::new(),
        files: vec![bundle::File::new("bin/web", b"#!/bin/sh\n".to_vec(), 0o755)],
    };
    lab.publish(&version, &[service])?;
    let hosts = swarm::names(n)
        .iter()
        .map(|h| format!("\"{h}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let fleet = lab.dir.join("fleet.toml");
    std::fs::write(
        &fleet,
        format!(
            "[services.web]\nhosts = [{hosts}]\nrunner = \"process\"\ncommand = \"bin/web\"\n[services.web.policy]\ncanary = 1\nmax_parallel = {max_parallel}\nmax_unavailable = {max_parallel}\nstep_deadline = \"120s\"\n"
        ),
    )
    .map_err(|e| e.to_string())?;
    lab.cli(&["fleet", "apply", &fleet.display().to_string()])?;
    Ok(version)
}

/// One rollout of `web` across `n` hosts; with `fail_at`, that host's
/// install fails and the rollout must roll back.
async fn rollout(lab: &Lab, n: usize, max_parallel: usize, fail_at: Option<usize>) -> Result<()> {
    let version = prepare(lab, n, max_parallel)?;
    let fail_hosts = fail_at
        .map(|i| swarm::names(i).pop().unwrap_or_default())
        .into_iter()
        .collect();
    let behaviour = Behaviour {
        fail_hosts,
        ..Behaviour::default()
    };
    let (swarm, _) = online(lab, n, behaviour).await?;
    // The controller learns each host's inventory from its hello.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let cpu = lab.cpu()?;
    let t = Instant::now();
    lab.cli(&["upgrade", "web", "--version", &version, "--yes"])?;
    let want = if fail_at.is_some() {
        "rolled_back"
    } else {
        "succeeded"
    };
    let (id, status) = lab.newest_rollout_end(Duration::from_secs(600)).await?;
    let took = t.elapsed();
    let used = lab.cpu()? - cpu;
    if status != want {
        return Err(format!("rollout {id} ended {status}, not {want}"));
    }
    let moved = swarm.moved_to(&version).await;
    match fail_at {
        None => {
            if moved != n {
                return Err(format!(
                    "{moved} of {n} hosts run {version} after succeeded"
                ));
            }
            println!(
                "rollout {n} hosts (max_parallel {max_parallel}): succeeded in {:.2} s; controller CPU {:.2} s = {:.3} ms per host step",
                took.as_secs_f64(),
                used.as_secs_f64(),
                used.as_secs_f64() * 1000.0 / n as f64
            );
        }
        Some(at) => {
            if moved != 0 {
                return Err(format!(
                    "{moved} host(s) still run {version} after rolled_back"
                ));
            }
            let failed = swarm
                .observed
                .failed_at
                .lock()
                .unwrap()
                .ok_or("no failed report")?;
            let arrivals = *swarm.observed.rollbacks.lock().unwrap();
            let ms = |t: Option<Instant>| {
                t.map(|t| t.duration_since(failed).as_secs_f64() * 1000.0)
                    .ok_or("no rollback command arrived")
            };
            println!(
                "rollout {n} hosts, host {at} failing: rolled_back in {:.2} s; {} rollback commands, the first {:.1} ms and the last {:.1} ms after the failed report",
                took.as_secs_f64(),
                arrivals.count,
                ms(arrivals.first)?,
                ms(arrivals.last)?
            );
        }
    }
    swarm.stop().await;
    Ok(())
}

impl Swarm {
    /// How many hosts run `version` of `web` now.
    pub async fn moved_to(&self, version: &str) -> usize {
        let mut n = 0;
        for a in &self.agents {
            let inv = a.inventory().await;
            if inv
                .iter()
                .any(|s| s.current.as_ref().is_some_and(|c| c.release == version))
            {
                n += 1;
            }
        }
        n
    }
}
