//! `cutover rollback SERVICE` (each host to its own last known-good
//! release, previewed as every host's `from -> to` before it starts) and
//! `cutover rollout abort ID --rollback`.

use cutover_core::rollout::{Rollout, Started};
use cutover_proto::v1;

use super::plan_text::{print_plan, print_preview};
use super::rollout::{confirm, decode, started_output};
use crate::client::ConnectArgs;
use crate::doc::rollout::{RolloutDoc, StartedDoc};
use crate::error::Result;
use crate::output::{self, Format};

/// `cutover rollback`'s arguments, as the command line gives them.
#[derive(clap::Args)]
pub struct RollbackArgs {
    /// The service to take back.
    pub service: String,
    /// Every host to this release instead (a version imported before).
    #[arg(long)]
    pub to: Option<String>,
    /// Plan even with hosts offline; their steps wait for them.
    #[arg(long)]
    pub allow_offline: bool,
    /// Show every host's `from -> to` and start nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// With --to: install VERSION even on hosts where a failed or
    /// rolled-back step tried it (refused otherwise).
    #[arg(long, requires = "to")]
    pub force: bool,
    /// Start without asking.
    #[arg(long, short)]
    pub yes: bool,
    /// Follow the rollback until it ends (exit 1 unless it succeeds).
    #[arg(long)]
    pub wait: bool,
}

pub async fn rollback(c: &ConnectArgs, args: RollbackArgs, out: Format) -> Result<()> {
    let request = |dry_run, expect_plan| v1::RollbackRequest {
        service: args.service.clone(),
        to_version: args.to.clone().unwrap_or_default(),
        allow_offline: args.allow_offline,
        dry_run,
        expect_plan,
        force: args.force,
    };
    // With --yes nothing was previewed, so there is nothing to hold to.
    let mut confirmed = String::new();
    if args.dry_run || !args.yes {
        let doc = c
            .operator()
            .await?
            .rollback(request(true, String::new()))
            .await?
            .into_inner();
        let preview: Started = decode("plan", doc)?;
        if args.dry_run {
            if out == Format::Json {
                output::json(&preview.plan);
            } else {
                print_plan(&preview.plan);
            }
            return Ok(());
        }
        print_preview(&preview.plan, out);
        if preview.plan.services.is_empty() {
            return Ok(());
        }
        confirm(&format!(
            "roll {} back on these hosts at once?",
            output::escape(&args.service)
        ))?;
        confirmed = preview.plan.fingerprint();
    }
    let doc = c
        .operator()
        .await?
        .rollback(request(false, confirmed))
        .await?
        .into_inner();
    let started: Started = decode("rollout", doc)?;
    started_output(c, started, args.wait, out).await
}

/// `rollout abort ID --rollback -o json`: the aborted rollout and the
/// rollback started for it.
#[derive(serde::Serialize)]
struct AbortedDoc<'a> {
    aborted: RolloutDoc<'a>,
    rollback: StartedDoc<'a>,
}

/// `cutover rollout abort ID --rollback`.
pub async fn abort_and_roll_back(
    c: &ConnectArgs,
    id: u64,
    allow_offline: bool,
    yes: bool,
    out: Format,
) -> Result<()> {
    if !yes {
        confirm(&format!(
            "abort rollout {id} and take every host it moved back to what it ran before?"
        ))?;
    }
    let doc = c
        .operator()
        .await?
        .control_rollout(v1::ControlRolloutRequest {
            id,
            action: v1::RolloutAction::Abort.into(),
            rollback: true,
            allow_offline,
        })
        .await?
        .into_inner();
    #[derive(serde::Deserialize)]
    struct Answer {
        aborted: Rollout,
        rollback: Started,
    }
    let answer: Answer = decode("rollout", doc)?;
    if out == Format::Json {
        output::json(&AbortedDoc {
            aborted: RolloutDoc::of(&answer.aborted),
            rollback: StartedDoc::of(&answer.rollback.plan, answer.rollback.rollout.as_ref()),
        });
        return Ok(());
    }
    println!("rollout {id} is now {}", answer.aborted.status);
    match &answer.rollback.rollout {
        Some(r) => {
            print_plan(&answer.rollback.plan);
            println!(
                "rollback {} started: {} host(s) going back; follow it with `cutover rollout watch {}`",
                r.id,
                r.steps.len(),
                r.id
            );
        }
        None => println!("no host had moved; nothing to roll back"),
    }
    Ok(())
}
