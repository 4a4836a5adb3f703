//! Container services through the Docker Engine API (bollard): loading an
//! image tarball or pulling by digest and checking the engine's image ID
//! against the pinned one, swapping containers (the previous one is kept,
//! stopped, as `<name>-previous`), going back, and reporting state. Only
//! containers labelled `cutover.service=<service>` are ever touched.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, HostConfig, PortBinding, RestartPolicy,
    RestartPolicyNameEnum,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptionsBuilder, ImportImageOptionsBuilder,
    LogsOptionsBuilder, RemoveContainerOptionsBuilder, RenameContainerOptionsBuilder,
    StopContainerOptionsBuilder,
};
use bollard::Docker;
use cutover_core::fleet::{ContainerConfig, ServiceConfig};
use cutover_core::Sha256Digest;
use futures::StreamExt;

const LABEL: &str = "cutover.service";

/// What the engine says about a service's container.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainerStatus {
    pub exists: bool,
    pub running: bool,
    pub image: Option<String>,
    /// The image's own HEALTHCHECK verdict, when it has one.
    pub health: Option<String>,
    pub restarts: u32,
    pub pid: Option<u32>,
    pub started_at: Option<String>,
    pub exit_code: Option<i64>,
}

pub struct Engine {
    docker: Docker,
}

fn msg(e: bollard::errors::Error) -> String {
    match e {
        bollard::errors::Error::DockerResponseServerError {
            status_code,
            message,
        } => format!("engine answered {status_code}: {message}"),
        other => other.to_string(),
    }
}

