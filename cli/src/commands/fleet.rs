//! `cutover hosts`, `status`, `diag`, `host revoke` and `host forget`: the
//! enrolled hosts and what they run.

use std::time::Duration;

use crate::client::ConnectArgs;
use crate::doc;
use crate::doc::fleet::{host_state, HostDoc, StatusDoc};
use crate::doc::results::HostChanged;
use crate::error::{Error, Result};
use crate::output::{self, Format};
use cutover_core::views::{from_ms, DiagReport, HealthState, HostView, InstalledService};
use cutover_proto::v1;

pub async fn revoke(c: &ConnectArgs, host: &str, yes: bool, out: Format) -> Result<()> {
    if !yes {
        super::confirm(
            &format!(
                "revoke host {}? Its session is cut and its certificate refused for good; the name can enroll again only after `cutover host forget`.",
                output::escape(host)
            ),
            "not revoked",
        )?;
    }
    c.operator()
        .await?
        .revoke_host(v1::HostRequest { host: host.into() })
        .await?;
    if out == Format::Json {
        output::json(&HostChanged {
            host,
            action: "revoked",
        });
    } else {
        println!(
            "host {host} revoked; its session was cut and its certificate is refused from now on"
        );
    }
    Ok(())
}

pub async fn forget(c: &ConnectArgs, host: &str, out: Format) -> Result<()> {
    c.operator()
        .await?
        .forget_host(v1::HostRequest { host: host.into() })
        .await?;
    if out == Format::Json {
        output::json(&HostChanged {
            host,
            action: "forgotten",
        });
        return Ok(());
    }
    println!(
        "host {host} forgotten; its events and rollouts are kept, and `cutover token create {host}` enrolls a fresh identity under the name"
    );
    Ok(())
}

pub async fn fetch_hosts(c: &ConnectArgs) -> Result<Vec<HostView>> {
    let list = c
        .operator()
        .await?
        .list_hosts(v1::Empty {})
        .await?
        .into_inner();
    list.hosts
        .into_iter()
        .map(|h| {
            let mut h = HostView::try_from(h).map_err(|e| Error::Rpc(e.to_string()))?;
            h.services.iter_mut().for_each(doc::fleet::word_state);
            Ok(h)
        })
        .collect()
}

pub async fn hosts(c: &ConnectArgs, out: Format) -> Result<()> {
    let hosts = fetch_hosts(c).await?;
    if out == Format::Json {
        output::json(&hosts.iter().map(HostDoc::of).collect::<Vec<_>>());
        return Ok(());
    }
    let rows: Vec<Vec<String>> = hosts
        .iter()
        .map(|h| {
            vec![
                h.name.clone(),
                host_state(h).into(),
                if h.agent_version.is_empty() {
                    "-".into()
                } else {
                    h.agent_version.clone()
                },
                output::when(h.last_seen),
                output::when(h.cert_not_after),
                health_line(&h.services),
            ]
        })
        .collect();
    output::table(
        &[
            "HOST",
            "STATE",
            "AGENT",
            "LAST SEEN",
            "CERT EXPIRES",
            "HEALTH",
        ],
        &rows,
    );
    Ok(())
}

pub async fn status(c: &ConnectArgs, out: Format) -> Result<()> {
    let hosts = fetch_hosts(c).await?;
    let channels = super::channel::channels(c).await?;
    let releases = super::release::releases(c).await?;
    let status = StatusDoc::of(&hosts, &channels, &releases);
    if out == Format::Json {
        output::json(&status);
        return Ok(());
    }
    println!(
        "hosts:    {} online, {} offline, {} revoked",
        status.hosts_online, status.hosts_offline, status.hosts_revoked
    );
    if channels.is_empty() {
        println!("channels: none (`cutover channel set NAME VERSION`)");
    }
    for ch in &channels {
        let default = if ch.is_default { " (default)" } else { "" };
        println!(
            "channel:  {} -> {}{default}",
            output::escape(&ch.name),
            output::escape(&ch.version)
        );
    }
    if releases.is_empty() {
        println!("releases: none imported (`cutover release import MANIFEST`)");
    }
    for r in &releases {
        println!(
            "release:  {} ({} service(s), expires {})",
            output::escape(&r.version),
            r.services.len(),
            output::when(r.expires)
        );
    }
    println!();
    let rows: Vec<Vec<String>> = hosts
        .iter()
        .map(|h| {
            vec![
                h.name.clone(),
                host_state(h).into(),
                services_line(&h.services),
            ]
        })
        .collect();
    output::table(&["HOST", "STATE", "RUNS"], &rows);
    Ok(())
}

