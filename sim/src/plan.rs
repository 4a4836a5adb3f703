//! The planner over a fleet-sized input: in process (the controller's own
//! `plan`, fed what its store would hold), and end to end through
//! `cutover plan` against the lab's controller.

use std::time::{Duration, Instant};

use crate::swarm::{self, Result};

const MIB: f64 = 1024.0 * 1024.0;

/// Plans `services` services (a dependency chain) onto `hosts` hosts.
pub fn plan(hosts: usize, services: usize) -> Result<()> {
    use cutover_controller::rollout::plan::{plan, HostState, PlanRequest};
    let mut manifest = String::from(
        "version = \"2.0.0\"\ncreated = 2026-11-01T00:00:00Z\nexpires = 2027-11-01T00:00:00Z\n",
    );
    let mut fleet = String::new();
    for i in 0..services {
        let depends = if i == 0 {
            String::new()
        } else {
            format!("depends_on = [\"svc{:02}\"]\n", i - 1)
        };
        let sha = cutover_core::Sha256Digest::of(format!("svc{i}").as_bytes());
        manifest.push_str(&format!(
            "[[services]]\nname = \"svc{i:02}\"\nservice_version = \"2.0.0\"\n{depends}tarball = {{ sha256 = \"{sha}\", size = 1024, file = \"svc{i:02}.tar.gz\" }}\n"
        ));
        fleet.push_str(&format!(
            "[services.svc{i:02}]\nlabels = [\"sim\"]\nrunner = \"process\"\ncommand = \"bin/svc\"\n[services.svc{i:02}.policy]\nmax_parallel = 1000\nmax_unavailable = 1000\n"
        ));
    }
    let names = swarm::names(hosts);
    for h in &names {
        fleet.push_str(&format!("[hosts.{h}]\nlabels = [\"sim\"]\n"));
    }
    let manifest = cutover_core::manifest::Manifest::parse(&manifest).map_err(|e| e.to_string())?;
    let fleet =
        cutover_core::fleet::FleetConfig::parse("fleet.toml", &fleet).map_err(|e| e.to_string())?;
    let installed: Vec<_> = (0..services)
        .map(|i| cutover_core::views::InstalledService {
            name: format!("svc{i:02}"),
            current: Some(cutover_core::views::ContentIdentity {
                release: "1.0.0".into(),
                service_version: "1.0.0".into(),
                tarball_sha256: Some(cutover_core::Sha256Digest::of(b"old")),
                image_id: None,
            }),
            previous: None,
            state: "running".into(),
            health: Default::default(),
        })
        .collect();
    let states: Vec<HostState> = names
        .iter()
        .map(|h| HostState {
            name: h.clone(),
            online: true,
            revoked: false,
            installed: installed.clone(),
        })
        .collect();
    let req = PlanRequest {
        manifest: &manifest,
        fleet: &fleet,
        hosts: &states,
        services: &[],
        allow_offline: false,
        instant: false,
    };
    let mut best = Duration::MAX;
    let mut moves = 0;
    for _ in 0..5 {
        let t = Instant::now();
        let p = plan(&req).map_err(|e| e.to_string())?;
        best = best.min(t.elapsed());
        moves = p
            .services
            .iter()
            .map(|s| s.batches.iter().map(Vec::len).sum::<usize>())
            .sum();
    }
    let t = Instant::now();
    let json =
        serde_json::to_vec(&plan(&req).map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
    let with_json = t.elapsed();
    println!(
        "plan {hosts} hosts x {services} services ({moves} host moves): {:.1} ms (best of 5); with the JSON document the CLI receives, {:.1} ms and {:.1} MiB",
        best.as_secs_f64() * 1000.0,
        with_json.as_secs_f64() * 1000.0,
        json.len() as f64 / MIB
    );
    Ok(())
}

/// `cutover plan --all` of a release of `services` services (a dependency
/// chain) onto `hosts` enrolled hosts, through the real CLI and controller:
/// the time until the CLI has the whole plan, and its size.
pub fn through_cli(lab: &crate::lab::Lab, hosts: usize, services: usize) -> Result<()> {
    use cutover_cli::bundle;
    let version = format!("3.{services}.{hosts}");
    // A kept lab holds the release from an earlier run.
    if !lab.cli(&["release", "list"])?.contains(&version) {
        let release: Vec<bundle::Service> = (0..services)
            .map(|i| bundle::Service {
                name: format!("svc{i:02}"),
                service_version: version.clone(),
                depends_on: if i == 0 {
                    vec![]
                } else {
                    vec![format!("svc{:02}", i - 1)]
                },
                databases: Vec::new(),
                data_migrations: Vec::new(),
                files: vec![bundle::File::new(
                    "bin/svc",
                    format!("#!/bin/sh\n# svc{i:02}\n").into_bytes(),
                    0o755,
                )],
            })
            .collect();
        lab.publish(&version, &release)?;
    }
    let mut fleet = String::new();
    for i in 0..services {
        fleet.push_str(&format!(
            "[services.svc{i:02}]\nlabels = [\"sim\"]\nrunner = \"process\"\ncommand = \"bin/svc\"\n[services.svc{i:02}.policy]\nmax_parallel = 1000\nmax_unavailable = 1000\n"
        ));
    }
    for h in swarm::names(hosts) {
        fleet.push_str(&format!("[hosts.{h}]\nlabels = [\"sim\"]\n"));
    }
    let path = lab.dir.join("fleet-plan.toml");
    std::fs::write(&path, fleet).map_err(|e| e.to_string())?;
    lab.cli(&["fleet", "apply", &path.display().to_string()])?;
    let plan = ["plan", "--all", "--version", &version, "--allow-offline"];
    let mut best = (Duration::MAX, Duration::MAX);
    let (mut json_bytes, mut text_lines) = (0, 0);
    for _ in 0..3 {
        let t = Instant::now();
        json_bytes = lab.cli(&[&plan[..], &["--output", "json"]].concat())?.len();
        best.0 = best.0.min(t.elapsed());
        let t = Instant::now();
        text_lines = lab.cli(&plan)?.lines().count();
        best.1 = best.1.min(t.elapsed());
    }
    println!(
        "cutover plan {hosts} hosts x {services} services (all offline, --allow-offline): {:.0} ms for the {:.1} MiB JSON document, {:.0} ms for the {text_lines}-line text (best of 3, CLI process start to exit)",
        best.0.as_secs_f64() * 1000.0,
        json_bytes as f64 / MIB,
        best.1.as_secs_f64() * 1000.0
    );
    Ok(())
}
