//! Fail fast: a check with `failure_threshold = N` fails the health window
//! after N consecutive failures, before `healthy_deadline`. Failures count
//! once the check has passed, or once its `startup_grace` is over; before
//! that a failing check is a service still starting. Pure: time comes in
//! as an argument.

use std::time::Duration;

use cutover_core::fleet::Check;

/// What one round of probes did with one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probed {
    Passed,
    Failed,
    /// The round ended at an earlier check: this one was not asked.
    Skipped,
}

/// A check that reached its threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tripped {
    /// Its index among the service's checks.
    pub check: usize,
    pub threshold: u32,
}

impl Tripped {
    /// What the evidence says about it.
    pub fn detail(&self) -> String {
        format!(
            "failed {n} consecutive checks (failure_threshold = {n})",
            n = self.threshold
        )
    }
}

/// The consecutive failures of every check of one health window.
#[derive(Debug, Clone, Default)]
pub struct FailFast {
    streaks: Vec<Streak>,
}

#[derive(Debug, Clone, Copy)]
struct Streak {
    /// `None`: the check never fails the window early.
    threshold: Option<u32>,
    grace: Option<Duration>,
    passed: bool,
    failures: u32,
}

impl FailFast {
    pub fn new(checks: &[Check]) -> FailFast {
        FailFast {
            streaks: checks
                .iter()
                .map(|c| Streak {
                    threshold: c.failure_threshold,
                    grace: c.startup_grace,
                    passed: false,
                    failures: 0,
                })
                .collect(),
        }
    }

    /// One round, `elapsed` after the window started; `probed[i]` is what
    /// it did with check `i` (missing entries were skipped). The first
    /// check to reach its threshold, if one did.
    pub fn observe(&mut self, elapsed: Duration, probed: &[Probed]) -> Option<Tripped> {
        let mut tripped = None;
        for (i, s) in self.streaks.iter_mut().enumerate() {
            match probed.get(i).copied().unwrap_or(Probed::Skipped) {
                Probed::Passed => {
                    s.passed = true;
                    s.failures = 0;
                }
                Probed::Failed => {
                    let counting = s.passed || s.grace.is_some_and(|g| elapsed >= g);
                    if counting {
                        s.failures = s.failures.saturating_add(1);
                    }
                }
                Probed::Skipped => {}
            }
            if let Some(threshold) = s.threshold {
                if s.failures >= threshold && tripped.is_none() {
                    tripped = Some(Tripped {
                        check: i,
                        threshold,
                    });
                }
            }
        }
        tripped
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Probed::{Failed, Passed, Skipped};

    fn check(threshold: Option<u32>, grace: Option<&str>) -> Check {
        let mut text = "kind = \"tcp\"\naddress = \"127.0.0.1:1\"\n".to_string();
        if let Some(n) = threshold {
            text.push_str(&format!("failure_threshold = {n}\n"));
        }
        if let Some(g) = grace {
            text.push_str(&format!("startup_grace = \"{g}\"\n"));
        }
        toml::from_str(&text).unwrap()
    }

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn consecutive_failures_after_the_check_first_passed_trip_at_the_threshold() {
        let mut f = FailFast::new(&[check(Some(3), None)]);
        assert_eq!(f.observe(S, &[Passed]), None);
        assert_eq!(f.observe(S * 2, &[Failed]), None);
        assert_eq!(f.observe(S * 3, &[Failed]), None);
        let t = f.observe(S * 4, &[Failed]).unwrap();
        assert_eq!(
            t,
            Tripped {
                check: 0,
                threshold: 3
            }
        );
        assert_eq!(
            t.detail(),
            "failed 3 consecutive checks (failure_threshold = 3)"
        );
    }

    #[test]
    fn a_pass_between_failures_starts_the_count_again() {
        let mut f = FailFast::new(&[check(Some(2), None)]);
        for round in [Passed, Failed, Passed, Failed, Passed, Failed] {
            assert_eq!(f.observe(S, &[round]), None);
        }
        assert!(f.observe(S, &[Failed]).is_some());
    }

    #[test]
    fn failures_before_the_first_pass_do_not_count_without_a_startup_grace() {
        let mut f = FailFast::new(&[check(Some(1), None)]);
        for i in 1..100 {
            assert_eq!(f.observe(S * i, &[Failed]), None);
        }
        // Once it passed, one failure is enough.
        assert_eq!(f.observe(S * 100, &[Passed]), None);
        assert!(f.observe(S * 101, &[Failed]).is_some());
    }

    #[test]
    fn failures_count_after_the_startup_grace_even_if_the_check_never_passed() {
        let mut f = FailFast::new(&[check(Some(2), Some("10s"))]);
        assert_eq!(f.observe(S * 5, &[Failed]), None);
        assert_eq!(f.observe(S * 9, &[Failed]), None);
        assert_eq!(f.observe(S * 10, &[Failed]), None);
        assert!(f.observe(S * 11, &[Failed]).is_some());
    }

    #[test]
    fn a_check_without_a_threshold_never_trips_and_skipped_rounds_do_not_count() {
        let mut f = FailFast::new(&[check(None, None), check(Some(2), None)]);
        assert_eq!(f.observe(S, &[Passed, Passed]), None);
        for _ in 0..50 {
            // The first check fails: the second is not asked.
            assert_eq!(f.observe(S, &[Failed, Skipped]), None);
        }
        assert_eq!(f.observe(S, &[Passed, Failed]), None);
        // Missing entries are skipped checks.
        assert_eq!(f.observe(S, &[Failed]), None);
        let t = f.observe(S, &[Passed, Failed]).unwrap();
        assert_eq!(t.check, 1);
    }

    #[test]
    fn no_checks_and_no_rounds_trip_nothing() {
        let mut f = FailFast::default();
        assert_eq!(f.observe(S, &[Failed, Failed]), None);
    }
}
