//! Ed25519 release signatures. A manifest is signed over its exact bytes; the
//! signatures live beside it in `MANIFEST.sig`. A release is trusted when
//! distinct trusted keys, at least `threshold` of them, signed it and no
//! signature by a trusted key fails to verify.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use ed25519_dalek::{Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};

pub use crate::error::SignatureError;
use crate::error::{Error, Result};

/// The short identity of a release key: the first 16 hex characters of the
/// SHA-256 of its raw public key.
pub fn key_id(key: &VerifyingKey) -> String {
    crate::digest::Sha256Digest::of(key.as_bytes()).to_hex()[..16].to_string()
}

/// The signatures that accompany a manifest.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignatureFile {
    #[serde(default)]
    pub signatures: Vec<SignatureEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignatureEntry {
    pub key_id: String,
    /// Base64 of the 64-byte Ed25519 signature.
    pub signature: String,
}

/// The largest `.sig` file accepted, checked before it is parsed.
pub const MAX_SIGNATURE_FILE_BYTES: usize = 64 * 1024;
/// The most signatures one `.sig` file may hold.
pub const MAX_SIGNATURES: usize = 64;
/// The length of a base64 Ed25519 signature (64 bytes, padded).
const SIGNATURE_B64_LEN: usize = 88;

impl SignatureFile {
    /// Parses a `.sig` file. Its size, the number of signatures and the
    /// form of each key id and signature are bounded here, so nothing
    /// unbounded reaches verification or an error message.
    pub fn parse(text: &str) -> Result<Self, SignatureError> {
        if text.len() > MAX_SIGNATURE_FILE_BYTES {
            return Err(SignatureError::Malformed(format!(
                "{} bytes, more than the {MAX_SIGNATURE_FILE_BYTES} a signature file may have",
                text.len()
            )));
        }
        let file: SignatureFile =
            crate::toml_text::parse(text).map_err(SignatureError::Malformed)?;
        if file.signatures.len() > MAX_SIGNATURES {
            return Err(SignatureError::Malformed(format!(
                "{} signatures, at most {MAX_SIGNATURES} are allowed",
                file.signatures.len()
            )));
        }
        for (i, entry) in file.signatures.iter().enumerate() {
            let n = i + 1;
            let id = &entry.key_id;
            if id.len() != 16 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(SignatureError::Malformed(format!(
                    "signature {n}: key_id {} is not a release key id (16 hex characters, as `cutover release keygen` prints)",
                    shown(id)
                )));
            }
            if entry.signature.trim().len() > SIGNATURE_B64_LEN {
                return Err(SignatureError::Malformed(format!(
                    "signature {n} (key {id}) is {} characters; an Ed25519 signature is {SIGNATURE_B64_LEN} in base64",
                    entry.signature.trim().len()
                )));
            }
        }
        Ok(file)
    }

    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_default()
    }

    /// Adds (or replaces) the signature of `key` over `manifest`.
    pub fn sign(&mut self, manifest: &[u8], key: &SigningKey) {
        let id = key_id(&key.verifying_key());
        let signature =
            base64::engine::general_purpose::STANDARD.encode(key.sign(manifest).to_bytes());
        self.signatures.retain(|s| s.key_id != id);
        self.signatures.push(SignatureEntry {
            key_id: id,
            signature,
        });
    }
}

/// A value from a `.sig` file for an error message (see
/// [`crate::text::shown`]).
fn shown(s: &str) -> String {
    crate::text::shown(s, 32)
}

/// The release keys a controller trusts and how many must sign.
#[derive(Debug, Clone)]
pub struct TrustedKeys {
    keys: BTreeMap<String, VerifyingKey>,
    threshold: usize,
}

