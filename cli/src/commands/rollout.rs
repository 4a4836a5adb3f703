//! `cutover plan`, `upgrade` and `rollout list|show|watch|pause|resume|abort`
//! (`rollback` starts in rollback.rs and is followed here).

use std::io::IsTerminal;
use std::time::Duration;

use cutover_core::rollout::{
    EventView, Plan, Rollout, RolloutDetail, RolloutStatus, RolloutSummary, Started, Step,
    StepPhase,
};
use cutover_core::views::from_ms;
use cutover_proto::commands::from_json;
use cutover_proto::v1;

use super::plan_text::{print_plan, print_preview};
use crate::client::ConnectArgs;
use crate::doc::rollout::{
    DetailDoc, EventDoc, ProgressDoc, RolloutDoc, StartedDoc, SummaryDoc, WatchLine,
};
use crate::error::{Error, Result};
use crate::output::{self, Format};

pub(super) fn decode<T: serde::de::DeserializeOwned>(
    what: &'static str,
    doc: v1::JsonDocument,
) -> Result<T> {
    from_json(what, doc).map_err(|e| Error::Rpc(e.to_string()))
}

/// Which services an operator asked for: names, or `--all`.
pub fn selection(services: Vec<String>, all: bool) -> Result<Vec<String>> {
    match (services.is_empty(), all) {
        (true, false) => Err(Error::Usage(
            "name the services to move, or pass --all".into(),
        )),
        (false, true) => Err(Error::Usage("pass service names or --all, not both".into())),
        _ => Ok(services),
    }
}

pub struct PlanArgs {
    pub services: Vec<String>,
    pub version: String,
    pub allow_offline: bool,
}

impl PlanArgs {
    fn wire(&self) -> v1::PlanRequest {
        v1::PlanRequest {
            services: self.services.clone(),
            version: self.version.clone(),
            allow_offline: self.allow_offline,
        }
    }
}

pub async fn plan(c: &ConnectArgs, args: &PlanArgs, out: Format) -> Result<()> {
    let doc = c.operator().await?.plan(args.wire()).await?.into_inner();
    if out == Format::Json {
        return output::json_document("plan", &doc.json).map_err(Error::Rpc);
    }
    print_plan(&decode("plan", doc)?);
    Ok(())
}

pub struct UpgradeArgs {
    pub plan: PlanArgs,
    pub dry_run: bool,
    pub yes: bool,
    pub no_rollback: bool,
    pub wait: bool,
}

pub async fn upgrade(c: &ConnectArgs, args: UpgradeArgs, out: Format) -> Result<()> {
    if args.dry_run {
        return plan(c, &args.plan, out).await;
    }
    if !args.yes {
        let doc = c
            .operator()
            .await?
            .plan(args.plan.wire())
            .await?
            .into_inner();
        let plan: Plan = decode("plan", doc)?;
        print_preview(&plan, out);
        if plan.services.is_empty() {
            return Ok(());
        }
        confirm("start this rollout?")?;
    }
    let doc = c
        .operator()
        .await?
        .upgrade(v1::UpgradeRequest {
            plan: Some(args.plan.wire()),
            no_rollback: args.no_rollback,
        })
        .await?
        .into_inner();
    let started: Started = decode("rollout", doc)?;
    started_output(c, started, args.wait, out).await
}

pub(super) fn confirm(question: &str) -> Result<()> {
    super::confirm(question, "not started")
}

pub(super) async fn started_output(
    c: &ConnectArgs,
    started: Started,
    wait: bool,
    out: Format,
) -> Result<()> {
    // Followed in JSON, every line is one object: the first says what
    // started (and is the only one when nothing needed to move).
    if wait && out == Format::Json {
        output::json_line(&WatchLine::Started(StartedDoc::of(
            &started.plan,
            started.rollout.as_ref(),
        )));
    }
    let Some(r) = &started.rollout else {
        if out == Format::Json {
            if !wait {
                output::json(&StartedDoc::of(&started.plan, None));
            }
        } else {
            println!(
                "nothing to do: every host already runs release {}",
                output::escape(&started.plan.release)
            );
        }
        return Ok(());
    };
    if !wait {
        if out == Format::Json {
            output::json(&StartedDoc::of(&started.plan, Some(r)));
        } else {
            println!(
                "rollout {} started: {} step(s) to release {}; follow it with `cutover rollout watch {}`",
                r.id,
                r.steps.len(),
                output::escape(&r.release),
                r.id
            );
        }
        return Ok(());
    }
    if out != Format::Json {
        println!(
            "rollout {} started: {} step(s) to release {}",
            r.id,
            r.steps.len(),
            output::escape(&r.release)
        );
    }
    watch(c, r.id, out).await
}

