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

/// The state of a service whose `journal.json` its agent cannot read: the
/// agent keeps every release and refuses commands for it until repaired.
pub const STATE_JOURNAL_UNREADABLE: &str = "journal unreadable";
/// The state of a service whose journal is gone but whose `current` link
/// remains.
pub const STATE_JOURNAL_MISSING: &str = "journal missing";

/// One service installed on a host, as its agent reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstalledService {
    pub name: String,
    pub current: Option<ContentIdentity>,
    pub previous: Option<ContentIdentity>,
    pub state: String,
    /// What the agent's health probes last said (unknown from agents and
    /// stored inventories that predate them).
    #[serde(default, skip_serializing_if = "ServiceHealth::is_unknown")]
    pub health: ServiceHealth,
}

/// Whether a running service passes its health checks, as the agent
/// probed it after its rollout.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthState {
    /// Not probed yet (or not running).
    #[default]
    Unknown,
    Healthy,
    Unhealthy,
}

impl HealthState {
    pub fn as_str(self) -> &'static str {
        match self {
            HealthState::Unknown => "unknown",
            HealthState::Healthy => "healthy",
            HealthState::Unhealthy => "unhealthy",
        }
    }

    /// The wire's spelling; anything else reads as unknown.
    pub fn parse(s: &str) -> HealthState {
        match s {
            "healthy" => HealthState::Healthy,
            "unhealthy" => HealthState::Unhealthy,
            _ => HealthState::Unknown,
        }
    }
}

/// A service's health: its state, since when (ms since the epoch, 0:
/// unknown), the failing check's evidence (bounded to
/// [`limits::HEALTH_EVIDENCE`]) and its process's restarts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ServiceHealth {
    pub state: HealthState,
    /// In JSON `since`, an RFC 3339 instant or `null` (the CLI's contract);
    /// inventories stored before read back from `since_ms`.
    #[serde(rename = "since", alias = "since_ms", with = "instant_or_ms")]
    pub since_ms: i64,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub evidence: String,
    pub restarts: u32,
}

impl ServiceHealth {
    pub fn is_unknown(&self) -> bool {
        *self == ServiceHealth::default()
    }
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
    #[serde(
        rename = "last_seen_at",
        alias = "last_seen",
        with = "time::serde::rfc3339::option"
    )]
    pub last_seen: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub connected_since: Option<OffsetDateTime>,
    pub cert_serial: String,
    #[serde(
        rename = "cert_expires_at",
        alias = "cert_not_after",
        with = "time::serde::rfc3339::option"
    )]
    pub cert_not_after: Option<OffsetDateTime>,
    pub services: Vec<InstalledService>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseView {
    pub version: String,
    #[serde(
        rename = "created_at",
        alias = "created",
        with = "time::serde::rfc3339::option"
    )]
    pub created: Option<OffsetDateTime>,
    #[serde(
        rename = "expires_at",
        alias = "expires",
        with = "time::serde::rfc3339::option"
    )]
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

/// How long a join token may live: the controller counts whole seconds
/// and refuses more than a week; the CLI checks the same before asking.
pub const JOIN_TOKEN_TTL: std::ops::RangeInclusive<std::time::Duration> =
    std::time::Duration::from_secs(1)..=std::time::Duration::from_secs(7 * 24 * 3600);

/// A join token not yet used and not expired, as `cutover token list`
/// shows it. The token itself is never stored (only its SHA-256), so it
/// is not here either.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinTokenView {
    pub host: String,
    #[serde(
        rename = "created_at",
        alias = "created",
        with = "time::serde::rfc3339::option"
    )]
    pub created: Option<OffsetDateTime>,
    #[serde(
        rename = "expires_at",
        alias = "expires",
        with = "time::serde::rfc3339::option"
    )]
    pub expires: Option<OffsetDateTime>,
    /// Made with `--replace`: enrolling takes over an enrolled host's name.
    pub replaces: bool,
}

/// An instant held as ms since the epoch (0: never) in JSON: an RFC 3339
/// string or `null`; a number (as earlier versions wrote it) reads too.
mod instant_or_ms {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(ms: &i64, s: S) -> Result<S::Ok, S::Error> {
        match super::from_ms(*ms) {
            Some(t) => s.serialize_str(&crate::manifest::rfc3339(t)),
            None => s.serialize_none(),
        }
    }

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        Ms(i64),
        Text(String),
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
        match Option::<Either>::deserialize(d)? {
            None => Ok(0),
            Some(Either::Ms(ms)) => Ok(ms),
            Some(Either::Text(t)) => {
                let t =
                    time::OffsetDateTime::parse(&t, &time::format_description::well_known::Rfc3339)
                        .map_err(serde::de::Error::custom)?;
                Ok(super::to_ms(Some(t)))
            }
        }
    }
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

