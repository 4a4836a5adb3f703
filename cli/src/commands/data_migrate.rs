//! `cutover data-migrate`: the data migrations service binaries run
//! (docs/data-migrations.md), listed with their last known state, and run,
//! paused, resumed and verified through the agent of a host running the
//! service; `--wait` follows a run to its end.

use std::io::IsTerminal;
use std::time::Duration;

use cutover_core::data_migration::{Entry, State};
use cutover_proto::v1;

use super::rollout::decode;
use crate::client::ConnectArgs;
use crate::error::{Error, Result};
use crate::output::{self, escape, Format};

/// How often `--wait` looks.
const POLL: Duration = Duration::from_secs(1);
/// How long `--wait` sits through `unknown` (a host reconnecting) before
/// it gives up.
const UNKNOWN_FOR: Duration = Duration::from_secs(60);

#[derive(clap::Subcommand)]
pub enum DataMigrateCommand {
    /// Every data migration the imported releases declare, with its last
    /// known state, progress, host and time, and what waits for it.
    List {
        /// Only those declared by releases up to this one (a version or a channel).
        #[arg(long)]
        to_version: Option<String>,
    },
    /// Start (or, when it is running, follow) SERVICE.ID on a host running
    /// a release that declares it.
    Run {
        /// SERVICE.ID, as `list` shows it.
        #[arg(value_name = "SERVICE.ID")]
        migration: String,
        /// Say how many rows a run would move now; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// The host to run it on (default: the one that ran it last, or any
        /// online host running it).
        #[arg(long)]
        host: Option<String>,
        /// Follow it until it succeeds, fails or pauses (exit 1 unless it
        /// succeeds). Ctrl-C stops the following, not the run.
        #[arg(long)]
        wait: bool,
    },
    /// The state of SERVICE.ID, asked of its host (or of every one, as stored).
    Status {
        /// SERVICE.ID (default: every one, as stored, without asking hosts).
        #[arg(value_name = "SERVICE.ID")]
        migration: Option<String>,
    },
    /// Check the moved data: row counts and totals, each expected against
    /// found (exit 1 unless every check passes).
    Verify {
        /// SERVICE.ID, as `list` shows it.
        #[arg(value_name = "SERVICE.ID")]
        migration: String,
        /// The host to verify on (default: the one that ran it last, or
        /// any online host running it).
        #[arg(long)]
        host: Option<String>,
    },
    /// Ask a running SERVICE.ID to stop after its current batch.
    Pause {
        /// SERVICE.ID, as `list` shows it.
        #[arg(value_name = "SERVICE.ID")]
        migration: String,
    },
    /// Let a paused SERVICE.ID go on from its checkpoint.
    Resume {
        /// SERVICE.ID, as `list` shows it.
        #[arg(value_name = "SERVICE.ID")]
        migration: String,
        /// Follow it until it succeeds, fails or pauses (exit 1 unless it
        /// succeeds).
        #[arg(long)]
        wait: bool,
    },
}

pub async fn data_migrate(c: &ConnectArgs, command: DataMigrateCommand, out: Format) -> Result<()> {
    use v1::DataMigrateAction as A;
    match command {
        DataMigrateCommand::List { to_version } => {
            let all = list(c, to_version.unwrap_or_default(), String::new()).await?;
            print_list(&all, out);
            Ok(())
        }
        DataMigrateCommand::Status { migration: None } => {
            print_list(&list(c, String::new(), String::new()).await?, out);
            Ok(())
        }
        DataMigrateCommand::Status {
            migration: Some(key),
        } => {
            let e = list(c, String::new(), key.clone())
                .await?
                .pop()
                .ok_or_else(|| Error::Rpc(format!("the controller sent nothing about {key}")))?;
            print_one(&e, out);
            Ok(())
        }
        DataMigrateCommand::Run {
            migration: key,
            dry_run,
            host,
            wait,
        } => {
            let e = act(c, &key, A::Run, dry_run, host.unwrap_or_default()).await?;
            if dry_run {
                print_dry(&e, out);
                return Ok(());
            }
            finish(c, e, wait, out).await
        }
        DataMigrateCommand::Verify {
            migration: key,
            host,
        } => {
            let e = act(c, &key, A::Verify, false, host.unwrap_or_default()).await?;
            print_verify(&e, out);
            match e.record.as_ref().and_then(|r| r.verify.as_ref()) {
                Some(v) if v.ok => Ok(()),
                Some(v) => Err(Error::Failed(match &v.reason {
                    Some(why) => format!("verify of {key} gave no verdict: {why}"),
                    None => format!("verify of {key} failed: {}", v.failures().join("; ")),
                })),
                None => Err(Error::Rpc(format!(
                    "the controller sent no verify of {key}"
                ))),
            }
        }
        DataMigrateCommand::Pause { migration: key } => {
            let e = act(c, &key, A::Pause, false, String::new()).await?;
            print_one(&e, out);
            Ok(())
        }
        DataMigrateCommand::Resume {
            migration: key,
            wait,
        } => {
            let e = act(c, &key, A::Resume, false, String::new()).await?;
            finish(c, e, wait, out).await
        }
    }
}

