//! What every cutover binary (`cutover`, `cutover-controller`,
//! `cutover-agent`) sets up before its work, written once: logging to
//! stderr as text or JSON, the async runtime with the TLS provider
//! installed, and SIGTERM/SIGINT. Each `main.rs` keeps only what is its
//! own.

use tokio::signal::unix::{signal, Signal, SignalKind};

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Logs to stderr (colour only on a terminal), filtered by `RUST_LOG` or
/// else `default_filter` (`info`, `warn`).
pub fn init_logging(format: LogFormat, default_filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// The multi-threaded runtime (`workers` threads, or one per core), with
/// rustls's ring provider installed for every TLS connection the binary
/// makes. The error is a sentence for `BINARY: ...`.
pub fn start(workers: Option<usize>) -> Result<tokio::runtime::Runtime, String> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = workers {
        builder.worker_threads(n);
    }
    builder
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start runtime: {e}"))
}

/// SIGTERM and SIGINT, listened for from the moment this is made (so a
/// signal during start-up is not the default action, a silent death).
pub struct Signals {
    term: Signal,
    int: Signal,
}

impl Signals {
    pub fn new() -> std::io::Result<Signals> {
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    /// The next SIGTERM or SIGINT; its name.
    pub async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }

    /// Resolves on the first signal; a second one after it ends the
    /// process at once (exit 1, `binary` saying so on stderr), without
    /// waiting for work in flight.
    pub async fn first_then_exit_on_second(mut self, binary: &'static str) {
        let name = self.next().await;
        tracing::info!(
            signal = name,
            "shutting down (a second signal exits at once)"
        );
        tokio::spawn(async move {
            let name = self.next().await;
            eprintln!(
                "{binary}: second signal ({name}): exiting at once, abandoning requests in flight"
            );
            std::process::exit(1);
        });
    }
}
