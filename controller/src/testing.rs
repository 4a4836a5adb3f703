//! What the controller's unit tests share: a real controller on a fresh
//! data directory, with its own PKI and release key, serving nothing; a
//! release's identity; a one-service plan; a release 2.0.0 manifest; a
//! host running one service.

use std::sync::Arc;

use cutover_core::fleet::FleetConfig;
use cutover_core::rollout::{HostMove, Plan, ServicePlan};
use cutover_core::views::ContentIdentity;
use cutover_core::Sha256Digest;

use crate::Controller;

/// Release 2.0.0's manifest with `body` (its services and the rest)
/// after the version and dates.
pub(crate) fn manifest(body: &str) -> cutover_core::manifest::Manifest {
    cutover_core::manifest::Manifest::parse(&format!(
        "version = \"2.0.0\"\ncreated = 2026-01-01T00:00:00Z\nexpires = 2036-01-01T00:00:00Z\n{body}"
    ))
    .expect("test manifest")
}

/// An online host running `service` at `current` (after `previous`).
pub(crate) fn host(
    name: &str,
    service: &str,
    current: Option<ContentIdentity>,
    previous: Option<ContentIdentity>,
) -> crate::rollout::plan::HostState {
    crate::rollout::plan::HostState {
        name: name.into(),
        online: true,
        revoked: false,
        installed: vec![cutover_core::views::InstalledService {
            name: service.into(),
            current,
            previous,
            state: "running".into(),
            health: Default::default(),
        }],
    }
}

/// The identity of `release`'s tarball (its digest made from the name).
pub(crate) fn identity(release: &str) -> ContentIdentity {
    ContentIdentity {
        release: release.into(),
        service_version: release.into(),
        tarball_sha256: Some(Sha256Digest::of(release.as_bytes())),
        image_id: None,
    }
}

/// A plan of release 1.0.0 moving `service` (a systemd unit) on each of
/// `batches` in turn.
pub(crate) fn plan(service: &str, batches: &[&[&str]]) -> Plan {
    let hosts: Vec<String> = batches
        .iter()
        .flat_map(|b| b.iter())
        .map(|h| format!("{h:?}"))
        .collect();
    let fleet = FleetConfig::parse(
        "f",
        &format!(
            "[services.{service}]\nhosts=[{}]\nrunner=\"systemd\"\nunit=\"{service}\"\n",
            hosts.join(", ")
        ),
    )
    .unwrap();
    let batches = moves(batches);
    Plan {
        release: "1.0.0".into(),
        services: vec![ServicePlan {
            service: service.into(),
            level: 0,
            target: Default::default(),
            sha256: Sha256Digest::of(service.as_bytes()),
            size: 1,
            batches,
            unchanged: vec![],
            config: fleet.services[service].clone(),
            image: None,
            swap_back: false,
        }],
        carried: vec![],
        offline: vec![],
        skipped: vec![],
        migrations: vec![],
        data_migrations: vec![],
    }
}

/// A controller on a fresh data directory, with its own PKI and key.
pub(crate) fn controller(dir: &std::path::Path) -> Arc<Controller> {
    let pki = dir.join("pki");
    std::fs::create_dir_all(&pki).unwrap();
    cutover_core::pki::init(&cutover_core::pki::InitOptions {
        dir: &pki,
        controller_hosts: &["127.0.0.1".to_string()],
        operator_name: "op",
    })
    .unwrap();
    cutover_core::signing::keygen(&dir.join("release")).unwrap();
    let config = dir.join("controller.toml");
    std::fs::write(
        &config,
        "listen = \"127.0.0.1:1\"\ndata_dir = \"data\"\n[tls]\nca_cert = \"pki/ca.pem\"\nca_key = \"pki/ca-key.pem\"\ncert = \"pki/controller.pem\"\nkey = \"pki/controller-key.pem\"\n[releases]\ntrusted_keys = [\"release.pub\"]\n",
    )
    .unwrap();
    Controller::open(crate::Config::load(&config).unwrap()).unwrap()
}

/// Each of `batches` as moves of its hosts (from and to left for the
/// planner's callers to fill in).
pub(crate) fn moves(batches: &[&[&str]]) -> Vec<Vec<HostMove>> {
    batches
        .iter()
        .map(|b| {
            b.iter()
                .map(|h| HostMove {
                    host: h.to_string(),
                    from: None,
                    to: None,
                })
                .collect()
        })
        .collect()
}
