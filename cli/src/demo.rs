//! `cutover demo`: a throwaway PKI, a controller on SQLite and three agents
//! on loopback, started as child processes in a temporary directory. It
//! builds two releases of a sample service, rolls the good one out, then
//! the one whose health check fails, shows the canary stopping it and the
//! rollback, and stops everything cleanly (also on Ctrl-C, SIGTERM or SIGHUP).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::client::ConnectArgs;
use crate::error::{Error, Result};
use crate::output::Format;

#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// How many agents to start.
    #[arg(long, default_value_t = 3)]
    pub agents: usize,
    /// Keep the demo fleet running until Ctrl-C, SIGTERM or SIGHUP (prints how
    /// to point the CLI at it).
    #[arg(long)]
    pub keep_running: bool,
    /// Work in this directory instead of a temporary one (kept afterwards).
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

/// Child processes, stopped with SIGTERM (then SIGKILL) when dropped.
struct Children(Vec<(String, Child)>);

impl Drop for Children {
    fn drop(&mut self) {
        use nix::sys::signal::{kill, Signal};
        use nix::unistd::Pid;
        for (_, child) in &self.0 {
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        for (name, child) in &mut self.0 {
            loop {
                match child.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() > deadline => {
                        eprintln!("demo: {name} did not stop in time; killing it");
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        }
    }
}

/// Finds a sibling binary of the running `cutover` (same build directory).
pub fn sibling_binary(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe().map_err(|e| Error::Failed(format!("current exe: {e}")))?;
    let dir = exe.parent().unwrap_or_else(|| Path::new("."));
    let path = dir.join(name);
    if path.is_file() {
        Ok(path)
    } else {
        Err(Error::Failed(format!(
            "{} not found beside {}; build the whole workspace first (`cargo build --release`)",
            path.display(),
            exe.display()
        )))
    }
}

/// A loopback port free now, for a server started later (the
/// controller, each agent's web service). Taken below the kernel's
/// ephemeral range: a port the kernel picked for `bind :0` and got back
/// is soon the source port of some outgoing connection (the demo makes
/// many), and the server binding it a moment later would fail. Walked
/// from a start drawn from the pid and the clock, none given twice; the
/// kernel's own pick if none is free there.
fn free_port() -> Result<u16> {
    const LOWEST: u32 = 10_000;
    let top = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u32>().ok())
        .filter(|low| *low > LOWEST + 1_000 && *low <= 65_536)
        .unwrap_or(32_768);
    let span = top - LOWEST;
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos())
        ^ std::process::id().wrapping_mul(7_919);
    // Handed out before, perhaps not bound yet: never twice.
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
    // A few hundred tries at most: the demo needs a handful of ports.
    for i in 0..span.min(512) {
        let port = u16::try_from(LOWEST + seed.wrapping_add(i) % span).unwrap_or(0);
        if port != 0
            && !given.contains(&port)
            && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
        {
            given.push(port);
            return Ok(port);
        }
    }
    let l = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|e| Error::Failed(format!("no free loopback port: {e}")))?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|e| Error::Failed(e.to_string()))
}

fn write(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).map_err(|e| Error::io(path, e))
}

fn spawn(bin: &Path, args: &[&str], log: &Path) -> Result<Child> {
    let log_file = std::fs::File::create(log).map_err(|e| Error::io(log, e))?;
    Command::new(bin)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log_file)
        .spawn()
        .map_err(|e| Error::Failed(format!("cannot start {}: {e}", bin.display())))
}

pub async fn run(args: DemoArgs) -> Result<()> {
    if args.agents == 0 || args.agents > 50 {
        return Err(Error::Usage("--agents must be between 1 and 50".into()));
    }
    let temp;
    let dir = match &args.dir {
        Some(d) => {
            std::fs::create_dir_all(d).map_err(|e| Error::io(d, e))?;
            d.clone()
        }
        None => {
            temp = tempfile::Builder::new()
                .prefix("cutover-demo-")
                .tempdir()
                .map_err(|e| Error::Failed(format!("temporary directory: {e}")))?;
            temp.path().to_path_buf()
        }
    };
    // Listening before any child starts: a signal that arrives while the
    // fleet comes up stops it too, never orphans it.
    let stop = StopSignals::listen()?;
    let mut children = Children(Vec::new());
    tokio::select! {
        r = demo(&args, &dir, &mut children) => r,
        name = stop.recv() => {
            eprintln!("\ndemo: {name}, stopping the fleet");
            Ok(())
        }
    }
}

