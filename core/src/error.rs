//! The error type of `cutover-core`: every variant names what it is about.

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
    Manifest(#[from] crate::manifest::ManifestError),
    #[error(transparent)]
    Signature(#[from] crate::signing::SignatureError),
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
