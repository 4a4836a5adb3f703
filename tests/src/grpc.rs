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

/// The operator API of `f`'s controller, with the operator certificate.
pub async fn operator_of(f: &crate::Fleet) -> OperatorClient<Channel> {
    let me = Presented::from_files(&f.pki.join("operator.pem"), &f.pki.join("operator-key.pem"));
    let ch = channel(&f.url(), &f.pki.join("ca.pem"), Some(&me))
        .await
        .expect("operator channel");
    operator(ch)
}

pub fn agent(ch: Channel) -> AgentClient<Channel> {
    AgentClient::new(ch)
}

/// Trades a join token for a certificate of `host`, with a fresh key: what
/// an agent's enrollment does, for tests that then speak as that host.
pub async fn enroll(url: &str, ca: &Path, token: &str, host: &str) -> Result<Presented, String> {
    let (key_pem, csr_pem) = cutover_core::pki::new_csr(host).map_err(|e| e.to_string())?;
    let ch = channel(url, ca, None).await?;
    let issued = agent(ch)
        .enroll(cutover_proto::v1::EnrollRequest {
            token: token.into(),
            csr_pem,
        })
        .await
        .map_err(|s| status_text(&s))?
        .into_inner();
    Ok(Presented {
        cert_pem: issued.cert_pem,
        key_pem,
    })
}

/// An agent session a test holds open: what it sends, what it receives.
pub struct Session {
    pub tx: tokio::sync::mpsc::Sender<cutover_proto::v1::AgentMessage>,
    pub inbound: tonic::Streaming<cutover_proto::v1::ControllerMessage>,
}

/// Opens a session as `presented` with a hello asking for heartbeats every
/// `heartbeat_ms`, and waits for the welcome. Refusals are returned as
/// [`status_text`]. No heartbeat is sent unless the test sends it.
pub async fn open_session(
    url: &str,
    ca: &Path,
    presented: &Presented,
    heartbeat_ms: u64,
) -> Result<Session, String> {
    use cutover_proto::v1;
    let ch = channel(url, ca, Some(presented)).await?;
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tx.send(v1::AgentMessage {
        msg: Some(v1::agent_message::Msg::Hello(v1::Hello {
            agent_version: "test".into(),
            heartbeat_interval_ms: heartbeat_ms,
            ..Default::default()
        })),
    })
    .await
    .map_err(|_| "session queue closed".to_string())?;
    let mut inbound = agent(ch)
        .session(tonic::codegen::tokio_stream::wrappers::ReceiverStream::new(
            rx,
        ))
        .await
        .map_err(|s| status_text(&s))?
        .into_inner();
    match inbound.message().await {
        Ok(Some(v1::ControllerMessage {
            msg: Some(v1::controller_message::Msg::Welcome(_)),
        })) => Ok(Session { tx, inbound }),
        Ok(other) => Err(format!("expected a welcome, got {other:?}")),
        Err(s) => Err(status_text(&s)),
    }
}
