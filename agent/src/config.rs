//! The agent's configuration file (TOML). Unknown keys are errors that name
//! the key and the file; relative paths are taken from the file's directory,
//! made absolute when the file is loaded.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::error::{Error, Result};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The controller, as `https://HOST:PORT`.
    pub controller: String,
    /// The CA certificate the controller's certificate must chain to.
    pub ca_cert: PathBuf,
    /// The agent's own state: its identity, releases, journal.
    pub data_dir: PathBuf,
    #[serde(with = "humantime_serde", default = "default_heartbeat")]
    pub heartbeat_interval: Duration,
    /// Upper bound of the jittered exponential reconnect backoff.
    #[serde(with = "humantime_serde", default = "default_backoff")]
    pub reconnect_max_backoff: Duration,
    /// Tarballs unpacking to more bytes than this are refused.
    #[serde(default = "default_max_unpacked")]
    pub max_unpacked_bytes: u64,
    /// Tarballs with more entries than this are refused.
    #[serde(default = "default_max_entries")]
    pub max_entries: u64,
    /// A freshly installed service failing its checks while the controller
    /// has been unreachable this long is rolled back by the agent itself.
    #[serde(with = "humantime_serde", default = "default_autonomous")]
    pub autonomous_rollback_after: Duration,
    /// How often the agent probes each installed service's health checks
    /// between rollouts and reports changes (1 s to 1 h).
    #[serde(with = "humantime_serde", default = "default_health_probe")]
    pub health_probe_interval: Duration,
    /// Service log files rotate at this size; `log_files` of them are kept.
    #[serde(default = "default_log_bytes")]
    pub log_max_bytes: u64,
    #[serde(default = "default_log_files")]
    pub log_files: u32,
    /// Stop the services the process runner supervises when the agent
    /// exits cleanly. Off by default: restarting or upgrading the agent
    /// leaves services running, and the next agent adopts them.
    #[serde(default)]
    pub stop_services_on_exit: bool,
    /// Values for `${name}` in the fleet config's commands, env and checks
    /// (`${host}` is always this host's name).
    #[serde(default)]
    pub vars: std::collections::BTreeMap<String, String>,
    /// The `systemctl` the systemd runner drives.
    #[serde(default = "default_systemctl")]
    pub systemctl: PathBuf,
    /// How often a data migration's `run` is followed with `status`
    /// (100 ms to 1 min; docs/data-migrations.md).
    #[serde(with = "humantime_serde", default = "default_data_migrate_poll")]
    pub data_migrate_poll: Duration,
    /// How long a data-migrate command other than `run` may take (`status`,
    /// `verify`, a dry run; 1 s to 1 h).
    #[serde(with = "humantime_serde", default = "default_data_migrate_timeout")]
    pub data_migrate_timeout: Duration,
}

/// The range one duration of the agent's config must fall in.
type Bound<T> = (T, T);

/// `heartbeat_interval`: 100 ms to 60 s (the controller refuses a session
/// asking for more; three missed ones end a session).
pub const HEARTBEAT_INTERVAL: Bound<Duration> =
    (Duration::from_millis(100), Duration::from_secs(60));
/// `reconnect_max_backoff`: 100 ms to an hour.
pub const RECONNECT_MAX_BACKOFF: Bound<Duration> =
    (Duration::from_millis(100), Duration::from_secs(3600));
/// `health_probe_interval`: 1 s to 1 h.
pub const HEALTH_PROBE_INTERVAL: Bound<Duration> =
    (Duration::from_secs(1), Duration::from_secs(3600));
/// `autonomous_rollback_after`: 1 s to a week.
pub const AUTONOMOUS_ROLLBACK_AFTER: Bound<Duration> =
    (Duration::from_secs(1), Duration::from_secs(7 * 24 * 3600));
/// `data_migrate_poll`: 100 ms to 1 min.
pub const DATA_MIGRATE_POLL: Bound<Duration> =
    (Duration::from_millis(100), Duration::from_secs(60));
/// `data_migrate_timeout`: 1 s to 1 h.
pub const DATA_MIGRATE_TIMEOUT: Bound<Duration> =
    (Duration::from_secs(1), Duration::from_secs(3600));
/// `max_unpacked_bytes`: 1 MiB to 16 TiB.
pub const MAX_UNPACKED_BYTES: Bound<u64> = (1 << 20, 16 << 40);
/// `max_entries`: 1 to 100 million.
pub const MAX_ENTRIES: Bound<u64> = (1, 100_000_000);
/// `log_max_bytes`: 64 KiB to 64 GiB.
pub const LOG_MAX_BYTES: Bound<u64> = (64 << 10, 64 << 30);
/// `log_files`: 1 to 100.
pub const LOG_FILES: Bound<u32> = (1, 100);
/// `[vars]`: how many, and the longest value.
pub const MAX_VARS: usize = 1024;
pub const MAX_VAR_BYTES: usize = 4096;

fn default_max_unpacked() -> u64 {
    8 << 30
}

fn default_max_entries() -> u64 {
    200_000
}

fn default_health_probe() -> Duration {
    Duration::from_secs(30)
}

