//! Conversions between wire messages and `cutover_core::views` domain types.
//! Wire input is untrusted: malformed digests, invalid names, over-long
//! identities and too many entries are refused with `TryFrom`; over-long
//! free text is cut to its bound (`cutover_core::views::limits`). What an
//! agent sends is bounded the same way on the way out, so no message it
//! builds exceeds what the controller accepts.

use cutover_core::views::{
    bound, from_ms, limits, to_ms, ChannelView, ContentIdentity, DiagReport, HealthState, HostView,
    InstalledService, ReleaseServiceView, ReleaseView, ServiceHealth, ServiceLog,
};
use cutover_core::Sha256Digest;

use crate::v1;

/// A wire message that does not make a valid domain value.
#[derive(Debug, thiserror::Error)]
#[error("malformed {what} from peer: {reason}")]
pub struct WireError {
    pub what: &'static str,
    pub reason: String,
}

fn opt_digest(what: &'static str, s: &str) -> Result<Option<Sha256Digest>, WireError> {
    if s.is_empty() {
        return Ok(None);
    }
    Sha256Digest::parse_prefixed(s)
        .map(Some)
        .map_err(|e| WireError {
            what,
            reason: e.to_string(),
        })
}

fn digest_str(d: &Option<Sha256Digest>) -> String {
    d.map(|d| d.to_hex()).unwrap_or_default()
}

impl From<&ContentIdentity> for v1::ContentIdentity {
    fn from(c: &ContentIdentity) -> Self {
        v1::ContentIdentity {
            release: c.release.clone(),
            service_version: c.service_version.clone(),
            tarball_sha256: digest_str(&c.tarball_sha256),
            image_id: digest_str(&c.image_id),
        }
    }
}

/// An identity's version text: compared, never cut, so over-long or
/// control characters are refused.
fn version_text(what: &'static str, s: &str) -> Result<(), WireError> {
    if s.len() > limits::VERSION {
        return Err(WireError {
            what,
            reason: format!("{} bytes, at most {} are allowed", s.len(), limits::VERSION),
        });
    }
    if s.chars().any(char::is_control) {
        return Err(WireError {
            what,
            reason: format!("{s:?} contains control characters"),
        });
    }
    Ok(())
}

/// Refuses a list of more than `max` entries before any is converted.
pub fn check_count(what: &'static str, n: usize, max: usize) -> Result<(), WireError> {
    if n > max {
        return Err(WireError {
            what,
            reason: format!("{n} entries, at most {max} are allowed"),
        });
    }
    Ok(())
}

impl TryFrom<v1::ContentIdentity> for ContentIdentity {
    type Error = WireError;
    fn try_from(c: v1::ContentIdentity) -> Result<Self, WireError> {
        version_text("release version", &c.release)?;
        version_text("service version", &c.service_version)?;
        Ok(ContentIdentity {
            release: c.release,
            service_version: c.service_version,
            tarball_sha256: opt_digest("tarball digest", &c.tarball_sha256)?,
            image_id: opt_digest("image id", &c.image_id)?,
        })
    }
}

impl From<&InstalledService> for v1::InstalledService {
    fn from(s: &InstalledService) -> Self {
        v1::InstalledService {
            name: s.name.clone(),
            current: s.current.as_ref().map(Into::into),
            previous: s.previous.as_ref().map(Into::into),
            state: cutover_core::views::bounded(&s.state, limits::SHORT).into_owned(),
            health: (!s.health.is_unknown()).then(|| v1::ServiceHealth {
                state: s.health.state.as_str().into(),
                since_ms: s.health.since_ms,
                evidence: cutover_core::views::bounded(&s.health.evidence, limits::HEALTH_EVIDENCE)
                    .into_owned(),
                restarts: s.health.restarts,
            }),
        }
    }
}

impl TryFrom<v1::InstalledService> for InstalledService {
    type Error = WireError;
    fn try_from(s: v1::InstalledService) -> Result<Self, WireError> {
        cutover_core::names::validate("service", &s.name).map_err(|e| WireError {
            what: "service name",
            reason: e.to_string(),
        })?;
        let mut service = InstalledService {
            name: s.name,
            current: s.current.map(TryInto::try_into).transpose()?,
            previous: s.previous.map(TryInto::try_into).transpose()?,
            state: s.state,
            health: s
                .health
                .map(|h| ServiceHealth {
                    state: HealthState::parse(&h.state),
                    since_ms: h.since_ms,
                    evidence: h.evidence,
                    restarts: h.restarts,
                })
                .unwrap_or_default(),
        };
        service.bound();
        Ok(service)
    }
}

