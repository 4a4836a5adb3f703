//! The host's identity: its private key and the certificate the controller
//! issued for it, kept together in one file so that renewal replaces both
//! with a single atomic rename.

use std::path::{Path, PathBuf};

use cutover_core::pki::{PeerIdentity, Role};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use time::OffsetDateTime;

use crate::error::{Error, Result};

pub const FILE: &str = "identity.pem";

#[derive(Clone)]
pub struct Identity {
    pub host: String,
    pub cert_pem: String,
    pub key_pem: String,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

impl Identity {
    pub fn from_pem(cert_pem: String, key_pem: String) -> Result<Identity> {
        let id = PeerIdentity::from_pem(&cert_pem)?;
        let host = match id.role {
            Role::Host(h) => h,
            Role::Operator(o) => format!("operator:{o}"),
            Role::Other => String::new(),
        };
        cutover_core::tls::parse_key(&key_pem, "identity key")?;
        Ok(Identity {
            host,
            cert_pem,
            key_pem,
            not_before: id.not_before,
            not_after: id.not_after,
        })
    }

    pub fn path(data_dir: &Path) -> PathBuf {
        data_dir.join(FILE)
    }

    pub fn load(data_dir: &Path) -> Result<Option<Identity>> {
        let path = Self::path(data_dir);
        if !path.exists() {
            return Ok(None);
        }
        let text = cutover_core::fsutil::read_to_string(&path)?;
        let key_start = text.find("-----BEGIN PRIVATE KEY-----").ok_or_else(|| {
            Error::Core(cutover_core::Error::pki(
                path.display().to_string(),
                "no private key",
            ))
        })?;
        let (cert, key) = text.split_at(key_start);
        Self::from_pem(cert.to_string(), key.to_string()).map(Some)
    }

    pub fn save(&self, data_dir: &Path) -> Result<()> {
        let text = format!("{}{}", self.cert_pem, self.key_pem);
        cutover_core::fsutil::write_atomic(&Self::path(data_dir), text.as_bytes(), 0o600)?;
        Ok(())
    }

    /// When to renew: two thirds into the certificate's life as issued,
    /// not counting the slack the CA backdates `not_before` by. Counted from
    /// `not_before`, a certificate of under three minutes would be due the
    /// moment it arrived, and each renewal would ask for the next.
    pub fn renew_at(&self) -> OffsetDateTime {
        let issued = (self.not_before + cutover_core::pki::NOT_BEFORE_SLACK).min(self.not_after);
        issued + (self.not_after - issued) * 2 / 3
    }

    pub fn rustls(&self) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
        let certs = rustls_certs(&self.cert_pem)?;
        let key = cutover_core::tls::parse_key(&self.key_pem, "identity key")?;
        Ok((certs, key))
    }
}

fn rustls_certs(pem: &str) -> Result<Vec<CertificateDer<'static>>> {
    Ok(vec![CertificateDer::from(
        cutover_core::pki::first_cert_der(pem)?,
    )])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saves_and_loads_cert_and_key_together() {
        let pki = tempfile::tempdir().unwrap();
        cutover_core::pki::init(&cutover_core::pki::InitOptions {
            dir: pki.path(),
            controller_hosts: &["localhost".into()],
            operator_name: "admin",
        })
        .unwrap();
        let ca = cutover_core::pki::CertificateAuthority::load(
            &pki.path().join("ca.pem"),
            &pki.path().join("ca-key.pem"),
        )
        .unwrap();
        let (key, csr) = cutover_core::pki::new_csr("edge-1").unwrap();
        let cert = ca
            .issue_host_cert(&csr, "edge-1", time::Duration::hours(3))
            .unwrap();
        let id = Identity::from_pem(cert.pem, key).unwrap();
        assert_eq!(id.host, "edge-1");
        let data = tempfile::tempdir().unwrap();
        id.save(data.path()).unwrap();
        let back = Identity::load(data.path()).unwrap().unwrap();
        assert_eq!(back.cert_pem, id.cert_pem);
        assert!(back.rustls().is_ok());
        let issued = back.not_before + cutover_core::pki::NOT_BEFORE_SLACK;
        let life = back.not_after - issued;
        assert_eq!(back.renew_at(), issued + life * 2 / 3);
        // A short-lived certificate is not due the moment it is issued
        // (counting the backdated minute, one of 6 s was due 16 s ago).
        let (key, csr) = cutover_core::pki::new_csr("edge-1").unwrap();
        let short = ca
            .issue_host_cert(&csr, "edge-1", time::Duration::seconds(6))
            .unwrap();
        let short = Identity::from_pem(short.pem, key).unwrap();
        assert!(short.renew_at() > time::OffsetDateTime::now_utc());
        assert!(short.renew_at() < short.not_after);
    }
}