fn default_autonomous() -> Duration {
    Duration::from_secs(300)
}

fn default_log_bytes() -> u64 {
    10 << 20
}

fn default_log_files() -> u32 {
    3
}

fn default_systemctl() -> PathBuf {
    PathBuf::from("systemctl")
}

fn default_data_migrate_poll() -> Duration {
    Duration::from_secs(1)
}

fn default_data_migrate_timeout() -> Duration {
    Duration::from_secs(60)
}

fn default_heartbeat() -> Duration {
    Duration::from_secs(10)
}

fn default_backoff() -> Duration {
    Duration::from_secs(30)
}

impl Config {
    pub fn load(path: &Path) -> Result<Config> {
        let config_err = |problem: String| Error::Config {
            path: path.to_path_buf(),
            problem,
        };
        let text = std::fs::read_to_string(path).map_err(|e| config_err(e.to_string()))?;
        let base = cutover_core::fsutil::config_dir(path).map_err(|e| {
            config_err(format!(
                "cannot make its directory absolute ({e}); give --config as an absolute path"
            ))
        })?;
        Config::parse(&text, &base).map_err(config_err)
    }

    /// The files the config names that the agent needs at start, each
    /// refused by the key that named it.
    pub fn check_files(&self, path: &Path) -> Result<()> {
        cutover_core::fsutil::config_file_readable("ca_cert", &self.ca_cert).map_err(|problem| {
            Error::Config {
                path: path.to_path_buf(),
                problem,
            }
        })
    }

