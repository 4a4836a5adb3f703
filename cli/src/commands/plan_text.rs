//! A plan as text: services by level, each batch's hosts in runs that share
//! where they move from (and, for a manual rollback, where each goes), the
//! the release's migrations by database and phase, the services carried,
//! the hosts left as they are and the offline ones.

use std::io::Write;

use cutover_core::rollout::{HostMove, Plan};
use cutover_core::views::ContentIdentity;

use crate::output;

fn ident(c: Option<&ContentIdentity>) -> String {
    match c {
        Some(c) => format!(
            "{} ({})",
            output::escape(&c.service_version),
            output::escape(&c.release)
        ),
        None => "nothing".into(),
    }
}

/// `from X`, or `X -> Y` for a host with its own target.
fn movement(m: &HostMove) -> String {
    match &m.to {
        Some(to) => format!(
            "{} -> {}",
            ident(m.from.as_deref()),
            ident(Some(&to.identity))
        ),
        None => format!("from {}", ident(m.from.as_deref())),
    }
}

pub(super) fn print_plan(plan: &Plan) {
    output::to_stdout(|out| write_plan(out, plan));
}

/// The plan a confirmation asks about. With `-o json` it goes to stderr:
/// the question is for a person, and stdout holds only the document.
pub(super) fn print_preview(plan: &Plan, out: output::Format) {
    match out {
        output::Format::Text => print_plan(plan),
        output::Format::Json => {
            let _ = write_plan(&mut std::io::stderr().lock(), plan);
        }
    }
}

/// Each run of hosts that move from the same identity names it once: a
/// plan at fleet size is half a million moves.
fn write_plan(out: &mut dyn Write, plan: &Plan) -> std::io::Result<()> {
    writeln!(out, "release {}", output::escape(&plan.release))?;
    if plan.services.is_empty() {
        writeln!(
            out,
            "nothing to do: every host already runs this release's services"
        )?;
    }
    for s in &plan.services {
        if s.batches.iter().flatten().any(|m| m.to.is_some()) {
            // A manual rollback: each host to its own release.
            writeln!(
                out,
                "\nlevel {}  {}  -> each host's own release, below",
                s.level,
                output::escape(&s.service)
            )?;
        } else {
            writeln!(
                out,
                "\nlevel {}  {}  -> {} ({}, artifact {} {})",
                s.level,
                output::escape(&s.service),
                output::escape(&s.target.service_version),
                output::escape(&s.target.release),
                output::short(&s.sha256),
                output::bytes(s.size)
            )?;
        }
        for (i, batch) in s.batches.iter().enumerate() {
            // A manual rollback moves every host at once, each to its own.
            let label = if batch.iter().any(|m| m.to.is_some()) {
                "all".to_string()
            } else if i == 0 && !s.swap_back {
                "canary".to_string()
            } else {
                format!("batch {i}")
            };
            write!(out, "  {label:<9} ")?;
            for (j, m) in batch.iter().enumerate() {
                out.write_all(output::escape(&m.host).as_bytes())?;
                match batch.get(j + 1) {
                    Some(next) if next.from == m.from && next.to == m.to => out.write_all(b", ")?,
                    Some(_) => write!(out, " ({}); ", movement(m))?,
                    None => write!(out, " ({})", movement(m))?,
                }
            }
            writeln!(out)?;
        }
        if !s.unchanged.is_empty() {
            writeln!(
                out,
                "  {:<9} {} (already at the target)",
                "unchanged",
                output::escape(&s.unchanged.join(", "))
            )?;
        }
    }
    write_migrations(out, plan)?;
    if !plan.carried.is_empty() {
        writeln!(out, "\ncarried (will not move):")?;
        for c in &plan.carried {
            writeln!(
                out,
                "  {} {}: {}",
                output::escape(&c.service),
                output::escape(&c.service_version),
                output::escape(&c.reason)
            )?;
        }
    }
    if !plan.skipped.is_empty() {
        writeln!(out, "\nleft as they are:")?;
        for h in &plan.skipped {
            writeln!(
                out,
                "  {} {}: {}",
                output::escape(&h.host),
                output::escape(&h.service),
                output::escape(&h.reason)
            )?;
        }
    }
    if !plan.offline.is_empty() {
        writeln!(
            out,
            "\noffline hosts allowed: {} (their steps wait until the step deadline)",
            output::escape(&plan.offline.join(", "))
        )?;
    }
    Ok(())
}

/// The most pending migrations of one phase a plan names in text (JSON has
/// them all).
const PENDING_SHOWN: usize = 5;

/// Per database the release's migrations by phase: how many are applied,
/// and the pending ones by name (expand is applied before an upgrade is
/// planned; postdeploy and contract follow the rollout).
fn write_migrations(out: &mut dyn Write, plan: &Plan) -> std::io::Result<()> {
    for db in &plan.migrations {
        writeln!(
            out,
            "\ndatabase {} migrations:",
            output::escape(&db.database)
        )?;
        for p in &db.phases {
            let mut parts = Vec::new();
            if !p.applied.is_empty() {
                parts.push(format!("{} applied", p.applied.len()));
            }
            if !p.pending.is_empty() {
                let mut names: Vec<String> = p
                    .pending
                    .iter()
                    .take(PENDING_SHOWN)
                    .map(|k| output::escape(k).into_owned())
                    .collect();
                if p.pending.len() > PENDING_SHOWN {
                    names.push(format!("and {} more", p.pending.len() - PENDING_SHOWN));
                }
                parts.push(format!("{} pending: {}", p.pending.len(), names.join(", ")));
            }
            writeln!(
                out,
                "  {:<11} {}",
                output::escape(&p.phase),
                parts.join("; ")
            )?;
        }
        for d in plan
            .data_migrations
            .iter()
            .filter(|d| d.database == db.database)
        {
            write_data_migration(out, d)?;
        }
    }
    // Those of databases the plan shows no ledger of.
    for d in plan
        .data_migrations
        .iter()
        .filter(|d| !plan.migrations.iter().any(|m| m.database == d.database))
    {
        writeln!(
            out,
            "
database {}:",
            output::escape(&d.database)
        )?;
        write_data_migration(out, d)?;
    }
    Ok(())
}

/// `  data        orders.backfill_prices succeeded, verified (before contract of 2.0.0)`
fn write_data_migration(
    out: &mut dyn Write,
    d: &cutover_core::data_migration::Required,
) -> std::io::Result<()> {
    let state = d.state.map_or("never run", |s| s.as_str());
    writeln!(
        out,
        "  {:<11} {} {}{} (before {})",
        "data",
        output::escape(&d.key),
        state,
        if d.ready {
            ", verified"
        } else {
            ", not verified"
        },
        output::escape(&d.before)
    )
}
