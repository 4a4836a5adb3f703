//! The cutover agent: holds this host's identity, dials the controller and
//! keeps one mutual-TLS session with it, answers its requests, and installs,
//! checks and rolls back services as the controller commands.

pub mod config;
pub mod diag;
pub mod docker;
pub mod enroll;
pub mod error;
pub mod extract;
pub mod fetch;
pub mod health;
pub mod identity;
pub mod install;
pub mod journal;
pub mod lock;
pub mod pipeline;
pub mod retry;
pub mod runner;
pub mod runtime;
pub mod session;

pub use config::Config;
pub use error::{Error, Result};
