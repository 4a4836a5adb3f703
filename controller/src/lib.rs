//! The cutover controller: holds releases, channels, the artifact store and
//! fleet state; serves the agent and operator APIs over mutual TLS.

pub mod api;
pub mod artifacts;
pub mod config;
pub mod error;
pub mod fleet_view;
pub mod migrate;
pub mod notify;
pub mod rollout;
pub mod server;
pub mod sessions;
pub mod store;
#[cfg(test)]
mod testing;

use std::sync::Arc;
use std::time::Duration;

use cutover_core::pki::CertificateAuthority;
use cutover_core::signing::TrustedKeys;
use cutover_core::tls::RevokedHosts;
use cutover_proto::{AgentServer, OperatorServer};
use tokio::net::TcpListener;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

pub use config::Config;
pub use error::{Error, Result};

/// Everything the API handlers share.
pub struct Controller {
    pub config: Config,
    pub store: store::Store,
    pub sessions: sessions::Sessions,
    pub ca: CertificateAuthority,
    pub trusted_keys: TrustedKeys,
    pub revoked: RevokedHosts,
    pub artifacts: artifacts::ArtifactStore,
    pub rollouts: rollout::driver::Rollouts,
    fleet: fleet_view::ParsedFleet,
    inbox: std::sync::Mutex<Option<rollout::driver::Inbox>>,
}

impl Controller {
    /// Opens with the default start-up checks: a data directory that has
    /// held state refuses a missing or empty store.
    pub fn open(config: Config) -> Result<Arc<Controller>> {
        Self::open_with(config, store::OpenOptions::default())
    }

    pub fn open_with(config: Config, options: store::OpenOptions) -> Result<Arc<Controller>> {
        std::fs::create_dir_all(&config.data_dir).map_err(|e| Error::io(&config.data_dir, e))?;
        let store = store::open_checked(&config.data_dir, options)?;
        let revoked = RevokedHosts::default();
        for host in store.revoked_hosts()? {
            revoked.insert(&host);
        }
        let ca = CertificateAuthority::load(&config.tls.ca_cert, &config.tls.ca_key)?;
        let trusted_keys = TrustedKeys::load(
            &config.releases.trusted_keys,
            config.releases.signature_threshold,
        )?;
        let artifacts = artifacts::ArtifactStore::open(&config.data_dir.join("artifacts"))?;
        let (rollouts, inbox) = rollout::driver::Rollouts::new();
        Ok(Arc::new(Controller {
            config,
            store,
            sessions: sessions::Sessions::default(),
            ca,
            trusted_keys,
            revoked,
            artifacts,
            rollouts,
            fleet: Default::default(),
            inbox: std::sync::Mutex::new(Some(inbox)),
        }))
    }
}