/// The signals that end the demo the way Ctrl-C does: every child it started
/// is stopped (by `Children`'s drop) before it exits.
struct StopSignals {
    term: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl StopSignals {
    fn listen() -> Result<StopSignals> {
        use tokio::signal::unix::{signal, SignalKind};
        let listen = |kind: SignalKind, name: &str| {
            signal(kind).map_err(|e| Error::Failed(format!("cannot listen for {name}: {e}")))
        };
        Ok(StopSignals {
            term: listen(SignalKind::terminate(), "SIGTERM")?,
            hup: listen(SignalKind::hangup(), "SIGHUP")?,
        })
    }

    /// Waits for Ctrl-C, SIGTERM or SIGHUP and says which came.
    async fn recv(mut self) -> &'static str {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => "interrupted",
            _ = self.term.recv() => "SIGTERM",
            _ = self.hup.recv() => "SIGHUP",
        }
    }
}

async fn demo(args: &DemoArgs, dir: &Path, children: &mut Children) -> Result<()> {
    let controller_bin = sibling_binary("cutover-controller")?;
    let agent_bin = sibling_binary("cutover-agent")?;
    println!("demo: working in {}", dir.display());

    let pki = dir.join("pki");
    cutover_core::pki::init(&cutover_core::pki::InitOptions {
        dir: &pki,
        controller_hosts: &["127.0.0.1".into(), "localhost".into()],
        operator_name: "demo",
    })?;
    cutover_core::signing::keygen(&dir.join("release"))?;
    let port = free_port()?;
    let config = dir.join("controller.toml");
    write(
        &config,
        &format!(
            "listen = \"127.0.0.1:{port}\"\ndata_dir = \"controller\"\n\n[tls]\nca_cert = \"pki/ca.pem\"\nca_key = \"pki/ca-key.pem\"\ncert = \"pki/controller.pem\"\nkey = \"pki/controller-key.pem\"\n\n[releases]\ntrusted_keys = [\"release.pub\"]\n"
        ),
    )?;
    let config_arg = config.display().to_string();
    children.0.push((
        "controller".into(),
        spawn(
            &controller_bin,
            &["--config", &config_arg],
            &dir.join("controller.log"),
        )?,
    ));
    println!(
        "demo: controller on https://127.0.0.1:{port} (SQLite in {}/controller)",
        dir.display()
    );

    let connect = ConnectArgs {
        controller: format!("https://127.0.0.1:{port}"),
        pki_dir: pki.clone(),
        ca: None,
        cert: None,
        key: None,
    };
    let mut client = wait_for(Duration::from_secs(15), "the controller to listen", || {
        connect.operator()
    })
    .await?;

    let sample_bin = sibling_binary("cutover-sample")?;
    for i in 1..=args.agents {
        let host = format!("edge-{i}");
        let token =
            crate::commands::token::new_token(&mut client, &host, Duration::from_secs(300), false)
                .await?
                .token;
        let agent_config = dir.join(format!("{host}.toml"));
        write(
            &agent_config,
            &format!(
                "controller = \"https://127.0.0.1:{port}\"\nca_cert = \"pki/ca.pem\"\ndata_dir = \"{host}\"\nheartbeat_interval = \"1s\"\nreconnect_max_backoff = \"2s\"\nstop_services_on_exit = true\n\n[vars]\nweb_port = \"{}\"\n",
                free_port()?
            ),
        )?;
        let cfg = agent_config.display().to_string();
        children.0.push((
            host.clone(),
            spawn(
                &agent_bin,
                &["--config", &cfg, "--join-token", &token],
                &dir.join(format!("{host}.log")),
            )?,
        ));
        println!("demo: agent {host} enrolling with a one-time join token");
    }

    let want = args.agents;
    wait_for(
        Duration::from_secs(30),
        "every agent to come online",
        || async {
            let hosts = crate::commands::fleet::fetch_hosts(&connect).await?;
            let online = hosts.iter().filter(|h| h.online).count();
            if online == want {
                Ok(())
            } else {
                Err(Error::Failed(format!("{online} of {want} agents online")))
            }
        },
    )
    .await?;

    rollouts(dir, &connect, &sample_bin, args.agents).await?;

    if args.keep_running {
        println!(
            "\ndemo: fleet running. In another shell:\n  export CUTOVER_CONTROLLER=https://127.0.0.1:{port} CUTOVER_PKI_DIR={}\n  cutover hosts\nPress Ctrl-C to stop (or send SIGTERM or SIGHUP).",
            pki.display()
        );
        std::future::pending::<()>().await;
    }
    println!("\ndemo: stopping the controller and agents");
    Ok(())
}

