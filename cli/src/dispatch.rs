//! From a parsed command line to the command that runs it: one arm per
//! verb, the arguments handed on as each command takes them.

use crate::error::{Error, Result};
use crate::output::Format;
use crate::{bundle, commands, demo};
use crate::{
    ChannelCommand, Cli, Command, FleetCommand, HostCommand, PkiCommand, ReleaseCommand,
    RolloutCommand, TokenCommand,
};

/// `-o json` on a command whose output is not a document is refused
/// rather than ignored: a script asking for JSON must not get text.
fn not_a_document(out: Format, what: &str) -> Result<()> {
    match out {
        Format::Text => Ok(()),
        Format::Json => Err(Error::Usage(format!(
            "{what}, not a document; -o json does not apply (drop it)"
        ))),
    }
}

pub(crate) async fn dispatch(cli: Cli) -> Result<()> {
    use commands::{fleet, release, rollout};
    let out = cli.output;
    let c = &cli.connect;
    match cli.command {
        Command::Pki {
            command:
                PkiCommand::Init {
                    dir,
                    controller_host,
                    operator,
                },
        } => commands::pki_init(&dir, &controller_host, &operator, out),
        Command::Release { command } => match command {
            ReleaseCommand::Keygen { out: path } => release::keygen(&path, out),
            ReleaseCommand::Build {
                dir,
                version,
                services,
                depends_on,
                databases,
                out: out_dir,
                min_upgrade_from,
                requires_intermediate,
            } => commands::release_build::build(
                commands::release_build::BuildArgs {
                    dir,
                    version,
                    services,
                    depends_on,
                    databases,
                    out: out_dir,
                    floor: bundle::Floor {
                        min_upgrade_from,
                        requires_intermediate,
                    },
                },
                out,
            ),
            ReleaseCommand::Sign { manifest, key } => release::sign(&manifest, &key, out),
            ReleaseCommand::Import {
                manifest,
                artifacts,
            } => release::import(c, &manifest, artifacts.as_deref(), out).await,
            ReleaseCommand::List => release::list(c, out).await,
        },
        Command::Channel { command } => match command {
            ChannelCommand::Set { name, version } => {
                commands::channel::set(c, &name, &version, out).await
            }
            ChannelCommand::List => commands::channel::list(c, out).await,
            ChannelCommand::Default { name } => commands::channel::default(c, &name, out).await,
        },
        Command::Token {
            command: TokenCommand::List,
        } => commands::token::list(c, out).await,
        Command::Token {
            command: TokenCommand::Revoke { host },
        } => commands::token::revoke(c, &host, out).await,
        Command::Token {
            command: TokenCommand::Create { host, ttl, replace },
        } => {
            // Checked here too, so that a mistake is a usage error (exit 2)
            // even before a controller is reached.
            if !cutover_core::views::JOIN_TOKEN_TTL.contains(&ttl) {
                return Err(Error::Usage(format!(
                    "--ttl {}: a join token must live at least 1s and at most 7d; give e.g. --ttl 15m",
                    humantime::format_duration(ttl)
                )));
            }
            cutover_core::names::validate("host", &host)
                .map_err(|e| Error::Usage(e.to_string()))?;
            commands::token::create(c, &host, ttl, replace, out).await
        }
        Command::Host { command } => match command {
            HostCommand::Revoke { host, yes } => fleet::revoke(c, &host, yes, out).await,
            HostCommand::Forget { host } => fleet::forget(c, &host, out).await,
        },
        Command::Hosts => fleet::hosts(c, out).await,
        Command::Status => fleet::status(c, out).await,
        Command::Diag { host } => fleet::diag(c, &host, out).await,
        Command::Fleet { command } => match command {
            FleetCommand::Apply {
                file,
                dry_run,
                allow_empty,
            } => {
                let args = commands::fleet_config::ApplyArgs {
                    file: &file,
                    dry_run,
                    allow_empty,
                };
                commands::fleet_config::apply(c, args, out).await
            }
            FleetCommand::Show => commands::fleet_config::show(c, out).await,
        },
        Command::Plan { target } => rollout::plan(c, &target.plan_args()?, out).await,
        Command::Upgrade {
            target,
            dry_run,
            yes,
            no_rollback,
            wait,
        } => {
            let args = rollout::UpgradeArgs {
                plan: target.plan_args()?,
                dry_run,
                yes,
                no_rollback,
                wait,
            };
            rollout::upgrade(c, args, out).await
        }
        Command::Rollback(args) => commands::rollback::rollback(c, args, out).await,
        Command::Migrate(args) => commands::migrate::migrate(c, args, out).await,
        Command::DataMigrate { command } => {
            commands::data_migrate::data_migrate(c, command, out).await
        }
        Command::Rollout { command } => match command {
            RolloutCommand::List { limit } => rollout::list(c, limit, out).await,
            RolloutCommand::Show { id } => rollout::show(c, id, out).await,
            RolloutCommand::Watch { id } => rollout::watch(c, id, out).await,
            RolloutCommand::Pause { id } => {
                rollout::control(c, id, rollout::Control::Pause, out).await
            }
            RolloutCommand::Resume { id } => {
                rollout::control(c, id, rollout::Control::Resume, out).await
            }
            RolloutCommand::Abort {
                id,
                rollback: false,
                ..
            } => rollout::control(c, id, rollout::Control::Abort, out).await,
            RolloutCommand::Abort {
                id,
                rollback: true,
                allow_offline,
                yes,
            } => commands::rollback::abort_and_roll_back(c, id, allow_offline, yes, out).await,
        },
        Command::Events {
            rollout,
            limit,
            since,
            follow,
        } => {
            let args = commands::events::EventsArgs {
                rollout,
                limit,
                since,
                follow,
            };
            commands::events::events(c, args, out).await
        }
        Command::Version => commands::about::version(c, out).await,
        Command::Completions { shell } => {
            not_a_document(out, "completions prints a shell script")?;
            commands::about::completions(shell);
            Ok(())
        }
        Command::Man { out: dir } => commands::man::man(&dir, out),
        Command::Demo(args) => {
            not_a_document(out, "demo prints its progress for people")?;
            demo::run(args).await
        }
    }
}
