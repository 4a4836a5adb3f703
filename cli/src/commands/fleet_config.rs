//! The fleet config: `cutover fleet apply FILE [--dry-run] [--allow-empty]`
//! checks it here (a typo is named before anything is sent), then the
//! controller checks it against the enrolled hosts; what it changed (or
//! would, with `--dry-run`) and its warnings are printed (`-o json`: the
//! report). `cutover fleet show` prints the stored one.

use std::path::Path;

use cutover_core::fleet::apply::{ApplyReport, Changes, Names};
use cutover_proto::v1;

use crate::client::ConnectArgs;
use crate::error::{Error, Result};
use crate::output::{self, escape, Format};

/// The largest fleet config sent: the controller takes messages of at
/// most 4 MiB, and the file name and fields need a little of it.
pub const MAX_FLEET_BYTES: u64 = 4 * 1024 * 1024 - 64 * 1024;

/// Names listed per line of text output; the rest are counted.
const SHOWN: usize = 10;

pub struct ApplyArgs<'a> {
    pub file: &'a Path,
    pub dry_run: bool,
    pub allow_empty: bool,
}

pub async fn apply(c: &ConnectArgs, args: ApplyArgs<'_>, out: Format) -> Result<()> {
    let file = args.file;
    let opened = std::fs::File::open(file).map_err(|e| Error::io(file, e))?;
    let bytes = cutover_core::fsutil::read_bounded(opened, file, MAX_FLEET_BYTES).map_err(|e| match e {
        cutover_core::Error::TooLarge { len, max, .. } => Error::Failed(format!(
            "{}: {len} bytes; a fleet config may have at most {max} (what the controller takes in one message): select hosts by label instead of listing them",
            file.display()
        )),
        other => other.into(),
    })?;
    let name = file.display().to_string();
    let toml = String::from_utf8(bytes)
        .map_err(|_| Error::Failed(format!("{name}: not UTF-8 text; a fleet config is TOML")))?;
    // Checked here too, so a typo is named before anything is sent.
    cutover_core::fleet::FleetConfig::parse(&name, &toml)?;
    let answer = c
        .operator()
        .await?
        .apply_fleet(v1::FleetDocument {
            file: name.clone(),
            toml,
            dry_run: args.dry_run,
            allow_empty: args.allow_empty,
            ..Default::default()
        })
        .await?
        .into_inner();
    if answer.report_json.is_empty() {
        let stored = if args.dry_run {
            " and ignored --dry-run: the config was stored"
        } else {
            ""
        };
        return Err(Error::Failed(format!(
            "the controller sent no apply report{stored}; it is older than this CLI (compare with `cutover version`) and does not check selections"
        )));
    }
    let report: ApplyReport = serde_json::from_str(&answer.report_json).map_err(|e| {
        Error::Rpc(format!(
            "malformed fleet apply report from the controller: {e}"
        ))
    })?;
    // Warnings go to stderr with either output: a person watching a
    // script run sees them too; the JSON report counts and lists them.
    for w in &report.warnings.names {
        eprintln!("warning: {}", escape(w));
    }
    let omitted = report
        .warnings
        .count
        .saturating_sub(report.warnings.names.len());
    if omitted > 0 {
        eprintln!("warning: … and {omitted} more warning(s) (`-o json` counts them)");
    }
    if out == Format::Json {
        output::json(&report);
        return Ok(());
    }
    let what = format!(
        "{} service(s), {} host(s) with labels",
        report.services, report.hosts_with_labels
    );
    if report.stored {
        println!("fleet config {} applied: {what}", escape(&report.file));
    } else {
        println!(
            "fleet config {} checked, not stored (--dry-run): {what}",
            escape(&report.file)
        );
    }
    print_changes(&report.changes, report.stored);
    Ok(())
}

fn print_changes(c: &Changes, stored: bool) {
    if c.is_empty() {
        println!("no changes since the stored fleet config");
        return;
    }
    println!(
        "{}",
        match (c.first, stored) {
            (true, true) => "changes (no fleet config was stored before):",
            (true, false) => "would change (no fleet config is stored yet):",
            (false, true) => "changes:",
            (false, false) => "would change:",
        }
    );
    line("+ service", &c.services_added);
    line("- service", &c.services_removed);
    for s in &c.services_changed {
        let mut parts = Vec::new();
        if !s.keys.is_empty() {
            parts.push(s.keys.join(", "));
        }
        if !s.hosts_added.is_empty() {
            parts.push(format!("hosts +{}", listed(&s.hosts_added)));
        }
        if !s.hosts_removed.is_empty() {
            parts.push(format!("hosts -{}", listed(&s.hosts_removed)));
        }
        println!(
            "  ~ service {}: {}",
            escape(&s.service),
            escape(&parts.join("; "))
        );
    }
    let unlisted = c
        .services_changed_count
        .saturating_sub(c.services_changed.len());
    if unlisted > 0 {
        println!("  ~ … and {unlisted} more changed service(s)");
    }
    line("+ host", &c.hosts_added);
    line("- host", &c.hosts_removed);
}

fn line(what: &str, names: &Names) {
    if !names.is_empty() {
        println!("  {what} {}", escape(&listed(names)));
    }
}

/// Up to [`SHOWN`] names, comma-separated, then how many more.
fn listed(names: &Names) -> String {
    let shown: Vec<&str> = names.names.iter().take(SHOWN).map(String::as_str).collect();
    let more = names.count.saturating_sub(shown.len());
    if more > 0 {
        format!("{} (and {more} more)", shown.join(", "))
    } else {
        shown.join(", ")
    }
}

pub async fn show(c: &ConnectArgs, out: Format) -> Result<()> {
    let doc = c
        .operator()
        .await?
        .get_fleet(v1::Empty {})
        .await?
        .into_inner();
    if out == Format::Json {
        let fleet = cutover_core::fleet::FleetConfig::parse("stored fleet config", &doc.toml)?;
        output::json(&fleet);
    } else {
        eprintln!(
            "# applied {}",
            output::when(cutover_core::views::from_ms(doc.applied_at_ms))
        );
        print!("{}", doc.toml);
    }
    Ok(())
}
