//! The operator API. Every call is authorised by [`require_operator`]: only
//! operator certificates of our CA get through.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use cutover_core::manifest::Manifest;
use cutover_core::pki::{PeerIdentity, Role};
use cutover_core::views::{from_ms, now_ms, ReleaseServiceView, ReleaseView};
use cutover_proto::v1;
use cutover_proto::Operator;
use tonic::{Request, Response, Status, Streaming};

use super::rollouts::{self, Ask};
use crate::error::Error;
use crate::rollout::driver::Action;
use crate::Controller;
use cutover_proto::commands::to_json;

const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(15 * 60);
const DIAG_TIMEOUT: Duration = Duration::from_secs(10);

/// Interceptor: refuses every caller that is not an operator.
pub fn require_operator(req: Request<()>) -> Result<Request<()>, Status> {
    match super::peer_identity(&req) {
        Some(PeerIdentity { role: Role::Operator(_), .. }) => Ok(req),
        Some(PeerIdentity { role: Role::Host(h), .. }) => Err(Status::permission_denied(format!(
            "the certificate of host {h:?} is an agent certificate; the operator API needs an operator certificate"
        ))),
        Some(_) => Err(Status::permission_denied(
            "this certificate is not an operator certificate",
        )),
        None => Err(Status::unauthenticated(
            "the operator API needs a client certificate: use operator.pem and operator-key.pem from `cutover pki init`",
        )),
    }
}

pub struct OperatorApi {
    c: Arc<Controller>,
}

impl OperatorApi {
    pub fn new(c: Arc<Controller>) -> Self {
        OperatorApi { c }
    }

    /// Why a request to `host`'s agent got no answer, for the operator: no
    /// such host, a revoked one, or the session's own reason (offline, did
    /// not answer in time).
    async fn unanswered(&self, host: &str, e: Error) -> Status {
        let hosts = match self.c.store.run(|s| s.hosts()).await {
            Ok(hosts) => hosts,
            Err(_) => return e.into(),
        };
        match hosts.iter().find(|h| h.name == host) {
            None => Status::not_found(format!(
                "no such host: {host:?} is not enrolled; `cutover hosts` lists the enrolled hosts"
            )),
            Some(h) if h.revoked => Status::failed_precondition(format!(
                "host {host:?} is revoked; it has no session to ask"
            )),
            Some(_) => e.into(),
        }
    }
}

fn name(kind: &str, n: &str) -> Result<(), Status> {
    cutover_core::names::validate(kind, n).map_err(|e| Status::invalid_argument(e.to_string()))
}

/// A stored release as `release list` shows it. One whose manifest today's
/// rules refuse (imported under older, looser ones) is listed without its
/// details rather than failing the whole list; planning to it is refused
/// by `import::verify`.
fn listed_view(r: &crate::store::StoredRelease) -> ReleaseView {
    release_view(r).unwrap_or_else(|e| {
        tracing::warn!(version = %r.version, error = %e, "stored release no longer passes the manifest checks; listed without its details");
        ReleaseView {
            version: r.version.clone(),
            created: None,
            expires: None,
            imported_at: from_ms(r.imported_at),
            signed_by: r.signed_by.clone(),
            services: Vec::new(),
        }
    })
}

fn release_view(r: &crate::store::StoredRelease) -> Result<ReleaseView, Error> {
    let text = String::from_utf8_lossy(&r.manifest);
    let m = Manifest::parse(&text).map_err(|e| Error::Internal(format!("stored {e}")))?;
    Ok(ReleaseView {
        version: r.version.clone(),
        created: Some(m.created),
        expires: Some(m.expires),
        imported_at: from_ms(r.imported_at),
        signed_by: r.signed_by.clone(),
        services: m
            .services
            .iter()
            .map(|s| ReleaseServiceView {
                name: s.name.clone(),
                service_version: s.service_version.clone(),
                depends_on: s.depends_on.clone(),
                tarball_sha256: s.tarball.as_ref().map(|t| t.sha256),
                image_id: s.image.as_ref().map(|i| i.id),
            })
            .collect(),
    })
}