fn services_line(services: &[InstalledService]) -> String {
    if services.is_empty() {
        return "(nothing installed)".into();
    }
    services
        .iter()
        .map(|s| match &s.current {
            Some(c) => format!("{}@{} [{}]", s.name, c.service_version, service_state(s)),
            None => format!("{} [{}]", s.name, service_state(s)),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// A host's services' health in a few words: each unhealthy one with
/// since when and why, else `healthy` when its agent probed them all,
/// `-` when it probed none yet.
fn health_line(services: &[InstalledService]) -> String {
    let sick: Vec<String> = services
        .iter()
        .filter(|s| s.health.state == HealthState::Unhealthy)
        .map(|s| {
            format!(
                "{} unhealthy since {} ({})",
                s.name,
                output::when(from_ms(s.health.since_ms)),
                s.health.evidence
            )
        })
        .collect();
    if !sick.is_empty() {
        return sick.join("; ");
    }
    let healthy = services
        .iter()
        .filter(|s| s.health.state == HealthState::Healthy)
        .count();
    match healthy {
        0 => "-".into(),
        n if n == services.len() => "healthy".into(),
        n => format!("{n} of {} healthy, the rest not probed yet", services.len()),
    }
}

/// `running, unhealthy since T (evidence), 2 restarts`: the state, what
/// the agent's last health probe said, and restarts when there were any.
fn service_state(s: &InstalledService) -> String {
    let h = &s.health;
    let mut out = s.state.clone();
    match h.state {
        HealthState::Unhealthy => out.push_str(&format!(
            ", unhealthy since {} ({})",
            output::when(from_ms(h.since_ms)),
            h.evidence
        )),
        HealthState::Healthy => out.push_str(", healthy"),
        HealthState::Unknown => {}
    }
    if h.restarts > 0 {
        out.push_str(&format!(", {} restart(s)", h.restarts));
    }
    out
}

pub async fn diag(c: &ConnectArgs, host: &str, out: Format) -> Result<()> {
    let wire = c
        .operator()
        .await?
        .diag(v1::HostRequest { host: host.into() })
        .await?
        .into_inner();
    let mut d = DiagReport::try_from(wire).map_err(|e| Error::Rpc(e.to_string()))?;
    d.services.iter_mut().for_each(doc::fleet::word_state);
    if out == Format::Json {
        output::json(&d);
        return Ok(());
    }
    let rows = [
        ("hostname", d.hostname.clone()),
        ("os", d.os.clone()),
        ("kernel", d.kernel.clone()),
        ("cpus", d.cpus.to_string()),
        (
            "load",
            format!("{:.2} {:.2} {:.2}", d.load[0], d.load[1], d.load[2]),
        ),
        (
            "memory",
            format!(
                "{} available of {}",
                output::bytes(d.mem_available_bytes),
                output::bytes(d.mem_total_bytes)
            ),
        ),
        (
            "disk",
            format!(
                "{} available of {} ({})",
                output::bytes(d.disk_available_bytes),
                output::bytes(d.disk_total_bytes),
                d.data_dir
            ),
        ),
        (
            "uptime",
            humantime::format_duration(Duration::from_secs(d.uptime_s)).to_string(),
        ),
        (
            "agent",
            format!(
                "{} (up {})",
                d.agent_version,
                humantime::format_duration(Duration::from_secs(d.agent_uptime_s))
            ),
        ),
        ("session rtt", format!("{:.2} ms", d.rtt_ms)),
        ("clock offset", format!("{:+.1} ms", d.clock_offset_ms)),
        ("services", services_line(&d.services)),
    ];
    for (k, v) in rows {
        println!("{k:<13} {}", output::escape(&v));
    }
    for log in &d.logs {
        let pid = log.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into());
        let exit = log
            .last_exit
            .as_deref()
            .map(|e| format!(", last {}", output::escape(e)))
            .unwrap_or_default();
        println!(
            "\n{} (pid {pid}, {} restart(s){exit}), last log lines:",
            output::escape(&log.service),
            log.restarts
        );
        if let Some(detail) = &log.detail {
            println!("  {}", output::escape(detail));
        }
        for line in &log.lines {
            println!("  {}", output::escape(line));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use cutover_core::views::{ContentIdentity, ServiceHealth};

    #[test]
    fn a_running_service_says_whether_it_is_healthy_since_when_and_why() {
        let mut s = InstalledService {
            name: "api".into(),
            current: Some(ContentIdentity {
                service_version: "1.0".into(),
                ..ContentIdentity::default()
            }),
            previous: None,
            state: "running".into(),
            health: ServiceHealth::default(),
        };
        assert_eq!(services_line(std::slice::from_ref(&s)), "api@1.0 [running]");
        s.health = ServiceHealth {
            state: HealthState::Unhealthy,
            since_ms: 1_764_600_000_000,
            evidence: "http GET /healthz: 503".into(),
            restarts: 2,
        };
        assert_eq!(
            services_line(std::slice::from_ref(&s)),
            "api@1.0 [running, unhealthy since 2025-12-01T14:40:00Z (http GET /healthz: 503), 2 restart(s)]"
        );
        assert_eq!(
            health_line(std::slice::from_ref(&s)),
            "api unhealthy since 2025-12-01T14:40:00Z (http GET /healthz: 503)"
        );
        s.health.state = HealthState::Healthy;
        s.health.restarts = 0;
        let mut unprobed = s.clone();
        unprobed.health = ServiceHealth::default();
        assert_eq!(
            health_line(&[s.clone(), unprobed.clone()]),
            "1 of 2 healthy, the rest not probed yet"
        );
        assert_eq!(health_line(&[unprobed]), "-");
        assert_eq!(health_line(std::slice::from_ref(&s)), "healthy");
        assert_eq!(services_line(&[s]), "api@1.0 [running, healthy]");
    }
}
