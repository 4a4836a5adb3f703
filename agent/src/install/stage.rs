//! The lifecycle's transitions as data: which stage a command begins
//! with, which follows each, what the inventory says meanwhile, how long
//! each may take, and what a failure in each means. `lifecycle.rs` only
//! walks this table; the stages themselves are journalled
//! ([`Stage`] is in the journal, so a restarted agent knows where it was).

use std::time::Duration;

use cutover_core::fleet::ServiceConfig;

use super::journal::Stage;

/// Which command the lifecycle carries out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Install,
    Rollback,
}

impl Kind {
    /// The stage a command begins with: an install prepares its release;
    /// a rollback's release is on the host already, so it swaps at once.
    pub fn first(self) -> Stage {
        match self {
            Kind::Install => Stage::Preparing,
            Kind::Rollback => Stage::Swapping,
        }
    }

    /// The stage at whose start the journal stops calling the service
    /// failed: an install clears it as it begins; a rollback once it has
    /// swapped back (if the swap fails, the service is still failing).
    pub fn clears_failure_at(self) -> Stage {
        match self {
            Kind::Install => Stage::Preparing,
            Kind::Rollback => Stage::Checking,
        }
    }

    /// How long the checks must pass without a break: an install's
    /// `min_healthy_time`; for a rollback one passing round (its release
    /// ran here before).
    pub fn min_healthy(self, config: &ServiceConfig) -> Duration {
        match self {
            Kind::Install => config.min_healthy_time,
            Kind::Rollback => Duration::ZERO,
        }
    }

    /// Whether a waiting rollback or a long-lost controller cuts the
    /// checks short: an install's, since a rollback is where they lead; a
    /// rollback's run to their verdict.
    pub fn checks_cut_short(self) -> bool {
        self == Kind::Install
    }

    /// The gate a failed check reports under: the check's own for an
    /// install, `rollback` for a rollback (going back failed).
    pub fn failed_check_gate(self) -> Option<&'static str> {
        match self {
            Kind::Install => None,
            Kind::Rollback => Some("rollback"),
        }
    }

    /// Whether a failed check leaves the service failed, waiting for the
    /// controller's decision (or the agent's own): an install's does.
    pub fn failed_check_marks_failed(self) -> bool {
        self == Kind::Install
    }
}

impl Stage {
    /// The stage after this one succeeded; `None`: the command is done.
    pub fn next(self) -> Option<Stage> {
        match self {
            Stage::Preparing => Some(Stage::Swapping),
            Stage::Swapping => Some(Stage::Checking),
            Stage::Checking => None,
        }
    }

    /// Whether the service has been touched once this stage has begun, so
    /// a failure from here on reports it restarted.
    pub fn touches_service(self) -> bool {
        self != Stage::Preparing
    }

    /// What the inventory says of a service while a command of `kind` is
    /// in this stage.
    pub fn busy(self, kind: Kind) -> &'static str {
        match (kind, self) {
            (Kind::Install, Stage::Checking) => "checking",
            (Kind::Install, _) => "installing",
            (Kind::Rollback, _) => "rolling back",
        }
    }

    /// How long the stage may take: the checking stage ends at the health
    /// window's `healthy_deadline` (with the last evidence); preparing and
    /// swapping have no deadline of their own (a transfer has its stall
    /// timeout, a stop its `stop_grace`).
    pub fn timeout(self, config: &ServiceConfig) -> Option<Duration> {
        match self {
            Stage::Checking => Some(config.healthy_deadline),
            Stage::Preparing | Stage::Swapping => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn walk(kind: Kind) -> Vec<Stage> {
        std::iter::successors(Some(kind.first()), |s| s.next()).collect()
    }

    #[test]
    fn an_install_prepares_swaps_and_checks_and_a_rollback_swaps_and_checks() {
        assert_eq!(
            walk(Kind::Install),
            [Stage::Preparing, Stage::Swapping, Stage::Checking]
        );
        assert_eq!(walk(Kind::Rollback), [Stage::Swapping, Stage::Checking]);
    }

    #[test]
    fn only_a_failure_before_the_swap_leaves_the_service_untouched() {
        let touched: Vec<bool> = walk(Kind::Install)
            .into_iter()
            .map(Stage::touches_service)
            .collect();
        assert_eq!(touched, [false, true, true]);
    }

    #[test]
    fn the_inventory_says_installing_then_checking_or_rolling_back() {
        let busy = |k: Kind| -> Vec<&str> { walk(k).into_iter().map(|s| s.busy(k)).collect() };
        assert_eq!(
            busy(Kind::Install),
            ["installing", "installing", "checking"]
        );
        assert_eq!(busy(Kind::Rollback), ["rolling back", "rolling back"]);
    }

    #[test]
    fn only_the_checks_have_a_deadline_and_it_is_the_services_healthy_deadline() {
        let config = cutover_core::fleet::FleetConfig::parse(
            "f",
            "[services.api]\nhosts=[\"h\"]\nrunner=\"process\"\ncommand=\"x\"\nhealthy_deadline=\"7s\"\n",
        )
        .unwrap()
        .services
        .remove("api")
        .unwrap();
        let timeouts: Vec<Option<Duration>> = walk(Kind::Install)
            .into_iter()
            .map(|s| s.timeout(&config))
            .collect();
        assert_eq!(timeouts, [None, None, Some(Duration::from_secs(7))]);
        assert_eq!(Kind::Rollback.min_healthy(&config), Duration::ZERO);
    }
}