impl TrustedKeys {
    pub fn new(keys: Vec<VerifyingKey>, threshold: usize) -> Result<Self> {
        if threshold == 0 {
            return Err(Error::Invalid(
                "signature threshold must be at least 1".into(),
            ));
        }
        let keys: BTreeMap<_, _> = keys.into_iter().map(|k| (key_id(&k), k)).collect();
        if keys.len() < threshold {
            return Err(Error::Invalid(format!(
                "signature threshold {threshold} is more than the {} distinct trusted key(s)",
                keys.len()
            )));
        }
        Ok(TrustedKeys { keys, threshold })
    }

    pub fn load(paths: &[PathBuf], threshold: usize) -> Result<Self> {
        let keys = paths
            .iter()
            .map(|p| read_public_key(p))
            .collect::<Result<Vec<_>>>()?;
        Self::new(keys, threshold)
    }

    pub fn ids(&self) -> Vec<String> {
        self.keys.keys().cloned().collect()
    }

    /// Verifies `manifest` against `signatures`; returns the ids of the
    /// trusted keys that signed it.
    pub fn verify(
        &self,
        manifest: &[u8],
        signatures: &SignatureFile,
    ) -> Result<Vec<String>, SignatureError> {
        if signatures.signatures.is_empty() {
            return Err(SignatureError::Unsigned);
        }
        let mut good = BTreeSet::new();
        let mut unknown = BTreeSet::new();
        for entry in &signatures.signatures {
            let Some(key) = self.keys.get(&entry.key_id) else {
                unknown.insert(entry.key_id.clone());
                continue;
            };
            let bad = || SignatureError::BadSignature {
                key_id: entry.key_id.clone(),
            };
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(entry.signature.trim())
                .map_err(|_| bad())?;
            let sig = ed25519_dalek::Signature::from_slice(&bytes).map_err(|_| bad())?;
            key.verify(manifest, &sig).map_err(|_| bad())?;
            good.insert(entry.key_id.clone());
        }
        if good.is_empty() {
            return Err(SignatureError::UnknownKeys {
                unknown: unknown.into_iter().collect(),
                trusted: self.ids(),
            });
        }
        if good.len() < self.threshold {
            return Err(SignatureError::BelowThreshold {
                found: good.len(),
                threshold: self.threshold,
            });
        }
        Ok(good.into_iter().collect())
    }
}

/// Makes a new release key pair: `<out>.key` (PKCS#8 PEM, mode 0600) and
/// `<out>.pub` (SPKI PEM). Refuses to overwrite either.
pub fn keygen(out: &Path) -> Result<(PathBuf, PathBuf, String)> {
    let key_path = out.with_extension("key");
    let pub_path = out.with_extension("pub");
    for p in [&key_path, &pub_path] {
        if p.exists() {
            return Err(Error::Invalid(format!(
                "{} already exists; refusing to overwrite a release key",
                p.display()
            )));
        }
    }
    let key = SigningKey::generate(&mut rand::rngs::OsRng);
    let private = key
        .to_pkcs8_pem(Default::default())
        .map_err(|e| Error::pki("release key", e))?;
    let public = key
        .verifying_key()
        .to_public_key_pem(Default::default())
        .map_err(|e| Error::pki("release key", e))?;
    crate::fsutil::write_atomic(&key_path, private.as_bytes(), 0o600)?;
    crate::fsutil::write_atomic(&pub_path, public.as_bytes(), 0o644)?;
    Ok((key_path, pub_path, key_id(&key.verifying_key())))
}

pub fn read_signing_key(path: &Path) -> Result<SigningKey> {
    let text = crate::fsutil::read_to_string(path)?;
    SigningKey::from_pkcs8_pem(&text)
        .map_err(|e| Error::pki(format!("release key {}", path.display()), e))
}

pub fn read_public_key(path: &Path) -> Result<VerifyingKey> {
    let text = crate::fsutil::read_to_string(path)?;
    VerifyingKey::from_public_key_pem(&text)
        .map_err(|e| Error::pki(format!("release public key {}", path.display()), e))
}