pub(crate) async fn list(c: &ConnectArgs, to_version: String, key: String) -> Result<Vec<Entry>> {
    let doc = c
        .operator()
        .await?
        .data_migrations(v1::DataMigrationsRequest { to_version, key })
        .await?
        .into_inner();
    decode("data migrations", doc)
}

async fn act(
    c: &ConnectArgs,
    key: &str,
    action: v1::DataMigrateAction,
    dry_run: bool,
    host: String,
) -> Result<Entry> {
    let doc = c
        .operator()
        .await?
        .data_migrate(v1::OperatorDataMigrateRequest {
            key: key.to_string(),
            action: action as i32,
            dry_run,
            host,
        })
        .await?
        .into_inner();
    decode("data migration", doc)
}

fn state(e: &Entry) -> Option<State> {
    e.record.as_ref().map(|r| r.status.state)
}

/// After run or resume: the answer, or with `--wait` the run followed to
/// its end.
async fn finish(c: &ConnectArgs, e: Entry, wait: bool, out: Format) -> Result<()> {
    if !wait {
        print_one(&e, out);
        return unknown_is_an_error(&e);
    }
    let mut interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .map_err(|e| Error::Failed(format!("cannot listen for Ctrl-C: {e}")))?;
    let key = format!("{}.{}", e.service, e.id);
    tokio::select! {
        r = follow(c, e, out) => r,
        _ = interrupt.recv() => Err(Error::Failed(format!(
            "interrupted: data migration {key} goes on running on its host; follow it again with `cutover data-migrate status {key}` or pause it with `cutover data-migrate pause {key}`"
        ))),
    }
}

fn unknown_is_an_error(e: &Entry) -> Result<()> {
    match e.record.as_ref() {
        Some(r) if r.status.state == State::Unknown => Err(Error::Failed(format!(
            "data migration {}.{}: state unknown: {}",
            e.service,
            e.id,
            r.status.reason.as_deref().unwrap_or("no reason given")
        ))),
        _ => Ok(()),
    }
}

/// Polls the stored state until it ends: a bar on a terminal, a line per
/// change otherwise, one JSON object per change with `-o json`.
async fn follow(c: &ConnectArgs, mut e: Entry, out: Format) -> Result<()> {
    let key = format!("{}.{}", e.service, e.id);
    let bar = (std::io::stderr().is_terminal() && out == Format::Text).then(|| {
        let b = indicatif::ProgressBar::new(0);
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{spinner} {prefix} [{bar:30}] {pos}/{len} rows {msg}",
        ) {
            b.set_style(style.progress_chars("=> "));
        }
        b.set_prefix(key.clone());
        b
    });
    let mut last = String::new();
    let mut unknown_since: Option<std::time::Instant> = None;
    loop {
        if let Some(r) = &e.record {
            let s = &r.status;
            match &bar {
                Some(b) => {
                    b.set_length(s.total.unwrap_or(s.done).max(s.done));
                    b.set_position(s.done);
                    b.set_message(format!(
                        "{} {}",
                        s.state,
                        s.rate.map(|r| format!("{r:.0} rows/s")).unwrap_or_default()
                    ));
                }
                None if out == Format::Json => {
                    let line = serde_json::to_string(&e).unwrap_or_default();
                    if line != last {
                        output::json_line(&e);
                        last = line;
                    }
                }
                None => {
                    let line = format!("{key}: {} {}", s.state, s.progress());
                    if line != last {
                        println!("{}", escape(&line));
                        last = line;
                    }
                }
            }
        }
        match state(&e) {
            Some(State::Succeeded) => {
                if let Some(b) = &bar {
                    b.finish_and_clear();
                }
                if out == Format::Text {
                    print_one(&e, out);
                }
                return Ok(());
            }
            Some(State::Failed) | Some(State::Paused) => {
                if let Some(b) = &bar {
                    b.finish_and_clear();
                }
                if out == Format::Text {
                    print_one(&e, out);
                }
                let s = &e
                    .record
                    .as_ref()
                    .map(|r| r.status.clone())
                    .unwrap_or_else(|| cutover_core::data_migration::Status::unknown(""));
                return Err(Error::Failed(format!(
                    "data migration {key} is {}{}",
                    s.state,
                    s.error
                        .as_deref()
                        .map(|x| format!(": {x}"))
                        .unwrap_or_else(|| if s.state == State::Paused {
                            format!(
                                " ({}); go on with `cutover data-migrate resume {key} --wait`",
                                s.progress()
                            )
                        } else {
                            String::new()
                        })
                )));
            }
            Some(State::Unknown) => {
                let since = *unknown_since.get_or_insert_with(std::time::Instant::now);
                if since.elapsed() >= UNKNOWN_FOR {
                    if let Some(b) = &bar {
                        b.finish_and_clear();
                    }
                    return unknown_is_an_error(&e);
                }
            }
            _ => unknown_since = None,
        }
        tokio::time::sleep(POLL).await;
        e = list(c, String::new(), String::new())
            .await?
            .into_iter()
            .find(|x| x.service == e.service && x.id == e.id)
            .ok_or_else(|| Error::Rpc(format!("the controller no longer lists {key}")))?;
    }
}

