//! The operator's fleet configuration: which hosts run which services, how
//! each service runs and is health-checked, and its rollout policy.
//!
//! ```toml
//! [hosts.edge-1]
//! labels = ["edge"]
//!
//! [services.api]
//! hosts = ["web-1"]          # host names ...
//! labels = ["edge"]          # ... and/or host labels
//! runner = "process"
//! command = "bin/api"
//! min_healthy_time = "5s"
//! healthy_deadline = "60s"
//! [[services.api.checks]]
//! kind = "http"
//! url = "http://127.0.0.1:8080/healthz"
//! [services.api.policy]
//! canary = 1
//! ```

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

pub mod apply;
mod bounds;
pub use bounds::*;
use bounds::{
    check_command, check_count, check_entries, check_env_keys, check_target, check_text, check_url,
};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetConfig {
    #[serde(default)]
    pub hosts: BTreeMap<String, HostConfig>,
    #[serde(default)]
    pub services: BTreeMap<String, ServiceConfig>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostConfig {
    #[serde(default)]
    pub labels: Vec<String>,
}

/// Where one service runs, how it runs and is judged healthy, and how it
/// rolls out. The controller sends it to the agent with every install.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    /// Host names that run the service.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Every host carrying one of these labels runs the service too.
    #[serde(default)]
    pub labels: Vec<String>,
    pub runner: RunnerKind,
    /// `process`: the program, relative to the release directory unless
    /// absolute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// `process`: working directory inside the release directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    #[serde(default = "default_stop_signal")]
    pub stop_signal: String,
    #[serde(default = "default_stop_grace", with = "humantime_serde")]
    pub stop_grace: Duration,
    /// `systemd`: the unit to restart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    #[serde(default)]
    pub checks: Vec<Check>,
    /// Checks must pass continuously this long for the install to be healthy.
    #[serde(default = "default_min_healthy", with = "humantime_serde")]
    pub min_healthy_time: Duration,
    /// An install not healthy this long after its restart has failed.
    #[serde(default = "default_deadline", with = "humantime_serde")]
    pub healthy_deadline: Duration,
    /// `docker`: the container's settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<ContainerConfig>,
    #[serde(default)]
    pub policy: Policy,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunnerKind {
    Process,
    Systemd,
    Docker,
}

/// How a `docker` service's container is created. Every new container gets
/// the same settings; only the image changes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerConfig {
    /// Container name (default `cutover-<service>`). The previous one is
    /// kept, stopped, as `<name>-previous`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Overrides the image's command.
    #[serde(default)]
    pub command: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// `[host_ip:]host_port:container_port[/tcp|/udp]`.
    #[serde(default)]
    pub ports: Vec<String>,
    /// Bind mounts, `host_path:container_path[:ro]`.
    #[serde(default)]
    pub mounts: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    /// `no`, `always`, `unless-stopped` or `on-failure`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Memory limit in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<i64>,
    /// CPU limit in cores (`0.5` is half a core).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<f64>,
}

/// One health check as written in the fleet file; [`Check::probe`] gives
/// its typed form.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Check {
    pub kind: CheckKind,
    /// Shown in reports; defaults to the kind and target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `http`: the URL to GET.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// `http`: the status that means healthy (default 200).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect_status: Option<u16>,
    /// `http`: text the body must contain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_contains: Option<String>,
    /// `tcp`: `host:port` that must accept a connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// `exec`: program that must exit 0, run in the release directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default = "default_interval", with = "humantime_serde")]
    pub interval: Duration,
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Fail fast: this many consecutive failures of this check, once it
    /// has passed (or `startup_grace` is over), fail the health window
    /// before `healthy_deadline`. Unset: only the deadline fails it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_threshold: Option<u32>,
    /// With `failure_threshold`: failures count from this long after the
    /// service started even if the check has not passed yet.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub startup_grace: Option<Duration>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckKind {
    Http,
    Tcp,
    Exec,
}

/// What a check does, once validated.
#[derive(Debug, Clone, PartialEq)]
pub enum Probe<'a> {
    Http {
        url: &'a str,
        expect_status: u16,
        body_contains: Option<&'a str>,
    },
    Tcp {
        address: &'a str,
    },
    Exec {
        command: &'a str,
        args: &'a [String],
    },
}

