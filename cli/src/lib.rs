//! `cutover`, the operator CLI: `cutover VERB [NOUN]`, `--output json` on
//! every command that prints a result (`doc`), exit code 0 (success), 1 (failure), 2 (usage).

// First, so that its `println!`, `print!`, `eprintln!` and `eprint!`
// shadow std's in every module below: a closed pipe ends a command quietly.
#[macro_use]
pub mod print;
pub mod bundle;
pub mod client;
pub mod commands;
pub mod demo;
mod dispatch;
pub mod doc;
pub mod error;
mod migration_tree;
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
    /// Output format: text for people, or json, one document per command
    /// (one object per line for `events --follow` and `rollout watch`),
    /// as the schemas in docs/json/ describe.
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
    Diag {
        /// The enrolled host to ask.
        host: String,
    },
    /// The fleet config: which hosts run which services, and how.
    Fleet {
        #[command(subcommand)]
        command: FleetCommand,
    },
    /// Show the steps a rollout would take, without starting it.
    #[command(
        after_help = "Examples:\n  cutover plan --all --version stable\n  cutover plan api web --version 1.4.0 -o json"
    )]
    Plan {
        #[command(flatten)]
        target: Target,
    },
    /// Plan and start a rollout.
    #[command(
        after_help = "Examples:\n  cutover upgrade --all --version stable --dry-run\n  cutover upgrade --all --version stable --yes --wait\n  cutover upgrade api --version 1.4.0 --yes"
    )]
    Upgrade {
        #[command(flatten)]
        target: Target,
        /// Only print the plan.
        #[arg(long)]
        dry_run: bool,
        /// Start without asking.
        #[arg(long, short)]
        yes: bool,
        /// On a failed health check, stop and leave the host as it is.
        #[arg(long)]
        no_rollback: bool,
        /// Follow the rollout until it ends (exit 1 unless it succeeds).
        #[arg(long)]
        wait: bool,
    },
    /// Take SERVICE back on every host at once: each host to the newest
    /// release that was healthy on it and that no failed or rolled-back
    /// step tried since (hosts with none are listed and left alone), or
    /// every host to release VERSION.
    #[command(
        after_help = "Examples:\n  cutover rollback api --dry-run\n  cutover rollback api --yes --wait\n  cutover rollback api --to 1.3.0 --yes"
    )]
    Rollback(commands::rollback::RollbackArgs),
    /// Schema migrations: apply a phase's pending migrations of a release
    /// (`--phase expand|postdeploy|contract`), `status`, `repair`.
    Migrate(commands::migrate::MigrateArgs),
    /// Data migrations the service binaries run between expand and
    /// contract: list, run, status, verify, pause, resume.
    #[command(
        name = "data-migrate",
        after_help = "Examples:\n  cutover data-migrate list\n  cutover data-migrate run orders.backfill_prices --dry-run\n  cutover data-migrate run orders.backfill_prices --wait\n  cutover data-migrate verify orders.backfill_prices"
    )]
    DataMigrate {
        #[command(subcommand)]
        command: commands::data_migrate::DataMigrateCommand,
    },
    /// Rollouts: list, show, watch, pause, resume, abort.
    Rollout {
        #[command(subcommand)]
        command: RolloutCommand,
    },
    /// The controller's event log: the newest events, or with --follow
    /// every new one as it is stored (Ctrl-C ends it, exit 130).
    Events {
        /// Only this rollout's events.
        #[arg(long)]
        rollout: Option<u64>,
        /// At most this many events (the newest) shown first.
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=10_000))]
        limit: u32,
        /// Only events since then: a duration back from now (10m, 2h, at
        /// most 366d) or an RFC 3339 time.
        #[arg(long, value_parser = commands::events::Since::parse)]
        since: Option<commands::events::Since>,
        /// Keep printing events as they are stored; with -o json, one JSON
        /// object per line.
        #[arg(long, short)]
        follow: bool,
    },
    /// Print the CLI's version and the controller's (exit 0 even when the
    /// controller cannot be asked; its line says why).
    Version,
    /// Print a shell completion script: `cutover completions bash|zsh|fish`.
    Completions {
        /// The shell to write the script for.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write one man page per command (roff, section 1) into --out.
    Man {
        /// The directory the pages go to (made if missing).
        #[arg(long)]
        out: PathBuf,
    },
    /// Run a throwaway controller and three agents on loopback, roll a good
    /// and a failing release of a sample service out, and show the rollback.
    Demo(demo::DemoArgs),
}