    /// A config from TOML text; relative paths are taken from `base`.
    pub fn parse(text: &str, base: &Path) -> std::result::Result<Config, String> {
        let mut c: Config = cutover_core::toml_text::parse(text)?;
        for p in [&mut c.ca_cert, &mut c.data_dir] {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        cutover_proto::transport::ControllerAddr::check(&c.controller)
            .map_err(|why| format!("controller = {:?}: {why}", c.controller))?;
        c.check_bounds()?;
        Ok(c)
    }

    /// Every duration and count against its bound, as one line naming the
    /// key, the value and the bound.
    fn check_bounds(&self) -> std::result::Result<(), String> {
        use cutover_core::fleet::show_duration as show;
        for (key, value, (lo, hi)) in [
            (
                "heartbeat_interval",
                self.heartbeat_interval,
                HEARTBEAT_INTERVAL,
            ),
            (
                "reconnect_max_backoff",
                self.reconnect_max_backoff,
                RECONNECT_MAX_BACKOFF,
            ),
            (
                "autonomous_rollback_after",
                self.autonomous_rollback_after,
                AUTONOMOUS_ROLLBACK_AFTER,
            ),
            (
                "health_probe_interval",
                self.health_probe_interval,
                HEALTH_PROBE_INTERVAL,
            ),
            (
                "data_migrate_poll",
                self.data_migrate_poll,
                DATA_MIGRATE_POLL,
            ),
            (
                "data_migrate_timeout",
                self.data_migrate_timeout,
                DATA_MIGRATE_TIMEOUT,
            ),
        ] {
            if value < lo || value > hi {
                return Err(format!(
                    "{key} = \"{}\": must be between {} and {}",
                    show(value),
                    show(lo),
                    show(hi)
                ));
            }
        }
        for (key, value, (lo, hi)) in [
            (
                "max_unpacked_bytes",
                self.max_unpacked_bytes,
                MAX_UNPACKED_BYTES,
            ),
            ("max_entries", self.max_entries, MAX_ENTRIES),
            ("log_max_bytes", self.log_max_bytes, LOG_MAX_BYTES),
            (
                "log_files",
                u64::from(self.log_files),
                (u64::from(LOG_FILES.0), u64::from(LOG_FILES.1)),
            ),
        ] {
            if !(lo..=hi).contains(&value) {
                return Err(format!("{key} = {value}: must be between {lo} and {hi}"));
            }
        }
        if self.vars.len() > MAX_VARS {
            return Err(format!(
                "vars: {} entries; at most {MAX_VARS} are allowed",
                self.vars.len()
            ));
        }
        if let Some((k, v)) = self.vars.iter().find(|(_, v)| v.len() > MAX_VAR_BYTES) {
            return Err(format!(
                "vars.{k}: {} bytes; at most {MAX_VAR_BYTES} are allowed",
                v.len()
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_typos() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        std::fs::write(
            &path,
            "controller = \"https://127.0.0.1:7443\"\nca_cert = \"ca.pem\"\ndata_dir = \"data\"\n",
        )
        .unwrap();
        let c = Config::load(&path).unwrap();
        assert_eq!(c.heartbeat_interval, Duration::from_secs(10));
        assert_eq!(c.data_dir, dir.path().join("data"));
        std::fs::write(&path, "controler = \"https://x\"\n").unwrap();
        let e = Config::load(&path).unwrap_err().to_string();
        assert!(
            e.contains("agent.toml") && e.contains("unknown field `controler`"),
            "{e}"
        );
    }

    #[test]
    fn a_config_named_without_a_directory_resolves_paths_to_absolute_ones_beside_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("agent.toml"),
            "controller = \"https://127.0.0.1:7443\"\nca_cert = \"pki/ca.pem\"\ndata_dir = \"data\"\n",
        )
        .unwrap();
        // Relative paths, as `--config agent.toml` from the config's own
        // directory and `--config ./x/../agent.toml` give them.
        let here = std::env::current_dir().unwrap();
        let rel = |p: &Path| {
            let mut r = PathBuf::new();
            for _ in here.components().skip(1) {
                r.push("..");
            }
            r.join(p.strip_prefix("/").unwrap())
        };
        let c = Config::load(&rel(&dir.path().join("agent.toml"))).unwrap();
        assert!(c.data_dir.is_absolute(), "{:?}", c.data_dir);
        assert_eq!(
            std::fs::canonicalize(c.data_dir.parent().unwrap()).unwrap(),
            std::fs::canonicalize(dir.path()).unwrap()
        );
        assert!(c.ca_cert.is_absolute() && c.ca_cert.ends_with("pki/ca.pem"));
        // No directory part at all: the working directory, made absolute.
        let bare = Path::new("agent-config-that-does-not-exist.toml");
        assert!(cutover_core::fsutil::config_dir(bare)
            .unwrap()
            .is_absolute());
    }

    #[test]
    fn health_is_probed_every_30s_unless_configured_within_1s_to_1h() {
        let base =
            "controller = \"https://127.0.0.1:7443\"\nca_cert = \"ca.pem\"\ndata_dir = \"data\"\n";
        let c = Config::parse(base, Path::new("/")).unwrap();
        assert_eq!(c.health_probe_interval, Duration::from_secs(30));
        for (text, want) in [("1s", 1), ("1h", 3600)] {
            let c = Config::parse(
                &format!("{base}health_probe_interval = \"{text}\"\n"),
                Path::new("/"),
            )
            .unwrap();
            assert_eq!(c.health_probe_interval, Duration::from_secs(want));
        }
    }

    #[test]
    fn durations_and_counts_outside_their_bounds_are_refused_naming_key_and_bound() {
        let base =
            "controller = \"https://127.0.0.1:7443\"\nca_cert = \"ca.pem\"\ndata_dir = \"data\"\n";
        let max = u64::MAX;
        for (extra, want) in [
            (
                format!("heartbeat_interval = \"{max}s\""),
                format!("heartbeat_interval = \"{max}s\": must be between 100ms and 1m"),
            ),
            (
                "heartbeat_interval = \"0s\"".to_string(),
                "heartbeat_interval = \"0s\": must be between 100ms".to_string(),
            ),
            (
                format!("reconnect_max_backoff = \"{max}s\""),
                "reconnect_max_backoff".to_string(),
            ),
            (
                "autonomous_rollback_after = \"0s\"".to_string(),
                "autonomous_rollback_after = \"0s\": must be between 1s and 168h".to_string(),
            ),
            (
                "health_probe_interval = \"500ms\"".to_string(),
                "health_probe_interval = \"500ms\": must be between 1s and 1h".to_string(),
            ),
            (
                "health_probe_interval = \"2h\"".to_string(),
                "health_probe_interval = \"2h\": must be between 1s and 1h".to_string(),
            ),
            (
                "max_entries = 0".to_string(),
                "max_entries = 0: must be between 1 and 100000000".to_string(),
            ),
            (
                "max_unpacked_bytes = 9223372036854775807".to_string(),
                "max_unpacked_bytes = 9223372036854775807: must be between".to_string(),
            ),
            (
                "log_files = 0".to_string(),
                "log_files = 0: must be between 1 and 100".to_string(),
            ),
            (
                "log_max_bytes = 1".to_string(),
                "log_max_bytes = 1: must be between 65536".to_string(),
            ),
            (
                format!("[vars]\nbig = \"{}\"", "x".repeat(5000)),
                "vars.big: 5000 bytes".to_string(),
            ),
        ] {
            let e = Config::parse(&format!("{base}{extra}\n"), Path::new("/")).unwrap_err();
            assert!(e.contains(&want), "{want}: {e}");
        }
    }

    #[test]
    fn a_controller_url_that_would_dial_another_port_or_carries_more_is_refused_at_load() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        for (url, why) in [
            (
                "https://127.0.0.1:99999",
                "must be a number from 1 to 65535",
            ),
            ("https://127.0.0.1:0", "must be a number from 1 to 65535"),
            ("https://127.0.0.1:35001/x?y", "no path, query or fragment"),
            ("https://u:p@127.0.0.1:35001", "no user name or password"),
        ] {
            std::fs::write(
                &path,
                format!("controller = \"{url}\"\nca_cert = \"ca.pem\"\ndata_dir = \"data\"\n"),
            )
            .unwrap();
            let e = Config::load(&path).unwrap_err().to_string();
            assert!(
                e.contains("agent.toml")
                    && e.contains(&format!("controller = \"{url}\": "))
                    && e.contains(why),
                "{url}: {e}"
            );
            assert!(!e.contains('\n'), "one line: {e}");
        }
    }

    #[test]
    fn the_packaged_example_is_valid() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/agent.toml");
        Config::load(&path).unwrap();
    }
}
