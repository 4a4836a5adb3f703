//! cutover's own PKI: an ECDSA P-256 CA, the controller's server
//! certificate, operator client certificates and short-lived host
//! certificates issued from agents' CSRs. Roles are carried in a URI SAN
//! (`cutover://host/NAME`, `cutover://operator/NAME`) that only the CA sets.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use time::{Duration, OffsetDateTime};

use crate::error::{Error, Result};
use crate::fsutil::{read_to_string, write_atomic};

/// File names inside a PKI directory made by [`init`].
pub const CA_CERT: &str = "ca.pem";
pub const CA_KEY: &str = "ca-key.pem";
pub const CONTROLLER_CERT: &str = "controller.pem";
pub const CONTROLLER_KEY: &str = "controller-key.pem";
pub const OPERATOR_CERT: &str = "operator.pem";
pub const OPERATOR_KEY: &str = "operator-key.pem";

const HOST_URI: &str = "cutover://host/";
const OPERATOR_URI: &str = "cutover://operator/";

/// Who a certificate says its holder is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    Host(String),
    Operator(String),
    /// A certificate of our CA that carries no cutover role (the controller's own).
    Other,
}

/// The identity read from a verified peer certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    pub role: Role,
    pub serial: String,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

impl PeerIdentity {
    pub fn from_der(der: &[u8]) -> Result<Self> {
        use x509_parser::prelude::*;
        let (_, cert) =
            X509Certificate::from_der(der).map_err(|e| Error::pki("peer certificate", e))?;
        let mut role = Role::Other;
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                if let GeneralName::URI(uri) = name {
                    if let Some(host) = uri.strip_prefix(HOST_URI) {
                        role = Role::Host(host.to_string());
                    } else if let Some(op) = uri.strip_prefix(OPERATOR_URI) {
                        role = Role::Operator(op.to_string());
                    }
                }
            }
        }
        let validity = cert.validity();
        Ok(PeerIdentity {
            role,
            serial: cert.raw_serial_as_string().replace(':', ""),
            not_before: validity.not_before.to_datetime(),
            not_after: validity.not_after.to_datetime(),
        })
    }

    pub fn from_pem(pem: &str) -> Result<Self> {
        let der = first_cert_der(pem)?;
        Self::from_der(&der)
    }
}

/// The DER of the first certificate in a PEM text.
pub fn first_cert_der(pem: &str) -> Result<Vec<u8>> {
    rustls_pemfile::certs(&mut pem.as_bytes())
        .next()
        .ok_or_else(|| Error::pki("certificate", "no CERTIFICATE block in PEM"))?
        .map(|c| c.to_vec())
        .map_err(|e| Error::pki("certificate", e))
}

/// Options of [`init`].
pub struct InitOptions<'a> {
    pub dir: &'a Path,
    /// DNS names or IP addresses the controller is reached at.
    pub controller_hosts: &'a [String],
    pub operator_name: &'a str,
}

