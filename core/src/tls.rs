//! rustls configurations for cutover's mutual TLS: the controller's server
//! side (client certificates optional at the handshake so that enrollment
//! can run, verified against our CA, revoked hosts refused) and the client
//! side of agents and operators.

use std::collections::HashSet;
use std::fmt;
use std::path::Path;
use std::sync::{Arc, RwLock};

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};

use crate::error::{Error, Result};
use crate::fsutil::read_to_string;
use crate::pki::{PeerIdentity, Role};

/// The crypto provider every cutover TLS config uses.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Host names whose certificates the controller refuses at the handshake.
#[derive(Clone, Default)]
pub struct RevokedHosts(Arc<RwLock<HashSet<String>>>);

impl RevokedHosts {
    pub fn insert(&self, host: &str) {
        self.0
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(host.to_string());
    }

    /// Lets `host`'s name through again: its record was forgotten, and a
    /// certificate issued under the name from now on is a new identity
    /// (an old one is refused by serial, as a replaced certificate is).
    pub fn remove(&self, host: &str) {
        self.0
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(host);
    }

    pub fn contains(&self, host: &str) -> bool {
        self.0
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains(host)
    }
}

impl fmt::Debug for RevokedHosts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RevokedHosts")
    }
}

pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let text = read_to_string(path)?;
    let certs = rustls_pemfile::certs(&mut text.as_bytes())
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Error::pki(format!("certificate {}", path.display()), e))?;
    if certs.is_empty() {
        return Err(Error::pki(
            format!("certificate {}", path.display()),
            "no CERTIFICATE block",
        ));
    }
    Ok(certs)
}

pub fn parse_key(pem: &str, what: &str) -> Result<PrivateKeyDer<'static>> {
    rustls_pemfile::private_key(&mut pem.as_bytes())
        .map_err(|e| Error::pki(what, e))?
        .ok_or_else(|| Error::pki(what, "no PRIVATE KEY block"))
}

pub fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>> {
    parse_key(
        &read_to_string(path)?,
        &format!("private key {}", path.display()),
    )
}

fn roots(ca: &[CertificateDer<'static>]) -> Result<RootCertStore> {
    let mut store = RootCertStore::empty();
    for c in ca {
        store
            .add(c.clone())
            .map_err(|e| Error::pki("CA certificate", e))?;
    }
    Ok(store)
}

/// The controller's server configuration.
pub fn server_config(
    ca: &[CertificateDer<'static>],
    cert: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    revoked: RevokedHosts,
) -> Result<rustls::ServerConfig> {
    let provider = provider();
    let inner = WebPkiClientVerifier::builder_with_provider(Arc::new(roots(ca)?), provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(|e| Error::pki("client verifier", e))?;
    let verifier = Arc::new(RevocationAwareVerifier { inner, revoked });
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::pki("TLS", e))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(cert, key)
        .map_err(|e| Error::pki("controller certificate", e))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// A client configuration trusting only our CA, presenting `identity` when given.
pub fn client_config(
    ca: &[CertificateDer<'static>],
    identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
) -> Result<rustls::ClientConfig> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::pki("TLS", e))?
        .with_root_certificates(roots(ca)?);
    let mut config = match identity {
        Some((certs, key)) => builder
            .with_client_auth_cert(certs, key)
            .map_err(|e| Error::pki("client certificate", e))?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// Verifies client certificates against the CA, then refuses revoked hosts.
#[derive(Debug)]
struct RevocationAwareVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    revoked: RevokedHosts,
}

impl ClientCertVerifier for RevocationAwareVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> std::result::Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        if let Ok(PeerIdentity {
            role: Role::Host(host),
            ..
        }) = PeerIdentity::from_der(end_entity)
        {
            if self.revoked.contains(&host) {
                return Err(rustls::Error::InvalidCertificate(
                    rustls::CertificateError::Revoked,
                ));
            }
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
