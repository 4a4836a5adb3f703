//! `cutover demo`: a throwaway PKI, a controller on SQLite and three agents
//! on loopback, started as child processes in a temporary directory, then
//! one of two acts. By default (`canary.rs`) two releases of a sample
//! service: the good one rolled out, then one whose health check fails,
//! stopped at the canary and rolled back. With `--postgres URL`
//! (`platform.rs`) the whole platform upgrade against that database:
//! schema migrations by phase, the service upgraded, its data migration
//! run (paused, resumed) and verified, then contract. Everything started
//! is stopped cleanly at the end (also on Ctrl-C, SIGTERM or SIGHUP).

mod canary;
mod platform;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::client::ConnectArgs;
use crate::error::{Error, Result};

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
    /// Show the whole platform upgrade instead (schema migrations by phase,
    /// a data migration paused, resumed and verified, then contract)
    /// against this empty PostgreSQL database, as
    /// `postgresql://USER@HOST:PORT/DB` without a password;
    /// `scripts/start-postgres` starts a throwaway one and prints it.
    #[arg(long, value_name = "URL")]
    pub postgres: Option<String>,
    /// The file holding the password of --postgres's user.
    #[arg(long, value_name = "FILE", requires = "postgres")]
    pub postgres_password_file: Option<PathBuf>,
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

