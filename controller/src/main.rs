//! `cutover-controller`: parse flags, load the config, serve until SIGINT/SIGTERM.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use tokio::signal::unix::{signal, Signal, SignalKind};

#[derive(Parser)]
#[command(name = "cutover-controller", version, about = "The cutover controller")]
struct Args {
    /// Configuration file (TOML).
    #[arg(long, short, env = "CUTOVER_CONTROLLER_CONFIG")]
    config: PathBuf,
    /// Log format.
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormat,
    /// Start with a new, empty state.db even though the data directory shows
    /// this controller has held state (its state.db is missing or empty).
    /// Nothing in the directory is deleted.
    #[arg(long)]
    allow_empty_store: bool,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// How long the runtime waits for blocking work (a store call, an artifact
/// read) once serving has ended; what is still running then is abandoned.
const RUNTIME_SHUTDOWN: Duration = Duration::from_secs(1);

fn main() -> ExitCode {
    let args = Args::parse();
    let notify = match cutover_controller::notify::Notifier::from_env() {
        Ok(n) => std::sync::Arc::new(n),
        Err(e) => {
            eprintln!("cutover-controller: {e}");
            return ExitCode::FAILURE;
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match args.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    match cutover_controller::server::raise_descriptor_limit() {
        Ok(l) => tracing::info!(
            soft = l.soft,
            hard = l.hard,
            soft_at_start = l.soft_before,
            "descriptor limit (open files; each connected agent holds one)"
        ),
        Err(e) => {
            tracing::warn!(error = %e, "could not raise the descriptor limit; connections may run out of descriptors")
        }
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cutover-controller: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let options = cutover_controller::store::OpenOptions {
        allow_empty_store: args.allow_empty_store,
    };
    let result = runtime.block_on(async {
        // Installed before anything slow, so a signal during start-up is
        // caught and ends the controller as soon as it serves.
        let signals = Signals::new()?;
        let config = cutover_controller::Config::load(&args.config)?;
        config.check_files(&args.config)?;
        let controller = cutover_controller::Controller::open_with(config, options)?;
        cutover_controller::serve(controller, signals.first(), notify).await
    });
    runtime.shutdown_timeout(RUNTIME_SHUTDOWN);
    match result {
        Ok(()) => {
            tracing::info!("stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("cutover-controller: {e}");
            ExitCode::FAILURE
        }
    }
}

struct Signals {
    term: Signal,
    int: Signal,
}

impl Signals {
    fn new() -> cutover_controller::Result<Signals> {
        let install = |kind: SignalKind, name: &str| {
            signal(kind).map_err(|e| {
                cutover_controller::Error::Internal(format!("cannot handle {name}: {e}"))
            })
        };
        Ok(Signals {
            term: install(SignalKind::terminate(), "SIGTERM")?,
            int: install(SignalKind::interrupt(), "SIGINT")?,
        })
    }

    /// Resolves on the first SIGTERM or SIGINT; a second one after it ends
    /// the process at once, without waiting for in-flight requests.
    async fn first(mut self) {
        let name = self.next().await;
        tracing::info!(
            signal = name,
            "shutting down (a second signal exits at once)"
        );
        tokio::spawn(async move {
            let name = self.next().await;
            eprintln!("cutover-controller: second signal ({name}): exiting at once, abandoning requests in flight");
            std::process::exit(1);
        });
    }

    async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}
