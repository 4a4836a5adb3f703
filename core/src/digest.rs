//! SHA-256 content digests: the identity of every artifact cutover moves.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A SHA-256 digest, written as 64 lowercase hex characters (optionally
/// prefixed by `sha256:` where the format asks for it, as Docker image IDs do).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Sha256Digest([u8; 32]);

impl Sha256Digest {
    pub fn of(bytes: &[u8]) -> Self {
        let mut h = Hasher::new();
        h.update(bytes);
        h.finish().0
    }

    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Sha256Digest(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// `sha256:<hex>`, the form Docker uses for image IDs.
    pub fn to_prefixed(&self) -> String {
        format!("sha256:{}", self.to_hex())
    }

    /// Parses `<hex>` or `sha256:<hex>`.
    pub fn parse_prefixed(s: &str) -> Result<Self, DigestParseError> {
        s.strip_prefix("sha256:").unwrap_or(s).parse()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed sha256 digest {shown}: expected 64 lowercase hex characters")]
pub struct DigestParseError {
    /// What was given as a message shows it ([`crate::text::shown`]: the
    /// value may come from a peer and be of any length), cut to
    /// [`DigestParseError::SHOWN`] bytes.
    pub shown: String,
    /// How many bytes were given.
    pub len: usize,
}

impl DigestParseError {
    pub const SHOWN: usize = 80;

    fn new(s: &str) -> Self {
        DigestParseError {
            shown: crate::text::shown(s, Self::SHOWN),
            len: s.len(),
        }
    }
}

impl FromStr for Sha256Digest {
    type Err = DigestParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || DigestParseError::new(s);
        if s.len() != 64
            || !s
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(err());
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).map_err(|_| err())?;
        Ok(Sha256Digest(out))
    }
}

impl fmt::Display for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.to_hex())
    }
}

impl Serialize for Sha256Digest {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for Sha256Digest {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Incremental SHA-256 with a byte count, for hashing while streaming.
#[derive(Clone)]
pub struct Hasher {
    inner: ring::digest::Context,
    len: u64,
}

impl Default for Hasher {
    fn default() -> Self {
        Hasher {
            inner: ring::digest::Context::new(&ring::digest::SHA256),
            len: 0,
        }
    }
}

impl Hasher {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn update(&mut self, bytes: &[u8]) {
        self.inner.update(bytes);
        self.len += bytes.len() as u64;
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn finish(self) -> (Sha256Digest, u64) {
        let digest = self.inner.finish();
        let mut out = [0u8; 32];
        out.copy_from_slice(digest.as_ref());
        (Sha256Digest(out), self.len)
    }
}

/// Hashes a file from disk, returning its digest and size.
pub fn hash_file(path: &std::path::Path) -> std::io::Result<(Sha256Digest, u64)> {
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Hasher::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_hex() {
        let d = Sha256Digest::of(b"abc");
        assert_eq!(
            d.to_hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(d.to_hex().parse::<Sha256Digest>().unwrap(), d);
        assert_eq!(Sha256Digest::parse_prefixed(&d.to_prefixed()).unwrap(), d);
    }

    #[test]
    fn refuses_malformed_digests() {
        for bad in ["", "abc", &"A".repeat(64), &"g".repeat(64), &"a".repeat(65)] {
            let err = bad.parse::<Sha256Digest>().unwrap_err();
            assert!(err.to_string().contains("malformed sha256 digest"));
        }
    }

    #[test]
    fn a_long_malformed_digest_is_echoed_cut_short() {
        let long = "z".repeat(1_000_000);
        let e = long.parse::<Sha256Digest>().unwrap_err().to_string();
        assert!(e.len() < 200, "{} bytes of error", e.len());
        assert!(e.contains("\"… (1000000 bytes): expected 64"), "{e}");
        let short = "abc".parse::<Sha256Digest>().unwrap_err().to_string();
        assert_eq!(
            short,
            "malformed sha256 digest \"abc\": expected 64 lowercase hex characters"
        );
    }

    #[test]
    fn hasher_counts_bytes() {
        let mut h = Hasher::new();
        h.update(b"ab");
        h.update(b"c");
        let (d, n) = h.finish();
        assert_eq!(n, 3);
        assert_eq!(d, Sha256Digest::of(b"abc"));
    }
}
