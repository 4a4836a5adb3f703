//! Rollout commands and agent reports on the wire, and the JSON documents
//! that carry plans, rollouts and events to operators.

use cutover_core::fleet::ServiceConfig;
use cutover_core::rollout::{
    Command, Evidence, ImageTarget, InstallCommand, Report, RollbackCommand,
};
use cutover_core::views::limits;
use cutover_core::Sha256Digest;

use crate::convert::WireError;
use crate::v1;

fn digest(what: &'static str, s: &str) -> Result<Sha256Digest, WireError> {
    Sha256Digest::parse_prefixed(s).map_err(|e| WireError {
        what,
        reason: e.to_string(),
    })
}

impl From<&Command> for v1::Command {
    fn from(c: &Command) -> Self {
        let op = match c {
            Command::Install(i) => v1::command::Op::Install(v1::InstallOp {
                target: Some((&i.target).into()),
                sha256: i.sha256.to_hex(),
                size: i.size,
                config_json: serde_json::to_string(&i.config).unwrap_or_default(),
                image_id: i
                    .image
                    .as_ref()
                    .map(|m| m.id.to_prefixed())
                    .unwrap_or_default(),
                image_reference: i
                    .image
                    .as_ref()
                    .and_then(|m| m.reference.clone())
                    .unwrap_or_default(),
            }),
            Command::Rollback(r) => v1::command::Op::Rollback(v1::RollbackOp {
                from_sha256: r.from.to_hex(),
            }),
        };
        v1::Command {
            command_id: c.id().to_string(),
            service: c.service().to_string(),
            op: Some(op),
        }
    }
}

impl TryFrom<v1::Command> for Command {
    type Error = WireError;
    fn try_from(c: v1::Command) -> Result<Self, WireError> {
        let missing = |what| WireError {
            what,
            reason: "missing".into(),
        };
        if c.command_id.is_empty() || c.service.is_empty() {
            return Err(missing("command id or service"));
        }
        Ok(match c.op.ok_or_else(|| missing("command op"))? {
            v1::command::Op::Install(i) => {
                let config: ServiceConfig =
                    serde_json::from_str(&i.config_json).map_err(|e| WireError {
                        what: "service config",
                        reason: e.to_string(),
                    })?;
                Command::Install(Box::new(InstallCommand {
                    command_id: c.command_id,
                    service: c.service,
                    target: i
                        .target
                        .ok_or_else(|| missing("install target"))?
                        .try_into()?,
                    sha256: digest("artifact digest", &i.sha256)?,
                    size: i.size,
                    config,
                    image: if i.image_id.is_empty() {
                        None
                    } else {
                        Some(ImageTarget {
                            id: digest("image id", &i.image_id)?,
                            reference: Some(i.image_reference).filter(|r| !r.is_empty()),
                        })
                    },
                }))
            }
            v1::command::Op::Rollback(r) => Command::Rollback(RollbackCommand {
                command_id: c.command_id,
                service: c.service,
                from: digest("rollback digest", &r.from_sha256)?,
            }),
        })
    }
}

/// Bounded first ([`Evidence::bound`]): evidence of any size fits.
impl From<&Evidence> for v1::Evidence {
    fn from(e: &Evidence) -> Self {
        let mut e = e.clone();
        e.bound();
        let e = &e;
        v1::Evidence {
            gate: e.gate.clone(),
            detail: e.detail.clone(),
            check: e.check.clone().unwrap_or_default(),
            status_code: e.status_code.map(u32::from),
            exit_code: e.exit_code,
            output: e.output.clone(),
            elapsed_ms: e.elapsed_ms,
            probes: e.probes,
        }
    }
}

/// The longest time a report may say a step or its verdict took: 366 days,
/// far past any deadline a fleet config allows. A peer's larger figure is
/// clamped to it (see [`Evidence`]'s conversion for why not refused).
pub const MAX_ELAPSED_MS: u64 = 366 * 24 * 3600 * 1000;
/// The most health probes a report may say ran before its verdict: more
/// than 32 checks probing every 50 ms for the longest deadline (48 h) make.
pub const MAX_PROBES: u32 = 200_000_000;

