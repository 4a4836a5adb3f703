//! Domain types shared by every cutover crate: content digests, release
//! manifests and their signatures, the PKI and the TLS configurations built
//! from it. Nothing here knows the wire format (that is `cutover-proto`).

pub mod command_id;
pub mod data_migration;
pub mod digest;
pub mod error;
pub mod fleet;
pub mod fsutil;
pub mod image;
pub mod manifest;
pub mod migration_views;
pub mod names;
pub mod pki;
pub mod rollout;
pub mod signing;
pub mod suggest;
pub mod tar_headers;
pub mod text;
pub mod tls;
pub mod toml_text;
pub mod views;

pub use digest::Sha256Digest;
pub use error::{Error, Result};

/// Version of the cutover binaries, reported by agents and the controller.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