pub async fn list(c: &ConnectArgs, limit: u32, out: Format) -> Result<()> {
    let doc = c
        .operator()
        .await?
        .list_rollouts(v1::ListRolloutsRequest { limit })
        .await?
        .into_inner();
    let rollouts: Vec<RolloutSummary> = decode("rollouts", doc)?;
    if out == Format::Json {
        output::json(&rollouts.iter().map(SummaryDoc::of).collect::<Vec<_>>());
        return Ok(());
    }
    let rows: Vec<Vec<String>> = rollouts
        .iter()
        .map(|r| {
            vec![
                r.id.to_string(),
                r.kind.as_str().to_string(),
                r.release.clone(),
                r.services.join(","),
                r.status.to_string(),
                format!("{}/{}", r.steps_done, r.steps),
                output::when(from_ms(r.created_ms)),
            ]
        })
        .collect();
    output::table(
        &[
            "ID", "KIND", "RELEASE", "SERVICES", "STATUS", "STEPS", "CREATED",
        ],
        &rows,
    );
    Ok(())
}

async fn detail(c: &ConnectArgs, id: u64) -> Result<RolloutDetail> {
    let doc = c
        .operator()
        .await?
        .get_rollout(v1::RolloutId { id })
        .await?
        .into_inner();
    decode("rollout", doc)
}

pub async fn show(c: &ConnectArgs, id: u64, out: Format) -> Result<()> {
    let d = detail(c, id).await?;
    if out == Format::Json {
        output::json(&DetailDoc::of(&d));
    } else {
        print_detail(&d);
    }
    Ok(())
}

fn secs(ms: i64) -> String {
    format!("{:.1} s", ms as f64 / 1000.0)
}

/// A peer's figures as the evidence's timings line shows them: a duration
/// past `i64::MAX` ms (from a controller that did not bound it) saturates,
/// never wraps to a negative time.
fn timings(e: &cutover_core::rollout::Evidence) -> String {
    format!(
        "verdict after {}, {} probe(s)",
        secs(i64::try_from(e.elapsed_ms).unwrap_or(i64::MAX)),
        e.probes
    )
}

fn print_detail(d: &RolloutDetail) {
    let r = &d.rollout;
    // A running rollout's time runs until now, not until its last change.
    let now = cutover_core::views::now_ms();
    let end = r.finished_ms.unwrap_or(now).max(r.created_ms);
    println!(
        "rollout {}  {} to release {}  {}{}",
        r.id,
        r.kind.as_str(),
        output::escape(&r.release),
        r.status,
        // A rollback is never rolled back: not the operator's flag.
        if r.no_rollback && r.kind != cutover_core::rollout::RolloutKind::Rollback {
            "  (--no-rollback)"
        } else {
            ""
        }
    );
    println!(
        "created {}, {} {}",
        output::when(from_ms(r.created_ms)),
        if r.finished_ms.is_some() {
            "took"
        } else {
            "running for"
        },
        secs(end.saturating_sub(r.created_ms))
    );
    let count = |p| r.count(p);
    println!(
        "steps: {} healthy, {} failed, {} rolled back, {} in flight, {} pending",
        count(StepPhase::Healthy),
        count(StepPhase::Failed) + count(StepPhase::RollbackFailed),
        count(StepPhase::RolledBack),
        count(StepPhase::Installing) + count(StepPhase::RollingBack),
        count(StepPhase::Pending)
    );
    if let Some(f) = &r.failure {
        let e = &f.evidence;
        println!(
            "\nSTOPPED at the {}: service {} on host {}",
            output::escape(&f.boundary),
            output::escape(&f.service),
            output::escape(&f.host)
        );
        println!("  {:<9} {}", "gate", output::escape(&e.gate));
        if let Some(check) = &e.check {
            println!("  {:<9} {}", "check", output::escape(check));
        }
        println!("  {:<9} {}", "evidence", output::escape(&e.detail));
        if let Some(code) = e.status_code {
            println!("  {:<9} {code}", "status");
        }
        if let Some(code) = e.exit_code {
            println!("  {:<9} {code}", "exit code");
        }
        if !e.output.is_empty() {
            println!(
                "  {:<9} {}",
                "output",
                output::escape_lines(&e.output, "\n            ")
            );
        }
        println!("  {:<9} {}", "timings", timings(e));
        println!("  {:<9} {}", "action", output::escape(&f.action));
    } else if !r.settled() {
        if let Some(gate) = waiting_on(r) {
            println!("\nwaiting on: {}", output::escape(&gate));
        }
    }
    println!();
    let rows: Vec<Vec<String>> = r.steps.iter().map(|s| step_row(s, now)).collect();
    output::table(
        &[
            "SERVICE", "HOST", "BATCH", "PHASE", "SENT", "TIME", "DETAIL",
        ],
        &rows,
    );
    let recent = &d.events[d.events.len().saturating_sub(12)..];
    if !recent.is_empty() {
        println!("\nevents:");
        for e in recent {
            print_event(e);
        }
    }
}

