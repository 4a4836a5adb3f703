//! `cutover version` (the CLI's and the controller's) and `cutover
//! completions SHELL`.

use clap::CommandFactory;
use serde::Serialize;

use crate::client::ConnectArgs;
use crate::error::{Error, Result};
use crate::output::{self, Format};

#[derive(Serialize)]
struct Versions {
    cli: &'static str,
    /// The controller's version, or null when it could not be asked.
    controller: Option<String>,
    /// Why the controller's version is missing.
    #[serde(skip_serializing_if = "Option::is_none")]
    controller_error: Option<String>,
}

/// Prints the CLI's version and the controller's. The command exits 0
/// even when the controller cannot be asked: it is what an operator runs
/// when something is wrong, and the CLI's own version is the answer it
/// must always give; the controller's line says why it is missing.
pub async fn version(c: &ConnectArgs, out: Format) -> Result<()> {
    let controller = controller_version(c)
        .await
        .map_err(|e| e.at_controller(&c.controller).to_string());
    let v = Versions {
        cli: cutover_core::VERSION,
        controller: controller.as_ref().ok().cloned(),
        controller_error: controller.as_ref().err().cloned(),
    };
    if out == Format::Json {
        output::json(&v);
        return Ok(());
    }
    println!("cutover {}", v.cli);
    match controller {
        Ok(version) => println!("controller {}", output::escape(&version)),
        Err(why) => println!("controller: unreachable ({})", output::escape(&why)),
    }
    Ok(())
}

async fn controller_version(c: &ConnectArgs) -> Result<String> {
    match c
        .operator()
        .await?
        .version(cutover_proto::v1::Empty {})
        .await
    {
        Ok(r) => Ok(r.into_inner().version),
        Err(s) if s.code() == tonic::Code::Unimplemented => Err(Error::Rpc(
            "the controller does not report its version (it is older than this CLI)".into(),
        )),
        Err(s) => Err(s.into()),
    }
}

/// Prints the completion script for `shell`: `cutover completions bash >
/// /etc/bash_completion.d/cutover`, `cutover completions zsh >
/// ~/.zfunc/_cutover`, `cutover completions fish >
/// ~/.config/fish/completions/cutover.fish`.
pub fn completions(shell: clap_complete::Shell) {
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut crate::Cli::command(), "cutover", &mut script);
    output::to_stdout(|out| out.write_all(&script));
}
