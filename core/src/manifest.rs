//! Release manifests: one TOML document per platform release, every service
//! and schema migration pinned by content. Parsing validates everything
//! that can be checked without the artifact bytes: fields, digests, names,
//! dependencies, migration paths (`migrations.rs`).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::digest::Sha256Digest;

pub use crate::error::ManifestError;
pub use data_migrations::DataMigration;
pub use migrations::{Migration, Phase};

pub mod data_migrations;
pub mod migrations;

/// The largest manifest file accepted, checked before it is parsed.
pub const MAX_MANIFEST_BYTES: usize = 1 << 20;
/// The most `[[services]]` one release may list.
pub const MAX_SERVICES: usize = 1024;
/// The most versions `requires_intermediate` may list.
pub const MAX_INTERMEDIATE: usize = 64;
/// The longest version string (`version`, `min_upgrade_from`, …).
pub const MAX_VERSION_LEN: usize = 64;
/// The longest `service_version`.
pub const MAX_SERVICE_VERSION_LEN: usize = 128;
/// The longest artifact `file` path and image `reference`.
pub const MAX_PATH_LEN: usize = 1024;
/// The largest artifact size a pin may name (1 TiB): far above any real
/// service or image, and small enough that no offset arithmetic on it can
/// overflow and that it fits SQLite's signed integers.
pub const MAX_ARTIFACT_SIZE: u64 = 1 << 40;
/// The most artifact files one release may pin: a tarball and an image
/// tarball per service, and its migrations.
pub const MAX_ARTIFACTS: usize = 2 * MAX_SERVICES + migrations::MAX_MIGRATIONS;

/// A validated release manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Manifest {
    pub version: semver::Version,
    #[serde(with = "time::serde::rfc3339")]
    pub created: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub expires: OffsetDateTime,
    pub min_upgrade_from: Option<semver::Version>,
    pub requires_intermediate: Vec<semver::Version>,
    pub services: Vec<Service>,
    /// In the order they run: [`Migration::order`].
    pub migrations: Vec<Migration>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Service {
    pub name: String,
    pub service_version: String,
    pub depends_on: Vec<String>,
    /// The databases whose migrations gate this service.
    pub databases: Vec<String>,
    pub tarball: Option<Tarball>,
    pub image: Option<Image>,
    /// What its binary runs between expand and contract.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub data_migrations: Vec<DataMigration>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tarball {
    pub sha256: Sha256Digest,
    pub size: u64,
    pub file: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Image {
    /// The image ID: SHA-256 of the image config.
    pub id: Sha256Digest,
    /// Delivered as a `docker save` tarball through the controller.
    pub tarball: Option<Tarball>,
    /// Or pulled by digest from a registry.
    pub reference: Option<String>,
}

/// What an artifact is for, as errors name it (`service "api"`,
/// `database "billing"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArtifactOwner<'a> {
    Service(&'a str),
    /// A migration of this database.
    Database(&'a str),
}

impl std::fmt::Display for ArtifactOwner<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ArtifactOwner::Service(name) => write!(f, "service {name:?}"),
            ArtifactOwner::Database(name) => write!(f, "database {name:?}"),
        }
    }
}

/// An artifact file the manifest names, with the digest and size it must have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArtifactRef<'a> {
    pub owner: ArtifactOwner<'a>,
    pub kind: &'static str,
    pub sha256: Sha256Digest,
    pub size: u64,
    pub file: &'a str,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    version: String,
    created: toml::value::Datetime,
    expires: toml::value::Datetime,
    min_upgrade_from: Option<String>,
    #[serde(default)]
    requires_intermediate: Vec<String>,
    #[serde(default)]
    services: Vec<RawService>,
    #[serde(default)]
    migrations: Vec<migrations::RawMigration>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    name: String,
    service_version: String,
    #[serde(default)]
    depends_on: Vec<String>,
    #[serde(default)]
    databases: Vec<String>,
    tarball: Option<Tarball>,
    image: Option<RawImage>,
    #[serde(default)]
    data_migrations: Vec<data_migrations::RawDataMigration>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawImage {
    id: String,
    tarball_sha256: Option<Sha256Digest>,
    size: Option<u64>,
    file: Option<String>,
    reference: Option<String>,
}

