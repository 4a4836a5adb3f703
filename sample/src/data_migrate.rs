//! `cutover-sample data-migrate list|status ID|run ID [--dry-run]|verify
//! ID|pause ID|resume ID`: the protocol of `docs/data-migrations.md` on
//! PostgreSQL. Each command prints one JSON object on stdout and exits 0
//! when it could answer, a `failed` migration included; otherwise it
//! prints one line on stderr and exits 2 (usage, a setting, an unknown
//! id, a database it cannot reach) or 1 (a statement failed where no
//! migration state can record it).
//!
//! Settings, from the environment: `CUTOVER_SAMPLE_DATABASE_URL`
//! (`postgres://USER@HOST:PORT/DATABASE`, no password, no TLS),
//! `CUTOVER_SAMPLE_PASSWORD_FILE` (optional; the password, trimmed),
//! and for `run` `CUTOVER_SAMPLE_BATCH` (rows per batch, 1..=100000,
//! default 1000) and `CUTOVER_SAMPLE_BATCH_DELAY_MS` (a pause after each
//! batch, 0..=60000, default 0). `list` needs none of them.
//!
//! `status`, `verify` and `run --dry-run` only read (they create nothing);
//! `run`, `pause` and `resume` create the checkpoint table
//! ([`crate::checkpoint`]) if it is missing. The commands run on a
//! current-thread tokio runtime made for the one command.

use std::ffi::OsString;

use serde::Serialize;

use crate::backfill;
use crate::db::{Database, Pace};
use crate::error::{Error, Result};

/// A migration this binary knows.
pub struct Migration {
    pub id: &'static str,
    pub description: &'static str,
}

/// Every migration this binary knows.
pub const MIGRATIONS: &[Migration] = &[Migration {
    id: backfill::ID,
    description: backfill::DESCRIPTION,
}];

/// The longest migration id looked up (the protocol allows 64 bytes).
const MAX_ID_BYTES: usize = 64;

