//! The gRPC edge of the controller: wire messages are converted here and
//! nowhere deeper.

pub mod agent;
pub mod certs;
pub mod data_migrate;
pub mod fetch;
pub mod fleet;
pub mod import;
pub mod migrate;
pub mod operator;
pub mod rollback;
pub mod rollouts;

use cutover_core::pki::{PeerIdentity, Role};
use tonic::{Request, Status};

use crate::server::PeerInfo;

/// The verified identity of the caller, if it presented a certificate.
pub fn peer_identity<T>(req: &Request<T>) -> Option<&PeerIdentity> {
    req.extensions()
        .get::<PeerInfo>()
        .and_then(|p| p.identity.as_ref())
}

/// The operator's name from the caller's operator certificate, for the
/// events of what it asked.
pub fn operator_name<T>(req: &Request<T>) -> Option<String> {
    match peer_identity(req) {
        Some(PeerIdentity {
            role: Role::Operator(name),
            ..
        }) => Some(name.clone()),
        _ => None,
    }
}

/// The host name from the caller's host certificate, or a refusal that says
/// what was presented instead.
pub fn require_host<T>(req: &Request<T>) -> Result<(String, PeerIdentity), Status> {
    match peer_identity(req) {
        Some(id @ PeerIdentity { role: Role::Host(h), .. }) => Ok((h.clone(), id.clone())),
        Some(PeerIdentity { role: Role::Operator(name), .. }) => Err(Status::permission_denied(format!(
            "the certificate of operator {name:?} cannot open an agent session; agents use the host certificate they got by enrolling with a join token"
        ))),
        Some(_) => Err(Status::permission_denied(
            "this certificate carries no host identity; agents enroll with `cutover token create HOST`",
        )),
        None => Err(Status::unauthenticated(
            "agent sessions need a host certificate; enroll first with a join token",
        )),
    }
}

pub fn hash_token(token: &str) -> String {
    cutover_core::Sha256Digest::of(token.trim().as_bytes()).to_hex()
}

#[cfg(test)]
mod tests;