/// An inventory from a peer: at most [`limits::SERVICES`] services, each
/// checked.
pub fn services_from_wire(
    list: Vec<v1::InstalledService>,
) -> Result<Vec<InstalledService>, WireError> {
    check_count("inventory", list.len(), limits::SERVICES)?;
    list.into_iter().map(TryInto::try_into).collect()
}

/// What an agent says when it opens a session, as checked at the edge.
#[derive(Debug, Clone, PartialEq)]
pub struct Hello {
    /// Cut to [`limits::SHORT`] with a marker.
    pub agent_version: String,
    pub heartbeat_interval_ms: u64,
    pub inventory: Vec<InstalledService>,
    pub agent_started_at_ms: i64,
}

impl TryFrom<v1::Hello> for Hello {
    type Error = WireError;
    fn try_from(h: v1::Hello) -> Result<Self, WireError> {
        let mut agent_version = h.agent_version;
        bound(&mut agent_version, limits::SHORT);
        Ok(Hello {
            agent_version,
            heartbeat_interval_ms: h.heartbeat_interval_ms,
            inventory: services_from_wire(h.inventory)?,
            agent_started_at_ms: h.agent_started_at_ms,
        })
    }
}

/// The services whose health an agent says changed: at most
/// [`limits::SERVICES`], each checked like an inventory's.
pub fn health_change_from_wire(h: v1::HealthChange) -> Result<Vec<InstalledService>, WireError> {
    check_count("health change", h.services.len(), limits::SERVICES)?;
    h.services.into_iter().map(TryInto::try_into).collect()
}

/// A health change as an agent sends it: at most [`limits::SERVICES`]
/// services (the rest wait for the next hello's inventory).
pub fn health_change_to_wire(list: &[InstalledService]) -> v1::HealthChange {
    v1::HealthChange {
        services: list.iter().take(limits::SERVICES).map(Into::into).collect(),
    }
}

pub fn services_to_wire(list: &[InstalledService]) -> Vec<v1::InstalledService> {
    list.iter().map(Into::into).collect()
}

/// What an agent sends: bounded first ([`DiagReport::bound`]), so the
/// largest report it can build fits in one message.
impl From<&DiagReport> for v1::DiagReport {
    fn from(d: &DiagReport) -> Self {
        let mut d = d.clone();
        d.bound();
        let d = &d;
        v1::DiagReport {
            hostname: d.hostname.clone(),
            os: d.os.clone(),
            kernel: d.kernel.clone(),
            cpus: d.cpus,
            load1: d.load[0],
            load5: d.load[1],
            load15: d.load[2],
            mem_total_bytes: d.mem_total_bytes,
            mem_available_bytes: d.mem_available_bytes,
            data_dir: d.data_dir.clone(),
            disk_total_bytes: d.disk_total_bytes,
            disk_available_bytes: d.disk_available_bytes,
            uptime_s: d.uptime_s,
            agent_version: d.agent_version.clone(),
            agent_uptime_s: d.agent_uptime_s,
            rtt_ms: d.rtt_ms,
            clock_offset_ms: d.clock_offset_ms,
            services: services_to_wire(&d.services),
            logs: d
                .logs
                .iter()
                .map(|l| v1::ServiceLog {
                    service: l.service.clone(),
                    pid: l.pid.unwrap_or(0),
                    restarts: l.restarts,
                    last_exit: l.last_exit.clone().unwrap_or_default(),
                    lines: l.lines.clone(),
                    detail: l.detail.clone().unwrap_or_default(),
                })
                .collect(),
        }
    }
}