/// Which services and which release.
#[derive(clap::Args)]
pub struct Target {
    /// Services to move.
    pub services: Vec<String>,
    /// Every service of the release.
    #[arg(long)]
    pub all: bool,
    /// A channel, an exact version, or nothing for the default channel.
    #[arg(long, default_value = "")]
    pub version: String,
    /// Plan even with hosts offline; their steps wait for them.
    #[arg(long)]
    pub allow_offline: bool,
}

impl Target {
    fn plan_args(self) -> Result<commands::rollout::PlanArgs> {
        Ok(commands::rollout::PlanArgs {
            services: commands::rollout::selection(self.services, self.all)?,
            version: self.version,
            allow_offline: self.allow_offline,
        })
    }
}

#[derive(Subcommand)]
pub enum FleetCommand {
    /// Validate FILE, check it against the enrolled hosts and store it as
    /// the fleet config; prints what changed and any warnings.
    #[command(
        after_help = "Examples:\n  cutover fleet apply fleet.toml --dry-run\n  cutover fleet apply fleet.toml"
    )]
    Apply {
        /// The fleet config (TOML).
        file: PathBuf,
        /// Check and show what would change; store nothing.
        #[arg(long)]
        dry_run: bool,
        /// Store even when a service selects no enrolled host yet.
        #[arg(long)]
        allow_empty: bool,
    },
    /// Print the stored fleet config.
    Show,
}