const FLEET: &str = r#"# The demo's fleet: one sample web service on every edge host.
[services.web]
labels = ["edge"]
runner = "process"
command = "bin/cutover-sample"
args = ["--port", "${web_port}"]
stop_grace = "2s"
min_healthy_time = "2s"
healthy_deadline = "6s"

[[services.web.checks]]
kind = "http"
url = "http://127.0.0.1:${web_port}/healthz"
interval = "250ms"
timeout = "1s"

[services.web.policy]
canary = 1
max_parallel = 2
max_unavailable = 2
rollback_scope = "service"
"#;

/// Builds, signs and imports a release of the sample service.
async fn sample_release(
    dir: &Path,
    connect: &ConnectArgs,
    binary: &[u8],
    version: &str,
    healthy: bool,
) -> Result<()> {
    let service = crate::bundle::Service {
        name: "web".into(),
        service_version: version.strip_suffix(".0").unwrap_or(version).into(),
        depends_on: vec![],
        databases: Vec::new(),
        data_migrations: Vec::new(),
        files: crate::bundle::sample_files(binary, version, healthy),
    };
    let manifest = crate::bundle::write_release(
        &dir.join("releases"),
        version,
        &[service],
        &Default::default(),
    )?;
    crate::commands::release::sign(
        &manifest,
        &dir.join("release.key"),
        crate::output::Format::Text,
    )?;
    crate::commands::release::import(connect, &manifest, None, Format::Text).await
}

/// The main act: a good release rolled out, a bad one stopped at the canary.
async fn rollouts(
    dir: &Path,
    connect: &ConnectArgs,
    sample_bin: &Path,
    agents: usize,
) -> Result<()> {
    use crate::commands::{fleet, rollout};
    let binary = std::fs::read(sample_bin).map_err(|e| Error::io(sample_bin, e))?;
    let mut fleet_toml = String::new();
    for i in 1..=agents {
        fleet_toml.push_str(&format!("[hosts.edge-{i}]\nlabels = [\"edge\"]\n"));
    }
    fleet_toml.push('\n');
    fleet_toml.push_str(FLEET);
    let fleet_path = dir.join("fleet.toml");
    write(&fleet_path, &fleet_toml)?;
    println!("\n$ cutover fleet apply fleet.toml");
    let apply = crate::commands::fleet_config::ApplyArgs {
        file: &fleet_path,
        dry_run: false,
        allow_empty: false,
    };
    crate::commands::fleet_config::apply(connect, apply, Format::Text).await?;

    println!("\n$ cutover release import  (web 1.0, healthy; web 1.1, fails its health check)");
    sample_release(dir, connect, &binary, "1.0.0", true).await?;
    sample_release(dir, connect, &binary, "1.1.0", false).await?;

    let target = |version: &str| rollout::PlanArgs {
        services: vec!["web".into()],
        version: version.into(),
        allow_offline: false,
    };
    println!("\n$ cutover plan web --version 1.0.0");
    rollout::plan(connect, &target("1.0.0"), Format::Text).await?;
    println!("\n$ cutover upgrade web --version 1.0.0 --yes --wait");
    let upgrade = |version: &str| rollout::UpgradeArgs {
        plan: target(version),
        dry_run: false,
        yes: true,
        no_rollback: false,
        wait: true,
    };
    rollout::upgrade(connect, upgrade("1.0.0"), Format::Text).await?;

    println!("\n$ cutover upgrade web --version 1.1.0 --yes --wait");
    match rollout::upgrade(connect, upgrade("1.1.0"), Format::Text).await {
        Err(Error::Failed(why)) => println!("demo: as expected, {why}"),
        Ok(()) => return Err(Error::Failed("the failing release was not stopped".into())),
        Err(e) => return Err(e),
    }
    println!("\n$ cutover status");
    fleet::status(connect, Format::Text).await?;
    println!("\n$ cutover rollout show 2");
    rollout::show(connect, 2, Format::Text).await?;
    println!("\n$ cutover diag edge-1");
    fleet::diag(connect, "edge-1", Format::Text).await?;
    Ok(())
}

/// Retries `f` until it succeeds or `timeout` passes; the last error says why.
async fn wait_for<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() > deadline => {
                return Err(Error::Failed(format!(
                    "gave up waiting for {what} after {}s: {e}",
                    timeout.as_secs()
                )))
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}
