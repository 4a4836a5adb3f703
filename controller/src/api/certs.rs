//! Which certificate of a host may speak for it, and when it may get a new
//! one. The store records, per host, the serial of the certificate the
//! controller last issued and of the one its last renewal replaced; a
//! certificate our CA signed that is neither (the host enrolled again, or
//! renewed twice) is refused. The replaced one stays accepted for the
//! handover: an agent whose answer to its renewal was lost (cut session,
//! crash, controller restart) still holds only that one. The serials are
//! read once at start and cached; a host's entry is read again (one
//! primary-key read) after it enrolls or renews, and when it presents a
//! serial its entry does not accept. Renewals are rate-limited per host and
//! refused early in the life of the newest certificate issued to the host.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use cutover_core::pki::PeerIdentity;
use tonic::Status;

use crate::store::{CertSerials, Store};

/// Renewals of one host are at least this far apart (or a third of the
/// certificate lifetime, when that is shorter: test fleets use seconds).
pub const RENEWAL_GAP: Duration = Duration::from_secs(60);

/// What the controller knows of a host's certificates.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Serials {
    current: String,
    /// The current certificate's end of life, in ms since the epoch.
    not_after: i64,
    /// The serial a renewal replaced, still accepted for the handover.
    previous: Option<String>,
}

impl Serials {
    fn accepts(&self, serial: &str) -> bool {
        self.current == serial || self.previous.as_deref() == Some(serial)
    }
}