impl TryFrom<v1::DiagReport> for DiagReport {
    type Error = WireError;
    fn try_from(d: v1::DiagReport) -> Result<Self, WireError> {
        check_count("diag report services", d.services.len(), limits::SERVICES)?;
        check_count("diag report logs", d.logs.len(), limits::SERVICES)?;
        let mut report = DiagReport {
            hostname: d.hostname,
            os: d.os,
            kernel: d.kernel,
            cpus: d.cpus,
            load: [d.load1, d.load5, d.load15],
            mem_total_bytes: d.mem_total_bytes,
            mem_available_bytes: d.mem_available_bytes,
            data_dir: d.data_dir,
            disk_total_bytes: d.disk_total_bytes,
            disk_available_bytes: d.disk_available_bytes,
            uptime_s: d.uptime_s,
            agent_version: d.agent_version,
            agent_uptime_s: d.agent_uptime_s,
            rtt_ms: d.rtt_ms,
            clock_offset_ms: d.clock_offset_ms,
            services: services_from_wire(d.services)?,
            logs: d
                .logs
                .into_iter()
                .map(|l| ServiceLog {
                    service: l.service,
                    pid: Some(l.pid).filter(|p| *p != 0),
                    restarts: l.restarts,
                    last_exit: Some(l.last_exit).filter(|e| !e.is_empty()),
                    lines: l.lines,
                    detail: Some(l.detail).filter(|e| !e.is_empty()),
                })
                .collect(),
        };
        report.bound();
        Ok(report)
    }
}

impl From<&HostView> for v1::Host {
    fn from(h: &HostView) -> Self {
        v1::Host {
            name: h.name.clone(),
            online: h.online,
            revoked: h.revoked,
            agent_version: h.agent_version.clone(),
            enrolled_at_ms: to_ms(h.enrolled_at),
            last_seen_ms: to_ms(h.last_seen),
            connected_since_ms: to_ms(h.connected_since),
            cert_serial: h.cert_serial.clone(),
            cert_not_after_ms: to_ms(h.cert_not_after),
            services: services_to_wire(&h.services),
        }
    }
}

impl TryFrom<v1::Host> for HostView {
    type Error = WireError;
    fn try_from(h: v1::Host) -> Result<Self, WireError> {
        Ok(HostView {
            name: h.name,
            online: h.online,
            revoked: h.revoked,
            agent_version: h.agent_version,
            enrolled_at: from_ms(h.enrolled_at_ms),
            last_seen: from_ms(h.last_seen_ms),
            connected_since: from_ms(h.connected_since_ms),
            cert_serial: h.cert_serial,
            cert_not_after: from_ms(h.cert_not_after_ms),
            services: services_from_wire(h.services)?,
        })
    }
}

impl From<&ReleaseView> for v1::Release {
    fn from(r: &ReleaseView) -> Self {
        v1::Release {
            version: r.version.clone(),
            created_ms: to_ms(r.created),
            expires_ms: to_ms(r.expires),
            imported_at_ms: to_ms(r.imported_at),
            signed_by: r.signed_by.clone(),
            services: r
                .services
                .iter()
                .map(|s| v1::ReleaseService {
                    name: s.name.clone(),
                    service_version: s.service_version.clone(),
                    depends_on: s.depends_on.clone(),
                    tarball_sha256: digest_str(&s.tarball_sha256),
                    image_id: digest_str(&s.image_id),
                })
                .collect(),
        }
    }
}

impl TryFrom<v1::Release> for ReleaseView {
    type Error = WireError;
    fn try_from(r: v1::Release) -> Result<Self, WireError> {
        Ok(ReleaseView {
            version: r.version,
            created: from_ms(r.created_ms),
            expires: from_ms(r.expires_ms),
            imported_at: from_ms(r.imported_at_ms),
            signed_by: r.signed_by,
            services: r
                .services
                .into_iter()
                .map(|s| {
                    Ok(ReleaseServiceView {
                        tarball_sha256: opt_digest("tarball digest", &s.tarball_sha256)?,
                        image_id: opt_digest("image id", &s.image_id)?,
                        name: s.name,
                        service_version: s.service_version,
                        depends_on: s.depends_on,
                    })
                })
                .collect::<Result<_, WireError>>()?,
        })
    }
}

impl From<&ChannelView> for v1::Channel {
    fn from(c: &ChannelView) -> Self {
        v1::Channel {
            name: c.name.clone(),
            version: c.version.clone(),
            is_default: c.is_default,
            updated_at_ms: to_ms(c.updated_at),
        }
    }
}

