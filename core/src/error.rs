//! The error type of `cutover-core`: every variant names what it is about.
//! This module is the bottom of the crate's import graph: it uses no other
//! module of the crate, so every module may use it. `ManifestError` and
//! `SignatureError` live here for that reason and are re-exported by
//! `manifest` and `signing`, where they are raised.

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error(transparent)]
    Signature(#[from] SignatureError),
    #[error("{what}: {reason}")]
    Pki { what: String, reason: String },
    #[error("{0}")]
    Invalid(String),
    /// A file of more than `max` bytes (`len` is its size, or as many
    /// bytes as were read before giving up).
    #[error("{path}: {len} bytes, more than the {max} it may have")]
    TooLarge { path: PathBuf, len: u64, max: u64 },
}

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    pub fn pki(what: impl Into<String>, reason: impl std::fmt::Display) -> Self {
        Error::Pki {
            what: what.into(),
            reason: reason.to_string(),
        }
    }
}

/// A release manifest that is not valid (re-exported as
/// `manifest::ManifestError`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest: {0}")]
    Syntax(String),
    #[error("release {version}: {problem}")]
    Invalid { version: String, problem: String },
}

/// A release whose signatures do not make it trusted (re-exported as
/// `signing::SignatureError`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("release is not signed: no signatures in the .sig file")]
    Unsigned,
    #[error("signature file is malformed: {0}")]
    Malformed(String),
    #[error("release is signed only by unknown key(s) {}; the controller trusts {}", .unknown.join(", "), list_or_none(.trusted))]
    UnknownKeys {
        unknown: Vec<String>,
        trusted: Vec<String>,
    },
    #[error("bad signature by key {key_id}: it does not match the manifest (changed after signing, or a corrupt signature)")]
    BadSignature { key_id: String },
    #[error("release is signed by {found} trusted key(s), the controller requires {threshold}")]
    BelowThreshold { found: usize, threshold: usize },
}

fn list_or_none(keys: &[String]) -> String {
    if keys.is_empty() {
        "no keys".into()
    } else {
        keys.join(", ")
    }
}