impl Manifest {
    /// Parses and validates a manifest. Does not check signatures or expiry
    /// (see [`Manifest::check_current`]) or artifact bytes.
    pub fn parse(text: &str) -> Result<Manifest, ManifestError> {
        if text.len() > MAX_MANIFEST_BYTES {
            return Err(ManifestError::Syntax(format!(
                "{} bytes, more than the {MAX_MANIFEST_BYTES} a manifest may have; split the release",
                text.len()
            )));
        }
        let raw: RawManifest = crate::toml_text::parse(text).map_err(ManifestError::Syntax)?;
        if raw.version.len() > MAX_VERSION_LEN || raw.version.chars().any(char::is_control) {
            return Err(ManifestError::Invalid {
                version: shown(&raw.version),
                problem: format!(
                    "version must be a semver version of at most {MAX_VERSION_LEN} characters"
                ),
            });
        }
        let invalid = |problem: String| ManifestError::Invalid {
            version: raw.version.clone(),
            problem,
        };
        let version = release_version("version", &raw.version).map_err(&invalid)?;
        let created = datetime("created", &raw.created).map_err(&invalid)?;
        let expires = datetime("expires", &raw.expires).map_err(&invalid)?;
        if expires <= created {
            return Err(invalid("expires is not after created".into()));
        }
        let min_upgrade_from = raw
            .min_upgrade_from
            .as_deref()
            .map(|v| release_version("min_upgrade_from", v).map_err(&invalid))
            .transpose()?;
        if raw.requires_intermediate.len() > MAX_INTERMEDIATE {
            return Err(invalid(format!(
                "requires_intermediate lists {} versions, at most {MAX_INTERMEDIATE} are allowed",
                raw.requires_intermediate.len()
            )));
        }
        let requires_intermediate = raw
            .requires_intermediate
            .iter()
            .map(|v| release_version("requires_intermediate", v).map_err(&invalid))
            .collect::<Result<Vec<_>, _>>()?;
        if raw.services.is_empty() {
            return Err(invalid("no [[services]]".into()));
        }
        if raw.services.len() > MAX_SERVICES {
            return Err(invalid(format!(
                "{} [[services]], at most {MAX_SERVICES} are allowed in one release",
                raw.services.len()
            )));
        }
        let mut services = Vec::with_capacity(raw.services.len());
        let mut seen = BTreeSet::new();
        for s in &raw.services {
            if s.name.len() > 253 {
                return Err(invalid(format!(
                    "service name {} is longer than 253 characters",
                    shown(&s.name)
                )));
            }
            crate::names::validate("service", &s.name).map_err(|e| invalid(e.to_string()))?;
            if !seen.insert(s.name.as_str()) {
                return Err(invalid(format!("service {:?} is listed twice", s.name)));
            }
            services.push(
                service(s, &version).map_err(|p| invalid(format!("service {:?}: {p}", s.name)))?,
            );
        }
        for s in &services {
            for dep in &s.depends_on {
                if !seen.contains(dep.as_str()) {
                    return Err(invalid(format!(
                        "service {:?} depends on {dep:?}, which is not in the release",
                        s.name
                    )));
                }
            }
        }
        let migrations =
            migrations::parse(&raw.migrations, &version, &services).map_err(&invalid)?;
        data_migrations::check_required(&migrations, &services).map_err(&invalid)?;
        let manifest = Manifest {
            version,
            created,
            expires,
            min_upgrade_from,
            requires_intermediate,
            services,
            migrations,
        };
        // One digest names one byte string, so it has one size.
        let mut sizes: BTreeMap<Sha256Digest, ArtifactRef<'_>> = BTreeMap::new();
        for a in manifest.artifacts() {
            if let Some(first) = sizes.get(&a.sha256) {
                if first.size != a.size {
                    return Err(invalid(format!(
                        "sha256 {} is pinned with size {} by {} and size {} by {}; one digest has one size",
                        a.sha256, first.size, first.owner, a.size, a.owner
                    )));
                }
            } else {
                sizes.insert(a.sha256, a);
            }
        }
        manifest.levels().map_err(invalid)?;
        Ok(manifest)
    }

    /// Refuses a manifest that has expired (or was created in the future,
    /// beyond a clock skew allowance).
    pub fn check_current(&self, now: OffsetDateTime) -> Result<(), ManifestError> {
        let invalid = |problem: String| ManifestError::Invalid {
            version: self.version.to_string(),
            problem,
        };
        if now >= self.expires {
            return Err(invalid(format!(
                "expired at {}; sign a new manifest with a later `expires`",
                rfc3339(self.expires)
            )));
        }
        if self.created > now + time::Duration::minutes(5) {
            return Err(invalid(format!(
                "created {} is in the future; check the signing machine's clock",
                rfc3339(self.created)
            )));
        }
        Ok(())
    }