/// Where the signatures of a manifest file live.
pub fn signature_path(manifest: &Path) -> PathBuf {
    let mut name = manifest.as_os_str().to_owned();
    name.push(".sig");
    PathBuf::from(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> SigningKey {
        SigningKey::generate(&mut rand::rngs::OsRng)
    }

    #[test]
    fn threshold_counts_distinct_trusted_keys() {
        let (a, b) = (key(), key());
        let trusted = TrustedKeys::new(vec![a.verifying_key(), b.verifying_key()], 2).unwrap();
        let mut sigs = SignatureFile::default();
        sigs.sign(b"m", &a);
        sigs.sign(b"m", &a);
        assert_eq!(sigs.signatures.len(), 1);
        // The same key listed twice still counts once.
        let mut doubled = sigs.clone();
        doubled.signatures.push(sigs.signatures[0].clone());
        assert_eq!(
            trusted.verify(b"m", &doubled).unwrap_err(),
            SignatureError::BelowThreshold {
                found: 1,
                threshold: 2
            }
        );
        sigs.sign(b"m", &b);
        assert_eq!(trusted.verify(b"m", &sigs).unwrap().len(), 2);
    }

    #[test]
    fn tampered_manifest_and_unknown_keys_are_refused() {
        let (a, stranger) = (key(), key());
        let trusted = TrustedKeys::new(vec![a.verifying_key()], 1).unwrap();
        let mut sigs = SignatureFile::default();
        sigs.sign(b"manifest", &a);
        let e = trusted.verify(b"manifest!", &sigs).unwrap_err();
        assert!(matches!(e, SignatureError::BadSignature { .. }));
        let mut other = SignatureFile::default();
        other.sign(b"manifest", &stranger);
        let e = trusted.verify(b"manifest", &other).unwrap_err().to_string();
        assert!(e.contains(&key_id(&stranger.verifying_key())), "{e}");
        assert!(e.contains("unknown key"), "{e}");
    }

    #[test]
    fn zero_threshold_is_refused() {
        assert!(TrustedKeys::new(vec![key().verifying_key()], 0).is_err());
    }

    #[test]
    fn keygen_writes_loadable_keys_and_refuses_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let (k, p, id) = keygen(&dir.path().join("release")).unwrap();
        let sk = read_signing_key(&k).unwrap();
        assert_eq!(key_id(&read_public_key(&p).unwrap()), id);
        assert_eq!(key_id(&sk.verifying_key()), id);
        assert!(keygen(&dir.path().join("release")).is_err());
    }

    #[test]
    fn signature_files_are_bounded_before_verification() {
        let mut sigs = SignatureFile::default();
        sigs.sign(b"x", &key());
        let good = sigs.to_toml();
        let too_big = format!("{good}#{}\n", "x".repeat(MAX_SIGNATURE_FILE_BYTES));
        let e = SignatureFile::parse(&too_big).unwrap_err().to_string();
        assert!(
            e.contains("more than the 65536 a signature file may have"),
            "{e}"
        );

        let mut many = SignatureFile::default();
        for _ in 0..=MAX_SIGNATURES {
            many.signatures.push(sigs.signatures[0].clone());
        }
        let e = SignatureFile::parse(&many.to_toml())
            .unwrap_err()
            .to_string();
        assert!(e.contains("65 signatures, at most 64"), "{e}");

        let mut long_id = sigs.clone();
        long_id.signatures[0].key_id = "a".repeat(50_000);
        let e = SignatureFile::parse(&long_id.to_toml())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("is not a release key id") && e.len() < 300,
            "{e}"
        );

        let mut long_sig = sigs.clone();
        long_sig.signatures[0].signature = "A".repeat(1000);
        let e = SignatureFile::parse(&long_sig.to_toml())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("signature 1 (key ") && e.contains("1000 characters"),
            "{e}"
        );
    }

    #[test]
    fn signature_file_round_trips() {
        let mut sigs = SignatureFile::default();
        sigs.sign(b"x", &key());
        assert_eq!(SignatureFile::parse(&sigs.to_toml()).unwrap(), sigs);
    }
}