/// Serves both APIs until `shutdown` resolves. Then the listener is closed
/// at once (the port is free for the next controller), every agent session
/// is ended with the going-away notice (agents reconnect, spread out, to
/// whoever listens later), in-flight requests finish, and the store takes
/// its last writes, all within the config's `shutdown_grace`; what is left
/// then is abandoned.
/// `notify` tells systemd: ready once the listener accepts connections,
/// watchdog pings while serving, stopping at shutdown.
pub async fn serve(
    controller: Arc<Controller>,
    shutdown: impl std::future::Future<Output = ()> + Send,
    notify: Arc<notify::Notifier>,
) -> Result<()> {
    let tls = &controller.config.tls;
    let server_config = cutover_core::tls::server_config(
        &cutover_core::tls::read_certs(&tls.ca_cert)?,
        cutover_core::tls::read_certs(&tls.cert)?,
        cutover_core::tls::read_key(&tls.key)?,
        controller.revoked.clone(),
    )?;
    let addr = controller.config.listen;
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| Error::Unavailable(format!("cannot listen on {addr}: {e}")))?;
    let local = listener
        .local_addr()
        .map_err(|e| Error::Internal(e.to_string()))?;
    tracing::info!(addr = %local, "cutover-controller listening");
    let stop = CancellationToken::new();
    let incoming = server::incoming(
        listener,
        Arc::new(server_config),
        server::Limits::default(),
        stop.clone(),
    );
    let inbox = controller
        .inbox
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take()
        .ok_or_else(|| Error::Internal("serve called twice".into()))?;
    let driver = rollout::driver::spawn(controller.clone(), inbox);
    // The listener is bound and accepting: connections made from now on
    // are served.
    notify.ready(&format!("serving on {local}"));
    let watchdog = tokio::spawn({
        let notify = notify.clone();
        async move { notify.watchdog().await }
    });

    let agent = AgentServer::new(api::agent::AgentApi::new(controller.clone()))
        .max_decoding_message_size(cutover_proto::MAX_MESSAGE_BYTES);
    let operator = OperatorServer::with_interceptor(
        api::operator::OperatorApi::new(controller.clone()),
        api::operator::require_operator,
    );
    let server = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        .add_service(agent)
        .add_service(operator)
        .serve_with_incoming_shutdown(
            ReceiverStream::new(incoming),
            stop.clone().cancelled_owned(),
        );
    tokio::pin!(server);
    let grace = controller.config.shutdown_grace;
    // Set when the shutdown begins; a server that ends on its own has the
    // whole grace for the store's last writes.
    let mut deadline = tokio::time::Instant::now() + grace;
    let served = tokio::select! {
        r = &mut server => r,
        () = shutdown => {
            deadline = tokio::time::Instant::now() + grace;
            // Stops the accept loop (closing the listener) and has tonic
            // send GOAWAY on every connection.
            stop.cancel();
            notify.stopping("shutting down: cutting agent sessions, finishing requests in flight");
            let sessions = controller.sessions.snapshot().len();
            tracing::info!(sessions, ?grace, "shutting down: listener closed, telling agents the controller is going away");
            // The store's last writes (below) get a share of the grace.
            let drain_by = deadline - grace / 4;
            let drained = tokio::time::timeout_at(drain_by, async {
                loop {
                    // Sessions that registered after the last pass are cut
                    // on the next one.
                    cut_sessions(&controller);
                    tokio::select! {
                        r = &mut server => break r,
                        () = tokio::time::sleep(Duration::from_millis(100)) => {}
                    }
                }
            })
            .await;
            match drained {
                Ok(r) => r,
                Err(_) => {
                    tracing::warn!(?grace, "requests still in flight after three quarters of the shutdown grace; abandoning them");
                    Ok(())
                }
            }
        }
    }
    .map_err(|e| Error::Unavailable(format!("server: {e}")));
    driver.abort();
    watchdog.abort();
    // Session tasks die with the runtime: record when each host was last
    // heard from while we still can, within a bound of its own.
    let store = controller.store.clone();
    let seen: Vec<(String, i64)> = controller
        .sessions
        .snapshot()
        .iter()
        .map(|s| {
            (
                s.host.clone(),
                s.last_seen_ms.load(std::sync::atomic::Ordering::Relaxed),
            )
        })
        .collect();
    let record = store.run(move |store| {
        for (host, last_seen) in seen {
            if let Err(e) = store.record_disconnect(&host, last_seen, "controller shut down") {
                tracing::warn!(host = %host, error = %e, "could not record disconnect");
            }
        }
        Ok(())
    });
    // Queued behind any store call in flight, so it also waits for the
    // transaction that call is in.
    if tokio::time::timeout_at(deadline, record).await.is_err() {
        tracing::warn!(?grace, "the store did not take the disconnects within the shutdown grace; exiting without them");
    }
    served
}

fn cut_sessions(controller: &Controller) {
    for session in controller.sessions.snapshot() {
        if !session.cut.is_cancelled() {
            session.cut(cutover_proto::going_away());
        }
    }
}
