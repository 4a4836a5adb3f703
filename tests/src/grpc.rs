//! A direct gRPC client for the refusal tests: it presents exactly the
//! certificate a test chooses (or none), over the same TLS code as the CLI.

use std::path::Path;
use std::time::Duration;

use cutover_proto::transport::{connect, error_chain, ControllerAddr};
use cutover_proto::{AgentClient, OperatorClient};
use tonic::transport::Channel;

/// PEM certificate and key to present.
pub struct Presented {
    pub cert_pem: String,
    pub key_pem: String,
}

impl Presented {
    pub fn from_files(cert: &Path, key: &Path) -> Presented {
        Presented {
            cert_pem: std::fs::read_to_string(cert).expect("cert"),
            key_pem: std::fs::read_to_string(key).expect("key"),
        }
    }

    /// An agent's `identity.pem` holds both.
    pub fn from_identity(path: &Path) -> Presented {
        let text = std::fs::read_to_string(path).expect("identity");
        let at = text
            .find("-----BEGIN PRIVATE KEY-----")
            .expect("key in identity");
        Presented {
            cert_pem: text[..at].to_string(),
            key_pem: text[at..].to_string(),
        }
    }
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// Connects with `presented` (or no certificate). A refused handshake may
/// surface here or on the first call; both are returned as text.
pub async fn channel(
    url: &str,
    ca: &Path,
    presented: Option<&Presented>,
) -> Result<Channel, String> {
    let addr = ControllerAddr::parse(url)?;
    let ca = cutover_core::tls::read_certs(ca).map_err(|e| e.to_string())?;
    let identity = presented.map(|p| {
        let der = cutover_core::pki::first_cert_der(&p.cert_pem).expect("cert der");
        let key = cutover_core::tls::parse_key(&p.key_pem, "key").expect("key");
        (vec![der.into()], key)
    });
    let tls = cutover_core::tls::client_config(&ca, identity).map_err(|e| e.to_string())?;
    connect(&addr, tls, Duration::from_secs(5))
        .await
        .map_err(|e| error_chain(&e))
}

pub fn status_text(s: &tonic::Status) -> String {
    format!("{:?}: {}", s.code(), error_chain(s))
}

pub fn operator(ch: Channel) -> OperatorClient<Channel> {
    OperatorClient::new(ch)
}

pub fn agent(ch: Channel) -> AgentClient<Channel> {
    AgentClient::new(ch)
}