/// Evidence from a peer, cut to its bounds ([`Evidence::bound`]), its
/// figures clamped to [`MAX_ELAPSED_MS`] and [`MAX_PROBES`]. Clamped, not
/// refused: the verdict the evidence explains is what the rollout needs,
/// and refusing the whole report for an implausible figure would turn a
/// healthy host's answer into "no report" and a rollback.
impl From<v1::Evidence> for Evidence {
    fn from(e: v1::Evidence) -> Self {
        let mut e = Evidence {
            gate: e.gate,
            detail: e.detail,
            check: Some(e.check).filter(|c| !c.is_empty()),
            status_code: e.status_code.and_then(|s| u16::try_from(s).ok()),
            exit_code: e.exit_code,
            output: e.output,
            elapsed_ms: e.elapsed_ms.min(MAX_ELAPSED_MS),
            probes: e.probes.min(MAX_PROBES),
        };
        e.bound();
        e
    }
}

/// The report as an agent sends it: bounded ([`Report::bound`]), and, should
/// it still encode to more than `limit` bytes, sent with its evidence
/// replaced by a short note saying so. An agent never sends a report the
/// controller would refuse for its size, so it never replays one forever.
pub fn report_to_wire(r: &Report, limit: usize) -> v1::Report {
    use prost::Message;
    let wire = v1::Report::from(r);
    // The AgentMessage around a report adds a tag and a length.
    if wire.encoded_len().saturating_add(16) <= limit {
        return wire;
    }
    let mut small = r.clone();
    let gate = small
        .evidence
        .as_ref()
        .map(|e| e.gate.clone())
        .unwrap_or_else(|| "report".into());
    small.evidence = Some(Evidence::new(
        &gate,
        format!(
            "the evidence of this report took {} bytes, more than the {limit} a message may carry; it was left out (see the agent's log)",
            wire.encoded_len()
        ),
    ));
    small.installed.state = cutover_core::views::bounded(&small.installed.state, 64).into_owned();
    v1::Report::from(&small)
}

impl From<&Report> for v1::Report {
    fn from(r: &Report) -> Self {
        v1::Report {
            command_id: r.command_id.clone(),
            service: r.service.clone(),
            ok: r.ok,
            evidence: r.evidence.as_ref().map(Into::into),
            installed: Some((&r.installed).into()),
            auto_rolled_back: r.auto_rolled_back,
            fetched_bytes: r.fetched_bytes,
            restarted: r.restarted,
            duration_ms: r.duration_ms,
        }
    }
}

impl TryFrom<v1::Report> for Report {
    type Error = WireError;
    fn try_from(r: v1::Report) -> Result<Self, WireError> {
        if r.command_id.is_empty() || r.command_id.len() > limits::COMMAND_ID {
            return Err(WireError {
                what: "report command id",
                reason: format!(
                    "{} bytes, 1 to {} are allowed",
                    r.command_id.len(),
                    limits::COMMAND_ID
                ),
            });
        }
        cutover_core::names::validate("service", &r.service).map_err(|e| WireError {
            what: "report service",
            reason: e.to_string(),
        })?;
        Ok(Report {
            command_id: r.command_id,
            service: r.service,
            ok: r.ok,
            evidence: r.evidence.map(Into::into),
            installed: r
                .installed
                .ok_or(WireError {
                    what: "report",
                    reason: "no installed service".into(),
                })?
                .try_into()?,
            auto_rolled_back: r.auto_rolled_back,
            fetched_bytes: r.fetched_bytes,
            restarted: r.restarted,
            duration_ms: r.duration_ms.min(MAX_ELAPSED_MS),
        })
    }
}

/// A domain value as a JSON document for operators.
pub fn to_json<T: serde::Serialize>(value: &T) -> v1::JsonDocument {
    v1::JsonDocument {
        json: serde_json::to_string(value).unwrap_or_default(),
    }
}