/// What a running rollout waits for, in one line.
fn waiting_on(r: &Rollout) -> Option<String> {
    if r.status == RolloutStatus::Paused {
        return Some("paused by an operator; `cutover rollout resume` continues".into());
    }
    let flight: Vec<String> = r
        .steps
        .iter()
        .filter(|s| matches!(s.phase, StepPhase::Installing | StepPhase::RollingBack))
        .map(|s| {
            let sent = if s.sends == 0 {
                "host offline, command not sent yet".to_string()
            } else {
                "checking".into()
            };
            format!("{} on {} ({sent})", s.service, s.host)
        })
        .collect();
    (!flight.is_empty()).then(|| flight.join("; "))
}

/// One step's row; TIME is how long a step in flight has been at its
/// command (from when it was sent to `now`), and for a failed one how long
/// its host took to the verdict.
fn step_row(s: &Step, now: i64) -> Vec<String> {
    let batch = if s.batch == 0 {
        "canary".to_string()
    } else {
        s.batch.to_string()
    };
    let detail = match &s.evidence {
        Some(e) => format!("{}: {}", e.gate, e.detail),
        None => String::new(),
    };
    let time = match (s.phase, s.sent_ms, &s.evidence) {
        (StepPhase::Installing | StepPhase::RollingBack, Some(sent), _) => {
            format!("{} so far", secs(now.saturating_sub(sent).max(0)))
        }
        (_, _, Some(e)) if e.elapsed_ms > 0 => {
            secs(i64::try_from(e.elapsed_ms).unwrap_or(i64::MAX))
        }
        _ => String::new(),
    };
    vec![
        s.service.clone(),
        s.host.clone(),
        batch,
        s.phase.to_string(),
        s.sends.to_string(),
        time,
        detail,
    ]
}

pub(super) fn print_event(e: &EventView) {
    println!(
        "  {}  {:<20} {}{}",
        output::when(from_ms(e.at_ms)),
        output::escape(&e.kind),
        e.host
            .as_deref()
            .map(|h| format!("[{}] ", output::escape(h)))
            .unwrap_or_default(),
        output::escape(&e.detail)
    );
}

