//! `cutover-controller`: parse flags, load the config, serve until SIGINT/SIGTERM.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use cutover_runtime::{LogFormat, Signals};

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
    cutover_runtime::init_logging(args.log_format, "info");
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
    let runtime = match cutover_runtime::start(None) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cutover-controller: {e}");
            return ExitCode::FAILURE;
        }
    };
    let options = cutover_controller::store::OpenOptions {
        allow_empty_store: args.allow_empty_store,
    };
    let result = runtime.block_on(async {
        // Installed before anything slow, so a signal during start-up is
        // caught and ends the controller as soon as it serves.
        let signals = Signals::new().map_err(|e| {
            cutover_controller::Error::Internal(format!("cannot handle SIGTERM/SIGINT: {e}"))
        })?;
        let config = cutover_controller::Config::load(&args.config)?;
        config.check_files(&args.config)?;
        let controller = cutover_controller::Controller::open_with(config, options)?;
        cutover_controller::serve(
            controller,
            signals.first_then_exit_on_second("cutover-controller"),
            notify,
        )
        .await
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
