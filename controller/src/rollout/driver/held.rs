//! The reports a rollout holds until a save has stored them: at most one
//! per (host, command id), the latest, found through an index so that a
//! reconnect storm (every agent sending its last report again while the
//! store cannot be written) costs O(1) per report, not a search.

use std::collections::HashMap;

use cutover_core::rollout::Report;

/// One report not yet stored, with when it arrived.
pub(super) struct Held {
    pub(super) host: String,
    pub(super) report: Report,
    pub(super) at: i64,
}

/// The held reports in the order they first came, and where each
/// (host, command id) is among them.
#[derive(Default)]
pub(super) struct HeldReports {
    reports: Vec<Held>,
    index: HashMap<(String, String), usize>,
}

impl HeldReports {
    /// Keeps `report`; a later report answering the same command from the
    /// same host replaces the earlier one in its place (an agent sends its
    /// last report again on a new session).
    pub(super) fn hold(&mut self, host: String, report: Report, at: i64) {
        self.put(Held { host, report, at });
    }

    fn put(&mut self, held: Held) {
        let key = (held.host.clone(), held.report.command_id.clone());
        match self.index.get(&key) {
            Some(&i) => self.reports[i] = held,
            None => {
                self.index.insert(key, self.reports.len());
                self.reports.push(held);
            }
        }
    }

    /// Every held report, in the order they first came; none is held
    /// after this.
    pub(super) fn take(&mut self) -> Vec<Held> {
        self.index.clear();
        std::mem::take(&mut self.reports)
    }

    /// Holds again reports [`take`](Self::take) gave (their save failed),
    /// before any held since, which are later and so win.
    pub(super) fn restore(&mut self, earlier: Vec<Held>) {
        let since = self.take();
        for h in earlier.into_iter().chain(since) {
            self.put(h);
        }
    }

    pub(super) fn len(&self) -> usize {
        self.reports.len()
    }

    #[cfg(test)]
    pub(super) fn is_empty(&self) -> bool {
        self.reports.is_empty()
    }

    #[cfg(test)]
    pub(super) fn iter(&self) -> impl Iterator<Item = &Held> {
        self.reports.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cutover_core::views::InstalledService;

    fn report(id: &str, duration_ms: u64) -> Report {
        Report {
            command_id: id.into(),
            service: "api".into(),
            ok: true,
            evidence: None,
            installed: InstalledService {
                name: "api".into(),
                current: None,
                previous: None,
                state: "running".into(),
                health: Default::default(),
            },
            auto_rolled_back: false,
            fetched_bytes: 0,
            restarted: true,
            duration_ms,
        }
    }

    fn host(i: usize) -> String {
        format!("h{i}")
    }

    fn id(i: usize) -> String {
        format!("r1-api-h{i}")
    }

    /// Every (host, command id) held once, the latest copy, in first-come
    /// order.
    fn assert_latest(held: &HeldReports, n: usize, at: i64) {
        assert_eq!(held.len(), n);
        for (i, h) in held.iter().enumerate() {
            assert_eq!(
                (h.host.as_str(), h.report.command_id.as_str()),
                (host(i).as_str(), id(i).as_str())
            );
            assert_eq!((h.at, h.report.duration_ms), (at, 2), "{}", h.host);
        }
    }

    #[test]
    fn a_reconnect_storm_holds_each_hosts_latest_report_once() {
        const HOSTS: usize = 10_000;
        let mut held = HeldReports::default();
        for i in 0..HOSTS {
            held.hold(host(i), report(&id(i), 1), 1);
        }
        // Every agent sends its last report again on a new session.
        for i in 0..HOSTS {
            held.hold(host(i), report(&id(i), 2), 2);
        }
        assert_latest(&held, HOSTS, 2);
    }

    #[test]
    fn the_same_command_id_from_another_host_is_another_report() {
        let mut held = HeldReports::default();
        held.hold("h1".into(), report("r1-api-h1", 1), 1);
        held.hold("h2".into(), report("r1-api-h1", 1), 1);
        held.hold("h1".into(), report("r1-api-h1", 2), 2);
        let kept: Vec<_> = held.iter().map(|h| (h.host.as_str(), h.at)).collect();
        assert_eq!(kept, [("h1", 2), ("h2", 1)]);
    }

    #[test]
    fn reports_given_back_after_a_failed_save_lose_to_those_held_since() {
        let mut held = HeldReports::default();
        for i in 0..3 {
            held.hold(host(i), report(&id(i), 1), 1);
        }
        let taken = held.take();
        assert!(held.is_empty());
        // While the save ran, h1 sent its report again.
        held.hold(host(1), report(&id(1), 2), 2);
        held.restore(taken);
        let kept: Vec<_> = held.iter().map(|h| (h.host.as_str(), h.at)).collect();
        assert_eq!(kept, [("h0", 1), ("h1", 2), ("h2", 1)]);
        // The index still finds each one after being rebuilt.
        for i in 0..3 {
            held.hold(host(i), report(&id(i), 2), 2);
        }
        assert_latest(&held, 3, 2);
        // Taken, nothing is found any more: a report held next is new.
        assert_eq!(held.take().len(), 3);
        held.hold(host(0), report(&id(0), 2), 2);
        assert_eq!(held.len(), 1);
    }
}
