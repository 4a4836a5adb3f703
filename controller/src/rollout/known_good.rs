//! Where a manual rollback takes one host: the release most recently
//! healthy on that host among those older (by version) than what it runs
//! now and not tried since by a step that failed or was rolled back. Never
//! a newer one: a rollback does not move a host forward (a host that runs
//! the oldest release it knows is left as it is). Pure: the store supplies
//! what each host ran ([`Seen`]), the caller resolves the answer to an
//! artifact it can install.

use cutover_core::views::ContentIdentity;

/// The key a release is known by on a host: the image for containers, the
/// tarball otherwise (as the planner compares them).
pub fn release_key(identity: &ContentIdentity) -> Option<String> {
    identity
        .image_id
        .or(identity.tarball_sha256)
        .map(|d| d.to_hex())
}

/// One release a host ran of a service, as its steps ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Seen {
    pub identity: ContentIdentity,
    /// Last healthy there (or run there before a step moved the host).
    pub healthy_ms: Option<i64>,
    /// Last tried there by a step that failed or was rolled back.
    pub bad_ms: Option<i64>,
}

impl Seen {
    /// Bad unless it was healthy after it was last tried and failed.
    pub fn is_bad(&self) -> bool {
        match (self.healthy_ms, self.bad_ms) {
            (_, None) => false,
            (None, Some(_)) => true,
            (Some(healthy), Some(bad)) => bad >= healthy,
        }
    }
}

/// What one host may go back to, best first; empty with the reason when
/// nothing qualifies.
pub fn candidates(
    current: Option<&ContentIdentity>,
    previous: Option<&ContentIdentity>,
    history: &[Seen],
    exclude: &[String],
) -> Result<Vec<ContentIdentity>, String> {
    let current_key = current.and_then(release_key);
    let current_version = current.and_then(version);
    let usable = |identity: &ContentIdentity| {
        let key = release_key(identity);
        let older = match (&current_version, version(identity)) {
            (Some(now), Some(v)) => v < *now,
            // A host that runs nothing, or a version that does not parse
            // (never from a verified release): nothing is older.
            _ => false,
        };
        older
            && key.is_some()
            && key != current_key
            && !exclude.iter().any(|e| Some(e) == key.as_ref())
    };
    let mut known: Vec<&Seen> = history
        .iter()
        .filter(|s| !s.is_bad() && s.healthy_ms.is_some() && usable(&s.identity))
        .collect();
    known.sort_by_key(|s| std::cmp::Reverse(s.healthy_ms));
    let mut out: Vec<ContentIdentity> = known.into_iter().map(|s| s.identity.clone()).collect();
    // The agent's own "previous", for a host this controller has no
    // record of it on (installed before the controller kept them): used
    // unless a record says a step tried and failed it.
    if let Some(p) = previous {
        let key = release_key(p);
        let recorded = history.iter().any(|s| release_key(&s.identity) == key);
        if usable(p) && !recorded {
            out.push(p.clone());
        }
    }
    if out.is_empty() {
        let now = current
            .map(|c| format!("release {}", c.release))
            .unwrap_or_else(|| "nothing".into());
        return Err(format!(
            "runs {now}; no older release is known healthy on it"
        ));
    }
    Ok(out)
}

/// A release's version, as the release was imported (always semver).
fn version(identity: &ContentIdentity) -> Option<semver::Version> {
    semver::Version::parse(&identity.release).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::identity as id;

    fn seen(release: &str, healthy_ms: Option<i64>, bad_ms: Option<i64>) -> Seen {
        Seen {
            identity: id(release),
            healthy_ms,
            bad_ms,
        }
    }

    fn releases(c: Result<Vec<ContentIdentity>, String>) -> Vec<String> {
        c.unwrap().into_iter().map(|i| i.release).collect()
    }

    #[test]
    fn a_canary_back_from_a_failed_release_goes_to_the_one_before_not_to_the_failed_one() {
        // 1.0.0 -> 1.1.0 healthy; 1.1.0 -> 1.2.0 failed at the canary and
        // the agent went back: it runs 1.1.0, its "previous" is 1.2.0.
        let history = [
            seen("1.0.0", Some(10), None),
            seen("1.1.0", Some(20), None),
            seen("1.2.0", None, Some(30)),
        ];
        let got = candidates(Some(&id("1.1.0")), Some(&id("1.2.0")), &history, &[]);
        assert_eq!(releases(got), ["1.0.0"]);
    }

    #[test]
    fn a_rollback_never_moves_a_host_forward_so_running_it_twice_does_not_undo_it() {
        // Rolled back from 1.1.0 to 1.0.0: 1.1.0 is the most recent other
        // release, but newer.
        let history = [seen("1.0.0", Some(30), None), seen("1.1.0", Some(20), None)];
        let e = candidates(Some(&id("1.0.0")), Some(&id("1.1.0")), &history, &[]).unwrap_err();
        assert!(e.contains("no older release"), "{e}");
        // Among older ones, the most recently healthy comes first.
        let history = [
            seen("1.0.0", Some(30), None),
            seen("1.1.0", Some(20), None),
            seen("1.2.0", None, Some(40)),
        ];
        let got = candidates(Some(&id("1.2.0")), None, &history, &[]);
        assert_eq!(releases(got), ["1.0.0", "1.1.0"]);
    }

    #[test]
    fn a_host_left_on_a_failed_release_goes_to_the_newest_healthy_one() {
        let history = [
            seen("1.0.0", Some(10), None),
            seen("1.1.0", Some(20), None),
            seen("1.2.0", None, Some(30)),
        ];
        let got = candidates(Some(&id("1.2.0")), Some(&id("1.1.0")), &history, &[]);
        assert_eq!(releases(got), ["1.1.0", "1.0.0"]);
    }

    #[test]
    fn a_release_healthy_again_after_it_failed_is_a_target_and_a_tie_counts_as_bad() {
        let history = [
            seen("1.0.0", Some(40), Some(30)),
            seen("0.9.0", Some(25), Some(25)),
        ];
        let got = candidates(Some(&id("1.1.0")), None, &history, &[]);
        assert_eq!(releases(got), ["1.0.0"]);
    }

    #[test]
    fn excluded_releases_and_the_current_one_are_never_targets() {
        let history = [seen("1.0.0", Some(10), None), seen("1.1.0", Some(20), None)];
        let exclude = [release_key(&id("1.0.0")).unwrap()];
        let got = candidates(Some(&id("1.1.0")), None, &history, &exclude);
        assert!(got.unwrap_err().contains("runs release 1.1.0"));
        let got = candidates(Some(&id("1.0.0")), None, &history, &[]);
        assert!(got.is_err(), "the current release was offered");
    }

    #[test]
    fn the_agents_previous_is_used_only_when_no_record_names_it() {
        let none: [Seen; 0] = [];
        let got = candidates(Some(&id("1.1.0")), Some(&id("1.0.0")), &none, &[]);
        assert_eq!(releases(got), ["1.0.0"]);
        let failed = [seen("1.0.0", None, Some(5))];
        let got = candidates(Some(&id("1.1.0")), Some(&id("1.0.0")), &failed, &[]);
        assert!(got.is_err());
    }

    #[test]
    fn a_host_with_nothing_known_is_refused_with_the_reason() {
        let e = candidates(None, None, &[], &[]).unwrap_err();
        assert!(
            e.contains("runs nothing") && e.contains("no older release"),
            "{e}"
        );
    }
}
