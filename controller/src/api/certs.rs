//! Which certificate of a host may speak for it, and when it may get a new
//! one. The store records the serial of the certificate the controller last
//! issued to each host; a certificate our CA signed but that is no longer
//! the recorded one (the host enrolled again, or renewed) is refused, except
//! the one a renewal just replaced: an agent whose answer to its renewal was
//! lost (cut session, crash, controller restart) still holds only that one.
//! Renewals are rate-limited per host and refused early in a certificate's
//! life.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use cutover_core::pki::PeerIdentity;
use rusqlite::OptionalExtension;
use tonic::Status;

use crate::store::Store;

/// Renewals of one host are at least this far apart (or a third of the
/// certificate lifetime, when that is shorter: test fleets use seconds).
pub const RENEWAL_GAP: Duration = Duration::from_secs(60);

/// What the controller knows of a host's certificates.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Serials {
    current: String,
    /// The serial a renewal replaced, still accepted for the handover
    /// (looked up only when a host presents a serial that is not current).
    previous: Option<String>,
}

impl Serials {
    fn accepts(&self, serial: &str) -> bool {
        self.current == serial || self.previous.as_deref() == Some(serial)
    }
}

#[derive(Default)]
struct Known {
    /// Bumped by every enrollment and renewal, so that a lookup that raced
    /// one is not cached.
    generation: u64,
    by_host: HashMap<String, Serials>,
}

/// Shared by every agent call.
#[derive(Default)]
pub struct Certs {
    known: Mutex<Known>,
    renewed: Mutex<HashMap<String, Instant>>,
}

/// The certificate serial, as stored and as read from a peer certificate.
fn normal(serial: &str) -> String {
    serial.replace(':', "").to_ascii_lowercase()
}

impl Certs {
    /// Refuses a certificate of `host` that is not the one the controller
    /// issued last (or the one its last renewal replaced).
    pub async fn check(&self, store: &Store, host: &str, serial: &str) -> Result<(), Status> {
        let presented = normal(serial);
        let (generation, cached) = {
            let known = self.known.lock().unwrap_or_else(|p| p.into_inner());
            (known.generation, known.by_host.get(host).cloned())
        };
        let serials = match cached {
            Some(s) if s.accepts(&presented) => Some(s),
            // A refusal is always judged on the store, never on the cache.
            _ => {
                let (h, p) = (host.to_string(), presented.clone());
                let loaded = store.run(move |s| lookup(s, &h, &p)).await?;
                if let Some(s) = &loaded {
                    let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
                    if known.generation == generation {
                        known.by_host.insert(host.to_string(), s.clone());
                    }
                }
                loaded
            }
        };
        match serials {
            None => Err(Status::permission_denied(format!(
                "host {host:?} is not enrolled with this controller; enroll it with a join token"
            ))),
            Some(s) if s.accepts(&presented) => Ok(()),
            Some(_) => Err(Status::permission_denied(format!(
                "certificate {presented} of host {host:?} was replaced (the host enrolled again or renewed since) and no longer speaks for it; use the host's current certificate, or enroll it again with a new join token"
            ))),
        }
    }

    /// Forgets what is cached of `host`: the store has a new certificate.
    pub fn changed(&self, host: &str) {
        let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        known.generation = known.generation.wrapping_add(1);
        known.by_host.remove(host);
    }

    /// Takes `host`'s renewal turn, or says why it must wait. The caller
    /// gives the turn back with [`Certs::renewal_failed`] if no certificate
    /// was issued.
    pub fn begin_renewal(
        &self,
        host: &str,
        session_cert: &PeerIdentity,
        now: Instant,
        gap: Duration,
    ) -> Result<Option<Instant>, String> {
        early_refusal(session_cert, time::OffsetDateTime::now_utc())?;
        let mut renewed = self.renewed.lock().unwrap_or_else(|p| p.into_inner());
        let last = renewed.get(host).copied();
        if let Some(at) = last {
            let since = now.saturating_duration_since(at);
            if since < gap {
                return Err(format!(
                    "host {host:?} renewed its certificate {}s ago; the controller renews a host's certificate at most once every {}s, retry later",
                    since.as_secs(),
                    gap.as_secs()
                ));
            }
        }
        renewed.insert(host.to_string(), now);
        Ok(last)
    }

