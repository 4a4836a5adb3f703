//! What the controller tells operators and what agents report, as domain
//! types: the CLI prints these (text or `--output json`), `cutover-proto`
//! converts them to and from the wire.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// What a service runs, identified by content.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContentIdentity {
    pub release: String,
    pub service_version: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tarball_sha256: Option<crate::Sha256Digest>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image_id: Option<crate::Sha256Digest>,
}

/// One service installed on a host, as its agent reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstalledService {
    pub name: String,
    pub current: Option<ContentIdentity>,
    pub previous: Option<ContentIdentity>,
    pub state: String,
}

/// A host's live diagnostics, gathered by its agent when asked.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DiagReport {
    pub hostname: String,
    pub os: String,
    pub kernel: String,
    pub cpus: u32,
    pub load: [f64; 3],
    pub mem_total_bytes: u64,
    pub mem_available_bytes: u64,
    pub data_dir: String,
    pub disk_total_bytes: u64,
    pub disk_available_bytes: u64,
    pub uptime_s: u64,
    pub agent_version: String,
    pub agent_uptime_s: u64,
    pub rtt_ms: f64,
    pub clock_offset_ms: f64,
    pub services: Vec<InstalledService>,
    #[serde(default)]
    pub logs: Vec<ServiceLog>,
}

/// How a service's process fares on a host, with the end of its log.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceLog {
    pub service: String,
    pub pid: Option<u32>,
    pub restarts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_exit: Option<String>,
    pub lines: Vec<String>,
    /// Runner-specific state, e.g. a container's image, health, start time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostView {
    pub name: String,
    pub online: bool,
    pub revoked: bool,
    pub agent_version: String,
    #[serde(with = "time::serde::rfc3339::option")]
    pub enrolled_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_seen: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub connected_since: Option<OffsetDateTime>,
    pub cert_serial: String,
    #[serde(with = "time::serde::rfc3339::option")]
    pub cert_not_after: Option<OffsetDateTime>,
    pub services: Vec<InstalledService>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseView {
    pub version: String,
    #[serde(with = "time::serde::rfc3339::option")]
    pub created: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub expires: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub imported_at: Option<OffsetDateTime>,
    pub signed_by: Vec<String>,
    pub services: Vec<ReleaseServiceView>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseServiceView {
    pub name: String,
    pub service_version: String,
    pub depends_on: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tarball_sha256: Option<crate::Sha256Digest>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image_id: Option<crate::Sha256Digest>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelView {
    pub name: String,
    pub version: String,
    pub is_default: bool,
    #[serde(with = "time::serde::rfc3339::option")]
    pub updated_at: Option<OffsetDateTime>,
}

/// Milliseconds since the Unix epoch; 0 stands for "never".
pub fn to_ms(t: Option<OffsetDateTime>) -> i64 {
    t.map(|t| (t.unix_timestamp_nanos() / 1_000_000) as i64)
        .unwrap_or(0)
}

pub fn from_ms(ms: i64) -> Option<OffsetDateTime> {
    if ms == 0 {
        return None;
    }
    OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000).ok()
}

pub fn now_ms() -> i64 {
    to_ms(Some(OffsetDateTime::now_utc()))
}