#[tonic::async_trait]
impl Operator for OperatorApi {
    async fn create_token(
        &self,
        req: Request<v1::CreateTokenRequest>,
    ) -> Result<Response<v1::CreateTokenResponse>, Status> {
        let r = req.into_inner();
        name("host", &r.host)?;
        let ttl = if r.ttl_s == 0 {
            DEFAULT_TOKEN_TTL
        } else {
            Duration::from_secs(r.ttl_s)
        };
        if ttl > *cutover_core::views::JOIN_TOKEN_TTL.end() {
            return Err(Status::invalid_argument(
                "join tokens live at most 7 days; give a shorter --ttl",
            ));
        }
        let secret: [u8; 32] = rand::random();
        let token = format!(
            "cutover-join.{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret)
        );
        let expires_at = now_ms() + ttl.as_millis() as i64;
        let (hash, host, replace) = (super::hash_token(&token), r.host.clone(), r.replace);
        self.c
            .store
            .run(move |s| s.create_token_with(&hash, &host, expires_at, replace))
            .await?;
        Ok(Response::new(v1::CreateTokenResponse {
            token,
            expires_at_ms: expires_at,
        }))
    }

    async fn list_tokens(
        &self,
        _req: Request<v1::Empty>,
    ) -> Result<Response<v1::JsonDocument>, Status> {
        let now = now_ms();
        let tokens = self.c.store.run(move |s| s.open_tokens(now)).await?;
        Ok(Response::new(to_json(&tokens)))
    }

    async fn revoke_tokens(
        &self,
        req: Request<v1::HostRequest>,
    ) -> Result<Response<v1::RevokeTokensResponse>, Status> {
        let host = req.into_inner().host;
        name("host", &host)?;
        let now = now_ms();
        let h = host.clone();
        let n = self.c.store.run(move |s| s.revoke_tokens(&h, now)).await?;
        if n > 0 {
            tracing::warn!(%host, tokens = n, "join tokens revoked");
        }
        Ok(Response::new(v1::RevokeTokensResponse {
            revoked: u32::try_from(n).unwrap_or(u32::MAX),
        }))
    }

    async fn revoke_host(
        &self,
        req: Request<v1::HostRequest>,
    ) -> Result<Response<v1::Empty>, Status> {
        let host = req.into_inner().host;
        name("host", &host)?;
        let h = host.clone();
        self.c.store.run(move |s| s.revoke_host(&h)).await?;
        self.c.revoked.insert(&host);
        self.c.sessions.cut(
            &host,
            Status::permission_denied(format!("host {host:?} was revoked by an operator")),
        );
        tracing::warn!(%host, "host revoked");
        Ok(Response::new(v1::Empty {}))
    }

    async fn forget_host(
        &self,
        req: Request<v1::HostRequest>,
    ) -> Result<Response<v1::Empty>, Status> {
        let host = req.into_inner().host;
        name("host", &host)?;
        let h = host.clone();
        self.c.store.run(move |s| s.forget_host(&h)).await?;
        self.c.revoked.remove(&host);
        tracing::warn!(%host, "revoked host forgotten; its name may enroll again");
        Ok(Response::new(v1::Empty {}))
    }

    async fn list_hosts(&self, _req: Request<v1::Empty>) -> Result<Response<v1::HostList>, Status> {
        let hosts = crate::fleet_view::hosts(&self.c).await?;
        Ok(Response::new(v1::HostList {
            hosts: hosts.iter().map(Into::into).collect(),
        }))
    }

    async fn diag(
        &self,
        req: Request<v1::HostRequest>,
    ) -> Result<Response<v1::DiagReport>, Status> {
        let host = req.into_inner().host;
        name("host", &host)?;
        let asked = self
            .c
            .sessions
            .request(
                &host,
                v1::request::Body::Diag(v1::DiagRequest {}),
                DIAG_TIMEOUT,
            )
            .await;
        let body = match asked {
            Ok(body) => body,
            // Not answered: say whether there is such a host at all.
            Err(e) => return Err(self.unanswered(&host, e).await),
        };
        match body {
            v1::reply::Body::Diag(d) => Ok(Response::new(d)),
            v1::reply::Body::Error(e) => Err(Status::internal(format!("agent on {host}: {e}"))),
            _ => Err(Status::internal(format!(
                "agent on {host} answered something else"
            ))),
        }
    }