    /// Gives the renewal turn back after a renewal that issued nothing.
    pub fn renewal_failed(&self, host: &str, last: Option<Instant>) {
        let mut renewed = self.renewed.lock().unwrap_or_else(|p| p.into_inner());
        match last {
            Some(at) => renewed.insert(host.to_string(), at),
            None => renewed.remove(host),
        };
    }
}

/// The least time between two renewals of a host whose certificates live `ttl`.
pub fn renewal_gap(ttl: Duration) -> Duration {
    RENEWAL_GAP.min(ttl / 3)
}

/// A certificate is renewed from a third into its life as issued on (the
/// agent asks at two thirds), never in its first third. Its life is counted
/// as the agent counts it, without the slack its `not_before` is backdated by.
fn early_refusal(cert: &PeerIdentity, now: time::OffsetDateTime) -> Result<(), String> {
    let issued = (cert.not_before + cutover_core::pki::NOT_BEFORE_SLACK).min(cert.not_after);
    let life = cert.not_after - issued;
    let age = now - issued;
    if age * 3 < life {
        let from = issued + life / 3;
        return Err(format!(
            "certificate {} is too young to renew: renewal opens a third into its life, at {}",
            cert.serial,
            cutover_core::manifest::rfc3339(from)
        ));
    }
    Ok(())
}

