//! The host's identity: its private key and the certificate the controller
//! issued for it, kept together in one file so that renewal replaces both
//! with a single atomic rename.

use std::path::{Path, PathBuf};

use cutover_core::pki::{PeerIdentity, Role};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use time::OffsetDateTime;

use crate::error::{Error, Result};

pub const FILE: &str = "identity.pem";

/// What to do about an identity file that cannot be used.
fn enroll_again(path: &Path) -> String {
    let p = path.display();
    format!(
        "enroll again: keep the file aside (`mv {p} {p}.damaged`), create a join token with \
         `cutover token create HOST` and restart the agent with --join-token TOKEN; \
         the services keep running"
    )
}

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

    /// The identity in `data_dir`, `None` when there is none. A file that
    /// is there but cannot be used is an error naming it, what is wrong
    /// and how to enroll again; it is never deleted or rewritten here.
    pub fn load(data_dir: &Path) -> Result<Option<Identity>> {
        let path = Self::path(data_dir);
        let bytes =
            match std::fs::read(&path) {
                Ok(b) => b,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(Error::Identity {
                    path,
                    problem: format!("cannot be read ({e})"),
                    fix: "make it readable by the agent and restart it; the services keep running"
                        .into(),
                }),
            };
        Self::parse_file(&bytes)
            .map(Some)
            .map_err(|problem| Error::Identity {
                fix: enroll_again(&path),
                path,
                problem: format!("cannot be used ({problem})"),
            })
    }

    /// Reads an identity file's bytes; the error says what is wrong.
    fn parse_file(bytes: &[u8]) -> std::result::Result<Identity, String> {
        use rustls::pki_types::pem::{self, PemObject, SectionKind};
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err("empty".into());
        }
        let (mut certs, mut keys) = (0usize, 0usize);
        for section in <(SectionKind, Vec<u8>)>::pem_slice_iter(bytes) {
            match section {
                Ok((SectionKind::Certificate, _)) => certs += 1,
                Ok((
                    SectionKind::PrivateKey
                    | SectionKind::EcPrivateKey
                    | SectionKind::RsaPrivateKey,
                    _,
                )) => keys += 1,
                Ok(_) => {}
                Err(pem::Error::MissingSectionEnd { end_marker }) => {
                    let kind = String::from_utf8_lossy(&end_marker);
                    let kind = kind.trim_matches(|c: char| c == '-' || c.is_whitespace());
                    let kind = kind.strip_prefix("END ").unwrap_or(kind);
                    return Err(format!("cut short: its {kind} block has no END line"));
                }
                Err(e) => return Err(format!("damaged PEM: {e}")),
            }
        }
        match (certs, keys) {
            (0, 0) => return Err("no certificate block and no private key block".into()),
            (0, _) => return Err("no certificate block".into()),
            (_, 0) => return Err("no private key block".into()),
            _ => {}
        }
        let text = String::from_utf8_lossy(bytes);
        let key_start = ["PRIVATE KEY", "EC PRIVATE KEY", "RSA PRIVATE KEY"]
            .iter()
            .filter_map(|k| text.find(&format!("-----BEGIN {k}-----")))
            .min()
            .ok_or("no private key block")?;
        let (cert, key) = text.split_at(key_start);
        if cutover_core::pki::first_cert_der(cert).is_err() {
            return Err("the certificate block does not come before the private key".into());
        }
        Self::from_pem(cert.to_string(), key.to_string()).map_err(|e| match e {
            Error::Core(e) => format!("{e}"),
            e => e.to_string(),
        })
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

    /// A CA made with the project's own PKI, and the directory holding it.
    fn test_ca() -> (tempfile::TempDir, cutover_core::pki::CertificateAuthority) {
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
        (pki, ca)
    }

    #[test]
    fn saves_and_loads_cert_and_key_together() {
        let (_pki, ca) = test_ca();
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
        // (counting from the backdated not_before, one of 6 s was due
        // long before it was issued).
        let (key, csr) = cutover_core::pki::new_csr("edge-1").unwrap();
        let short = ca
            .issue_host_cert(&csr, "edge-1", time::Duration::seconds(6))
            .unwrap();
        let short = Identity::from_pem(short.pem, key).unwrap();
        assert!(short.renew_at() > time::OffsetDateTime::now_utc());
        assert!(short.renew_at() < short.not_after);
    }

    /// A real identity file's text, made with the project's own PKI.
    fn identity_text() -> String {
        let (_pki, ca) = test_ca();
        let (key, csr) = cutover_core::pki::new_csr("edge-1").unwrap();
        let cert = ca
            .issue_host_cert(&csr, "edge-1", time::Duration::hours(3))
            .unwrap();
        format!("{}{}", cert.pem, key)
    }

    /// Loads `bytes` as identity.pem: the error's text, and that the file
    /// is left exactly as it was.
    fn load_error(bytes: &[u8]) -> String {
        let data = tempfile::tempdir().unwrap();
        let path = Identity::path(data.path());
        std::fs::write(&path, bytes).unwrap();
        let e = match Identity::load(data.path()) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("a damaged identity loaded"),
        };
        assert_eq!(std::fs::read(&path).unwrap(), bytes, "the file was changed");
        assert!(
            e.starts_with(&format!("{}: cannot be used (", path.display())),
            "{e}"
        );
        assert!(
            e.contains("`cutover token create HOST`")
                && e.contains("--join-token TOKEN")
                && e.contains("the services keep running"),
            "{e}"
        );
        e
    }

    #[test]
    fn truncated_identity_names_the_file_what_is_cut_and_how_to_enroll_again() {
        let text = identity_text();
        let e = load_error(&text.as_bytes()[..500]);
        assert!(
            e.contains("(cut short: its CERTIFICATE block has no END line)"),
            "{e}"
        );
        assert!(!e.contains("no private key"), "misleading: {e}");
    }

    #[test]
    fn key_only_identity_says_the_certificate_is_missing() {
        let text = identity_text();
        let key = &text[text.find("-----BEGIN PRIVATE KEY-----").unwrap()..];
        let e = load_error(key.as_bytes());
        assert!(e.contains("(no certificate block)"), "{e}");
    }

    #[test]
    fn cert_only_identity_says_the_key_is_missing() {
        let text = identity_text();
        let cert = &text[..text.find("-----BEGIN PRIVATE KEY-----").unwrap()];
        let e = load_error(cert.as_bytes());
        assert!(e.contains("(no private key block)"), "{e}");
    }

    #[test]
    fn garbage_identity_says_it_holds_neither() {
        let e = load_error(b"\x00\xff not a pem file \xfe\n");
        assert!(
            e.contains("no certificate block and no private key block"),
            "{e}"
        );
        let e = load_error(b"");
        assert!(e.contains("(empty)"), "{e}");
    }

    #[test]
    fn identity_with_a_damaged_block_says_so() {
        let text = identity_text();
        // A character base64 does not have, in the middle of the certificate.
        let at = text.find("-----BEGIN CERTIFICATE-----").unwrap() + 100;
        let mut bytes = text.into_bytes();
        bytes[at] = b'*';
        let e = load_error(&bytes);
        assert!(e.contains("damaged"), "{e}");
    }

    #[test]
    fn missing_identity_is_none() {
        let data = tempfile::tempdir().unwrap();
        assert!(Identity::load(data.path()).unwrap().is_none());
    }
}
