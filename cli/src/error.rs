//! The CLI's error type and exit codes: 1 for a failure, 2 for a usage
//! error, 130 when Ctrl-C stopped a command that follows a rollout.

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Usage(String),
    #[error("cannot reach the controller at {addr}: {detail}")]
    Connect { addr: String, detail: String },
    #[error("{0}")]
    Rpc(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Core(#[from] cutover_core::Error),
    #[error("{0}")]
    Failed(String),
    #[error("interrupted: rollout {id} goes on running on the controller; follow it again with `cutover rollout watch {id}` or stop it with `cutover rollout abort {id}`")]
    Interrupted { id: u64 },
}

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Usage(_) => 2,
            // 128 + SIGINT, as a shell reports a command Ctrl-C ended.
            Error::Interrupted { .. } => 130,
            _ => 1,
        }
    }
}

impl From<tonic::Status> for Error {
    fn from(s: tonic::Status) -> Self {
        if s.message().is_empty() || s.code() == tonic::Code::Unknown {
            let chain = cutover_proto::transport::error_chain(&s);
            Error::Rpc(format!("connection to the controller failed: {chain}"))
        } else {
            Error::Rpc(s.message().to_string())
        }
    }
}