    async fn missing_artifacts(
        &self,
        req: Request<v1::ArtifactDigests>,
    ) -> Result<Response<v1::ArtifactDigests>, Status> {
        let mut digests = Vec::new();
        for d in req.into_inner().sha256 {
            let d = cutover_core::Sha256Digest::parse_prefixed(&d)
                .map_err(|e| Status::invalid_argument(e.to_string()))?;
            digests.push(d);
        }
        let missing = super::import::missing_artifacts(&self.c, digests).await?;
        Ok(Response::new(v1::ArtifactDigests { sha256: missing }))
    }

    async fn import_release(
        &self,
        req: Request<Streaming<v1::ImportChunk>>,
    ) -> Result<Response<v1::ImportReleaseResponse>, Status> {
        match super::import::import(&self.c, req.into_inner()).await {
            Ok(r) => Ok(Response::new(r)),
            Err(e) => {
                tracing::warn!(error = %e, "release import refused");
                let detail = e.to_string();
                let _ = self
                    .c
                    .store
                    .run(move |s| s.event("release.refused", None, &detail))
                    .await;
                Err(e.into())
            }
        }
    }

    async fn list_releases(
        &self,
        _req: Request<v1::Empty>,
    ) -> Result<Response<v1::ReleaseList>, Status> {
        let stored = self.c.store.run(|s| s.releases()).await?;
        let releases = stored
            .iter()
            .map(|r| v1::Release::from(&listed_view(r)))
            .collect::<Vec<_>>();
        Ok(Response::new(v1::ReleaseList { releases }))
    }

    async fn set_channel(
        &self,
        req: Request<v1::SetChannelRequest>,
    ) -> Result<Response<v1::Empty>, Status> {
        let r = req.into_inner();
        name("channel", &r.name)?;
        let version = semver::Version::parse(&r.version)
            .map_err(|e| Status::invalid_argument(format!("version {:?}: {e}", r.version)))?
            .to_string();
        self.c
            .store
            .run(move |s| s.set_channel(&r.name, &version))
            .await?;
        Ok(Response::new(v1::Empty {}))
    }

    async fn set_default_channel(
        &self,
        req: Request<v1::ChannelName>,
    ) -> Result<Response<v1::Empty>, Status> {
        let n = req.into_inner().name;
        name("channel", &n)?;
        self.c.store.run(move |s| s.set_default_channel(&n)).await?;
        Ok(Response::new(v1::Empty {}))
    }

    async fn list_channels(
        &self,
        _req: Request<v1::Empty>,
    ) -> Result<Response<v1::ChannelList>, Status> {
        let channels = self.c.store.run(|s| s.channels()).await?;
        Ok(Response::new(v1::ChannelList {
            channels: channels.iter().map(Into::into).collect(),
        }))
    }

    async fn apply_fleet(
        &self,
        req: Request<v1::FleetDocument>,
    ) -> Result<Response<v1::FleetDocument>, Status> {
        let doc = req.into_inner();
        let file = if doc.file.is_empty() {
            "fleet config".to_string()
        } else {
            doc.file.clone()
        };
        let report = super::fleet::apply_fleet(
            &self.c,
            super::fleet::ApplyAsk {
                file: file.clone(),
                toml: doc.toml,
                dry_run: doc.dry_run,
                allow_empty: doc.allow_empty,
            },
        )
        .await?;
        if report.stored {
            tracing::info!(%file, warnings = report.warnings.count, "fleet config applied");
        }
        let report_json = serde_json::to_string(&report)
            .map_err(|e| Status::internal(format!("fleet apply report: {e}")))?;
        Ok(Response::new(v1::FleetDocument {
            file: doc.file,
            toml: String::new(),
            applied_at_ms: if report.stored { now_ms() } else { 0 },
            dry_run: doc.dry_run,
            allow_empty: doc.allow_empty,
            report_json,
        }))
    }