/// Follows a rollout until it ends: a progress bar on a terminal, a line
/// per change otherwise, and with `-o json` one object per line (each new
/// event, and the progress when it changes, the last with `final: true`). Fails (exit 1) unless it succeeded. Ctrl-C stops
/// the following, not the rollout: it says so and how to follow or abort
/// it, and exits 130.
pub async fn watch(c: &ConnectArgs, id: u64, out: Format) -> Result<()> {
    // Listening before the first poll, so that Ctrl-C is never the
    // default action (a silent death) once the rollout is being followed.
    let mut interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .map_err(|e| Error::Failed(format!("cannot listen for Ctrl-C: {e}")))?;
    let tty = std::io::stdout().is_terminal() && out == Format::Text;
    let mut bar: Option<indicatif::ProgressBar> = None;
    let follow = async {
        let mut last = String::new();
        let mut seen_events = 0usize;
        loop {
            let d = detail(c, id).await?;
            let r = &d.rollout;
            let (done, total) = r.progress();
            if tty {
                let b = bar.get_or_insert_with(|| {
                    let b = indicatif::ProgressBar::new(total as u64);
                    if let Ok(style) = indicatif::ProgressStyle::with_template(
                        "{spinner} rollout {prefix} [{bar:30}] {pos}/{len} {msg}",
                    ) {
                        b.set_style(style.progress_chars("=> "));
                    }
                    b.set_prefix(id.to_string());
                    b
                });
                b.set_position(done as u64);
                b.set_message(format!(
                    "{} {}",
                    r.status,
                    output::escape(&waiting_on(r).unwrap_or_default())
                ));
                b.tick();
            } else if out == Format::Text {
                for e in d.events.iter().skip(seen_events) {
                    print_event(e);
                }
                seen_events = d.events.len();
                let line = format!("rollout {id}: {} {done}/{total} steps done", r.status);
                if line != last {
                    println!("{line}");
                    last = line;
                }
            } else {
                for e in d.events.iter().skip(seen_events) {
                    output::json_line(&WatchLine::Event(EventDoc::of(e)));
                }
                seen_events = d.events.len();
                let progress = ProgressDoc::of(r, waiting_on(r));
                let line = serde_json::to_string(&progress).unwrap_or_default();
                if line != last {
                    output::json_line(&WatchLine::Progress(progress));
                    last = line;
                }
            }
            if r.settled() {
                return Ok::<_, Error>(d);
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    };
    let followed = tokio::select! {
        d = follow => Some(d),
        _ = interrupt.recv() => None,
    };
    if let Some(b) = bar.take() {
        b.finish_and_clear();
    }
    let final_detail = followed.ok_or(Error::Interrupted { id })??;
    let r = &final_detail.rollout;
    if tty {
        print_detail(&final_detail);
    }
    match r.status {
        RolloutStatus::Succeeded => Ok(()),
        status => Err(Error::Failed(match &r.failure {
            Some(f) => format!(
                "rollout {id} ended {status}: {} on {} failed at the {}: {}",
                f.service, f.host, f.boundary, f.evidence.detail
            ),
            None => format!("rollout {id} ended {status}"),
        })),
    }
}

/// What `rollout pause|resume|abort` asks of a rollout.
#[derive(Debug, Clone, Copy)]
pub enum Control {
    Pause,
    Resume,
    Abort,
}

impl From<Control> for v1::RolloutAction {
    fn from(c: Control) -> Self {
        match c {
            Control::Pause => v1::RolloutAction::Pause,
            Control::Resume => v1::RolloutAction::Resume,
            Control::Abort => v1::RolloutAction::Abort,
        }
    }
}

pub async fn control(c: &ConnectArgs, id: u64, action: Control, out: Format) -> Result<()> {
    let doc = c
        .operator()
        .await?
        .control_rollout(v1::ControlRolloutRequest {
            id,
            action: v1::RolloutAction::from(action).into(),
            rollback: false,
            allow_offline: false,
        })
        .await?
        .into_inner();
    let r: Rollout = decode("rollout", doc)?;
    if out == Format::Json {
        output::json(&RolloutDoc::of(&r));
    } else {
        println!("rollout {id} is now {}", r.status);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timings_past_what_a_signed_millisecond_count_holds_saturate_instead_of_going_negative() {
        let mut e = cutover_core::rollout::Evidence::new("health", "ok");
        e.elapsed_ms = 1 << 63;
        e.probes = 1 << 31;
        let shown = timings(&e);
        assert!(!shown.contains('-'), "{shown}");
        assert_eq!(
            shown,
            format!("verdict after {}, 2147483648 probe(s)", secs(i64::MAX))
        );
        e.elapsed_ms = 1_500;
        e.probes = 3;
        assert_eq!(timings(&e), "verdict after 1.5 s, 3 probe(s)");
    }
}
