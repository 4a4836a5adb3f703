//! Dialling the controller as this host: its address, the CA to check
//! it against and the identity to present, shared by the session and the
//! artifact source.

use std::sync::Mutex;

use cutover_proto::transport::{dial, error_chain, ControllerAddr, DialError};

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
        let identity = self.identity().rustls()?;
        dial(&self.addr, &self.ca, Some(identity))
            .await
            .map_err(|e| dial_error(&self.addr, e))
    }
}

/// A failed dial as the agent says it: our TLS settings, or the
/// controller unreachable (which callers retry).
pub fn dial_error(addr: &ControllerAddr, e: DialError) -> Error {
    match e {
        DialError::Tls(e) => e.into(),
        DialError::Connect(e) => Error::Connect {
            addr: addr.to_string(),
            detail: error_chain(&e),
        },
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