impl From<v1::Channel> for ChannelView {
    fn from(c: v1::Channel) -> Self {
        ChannelView {
            name: c.name,
            version: c.version,
            is_default: c.is_default,
            updated_at: from_ms(c.updated_at_ms),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_digest_from_peer_is_refused() {
        let wire = v1::InstalledService {
            name: "api".into(),
            current: Some(v1::ContentIdentity {
                tarball_sha256: "nothex".into(),
                ..Default::default()
            }),
            previous: None,
            state: "running".into(),
            health: None,
        };
        let e = InstalledService::try_from(wire).unwrap_err().to_string();
        assert!(e.contains("malformed tarball digest"), "{e}");
    }

    #[test]
    fn health_round_trips_bounded_and_an_old_agents_reads_as_unknown() {
        let mut s = InstalledService {
            name: "api".into(),
            current: None,
            previous: None,
            state: "running".into(),
            health: ServiceHealth {
                state: HealthState::Unhealthy,
                since_ms: 1_700_000_000_000,
                evidence: "http: 503".into(),
                restarts: 3,
            },
        };
        let back = InstalledService::try_from(v1::InstalledService::from(&s)).unwrap();
        assert_eq!(back, s);
        s.health.evidence = "e".repeat(70_000);
        let wire = v1::InstalledService::from(&s);
        assert!(wire.health.as_ref().unwrap().evidence.len() <= limits::HEALTH_EVIDENCE);
        let mut wire = wire;
        wire.health.as_mut().unwrap().evidence = "e".repeat(70_000);
        let back = InstalledService::try_from(wire.clone()).unwrap();
        assert!(back.health.evidence.len() <= limits::HEALTH_EVIDENCE);
        wire.health = None;
        let old = InstalledService::try_from(wire).unwrap();
        assert_eq!(old.health, ServiceHealth::default());
    }

    #[test]
    fn identity_round_trips() {
        let c = ContentIdentity {
            release: "1.0.0".into(),
            service_version: "1.0".into(),
            tarball_sha256: Some(Sha256Digest::of(b"x")),
            image_id: None,
        };
        let back = ContentIdentity::try_from(v1::ContentIdentity::from(&c)).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn a_hello_is_bounded_and_an_oversized_inventory_is_refused() {
        let service = v1::InstalledService {
            name: "api".into(),
            current: None,
            previous: None,
            state: "s".repeat(70_000),
            health: None,
        };
        let hello = Hello::try_from(v1::Hello {
            agent_version: "v".repeat(70_000),
            heartbeat_interval_ms: 1000,
            inventory: vec![service.clone()],
            agent_started_at_ms: 1,
        })
        .unwrap();
        assert!(hello.agent_version.len() <= limits::SHORT);
        assert!(hello.agent_version.starts_with("vvv"));
        assert!(hello
            .agent_version
            .ends_with(cutover_core::views::TRUNCATED));
        assert!(hello.inventory[0].state.len() <= limits::SHORT);

        let e = Hello::try_from(v1::Hello {
            inventory: vec![service; limits::SERVICES + 1],
            ..Default::default()
        })
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("malformed inventory from peer: 1025 entries, at most 1024"),
            "{e}"
        );
    }

    #[test]
    fn an_identity_with_an_over_long_or_control_version_is_refused() {
        for (release, needle) in [
            ("9".repeat(limits::VERSION + 1), "129 bytes, at most 128"),
            ("1.0\u{1b}]0;pwned\u{7}".to_string(), "control characters"),
        ] {
            let e = ContentIdentity::try_from(v1::ContentIdentity {
                release,
                ..Default::default()
            })
            .unwrap_err()
            .to_string();
            assert!(
                e.contains("malformed release version") && e.contains(needle),
                "{e}"
            );
        }
    }

    #[test]
    fn a_diag_report_from_a_peer_is_bounded_and_too_many_logs_are_refused() {
        let log = v1::ServiceLog {
            service: "api".into(),
            lines: vec!["l".repeat(10_000); 1000],
            detail: "d".repeat(10_000),
            last_exit: "e".repeat(10_000),
            ..Default::default()
        };
        let d = DiagReport::try_from(v1::DiagReport {
            hostname: "h".repeat(70_000),
            logs: vec![log.clone(); 3],
            ..Default::default()
        })
        .unwrap();
        assert!(d.hostname.len() <= limits::SHORT);
        assert!(d.logs[0].lines.len() <= limits::LOG_LINES);
        assert!(d.logs[0].lines[0].len() <= limits::LOG_LINE);
        assert!(d.logs[0].last_exit.as_ref().unwrap().len() <= limits::SHORT);

        let e = DiagReport::try_from(v1::DiagReport {
            logs: vec![v1::ServiceLog::default(); limits::SERVICES + 1],
            ..Default::default()
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("malformed diag report logs from peer"), "{e}");
    }
}