    async fn get_fleet(
        &self,
        _req: Request<v1::Empty>,
    ) -> Result<Response<v1::FleetDocument>, Status> {
        let (toml, applied_at_ms) = self.c.store.run(|s| s.fleet()).await?.ok_or_else(|| {
            Status::not_found(
                "no fleet config yet; apply one with `cutover fleet apply FLEET.toml`",
            )
        })?;
        Ok(Response::new(v1::FleetDocument {
            toml,
            applied_at_ms,
            ..Default::default()
        }))
    }

    async fn plan(
        &self,
        req: Request<v1::PlanRequest>,
    ) -> Result<Response<v1::JsonDocument>, Status> {
        let plan = rollouts::make_plan(&self.c, &ask(req.into_inner())?, false).await?;
        let json = to_json(&plan);
        // Freeing half a million moves takes milliseconds: not on the answer's path.
        tokio::task::spawn_blocking(move || drop(plan));
        Ok(Response::new(json))
    }

    async fn upgrade(
        &self,
        req: Request<v1::UpgradeRequest>,
    ) -> Result<Response<v1::JsonDocument>, Status> {
        let by = super::operator_name(&req);
        let r = req.into_inner();
        let ask = ask(r.plan.unwrap_or_default())?;
        let started = rollouts::upgrade(&self.c, &ask, r.no_rollback, by).await?;
        Ok(Response::new(to_json(&started)))
    }

    async fn rollback(
        &self,
        req: Request<v1::RollbackRequest>,
    ) -> Result<Response<v1::JsonDocument>, Status> {
        let by = super::operator_name(&req);
        let r = req.into_inner();
        name("service", &r.service)?;
        let ask = super::rollback::RollbackAsk {
            service: r.service,
            to: r.to_version,
            allow_offline: r.allow_offline,
            dry_run: r.dry_run,
            expect_plan: r.expect_plan,
            force: r.force,
            by,
        };
        let started = super::rollback::rollback(&self.c, ask).await?;
        Ok(Response::new(to_json(&started)))
    }

    async fn list_rollouts(
        &self,
        req: Request<v1::ListRolloutsRequest>,
    ) -> Result<Response<v1::JsonDocument>, Status> {
        let limit = match req.into_inner().limit {
            0 => 50,
            n => n.min(1000) as usize,
        };
        let list = self
            .c
            .store
            .run(move |s| s.rollout_summaries(limit))
            .await?;
        Ok(Response::new(to_json(&list)))
    }

    async fn get_rollout(
        &self,
        req: Request<v1::RolloutId>,
    ) -> Result<Response<v1::JsonDocument>, Status> {
        let detail = rollouts::detail(&self.c, req.into_inner().id).await?;
        Ok(Response::new(to_json(&detail)))
    }

    async fn control_rollout(
        &self,
        req: Request<v1::ControlRolloutRequest>,
    ) -> Result<Response<v1::JsonDocument>, Status> {
        let by = super::operator_name(&req);
        let r = req.into_inner();
        let action = rollouts::action_of(r.action)?;
        if r.rollback {
            if !matches!(action, Action::Abort) {
                return Err(Status::invalid_argument(format!(
                    "--rollback goes with abort only, not {:?}",
                    rollouts::action_name(action)
                )));
            }
            let done =
                super::rollback::abort_and_roll_back(&self.c, r.id, r.allow_offline, by).await?;
            return Ok(Response::new(to_json(&done)));
        }
        let rollout = rollouts::control(&self.c, r.id, action, by).await?;
        Ok(Response::new(to_json(&rollout)))
    }

    async fn version(&self, _req: Request<v1::Empty>) -> Result<Response<v1::VersionInfo>, Status> {
        Ok(Response::new(v1::VersionInfo {
            version: cutover_core::VERSION.into(),
        }))
    }

