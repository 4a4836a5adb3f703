//! A cutover fleet in Docker containers on a private network: one
//! controller and several agent hosts, each its own container built
//! `FROM scratch` with our binaries and the C runtime they link, their
//! state on bind-mounted directories so a container can be killed and
//! started again. The operator CLI runs on the test host against the
//! controller's published port. Everything is removed on drop.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::docker::docker;
use crate::{bin, eventually, Run, Value};

const PORT: u16 = 7443;

/// The host image: our binaries (stripped), busybox, and the libraries
/// `ldd` names. Built once per test process.
pub fn host_image(work: &Path) -> String {
    let ctx = work.join("host-image");
    std::fs::create_dir_all(ctx.join("bin")).unwrap();
    for name in ["cutover-agent", "cutover-controller", "cutover-sample"] {
        let out = ctx.join("bin").join(name);
        let status = Command::new("strip")
            .arg("-o")
            .arg(&out)
            .arg(bin(name))
            .status()
            .expect("strip");
        assert!(status.success(), "strip {name}");
    }
    std::fs::copy("/bin/busybox", ctx.join("bin/busybox")).expect("busybox-static");
    let ldd = Command::new("ldd")
        .arg(bin("cutover-agent"))
        .output()
        .expect("ldd");
    let mut copies = String::new();
    for line in String::from_utf8_lossy(&ldd.stdout).lines() {
        let path = line
            .split("=>")
            .last()
            .unwrap_or("")
            .split_whitespace()
            .next()
            .unwrap_or("");
        if path.starts_with('/') {
            let name = Path::new(path)
                .file_name()
                .unwrap()
                .to_string_lossy()
                .into_owned();
            std::fs::copy(path, ctx.join(&name)).unwrap();
            copies.push_str(&format!("COPY {name} {path}\n"));
        }
    }
    std::fs::write(
        ctx.join("Dockerfile"),
        format!("FROM scratch\n{copies}COPY bin/ /bin/\nENTRYPOINT []\n"),
    )
    .unwrap();
    let tag = format!("cutover-host:test-{}", std::process::id());
    crate::docker::build_image(&ctx, &tag);
    tag
}

pub struct Cluster {
    pub work: PathBuf,
    pub prefix: String,
    pub network: String,
    pub image: String,
    pub hosts: Vec<String>,
    pub cli_port: u16,
    /// Hosts whose data directory is a size-limited tmpfs (host, size): a
    /// small disk that an unpack can fill. Lost if the container stops.
    disks: Vec<(String, String)>,
}

/// How the sample runs: its own binary, stopped by SIGTERM.
pub const RUN_SAMPLE: &str =
    "command = \"bin/cutover-sample\"\nargs = [\"--port\", \"8080\"]\nstop_grace = \"2s\"\n";

/// The sample behind a shell that makes it ignore SIGTERM, so stopping it
/// takes the whole 4 s grace: a wide window between download and swap.
pub const RUN_SAMPLE_IGNORING_TERM: &str = "command = \"/bin/busybox\"\nargs = [\"sh\", \"-c\", \"trap '' TERM; exec bin/cutover-sample --port 8080\"]\nstop_grace = \"4s\"\n";

impl Cluster {
    /// PKI, release key, network, controller and `hosts` enrolled agents;
    /// `disks` gives some hosts a small data disk (host, tmpfs size).
    pub fn start(work: &Path, hosts: &[&str], disks: &[(&str, &str)]) -> Cluster {
        let prefix = format!("cutover-faults-{}", std::process::id());
        let image = host_image(work);
        let network = format!("{prefix}-net");
        docker(&["network", "create", &network]);
        let c = Cluster {
            work: work.to_path_buf(),
            prefix: prefix.clone(),
            network,
            image,
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
            cli_port: crate::free_port(),
            disks: disks
                .iter()
                .map(|(h, size)| (h.to_string(), size.to_string()))
                .collect(),
        };
        let ctl = c.controller_name();
        c.cli(&[
            "pki",
            "init",
            "--dir",
            c.work.join("pki").to_str().unwrap(),
            "--controller-host",
            &format!("{ctl},127.0.0.1"),
        ])
        .ok();
        c.cli(&[
            "release",
            "keygen",
            "--out",
            c.work.join("release").to_str().unwrap(),
        ])
        .ok();
        std::fs::write(
            c.work.join("controller.toml"),
            format!(
                "listen = \"0.0.0.0:{PORT}\"\ndata_dir = \"/work/controller\"\nagent_cert_ttl = \"1h\"\n[tls]\nca_cert = \"/work/pki/ca.pem\"\nca_key = \"/work/pki/ca-key.pem\"\ncert = \"/work/pki/controller.pem\"\nkey = \"/work/pki/controller-key.pem\"\n[releases]\ntrusted_keys = [\"/work/release.pub\"]\n"
            ),
        )
        .unwrap();
        c.start_controller();
        for h in hosts {
            let token = c
                .cli(&["token", "create", h])
                .ok()
                .stdout
                .trim()
                .to_string();
            let dir = c.work.join(format!("host-{h}"));
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(
                dir.join("agent.toml"),
                format!(
                    "controller = \"https://{ctl}:{PORT}\"\nca_cert = \"/work/pki/ca.pem\"\ndata_dir = \"/host/data\"\nheartbeat_interval = \"500ms\"\nreconnect_max_backoff = \"1s\"\nautonomous_rollback_after = \"5s\"\n"
                ),
            )
            .unwrap();
            std::fs::write(dir.join("token"), token).unwrap();
            c.run_agent(h);
        }
        eventually(Duration::from_secs(60), "every agent online", || {
            let v = c.cli_json(&["hosts"]);
            (v.as_array()?.iter().filter(|h| h["online"] == true).count() == hosts.len())
                .then_some(())
        });
        c
    }

