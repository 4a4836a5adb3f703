//! `cutover-agent`: load config, lock the data directory, load the identity
//! (enrolling with a join token the first time), then hold the session
//! until SIGINT/SIGTERM.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use cutover_runtime::LogFormat;

#[derive(Parser)]
#[command(name = "cutover-agent", version, about = "The cutover agent")]
struct Args {
    /// Configuration file (TOML).
    #[arg(long, short, env = "CUTOVER_AGENT_CONFIG")]
    config: PathBuf,
    /// One-time join token from `cutover token create HOST`; needed only
    /// until the agent has an identity, and again once its certificate has
    /// expired (a host that was down past the certificate's life).
    #[arg(long, env = "CUTOVER_JOIN_TOKEN", hide_env_values = true)]
    join_token: Option<String>,
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormat,
}

fn main() -> ExitCode {
    let args = Args::parse();
    cutover_runtime::init_logging(args.log_format, "info");
    let runtime = match cutover_runtime::start(Some(2)) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cutover-agent: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result: Result<(), cutover_agent::Error> = runtime.block_on(async {
        let config = cutover_agent::Config::load(&args.config)?;
        config.check_files(&args.config)?;
        // Before anything reads or writes the data directory; held until
        // the agent has stopped (and, if configured, stopped its services).
        let _lock = cutover_agent::lock::acquire(&config.data_dir)?;
        let identity = match cutover_agent::identity::Identity::load(&config.data_dir)? {
            Some(id) => {
                if args.join_token.is_some() && id.not_after > time::OffsetDateTime::now_utc() {
                    // Used only if this certificate expires; say so, so an
                    // operator enrolling afresh knows what is in the way.
                    tracing::warn!(host = %id.host, data_dir = %config.data_dir.display(), "--join-token is not used: the data directory holds a valid identity (identity.pem) for this host; to enroll with the token, move identity.pem aside and start again");
                }
                id
            }
            None => match &args.join_token {
                Some(token) => cutover_agent::enroll::enroll(&config, token).await?,
                None => {
                    return Err(cutover_agent::Error::NoIdentity {
                        data_dir: config.data_dir.clone(),
                    })
                }
            },
        };
        tracing::info!(host = %identity.host, controller = %config.controller, "starting");
        // An expired identity is kept: the session enrolls again with the
        // join token, if one was given, and the services keep running.
        let agent = cutover_agent::session::Agent::new(config, identity, args.join_token)?;
        cutover_agent::session::run(agent, shutdown_signal()).await;
        Ok(())
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cutover-agent: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The first SIGTERM or SIGINT (never, if they cannot be listened for:
/// the agent then runs until killed).
async fn shutdown_signal() {
    let Ok(mut signals) = cutover_runtime::Signals::new() else {
        return std::future::pending().await;
    };
    signals.next().await;
    tracing::info!("shutting down");
}
