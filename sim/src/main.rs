//! `cutover-sim`: thousands of real agent sessions in one process, and the
//! scale benchmarks that run them against a real controller on loopback.
//!
//! `cutover-sim run` attaches a swarm to a controller you started;
//! `cutover-sim bench NAME` starts its own controller and prints figures.

mod bench;
mod data_migrate;
mod host;
mod lab;
mod migrate;
mod pipeline;
mod plan;
mod swarm;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cutover-sim",
    version,
    about = "cutover fleet simulator and benchmarks"
)]
struct Args {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Runs simulated agents against a controller until Ctrl-C.
    Run {
        #[arg(long, default_value = "https://127.0.0.1:7443")]
        controller: String,
        /// Directory made by `cutover pki init` (the operator certificate
        /// creates the join tokens).
        #[arg(long, default_value = "pki")]
        pki_dir: PathBuf,
        /// Where enrolled identities are kept between runs.
        #[arg(long, default_value = "sim-state")]
        state: PathBuf,
        #[arg(long, default_value_t = 1000)]
        agents: usize,
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        heartbeat: Duration,
        #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
        install_delay: Duration,
        /// Share of installs that fail, 0.0 to 1.0.
        #[arg(long, default_value_t = 0.0)]
        fail_rate: f64,
    },
    /// Runs one benchmark against a controller of its own; prints figures.
    Bench {
        #[arg(value_enum)]
        name: bench::Name,
        /// Agent counts (comma-separated for `connect`); tarball sizes in
        /// MiB for `pipeline`; the number of migrations for `migrate`; rows
        /// for `data-migrate`.
        #[arg(long, value_delimiter = ',')]
        agents: Vec<usize>,
        /// Kept between runs so enrolled identities are reused.
        #[arg(long, default_value = "target/sim-lab")]
        dir: PathBuf,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error")),
        )
        .with_writer(std::io::stderr)
        .init();
    let _ = rustls::crypto::ring::default_provider().install_default();
    raise_fd_limit();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cutover-sim: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match args.command {
            Cmd::Run {
                controller,
                pki_dir,
                state,
                agents,
                heartbeat,
                install_delay,
                fail_rate,
            } => {
                let setup = swarm::Setup {
                    controller,
                    pki: pki_dir,
                    state,
                    heartbeat,
                    max_backoff: Duration::from_secs(30),
                };
                let behaviour = host::Behaviour {
                    install_delay,
                    fail_rate,
                    ..Default::default()
                };
                run(setup, agents, behaviour).await
            }
            Cmd::Bench { name, agents, dir } => bench::run(name, &agents, &dir).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cutover-sim: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(setup: swarm::Setup, agents: usize, behaviour: host::Behaviour) -> swarm::Result<()> {
    let hosts = swarm::names(agents);
    let enrolled = swarm::enroll(&setup, &hosts, 32).await?;
    println!("{enrolled} host(s) enrolled, {} in all", hosts.len());
    let swarm = swarm::Swarm::start(&setup, &hosts, &[], behaviour)?;
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = tick.tick() => println!("{} of {} online", swarm.online(), hosts.len()),
        }
    }
    swarm.stop().await;
    Ok(())
}

/// Thousands of sessions need thousands of descriptors.
fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}