/// A command of the protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    List,
    Status(&'static str),
    Run { id: &'static str, dry_run: bool },
    Verify(&'static str),
    Pause(&'static str),
    Resume(&'static str),
}

const USAGE: &str = "usage: cutover-sample data-migrate list|status ID|run ID [--dry-run]|verify ID|pause ID|resume ID";

fn known_ids() -> String {
    MIGRATIONS
        .iter()
        .map(|m| m.id)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The known migration `id`, or an error naming the known ones.
fn migration(id: &str) -> Result<&'static str> {
    MIGRATIONS
        .iter()
        .find(|m| m.id == id)
        .map(|m| m.id)
        .ok_or_else(|| {
            let mut shown = id.to_string();
            if shown.len() > MAX_ID_BYTES {
                let mut cut = MAX_ID_BYTES;
                while !shown.is_char_boundary(cut) {
                    cut -= 1;
                }
                shown.truncate(cut);
                shown.push_str("...");
            }
            Error::Usage(format!(
                "no data migration {shown:?} in this release; the known ones are: {}",
                known_ids()
            ))
        })
}

/// Reads the arguments after `data-migrate`.
pub fn parse(args: &[String]) -> Result<Command> {
    let usage = |why: &str| Error::Usage(format!("{why}; {USAGE}"));
    let (verb, rest) = args
        .split_first()
        .ok_or_else(|| usage("no command given"))?;
    let flags: Vec<&str> = rest
        .iter()
        .map(String::as_str)
        .filter(|a| a.starts_with("--"))
        .collect();
    let operands: Vec<&str> = rest
        .iter()
        .map(String::as_str)
        .filter(|a| !a.starts_with("--"))
        .collect();
    if verb == "list" {
        return match (operands.is_empty(), flags.is_empty()) {
            (true, true) => Ok(Command::List),
            _ => Err(usage("list takes no arguments")),
        };
    }
    if !["status", "run", "verify", "pause", "resume"].contains(&verb.as_str()) {
        return Err(usage(&format!(
            "unknown command {:?}",
            verb.chars().take(64).collect::<String>()
        )));
    }
    let [id] = operands[..] else {
        return Err(usage(&format!("{verb} takes one migration id")));
    };
    let id = migration(id)?;
    let dry_run = match (verb.as_str(), &flags[..]) {
        (_, []) => false,
        ("run", ["--dry-run"]) => true,
        (_, [flag, ..]) => {
            return Err(usage(&format!(
                "{verb} does not take {:?}",
                flag.chars().take(64).collect::<String>()
            )))
        }
    };
    Ok(match verb.as_str() {
        "status" => Command::Status(id),
        "run" => Command::Run { id, dry_run },
        "verify" => Command::Verify(id),
        "pause" => Command::Pause(id),
        _ => Command::Resume(id),
    })
}

#[derive(Serialize)]
struct Listed {
    id: &'static str,
    description: &'static str,
}

#[derive(Serialize)]
struct List {
    migrations: Vec<Listed>,
}

/// Runs `command` against the database the environment `env` names, and
/// gives the JSON document to print.
pub async fn execute(command: Command, env: &dyn Fn(&str) -> Option<OsString>) -> Result<String> {
    if command == Command::List {
        return json(&List {
            migrations: MIGRATIONS
                .iter()
                .map(|m| Listed {
                    id: m.id,
                    description: m.description,
                })
                .collect(),
        });
    }
    let database = Database::from_env(env)?;
    let pace = match command {
        Command::Run { dry_run: false, .. } => Some(Pace::from_env(env)?),
        _ => None,
    };
    let mut client = database.connect().await?;
    // Only one migration exists: every id is `backfill_prices`.
    let key = backfill::LOCK_KEY;
    match (command, pace) {
        (Command::Status(id), _) => json(&crate::checkpoint::status(&client, id, key).await?),
        (Command::Run { dry_run: true, .. }, _) => json(&backfill::dry_run(&client).await?),
        (Command::Run { .. }, Some(pace)) => json(&backfill::run(&mut client, pace).await?),
        (Command::Verify(_), _) => json(&crate::verify::verify(&mut client).await?),
        (Command::Pause(id), _) => json(&crate::checkpoint::pause(&mut client, id, key).await?),
        (Command::Resume(id), _) => json(&crate::checkpoint::resume(&mut client, id, key).await?),
        (Command::List | Command::Run { .. }, _) => Err(Error::Usage(format!("internal: {USAGE}"))),
    }
}

fn json(value: &impl Serialize) -> Result<String> {
    serde_json::to_string(value)
        .map_err(|e| Error::Database(format!("cannot write the answer as JSON: {e}")))
}

/// `cutover-sample data-migrate ARGS`: prints the answer, gives the exit
/// status.
pub fn main(args: &[String]) -> i32 {
    let answer = parse(args).and_then(|command| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::Database(format!("cannot start the async runtime: {e}")))?;
        runtime.block_on(execute(command, &|name| std::env::var_os(name)))
    });
    match answer {
        Ok(doc) => {
            println!("{doc}");
            0
        }
        Err(e) => {
            eprintln!("cutover-sample data-migrate: {e}");
            e.exit_code()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(line: &str) -> Vec<String> {
        line.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn every_command_of_the_protocol_parses() {
        let id = backfill::ID;
        assert_eq!(parse(&args("list")).unwrap(), Command::List);
        assert_eq!(
            parse(&args("status backfill_prices")).unwrap(),
            Command::Status(id)
        );
        assert_eq!(
            parse(&args("run backfill_prices")).unwrap(),
            Command::Run { id, dry_run: false }
        );
        assert_eq!(
            parse(&args("run backfill_prices --dry-run")).unwrap(),
            Command::Run { id, dry_run: true }
        );
        assert_eq!(
            parse(&args("verify backfill_prices")).unwrap(),
            Command::Verify(id)
        );
        assert_eq!(
            parse(&args("pause backfill_prices")).unwrap(),
            Command::Pause(id)
        );
        assert_eq!(
            parse(&args("resume backfill_prices")).unwrap(),
            Command::Resume(id)
        );
    }

    #[test]
    fn usage_errors_exit_2_and_say_what_is_wrong() {
        for (line, needle) in [
            ("", "no command given"),
            ("frobnicate backfill_prices", "unknown command"),
            ("status", "takes one migration id"),
            ("status a b", "takes one migration id"),
            ("status backfill_prices --dry-run", "does not take"),
            ("run backfill_prices --force", "does not take"),
            ("list extra", "list takes no arguments"),
            ("run backfill_emails", "the known ones are: backfill_prices"),
        ] {
            let e = parse(&args(line)).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{line}");
            let text = e.to_string();
            assert!(text.contains(needle), "{line}: {text}");
            assert!(!text.contains('\n'), "{line}: {text}");
        }
    }

    #[test]
    fn list_needs_no_database() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let doc = rt.block_on(execute(Command::List, &|_| None)).unwrap();
        let v: serde_json::Value = serde_json::from_str(&doc).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"migrations": [{"id": "backfill_prices",
                "description": "copy each order's price out of orders.doc (JSONB) into order_prices"}]})
        );
    }
}
