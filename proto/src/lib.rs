//! The cutover wire protocol: the generated gRPC services and messages, and
//! their conversion to domain types. This is the only crate that knows prost.

#![allow(clippy::large_enum_variant)]

pub mod commands;
pub mod convert;
pub mod transport;

/// Generated messages and services of `cutover.v1`.
pub mod v1 {
    #![allow(clippy::all, missing_docs, unreachable_pub)]
    tonic::include_proto!("cutover.v1");
}

pub use v1::agent_client::AgentClient;
pub use v1::agent_server::{Agent, AgentServer};
pub use v1::operator_client::OperatorClient;
pub use v1::operator_server::{Operator, OperatorServer};

/// Largest message either side of an agent session accepts (artifact
/// chunks are 256 KiB).
pub const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;
/// Largest document the CLI accepts from the controller: the plan or the
/// rollout of a whole fleet (10,000 hosts x 50 services is about 75 MiB).
pub const MAX_OPERATOR_MESSAGE_BYTES: usize = 256 * 1024 * 1024;
/// Size of artifact chunks on the wire.
pub const CHUNK_BYTES: usize = 256 * 1024;

/// Metadata key on the status that ends an agent session when the
/// controller is shutting down: the agent reconnects with a spread-out
/// backoff and logs it as news, not as an error.
pub const GOING_AWAY: &str = "cutover-going-away";

/// Whether `status` is the controller's going-away notice.
pub fn is_going_away(status: &tonic::Status) -> bool {
    status.metadata().contains_key(GOING_AWAY)
}

/// The status that tells an agent the controller is going away.
pub fn going_away() -> tonic::Status {
    let mut status = tonic::Status::unavailable(
        "the controller is shutting down; reconnecting to whichever controller listens next",
    );
    status
        .metadata_mut()
        .insert(GOING_AWAY, tonic::metadata::MetadataValue::from_static("1"));
    status
}