fn not_found(e: &bollard::errors::Error) -> bool {
    matches!(
        e,
        bollard::errors::Error::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

/// The container's name: `container.name`, or `cutover-<service>`.
pub fn container_name(service: &str, config: &ServiceConfig) -> String {
    config
        .container
        .as_ref()
        .and_then(|c| c.name.clone())
        .unwrap_or_else(|| format!("cutover-{service}"))
}

/// The service's container name and the name its kept previous one has.
fn names(service: &str, config: &ServiceConfig) -> (String, String) {
    let name = container_name(service, config);
    let previous = format!("{name}-previous");
    (name, previous)
}

impl Engine {
    /// Connects to the local engine (DOCKER_HOST or the default socket).
    pub async fn connect() -> Result<Engine, String> {
        let unreachable = |e: String| {
            format!("no Docker engine reachable (DOCKER_HOST or /var/run/docker.sock): {e}")
        };
        let docker = Docker::connect_with_local_defaults().map_err(|e| unreachable(msg(e)))?;
        let docker = docker
            .negotiate_version()
            .await
            .map_err(|e| unreachable(msg(e)))?;
        docker.ping().await.map_err(|e| unreachable(msg(e)))?;
        Ok(Engine { docker })
    }

    /// The engine's ID for an image, if it has it.
    pub async fn image_id(&self, name: &str) -> Option<String> {
        self.docker
            .inspect_image(name)
            .await
            .ok()
            .and_then(|i| i.id)
    }

    pub async fn has_image(&self, id: &Sha256Digest) -> bool {
        self.image_id(&id.to_prefixed()).await.as_deref() == Some(id.to_prefixed().as_str())
    }

    /// Loads a verified `docker save` tarball and checks the engine now has
    /// exactly the pinned image.
    pub async fn load(&self, tarball: &Path, id: &Sha256Digest) -> Result<(), String> {
        let file = tokio::fs::File::open(tarball)
            .await
            .map_err(|e| format!("{}: {e}", tarball.display()))?;
        let body = tokio_util::io::ReaderStream::new(file).filter_map(|c| async move { c.ok() });
        let mut progress = self.docker.import_image_stream(
            ImportImageOptionsBuilder::new().quiet(true).build(),
            body,
            None,
        );
        while let Some(p) = progress.next().await {
            let info = p.map_err(|e| format!("docker load: {}", msg(e)))?;
            if let Some(e) = info.error_detail.and_then(|d| d.message).or(info.error) {
                return Err(format!("docker load: {e}"));
            }
        }
        self.expect_id(&id.to_prefixed(), id, "after loading the image tarball")
            .await
    }

    /// Pulls `reference` (pinned by digest) and checks the image ID.
    pub async fn pull(&self, reference: &str, id: &Sha256Digest) -> Result<(), String> {
        let options = CreateImageOptionsBuilder::new()
            .from_image(reference)
            .build();
        let mut progress = self.docker.create_image(Some(options), None, None);
        while let Some(p) = progress.next().await {
            let info = p.map_err(|e| format!("pull {reference}: {}", msg(e)))?;
            if let Some(e) = info.error_detail.and_then(|d| d.message).or(info.error) {
                return Err(format!("pull {reference}: {e}"));
            }
        }
        self.expect_id(reference, id, &format!("after pulling {reference}"))
            .await
    }

    async fn expect_id(&self, name: &str, id: &Sha256Digest, when: &str) -> Result<(), String> {
        match self.image_id(name).await {
            Some(got) if got == id.to_prefixed() => Ok(()),
            Some(got) => Err(format!(
                "the engine reports image {got} {when}, but the release pins {}; refused",
                id.to_prefixed()
            )),
            None => Err(format!("the engine has no image {name} {when}")),
        }
    }

    async fn inspect(&self, name: &str) -> Result<Option<ContainerInspectResponse>, String> {
        match self
            .docker
            .inspect_container(
                name,
                None::<bollard::query_parameters::InspectContainerOptions>,
            )
            .await
        {
            Ok(c) => Ok(Some(c)),
            Err(e) if not_found(&e) => Ok(None),
            Err(e) => Err(format!("inspect container {name}: {}", msg(e))),
        }
    }

    /// The container named `name`, if cutover manages it for `service`; a
    /// foreign container by that name is an error and is never touched.
    async fn ours(
        &self,
        service: &str,
        name: &str,
    ) -> Result<Option<ContainerInspectResponse>, String> {
        let Some(c) = self.inspect(name).await? else {
            return Ok(None);
        };
        let label = c
            .config
            .as_ref()
            .and_then(|k| k.labels.as_ref())
            .and_then(|l| l.get(LABEL))
            .cloned();
        if label.as_deref() != Some(service) {
            return Err(format!(
                "container name {name:?} is taken by a container cutover does not manage ({}); it is left alone: rename it, or set container.name",
                c.id.as_deref().map(|i| &i[..12.min(i.len())]).unwrap_or("?")
            ));
        }
        Ok(Some(c))
    }

    async fn stop(&self, name: &str, grace: Duration) -> Result<(), String> {
        let t = grace.as_secs().clamp(1, i32::MAX as u64) as i32;
        match self
            .docker
            .stop_container(name, Some(StopContainerOptionsBuilder::new().t(t).build()))
            .await
        {
            Ok(()) => Ok(()),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 304, ..
            }) => Ok(()),
            Err(e) => Err(format!("stop {name}: {}", msg(e))),
        }
    }

    async fn remove(&self, name: &str) -> Result<(), String> {
        match self
            .docker
            .remove_container(
                name,
                Some(RemoveContainerOptionsBuilder::new().force(true).build()),
            )
            .await
        {
            Ok(()) => Ok(()),
            Err(e) if not_found(&e) => Ok(()),
            Err(e) => Err(format!("remove {name}: {}", msg(e))),
        }
    }

    async fn rename(&self, from: &str, to: &str) -> Result<(), String> {
        self.docker
            .rename_container(from, RenameContainerOptionsBuilder::new().name(to).build())
            .await
            .map_err(|e| format!("rename {from} to {to}: {}", msg(e)))
    }

    async fn start(&self, name: &str) -> Result<(), String> {
        self.docker
            .start_container(
                name,
                None::<bollard::query_parameters::StartContainerOptions>,
            )
            .await
            .map_err(|e| format!("start {name}: {}", msg(e)))
    }

    /// Replaces the service's container with one from `image`: the current
    /// one is stopped and kept as `<name>-previous` (an older previous is
    /// removed), then the new one is created with the same settings and
    /// started.
    pub async fn replace(
        &self,
        service: &str,
        config: &ServiceConfig,
        image: &Sha256Digest,
    ) -> Result<(), String> {
        let (name, previous) = names(service, config);
        if let Some(current) = self.ours(service, &name).await? {
            if current.image.as_deref() == Some(image.to_prefixed().as_str()) {
                // A replace cut short after creating the new container.
                return self.start(&name).await;
            }
            self.ours(service, &previous).await?;
            self.remove(&previous).await?;
            self.stop(&name, config.stop_grace).await?;
            self.rename(&name, &previous).await?;
        }
        self.create(service, &name, config, image).await?;
        self.start(&name).await
    }

    async fn create(
        &self,
        service: &str,
        name: &str,
        config: &ServiceConfig,
        image: &Sha256Digest,
    ) -> Result<(), String> {
        let c = config.container.clone().unwrap_or_default();
        let body = create_body(service, &c, image)?;
        self.docker
            .create_container(
                Some(CreateContainerOptionsBuilder::new().name(name).build()),
                body,
            )
            .await
            .map_err(|e| format!("create {name} from {}: {}", image.to_prefixed(), msg(e)))?;
        Ok(())
    }

    /// Goes back: the failed container is removed and the previous one is
    /// renamed back and started.
    pub async fn restore_previous(
        &self,
        service: &str,
        config: &ServiceConfig,
    ) -> Result<(), String> {
        let (name, previous) = names(service, config);
        if self.ours(service, &previous).await?.is_none() {
            return Err(format!("no container {previous} to go back to"));
        }
        if self.ours(service, &name).await?.is_some() {
            self.stop(&name, config.stop_grace).await?;
            self.remove(&name).await?;
        }
        self.rename(&previous, &name).await?;
        self.start(&name).await
    }

    /// After an agent restart: exactly one container runs, the one of
    /// `image` if it exists, else the previous one renamed back.
    pub async fn recover(
        &self,
        service: &str,
        config: &ServiceConfig,
        image: &Sha256Digest,
    ) -> Result<(), String> {
        let (name, previous) = names(service, config);
        let current = self.ours(service, &name).await?;
        let prev = self.ours(service, &previous).await?;
        match (current, prev) {
            (None, Some(p)) => {
                tracing::info!(%service, "swap was cut short before the new container existed; previous container back");
                self.rename(&previous, &name).await?;
                if p.image.as_deref() == Some(image.to_prefixed().as_str()) || !is_running(&p) {
                    self.start(&name).await?;
                }
            }
            (Some(c), p) => {
                if let Some(p) = p.filter(is_running) {
                    let _ = p;
                    self.stop(&previous, config.stop_grace).await?;
                }
                if !is_running(&c) {
                    self.start(&name).await?;
                }
            }
            (None, None) => {
                self.create(service, &name, config, image).await?;
                self.start(&name).await?;
            }
        }
        Ok(())
    }

    /// The image of the service's container, or of the previous one when
    /// only that exists (a swap cut short: recovery renames it back).
    pub async fn image_of(&self, service: &str, config: &ServiceConfig) -> Option<String> {
        let (name, previous) = names(service, config);
        match self.ours(service, &name).await.ok()? {
            Some(c) => c.image,
            None => self.ours(service, &previous).await.ok()??.image,
        }
    }

    pub async fn stop_service(&self, service: &str, config: &ServiceConfig) -> Result<(), String> {
        let name = container_name(service, config);
        if self.ours(service, &name).await?.is_some() {
            self.stop(&name, config.stop_grace).await?;
        }
        Ok(())
    }

    pub async fn status(&self, service: &str, config: &ServiceConfig) -> ContainerStatus {
        let name = container_name(service, config);
        let Ok(Some(c)) = self.ours(service, &name).await else {
            return ContainerStatus::default();
        };
        let state = c.state.clone().unwrap_or_default();
        ContainerStatus {
            exists: true,
            running: is_running(&c),
            image: c.image.clone(),
            health: state
                .health
                .and_then(|h| h.status)
                .map(|s| s.to_string())
                .filter(|s| s != "none" && !s.is_empty()),
            restarts: c.restart_count.unwrap_or(0).max(0) as u32,
            pid: state.pid.filter(|p| *p > 0).map(|p| p as u32),
            started_at: state.started_at,
            exit_code: state.exit_code,
        }
    }

    pub async fn logs(&self, service: &str, config: &ServiceConfig, lines: usize) -> Vec<String> {
        let name = container_name(service, config);
        let options = LogsOptionsBuilder::new()
            .stdout(true)
            .stderr(true)
            .tail(&lines.to_string())
            .build();
        let mut out = Vec::new();
        let mut stream = self.docker.logs(&name, Some(options));
        while let Some(Ok(chunk)) = stream.next().await {
            out.extend(
                String::from_utf8_lossy(&chunk.into_bytes())
                    .lines()
                    .map(String::from),
            );
        }
        out
    }
}