/// Bounds on the text and counts an agent may send and the controller
/// keeps, so that no message an agent builds exceeds what the controller
/// accepts (`cutover_proto::MAX_MESSAGE_BYTES`) and no value that reaches
/// an operator's terminal is unbounded. Lengths are in bytes.
pub mod limits {
    /// Host and service names (`names::validate`).
    pub const NAME: usize = 253;
    /// A release version or a service version in a content identity (a
    /// manifest allows 64 and 128).
    pub const VERSION: usize = 128;
    /// Command ids (`r<id>-<service>-<host>` and suffixes).
    pub const COMMAND_ID: usize = 1024;
    /// Short free text: agent version, service state, gate, check label,
    /// hostname, OS, kernel, data directory, a process's last exit.
    pub const SHORT: usize = 256;
    /// Evidence detail.
    pub const DETAIL: usize = 4096;
    /// A runner's detail line in a diag report (a container's image,
    /// health, start time).
    pub const LOG_DETAIL: usize = 512;
    /// The excerpt of a response body or command output in evidence.
    pub const OUTPUT: usize = 4096;
    /// One log line in a diag report.
    pub const LOG_LINE: usize = 1024;
    /// Log lines per service in a diag report.
    pub const LOG_LINES: usize = 200;
    /// Bytes of log lines in one whole diag report, counting 4 bytes of
    /// framing per line.
    pub const LOG_BYTES: usize = 512 << 10;
    /// The evidence a service's health carries (the failing check's
    /// gate and detail).
    pub const HEALTH_EVIDENCE: usize = 512;
    /// Services in one inventory, one diag report or one list of logs
    /// (a release has at most 1,024).
    pub const SERVICES: usize = 1024;
}

/// What a truncated text ends with.
pub const TRUNCATED: &str = "…[truncated]";