    pub fn controller_name(&self) -> String {
        format!("{}-ctl", self.prefix)
    }

    pub fn host_container(&self, host: &str) -> String {
        format!("{}-{host}", self.prefix)
    }

    pub fn start_controller(&self) {
        let name = self.controller_name();
        let _ = Command::new("docker").args(["rm", "-f", &name]).output();
        let work = format!("{}:/work", self.work.display());
        let publish = format!("127.0.0.1:{}:{PORT}", self.cli_port);
        docker(&[
            "run",
            "-d",
            "--name",
            &name,
            "--hostname",
            &name,
            "--network",
            &self.network,
            "-v",
            &work,
            "-p",
            &publish,
            "-e",
            "RUST_LOG=info",
            &self.image,
            "/bin/cutover-controller",
            "--config",
            "/work/controller.toml",
        ]);
        eventually(Duration::from_secs(30), "the controller to answer", || {
            (self.cli(&["hosts"]).code == 0).then_some(())
        });
    }

    fn run_agent(&self, host: &str) {
        let name = self.host_container(host);
        let dir = format!("{}:/host", self.work.join(format!("host-{host}")).display());
        let work = format!("{}/pki:/work/pki:ro", self.work.display());
        let mut args = vec![
            "run",
            "-d",
            "--name",
            &name,
            "--hostname",
            host,
            "--network",
            &self.network,
            "-v",
            &dir,
            "-v",
            &work,
            "-e",
            "RUST_LOG=info",
        ];
        let tmpfs = self
            .disks
            .iter()
            .find(|(h, _)| h == host)
            .map(|(_, size)| format!("/host/data:rw,exec,size={size}"));
        if let Some(t) = &tmpfs {
            args.extend(["--tmpfs", t.as_str()]);
        }
        args.extend([
            self.image.as_str(),
            "/bin/busybox",
            "sh",
            "-c",
            "exec /bin/cutover-agent --config /host/agent.toml --join-token \"$(cat /host/token)\"",
        ]);
        docker(&args);
    }

    /// `docker kill` then `docker start`: the host's processes all die.
    pub fn kill_and_restart(&self, container: &str) {
        docker(&["kill", container]);
        docker(&["start", container]);
    }

    /// Runs the real CLI on the test host against the controller.
    pub fn cli(&self, args: &[&str]) -> Run {
        crate::run_cli(
            &format!("https://127.0.0.1:{}", self.cli_port),
            &self.work.join("pki"),
            args,
        )
    }

    pub fn cli_json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.extend(["--output", "json"]);
        self.cli(&all).ok().json()
    }

    /// What the sample service on `host` answers, asked inside the host.
    pub fn served(&self, host: &str) -> Option<String> {
        let out = Command::new("docker")
            // busybox 1.35's `wget -T` crashes; its `timeout` applet bounds it instead.
            .args([
                "exec",
                &self.host_container(host),
                "/bin/busybox",
                "timeout",
                "5",
                "/bin/busybox",
                "wget",
                "-q",
                "-O",
                "-",
                "http://127.0.0.1:8080/",
            ])
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// How many sample processes run inside the host.
    pub fn service_processes(&self, host: &str) -> usize {
        let out = docker(&[
            "exec",
            &self.host_container(host),
            "/bin/busybox",
            "ps",
            "-o",
            "args",
        ]);
        out.lines()
            .filter(|l| l.contains("cutover-sample") && !l.contains("ps"))
            .count()
    }

    /// Waits for a rollout to end; returns its final status and how long.
    pub fn wait_final(&self, id: u64, timeout: Duration) -> (String, Duration) {
        let start = Instant::now();
        let status = eventually(timeout, &format!("rollout {id} to end"), || {
            let r = self.cli(&["rollout", "show", &id.to_string(), "--output", "json"]);
            if r.code != 0 {
                return None;
            }
            let status = r.json()["rollout"]["status"].as_str()?.to_string();
            ["succeeded", "rolled_back", "failed", "aborted"]
                .contains(&status.as_str())
                .then_some(status)
        });
        (status, start.elapsed())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        crate::docker::remove_containers(&self.prefix);
        let _ = Command::new("docker")
            .args(["network", "rm", &self.network])
            .output();
        let _ = Command::new("docker")
            .args(["rmi", "-f", &self.image])
            .output();
    }
}