#[derive(Subcommand)]
pub enum RolloutCommand {
    /// Recent rollouts, newest first.
    List {
        /// At most this many rollouts.
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// One rollout on one screen: where it stopped, why, and what was done.
    Show {
        /// The rollout's id (`cutover rollout list`).
        id: u64,
    },
    /// Follow a rollout live until it ends.
    Watch {
        /// The rollout's id (`cutover rollout list`).
        id: u64,
    },
    /// Start no new batches; steps in flight finish.
    Pause {
        /// The rollout's id (`cutover rollout list`).
        id: u64,
    },
    /// Go on starting batches of a paused rollout.
    Resume {
        /// The rollout's id (`cutover rollout list`).
        id: u64,
    },
    /// Stop for good; hosts stay as they are unless --rollback.
    Abort {
        /// The rollout's id (`cutover rollout list`).
        id: u64,
        /// Then take every host the rollout moved back to what it ran
        /// before it (a rollback rollout, started at once).
        #[arg(long)]
        rollback: bool,
        /// With --rollback: hosts that are offline get their step when
        /// they return.
        #[arg(long, requires = "rollback")]
        allow_offline: bool,
        /// With --rollback: do not ask first.
        #[arg(long, short, requires = "rollback")]
        yes: bool,
    },
}

#[derive(Subcommand)]
pub enum PkiCommand {
    /// Make ca.pem, controller.pem and operator.pem (with keys) in DIR.
    Init {
        /// Where the certificates and keys are written (made if missing).
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
        /// Path of the pair without extension: OUT.key and OUT.pub.
        #[arg(long)]
        out: PathBuf,
    },
    /// Build a release from DIR/SERVICE directories: a deterministic
    /// SERVICE-SERVICE_VERSION.tar.gz per service, the migrations of
    /// DIR/migrations/DATABASE/VERSION/PHASE/NNN_name.sql copied as they are,
    /// and release-VERSION.toml pinning their digests and sizes (valid 30
    /// days), in --out.
    #[command(
        after_help = "Example:\n  cutover release build ./services --version 1.4.0 \\\n      --service db=1.2 --service api --depends-on api=db \\\n      --databases api=billing --out dist\n  cutover release sign dist/release-1.4.0.toml --key release.key\n  cutover release import dist/release-1.4.0.toml"
    )]
    Build {
        /// Holds one directory per service, named as the service.
        dir: PathBuf,
        /// The release's version (semantic version).
        #[arg(long)]
        version: String,
        /// A service to ship, from DIR/NAME; its service_version is
        /// SERVICE_VERSION or else the release's version. Repeatable.
        #[arg(long = "service", value_name = "NAME[=SERVICE_VERSION]", value_parser = commands::release_build::ServiceArg::parse, required = true)]
        services: Vec<commands::release_build::ServiceArg>,
        /// SERVICE depends on DEP (moved after it). Repeatable.
        #[arg(long, value_name = "SERVICE=DEP[,DEP...]", value_parser = commands::release_build::ServiceList::depends_on)]
        depends_on: Vec<commands::release_build::ServiceList>,
        /// SERVICE owns the databases DB: DIR/migrations/DB/ holds their
        /// migrations, which gate SERVICE. Repeatable.
        #[arg(long, value_name = "SERVICE=DB[,DB...]", value_parser = commands::release_build::ServiceList::databases)]
        databases: Vec<commands::release_build::ServiceList>,
        /// Where the tarballs and the manifest are written.
        #[arg(long, default_value = "dist")]
        out: PathBuf,
        /// The lowest release this one may be upgraded from.
        #[arg(long)]
        min_upgrade_from: Option<String>,
        /// Releases a host must pass through first. Repeatable.
        #[arg(long)]
        requires_intermediate: Vec<String>,
    },
    /// Sign MANIFEST with a release key, adding to MANIFEST.sig.
    Sign {
        /// The release manifest (TOML) to sign.
        manifest: PathBuf,
        /// The secret release key (`release keygen`'s OUT.key).
        #[arg(long)]
        key: PathBuf,
    },
    /// Upload a signed manifest and its artifacts; the controller verifies both.
    Import {
        /// The signed manifest; MANIFEST.sig must be beside it.
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
    Set {
        /// The channel, made if new.
        name: String,
        /// An imported release.
        version: String,
    },
    /// List channels.
    List,
    /// Make NAME the fleet's default channel.
    Default {
        /// An existing channel.
        name: String,
    },
}

#[derive(Subcommand)]
pub enum TokenCommand {
    /// Print a one-time join token for HOST.
    Create {
        /// The name the new host enrolls under.
        host: String,
        /// How long the token stays valid.
        #[arg(long, default_value = "15m", value_parser = humantime::parse_duration)]
        ttl: Duration,
        /// HOST is enrolled: the token enrolls a new identity under its name
        /// and the current certificate is refused once that one is issued.
        #[arg(long)]
        replace: bool,
    },
    /// Join tokens not yet used and not expired: host, created, expires,
    /// whether it replaces an enrolled host (never the token itself).
    List,
    /// Drop HOST's unused join tokens; says how many.
    Revoke {
        /// The host whose unused tokens are dropped.
        host: String,
    },
}

#[derive(Subcommand)]
pub enum HostCommand {
    /// Refuse HOST from now on and cut its live session (asks first).
    Revoke {
        /// The enrolled host to refuse.
        host: String,
        /// Revoke without asking.
        #[arg(long, short)]
        yes: bool,
    },
    /// Remove a revoked HOST's record so its name can enroll again with a
    /// fresh identity; its events and rollout history are kept.
    Forget {
        /// A revoked host.
        host: String,
    },
}

/// Runs one command; a lost connection names the controller it was to.
pub async fn run(cli: Cli) -> Result<()> {
    let controller = cli.connect.controller.clone();
    dispatch::dispatch(cli)
        .await
        .map_err(|e| e.at_controller(&controller))
}