pub fn from_json<T: serde::de::DeserializeOwned>(
    what: &'static str,
    doc: v1::JsonDocument,
) -> Result<T, WireError> {
    serde_json::from_str(&doc.json).map_err(|e| WireError {
        what,
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_round_trip_and_bad_digests_are_refused() {
        let config = cutover_core::fleet::FleetConfig::parse(
            "f",
            "[services.x]\nhosts=[\"h\"]\nrunner=\"process\"\ncommand=\"bin/x\"\n",
        )
        .unwrap()
        .services
        .remove("x")
        .unwrap();
        let c = Command::Install(Box::new(InstallCommand {
            command_id: "r1-x-h".into(),
            service: "x".into(),
            target: Default::default(),
            sha256: Sha256Digest::of(b"x"),
            size: 3,
            config,
            image: None,
        }));
        let wire: v1::Command = (&c).into();
        assert_eq!(Command::try_from(wire.clone()).unwrap(), c);
        let mut bad = wire;
        if let Some(v1::command::Op::Install(i)) = &mut bad.op {
            i.sha256 = "zz".into();
        }
        assert!(Command::try_from(bad).is_err());
    }

    fn max_identity() -> cutover_core::views::ContentIdentity {
        cutover_core::views::ContentIdentity {
            release: "9".repeat(limits::VERSION),
            service_version: "9".repeat(limits::VERSION),
            tarball_sha256: Some(Sha256Digest::of(b"t")),
            image_id: Some(Sha256Digest::of(b"i")),
        }
    }

    fn max_service() -> cutover_core::views::InstalledService {
        cutover_core::views::InstalledService {
            name: "s".repeat(limits::NAME),
            current: Some(max_identity()),
            previous: Some(max_identity()),
            state: "x".repeat(1 << 20),
            health: cutover_core::views::ServiceHealth {
                state: cutover_core::views::HealthState::Unhealthy,
                since_ms: i64::MAX,
                evidence: "e".repeat(1 << 20),
                restarts: u32::MAX,
            },
        }
    }

    fn encoded(msg: v1::agent_message::Msg) -> usize {
        use prost::Message;
        v1::AgentMessage { msg: Some(msg) }.encoded_len()
    }

    #[test]
    fn the_largest_report_an_agent_can_build_fits_in_one_message() {
        let huge = "\u{1b}é".repeat(3 << 20); // 9 MiB of text per field
        let report = Report {
            command_id: "c".repeat(limits::COMMAND_ID),
            service: "s".repeat(limits::NAME),
            ok: false,
            evidence: Some(Evidence {
                gate: huge.clone(),
                detail: huge.clone(),
                check: Some(huge.clone()),
                status_code: Some(u16::MAX),
                exit_code: Some(i32::MIN),
                output: huge,
                elapsed_ms: u64::MAX,
                probes: u32::MAX,
            }),
            installed: max_service(),
            auto_rolled_back: true,
            fetched_bytes: u64::MAX,
            restarted: true,
            duration_ms: u64::MAX,
        };
        let wire = v1::Report::from(&report);
        let n = encoded(v1::agent_message::Msg::Report(wire.clone()));
        assert!(n <= 64 << 10, "a bounded report takes {n} bytes");
        assert!(n < crate::MAX_MESSAGE_BYTES);
        // And what the controller reads back is the bounded report.
        let back = Report::try_from(wire).unwrap();
        let e = back.evidence.unwrap();
        assert!(e.detail.len() <= limits::DETAIL && e.detail.ends_with("…[truncated]"));
        assert!(e.output.len() <= limits::OUTPUT);
    }

    #[test]
    fn the_largest_hello_and_diag_an_agent_can_build_fit_in_one_message() {
        let inventory = vec![max_service(); limits::SERVICES];
        let hello = v1::Hello {
            agent_version: cutover_core::VERSION.into(),
            heartbeat_interval_ms: u64::MAX,
            inventory: crate::convert::services_to_wire(&inventory),
            agent_started_at_ms: i64::MIN,
        };
        let n = encoded(v1::agent_message::Msg::Hello(hello));
        assert!(n < crate::MAX_MESSAGE_BYTES, "hello takes {n} bytes");
        let change =
            crate::convert::health_change_to_wire(&vec![max_service(); limits::SERVICES + 10]);
        assert_eq!(change.services.len(), limits::SERVICES);
        let n = encoded(v1::agent_message::Msg::Health(change));
        assert!(
            n < crate::MAX_MESSAGE_BYTES,
            "health change takes {n} bytes"
        );

        let line = "l".repeat(limits::LOG_LINE * 4);
        let diag = cutover_core::views::DiagReport {
            hostname: line.clone(),
            os: line.clone(),
            kernel: line.clone(),
            data_dir: line.clone(),
            agent_version: line.clone(),
            services: inventory.clone(),
            logs: (0..limits::SERVICES + 10)
                .map(|i| cutover_core::views::ServiceLog {
                    service: "s".repeat(limits::NAME),
                    pid: Some(u32::MAX),
                    restarts: u32::MAX,
                    last_exit: Some(line.clone()),
                    // Many short lines cost the most framing per byte.
                    lines: if i % 2 == 0 {
                        vec![String::new(); 10_000]
                    } else {
                        vec![line.clone(); 3]
                    },
                    detail: Some(line.clone()),
                })
                .collect(),
            ..Default::default()
        };
        let reply = v1::Reply {
            request_id: u64::MAX,
            body: Some(v1::reply::Body::Diag((&diag).into())),
        };
        let n = encoded(v1::agent_message::Msg::Reply(reply));
        assert!(n < crate::MAX_MESSAGE_BYTES, "diag takes {n} bytes");
    }

    #[test]
    fn a_report_that_still_does_not_fit_is_sent_with_a_note_instead_of_its_evidence() {
        let report = Report {
            command_id: "r1-api-h".into(),
            service: "api".into(),
            ok: false,
            evidence: Some(Evidence {
                output: "o".repeat(limits::OUTPUT),
                ..Evidence::new("health", "d".repeat(limits::DETAIL))
            }),
            installed: max_service(),
            auto_rolled_back: false,
            fetched_bytes: 1,
            restarted: true,
            duration_ms: 5,
        };
        // Fits: sent as it is (bounded).
        let whole = report_to_wire(&report, crate::MAX_MESSAGE_BYTES);
        assert_eq!(whole, v1::Report::from(&report));
        // Does not fit in a (small, for the test) limit: the evidence is
        // replaced by a note, everything the engine needs is kept.
        let small = report_to_wire(&report, 4096);
        use prost::Message;
        assert!(small.encoded_len() + 16 <= 4096, "{}", small.encoded_len());
        let e = small.evidence.as_ref().unwrap();
        assert_eq!(e.gate, "health");
        assert!(
            e.detail.contains("more than the 4096 a message may carry"),
            "{}",
            e.detail
        );
        assert_eq!((small.command_id.as_str(), small.ok), ("r1-api-h", false));
        assert_eq!(small.installed.unwrap().name, "s".repeat(limits::NAME));
    }

    #[test]
    fn a_report_from_a_peer_with_a_bad_id_or_service_is_refused() {
        let ok = v1::Report {
            command_id: "r1-api-h".into(),
            service: "api".into(),
            installed: Some(v1::InstalledService {
                name: "api".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        Report::try_from(ok.clone()).unwrap();
        for (bad, needle) in [
            (
                v1::Report {
                    command_id: "c".repeat(limits::COMMAND_ID + 1),
                    ..ok.clone()
                },
                "report command id",
            ),
            (
                v1::Report {
                    command_id: String::new(),
                    ..ok.clone()
                },
                "report command id",
            ),
            (
                v1::Report {
                    service: "a\u{1b}[2J".into(),
                    ..ok.clone()
                },
                "report service",
            ),
        ] {
            let e = Report::try_from(bad).unwrap_err().to_string();
            assert!(e.contains(needle), "{e}");
        }
    }

    #[test]
    fn a_reports_timings_and_probe_count_from_a_peer_are_clamped_to_their_bounds() {
        let report = |elapsed_ms: u64, probes: u32, duration_ms: u64| v1::Report {
            command_id: "r1-api-h1".into(),
            service: "api".into(),
            ok: true,
            evidence: Some(v1::Evidence {
                gate: "health".into(),
                elapsed_ms,
                probes,
                ..Default::default()
            }),
            installed: Some((&max_service()).into()),
            duration_ms,
            ..Default::default()
        };
        let back = Report::try_from(report(1 << 63, 1 << 31, u64::MAX)).unwrap();
        let e = back.evidence.unwrap();
        assert_eq!(e.elapsed_ms, MAX_ELAPSED_MS);
        assert_eq!(e.probes, MAX_PROBES);
        assert_eq!(back.duration_ms, MAX_ELAPSED_MS);
        // Within the bounds (and their edge) a report says what it says.
        let back = Report::try_from(report(12_345, 7, MAX_ELAPSED_MS)).unwrap();
        let e = back.evidence.unwrap();
        assert_eq!((e.elapsed_ms, e.probes), (12_345, 7));
        assert_eq!(back.duration_ms, MAX_ELAPSED_MS);
        assert!(i64::try_from(MAX_ELAPSED_MS).is_ok());
    }
}
