//! The controller's configuration file (TOML). Unknown keys are errors that
//! name the key and the file; relative paths are taken from the file's
//! directory, made absolute when the file is loaded.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cutover_core::fleet::show_duration;
use serde::Deserialize;

use crate::error::{Error, Result};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address the agent and operator APIs listen on.
    pub listen: SocketAddr,
    /// Where the SQLite store and the artifact store live.
    pub data_dir: PathBuf,
    /// Lifetime of host certificates issued at enrollment and renewal.
    #[serde(with = "humantime_serde", default = "default_cert_ttl")]
    pub agent_cert_ttl: Duration,
    /// Paces each artifact download to at most this many bytes per second
    /// (unset: as fast as the network goes).
    #[serde(default)]
    pub fetch_rate_limit: Option<u64>,
    /// How long a shutdown (SIGTERM, SIGINT) may take in all: agents told
    /// the controller is going away, requests in flight finished, the
    /// store's last writes done; then the controller exits.
    #[serde(with = "humantime_serde", default = "default_shutdown_grace")]
    pub shutdown_grace: Duration,
    pub tls: TlsConfig,
    pub releases: ReleasesConfig,
    /// The PostgreSQL databases `cutover migrate` applies migrations to,
    /// by the name releases give them.
    #[serde(default)]
    pub databases: std::collections::BTreeMap<String, DatabaseConfig>,
}

/// `[databases.NAME]`: one migration target. Its `Debug` never shows a
/// password the URL may carry.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    /// A PostgreSQL connection string (`postgresql://user@host:port/db` or
    /// `host=… user=… dbname=…`), without its password.
    pub url: String,
    /// The password, read each time the controller connects.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// `disable` (the default) or `require`/`verify-full`: TLS, with the
    /// server's certificate and name verified against `ca_file` (cutover
    /// never speaks TLS without verifying).
    #[serde(default)]
    pub sslmode: SslMode,
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// False for engines without transactional DDL (YugabyteDB): every
    /// migration runs as a committed `running` row, its statements, then
    /// `applied`.
    #[serde(default = "yes")]
    pub transactional_ddl: bool,
    /// How long one statement may wait for a lock before it gives up (and
    /// is tried again, `lock_retries` times).
    #[serde(with = "humantime_serde", default = "default_lock_timeout")]
    pub lock_timeout: Duration,
    #[serde(default = "default_lock_retries")]
    pub lock_retries: u32,
    #[serde(with = "humantime_serde", default)]
    pub statement_timeout: Option<Duration>,
}

impl std::fmt::Debug for DatabaseConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatabaseConfig")
            .field("url", &crate::migrate::target::address(&self.url))
            .field("password_file", &self.password_file)
            .field("sslmode", &self.sslmode)
            .field("ca_file", &self.ca_file)
            .field("transactional_ddl", &self.transactional_ddl)
            .field("lock_timeout", &self.lock_timeout)
            .field("lock_retries", &self.lock_retries)
            .field("statement_timeout", &self.statement_timeout)
            .finish()
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SslMode {
    #[default]
    Disable,
    Require,
    VerifyFull,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub ca_cert: PathBuf,
    pub ca_key: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleasesConfig {
    /// Ed25519 public keys (PEM) whose signatures the controller trusts.
    pub trusted_keys: Vec<PathBuf>,
    /// How many distinct trusted keys must sign a release.
    #[serde(default = "one")]
    pub signature_threshold: usize,
}

/// `agent_cert_ttl`: at least 3 s (renewal runs two thirds in), at most
/// 366 days.
pub const AGENT_CERT_TTL: (Duration, Duration) =
    (Duration::from_secs(3), Duration::from_secs(366 * 24 * 3600));
/// `fetch_rate_limit` in bytes per second: 1 KiB/s to 100 GiB/s.
pub const FETCH_RATE_LIMIT: (u64, u64) = (1024, 100 << 30);
/// `shutdown_grace`: 1 s to 10 min.
pub const SHUTDOWN_GRACE: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(600));
/// `releases.trusted_keys`: how many keys may be listed.
pub const MAX_TRUSTED_KEYS: usize = 64;
/// `databases.*.lock_timeout`: 10 ms to 10 min.
pub const LOCK_TIMEOUT: (Duration, Duration) =
    (Duration::from_millis(10), Duration::from_secs(600));
