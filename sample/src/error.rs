//! The errors of `cutover-sample data-migrate`: each a one-line message
//! naming what failed and what to do, and the exit status it maps to
//! (2: usage, settings or an unreachable database; 1: a statement that
//! failed outside a batch, so the command could not say what it was asked).

/// Why a `data-migrate` command could not answer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The command line is wrong.
    #[error("{0}")]
    Usage(String),
    /// An environment setting is missing or out of bounds.
    #[error("{0}")]
    Settings(String),
    /// The database cannot be reached (connection, authentication).
    #[error("{0}")]
    Unavailable(String),
    /// A statement failed where no migration state can record it.
    #[error("{0}")]
    Database(String),
}

impl Error {
    /// The process exit status for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Usage(_) | Error::Settings(_) | Error::Unavailable(_) => 2,
            Error::Database(_) => 1,
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;
