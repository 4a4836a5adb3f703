//! Container images for tests on the real Docker engine, built locally
//! `FROM scratch` with Debian's static busybox (nothing can be pulled), and
//! a guard that removes every container and image a test made, even when
//! it fails. Without an engine these helpers panic: the tests fail, they
//! never skip.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Runs `docker ARGS`; panics with its stderr when it fails.
pub fn docker(args: &[&str]) -> String {
    let out = Command::new("docker")
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run docker {args:?}: {e}; the Docker tests need a Docker engine")
        });
    assert!(
        out.status.success(),
        "docker {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// `docker build` of the context `ctx` as `tag`. No cache: parallel tests
/// remove their images, and a cached layer shared with another test may
/// vanish mid-build.
pub fn build_image(ctx: &std::path::Path, tag: &str) {
    docker(&[
        "build",
        "-q",
        "--no-cache",
        "-t",
        tag,
        ctx.to_str().unwrap(),
    ]);
}

/// Removes every container whose name contains `prefix` (for cleanup:
/// errors are ignored).
pub fn remove_containers(prefix: &str) {
    let Ok(out) = Command::new("docker")
        .args(["ps", "-aq", "--filter", &format!("name={prefix}")])
        .output()
    else {
        return;
    };
    for id in String::from_utf8_lossy(&out.stdout).split_whitespace() {
        let _ = Command::new("docker").args(["rm", "-f", id]).output();
    }
}

pub struct Image {
    pub id: String,
    pub tarball: PathBuf,
}

/// Names everything a test creates, and removes it on drop.
pub struct Scope {
    pub prefix: String,
    images: Vec<String>,
}

impl Scope {
    pub fn new(test: &str) -> Scope {
        let busybox = Path::new("/bin/busybox");
        assert!(
            busybox.is_file(),
            "/bin/busybox is missing: install Debian's busybox-static (.ci/run does)"
        );
        Scope {
            prefix: format!("cutover-test-{test}-{}", std::process::id()),
            images: Vec::new(),
        }
    }

    /// Builds a busybox httpd image serving `/` with `version` and, when
    /// healthy, `/healthz`; saves it to `dir` and removes it from the
    /// engine so the agent has to load it.
    pub fn image(&mut self, dir: &Path, version: &str, healthy: bool) -> Image {
        self.image_with(dir, version, healthy, None)
    }

    /// Like [`Scope::image`], with a Docker `HEALTHCHECK` instruction.
    pub fn image_with(
        &mut self,
        dir: &Path,
        version: &str,
        healthy: bool,
        healthcheck: Option<&str>,
    ) -> Image {
        let (tag, id) = self.build(dir, version, healthy, healthcheck);
        let tarball = dir.join(format!("image-{version}.tar"));
        docker(&["save", "-o", tarball.to_str().unwrap(), &tag]);
        docker(&["rmi", &tag]);
        Image { id, tarball }
    }

    /// Builds the image and pushes it to `registry`; returns its ID and
    /// its reference by digest. The engine keeps no copy, so an agent has
    /// to pull it.
    pub fn pushed(&mut self, dir: &Path, version: &str, registry: &Registry) -> (String, String) {
        let (tag, id) = self.build(dir, version, true, None);
        let remote = format!("127.0.0.1:{}/{}:{version}", registry.port, self.prefix);
        docker(&["tag", &tag, &remote]);
        docker(&["push", &remote]);
        let digests = docker(&[
            "image",
            "inspect",
            "--format",
            "{{json .RepoDigests}}",
            &remote,
        ]);
        let reference = digests
            .trim_matches(|c| c == '[' || c == ']')
            .split(',')
            .map(|d| d.trim_matches('"'))
            .find(|d| d.starts_with(&format!("127.0.0.1:{}/", registry.port)))
            .expect("pushed image has a repo digest")
            .to_string();
        docker(&["rmi", &tag, &remote]);
        (id, reference)
    }

    fn build(
        &mut self,
        dir: &Path,
        version: &str,
        healthy: bool,
        healthcheck: Option<&str>,
    ) -> (String, String) {
        let ctx = dir.join(format!("image-{version}"));
        std::fs::create_dir_all(ctx.join("www")).unwrap();
        std::fs::copy("/bin/busybox", ctx.join("busybox")).unwrap();
        std::fs::write(ctx.join("www/index.html"), format!("{version}\n")).unwrap();
        std::fs::write(ctx.join("nonce"), &self.prefix).unwrap();
        if healthy {
            std::fs::write(ctx.join("www/healthz"), "ok\n").unwrap();
        }
        std::fs::write(
            ctx.join("Dockerfile"),
            format!(
                "FROM scratch\nCOPY busybox /bin/busybox\nCOPY nonce /nonce\nCOPY www /www\n{}ENTRYPOINT [\"/bin/busybox\", \"httpd\", \"-f\", \"-v\", \"-p\", \"8080\", \"-h\", \"/www\"]\n",
                healthcheck.map(|h| format!("HEALTHCHECK {h}\n")).unwrap_or_default()
            ),
        )
        .unwrap();
        let tag = format!("{}:{version}", self.prefix);
        build_image(&ctx, &tag);
        let id = docker(&["image", "inspect", "--format", "{{.Id}}", &tag]);
        self.images.push(id.clone());
        (tag, id)
    }

    /// Running containers whose name starts with `name`, with their images.
    pub fn running(&self, name: &str) -> Vec<(String, String)> {
        docker(&[
            "ps",
            "--filter",
            &format!("name=^/{name}"),
            "--format",
            "{{.Names}} {{.ID}}",
        ])
        .lines()
        .filter_map(|l| {
            let (n, id) = l.split_once(' ')?;
            let image = docker(&["inspect", "--format", "{{.Image}}", id]);
            Some((n.to_string(), image))
        })
        .collect()
    }
}

impl Drop for Scope {
    fn drop(&mut self) {
        remove_containers(&self.prefix);
        for id in &self.images {
            let _ = Command::new("docker").args(["rmi", "-f", id]).output();
        }
    }
}

/// A real registry (Debian's `docker-registry`) on a loopback port, with
/// its storage in `dir`; stopped on drop.
pub struct Registry {
    pub port: u16,
    child: std::process::Child,
}

impl Registry {
    pub fn start(dir: &Path) -> Registry {
        let port = crate::free_port();
        std::fs::create_dir_all(dir).unwrap();
        let config = dir.join("config.yml");
        std::fs::write(
            &config,
            format!("version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n", dir.join("data").display()),
        )
        .unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.join("registry.log")).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start docker-registry: {e}; install Debian's docker-registry (.ci/run does)"));
        crate::eventually(
            std::time::Duration::from_secs(10),
            "the registry to listen",
            || {
                std::net::TcpStream::connect(("127.0.0.1", port))
                    .ok()
                    .map(|_| ())
            },
        );
        Registry { port, child }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl crate::Fleet {
    /// Signs and imports a release whose `service` image is pulled from a
    /// registry by `reference`, pinned to `pinned_id`.
    pub fn registry_release(&self, version: &str, service: &str, pinned_id: &str, reference: &str) {
        let dir = self.path(&format!("release-{version}"));
        std::fs::create_dir_all(&dir).unwrap();
        let text = format!(
            "version = \"{version}\"\ncreated = 2026-01-01T00:00:00Z\nexpires = 2099-01-01T00:00:00Z\n[[services]]\nname = \"{service}\"\nservice_version = \"{version}\"\nimage = {{ id = \"{pinned_id}\", reference = \"{reference}\" }}\n"
        );
        self.sign_and_import(&dir, &text).ok();
    }

    /// Signs and tries to import a release of `service` as the image
    /// tarball of `image`, pinned to `pinned_id`.
    pub fn image_release(
        &self,
        version: &str,
        service: &str,
        image: &Image,
        pinned_id: &str,
    ) -> crate::Run {
        let dir = self.path(&format!("release-{version}"));
        std::fs::create_dir_all(&dir).unwrap();
        let bytes = std::fs::read(&image.tarball).unwrap();
        std::fs::write(dir.join("image.tar"), &bytes).unwrap();
        let text = format!(
            "version = \"{version}\"\ncreated = 2026-01-01T00:00:00Z\nexpires = 2099-01-01T00:00:00Z\n[[services]]\nname = \"{service}\"\nservice_version = \"{version}\"\nimage = {{ id = \"{pinned_id}\", tarball_sha256 = \"{}\", size = {}, file = \"image.tar\" }}\n",
            cutover_core::Sha256Digest::of(&bytes),
            bytes.len()
        );
        self.sign_and_import(&dir, &text)
    }
}

/// A fleet config running `service` in a container on `hosts`; each
/// host's container is named `<prefix>-<host>` and publishes 8080 on the
/// host's `${<service>_port}`.
pub fn container_fleet(prefix: &str, hosts: &[&str], service: &str, extra: &str) -> String {
    let list = hosts
        .iter()
        .map(|h| format!("\"{h}\""))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        r#"
[services.{service}]
hosts = [{list}]
runner = "docker"
stop_grace = "1s"
min_healthy_time = "1s"
# Room for the engine's own HEALTHCHECK (1 s interval) to report under load:
# once seen at 5 s, a healthy image was still "starting".
healthy_deadline = "10s"
{extra}
[services.{service}.container]
name = "{prefix}-${{host}}"
ports = ["127.0.0.1:${{{service}_port}}:8080"]
env = {{ GREETING = "hello" }}
labels = {{ team = "edge" }}
restart = "unless-stopped"
[[services.{service}.checks]]
kind = "http"
url = "http://127.0.0.1:${{{service}_port}}/healthz"
interval = "200ms"
timeout = "1s"
"#
    )
}