/// `text` cut to at most `max` bytes at a character boundary, ending with
/// [`TRUNCATED`] when anything was cut. Nothing is escaped here: escaping
/// is for the printer.
pub fn bounded(text: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if text.len() <= max {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut keep = max.saturating_sub(TRUNCATED.len());
    while !text.is_char_boundary(keep) {
        keep -= 1;
    }
    if max < TRUNCATED.len() {
        // No room for the marker: the largest prefix that fits.
        let mut cut = max;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        return std::borrow::Cow::Owned(text[..cut].to_string());
    }
    let mut out = String::with_capacity(keep + TRUNCATED.len());
    out.push_str(&text[..keep]);
    out.push_str(TRUNCATED);
    std::borrow::Cow::Owned(out)
}

/// [`bounded`] in place.
pub fn bound(text: &mut String, max: usize) {
    if text.len() > max {
        *text = bounded(text, max).into_owned();
    }
}

impl InstalledService {
    /// The service with its free text bounded (names and identities are
    /// validated where they enter, never cut).
    pub fn bound(&mut self) {
        bound(&mut self.state, limits::SHORT);
        bound(&mut self.health.evidence, limits::HEALTH_EVIDENCE);
    }
}

impl ServiceLog {
    /// The log with every text bounded and at most `max_lines` of its last
    /// lines, each cut to [`limits::LOG_LINE`].
    pub fn bound(&mut self, max_lines: usize) {
        bound(&mut self.service, limits::NAME);
        if let Some(e) = &mut self.last_exit {
            bound(e, limits::SHORT);
        }
        if let Some(d) = &mut self.detail {
            bound(d, limits::LOG_DETAIL);
        }
        let max_lines = max_lines.min(limits::LOG_LINES);
        if self.lines.len() > max_lines {
            self.lines.drain(..self.lines.len() - max_lines);
        }
        for line in &mut self.lines {
            bound(line, limits::LOG_LINE);
        }
    }
}

impl DiagReport {
    /// The report with every text and list bounded: at most
    /// [`limits::SERVICES`] services and logs, and the last lines of each
    /// log while the whole report's lines stay within
    /// [`limits::LOG_BYTES`].
    pub fn bound(&mut self) {
        for s in [
            &mut self.hostname,
            &mut self.os,
            &mut self.kernel,
            &mut self.data_dir,
            &mut self.agent_version,
        ] {
            bound(s, limits::SHORT);
        }
        self.services.truncate(limits::SERVICES);
        self.services.iter_mut().for_each(InstalledService::bound);
        self.logs.truncate(limits::SERVICES);
        let mut budget = limits::LOG_BYTES;
        for log in &mut self.logs {
            log.bound(limits::LOG_LINES);
            // Keep the newest lines that fit in what is left.
            let mut keep = 0;
            for line in log.lines.iter().rev() {
                let Some(left) = budget.checked_sub(line.len() + 4) else {
                    break;
                };
                budget = left;
                keep += 1;
            }
            let drop = log.lines.len() - keep;
            log.lines.drain(..drop);
        }
    }
}

#[cfg(test)]
mod bound_tests {
    use super::*;

    #[test]
    fn an_inventory_stored_before_health_reads_as_unknown_and_round_trips() {
        let old = r#"{"name":"api","current":null,"previous":null,"state":"running"}"#;
        let s: InstalledService = serde_json::from_str(old).unwrap();
        assert_eq!(s.health, ServiceHealth::default());
        assert_eq!(
            serde_json::to_string(&s).unwrap(),
            old,
            "unknown is left out"
        );
        let mut s = s;
        s.health = ServiceHealth {
            state: HealthState::Unhealthy,
            since_ms: 5,
            evidence: "http: 503".into(),
            restarts: 2,
        };
        let text = serde_json::to_string(&s).unwrap();
        assert!(text.contains(r#""state":"unhealthy""#), "{text}");
        assert!(
            text.contains(r#""since":"1970-01-01T00:00:00.005Z""#),
            "{text}"
        );
        let old_since = r#"{"name":"api","current":null,"previous":null,"state":"running","health":{"state":"healthy","since_ms":7,"restarts":0}}"#;
        let read: InstalledService = serde_json::from_str(old_since).unwrap();
        assert_eq!(read.health.since_ms, 7);
        assert_eq!(serde_json::from_str::<InstalledService>(&text).unwrap(), s);
    }

    #[test]
    fn bounded_text_is_cut_at_a_char_boundary_with_a_marker() {
        assert_eq!(bounded("short", 10), "short");
        let long = "é".repeat(100); // 200 bytes
        let cut = bounded(&long, 51);
        assert!(cut.len() <= 51, "{}", cut.len());
        assert!(cut.ends_with(TRUNCATED));
        assert!(cut.starts_with("éé"));
        // No room for the marker: still within the bound and valid UTF-8.
        let tiny = bounded(&long, 5);
        assert_eq!(tiny, "éé");
        // Control characters are kept: escaping is the printer's job.
        assert_eq!(bounded("a\u{1b}[2J", 10), "a\u{1b}[2J");
    }

    #[test]
    fn a_diag_report_is_bounded_in_every_text_and_list() {
        let huge = "x".repeat(10_000);
        let mut d = DiagReport {
            hostname: huge.clone(),
            agent_version: huge.clone(),
            services: vec![
                InstalledService {
                    name: "api".into(),
                    current: None,
                    previous: None,
                    state: huge.clone(),
                    health: ServiceHealth {
                        evidence: huge.clone(),
                        ..ServiceHealth::default()
                    },
                };
                limits::SERVICES + 5
            ],
            logs: (0..limits::SERVICES + 5)
                .map(|i| ServiceLog {
                    service: "api".into(),
                    last_exit: Some(huge.clone()),
                    detail: Some(huge.clone()),
                    lines: vec!["y".repeat(2000); if i < 4 { 300 } else { 3 }],
                    ..ServiceLog::default()
                })
                .collect(),
            ..DiagReport::default()
        };
        d.bound();
        assert!(d.hostname.len() <= limits::SHORT && d.agent_version.len() <= limits::SHORT);
        assert_eq!(d.services.len(), limits::SERVICES);
        assert!(d.services.iter().all(|s| s.state.len() <= limits::SHORT));
        assert!(d
            .services
            .iter()
            .all(|s| s.health.evidence.len() <= limits::HEALTH_EVIDENCE));
        assert_eq!(d.logs.len(), limits::SERVICES);
        let lines: usize = d
            .logs
            .iter()
            .flat_map(|l| &l.lines)
            .map(|l| l.len() + 4)
            .sum();
        assert!(lines <= limits::LOG_BYTES, "{lines}");
        assert_eq!(d.logs[0].lines.len(), limits::LOG_LINES);
        assert!(d.logs[0].lines.iter().all(|l| l.len() <= limits::LOG_LINE));
        assert!(d.logs.last().unwrap().lines.is_empty(), "budget spent");
        assert!(d.logs[0].detail.as_ref().unwrap().len() <= limits::LOG_DETAIL);
    }
}
