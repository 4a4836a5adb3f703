//! What each host has run of each service, as its rollouts' steps ended: a
//! release healthy on the host, or one a failed or rolled-back step tried
//! there (never the release a step moved a host from: that the host ran it
//! says nothing of its health). A manual rollback takes each host to the newest release that was
//! healthy on it and was not tried by a failed step since
//! ([`crate::rollout::known_good`]). Written in the transaction that saves
//! the step that ended (a step rolling back is not an end: at a failure
//! thousands of steps start rolling back in the save that must go out
//! before their rollback commands); the newest [`KEPT`] releases per host
//! and service are kept, pruned in the save that finishes a rollout.

use std::collections::HashMap;

use cutover_core::rollout::{Rollout, Step, StepPhase};
use cutover_core::views::ContentIdentity;
use rusqlite::{params, Connection};

use super::Store;
use crate::error::{Error, Result};
use crate::rollout::known_good::{release_key as key, Seen};

/// Releases remembered per host and service.
pub const KEPT: usize = 16;

/// One fact a step's end teaches, ready to write.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    host: String,
    service: String,
    digest: String,
    identity: String,
    at_ms: i64,
    kind: Kind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Healthy on the host after its install.
    Healthy,
    /// Tried by a step that failed or was rolled back.
    Bad,
}

/// What the ends of `changed` steps of `r` teach. Steps of plans made by
/// earlier controllers' swap-back rollbacks name no target and teach only
/// what the host ran before.
pub fn outcomes(r: &Rollout, changed: &[usize]) -> Result<Vec<Outcome>> {
    let mut out = Vec::new();
    for &i in changed {
        let s = &r.steps[i];
        let kind = match s.phase {
            StepPhase::Healthy => Kind::Healthy,
            StepPhase::Failed | StepPhase::RolledBack | StepPhase::RollbackFailed => Kind::Bad,
            StepPhase::Pending | StepPhase::Installing | StepPhase::RollingBack => continue,
        };
        let at_ms = s.finished_ms.unwrap_or(r.updated_ms);
        // Only what a step saw: the release a host ran before a step is
        // not known healthy (its failure report may never have arrived);
        // a host with no record falls back on its agent's "previous".
        if let Some(target) = target_of(r, s) {
            push(&mut out, s, target, at_ms, kind)?;
        }
    }
    Ok(out)
}

fn target_of<'a>(r: &'a Rollout, s: &'a Step) -> Option<&'a ContentIdentity> {
    if let Some(to) = &s.to {
        return Some(&to.identity);
    }
    let plan = r.plan.services.iter().find(|p| p.service == s.service)?;
    (!plan.swap_back).then_some(&plan.target)
}

fn push(
    out: &mut Vec<Outcome>,
    s: &Step,
    identity: &ContentIdentity,
    at_ms: i64,
    kind: Kind,
) -> Result<()> {
    let Some(digest) = key(identity) else {
        return Ok(());
    };
    let identity = serde_json::to_string(identity)
        .map_err(|e| Error::Internal(format!("identity of {}: {e}", s.service)))?;
    out.push(Outcome {
        host: s.host.clone(),
        service: s.service.clone(),
        digest,
        identity,
        at_ms,
        kind,
    });
    Ok(())
}

/// Writes `outcomes` on `c` (inside the caller's transaction).
pub(super) fn record(c: &Connection, outcomes: &[Outcome]) -> Result<()> {
    if outcomes.is_empty() {
        return Ok(());
    }
    let mut healthy = c.prepare_cached(
        "INSERT INTO host_releases (host, service, digest, identity, healthy_ms) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT(host, service, digest) DO UPDATE SET healthy_ms = max(coalesce(healthy_ms, ?5), ?5)",
    )?;
    let mut bad = c.prepare_cached(
        "INSERT INTO host_releases (host, service, digest, identity, bad_ms) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT(host, service, digest) DO UPDATE SET bad_ms = max(coalesce(bad_ms, ?5), ?5)",
    )?;
    for o in outcomes {
        let args = params![o.host, o.service, o.digest, o.identity, o.at_ms];
        match o.kind {
            Kind::Healthy => healthy.execute(args)?,
            Kind::Bad => bad.execute(args)?,
        };
    }
    Ok(())
}

/// Forgets all but the newest [`KEPT`] releases of each host of `service`
/// (inside the caller's transaction).
pub(super) fn prune(c: &Connection, service: &str) -> Result<()> {
    let kept = i64::try_from(KEPT).unwrap_or(i64::MAX);
    c.prepare_cached(
        "DELETE FROM host_releases WHERE service = ?1 AND rowid IN (
           SELECT rowid FROM (
             SELECT rowid, row_number() OVER (
               PARTITION BY host
               ORDER BY max(coalesce(healthy_ms, 0), coalesce(bad_ms, 0)) DESC) AS n
             FROM host_releases WHERE service = ?1)
           WHERE n > ?2)",
    )?
    .execute(params![service, kept])?;
    Ok(())
}

