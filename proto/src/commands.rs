//! Rollout commands and agent reports on the wire, and the JSON documents
//! that carry plans, rollouts and events to operators.

use cutover_core::fleet::ServiceConfig;
use cutover_core::rollout::{
    Command, Evidence, ImageTarget, InstallCommand, Report, RollbackCommand,
};
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

impl From<&Evidence> for v1::Evidence {
    fn from(e: &Evidence) -> Self {
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

impl From<v1::Evidence> for Evidence {
    fn from(e: v1::Evidence) -> Self {
        Evidence {
            gate: e.gate,
            detail: e.detail,
            check: Some(e.check).filter(|c| !c.is_empty()),
            status_code: e.status_code.and_then(|s| u16::try_from(s).ok()),
            exit_code: e.exit_code,
            output: e.output,
            elapsed_ms: e.elapsed_ms,
            probes: e.probes,
        }
    }
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
            duration_ms: r.duration_ms,
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
}
