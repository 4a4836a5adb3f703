//! `cutover`, the operator CLI: `cutover VERB [NOUN]`, `--output json` on
//! every read command, exit code 0 (success), 1 (failure), 2 (usage).

pub mod client;
pub mod commands;
pub mod demo;
pub mod error;
pub mod output;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

pub use error::{Error, Result};
use output::Format;

#[derive(Parser)]
#[command(
    name = "cutover",
    version,
    about = "Roll releases out across a fleet, safely"
)]
pub struct Cli {
    #[command(flatten)]
    pub connect: client::ConnectArgs,
    /// Output format of read commands.
    #[arg(long, short, global = true, value_enum, default_value = "text")]
    pub output: Format,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Make the CA and the controller's and operator's certificates.
    Pki {
        #[command(subcommand)]
        command: PkiCommand,
    },
    /// Release keys, signing, import and listing.
    Release {
        #[command(subcommand)]
        command: ReleaseCommand,
    },
    /// Release channels (`stable`, `rc`, ...).
    Channel {
        #[command(subcommand)]
        command: ChannelCommand,
    },
    /// One-time join tokens for new hosts.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Host administration.
    Host {
        #[command(subcommand)]
        command: HostCommand,
    },
    /// List enrolled hosts and whether they are online.
    Hosts,
    /// Fleet overview: hosts, channels, releases, what runs where.
    Status,
    /// Ask one host's agent for live diagnostics.
    Diag { host: String },
    /// Run a throwaway controller and three agents on loopback and show them.
    Demo(demo::DemoArgs),
}

#[derive(Subcommand)]
pub enum PkiCommand {
    /// Make ca.pem, controller.pem and operator.pem (with keys) in DIR.
    Init {
        #[arg(long)]
        dir: PathBuf,
        /// Names or IP addresses the controller is reached at, comma separated.
        #[arg(long, value_delimiter = ',', required = true)]
        controller_host: Vec<String>,
        /// Name in the operator certificate.
        #[arg(long, default_value = "admin")]
        operator: String,
    },
}

#[derive(Subcommand)]
pub enum ReleaseCommand {
    /// Make an Ed25519 release key pair: OUT.key (secret) and OUT.pub.
    Keygen {
        #[arg(long)]
        out: PathBuf,
    },
    /// Sign MANIFEST with a release key, adding to MANIFEST.sig.
    Sign {
        manifest: PathBuf,
        #[arg(long)]
        key: PathBuf,
    },
    /// Upload a signed manifest and its artifacts; the controller verifies both.
    Import {
        manifest: PathBuf,
        /// Where the manifest's artifact files are (default: beside the manifest).
        #[arg(long)]
        artifacts: Option<PathBuf>,
    },
    /// List imported releases.
    List,
}

#[derive(Subcommand)]
pub enum ChannelCommand {
    /// Point channel NAME at release VERSION.
    Set { name: String, version: String },
    /// List channels.
    List,
    /// Make NAME the fleet's default channel.
    Default { name: String },
}

#[derive(Subcommand)]
pub enum TokenCommand {
    /// Print a one-time join token for HOST.
    Create {
        host: String,
        /// How long the token stays valid.
        #[arg(long, default_value = "15m", value_parser = humantime::parse_duration)]
        ttl: Duration,
    },
}

#[derive(Subcommand)]
pub enum HostCommand {
    /// Refuse HOST from now on and cut its live session.
    Revoke { host: String },
}

/// Runs one command.
pub async fn run(cli: Cli) -> Result<()> {
    use commands::{fleet, release};
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
        } => commands::pki_init(&dir, &controller_host, &operator),
        Command::Release { command } => match command {
            ReleaseCommand::Keygen { out } => release::keygen(&out),
            ReleaseCommand::Sign { manifest, key } => release::sign(&manifest, &key),
            ReleaseCommand::Import {
                manifest,
                artifacts,
            } => release::import(c, &manifest, artifacts.as_deref(), out).await,
            ReleaseCommand::List => release::list(c, out).await,
        },
        Command::Channel { command } => match command {
            ChannelCommand::Set { name, version } => release::channel_set(c, &name, &version).await,
            ChannelCommand::List => release::channel_list(c, out).await,
            ChannelCommand::Default { name } => release::channel_default(c, &name).await,
        },
        Command::Token {
            command: TokenCommand::Create { host, ttl },
        } => fleet::token_create(c, &host, ttl, out).await,
        Command::Host {
            command: HostCommand::Revoke { host },
        } => fleet::revoke(c, &host).await,
        Command::Hosts => fleet::hosts(c, out).await,
        Command::Status => fleet::status(c, out).await,
        Command::Diag { host } => fleet::diag(c, &host, out).await,
        Command::Demo(args) => demo::run(args).await,
    }
}