impl Cluster {
    /// Builds, signs and imports release `version` of the sample `web`.
    pub fn sample_release(&self, version: &str) {
        self.release(version, true, Vec::new());
    }

    /// Like [`Cluster::sample_release`]; `healthy = false` fails its check,
    /// and `extra` files ride along in the tarball.
    pub fn release(&self, version: &str, healthy: bool, extra: Vec<cutover_cli::bundle::File>) {
        use cutover_cli::bundle;
        let binary = std::fs::read(bin("cutover-sample")).unwrap();
        let mut files = bundle::sample_files(&binary, version, healthy);
        files.extend(extra);
        let service = bundle::Service {
            name: "web".into(),
            service_version: version.into(),
            depends_on: vec![],
            databases: Vec::new(),
            data_migrations: Vec::new(),
            files,
        };
        let dir = self.work.join(format!("release-{version}"));
        let manifest =
            bundle::write_release(&dir, version, &[service], &bundle::Floor::default()).unwrap();
        crate::sign_and_import(|a| self.cli(a), &manifest, &self.work.join("release.key")).ok();
    }

    /// Applies the fleet config: `web` on every host, run as `run` says
    /// ([`RUN_SAMPLE`] or [`RUN_SAMPLE_IGNORING_TERM`]), with `policy`.
    pub fn apply_fleet(&self, run: &str, policy: &str) {
        let hosts = self
            .hosts
            .iter()
            .map(|h| format!("\"{h}\""))
            .collect::<Vec<_>>()
            .join(", ");
        let text = format!(
            "[services.web]\nhosts = [{hosts}]\nrunner = \"process\"\n{run}min_healthy_time = \"1s\"\nhealthy_deadline = \"6s\"\n[[services.web.checks]]\nkind = \"http\"\nurl = \"http://127.0.0.1:8080/healthz\"\ninterval = \"250ms\"\ntimeout = \"1s\"\n[services.web.policy]\n{policy}\n"
        );
        let path = self.work.join("fleet.toml");
        std::fs::write(&path, text).unwrap();
        self.cli(&["fleet", "apply", path.to_str().unwrap()]).ok();
    }

    /// The stage in the journal of `web` on `host`, read from its volume.
    pub fn stage(&self, host: &str) -> Option<String> {
        let path = self
            .work
            .join(format!("host-{host}/data/services/web/journal.json"));
        let j: Value = serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()?;
        let (_, body) = j.get("op")?.as_object()?.iter().next()?;
        body["stage"].as_str().map(String::from)
    }

    /// The invariants after a scenario: every host runs exactly one
    /// release of `web`, one of `allowed`, and the controller's record of
    /// each host matches what the host itself serves. Returns the problems.
    pub fn check_invariants(&self, allowed: &[&str]) -> Vec<String> {
        let mut problems = Vec::new();
        let hosts = self.cli_json(&["hosts"]);
        for h in &self.hosts {
            let served = self.served(h);
            let processes = self.service_processes(h);
            if processes != 1 {
                problems.push(format!("{h}: {processes} service processes"));
            }
            match &served {
                Some(v) if allowed.contains(&v.as_str()) => {}
                other => problems.push(format!("{h} serves {other:?}, not one of {allowed:?}")),
            }
            let recorded = hosts
                .as_array()
                .and_then(|a| a.iter().find(|x| x["name"] == h.as_str()))
                .and_then(|x| {
                    x["services"]
                        .as_array()?
                        .iter()
                        .find(|s| s["name"] == "web")
                        .cloned()
                })
                .and_then(|s| s["current"]["release"].as_str().map(String::from));
            if recorded != served {
                problems.push(format!(
                    "{h}: controller records {recorded:?}, host serves {served:?}"
                ));
            }
        }
        problems
    }
}

