//! The operator's connection to the controller, authenticated by the
//! operator certificate.

use std::path::PathBuf;
use std::time::Duration;

use cutover_core::pki;
use cutover_proto::transport::{connect, error_chain, ControllerAddr};
use cutover_proto::OperatorClient;
use tonic::transport::Channel;

use crate::error::{Error, Result};

/// Where the controller is and which certificate to present.
#[derive(Debug, Clone, clap::Args)]
pub struct ConnectArgs {
    /// The controller's address.
    #[arg(
        long,
        global = true,
        env = "CUTOVER_CONTROLLER",
        default_value = "https://127.0.0.1:7443"
    )]
    pub controller: String,
    /// Directory made by `cutover pki init`: ca.pem, operator.pem, operator-key.pem.
    #[arg(long, global = true, env = "CUTOVER_PKI_DIR", default_value = "pki")]
    pub pki_dir: PathBuf,
    /// CA certificate (overrides PKI_DIR/ca.pem).
    #[arg(long, global = true, env = "CUTOVER_CA")]
    pub ca: Option<PathBuf>,
    /// Operator certificate (overrides PKI_DIR/operator.pem).
    #[arg(long, global = true, env = "CUTOVER_CERT")]
    pub cert: Option<PathBuf>,
    /// Operator private key (overrides PKI_DIR/operator-key.pem).
    #[arg(long, global = true, env = "CUTOVER_KEY")]
    pub key: Option<PathBuf>,
}

impl ConnectArgs {
    fn file(&self, explicit: &Option<PathBuf>, name: &str) -> PathBuf {
        explicit.clone().unwrap_or_else(|| self.pki_dir.join(name))
    }

    /// Connects, or explains which file or which part of the handshake failed.
    pub async fn operator(&self) -> Result<OperatorClient<Channel>> {
        let addr = ControllerAddr::parse(&self.controller).map_err(Error::Usage)?;
        let ca = cutover_core::tls::read_certs(&self.file(&self.ca, pki::CA_CERT))?;
        let certs = cutover_core::tls::read_certs(&self.file(&self.cert, pki::OPERATOR_CERT))?;
        let key = cutover_core::tls::read_key(&self.file(&self.key, pki::OPERATOR_KEY))?;
        let tls = cutover_core::tls::client_config(&ca, Some((certs, key)))?;
        let channel = connect(&addr, tls, Duration::from_secs(10))
            .await
            .map_err(|e| Error::Connect {
                addr: addr.to_string(),
                detail: error_chain(&e),
            })?;
        Ok(OperatorClient::new(channel)
            .max_decoding_message_size(cutover_proto::MAX_OPERATOR_MESSAGE_BYTES))
    }
}