/// The host's recorded serial, and the one its last renewal replaced when
/// `presented` is not the current one. `None`: no such host.
fn lookup(s: &Store, host: &str, presented: &str) -> crate::Result<Option<Serials>> {
    s.with(|c| {
        let current: Option<String> = c
            .query_row(
                "SELECT cert_serial FROM hosts WHERE name = ?1",
                [host],
                |r| r.get(0),
            )
            .optional()?;
        let Some(current) = current.map(|s| normal(&s)) else {
            return Ok(None);
        };
        if current == presented {
            return Ok(Some(Serials {
                current,
                previous: None,
            }));
        }
        // Only a host whose certificate was not the current one gets here.
        let mut stmt = c.prepare(
            "SELECT kind, detail FROM events WHERE host = ?1 AND kind IN ('host.enrolled', 'host.renewed')
             ORDER BY id DESC LIMIT 2",
        )?;
        let last_two = stmt
            .query_map([host], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?
            .collect::<Result<Vec<_>, _>>()?;
        let serial_of = |detail: &str| detail.strip_prefix("certificate ").map(normal);
        let previous = match last_two.as_slice() {
            [(kind, latest), (_, before)]
                if kind == "host.renewed" && serial_of(latest).as_deref() == Some(&current) =>
            {
                serial_of(before)
            }
            _ => None,
        };
        Ok(Some(Serials {
            current,
            previous,
        }))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use cutover_core::pki::Role;
    use cutover_core::views::now_ms;

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("state.db")).unwrap();
        (dir, s)
    }

    fn enroll(s: &Store, token: &str, serial: &str) {
        s.create_token(token, "edge-1", now_ms() + 60_000).unwrap();
        let serial = serial.to_string();
        s.enroll(token, |_| Ok(((), serial, now_ms() + 60_000)))
            .unwrap()
            .unwrap();
    }

    async fn verdict(c: &Certs, s: &Store, serial: &str) -> Result<(), tonic::Code> {
        c.check(s, "edge-1", serial).await.map_err(|e| e.code())
    }

    #[tokio::test]
    async fn only_the_current_certificate_and_the_one_a_renewal_replaced_are_accepted() {
        let (_d, s) = store();
        let c = Certs::default();
        let denied = Err(tonic::Code::PermissionDenied);
        assert_eq!(verdict(&c, &s, "aa").await, denied, "not enrolled");
        enroll(&s, "t1", "aa");
        assert_eq!(verdict(&c, &s, "AA").await, Ok(()));
        // Renewed: the new one, and the replaced one for the handover.
        s.record_renewal("edge-1", "bb", now_ms() + 60_000).unwrap();
        c.changed("edge-1");
        assert_eq!(verdict(&c, &s, "bb").await, Ok(()));
        assert_eq!(verdict(&c, &s, "aa").await, Ok(()));
        // Renewed again: the first one is gone for good.
        s.record_renewal("edge-1", "cc", now_ms() + 60_000).unwrap();
        c.changed("edge-1");
        assert_eq!(verdict(&c, &s, "aa").await, denied);
        assert_eq!(verdict(&c, &s, "bb").await, Ok(()));
        // Enrolled again: no handover, every older certificate is refused.
        enroll(&s, "t2", "dd");
        c.changed("edge-1");
        assert_eq!(verdict(&c, &s, "dd").await, Ok(()));
        assert_eq!(verdict(&c, &s, "cc").await, denied);
        let msg = c.check(&s, "edge-1", "cc").await.unwrap_err();
        assert!(msg.message().contains("was replaced"), "{msg:?}");
        // Without `changed` (another controller's write, or a stale cache
        // entry) a refused serial is looked up again, never trusted.
        s.record_renewal("edge-1", "ee", now_ms() + 60_000).unwrap();
        assert_eq!(verdict(&c, &s, "ee").await, Ok(()));
    }

    /// A certificate issued `age` ago for `life`, backdated as the CA does.
    fn cert(age: time::Duration, life: time::Duration) -> PeerIdentity {
        let issued = time::OffsetDateTime::now_utc() - age;
        PeerIdentity {
            role: Role::Host("edge-1".into()),
            serial: "aa".into(),
            not_before: issued - cutover_core::pki::NOT_BEFORE_SLACK,
            not_after: issued + life,
        }
    }

    fn now() -> time::OffsetDateTime {
        time::OffsetDateTime::now_utc()
    }

    #[test]
    fn a_renewal_waits_a_third_of_the_certificate_life_and_the_gap_since_the_last() {
        let c = Certs::default();
        let day = time::Duration::days(1);
        let young = c
            .begin_renewal("edge-1", &cert(day, 7 * day), Instant::now(), RENEWAL_GAP)
            .unwrap_err();
        assert!(young.contains("too young to renew"), "{young}");
        // The backdated slack does not count: a certificate of 6s is too
        // young for its first 2s, though its not_before is minutes old.
        let short = time::Duration::seconds(6);
        assert!(early_refusal(&cert(time::Duration::seconds(1), short), now()).is_err());
        assert!(early_refusal(&cert(time::Duration::seconds(3), short), now()).is_ok());
        let old = cert(5 * day, 7 * day);
        let t0 = Instant::now();
        assert_eq!(c.begin_renewal("edge-1", &old, t0, RENEWAL_GAP), Ok(None));
        let again = c
            .begin_renewal("edge-1", &old, t0 + Duration::from_secs(5), RENEWAL_GAP)
            .unwrap_err();
        assert!(again.contains("at most once every 60s"), "{again}");
        // Another host is not held up.
        assert!(c.begin_renewal("edge-2", &old, t0, RENEWAL_GAP).is_ok());
        // After the gap it may renew again; a failed renewal gives the turn back.
        let later = t0 + RENEWAL_GAP;
        assert_eq!(
            c.begin_renewal("edge-1", &old, later, RENEWAL_GAP),
            Ok(Some(t0))
        );
        c.renewal_failed("edge-1", Some(t0));
        assert!(c.begin_renewal("edge-1", &old, later, RENEWAL_GAP).is_ok());
        assert_eq!(renewal_gap(Duration::from_secs(6)), Duration::from_secs(2));
        assert_eq!(renewal_gap(Duration::from_secs(86_400)), RENEWAL_GAP);
    }
}