    /// Every artifact file the manifest names: service tarballs and image
    /// tarballs, then the migrations in the order they run. Import hashes,
    /// verifies and stores each the same way.
    pub fn artifacts(&self) -> Vec<ArtifactRef<'_>> {
        let mut out = Vec::new();
        for s in &self.services {
            if let Some(t) = &s.tarball {
                out.push(ArtifactRef {
                    owner: ArtifactOwner::Service(&s.name),
                    kind: "tarball",
                    sha256: t.sha256,
                    size: t.size,
                    file: &t.file,
                });
            }
            if let Some(t) = s.image.as_ref().and_then(|i| i.tarball.as_ref()) {
                out.push(ArtifactRef {
                    owner: ArtifactOwner::Service(&s.name),
                    kind: "image tarball",
                    sha256: t.sha256,
                    size: t.size,
                    file: &t.file,
                });
            }
        }
        out.extend(self.migrations.iter().map(|m| ArtifactRef {
            owner: ArtifactOwner::Database(&m.database),
            kind: "migration",
            sha256: m.sha256,
            size: m.size,
            file: &m.file,
        }));
        out
    }

    /// Services grouped in dependency levels: level 0 depends on nothing,
    /// level n only on levels below n. A cycle is an error that names it.
    pub fn levels(&self) -> Result<Vec<Vec<String>>, String> {
        let deps: BTreeMap<&str, &[String]> = self
            .services
            .iter()
            .map(|s| (s.name.as_str(), s.depends_on.as_slice()))
            .collect();
        if let Some(cycle) = find_cycle(&deps) {
            return Err(format!("dependency cycle: {}", cycle.join(" -> ")));
        }
        let mut level_of: BTreeMap<&str, usize> = BTreeMap::new();
        fn level<'a>(
            name: &'a str,
            deps: &BTreeMap<&'a str, &'a [String]>,
            memo: &mut BTreeMap<&'a str, usize>,
        ) -> usize {
            if let Some(l) = memo.get(name) {
                return *l;
            }
            let l = deps[name]
                .iter()
                .map(|d| level(d.as_str(), deps, memo) + 1)
                .max()
                .unwrap_or(0);
            memo.insert(name, l);
            l
        }
        let mut levels: Vec<Vec<String>> = Vec::new();
        for name in deps.keys() {
            let l = level(name, &deps, &mut level_of);
            if levels.len() <= l {
                levels.resize(l + 1, Vec::new());
            }
            levels[l].push(name.to_string());
        }
        Ok(levels)
    }
}

/// A release version (or one a release names): semver without build
/// metadata. Semver gives `1.1.0+build` the same precedence as `1.1.0`, so
/// two such releases could not be told apart in channels, upgrade order or
/// `min_upgrade_from`; a rebuild needs a version of its own.
fn release_version(field: &str, v: &str) -> Result<semver::Version, String> {
    if v.len() > MAX_VERSION_LEN {
        return Err(format!(
            "{field} {} is longer than {MAX_VERSION_LEN} characters",
            shown(v)
        ));
    }
    let version =
        semver::Version::parse(v).map_err(|e| format!("{field} {v:?} is not semver: {e}"))?;
    if !version.build.is_empty() {
        let mut same = version.clone();
        same.build = semver::BuildMetadata::EMPTY;
        return Err(format!(
            "{field} {v:?} carries build metadata \"+{}\": semver ignores it when ordering versions, so it has the same precedence as {same}; refused, give the release a version of its own (e.g. a new patch or pre-release number)",
            version.build
        ));
    }
    Ok(version)
}

/// A string from the manifest for an error message (see [`crate::text::shown`]).
fn shown(s: &str) -> String {
    crate::text::shown(s, 64)
}

