//! How a rollout's enum values are spelled for operators and scripts: one
//! snake_case word each, the same in text and in JSON
//! (`docs/json/README.md`), and the machine codes that stand next to a
//! sentence (why a service is carried or a host skipped, what a stop did).
//!
//! The store spells the rollout's own enums its own way (its rows predate
//! this contract); it does not use these.

use serde::{Deserialize, Serialize};

use super::{RolloutKind, RolloutStatus, StepPhase};

/// A manual rollback's release when each host goes to its own last
/// known-good one; `null` in JSON.
pub const LAST_KNOWN_GOOD: &str = "last known-good";

impl RolloutKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RolloutKind::Upgrade => "upgrade",
            RolloutKind::Rollback => "rollback",
        }
    }
}

impl RolloutStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RolloutStatus::Running => "running",
            RolloutStatus::Paused => "paused",
            RolloutStatus::RollingBack => "rolling_back",
            RolloutStatus::Succeeded => "succeeded",
            RolloutStatus::RolledBack => "rolled_back",
            RolloutStatus::Failed => "failed",
            RolloutStatus::Aborted => "aborted",
        }
    }
}

impl StepPhase {
    pub fn as_str(self) -> &'static str {
        match self {
            StepPhase::Pending => "pending",
            StepPhase::Installing => "installing",
            StepPhase::Healthy => "healthy",
            StepPhase::Failed => "failed",
            StepPhase::RollingBack => "rolling_back",
            StepPhase::RolledBack => "rolled_back",
            StepPhase::RollbackFailed => "rollback_failed",
        }
    }
}

/// Why a service of the release moves on no host.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CarriedCode {
    /// The fleet config assigns it to no host.
    NotAssigned,
    /// Every host it is assigned to already runs the target.
    AtTarget,
    /// Recorded before codes were (the reason says why).
    #[default]
    Other,
}

/// Why a manual rollback leaves a host as it is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SkipCode {
    /// The fleet config selects it but it never enrolled.
    NotEnrolled,
    Revoked,
    /// It runs nothing of the service.
    NotInstalled,
    /// No release other than the bad one is known healthy on it.
    NoKnownGood,
    /// Its known-good releases are no longer imported or do not resolve.
    NotResolvable,
    /// Recorded before codes were (the reason says why).
    #[default]
    Other,
}

/// What a rollout did when a step failed at a boundary.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopAction {
    /// It takes the moved hosts in the rollback scope back.
    RollingBack,
    /// Nothing else in the rollback scope had moved.
    NothingToRollBack,
    /// The failed host had already rolled itself back.
    HostRolledItselfBack,
    /// A swap-back rollout leaves the host as it is.
    LeftAsIs,
    /// `--no-rollback`: the host is left in place for inspection.
    LeftForInspection,
    /// Recorded before codes were (the action says what).
    #[default]
    Other,
}

/// A plan's release in JSON: the version, or `null` for
/// [`LAST_KNOWN_GOOD`]. Plans stored before spell it out; both read back.
pub(super) mod release {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(release: &str, s: S) -> Result<S::Ok, S::Error> {
        if release == super::LAST_KNOWN_GOOD {
            s.serialize_none()
        } else {
            s.serialize_str(release)
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
        Ok(Option::<String>::deserialize(d)?.unwrap_or_else(|| super::LAST_KNOWN_GOOD.into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_spelling_is_one_snake_case_word_and_serde_agrees_for_the_codes() {
        let all = [
            RolloutStatus::Running.as_str(),
            RolloutStatus::RollingBack.as_str(),
            RolloutStatus::RolledBack.as_str(),
            StepPhase::RollbackFailed.as_str(),
            RolloutKind::Rollback.as_str(),
        ];
        assert_eq!(
            all,
            [
                "running",
                "rolling_back",
                "rolled_back",
                "rollback_failed",
                "rollback"
            ]
        );
        assert_eq!(RolloutStatus::RolledBack.to_string(), "rolled_back");
        assert_eq!(
            serde_json::to_string(&StopAction::HostRolledItselfBack).unwrap(),
            r#""host_rolled_itself_back""#
        );
        assert_eq!(
            serde_json::to_string(&SkipCode::NoKnownGood).unwrap(),
            r#""no_known_good""#
        );
    }

    #[test]
    fn a_per_host_release_is_null_in_json_and_both_spellings_read_back() {
        #[derive(Serialize, Deserialize)]
        struct P {
            #[serde(with = "release")]
            release: String,
        }
        let lkg = P {
            release: LAST_KNOWN_GOOD.into(),
        };
        assert_eq!(serde_json::to_string(&lkg).unwrap(), r#"{"release":null}"#);
        let back: P = serde_json::from_str(r#"{"release":null}"#).unwrap();
        assert_eq!(back.release, LAST_KNOWN_GOOD);
        let old: P = serde_json::from_str(r#"{"release":"last known-good"}"#).unwrap();
        assert_eq!(old.release, LAST_KNOWN_GOOD);
        let v: P = serde_json::from_str(r#"{"release":"1.2.0"}"#).unwrap();
        assert_eq!(serde_json::to_string(&v).unwrap(), r#"{"release":"1.2.0"}"#);
    }
}