fn when(t: Option<time::OffsetDateTime>) -> String {
    output::when(t)
}

fn print_list(all: &[Entry], out: Format) {
    if out == Format::Json {
        output::json(&all);
        return;
    }
    if all.is_empty() {
        println!("no imported release declares a data migration");
        return;
    }
    let rows: Vec<Vec<String>> = all
        .iter()
        .map(|e| {
            let r = e.record.as_ref();
            vec![
                format!("{}.{}", e.service, e.id),
                e.database.clone(),
                r.map_or("never run".into(), |r| r.status.state.to_string()),
                r.map_or(String::new(), |r| r.status.progress()),
                r.and_then(|r| r.host.clone()).unwrap_or_default(),
                when(r.map(|r| r.updated_at)),
                if e.ready { "yes".into() } else { "no".into() },
                waits(e),
            ]
        })
        .collect();
    output::table(
        &[
            "MIGRATION",
            "DATABASE",
            "STATE",
            "PROGRESS",
            "HOST",
            "UPDATED",
            "VERIFIED",
            "BEFORE",
        ],
        &rows,
    );
}

fn waits(e: &Entry) -> String {
    let mut w: Vec<String> = e
        .required_before_contract_of
        .iter()
        .map(|v| format!("contract of {v}"))
        .collect();
    if let Some(v) = &e.required_before_upgrade_to {
        w.push(format!("upgrade to {v}"));
    }
    w.join(", ")
}

fn print_one(e: &Entry, out: Format) {
    if out == Format::Json {
        output::json(e);
        return;
    }
    let key = format!("{}.{}", e.service, e.id);
    match &e.record {
        None => println!("{}: never run", escape(&key)),
        Some(r) => {
            let s = &r.status;
            println!(
                "{}: {} {} on {} (updated {})",
                escape(&key),
                s.state,
                s.progress(),
                escape(r.host.as_deref().unwrap_or("?")),
                when(Some(r.updated_at))
            );
            for (label, text) in [("error", &s.error), ("reason", &s.reason)] {
                if let Some(t) = text {
                    println!("  {label}: {}", escape(t));
                }
            }
        }
    }
    if let Some(why) = &e.not_ready {
        println!("  not ready: {}", escape(why));
    }
}

fn print_dry(e: &Entry, out: Format) {
    if out == Format::Json {
        output::json(e);
        return;
    }
    let key = format!("{}.{}", e.service, e.id);
    match e.record.as_ref().map(|r| &r.status) {
        Some(s) if s.would_move.is_some() => println!(
            "{}: a run now would move {} rows (dry run on {}; nothing changed)",
            escape(&key),
            s.would_move.unwrap_or(0),
            escape(
                e.record
                    .as_ref()
                    .and_then(|r| r.host.as_deref())
                    .unwrap_or("?")
            )
        ),
        _ => print_one(e, out),
    }
}

fn print_verify(e: &Entry, out: Format) {
    if out == Format::Json {
        output::json(e);
        return;
    }
    let Some(v) = e.record.as_ref().and_then(|r| r.verify.as_ref()) else {
        return print_one(e, out);
    };
    let rows: Vec<Vec<String>> = v
        .checks
        .iter()
        .map(|c| {
            vec![
                c.name.clone(),
                c.expected.clone(),
                c.actual.clone(),
                if c.ok { "ok" } else { "FAILED" }.into(),
            ]
        })
        .collect();
    if !rows.is_empty() {
        output::table(&["CHECK", "EXPECTED", "FOUND", ""], &rows);
    }
    println!(
        "{}.{}: verify {} (state {})",
        escape(&e.service),
        escape(&e.id),
        if v.ok { "passed" } else { "failed" },
        v.state
    );
}