impl Check {
    pub fn probe(&self) -> std::result::Result<Probe<'_>, String> {
        fn need<'a>(
            v: &'a Option<String>,
            key: &str,
            kind: &str,
        ) -> std::result::Result<&'a str, String> {
            v.as_deref()
                .filter(|s| !s.is_empty())
                .ok_or_else(|| format!("{key}: required for kind = \"{kind}\""))
        }
        let kind = self.kind_name();
        let stray = |present: bool, key: &str| {
            if present {
                Err(format!(
                    "{key}: not used by kind = \"{}\"",
                    self.kind_name()
                ))
            } else {
                Ok(())
            }
        };
        match self.kind {
            CheckKind::Http => {
                stray(self.address.is_some(), "address")?;
                stray(self.command.is_some(), "command")?;
                Ok(Probe::Http {
                    url: need(&self.url, "url", kind)?,
                    expect_status: self.expect_status.unwrap_or(200),
                    body_contains: self.body_contains.as_deref(),
                })
            }
            CheckKind::Tcp => {
                stray(self.url.is_some(), "url")?;
                stray(self.command.is_some(), "command")?;
                Ok(Probe::Tcp {
                    address: need(&self.address, "address", kind)?,
                })
            }
            CheckKind::Exec => {
                stray(self.url.is_some(), "url")?;
                stray(self.address.is_some(), "address")?;
                Ok(Probe::Exec {
                    command: need(&self.command, "command", kind)?,
                    args: &self.args,
                })
            }
        }
    }

    fn kind_name(&self) -> &'static str {
        match self.kind {
            CheckKind::Http => "http",
            CheckKind::Tcp => "tcp",
            CheckKind::Exec => "exec",
        }
    }

    /// How reports name the check.
    pub fn label(&self) -> String {
        if let Some(n) = &self.name {
            return n.clone();
        }
        let target = self
            .url
            .as_ref()
            .or(self.address.as_ref())
            .or(self.command.as_ref())
            .map(String::as_str)
            .unwrap_or("");
        format!("{} {target}", self.kind_name())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RollbackScope {
    /// Only the failed host goes back.
    Host,
    /// Every host of the failed service that moved goes back.
    Service,
    /// Every host of every service the rollout moved goes back.
    Release,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Hosts in the first batch, which must be healthy before any other.
    #[serde(default = "one")]
    pub canary: usize,
    /// Hosts installing at once after the canary.
    #[serde(default = "one")]
    pub max_parallel: usize,
    /// Hosts that may be out of service at once; batches never exceed it.
    #[serde(default = "one")]
    pub max_unavailable: usize,
    #[serde(default = "default_scope")]
    pub rollback_scope: RollbackScope,
    /// A host that has not reported this long after its command counts as
    /// failed. Defaults to `healthy_deadline` plus two minutes to download.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub step_deadline: Option<Duration>,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            canary: 1,
            max_parallel: 1,
            max_unavailable: 1,
            rollback_scope: RollbackScope::Service,
            step_deadline: None,
        }
    }
}

impl Policy {
    /// Hosts per batch after the canary.
    pub fn batch_size(&self) -> usize {
        self.max_parallel.min(self.max_unavailable).max(1)
    }
}

fn one() -> usize {
    1
}
fn default_scope() -> RollbackScope {
    RollbackScope::Service
}
fn default_stop_signal() -> String {
    "SIGTERM".into()
}
fn default_stop_grace() -> Duration {
    Duration::from_secs(10)
}
fn default_min_healthy() -> Duration {
    Duration::from_secs(5)
}
fn default_deadline() -> Duration {
    Duration::from_secs(60)
}
fn default_interval() -> Duration {
    Duration::from_secs(1)
}
fn default_timeout() -> Duration {
    Duration::from_secs(2)
}

impl FleetConfig {
    /// Parses and validates a fleet file; `file` names it in errors.
    pub fn parse(file: &str, text: &str) -> Result<FleetConfig> {
        let fleet: FleetConfig =
            crate::toml_text::parse(text).map_err(|e| Error::Invalid(format!("{file}: {e}")))?;
        fleet
            .validate()
            .map_err(|e| Error::Invalid(format!("{file}: {e}")))?;
        Ok(fleet)
    }