impl Children {
    /// The error to give when child `name` has exited: its log's last
    /// line, which says why.
    fn exited(&mut self, name: &str, log: &Path) -> Option<Error> {
        let (_, child) = self.0.iter_mut().find(|(n, _)| n == name)?;
        let status = child.try_wait().ok()??;
        let text = std::fs::read(log).unwrap_or_default();
        let tail = &text[text.len().saturating_sub(4096)..];
        let last = String::from_utf8_lossy(tail)
            .lines()
            .rfind(|l| !l.trim().is_empty())
            .map(str::to_string)
            .unwrap_or_default();
        Some(Error::Failed(format!(
            "the {name} exited ({status}): {}",
            crate::output::escape(last.trim())
        )))
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
    // Checked before anything starts.
    let database = match &args.postgres {
        Some(url) => {
            let db = platform::Database::new(url, args.postgres_password_file.as_deref())?;
            db.check_empty(&sibling_binary("cutover-sample")?)?;
            Some(db)
        }
        None => None,
    };
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
    let shown = std::sync::atomic::AtomicBool::new(false);
    tokio::select! {
        r = demo(&args, database.as_ref(), &dir, &mut children, &shown) => r,
        name = stop.recv() => {
            eprintln!("\ndemo: {name}, stopping the fleet");
            // The way a kept fleet ends; cutting the show short is not success.
            if shown.load(std::sync::atomic::Ordering::SeqCst) {
                Ok(())
            } else {
                Err(Error::Stopped)
            }
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

/// What the acts need of the fleet started.
struct Started {
    connect: ConnectArgs,
    port: u16,
    pki: PathBuf,
    sample_bin: PathBuf,
    /// Each agent's host name and the port its sample service listens on.
    hosts: Vec<(String, u16)>,
}

async fn demo(
    args: &DemoArgs,
    database: Option<&platform::Database>,
    dir: &Path,
    children: &mut Children,
    shown: &std::sync::atomic::AtomicBool,
) -> Result<()> {
    let fleet = match database {
        None => start(dir, args.agents, "", "", children).await?,
        Some(db) => {
            start(
                dir,
                args.agents,
                &db.controller_config(),
                platform::AGENT_CONFIG,
                children,
            )
            .await?
        }
    };
    match database {
        None => canary::rollouts(dir, &fleet).await?,
        Some(db) => platform::upgrade_platform(dir, &fleet, db).await?,
    }
    if args.keep_running {
        println!(
            "\ndemo: fleet running. In another shell:\n  export CUTOVER_CONTROLLER=https://127.0.0.1:{} CUTOVER_PKI_DIR={}\n  cutover hosts\nPress Ctrl-C to stop (or send SIGTERM or SIGHUP).",
            fleet.port,
            fleet.pki.display()
        );
        shown.store(true, std::sync::atomic::Ordering::SeqCst);
        std::future::pending::<()>().await;
    }
    println!("\ndemo: stopping the controller and agents");
    Ok(())
}

/// The PKI, the controller (its config ending with `controller_extra`)
/// and `agents` agents (theirs with `agent_extra` before `[vars]`),
/// enrolled and online.
async fn start(
    dir: &Path,
    agents: usize,
    controller_extra: &str,
    agent_extra: &str,
    children: &mut Children,
) -> Result<Started> {
    let controller_bin = sibling_binary("cutover-controller")?;
    let agent_bin = sibling_binary("cutover-agent")?;
    let sample_bin = sibling_binary("cutover-sample")?;
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
            "listen = \"127.0.0.1:{port}\"\ndata_dir = \"controller\"\n\n[tls]\nca_cert = \"pki/ca.pem\"\nca_key = \"pki/ca-key.pem\"\ncert = \"pki/controller.pem\"\nkey = \"pki/controller-key.pem\"\n\n[releases]\ntrusted_keys = [\"release.pub\"]\n{controller_extra}"
        ),
    )?;
    let config_arg = config.display().to_string();
    let log = dir.join("controller.log");
    children.0.push((
        "controller".into(),
        spawn(&controller_bin, &["--config", &config_arg], &log)?,
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
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut client = loop {
        // A controller that stopped will not listen: say why it stopped.
        if let Some(e) = children.exited("controller", &log) {
            return Err(e);
        }
        match connect.operator().await {
            Ok(client) => break client,
            Err(e) if Instant::now() > deadline => {
                return Err(Error::Failed(format!(
                    "gave up waiting for the controller to listen after 15s: {e}"
                )))
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    };

    let mut hosts = Vec::new();
    for i in 1..=agents {
        let host = format!("edge-{i}");
        let token =
            crate::commands::token::new_token(&mut client, &host, Duration::from_secs(300), false)
                .await?
                .token;
        let web_port = free_port()?;
        let agent_config = dir.join(format!("{host}.toml"));
        write(
            &agent_config,
            &format!(
                "controller = \"https://127.0.0.1:{port}\"\nca_cert = \"pki/ca.pem\"\ndata_dir = \"{host}\"\nheartbeat_interval = \"1s\"\nreconnect_max_backoff = \"2s\"\nstop_services_on_exit = true\n{agent_extra}\n[vars]\nweb_port = \"{web_port}\"\n"
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
        hosts.push((host, web_port));
    }

    wait_for(
        Duration::from_secs(30),
        "every agent to come online",
        || async {
            let hosts = crate::commands::fleet::fetch_hosts(&connect).await?;
            let online = hosts.iter().filter(|h| h.online).count();
            if online == agents {
                Ok(())
            } else {
                Err(Error::Failed(format!("{online} of {agents} agents online")))
            }
        },
    )
    .await?;
    Ok(Started {
        connect,
        port,
        pki,
        sample_bin,
        hosts,
    })
}

/// The demo's fleet config: every host labelled `edge`, the sample
/// service `service` on each (`extra` after it), written to
/// DIR/fleet.toml and applied.
async fn apply_fleet(dir: &Path, started: &Started, service: &str, extra: &str) -> Result<()> {
    let mut text = String::new();
    for (host, _) in &started.hosts {
        text.push_str(&format!("[hosts.{host}]\nlabels = [\"edge\"]\n"));
    }
    text.push_str(&format!(
        r#"
# The sample service {service} on every edge host.
[services.{service}]
labels = ["edge"]
runner = "process"
command = "bin/cutover-sample"
args = ["--port", "${{web_port}}"]
stop_grace = "2s"
min_healthy_time = "2s"
healthy_deadline = "6s"

[[services.{service}.checks]]
kind = "http"
url = "http://127.0.0.1:${{web_port}}/healthz"
interval = "250ms"
timeout = "1s"

[services.{service}.policy]
canary = 1
max_parallel = 2
max_unavailable = 2
rollback_scope = "service"
"#
    ));
    text.push_str(extra);
    let path = dir.join("fleet.toml");
    write(&path, &text)?;
    println!("\n$ cutover fleet apply fleet.toml");
    let apply = crate::commands::fleet_config::ApplyArgs {
        file: &path,
        dry_run: false,
        allow_empty: false,
    };
    crate::commands::fleet_config::apply(&started.connect, apply, crate::output::Format::Text).await
}

/// Writes release `version`'s `bundle` into DIR/releases/VERSION (a
/// directory of its own: import refuses migration files a release does
/// not pin), signs it with the demo's key and imports it.
async fn publish(
    dir: &Path,
    connect: &ConnectArgs,
    version: &str,
    bundle: &crate::bundle::Bundle,
) -> Result<()> {
    use crate::output::Format;
    let manifest = bundle.write(&dir.join("releases").join(version))?;
    crate::commands::release::sign(&manifest, &dir.join("release.key"), Format::Text)?;
    crate::commands::release::import(connect, &manifest, None, Format::Text).await
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_child_that_exited_is_reported_with_its_logs_last_line() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("controller.log");
        let child = spawn(
            Path::new("/bin/sh"),
            &[
                "-c",
                "echo starting >&2; echo 'config: bad url' >&2; exit 3",
            ],
            &log,
        )
        .unwrap();
        let mut children = Children(vec![("controller".into(), child)]);
        let deadline = Instant::now() + Duration::from_secs(10);
        let e = loop {
            if let Some(e) = children.exited("controller", &log) {
                break e.to_string();
            }
            assert!(Instant::now() < deadline, "the child did not exit");
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(
            e.starts_with("the controller exited (exit status: 3): config: bad url"),
            "{e}"
        );
        assert!(children.exited("agent", &log).is_none(), "no such child");
    }
}
