//! The agent's configuration file (TOML). Unknown keys are errors that name
//! the key and the file; relative paths are relative to the file.

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
}

fn default_max_unpacked() -> u64 {
    8 << 30
}

fn default_max_entries() -> u64 {
    200_000
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
        Config::parse(&text, path.parent().unwrap_or_else(|| Path::new("."))).map_err(config_err)
    }

    /// A config from TOML text; relative paths are taken from `base`.
    pub fn parse(text: &str, base: &Path) -> std::result::Result<Config, String> {
        let mut c: Config = cutover_core::toml_text::parse(text)?;
        for p in [&mut c.ca_cert, &mut c.data_dir] {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        cutover_proto::transport::ControllerAddr::parse(&c.controller)?;
        if c.heartbeat_interval < Duration::from_millis(100) {
            return Err("heartbeat_interval must be at least 100ms".into());
        }
        Ok(c)
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
    fn the_packaged_example_is_valid() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/agent.toml");
        Config::load(&path).unwrap();
    }
}