    async fn events(
        &self,
        req: Request<v1::EventsRequest>,
    ) -> Result<Response<v1::JsonDocument>, Status> {
        let r = req.into_inner();
        let rollout = (r.rollout != 0).then_some(r.rollout);
        let limit = if r.limit == 0 {
            100
        } else {
            r.limit.min(10_000) as usize
        };
        let q = crate::store::EventQuery {
            rollout,
            after_id: (r.after_id != 0).then_some(r.after_id),
            since_ms: (r.since_ms != 0).then_some(r.since_ms),
            limit,
        };
        let events = self.c.store.run(move |s| s.query_events(q)).await?;
        Ok(Response::new(to_json(&events)))
    }

    async fn migrate_status(
        &self,
        req: Request<v1::MigrateRequest>,
    ) -> Result<Response<v1::JsonDocument>, Status> {
        let status = super::migrate::status(&self.c, req.into_inner()).await?;
        Ok(Response::new(to_json(&status)))
    }

    async fn data_migrations(
        &self,
        req: Request<v1::DataMigrationsRequest>,
    ) -> Result<Response<v1::JsonDocument>, Status> {
        let c = self.c.clone();
        let list =
            tokio::spawn(async move { super::data_migrate::list(&c, req.into_inner()).await })
                .await
                .map_err(|e| Status::internal(format!("data migrations: {e}")))??;
        Ok(Response::new(to_json(&list)))
    }

    /// In a task of its own: an operator who goes away does not lose the
    /// answer (a verify's verdict) the agent gives.
    async fn data_migrate(
        &self,
        req: Request<v1::OperatorDataMigrateRequest>,
    ) -> Result<Response<v1::JsonDocument>, Status> {
        let by = super::operator_name(&req).unwrap_or_else(|| "an operator".into());
        let c = self.c.clone();
        let entry =
            tokio::spawn(async move { super::data_migrate::act(&c, &by, req.into_inner()).await })
                .await
                .map_err(|e| Status::internal(format!("data migrate: {e}")))??;
        Ok(Response::new(to_json(&entry)))
    }

    async fn migrate(
        &self,
        req: Request<v1::MigrateRequest>,
    ) -> Result<Response<v1::JsonDocument>, Status> {
        let by = super::operator_name(&req);
        let run = super::migrate::run(&self.c, req.into_inner(), by).await?;
        Ok(Response::new(to_json(&run)))
    }

    async fn migrate_repair(
        &self,
        req: Request<v1::MigrateRepairRequest>,
    ) -> Result<Response<v1::JsonDocument>, Status> {
        let by = super::operator_name(&req);
        let done = super::migrate::repair(&self.c, req.into_inner(), by).await?;
        Ok(Response::new(to_json(&done)))
    }
}

fn ask(r: v1::PlanRequest) -> Result<Ask, Status> {
    for s in &r.services {
        name("service", s)?;
    }
    Ok(Ask {
        services: r.services,
        version: r.version,
        allow_offline: r.allow_offline,
    })
}

#[cfg(test)]
mod listing_tests {
    use super::*;

    fn stored(version: &str, manifest: &str) -> crate::store::StoredRelease {
        crate::store::StoredRelease {
            version: version.into(),
            manifest: manifest.as_bytes().to_vec(),
            signatures: String::new(),
            signed_by: vec!["k".into()],
            imported_at: 1_700_000_000_000,
        }
    }

    #[test]
    fn a_stored_release_todays_rules_refuse_is_listed_not_fatal() {
        let sha = cutover_core::Sha256Digest::of(b"x");
        let body = |version: &str| {
            format!(
                "version = \"{version}\"\ncreated = 2026-01-01T00:00:00Z\nexpires = 2036-01-01T00:00:00Z\n[[services]]\nname = \"db\"\nservice_version = \"1\"\ntarball = {{ sha256 = \"{sha}\", size = 1, file = \"db.tar.gz\" }}\n"
            )
        };
        let good = listed_view(&stored("1.0.0", &body("1.0.0")));
        assert_eq!(good.services.len(), 1);
        assert!(good.expires.is_some());
        // Build metadata passed the checks of older controllers.
        let old = listed_view(&stored("1.0.0+b", &body("1.0.0+b")));
        assert_eq!(old.version, "1.0.0+b");
        assert_eq!(old.signed_by, vec!["k".to_string()]);
        assert!(old.services.is_empty() && old.expires.is_none());
    }
}
