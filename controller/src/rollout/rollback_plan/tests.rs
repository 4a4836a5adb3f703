//! The rollback planner against a fake [`Resolve`]: where each host goes,
//! who is skipped and why, and what the agents are sent.

use super::*;
use crate::testing::identity as id;

fn host(name: &str, current: &str, previous: &str) -> HostState {
    crate::testing::host(name, "api", Some(id(current)), Some(id(previous)))
}

/// Every release resolves but those named, and each ask is counted.
#[derive(Default)]
struct Fake {
    missing: Vec<&'static str>,
    asked: Vec<String>,
}

impl Resolve for Fake {
    fn resolve(
        &mut self,
        _service: &str,
        _config: &ServiceConfig,
        identity: &ContentIdentity,
    ) -> Result<Arc<HostTarget>, String> {
        self.asked.push(identity.release.clone());
        if self.missing.contains(&identity.release.as_str()) {
            return Err(format!(
                "release {} is no longer imported",
                identity.release
            ));
        }
        Ok(Arc::new(HostTarget {
            identity: identity.clone(),
            sha256: identity.tarball_sha256.unwrap(),
            size: 1,
            image: None,
        }))
    }
}

/// `cutover rollback api` over `hosts` of a fleet of h1 to h4, with no
/// release history.
fn plan_all(hosts: &[HostState], releases: &mut Fake) -> Result<Plan, PlanError> {
    let fleet = FleetConfig::parse(
        "f",
        "[services.api]\nhosts=[\"h1\", \"h2\", \"h3\", \"h4\"]\nrunner=\"systemd\"\nunit=\"api\"\n",
    )
    .unwrap();
    let req = RollbackRequest {
        fleet: &fleet,
        hosts,
        scopes: &[Scope::service("api".into())],
        history: &HashMap::new(),
        allow_offline: false,
    };
    rollback_plan(&req, releases)
}

#[test]
fn each_host_goes_to_its_own_known_good_release_and_agents_get_no_host_lists() {
    let mut revoked = host("h3", "2.0.0", "1.0.0");
    revoked.revoked = true;
    let hosts = [
        host("h1", "2.0.0", "1.0.0"),
        host("h2", "2.0.0", "1.1.0"),
        revoked,
        // h4 is in the fleet but never enrolled.
    ];
    let mut fake = Fake::default();
    let plan = plan_all(&hosts, &mut fake).unwrap();
    let s = &plan.services[0];
    let moves: Vec<(&str, &str)> = s.batches[0]
        .iter()
        .map(|m| {
            (
                m.host.as_str(),
                m.to.as_ref().unwrap().identity.release.as_str(),
            )
        })
        .collect();
    assert_eq!(moves, [("h1", "1.0.0"), ("h2", "1.1.0")]);
    assert!(
        s.config.hosts.is_empty() && s.config.labels.is_empty(),
        "what agents receive carries no host lists"
    );
    let skipped: Vec<(&str, SkipCode)> = plan
        .skipped
        .iter()
        .map(|k| (k.host.as_str(), k.code))
        .collect();
    assert_eq!(
        skipped,
        [("h4", SkipCode::NotEnrolled), ("h3", SkipCode::Revoked)]
    );
    assert_eq!(fake.asked, ["1.0.0", "1.1.0"], "only what is needed");
}

#[test]
fn a_release_that_cannot_be_resolved_skips_its_host_and_with_none_left_nothing_starts() {
    let hosts = [host("h1", "2.0.0", "1.0.0")];
    let mut fake = Fake {
        missing: vec!["1.0.0"],
        ..Fake::default()
    };
    let e = plan_all(&hosts, &mut fake).unwrap_err().0;
    assert!(
        e.starts_with("no host can be rolled back: h2 not enrolled; h3 not enrolled; h4 not enrolled; h1 release 1.0.0 is no longer imported;"),
        "{e}"
    );
}