impl Cluster {
    /// The record of a finished rollout is whole: every planned host has
    /// exactly one step, every step is final and its outcome has its event,
    /// the events run in time order from `rollout.created` to exactly one
    /// `rollout.finished`, and a stop names its host. Returns the problems.
    pub fn check_record(&self, id: u64) -> Vec<String> {
        let detail = self.cli_json(&["rollout", "show", &id.to_string()]);
        let r = &detail["rollout"];
        let none = Vec::new();
        let steps = r["steps"].as_array().unwrap_or(&none);
        let events = detail["events"].as_array().unwrap_or(&none);
        let mut problems = Vec::new();
        let mut problem = |p: String| problems.push(format!("rollout {id}: {p}"));
        for plan in r["plan"]["services"].as_array().unwrap_or(&none) {
            let service = &plan["service"];
            // A batch is a list of runs: {"from", "hosts": [...]}.
            let runs = plan["batches"]
                .as_array()
                .unwrap_or(&none)
                .iter()
                .filter_map(|b| b.as_array())
                .flatten();
            for host in runs.filter_map(|r| r["hosts"].as_array()).flatten() {
                let n = steps
                    .iter()
                    .filter(|s| s["host"] == *host && s["service"] == *service)
                    .count();
                if n != 1 {
                    problem(format!("{host}/{service}: {n} steps"));
                }
            }
        }
        let has = |kind: &str, host: &Value| {
            events
                .iter()
                .any(|e| e["kind"] == kind && (host.is_null() || e["host"] == *host))
        };
        for s in steps {
            let (host, phase) = (&s["host"], s["phase"].as_str().unwrap_or(""));
            let needs: &[&str] = match phase {
                "healthy" => &["step.healthy"],
                "rolled_back" => &["step.failed", "step.rolled_back"],
                "failed" => &["step.failed"],
                "rollback_failed" => &["step.rollback_failed"],
                "pending" => &[],
                other => {
                    problem(format!("{host}: step left in phase {other}"));
                    &[]
                }
            };
            if !needs.is_empty() && !needs.iter().any(|k| has(k, host)) {
                problem(format!("{host}: phase {phase} but no {needs:?} event"));
            }
            let started = events.iter().any(|e| {
                e["kind"] == "batch.started"
                    && e["detail"]
                        .as_str()
                        .is_some_and(|d| d.contains(host.as_str().unwrap_or("?")))
            });
            if phase != "pending" && !started {
                problem(format!("{host}: no batch.started event names it"));
            }
        }
        let kinds: Vec<&str> = events.iter().filter_map(|e| e["kind"].as_str()).collect();
        if kinds.first() != Some(&"rollout.created") {
            problem(format!("first event is {:?}", kinds.first()));
        }
        let finished = kinds.iter().filter(|k| **k == "rollout.finished").count();
        let aborted = r["status"] == "aborted";
        if !aborted && (finished != 1 || kinds.last() != Some(&"rollout.finished")) {
            problem(format!(
                "{finished} rollout.finished event(s), last {:?}",
                kinds.last()
            ));
        }
        if events
            .windows(2)
            .any(|w| crate::instant(&w[0]["at"]) > crate::instant(&w[1]["at"]))
        {
            problem("events out of time order".into());
        }
        let failed_host = &r["failure"]["host"];
        if !failed_host.is_null() && !has("rollout.stopped", failed_host) {
            problem(format!(
                "failure on {failed_host} without a rollout.stopped event"
            ));
        }
        problems
    }

    /// Bytes used on the data disk of `host`, asked inside the host.
    pub fn disk_used(&self, host: &str) -> u64 {
        let out = docker(&[
            "exec",
            &self.host_container(host),
            "/bin/busybox",
            "df",
            "-k",
            "/host/data",
        ]);
        let kib: u64 = out
            .lines()
            .nth(1)
            .and_then(|l| l.split_whitespace().nth(2))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("df on {host}: {out}"));
        kib * 1024
    }

    /// What the container has written to stdout and stderr.
    pub fn logs(&self, container: &str) -> String {
        let out = Command::new("docker")
            .args(["logs", container])
            .output()
            .expect("docker logs");
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    /// Waits until the controller counts `host` online (or offline).
    pub fn wait_online(&self, host: &str, online: bool) {
        eventually(
            Duration::from_secs(30),
            &format!("{host} online={online}"),
            || {
                self.cli_json(&["hosts"])
                    .as_array()?
                    .iter()
                    .find(|h| h["name"] == host && h["online"] == online)
                    .map(|_| ())
            },
        );
    }
}
