//! `cutover fleet apply`: the fleet config is parsed, checked against the
//! enrolled hosts (a service that selects none is refused unless allowed;
//! hosts never enrolled and labels on no host are warnings), compared with
//! the stored config, and stored unless it is a dry run. The checks and
//! the comparison are pure ([`cutover_core::fleet::apply`]).

use cutover_core::fleet::apply::{self, ApplyReport, Enrolled};
use cutover_core::fleet::FleetConfig;

use crate::error::{Error, Result};
use crate::Controller;

/// What the operator asked to apply.
pub struct ApplyAsk {
    /// Names the file in messages.
    pub file: String,
    pub toml: String,
    pub dry_run: bool,
    pub allow_empty: bool,
}

pub async fn apply_fleet(c: &Controller, ask: ApplyAsk) -> Result<ApplyReport> {
    let ApplyAsk {
        file,
        toml,
        dry_run,
        allow_empty,
    } = ask;
    let fleet = FleetConfig::parse(&file, &toml)?;
    // One store task reads the hosts and the stored config and writes the
    // new one, so the report compares with what this apply replaces.
    c.store
        .run(move |s| {
            let mut enrolled = Enrolled::default();
            for h in s.hosts()? {
                if h.revoked {
                    enrolled.revoked.insert(h.name);
                } else {
                    enrolled.active.insert(h.name);
                }
            }
            let findings = apply::check(&fleet, &enrolled);
            if !allow_empty {
                if let Some(refusal) = findings.refusal() {
                    return Err(Error::Invalid(format!("{file}: {refusal}")));
                }
            }
            let mut warnings = findings.allowed();
            // A stored config this controller cannot read is reported, and
            // the changes are shown against nothing.
            let previous = match s.fleet()? {
                None => None,
                Some((text, _)) => match FleetConfig::parse("the stored fleet config", &text) {
                    Ok(f) => Some(f),
                    Err(e) => {
                        warnings.insert(
                            0,
                            format!("{e}; it is replaced, and every service is shown as added"),
                        );
                        Some(FleetConfig::default())
                    }
                },
            };
            let changes = apply::changes(previous.as_ref(), &fleet);
            let report = ApplyReport {
                file: file.clone(),
                dry_run,
                stored: !dry_run,
                services: fleet.services.len(),
                hosts_with_labels: fleet.hosts.len(),
                warnings: apply::bounded_warnings(&warnings),
                changes,
            };
            if !dry_run {
                s.apply_fleet(&toml, &summary(&report))?;
            }
            Ok(report)
        })
        .await
}

/// The event log's line for an apply.
fn summary(r: &ApplyReport) -> String {
    let c = &r.changes;
    format!(
        "{}: {} service(s), {} host(s) with labels; services +{} -{} ~{}, hosts +{} -{}; {} warning(s)",
        r.file,
        r.services,
        r.hosts_with_labels,
        c.services_added.count,
        c.services_removed.count,
        c.services_changed_count,
        c.hosts_added.count,
        c.hosts_removed.count,
        r.warnings.count
    )
}
