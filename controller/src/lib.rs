//! The cutover controller: holds releases, channels, the artifact store and
//! fleet state; serves the agent and operator APIs over mutual TLS.

pub mod api;
pub mod artifacts;
pub mod config;
pub mod error;
pub mod rollout;
pub mod server;
pub mod sessions;
pub mod store;

use std::sync::Arc;
use std::time::Duration;

use cutover_core::pki::CertificateAuthority;
use cutover_core::signing::TrustedKeys;
use cutover_core::tls::RevokedHosts;
use cutover_proto::{AgentServer, OperatorServer};
use tokio::net::TcpListener;
use tokio_stream::wrappers::ReceiverStream;

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
    fleet: api::rollouts::ParsedFleet,
    inbox: std::sync::Mutex<Option<rollout::driver::Inbox>>,
}

impl Controller {
    pub fn open(config: Config) -> Result<Arc<Controller>> {
        std::fs::create_dir_all(&config.data_dir).map_err(|e| Error::io(&config.data_dir, e))?;
        let store = store::Store::open(&config.data_dir.join("state.db"))?;
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

/// Serves both APIs until `shutdown` resolves.
pub async fn serve(
    controller: Arc<Controller>,
    shutdown: impl std::future::Future<Output = ()> + Send,
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
    let incoming = server::incoming(listener, Arc::new(server_config));
    let inbox = controller
        .inbox
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take()
        .ok_or_else(|| Error::Internal("serve called twice".into()))?;
    let driver = tokio::spawn(rollout::driver::run(controller.clone(), inbox));

    let agent = AgentServer::new(api::agent::AgentApi::new(controller.clone()))
        .max_decoding_message_size(cutover_proto::MAX_MESSAGE_BYTES);
    let operator = OperatorServer::with_interceptor(
        api::operator::OperatorApi::new(controller.clone()),
        api::operator::require_operator,
    );
    let served = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        .add_service(agent)
        .add_service(operator)
        .serve_with_incoming_shutdown(ReceiverStream::new(incoming), shutdown)
        .await
        .map_err(|e| Error::Unavailable(format!("server: {e}")));
    driver.abort();
    // Session tasks die with the runtime: record when each host was last
    // heard from while we still can.
    for session in controller.sessions.snapshot() {
        let last_seen = session
            .last_seen_ms
            .load(std::sync::atomic::Ordering::Relaxed);
        if let Err(e) =
            controller
                .store
                .record_disconnect(&session.host, last_seen, "controller shut down")
        {
            tracing::warn!(host = %session.host, error = %e, "could not record disconnect");
        }
    }
    served
}