/// Makes a CA, the controller's server certificate and an operator client
/// certificate in `dir`. Refuses to overwrite an existing CA.
pub fn init(opts: &InitOptions<'_>) -> Result<Vec<PathBuf>> {
    let dir = opts.dir;
    if dir.join(CA_CERT).exists() || dir.join(CA_KEY).exists() {
        return Err(Error::Invalid(format!(
            "{} already holds a CA; refusing to overwrite it",
            dir.display()
        )));
    }
    if opts.controller_hosts.is_empty() {
        return Err(Error::Invalid("give at least one --controller-host".into()));
    }
    crate::names::validate("operator", opts.operator_name)?;
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;

    let now = OffsetDateTime::now_utc();
    let ca_key = new_key()?;
    let mut ca = CertificateParams::default();
    // A unique subject: a foreign CA must never be mistaken for ours by name.
    ca.distinguished_name = dn(&format!("cutover CA {:016x}", rand::random::<u64>()));
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca.not_before = now - Duration::minutes(5);
    ca.not_after = now + Duration::days(3650);
    ca.serial_number = Some(random_serial());
    let ca_cert = ca.self_signed(&ca_key).map_err(|e| Error::pki("CA", e))?;
    let issuer = Issuer::new(ca, ca_key);

    let server_key = new_key()?;
    let mut server = leaf("cutover controller", now, Duration::days(825));
    for h in opts.controller_hosts {
        server
            .subject_alt_names
            .push(match h.parse::<std::net::IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(
                    h.clone()
                        .try_into()
                        .map_err(|e| Error::pki(format!("controller host {h:?}"), e))?,
                ),
            });
    }
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let server_cert = server
        .signed_by(&server_key, &issuer)
        .map_err(|e| Error::pki("controller certificate", e))?;

    let op_key = new_key()?;
    let mut op = leaf(opts.operator_name, now, Duration::days(365));
    op.subject_alt_names
        .push(uri_san(&format!("{OPERATOR_URI}{}", opts.operator_name))?);
    op.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let op_cert = op
        .signed_by(&op_key, &issuer)
        .map_err(|e| Error::pki("operator certificate", e))?;

    let files = [
        (CA_CERT, ca_cert.pem(), 0o644),
        (CA_KEY, issuer.key().serialize_pem(), 0o600),
        (CONTROLLER_CERT, server_cert.pem(), 0o644),
        (CONTROLLER_KEY, server_key.serialize_pem(), 0o600),
        (OPERATOR_CERT, op_cert.pem(), 0o644),
        (OPERATOR_KEY, op_key.serialize_pem(), 0o600),
    ];
    let mut written = Vec::new();
    for (name, pem, mode) in files {
        let path = dir.join(name);
        write_atomic(&path, pem.as_bytes(), mode)?;
        written.push(path);
    }
    Ok(written)
}

/// The CA as the controller holds it: signs host certificates.
pub struct CertificateAuthority {
    issuer: Issuer<'static, KeyPair>,
}

/// Every certificate is valid from this long before the time it is made for.
const LEAF_SLACK: Duration = Duration::minutes(5);
/// A host certificate is valid from this long before it is issued, for
/// hosts whose clocks lag the controller's; its life as issued starts this
/// much after its `not_before`.
pub const NOT_BEFORE_SLACK: Duration = Duration::minutes(6);

/// A certificate issued to a host.
#[derive(Debug, Clone)]
pub struct IssuedCert {
    pub pem: String,
    pub serial: String,
    pub not_after: OffsetDateTime,
}

impl CertificateAuthority {
    pub fn load(cert: &Path, key: &Path) -> Result<Self> {
        let key_pem = read_to_string(key)?;
        let key = KeyPair::from_pem(&key_pem)
            .map_err(|e| Error::pki(format!("CA key {}", key.display()), e))?;
        let cert_pem = read_to_string(cert)?;
        let issuer = Issuer::from_ca_cert_pem(&cert_pem, key)
            .map_err(|e| Error::pki(format!("CA certificate {}", cert.display()), e))?;
        Ok(CertificateAuthority { issuer })
    }

    /// Issues a host certificate for the key in `csr_pem`. The subject and
    /// role come from `host`, never from the CSR.
    pub fn issue_host_cert(&self, csr_pem: &str, host: &str, ttl: Duration) -> Result<IssuedCert> {
        let now = OffsetDateTime::now_utc();
        self.issue_host_cert_valid(
            csr_pem,
            host,
            now - (NOT_BEFORE_SLACK - LEAF_SLACK),
            now + ttl,
        )
    }