    pub fn validate(&self) -> std::result::Result<(), String> {
        check_count("hosts", self.hosts.len(), 0, MAX_HOSTS)?;
        check_count("services", self.services.len(), 0, MAX_SERVICES)?;
        for (name, host) in &self.hosts {
            crate::names::validate("host", name).map_err(|e| e.to_string())?;
            check_entries(&format!("hosts.{name}.labels"), host.labels.len())?;
            for l in &host.labels {
                crate::names::validate("label", l)
                    .map_err(|e| format!("hosts.{name}.labels: {e}"))?;
            }
        }
        for (name, svc) in &self.services {
            crate::names::validate("service", name).map_err(|e| e.to_string())?;
            let at = format!("services.{name}");
            if svc.hosts.is_empty() && svc.labels.is_empty() {
                return Err(format!("{at}: no `hosts` or `labels`; say where it runs"));
            }
            check_entries(&format!("{at}.hosts"), svc.hosts.len())?;
            check_entries(&format!("{at}.labels"), svc.labels.len())?;
            for h in &svc.hosts {
                crate::names::validate("host", h).map_err(|e| format!("{at}.hosts: {e}"))?;
            }
            svc.validate().map_err(|e| format!("{at}.{e}"))?;
            if svc.labels.is_empty() {
                // Hosts named only: the canary can be judged now. Labels
                // resolve at plan time, which checks those.
                let mut named: Vec<&String> = svc.hosts.iter().collect();
                named.sort_unstable();
                named.dedup();
                if svc.policy.canary > named.len() {
                    return Err(format!(
                        "{at}.policy.canary = {}: the service runs on {} named host(s), so at most {} can be the canary",
                        svc.policy.canary,
                        named.len(),
                        named.len()
                    ));
                }
            }
        }
        Ok(())
    }

    /// The hosts that run `service`, sorted by name.
    pub fn hosts_of(&self, service: &str) -> Vec<String> {
        let Some(svc) = self.services.get(service) else {
            return Vec::new();
        };
        // `self.hosts` is sorted, so hosts selected by label come out in
        // order; named hosts are merged in only when there are any.
        let mut hosts: Vec<String> = self
            .hosts
            .iter()
            .filter(|(_, h)| h.labels.iter().any(|l| svc.labels.contains(l)))
            .map(|(name, _)| name.clone())
            .collect();
        if !svc.hosts.is_empty() {
            hosts.extend(svc.hosts.iter().cloned());
            hosts.sort_unstable();
            hosts.dedup();
        }
        hosts
    }
}

impl ServiceConfig {
    /// Checks the service's settings: their consistency, and every
    /// duration, count and check target against its bound. Errors start
    /// with the key (`healthy_deadline = "…": must be between …`). The
    /// controller runs it again on the config a stored rollout carries,
    /// which an older controller may have accepted unchecked.
    pub fn validate(&self) -> std::result::Result<(), String> {
        STOP_GRACE.check("stop_grace", self.stop_grace)?;
        MIN_HEALTHY_TIME.check("min_healthy_time", self.min_healthy_time)?;
        HEALTHY_DEADLINE.check("healthy_deadline", self.healthy_deadline)?;
        self.policy.validate().map_err(|e| format!("policy.{e}"))?;
        check_count("checks", self.checks.len(), 0, MAX_CHECKS)?;
        for (key, n) in [
            ("args", self.args.len()),
            ("env", self.env.len()),
            ("labels", self.labels.len()),
            ("hosts", self.hosts.len()),
        ] {
            check_entries(key, n)?;
        }
        check_text("command", &self.command)?;
        check_text("working_dir", &self.working_dir)?;
        check_text("unit", &self.unit)?;
        check_text("args", &self.args)?;
        check_text("env", self.env.keys().chain(self.env.values()))?;
        check_env_keys("env", self.env.keys())?;
        match self.runner {
            RunnerKind::Process => {
                if self.command.as_deref().unwrap_or("").is_empty() {
                    return Err("command: required for runner = \"process\"".into());
                }
                if self.unit.is_some() {
                    return Err("unit: only for runner = \"systemd\"".into());
                }
                self.check_process_paths()?;
                signal_number(&self.stop_signal).map_err(|e| format!("stop_signal: {e}"))?;
            }
            RunnerKind::Systemd => {
                if self.unit.as_deref().unwrap_or("").is_empty() {
                    return Err("unit: required for runner = \"systemd\"".into());
                }
                if self.command.is_some() || !self.args.is_empty() {
                    return Err("command: only for runner = \"process\"".into());
                }
            }
            RunnerKind::Docker => {
                if self.command.is_some() || !self.args.is_empty() || self.unit.is_some() {
                    return Err("command: a docker service sets its command in [container]".into());
                }
                let c = self.container.clone().unwrap_or_default();
                c.validate().map_err(|e| format!("container.{e}"))?;
                if let Some(r) = &c.restart {
                    if !["no", "always", "unless-stopped", "on-failure"].contains(&r.as_str()) {
                        return Err(format!(
                            "container.restart: {r:?}; use no, always, unless-stopped or on-failure"
                        ));
                    }
                }
                for p in &c.ports {
                    if p.split(':').count() < 2 {
                        return Err(format!(
                            "container.ports: {p:?}; write [host_ip:]host_port:container_port"
                        ));
                    }
                }
                for m in &c.mounts {
                    if !m.starts_with('/') || m.split(':').count() < 2 {
                        return Err(format!(
                            "container.mounts: {m:?}; write /host/path:/container/path[:ro]"
                        ));
                    }
                }
            }
        }
        if self.container.is_some() && self.runner != RunnerKind::Docker {
            return Err("container: only for runner = \"docker\"".into());
        }
        if self.healthy_deadline <= self.min_healthy_time {
            return Err(format!(
                "healthy_deadline: {} must be longer than min_healthy_time {}",
                humantime::format_duration(self.healthy_deadline),
                humantime::format_duration(self.min_healthy_time)
            ));
        }
        for (i, c) in self.checks.iter().enumerate() {
            c.validate(false).map_err(|e| format!("checks[{i}].{e}"))?;
        }
        Ok(())
    }
}

