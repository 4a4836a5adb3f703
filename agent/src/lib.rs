//! The cutover agent: holds this host's identity, dials the controller and
//! keeps one mutual-TLS session with it, answers its requests, and installs,
//! checks and rolls back services as the controller commands.
//!
//! Its parts, one folder each: `link/` the link to the controller
//! (identity, enrollment, the session, artifacts fetched from it);
//! `install/` the install lifecycle with its journal, its backends and the
//! artifact pipeline; `services/` what runs and watches a service
//! (runners, the Docker engine, health checks); `data_migrate/` the data
//! migrations service binaries run for the controller; `diag.rs`
//! diagnostics.

pub mod config;
pub mod data_migrate;
pub mod diag;
pub mod error;
pub mod install;
pub mod link;
pub mod lock;
pub mod runtime;
pub mod services;

pub use config::Config;
pub use error::{Error, Result};
// The paths the simulator and the fuzz targets use.
pub use install::{extract, pipeline};
pub use link::{enroll, identity, session};
