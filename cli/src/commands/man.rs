//! `cutover man --out DIR`: one roff man page per command (`cutover.1`,
//! `cutover-release.1`, `cutover-release-build.1`, ...), made from the
//! clap definitions, so the pages say what `--help` says.

use std::path::Path;

use clap::CommandFactory;

use crate::error::{Error, Result};

/// Writes the pages into `dir` (made if missing) and prints each path.
pub fn man(dir: &Path, out: crate::output::Format) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let mut cmd = crate::Cli::command().disable_help_subcommand(true);
    // Sets every subcommand's display name (`cutover-release-build`).
    cmd.build();
    crate::output::written(&write_pages(&cmd, dir)?, out);
    Ok(())
}

fn write_pages(cmd: &clap::Command, dir: &Path) -> Result<Vec<std::path::PathBuf>> {
    let mut written = Vec::new();
    let page = clap_mangen::Man::new(cmd.clone());
    let path = dir.join(page.get_filename());
    let mut roff = Vec::new();
    page.render(&mut roff).map_err(|e| Error::io(&path, e))?;
    std::fs::write(&path, roff).map_err(|e| Error::io(&path, e))?;
    written.push(path);
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        written.extend(write_pages(sub, dir)?);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every argument of every command, by `cutover VERB ... --flag`, that
    /// has no description (the man pages and `--help` would show none).
    fn undescribed(cmd: &clap::Command, path: &str, out: &mut Vec<String>) {
        for a in cmd.get_arguments() {
            if a.get_help().is_none() && a.get_long_help().is_none() {
                out.push(format!("{path} {}", a.get_id()));
            }
        }
        for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
            undescribed(sub, &format!("{path} {}", sub.get_name()), out);
        }
    }

    #[test]
    fn every_command_and_argument_has_a_description() {
        let mut cmd = crate::Cli::command();
        cmd.build();
        let mut missing = Vec::new();
        undescribed(&cmd, "cutover", &mut missing);
        fn commands(cmd: &clap::Command, path: &str, out: &mut Vec<String>) {
            for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
                let path = format!("{path} {}", sub.get_name());
                if sub.get_about().is_none() {
                    out.push(path.clone());
                }
                commands(sub, &path, out);
            }
        }
        commands(&cmd, "cutover", &mut missing);
        assert!(missing.is_empty(), "no description: {missing:#?}");
    }

    #[test]
    fn a_page_is_written_for_every_command() {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = crate::Cli::command().disable_help_subcommand(true);
        cmd.build();
        let written = write_pages(&cmd, dir.path()).unwrap();
        for name in ["cutover.1", "cutover-upgrade.1", "cutover-token-list.1"] {
            assert!(written.iter().any(|p| p.ends_with(name)), "{name}");
        }
    }
}
