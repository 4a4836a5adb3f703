//! The controller's error type and its one mapping to `tonic::Status`.

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("config {path}: {problem}")]
    Config { path: PathBuf, problem: String },
    #[error("store: {0}")]
    Store(#[from] rusqlite::Error),
    #[error("store {path}: {problem}")]
    StoreSchema { path: PathBuf, problem: String },
    /// A store the controller refuses to start on (missing or empty where
    /// state was held, or damaged); the problem names the fix.
    #[error("store {path}: {problem}")]
    StoreUnusable { path: PathBuf, problem: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Core(#[from] cutover_core::Error),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    PermissionDenied(String),
    #[error("{0}")]
    Unavailable(String),
    /// Refused in the state things are in (a migration lock held, a dirty
    /// ledger, a failed migration): the message says what to do.
    #[error("{0}")]
    Refused(String),
    #[error("internal: {0}")]
    Internal(String),
}

impl Error {
    /// The same error with `note` after its message (what had already
    /// happened when it came, say).
    pub fn noted(self, note: &str) -> Error {
        let add = |m: String| format!("{m}; {note}");
        match self {
            Error::NotFound(m) => Error::NotFound(add(m)),
            Error::Conflict(m) => Error::Conflict(add(m)),
            Error::Invalid(m) => Error::Invalid(add(m)),
            Error::Unauthenticated(m) => Error::Unauthenticated(add(m)),
            Error::PermissionDenied(m) => Error::PermissionDenied(add(m)),
            Error::Unavailable(m) => Error::Unavailable(add(m)),
            Error::Refused(m) => Error::Refused(add(m)),
            Error::Internal(m) => Error::Internal(add(m)),
            other => Error::Internal(add(other.to_string())),
        }
    }

    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}

/// The longest status message the controller sends. Messages travel in
/// HTTP/2 trailers (percent-encoded, so up to three times longer), and a
/// peer refuses a header block past 16 KiB as a protocol error: whatever
/// an error quotes, the operator gets the error, not "http2 error".
const MAX_STATUS_MESSAGE: usize = 2048;

impl From<Error> for tonic::Status {
    fn from(e: Error) -> Self {
        use tonic::Status;
        let msg = cutover_core::views::bounded(&e.to_string(), MAX_STATUS_MESSAGE).into_owned();
        match e {
            Error::NotFound(_) => Status::not_found(msg),
            Error::Conflict(_) => Status::already_exists(msg),
            Error::Invalid(_) => Status::invalid_argument(msg),
            Error::Core(cutover_core::Error::Manifest(_))
            | Error::Core(cutover_core::Error::Signature(_))
            | Error::Core(cutover_core::Error::Invalid(_)) => Status::invalid_argument(msg),
            Error::Unauthenticated(_) => Status::unauthenticated(msg),
            Error::PermissionDenied(_) => Status::permission_denied(msg),
            Error::Unavailable(_) => Status::unavailable(msg),
            Error::Refused(_) => Status::failed_precondition(msg),
            _ => {
                tracing::error!(error = %msg, "internal error");
                Status::internal(msg)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_message_is_bounded_whatever_the_error_quotes() {
        let status = tonic::Status::from(Error::Invalid("x".repeat(1 << 20)));
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(status.message().len() <= MAX_STATUS_MESSAGE);
        assert!(status.message().ends_with(cutover_core::views::TRUNCATED));
    }
}
