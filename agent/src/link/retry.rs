//! How long the agent waits before it dials the controller again, and how
//! loudly it says why. Most failures (controller down, network) back off
//! with full jitter up to `reconnect_max_backoff`. Two refusals are
//! answers, not outages, and get their own rule:
//!
//! - **revoked**: the controller refuses this host's certificate for good.
//!   Retrying cannot help until an operator acts, so the agent waits about
//!   [`REVOKED_RETRY`] between attempts (its services keep running) and says
//!   why once at WARN; the same refusal again is logged at DEBUG.
//! - **duplicate**: another session with this host's certificate is live
//!   (a second agent holding the identity, or this agent's own previous
//!   session not yet seen to be dead). The agent retries no sooner than one
//!   heartbeat interval, backing off as usual: a restarted agent gets in once
//!   the controller has stopped hearing the old session (three heartbeats).
//!   Said once at WARN, repeats at DEBUG.
//!
//! After the controller's going-away notice (it is shutting down), the
//! agent retries about every second for a minute instead of escalating:
//! a restart, not an outage.

use std::time::Duration;

use crate::error::Error;

/// About how long a revoked agent waits between attempts (jittered down
/// to half of it).
pub const REVOKED_RETRY: Duration = Duration::from_secs(600);

/// A refusal that retrying soon cannot change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Revoked,
    Duplicate,
}

impl Refusal {
    /// The refusal `e` is, if it is one.
    pub fn of(e: &Error) -> Option<Refusal> {
        match e {
            // Refused at the handshake; the alert is named in the chain.
            Error::Connect { detail, .. } if detail.contains("CertificateRevoked") => {
                Some(Refusal::Revoked)
            }
            Error::SessionRefused {
                code: tonic::Code::AlreadyExists,
                ..
            } => Some(Refusal::Duplicate),
            // Revoked between the handshake and the session's start.
            Error::SessionRefused {
                code: tonic::Code::PermissionDenied,
                message,
            } if message.contains("is revoked") => Some(Refusal::Revoked),
            _ => None,
        }
    }

    /// How long to wait after this refusal, given what the ordinary
    /// backoff would wait and the agent's heartbeat interval.
    pub fn delay(self, ordinary: Duration, heartbeat: Duration) -> Duration {
        match self {
            Refusal::Revoked => {
                let half = REVOKED_RETRY / 2;
                let ms = rand::random::<u64>() % (half.as_millis() as u64 + 1);
                half + Duration::from_millis(ms)
            }
            Refusal::Duplicate => ordinary.max(heartbeat),
        }
    }

    /// What the operator must know, once.
    pub fn explain(self, host: &str) -> String {
        match self {
            Refusal::Revoked => format!(
                "host {host} is revoked: the controller refuses its certificate for good, and services keep running as they are; to bring it back, `cutover host forget {host}`, then remove identity.pem from the data directory and restart the agent with --join-token from `cutover token create {host}`; retrying about every {} meanwhile",
                humantime::format_duration(REVOKED_RETRY)
            ),
            Refusal::Duplicate => format!(
                "another session with the certificate of host {host} is live, so the controller refuses this one: if a second agent runs with this host's identity (a copied data directory), stop it; if this agent just restarted, it gets in once the old session has missed three heartbeats"
            ),
        }
    }
}

/// The backoff step held after the controller's going-away notice: up to
/// 250 ms × 2^2 = 1 s (or `reconnect_max_backoff`, if lower).
pub const GOING_AWAY_ATTEMPT: u32 = 2;
/// How long after the notice the agent keeps retrying that often: a
/// controller restart's stop and start; past it, the ordinary backoff.
pub const GOING_AWAY_WINDOW: Duration = Duration::from_secs(60);

/// The backoff step to use, `since` the controller's going-away notice
/// (if one came): a restart is not an outage, so within
/// [`GOING_AWAY_WINDOW`] the step stays at [`GOING_AWAY_ATTEMPT`] instead
/// of escalating while the old controller stops and the next one starts.
pub fn after_going_away(attempt: u32, since: Option<Duration>) -> u32 {
    match since {
        Some(d) if d < GOING_AWAY_WINDOW => GOING_AWAY_ATTEMPT,
        _ => attempt,
    }
}

/// Whether a failure is said at WARN: anything but the refusal said last.
pub fn loud(previous: Option<Refusal>, now: Option<Refusal>) -> bool {
    now.is_none() || now != previous
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn after_a_going_away_notice_the_backoff_holds_low_for_a_while_then_escalates_as_usual() {
        assert_eq!(after_going_away(7, None), 7);
        assert_eq!(
            after_going_away(7, Some(Duration::from_secs(5))),
            GOING_AWAY_ATTEMPT
        );
        assert_eq!(
            after_going_away(0, Some(Duration::from_secs(59))),
            GOING_AWAY_ATTEMPT
        );
        assert_eq!(after_going_away(7, Some(GOING_AWAY_WINDOW)), 7);
    }

    fn refused(code: tonic::Code, message: &str) -> Error {
        Error::SessionRefused {
            code,
            message: message.into(),
        }
    }

    #[test]
    fn revocation_and_a_live_duplicate_are_told_apart_from_outages() {
        let revoked = Error::Connect {
            addr: "127.0.0.1:1".into(),
            detail: "the controller refused our certificate: this host was revoked (received fatal alert: CertificateRevoked)".into(),
        };
        assert_eq!(Refusal::of(&revoked), Some(Refusal::Revoked));
        let down = Error::Connect {
            addr: "127.0.0.1:1".into(),
            detail: "connection refused".into(),
        };
        assert_eq!(Refusal::of(&down), None);
        assert_eq!(
            Refusal::of(&refused(tonic::Code::AlreadyExists, "live session")),
            Some(Refusal::Duplicate)
        );
        assert_eq!(
            Refusal::of(&refused(
                tonic::Code::PermissionDenied,
                "host \"h\" is revoked"
            )),
            Some(Refusal::Revoked)
        );
        assert_eq!(
            Refusal::of(&refused(tonic::Code::PermissionDenied, "was replaced")),
            None
        );
    }

    #[test]
    fn a_revoked_agent_waits_minutes_and_a_duplicate_at_least_a_heartbeat() {
        for _ in 0..50 {
            let d = Refusal::Revoked.delay(Duration::from_millis(50), Duration::from_secs(1));
            assert!(d >= REVOKED_RETRY / 2 && d <= REVOKED_RETRY, "{d:?}");
        }
        let hb = Duration::from_secs(2);
        assert_eq!(Refusal::Duplicate.delay(Duration::from_millis(50), hb), hb);
        let long = Duration::from_secs(30);
        assert_eq!(Refusal::Duplicate.delay(long, hb), long);
    }

    #[test]
    fn the_same_refusal_again_is_quiet_and_anything_else_is_loud() {
        use Refusal::*;
        assert!(loud(None, Some(Revoked)));
        assert!(!loud(Some(Revoked), Some(Revoked)));
        assert!(loud(Some(Revoked), Some(Duplicate)));
        assert!(loud(Some(Revoked), None), "an outage is always said");
        assert!(loud(None, None));
        for r in [Revoked, Duplicate] {
            let text = r.explain("edge-1");
            assert!(text.contains("edge-1") && !text.contains('\n'), "{text}");
        }
    }
}
