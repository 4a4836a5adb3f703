//! The `systemd` runner: `systemctl restart|stop|is-active|show` for the
//! unit the service's config names, its log from `journalctl`.

use std::path::{Path, PathBuf};
use std::process::Command;

use cutover_core::fleet::ServiceConfig;

use super::{describe, RunStatus, Runner};
use crate::error::{Error, Result};

/// Drives `systemctl` for the unit named in the service's config. The unit
/// runs the release through the service's `current` link.
pub struct SystemdRunner {
    pub systemctl: PathBuf,
}

impl SystemdRunner {
    fn unit(config: &ServiceConfig) -> &str {
        config.unit.as_deref().unwrap_or_default()
    }

    fn run(&self, service: &str, args: &[&str]) -> Result<String> {
        let out = Command::new(&self.systemctl)
            .args(args)
            .output()
            .map_err(|e| Error::Runner {
                service: service.to_string(),
                problem: format!("cannot run {}: {e}", self.systemctl.display()),
            })?;
        let stdout = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if !out.status.success() {
            return Err(Error::Runner {
                service: service.to_string(),
                problem: format!(
                    "`systemctl {}` failed ({}): {}",
                    args.join(" "),
                    describe(out.status),
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            });
        }
        Ok(stdout)
    }
}

impl Runner for SystemdRunner {
    fn start(&self, service: &str, _release: &Path, config: &ServiceConfig) -> Result<()> {
        self.run(service, &["restart", Self::unit(config)])
            .map(|_| ())
    }

    fn stop(&self, service: &str, config: &ServiceConfig) -> Result<()> {
        self.run(service, &["stop", Self::unit(config)]).map(|_| ())
    }

    fn status(&self, service: &str, config: &ServiceConfig) -> RunStatus {
        let unit = Self::unit(config);
        let running = self
            .run(service, &["is-active", unit])
            .map(|s| s == "active")
            .unwrap_or(false);
        let show = |prop: &str| {
            self.run(service, &["show", "-p", prop, "--value", unit])
                .ok()
        };
        RunStatus {
            running,
            pid: show("MainPID")
                .and_then(|p| p.parse().ok())
                .filter(|p| *p != 0),
            restarts: show("NRestarts").and_then(|p| p.parse().ok()).unwrap_or(0),
            last_exit: show("Result").filter(|r| r != "success"),
        }
    }

    fn adopt(&self, service: &str, _release: &Path, config: &ServiceConfig) -> bool {
        self.status(service, config).running
    }

    fn log_tail(&self, _service: &str, config: &ServiceConfig, lines: usize) -> Vec<String> {
        let out = Command::new("journalctl")
            .args([
                "-u",
                Self::unit(config),
                "-n",
                &lines.to_string(),
                "--no-pager",
                "-o",
                "cat",
            ])
            .output();
        match out {
            Ok(o) => String::from_utf8_lossy(&o.stdout)
                .lines()
                .map(String::from)
                .collect(),
            Err(_) => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This machine has no systemd: a stand-in `systemctl` records what the
    /// runner asks and answers like systemctl does.
    #[test]
    fn systemd_runner_drives_systemctl_for_the_unit() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("calls");
        let script = dir.path().join("systemctl");
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\necho \"$*\" >> {}\ncase \"$1\" in\n  is-active) echo active ;;\n  show) case \"$3\" in NRestarts) echo 2 ;; MainPID) echo 42 ;; *) echo success ;; esac ;;\n  stop) [ \"$2\" = broken.service ] && {{ echo 'Unit broken.service not loaded.' >&2; exit 5; }} ;;\nesac\nexit 0\n",
                log.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let r = SystemdRunner { systemctl: script };
        let mut f = cutover_core::fleet::FleetConfig::parse(
            "f",
            "[services.db]\nhosts=[\"h\"]\nrunner=\"systemd\"\nunit=\"db.service\"\n",
        )
        .unwrap();
        let mut c = f.services.remove("db").unwrap();
        r.start("db", dir.path(), &c).unwrap();
        let st = r.status("db", &c);
        assert_eq!(
            st,
            RunStatus {
                running: true,
                pid: Some(42),
                restarts: 2,
                last_exit: None
            }
        );
        r.stop("db", &c).unwrap();
        let calls = std::fs::read_to_string(&log).unwrap();
        assert!(
            calls.starts_with("restart db.service\nis-active db.service\n"),
            "{calls}"
        );
        assert!(calls.ends_with("stop db.service\n"), "{calls}");
        c.unit = Some("broken.service".into());
        let e = r.stop("db", &c).unwrap_err().to_string();
        assert!(e.contains("`systemctl stop broken.service` failed (exited with code 5): Unit broken.service not loaded."), "{e}");
    }
}