    /// As [`Self::issue_host_cert`] with an explicit validity window.
    pub fn issue_host_cert_valid(
        &self,
        csr_pem: &str,
        host: &str,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> Result<IssuedCert> {
        crate::names::validate("host", host)?;
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| Error::pki("certificate signing request", e))?;
        let mut params = leaf(host, not_before, Duration::ZERO);
        params.not_after = not_after;
        params
            .subject_alt_names
            .push(uri_san(&format!("{HOST_URI}{host}"))?);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let serial = random_serial();
        let serial_hex = hex::encode(serial.as_ref());
        params.serial_number = Some(serial);
        let cert = params
            .signed_by(&csr.public_key, &self.issuer)
            .map_err(|e| Error::pki(format!("certificate for host {host:?}"), e))?;
        Ok(IssuedCert {
            pem: cert.pem(),
            serial: serial_hex,
            not_after,
        })
    }
}

/// Makes a fresh key pair and a CSR for it: what an agent sends to enroll
/// or renew. Returns `(key_pem, csr_pem)`.
pub fn new_csr(host_hint: &str) -> Result<(String, String)> {
    let key = new_key()?;
    let mut params = CertificateParams::default();
    params.distinguished_name = dn(host_hint);
    let csr = params
        .serialize_request(&key)
        .map_err(|e| Error::pki("certificate signing request", e))?;
    let pem = csr
        .pem()
        .map_err(|e| Error::pki("certificate signing request", e))?;
    Ok((key.serialize_pem(), pem))
}

fn new_key() -> Result<KeyPair> {
    KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|e| Error::pki("key pair", e))
}

fn leaf(cn: &str, now: OffsetDateTime, life: Duration) -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name = dn(cn);
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.not_before = now - LEAF_SLACK;
    p.not_after = now + life;
    p.serial_number = Some(random_serial());
    p.use_authority_key_identifier_extension = true;
    p
}

fn dn(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "cutover");
    dn.push(DnType::CommonName, cn);
    dn
}

fn uri_san(uri: &str) -> Result<SanType> {
    Ok(SanType::URI(
        uri.to_string()
            .try_into()
            .map_err(|e| Error::pki(format!("URI {uri:?}"), e))?,
    ))
}

fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f; // positive
    bytes[0] |= 0x01; // no leading zero byte
    SerialNumber::from_slice(&bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_host_cert_carries_host_role_set_by_ca() {
        let dir = tempfile::tempdir().unwrap();
        init(&InitOptions {
            dir: dir.path(),
            controller_hosts: &["localhost".into(), "127.0.0.1".into()],
            operator_name: "admin",
        })
        .unwrap();
        let ca = CertificateAuthority::load(&dir.path().join(CA_CERT), &dir.path().join(CA_KEY))
            .unwrap();
        // The CSR asks for another name; the CA ignores it.
        let (_key, csr) = new_csr("evil-host").unwrap();
        let issued = ca
            .issue_host_cert(&csr, "edge-1", Duration::days(7))
            .unwrap();
        let id = PeerIdentity::from_pem(&issued.pem).unwrap();
        assert_eq!(id.role, Role::Host("edge-1".into()));
        assert_eq!(id.serial, issued.serial);
        let op = PeerIdentity::from_pem(
            &std::fs::read_to_string(dir.path().join(OPERATOR_CERT)).unwrap(),
        )
        .unwrap();
        assert_eq!(op.role, Role::Operator("admin".into()));
        assert!(init(&InitOptions {
            dir: dir.path(),
            controller_hosts: &["localhost".into()],
            operator_name: "admin",
        })
        .is_err());
    }

    #[test]
    fn garbage_csr_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        init(&InitOptions {
            dir: dir.path(),
            controller_hosts: &["localhost".into()],
            operator_name: "admin",
        })
        .unwrap();
        let ca = CertificateAuthority::load(&dir.path().join(CA_CERT), &dir.path().join(CA_KEY))
            .unwrap();
        let e = ca
            .issue_host_cert("not a csr", "edge-1", Duration::days(1))
            .unwrap_err();
        assert!(e.to_string().contains("certificate signing request"));
    }
}