/// `databases.*.statement_timeout`: 100 ms to 24 h.
pub const STATEMENT_TIMEOUT: (Duration, Duration) =
    (Duration::from_millis(100), Duration::from_secs(24 * 3600));
/// `databases.*.lock_retries`: at most this many retries after a lock timeout.
pub const MAX_LOCK_RETRIES: u32 = 10;
/// How many `[databases.*]` one controller may have.
pub const MAX_DATABASES: usize = 256;
/// The longest `databases.*.url`.
pub const MAX_URL_LEN: usize = 2048;

fn yes() -> bool {
    true
}

fn default_lock_timeout() -> Duration {
    Duration::from_secs(5)
}

fn default_lock_retries() -> u32 {
    3
}

fn default_cert_ttl() -> Duration {
    Duration::from_secs(7 * 24 * 3600)
}

fn default_shutdown_grace() -> Duration {
    Duration::from_secs(10)
}

fn one() -> usize {
    1
}

impl Config {
    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::Config {
            path: path.to_path_buf(),
            problem: e.to_string(),
        })?;
        let mut config: Config =
            cutover_core::toml_text::parse(&text).map_err(|problem| Error::Config {
                path: path.to_path_buf(),
                problem,
            })?;
        let base = cutover_core::fsutil::config_dir(path).map_err(|e| Error::Config {
            path: path.to_path_buf(),
            problem: format!(
                "cannot make its directory absolute ({e}); give --config as an absolute path"
            ),
        })?;
        config.resolve(&base);
        config.check_bounds().map_err(|problem| Error::Config {
            path: path.to_path_buf(),
            problem,
        })?;
        Ok(config)
    }

    /// The files the config names that the controller needs at start,
    /// each refused by the key that named it.
    pub fn check_files(&self, path: &Path) -> Result<()> {
        let tls = &self.tls;
        let mut files = vec![
            ("tls.ca_cert", &tls.ca_cert),
            ("tls.ca_key", &tls.ca_key),
            ("tls.cert", &tls.cert),
            ("tls.key", &tls.key),
        ];
        files.extend(
            self.releases
                .trusted_keys
                .iter()
                .map(|k| ("releases.trusted_keys", k)),
        );
        let keys: Vec<(String, String)> = self
            .databases
            .keys()
            .map(|n| {
                (
                    format!("databases.{n}.password_file"),
                    format!("databases.{n}.ca_file"),
                )
            })
            .collect();
        for (db, (password_key, ca_key)) in self.databases.values().zip(&keys) {
            files.extend(db.password_file.iter().map(|f| (password_key.as_str(), f)));
            files.extend(db.ca_file.iter().map(|f| (ca_key.as_str(), f)));
        }
        for (key, file) in files {
            cutover_core::fsutil::config_file_readable(key, file).map_err(|problem| {
                Error::Config {
                    path: path.to_path_buf(),
                    problem,
                }
            })?;
        }
        // A password file is read at each connection (so it may be
        // rotated), and checked at start too: a mistake shows at once.
        for (name, db) in &self.databases {
            if let Some(file) = &db.password_file {
                crate::migrate::target::read_password(file).map_err(|problem| Error::Config {
                    path: path.to_path_buf(),
                    problem: format!("databases.{name}.password_file: {problem}"),
                })?;
            }
        }
        Ok(())
    }

    /// Every duration and count against its bound, as one line naming the
    /// key, the value and the bound.
    fn check_bounds(&self) -> std::result::Result<(), String> {
        let (lo, hi) = AGENT_CERT_TTL;
        if self.agent_cert_ttl < lo || self.agent_cert_ttl > hi {
            return Err(format!(
                "agent_cert_ttl = \"{}\": must be between {} and {}",
                show_duration(self.agent_cert_ttl),
                show_duration(lo),
                show_duration(hi)
            ));
        }
        let (lo, hi) = SHUTDOWN_GRACE;
        if self.shutdown_grace < lo || self.shutdown_grace > hi {
            return Err(format!(
                "shutdown_grace = \"{}\": must be between {} and {}",
                show_duration(self.shutdown_grace),
                show_duration(lo),
                show_duration(hi)
            ));
        }
        if let Some(rate) = self.fetch_rate_limit {
            let (lo, hi) = FETCH_RATE_LIMIT;
            if !(lo..=hi).contains(&rate) {
                return Err(format!(
                    "fetch_rate_limit = {rate}: must be between {lo} and {hi} bytes per second (leave it out for no limit)"
                ));
            }
        }
        let keys = self.releases.trusted_keys.len();
        if keys > MAX_TRUSTED_KEYS {
            return Err(format!(
                "releases.trusted_keys: {keys} keys; at most {MAX_TRUSTED_KEYS} are allowed"
            ));
        }
        let t = self.releases.signature_threshold;
        if t == 0 || t > MAX_TRUSTED_KEYS {
            return Err(format!(
                "releases.signature_threshold = {t}: must be between 1 and {MAX_TRUSTED_KEYS}"
            ));
        }
        self.check_databases()
    }

    fn check_databases(&self) -> std::result::Result<(), String> {
        if self.databases.len() > MAX_DATABASES {
            return Err(format!(
                "databases: {} tables; at most {MAX_DATABASES} are allowed",
                self.databases.len()
            ));
        }
        for (name, db) in &self.databases {
            cutover_core::manifest::migrations::check_database(name)
                .map_err(|e| format!("[databases.{}]: {e}", cutover_core::text::shown(name, 64)))?;
            let key = |k: &str| format!("databases.{name}.{k}");
            crate::migrate::target::check_url(&db.url)
                .map_err(|e| format!("{}: {e}", key("url")))?;
            let (lo, hi) = LOCK_TIMEOUT;
            if db.lock_timeout < lo || db.lock_timeout > hi {
                return Err(format!(
                    "{} = \"{}\": must be between {} and {}",
                    key("lock_timeout"),
                    show_duration(db.lock_timeout),
                    show_duration(lo),
                    show_duration(hi)
                ));
            }
            if let Some(t) = db.statement_timeout {
                let (lo, hi) = STATEMENT_TIMEOUT;
                if t < lo || t > hi {
                    return Err(format!(
                        "{} = \"{}\": must be between {} and {} (leave it out for none)",
                        key("statement_timeout"),
                        show_duration(t),
                        show_duration(lo),
                        show_duration(hi)
                    ));
                }
            }
            if db.lock_retries > MAX_LOCK_RETRIES {
                return Err(format!(
                    "{} = {}: must be between 0 and {MAX_LOCK_RETRIES}",
                    key("lock_retries"),
                    db.lock_retries
                ));
            }
            if db.sslmode != SslMode::Disable && db.ca_file.is_none() {
                return Err(format!(
                    "{}: TLS needs {} (the CA that signed the server's certificate)",
                    key("sslmode"),
                    key("ca_file")
                ));
            }
        }
        Ok(())
    }

    fn resolve(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        fix(&mut self.data_dir);
        fix(&mut self.tls.ca_cert);
        fix(&mut self.tls.ca_key);
        fix(&mut self.tls.cert);
        fix(&mut self.tls.key);
        self.releases.trusted_keys.iter_mut().for_each(fix);
        for db in self.databases.values_mut() {
            db.password_file.iter_mut().for_each(fix);
            db.ca_file.iter_mut().for_each(fix);
        }
    }
}

#[cfg(test)]
#[path = "config/tests.rs"]
mod tests;
