//! Releases of `cutover-sample` for rollout tests: built with the CLI's
//! bundle code, signed and imported with the real CLI, served on a port
//! per (host, service) that the agents get through their `[vars]`.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::time::Duration;

use cutover_cli::bundle::{self, Floor, Service};

use crate::{bin, free_port, Fleet};

/// One service of a sample release.
pub struct Svc<'a> {
    pub name: &'a str,
    pub version: &'a str,
    pub depends_on: &'a [&'a str],
    pub healthy: bool,
    /// Incompressible bytes added to the tarball, to make it large.
    pub ballast: usize,
}

impl<'a> Svc<'a> {
    pub fn new(name: &'a str, version: &'a str) -> Svc<'a> {
        Svc {
            name,
            version,
            depends_on: &[],
            healthy: true,
            ballast: 0,
        }
    }

    pub fn ballast(mut self, bytes: usize) -> Svc<'a> {
        self.ballast = bytes;
        self
    }

    pub fn after(mut self, deps: &'a [&'a str]) -> Svc<'a> {
        self.depends_on = deps;
        self
    }

    pub fn sick(mut self) -> Svc<'a> {
        self.healthy = false;
        self
    }
}

impl Fleet {
    /// Gives every host a port for every service (`${<service>_port}`).
    pub fn assign_ports(&mut self, hosts: &[&str], services: &[&str]) {
        for h in hosts {
            let vars = self.agent_vars.entry(h.to_string()).or_default();
            for s in services {
                vars.push((format!("{s}_port"), free_port().to_string()));
            }
        }
    }

    pub fn port_of(&self, host: &str, service: &str) -> u16 {
        let key = format!("{service}_port");
        self.agent_vars[host]
            .iter()
            .find(|(k, _)| *k == key)
            .expect("port assigned")
            .1
            .parse()
            .expect("port")
    }

    /// What the sample service on `host` answers on `/`: its release version.
    pub fn served_version(&self, host: &str, service: &str) -> Option<String> {
        http_get(self.port_of(host, service), "/").map(|b| b.trim().to_string())
    }

    /// The tarball digest `release list` shows for `service` in `release`.
    pub fn tarball_sha(&self, release: &str, service: &str) -> String {
        let list = self.cli_json(&["release", "list"]);
        let r = list
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["version"] == release)
            .unwrap();
        let s = r["services"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == service)
            .unwrap();
        s["tarball_sha256"].as_str().unwrap().to_string()
    }

    /// Builds, signs and imports a release of sample services.
    pub fn sample_release(&self, version: &str, services: &[Svc<'_>], floor: Floor) -> PathBuf {
        let binary = std::fs::read(bin("cutover-sample")).expect("sample binary");
        let list: Vec<Service> = services
            .iter()
            .map(|s| Service {
                name: s.name.into(),
                service_version: s.version.into(),
                depends_on: s.depends_on.iter().map(|d| d.to_string()).collect(),
                databases: Vec::new(),
                data_migrations: Vec::new(),
                files: {
                    let mut files = bundle::sample_files(&binary, s.version, s.healthy);
                    if s.ballast > 0 {
                        files.push(bundle::File::new(
                            "ballast.bin",
                            bundle::noise(s.ballast),
                            0o644,
                        ));
                    }
                    files
                },
            })
            .collect();
        let dir = self.path(&format!("release-{version}"));
        let manifest = bundle::write_release(&dir, version, &list, &floor).expect("write release");
        crate::sign_and_import(|a| self.cli(a), &manifest, &self.path("release.key")).ok();
        manifest
    }

    /// Applies a fleet config running every listed service on `hosts`.
    pub fn apply_sample_fleet(&self, hosts: &[&str], services: &[&str], policy: &str) {
        self.apply_fleet_text(&sample_fleet(hosts, services, policy));
    }

    pub fn apply_fleet_text(&self, text: &str) {
        let path = self.path("fleet.toml");
        std::fs::write(&path, text).expect("write fleet");
        self.cli(&["fleet", "apply", path.to_str().expect("utf-8")])
            .ok();
    }

    /// Writes `text` as `dir/release.toml`, signs it with the fleet's
    /// release key and imports it with the real CLI.
    pub fn sign_and_import(&self, dir: &std::path::Path, text: &str) -> crate::Run {
        let manifest = dir.join("release.toml");
        std::fs::write(&manifest, text).expect("manifest");
        crate::sign_and_import(|a| self.cli(a), &manifest, &self.path("release.key"))
    }

    /// Imports a release of one service whose tarball is exactly `bytes`.
    pub fn raw_release(&self, version: &str, service: &str, bytes: &[u8]) {
        let dir = self.path(&format!("release-{version}"));
        std::fs::create_dir_all(&dir).expect("release dir");
        std::fs::write(dir.join("artifact.tar.gz"), bytes).expect("artifact");
        let text = format!(
            "version = \"{version}\"\ncreated = 2026-01-01T00:00:00Z\nexpires = 2099-01-01T00:00:00Z\n[[services]]\nname = \"{service}\"\nservice_version = \"{version}\"\ntarball = {{ sha256 = \"{}\", size = {}, file = \"artifact.tar.gz\" }}\n",
            cutover_core::Sha256Digest::of(bytes),
            bytes.len()
        );
        self.sign_and_import(&dir, &text).ok();
    }
}

