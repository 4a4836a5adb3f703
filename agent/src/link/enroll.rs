//! Enrollment: trade a one-time join token and a locally made CSR for a
//! host certificate. The private key never leaves this host.

use std::time::Duration;

use cutover_proto::transport::{dial, ControllerAddr};
use cutover_proto::{v1, AgentClient};

use crate::error::{Error, Result};
use crate::link::identity::Identity;
use crate::Config;

/// Enrolls with `token`, retrying while the controller is unreachable, and
/// saves the identity. A refused token is final.
pub async fn enroll(config: &Config, token: &str) -> Result<Identity> {
    let mut delay = Duration::from_millis(250);
    loop {
        match enroll_once(config, token).await {
            Err(e @ Error::Connect { .. }) => {
                tracing::warn!(error = %e, retry_in = ?delay, "enrollment: controller unreachable");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(config.reconnect_max_backoff);
            }
            other => return other,
        }
    }
}

/// One enrollment attempt with a fresh key; on success the new identity
/// replaces the stored one with one atomic rename.
pub async fn enroll_once(config: &Config, token: &str) -> Result<Identity> {
    let addr = ControllerAddr::parse(&config.controller).map_err(Error::Session)?;
    let ca = cutover_core::tls::read_certs(&config.ca_cert)?;
    let (key_pem, csr_pem) = cutover_core::pki::new_csr("cutover-agent")?;
    let channel = dial(&addr, &ca, None)
        .await
        .map_err(|e| crate::link::dial::dial_error(&addr, e))?;
    let resp = AgentClient::new(channel)
        .enroll(v1::EnrollRequest {
            token: token.trim().to_string(),
            csr_pem,
        })
        .await
        .map_err(|s| match s.code() {
            tonic::Code::Unavailable => Error::Connect {
                addr: addr.to_string(),
                detail: s.message().to_string(),
            },
            _ => Error::EnrollRefused(s.message().to_string()),
        })?
        .into_inner();
    let identity = Identity::from_pem(resp.cert_pem, key_pem)?;
    identity.save(&config.data_dir)?;
    tracing::info!(host = %identity.host, not_after = %cutover_core::manifest::rfc3339(identity.not_after), "enrolled");
    Ok(identity)
}
