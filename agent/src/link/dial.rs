//! Dialling the controller as this host: its address, the CA to check
//! it against and the identity to present, shared by the session and the
//! artifact source.

use std::sync::Mutex;
use std::time::Duration;

use cutover_proto::transport::{connect, error_chain, ControllerAddr};

use crate::error::{Error, Result};
use crate::link::identity::Identity;
use crate::Config;

/// What a session needs to dial the controller.
pub struct Dialer {
    pub addr: ControllerAddr,
    ca: Vec<rustls::pki_types::CertificateDer<'static>>,
    pub identity: Mutex<Identity>,
}

impl Dialer {
    pub fn new(config: &Config, identity: Identity) -> Result<Dialer> {
        Ok(Dialer {
            addr: ControllerAddr::parse(&config.controller).map_err(Error::Session)?,
            ca: cutover_core::tls::read_certs(&config.ca_cert)?,
            identity: Mutex::new(identity),
        })
    }

    pub fn identity(&self) -> Identity {
        self.identity
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub async fn channel(&self) -> Result<tonic::transport::Channel> {
        let tls = cutover_core::tls::client_config(&self.ca, Some(self.identity().rustls()?))?;
        connect(&self.addr, tls, Duration::from_secs(10))
            .await
            .map_err(|e| Error::Connect {
                addr: self.addr.to_string(),
                detail: error_chain(&e),
            })
    }
}

/// A refusal from the controller in words: its code and message, or the
/// transport's cause when it gave none.
pub fn status_text(s: &tonic::Status) -> String {
    if s.message().is_empty() {
        error_chain(s)
    } else {
        format!("{:?}: {}", s.code(), s.message())
    }
}