/// Fleet config text running every listed sample service on `hosts`.
pub fn sample_fleet(hosts: &[&str], services: &[&str], policy: &str) -> String {
    {
        let list = hosts
            .iter()
            .map(|h| format!("\"{h}\""))
            .collect::<Vec<_>>()
            .join(", ");
        let mut text = String::new();
        for s in services {
            text.push_str(&format!(
                r#"
[services.{s}]
hosts = [{list}]
runner = "process"
command = "bin/cutover-sample"
args = ["--port", "${{{s}_port}}"]
stop_grace = "2s"
min_healthy_time = "1s"
healthy_deadline = "4s"
[[services.{s}.checks]]
kind = "http"
url = "http://127.0.0.1:${{{s}_port}}/healthz"
interval = "200ms"
timeout = "1s"
[services.{s}.policy]
{policy}
"#
            ));
        }
        text
    }
}

/// A plain HTTP GET on loopback; the body, or None when nothing answers.
pub fn http_get(port: u16, path: &str) -> Option<String> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    buf.split_once("\r\n\r\n").map(|(_, b)| b.to_string())
}

impl Fleet {
    /// `cutover upgrade WHAT --version V --yes --wait EXTRA…`
    pub fn upgrade(&self, what: &[&str], version: &str, extra: &[&str]) -> crate::Run {
        let mut args = vec!["upgrade"];
        args.extend(what);
        args.extend(["--version", version, "--yes", "--wait"]);
        args.extend(extra);
        self.cli(&args)
    }

    /// `cutover rollout show ID --output json`: the rollout and its events.
    pub fn rollout(&self, id: u64) -> crate::Value {
        self.cli_json(&["rollout", "show", &id.to_string()])
    }

    pub fn last_rollout(&self) -> crate::Value {
        let list = self.cli_json(&["rollout", "list"]);
        self.rollout(crate::id(&list[0]["id"]))
    }

    /// The pid in a service's pid file on `host`.
    pub fn service_pid(&self, host: &str, service: &str) -> Option<i32> {
        let text = std::fs::read_to_string(
            self.agent_dir(host)
                .join("services")
                .join(service)
                .join("pid"),
        )
        .ok()?;
        text.split_whitespace().next()?.parse().ok()
    }

    /// The stage of the operation in progress in a service's journal.
    pub fn journal_stage(&self, host: &str, service: &str) -> Option<String> {
        let text = std::fs::read_to_string(
            self.agent_dir(host)
                .join("services")
                .join(service)
                .join("journal.json"),
        )
        .ok()?;
        let j: crate::Value = serde_json::from_str(&text).ok()?;
        let op = j.get("op")?.as_object()?;
        let (_, body) = op.iter().next()?;
        body["stage"].as_str().map(String::from)
    }
}

/// (service, host) of every step in `phase`.
pub fn steps(r: &crate::Value, phase: &str) -> Vec<(String, String)> {
    r["rollout"]["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .filter(|s| s["phase"] == phase)
        .map(|s| {
            (
                s["service"].as_str().unwrap_or_default().to_string(),
                s["host"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// Positions of the events matching `pred(kind, detail)`.
pub fn event_index(r: &crate::Value, pred: impl Fn(&str, &str) -> bool) -> Vec<usize> {
    r["events"]
        .as_array()
        .expect("events")
        .iter()
        .enumerate()
        .filter(|(_, e)| {
            pred(
                e["kind"].as_str().unwrap_or_default(),
                e["detail"].as_str().unwrap_or_default(),
            )
        })
        .map(|(i, _)| i)
        .collect()
}
