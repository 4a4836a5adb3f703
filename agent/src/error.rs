//! The agent's error type.

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("config {path}: {problem}")]
    Config { path: PathBuf, problem: String },
    #[error(transparent)]
    Core(#[from] cutover_core::Error),
    #[error("cannot reach the controller at {addr}: {detail}")]
    Connect { addr: String, detail: String },
    #[error("enrollment refused by the controller: {0}")]
    EnrollRefused(String),
    #[error("{0}")]
    Session(String),
    /// The controller answered the session's opening with a refusal.
    #[error("controller refused the session: {code:?}: {message}")]
    SessionRefused { code: tonic::Code, message: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("journal {path}: {problem}")]
    Journal { path: PathBuf, problem: String },
    #[error("service {service}: {problem}")]
    Runner { service: String, problem: String },
    /// An identity file that is there but cannot be used: it is kept as it is.
    #[error("{path}: {problem}: {fix}")]
    Identity {
        path: PathBuf,
        problem: String,
        fix: String,
    },
    /// Another agent holds the data directory's lock.
    #[error("data directory {data_dir} is in use by another cutover-agent ({}); stop that agent first, or give this one a data_dir of its own", holder.map(|p| format!("pid {p}")).unwrap_or_else(|| "unknown pid: it has not written it yet".into()))]
    DataDirInUse {
        data_dir: PathBuf,
        holder: Option<u32>,
    },
    #[error("no identity in {data_dir}: start the agent once with --join-token (from `cutover token create HOST`)")]
    NoIdentity { data_dir: PathBuf },
    #[error("the certificate of host {host} expired at {not_after}{why}; the controller will refuse it: create a join token with `cutover token create {host}` and restart the agent with --join-token")]
    Expired {
        host: String,
        not_after: String,
        why: String,
    },
}

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