impl ServiceConfig {
    /// A `process` service's command and working directory stay inside the
    /// release (the command may be absolute); checked again after the
    /// host's `${var}`s are filled in.
    fn check_process_paths(&self) -> std::result::Result<(), String> {
        if let Some(command) = &self.command {
            check_command(command)?;
        }
        if let Some(dir) = &self.working_dir {
            if dir.starts_with('/') || dir.split('/').any(|c| c == "..") {
                return Err(format!(
                    "working_dir: {dir:?} must be a path inside the release"
                ));
            }
        }
        Ok(())
    }
}

impl Policy {
    fn validate(&self) -> std::result::Result<(), String> {
        if self.canary == 0 {
            return Err(format!(
                "canary = 0: must be between 1 and {MAX_BATCH_HOSTS} (a canary host is the safe default)"
            ));
        }
        check_count("canary", self.canary, 1, MAX_BATCH_HOSTS)?;
        check_count("max_parallel", self.max_parallel, 1, MAX_BATCH_HOSTS)?;
        check_count("max_unavailable", self.max_unavailable, 1, MAX_BATCH_HOSTS)?;
        if let Some(d) = self.step_deadline {
            STEP_DEADLINE.check("step_deadline", d)?;
        }
        Ok(())
    }

    /// How long a host has to report after its command: `step_deadline`,
    /// or `healthy_deadline` plus two minutes to download. Saturating, so
    /// a config that skipped validation cannot overflow it.
    pub fn step_deadline_for(&self, healthy_deadline: Duration) -> Duration {
        self.step_deadline
            .unwrap_or_else(|| healthy_deadline.saturating_add(Duration::from_secs(120)))
    }
}

impl ContainerConfig {
    fn validate(&self) -> std::result::Result<(), String> {
        for (key, n) in [
            ("command", self.command.len()),
            ("env", self.env.len()),
            ("ports", self.ports.len()),
            ("mounts", self.mounts.len()),
            ("labels", self.labels.len()),
        ] {
            check_entries(key, n)?;
        }
        check_text("name", &self.name)?;
        check_text("command", &self.command)?;
        check_text("env", self.env.keys().chain(self.env.values()))?;
        check_env_keys("env", self.env.keys())?;
        check_text("ports", &self.ports)?;
        check_text("mounts", &self.mounts)?;
        check_text("network", &self.network)?;
        check_text("labels", self.labels.keys().chain(self.labels.values()))?;
        if let Some(m) = self.memory_bytes {
            let (lo, hi) = CONTAINER_MEMORY;
            if !(lo..=hi).contains(&m) {
                return Err(format!(
                    "memory_bytes = {m}: must be between {lo} (4 MiB) and {hi} (16 TiB)"
                ));
            }
        }
        if let Some(c) = self.cpus {
            let (lo, hi) = CONTAINER_CPUS;
            if !(lo..=hi).contains(&c) {
                return Err(format!("cpus = {c}: must be between {lo} and {hi}"));
            }
        }
        for p in &self.ports {
            // The last two parts are host_port:container_port[/proto].
            let parts: Vec<&str> = p.rsplitn(3, ':').collect();
            for port in parts.iter().take(2) {
                let port = port.split('/').next().unwrap_or("");
                let var = port.starts_with("${") && port.ends_with('}');
                if !var && !port.parse::<u16>().is_ok_and(|n| n >= 1) {
                    return Err(format!(
                        "ports: {p:?} has a port that is not a number from 1 to 65535"
                    ));
                }
            }
        }
        Ok(())
    }
}

