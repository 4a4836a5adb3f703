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
}

impl<'a> Svc<'a> {
    pub fn new(name: &'a str, version: &'a str) -> Svc<'a> {
        Svc {
            name,
            version,
            depends_on: &[],
            healthy: true,
        }
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

    /// Builds, signs and imports a release of sample services.
    pub fn sample_release(&self, version: &str, services: &[Svc<'_>], floor: Floor) -> PathBuf {
        let binary = std::fs::read(bin("cutover-sample")).expect("sample binary");
        let list: Vec<Service> = services
            .iter()
            .map(|s| Service {
                name: s.name.into(),
                service_version: s.version.into(),
                depends_on: s.depends_on.iter().map(|d| d.to_string()).collect(),
                files: bundle::sample_files(&binary, s.version, s.healthy),
            })
            .collect();
        let dir = self.path(&format!("release-{version}"));
        let manifest = bundle::write_release(&dir, version, &list, &floor).expect("write release");
        let m = manifest.to_str().expect("utf-8");
        let key = self.path("release.key");
        self.cli(&["release", "sign", m, "--key", key.to_str().expect("utf-8")])
            .ok();
        self.cli(&["release", "import", m]).ok();
        manifest
    }

    /// Applies a fleet config running every listed service on `hosts`.
    pub fn apply_sample_fleet(&self, hosts: &[&str], services: &[&str], policy: &str) {
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
        let path = self.path("fleet.toml");
        std::fs::write(&path, text).expect("write fleet");
        self.cli(&["fleet", "apply", path.to_str().expect("utf-8")])
            .ok();
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
