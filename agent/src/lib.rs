//! The cutover agent: holds this host's identity, dials the controller and
//! keeps one mutual-TLS session with it, answers its requests.

pub mod config;
pub mod diag;
pub mod enroll;
pub mod error;
pub mod identity;
pub mod session;

pub use config::Config;
pub use error::{Error, Result};