impl Check {
    /// Bounds and target of one check; `substituted` once the host's
    /// `${var}`s are filled in.
    fn validate(&self, substituted: bool) -> std::result::Result<(), String> {
        CHECK_INTERVAL.check("interval", self.interval)?;
        CHECK_TIMEOUT.check("timeout", self.timeout)?;
        if let Some(n) = self.failure_threshold {
            let n = usize::try_from(n).unwrap_or(usize::MAX);
            check_count("failure_threshold", n, 1, MAX_FAILURE_THRESHOLD)?;
        }
        if let Some(grace) = self.startup_grace {
            STARTUP_GRACE.check("startup_grace", grace)?;
            if self.failure_threshold.is_none() {
                return Err(
                    "startup_grace: only counts with failure_threshold; set failure_threshold = N or remove startup_grace".into(),
                );
            }
        }
        check_entries("args", self.args.len())?;
        for (key, value) in [
            ("name", &self.name),
            ("url", &self.url),
            ("body_contains", &self.body_contains),
            ("address", &self.address),
            ("command", &self.command),
        ] {
            check_text(key, value)?;
        }
        check_text("args", &self.args)?;
        if let Some(s) = self.expect_status {
            if !(100..=599).contains(&s) {
                return Err(format!(
                    "expect_status = {s}: must be an HTTP status from 100 to 599"
                ));
            }
        }
        match self.probe()? {
            Probe::Http { url, .. } => check_url("url", url, substituted),
            Probe::Tcp { address } => check_target("address", address, true, substituted),
            Probe::Exec { .. } => Ok(()),
        }
    }
}

impl ServiceConfig {
    /// The config with `${name}` replaced by the host's variables (the
    /// agent's `[vars]` plus `host`) in command, args, env values and
    /// checks. An unknown variable is an error naming it.
    pub fn with_vars(
        &self,
        vars: &BTreeMap<String, String>,
    ) -> std::result::Result<ServiceConfig, String> {
        let mut c = self.clone();
        let sub = |s: &mut String| -> std::result::Result<(), String> {
            *s = substitute(s, vars)?;
            Ok(())
        };
        for s in c
            .command
            .iter_mut()
            .chain(c.working_dir.iter_mut())
            .chain(c.args.iter_mut())
            .chain(c.env.values_mut())
        {
            sub(s)?;
        }
        if let Some(ct) = &mut c.container {
            for s in ct
                .name
                .iter_mut()
                .chain(ct.command.iter_mut())
                .chain(ct.env.values_mut())
                .chain(ct.ports.iter_mut())
                .chain(ct.mounts.iter_mut())
            {
                sub(s)?;
            }
        }
        for check in &mut c.checks {
            for s in check
                .url
                .iter_mut()
                .chain(check.address.iter_mut())
                .chain(check.command.iter_mut())
                .chain(check.args.iter_mut())
            {
                sub(s)?;
            }
        }
        // A host's variable may bring what the file could not: a NUL, a `..`.
        let after = |e: String| format!("{e} (after the host's [vars])");
        check_text("command", &c.command).map_err(after)?;
        check_text("working_dir", &c.working_dir).map_err(after)?;
        check_text("args", &c.args).map_err(after)?;
        check_text("env", c.env.values()).map_err(after)?;
        if let Some(ct) = &c.container {
            check_text("container.command", &ct.command).map_err(after)?;
            check_text("container.env", ct.env.values()).map_err(after)?;
        }
        if c.runner == RunnerKind::Process {
            c.check_process_paths().map_err(after)?;
        }
        for (i, check) in c.checks.iter().enumerate() {
            check
                .validate(true)
                .map_err(|e| format!("checks[{i}].{e} (after the host's [vars])"))?;
        }
        Ok(c)
    }
}

fn substitute(s: &str, vars: &BTreeMap<String, String>) -> std::result::Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find("${") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| format!("unclosed `${{` in {s:?}"))?;
        let name = &after[..end];
        let value = vars.get(name).ok_or_else(|| {
            format!("variable `${{{name}}}` is not set on this host; add it to the agent's [vars]")
        })?;
        out.push_str(value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// The number of a signal named like `SIGTERM` or `TERM`.
pub fn signal_number(name: &str) -> std::result::Result<i32, String> {
    let n = name.strip_prefix("SIG").unwrap_or(name);
    Ok(match n {
        "TERM" => 15,
        "INT" => 2,
        "QUIT" => 3,
        "HUP" => 1,
        "KILL" => 9,
        "USR1" => 10,
        "USR2" => 12,
        _ => {
            return Err(format!(
                "unknown signal {name:?}; use SIGTERM, SIGINT, SIGQUIT, SIGHUP, SIGUSR1, SIGUSR2 or SIGKILL"
            ))
        }
    })
}

#[cfg(test)]
mod tests;
