//! The id of a command the controller sends an agent, in one place: an
//! install is `r{rollout}-{service}-{host}`, the rollback of that install
//! the same with `-rollback` after it. Agents answer a known id from their
//! journal, so these strings are part of the wire and never change.

use std::fmt;

/// What the rollback of an install adds to the install's id.
pub const ROLLBACK_SUFFIX: &str = "-rollback";

/// The install command rollout `rollout` sends `host` for `service`.
/// Shown with `Display`; [`CommandId::rollback`] is its rollback's id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommandId<'a> {
    pub rollout: u64,
    pub service: &'a str,
    pub host: &'a str,
}

impl<'a> CommandId<'a> {
    pub fn install(rollout: u64, service: &'a str, host: &'a str) -> Self {
        CommandId {
            rollout,
            service,
            host,
        }
    }

    /// The id of the rollback of this install.
    pub fn rollback(&self) -> String {
        Self::rollback_of(&self.to_string())
    }

    /// Whether `reported` is this install's id or its rollback's.
    pub fn answered_by(&self, reported: &str) -> bool {
        let install = self.to_string();
        reported == install || Self::is_rollback_of(reported, &install)
    }

    /// Whether `reported` is the id of the rollback of the install whose
    /// id is `install_id` (as a rollout step stores it). Makes no string.
    pub fn is_rollback_of(reported: &str, install_id: &str) -> bool {
        reported.strip_suffix(ROLLBACK_SUFFIX) == Some(install_id)
    }

    /// The id of the rollback of the install whose id is `install_id`
    /// (as a rollout step stores it).
    pub fn rollback_of(install_id: &str) -> String {
        format!("{install_id}{ROLLBACK_SUFFIX}")
    }

    /// The rollout a command id belongs to: the number after the leading
    /// `r`. That is all an id can be parsed into: service and host names
    /// may hold `-`, so where one ends and the other begins is known only
    /// to whoever knows one of them (see [`CommandId::answered_by`]).
    pub fn rollout_of(id: &str) -> Option<u64> {
        id.strip_prefix('r')?.split('-').next()?.parse().ok()
    }
}

impl fmt::Display for CommandId<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "r{}-{}-{}", self.rollout, self.service, self.host)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn install_and_rollback_ids_are_the_strings_agents_already_journal() {
        let id = CommandId::install(12, "api", "edge-1");
        assert_eq!(id.to_string(), "r12-api-edge-1");
        assert_eq!(id.rollback(), "r12-api-edge-1-rollback");
        assert_eq!(
            CommandId::rollback_of("r12-api-edge-1"),
            "r12-api-edge-1-rollback"
        );
    }

    #[test]
    fn an_install_is_answered_by_its_own_id_or_its_rollback_only() {
        let id = CommandId::install(3, "api", "h1");
        assert!(id.answered_by("r3-api-h1"));
        assert!(id.answered_by("r3-api-h1-rollback"));
        assert!(!id.answered_by("r3-api-h2"));
        assert!(!id.answered_by("r3-api-h1-x"));
        assert!(!id.answered_by("r4-api-h1"));
        assert!(!id.answered_by("r3-api-h1-rollback-rollback"));
    }

    #[test]
    fn a_rollback_id_is_recognised_from_the_install_id_a_step_stores() {
        assert!(CommandId::is_rollback_of("r3-api-h1-rollback", "r3-api-h1"));
        assert!(!CommandId::is_rollback_of("r3-api-h1", "r3-api-h1"));
        assert!(!CommandId::is_rollback_of("r3-api-h1-rollback", "r3-api-h"));
        assert!(!CommandId::is_rollback_of(
            "r3-api-h1-rollback-rollback",
            "r3-api-h1"
        ));
    }

    #[test]
    fn command_ids_name_their_rollout() {
        assert_eq!(CommandId::rollout_of("r12-api-h1"), Some(12));
        assert_eq!(CommandId::rollout_of("r12-api-h1-rollback"), Some(12));
        assert_eq!(CommandId::rollout_of("x"), None);
    }
}