/// A free-text field: bounded, one line, no terminal control characters.
fn check_text(field: &str, value: &str, max: usize) -> Result<(), String> {
    if value.len() > max {
        return Err(format!(
            "{field} {} is longer than {max} characters",
            shown(value)
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(format!(
            "{field} {} contains control characters",
            shown(value)
        ));
    }
    Ok(())
}

/// An artifact pin: a size the bytes can have (1 to `max`) and a file
/// name inside the artifacts directory.
fn check_pin(kind: &str, file: &str, size: u64, max: u64) -> Result<(), String> {
    check_file_name(file)?;
    if size == 0 {
        return Err(format!(
            "{kind} {file} is pinned with size 0; an artifact must have bytes (pin the size of the real file)"
        ));
    }
    if size > max {
        return Err(format!(
            "{kind} {file} is pinned with size {size}, more than the {max} bytes one {kind} may have"
        ));
    }
    Ok(())
}

fn service(s: &RawService, release: &semver::Version) -> Result<Service, String> {
    if s.service_version.trim().is_empty() {
        return Err("service_version is empty".into());
    }
    check_text(
        "service_version",
        &s.service_version,
        MAX_SERVICE_VERSION_LEN,
    )?;
    if s.depends_on.contains(&s.name) {
        return Err("depends on itself".into());
    }
    if s.depends_on.len() > MAX_SERVICES {
        return Err(format!(
            "depends_on lists {} services, more than a release may hold ({MAX_SERVICES})",
            s.depends_on.len()
        ));
    }
    let mut deps = BTreeSet::new();
    for dep in &s.depends_on {
        if dep.len() > 253 {
            return Err(format!(
                "depends_on names {}, which is longer than any service name",
                shown(dep)
            ));
        }
        if !deps.insert(dep.as_str()) {
            return Err(format!("depends_on lists {dep:?} twice"));
        }
    }
    let image = s.image.as_ref().map(image).transpose()?;
    if s.tarball.is_none() && image.is_none() {
        return Err("pins no artifact: give `tarball` or `image`".into());
    }
    if let Some(t) = &s.tarball {
        check_pin("tarball", &t.file, t.size, MAX_ARTIFACT_SIZE)?;
    }
    migrations::check_databases(&s.databases)?;
    let data_migrations = data_migrations::parse(&s.data_migrations, &s.databases, release)?;
    Ok(Service {
        name: s.name.clone(),
        service_version: s.service_version.clone(),
        depends_on: s.depends_on.clone(),
        databases: s.databases.clone(),
        tarball: s.tarball.clone(),
        image,
        data_migrations,
    })
}

fn image(raw: &RawImage) -> Result<Image, String> {
    let id = raw
        .id
        .strip_prefix("sha256:")
        .ok_or_else(|| format!("image id {:?} must start with \"sha256:\"", raw.id))
        .and_then(|hex| {
            hex.parse::<Sha256Digest>()
                .map_err(|e| format!("image id: {e}"))
        })?;
    let tarball = match (&raw.tarball_sha256, raw.size, &raw.file) {
        (Some(sha256), Some(size), Some(file)) => {
            let t = Tarball {
                sha256: *sha256,
                size,
                file: file.clone(),
            };
            check_pin("image tarball", &t.file, t.size, MAX_ARTIFACT_SIZE)?;
            Some(t)
        }
        (None, None, None) => None,
        _ => return Err("image needs all of tarball_sha256, size and file, or none".into()),
    };
    if let Some(r) = &raw.reference {
        check_text("image reference", r, MAX_PATH_LEN)?;
        if !r.contains("@sha256:") {
            return Err(format!(
                "image reference {r:?} must pin a digest (name@sha256:...)"
            ));
        }
    }
    if tarball.is_none() && raw.reference.is_none() {
        return Err("image needs a tarball (tarball_sha256, size, file) or a reference".into());
    }
    Ok(Image {
        id,
        tarball,
        reference: raw.reference.clone(),
    })
}

/// Artifact files are named relative to the artifacts directory.
fn check_file_name(file: &str) -> Result<(), String> {
    check_text("artifact file", file, MAX_PATH_LEN)?;
    let path = std::path::Path::new(file);
    if file.is_empty()
        || path.is_absolute()
        || path
            .components()
            .any(|c| !matches!(c, std::path::Component::Normal(_)))
    {
        return Err(format!(
            "artifact file {file:?} must be a relative path inside the artifacts directory"
        ));
    }
    Ok(())
}

fn datetime(field: &str, dt: &toml::value::Datetime) -> Result<OffsetDateTime, String> {
    if dt.date.is_none() || dt.time.is_none() || dt.offset.is_none() {
        return Err(format!(
            "{field} = {dt} needs a date, a time and an offset, e.g. 2026-01-31T12:00:00Z"
        ));
    }
    OffsetDateTime::parse(
        &dt.to_string(),
        &time::format_description::well_known::Rfc3339,
    )
    .map_err(|e| format!("{field} = {dt}: {e}"))
}

fn find_cycle<'a>(deps: &BTreeMap<&'a str, &'a [String]>) -> Option<Vec<&'a str>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Visiting,
        Done,
    }
    fn visit<'a>(
        name: &'a str,
        deps: &BTreeMap<&'a str, &'a [String]>,
        marks: &mut BTreeMap<&'a str, Mark>,
        path: &mut Vec<&'a str>,
    ) -> Option<Vec<&'a str>> {
        match marks.get(name) {
            Some(Mark::Done) => return None,
            Some(Mark::Visiting) => {
                let start = path.iter().position(|n| *n == name).unwrap_or(0);
                let mut cycle = path[start..].to_vec();
                cycle.push(name);
                return Some(cycle);
            }
            None => {}
        }
        marks.insert(name, Mark::Visiting);
        path.push(name);
        for dep in deps.get(name).copied().unwrap_or_default() {
            if let Some(c) = visit(dep.as_str(), deps, marks, path) {
                return Some(c);
            }
        }
        path.pop();
        marks.insert(name, Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    for name in deps.keys() {
        if let Some(c) = visit(name, deps, &mut marks, &mut Vec::new()) {
            return Some(c);
        }
    }
    None
}

pub fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.to_string())
}

#[cfg(test)]
mod tests;