impl From<CertSerials> for Serials {
    fn from(c: CertSerials) -> Serials {
        Serials {
            current: normal(&c.current),
            not_after: c.not_after,
            previous: c.previous.as_deref().map(normal),
        }
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
    /// Every host's serials read in one go, so that a reconnect storm after
    /// a restart costs no store read per session. A store that cannot be
    /// read leaves the cache empty: each host is then read on first use.
    pub fn preloaded(store: &Store) -> Certs {
        let certs = Certs::default();
        match store.all_cert_serials() {
            Ok(all) => {
                let mut known = certs.known.lock().unwrap_or_else(|p| p.into_inner());
                for c in all {
                    known.by_host.insert(c.host.clone(), c.into());
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not preload host certificate serials; each host's is read on its first call")
            }
        }
        certs
    }

    /// `host`'s serials, from the cache when they accept `presented`, from
    /// the store otherwise (a refusal is never judged on the cache alone).
    async fn serials(
        &self,
        store: &Store,
        host: &str,
        presented: &str,
    ) -> Result<Option<Serials>, Status> {
        let (generation, cached) = {
            let known = self.known.lock().unwrap_or_else(|p| p.into_inner());
            (known.generation, known.by_host.get(host).cloned())
        };
        if let Some(s) = cached.filter(|s| s.accepts(presented)) {
            return Ok(Some(s));
        }
        let h = host.to_string();
        let loaded = store
            .run(move |s| s.cert_serials(&h))
            .await?
            .map(Serials::from);
        if let Some(s) = &loaded {
            let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
            if known.generation == generation {
                known.by_host.insert(host.to_string(), s.clone());
            }
        }
        Ok(loaded)
    }

    /// Refuses a certificate of `host` that is not the one the controller
    /// issued last (or the one its last renewal replaced).
    pub async fn check(&self, store: &Store, host: &str, serial: &str) -> Result<(), Status> {
        let presented = normal(serial);
        match self.serials(store, host, &presented).await? {
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
    /// was issued. The first-third rule is judged on the newest certificate
    /// the host holds: the session's own when it is the current one or the
    /// one the last renewal replaced (its answer may have been lost), else
    /// the current one (issued `ttl` before its recorded end), so that one
    /// long session cannot renew again and again.
    pub async fn begin_renewal(
        &self,
        store: &Store,
        host: &str,
        session_cert: &PeerIdentity,
        ttl: Duration,
        now: Instant,
    ) -> Result<Option<Instant>, String> {
        let presented = normal(&session_cert.serial);
        let serials = self
            .serials(store, host, &presented)
            .await
            .map_err(|e| e.message().to_string())?
            .ok_or_else(|| format!("host {host:?} is not enrolled with this controller"))?;
        let wall = time::OffsetDateTime::now_utc();
        let judged = if serials.accepts(&presented) {
            Judged::of(session_cert)
        } else {
            Judged::newest(&serials, ttl)?
        };
        judged.early_refusal(wall)?;
        let gap = renewal_gap(ttl);
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

/// The certificate a renewal is judged on: its serial and life as issued.
struct Judged {
    serial: String,
    issued: time::OffsetDateTime,
    not_after: time::OffsetDateTime,
}

impl Judged {
    /// A presented certificate. Its life is counted as the agent counts it,
    /// without the slack its `not_before` is backdated by.
    fn of(cert: &PeerIdentity) -> Judged {
        Judged {
            serial: cert.serial.clone(),
            issued: (cert.not_before + cutover_core::pki::NOT_BEFORE_SLACK).min(cert.not_after),
            not_after: cert.not_after,
        }
    }

    /// The host's current certificate, as recorded: issued `ttl` before
    /// its end of life.
    fn newest(s: &Serials, ttl: Duration) -> Result<Judged, String> {
        let not_after = time::OffsetDateTime::from_unix_timestamp_nanos(
            i128::from(s.not_after).saturating_mul(1_000_000),
        )
        .map_err(|_| {
            format!(
                "certificate {} is recorded with an end of life out of range",
                s.current
            )
        })?;
        let ttl = time::Duration::try_from(ttl).unwrap_or(time::Duration::MAX);
        Ok(Judged {
            serial: s.current.clone(),
            issued: not_after.checked_sub(ttl).unwrap_or(not_after),
            not_after,
        })
    }

    /// A certificate is renewed from a third into its life as issued on (the
    /// agent asks at two thirds), never in its first third.
    fn early_refusal(&self, now: time::OffsetDateTime) -> Result<(), String> {
        let life = self.not_after - self.issued;
        let age = now - self.issued;
        if age * 3 < life {
            let from = self.issued + life / 3;
            return Err(format!(
                "certificate {} is too young to renew: renewal opens a third into its life, at {}",
                self.serial,
                cutover_core::manifest::rfc3339(from)
            ));
        }
        Ok(())
    }
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

    /// Enrolls edge-1 with `serial`, replacing whatever identity it held.
    fn enroll(s: &Store, token: &str, serial: &str) {
        s.create_token_with(token, "edge-1", now_ms() + 60_000, true)
            .unwrap();
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

    const WEEK: Duration = Duration::from_secs(7 * 86_400);

    fn week_ms() -> i64 {
        i64::try_from(WEEK.as_millis()).unwrap()
    }

    #[tokio::test]
    async fn a_renewal_waits_a_third_of_the_certificate_life_and_the_gap_since_the_last() {
        let (_d, s) = store();
        enroll(&s, "t1", "aa");
        s.create_token("t2", "edge-2", now_ms() + 60_000).unwrap();
        s.enroll("t2", |_| Ok(((), "aa".to_string(), now_ms())))
            .unwrap()
            .unwrap();
        let c = Certs::default();
        let day = time::Duration::days(1);
        let young = c
            .begin_renewal(&s, "edge-1", &cert(day, 7 * day), WEEK, Instant::now())
            .await
            .unwrap_err();
        assert!(young.contains("too young to renew"), "{young}");
        // The backdated slack does not count: a certificate of 6s is too
        // young for its first 2s, though its not_before is minutes old.
        let short = time::Duration::seconds(6);
        let judged = |age| Judged::of(&cert(time::Duration::seconds(age), short));
        assert!(judged(1).early_refusal(now()).is_err());
        assert!(judged(3).early_refusal(now()).is_ok());
        let old = cert(5 * day, 7 * day);
        let t0 = Instant::now();
        let begin = |at| c.begin_renewal(&s, "edge-1", &old, WEEK, at);
        assert_eq!(begin(t0).await, Ok(None));
        let again = begin(t0 + Duration::from_secs(5)).await.unwrap_err();
        assert!(again.contains("at most once every 60s"), "{again}");
        // Another host is not held up.
        assert!(c.begin_renewal(&s, "edge-2", &old, WEEK, t0).await.is_ok());
        // After the gap it may renew again; a failed renewal gives the turn back.
        let later = t0 + RENEWAL_GAP;
        assert_eq!(begin(later).await, Ok(Some(t0)));
        c.renewal_failed("edge-1", Some(t0));
        assert!(begin(later).await.is_ok());
        assert_eq!(renewal_gap(Duration::from_secs(6)), Duration::from_secs(2));
        assert_eq!(renewal_gap(Duration::from_secs(86_400)), RENEWAL_GAP);
    }

    #[tokio::test]
    async fn one_session_cannot_renew_again_and_again_on_the_certificate_it_opened_with() {
        let (_d, s) = store();
        enroll(&s, "t1", "aa");
        let day = time::Duration::days(1);
        // The session opened with `aa`, five days into its week.
        let session = cert(5 * day, 7 * day);
        let c = Certs::default();
        let t0 = Instant::now();
        let renewed = |serial: &str| {
            s.record_renewal("edge-1", serial, now_ms() + week_ms())
                .unwrap();
            c.changed("edge-1");
        };
        assert!(c
            .begin_renewal(&s, "edge-1", &session, WEEK, t0)
            .await
            .is_ok());
        renewed("bb");
        // `aa` is the replaced one: an agent whose answer was lost may ask
        // again with it once the gap has passed.
        let t1 = t0 + RENEWAL_GAP;
        assert!(c
            .begin_renewal(&s, "edge-1", &session, WEEK, t1)
            .await
            .is_ok());
        renewed("cc");
        // Now the host holds `cc`, issued a moment ago: the same session
        // is judged on it and refused, however long it waits for the gap.
        for c in [c, Certs::preloaded(&s)] {
            let refused = c
                .begin_renewal(&s, "edge-1", &session, WEEK, t1 + 10 * RENEWAL_GAP)
                .await
                .unwrap_err();
            assert!(refused.contains("certificate cc is too young"), "{refused}");
        }
    }

    #[tokio::test]
    async fn preloaded_serials_answer_a_session_without_reading_the_store() {
        let (_d, s) = store();
        enroll(&s, "t1", "aa");
        s.record_renewal("edge-1", "bb", now_ms() + 60_000).unwrap();
        let c = Certs::preloaded(&s);
        // The store forgets the host; the preloaded cache still answers.
        s.with(|conn| Ok(conn.execute("DELETE FROM hosts", [])?))
            .unwrap();
        assert_eq!(verdict(&c, &s, "bb").await, Ok(()));
        assert_eq!(verdict(&c, &s, "aa").await, Ok(()));
        // A serial the cache refuses is read again, and the store decides.
        assert_eq!(
            verdict(&c, &s, "cc").await,
            Err(tonic::Code::PermissionDenied)
        );
    }
}
