//! The link to the controller: this host's identity and its enrollment,
//! dialling with retry, the session, artifacts fetched from the controller,
//! and whether the controller is reachable.

pub mod dial;
pub mod enroll;
pub mod identity;
pub mod reachable;
pub mod retry;
pub mod session;
pub mod source;

pub use reachable::Link;
