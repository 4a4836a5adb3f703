//! The CLI's commands, grouped by what they act on.

pub mod about;
pub mod channel;
pub mod data_migrate;
pub mod events;
pub mod fleet;
pub mod fleet_config;
pub mod man;
pub mod migrate;
mod plan_text;
pub mod release;
pub mod release_build;
pub mod rollback;
pub mod rollout;
pub mod token;

use std::io::IsTerminal;
use std::path::Path;

use crate::error::{Error, Result};

/// `cutover pki init`
pub fn pki_init(
    dir: &Path,
    controller_hosts: &[String],
    operator: &str,
    out: crate::output::Format,
) -> Result<()> {
    let hosts: Vec<String> = controller_hosts
        .iter()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .collect();
    if hosts.is_empty() {
        return Err(Error::Usage(
            "--controller-host needs at least one name".into(),
        ));
    }
    let written = cutover_core::pki::init(&cutover_core::pki::InitOptions {
        dir,
        controller_hosts: &hosts,
        operator_name: operator,
    })?;
    crate::output::written(&written, out);
    Ok(())
}

/// Asks `question` on the terminal; anything but yes fails with `declined`.
/// Not on a terminal it refuses, naming `--yes`.
pub fn confirm(question: &str, declined: &str) -> Result<()> {
    if !std::io::stdin().is_terminal() {
        return Err(Error::Usage(format!(
            "{question} pass --yes to confirm when not on a terminal"
        )));
    }
    eprint!("{question} [y/N] ");
    let mut answer = String::new();
    std::io::stdin()
        .read_line(&mut answer)
        .map_err(|e| Error::io("stdin", e))?;
    if matches!(answer.trim(), "y" | "Y" | "yes") {
        Ok(())
    } else {
        Err(Error::Failed(declined.into()))
    }
}