fn is_running(c: &ContainerInspectResponse) -> bool {
    c.state.as_ref().and_then(|s| s.running).unwrap_or(false)
}

/// The create request for the service's container settings.
fn create_body(
    service: &str,
    c: &ContainerConfig,
    image: &Sha256Digest,
) -> Result<ContainerCreateBody, String> {
    let mut labels: HashMap<String, String> = c.labels.clone().into_iter().collect();
    labels.insert(LABEL.into(), service.into());
    let mut exposed: HashMap<String, HashMap<(), ()>> = HashMap::new();
    let mut bindings: HashMap<String, Option<Vec<PortBinding>>> = HashMap::new();
    for p in &c.ports {
        let parts: Vec<&str> = p.split(':').collect();
        let (ip, host, ctr) = match parts.as_slice() {
            [host, ctr] => (None, *host, *ctr),
            [ip, host, ctr] => (Some(ip.to_string()), *host, *ctr),
            _ => return Err(format!("container.ports: {p:?}")),
        };
        let key = if ctr.contains('/') {
            ctr.to_string()
        } else {
            format!("{ctr}/tcp")
        };
        exposed.insert(key.clone(), HashMap::new());
        bindings
            .entry(key)
            .or_insert_with(|| Some(Vec::new()))
            .get_or_insert_with(Vec::new)
            .push(PortBinding {
                host_ip: ip,
                host_port: Some(host.to_string()),
            });
    }
    let restart = c.restart.as_deref().map(|r| RestartPolicy {
        name: Some(match r {
            "always" => RestartPolicyNameEnum::ALWAYS,
            "unless-stopped" => RestartPolicyNameEnum::UNLESS_STOPPED,
            "on-failure" => RestartPolicyNameEnum::ON_FAILURE,
            _ => RestartPolicyNameEnum::NO,
        }),
        maximum_retry_count: None,
    });
    Ok(ContainerCreateBody {
        image: Some(image.to_prefixed()),
        cmd: (!c.command.is_empty()).then(|| c.command.clone()),
        env: Some(c.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
        labels: Some(labels),
        exposed_ports: Some(exposed),
        host_config: Some(HostConfig {
            port_bindings: Some(bindings),
            binds: (!c.mounts.is_empty()).then(|| c.mounts.clone()),
            network_mode: c.network.clone(),
            restart_policy: restart,
            memory: c.memory_bytes,
            nano_cpus: c.cpus.map(|n| (n * 1e9) as i64),
            ..HostConfig::default()
        }),
        ..ContainerCreateBody::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn no_engine_is_a_clear_error() {
        std::env::set_var("DOCKER_HOST", "unix:///nonexistent/docker.sock");
        let e = Engine::connect().await.err().unwrap();
        std::env::remove_var("DOCKER_HOST");
        assert!(e.starts_with("no Docker engine reachable"), "{e}");
    }

    #[test]
    fn settings_become_a_create_request() {
        let c = ContainerConfig {
            ports: vec!["127.0.0.1:8081:8080".into(), "9000:9000/udp".into()],
            env: [("A".to_string(), "1".to_string())].into(),
            restart: Some("unless-stopped".into()),
            cpus: Some(0.5),
            ..ContainerConfig::default()
        };
        let id = Sha256Digest::of(b"image");
        let body = create_body("web", &c, &id).unwrap();
        assert_eq!(body.image, Some(id.to_prefixed()));
        assert_eq!(body.labels.unwrap()[LABEL], "web");
        let host = body.host_config.unwrap();
        let b = host.port_bindings.unwrap();
        assert_eq!(
            b["8080/tcp"].as_ref().unwrap()[0].host_ip.as_deref(),
            Some("127.0.0.1")
        );
        assert!(b.contains_key("9000/udp"));
        assert_eq!(host.nano_cpus, Some(500_000_000));
        assert_eq!(body.env.unwrap(), ["A=1"]);
    }
}