impl Store {
    /// Every host's remembered releases of `service`.
    pub fn host_releases(&self, service: &str) -> Result<HashMap<String, Vec<Seen>>> {
        self.with(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT host, identity, healthy_ms, bad_ms FROM host_releases WHERE service = ?1",
            )?;
            let rows = stmt.query_map([service], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, Option<i64>>(2)?,
                    r.get::<_, Option<i64>>(3)?,
                ))
            })?;
            let mut by_host: HashMap<String, Vec<Seen>> = HashMap::new();
            for row in rows {
                let (host, identity, healthy_ms, bad_ms) = row?;
                // A row this controller cannot read names no release: it
                // is left out (the rollback lists the host if nothing else
                // is known), never guessed at.
                let Ok(identity) = serde_json::from_str(&identity) else {
                    tracing::warn!(%host, service, "unreadable release record in host_releases; ignored");
                    continue;
                };
                by_host.entry(host).or_default().push(Seen {
                    identity,
                    healthy_ms,
                    bad_ms,
                });
            }
            Ok(by_host)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::RolloutSave;
    use crate::testing::identity as id;
    use cutover_core::rollout::{HostMove, Plan, RolloutKind, ServicePlan};
    use cutover_core::Sha256Digest;
    use std::sync::Arc;

    /// A stored rollout of "api" to `release` on host "h", from `from`.
    fn rollout(s: &Store, release: &str, from: &str) -> Rollout {
        let fleet = cutover_core::fleet::FleetConfig::parse(
            "f",
            "[services.api]\nhosts=[\"h\"]\nrunner=\"systemd\"\nunit=\"x\"\n",
        )
        .unwrap();
        let plan = Plan {
            release: release.into(),
            services: vec![ServicePlan {
                service: "api".into(),
                level: 0,
                target: id(release),
                sha256: Sha256Digest::of(release.as_bytes()),
                size: 1,
                batches: vec![vec![HostMove {
                    host: "h".into(),
                    from: Some(Arc::new(id(from))),
                    to: None,
                }]],
                unchanged: vec![],
                config: fleet.services["api"].clone(),
                image: None,
                swap_back: false,
            }],
            carried: vec![],
            offline: vec![],
            skipped: vec![],
            migrations: vec![],
            data_migrations: vec![],
        };
        s.create_rollout(|n| crate::rollout::new_rollout(n, RolloutKind::Upgrade, plan, false, 1))
            .unwrap()
    }

    fn end(s: &Store, mut r: Rollout, phase: StepPhase, at: i64) {
        r.steps[0].phase = phase;
        r.steps[0].sent_ms = Some(at - 5);
        r.steps[0].finished_ms = Some(at);
        r.updated_ms = at;
        r.status = cutover_core::rollout::RolloutStatus::Succeeded;
        s.save_rollout(&RolloutSave::new(&r, &[0], vec![]).unwrap())
            .unwrap();
    }

    fn history(s: &Store) -> Vec<(String, Option<i64>, Option<i64>)> {
        let mut seen: Vec<_> = s
            .host_releases("api")
            .unwrap()
            .remove("h")
            .unwrap_or_default()
            .into_iter()
            .map(|s| (s.identity.release, s.healthy_ms, s.bad_ms))
            .collect();
        seen.sort();
        seen
    }

    #[test]
    fn a_healthy_step_records_its_target_and_a_failed_one_marks_its_target_bad_and_neither_vouches_for_what_the_host_ran(
    ) {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("state.db")).unwrap();
        let r = rollout(&s, "1.1.0", "1.0.0");
        end(&s, r, StepPhase::Healthy, 100);
        let r = rollout(&s, "1.2.0", "1.1.0");
        end(&s, r, StepPhase::RolledBack, 200);
        assert_eq!(
            history(&s),
            [
                ("1.1.0".to_string(), Some(100), None),
                ("1.2.0".to_string(), None, Some(200)),
            ]
        );
        // Saving the same end again changes nothing; a pending step teaches
        // nothing.
        let mut r = rollout(&s, "1.3.0", "1.1.0");
        r.status = cutover_core::rollout::RolloutStatus::Aborted;
        s.save_rollout(&RolloutSave::new(&r, &[0], vec![]).unwrap())
            .unwrap();
        assert_eq!(history(&s).len(), 2);
    }

    #[test]
    fn only_the_newest_releases_per_host_and_service_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("state.db")).unwrap();
        for i in 0..(KEPT as i64 + 5) {
            let r = rollout(&s, &format!("1.{}.0", i + 1), &format!("1.{i}.0"));
            end(&s, r, StepPhase::Healthy, 1000 + i * 10);
        }
        let kept = history(&s);
        assert_eq!(kept.len(), KEPT);
        assert!(!kept.iter().any(|(r, _, _)| r == "1.1.0" || r == "1.5.0"));
        assert!(kept
            .iter()
            .any(|(r, _, _)| r == &format!("1.{}.0", KEPT + 5)));
    }

    #[test]
    fn a_record_that_cannot_be_read_is_left_out_and_the_rest_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("state.db")).unwrap();
        let r = rollout(&s, "1.1.0", "1.0.0");
        end(&s, r, StepPhase::Healthy, 100);
        let r = rollout(&s, "1.2.0", "1.1.0");
        end(&s, r, StepPhase::Healthy, 200);
        s.with(|c| {
            c.execute(
                "UPDATE host_releases SET identity = '{not json' WHERE identity LIKE '%1.1.0%'",
                [],
            )?;
            Ok(())
        })
        .unwrap();
        assert_eq!(history(&s), [("1.2.0".to_string(), Some(200), None)]);
    }
}
