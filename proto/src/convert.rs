//! Conversions between wire messages and `cutover_core::views` domain types.
//! Wire input is untrusted: malformed digests are refused with `TryFrom`.

use cutover_core::views::{
    from_ms, to_ms, ChannelView, ContentIdentity, DiagReport, HostView, InstalledService,
    ReleaseServiceView, ReleaseView, ServiceLog,
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

impl TryFrom<v1::ContentIdentity> for ContentIdentity {
    type Error = WireError;
    fn try_from(c: v1::ContentIdentity) -> Result<Self, WireError> {
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
            state: s.state.clone(),
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
        Ok(InstalledService {
            name: s.name,
            current: s.current.map(TryInto::try_into).transpose()?,
            previous: s.previous.map(TryInto::try_into).transpose()?,
            state: s.state,
        })
    }
}

pub fn services_from_wire(
    list: Vec<v1::InstalledService>,
) -> Result<Vec<InstalledService>, WireError> {
    list.into_iter().map(TryInto::try_into).collect()
}

pub fn services_to_wire(list: &[InstalledService]) -> Vec<v1::InstalledService> {
    list.iter().map(Into::into).collect()
}

impl From<&DiagReport> for v1::DiagReport {
    fn from(d: &DiagReport) -> Self {
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
        Ok(DiagReport {
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
        })
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
        };
        let e = InstalledService::try_from(wire).unwrap_err().to_string();
        assert!(e.contains("malformed tarball digest"), "{e}");
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
}
