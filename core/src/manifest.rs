//! Release manifests: one TOML document per platform release, every service
//! pinned by content. Parsing validates everything that can be checked
//! without the artifact bytes: fields, digests, names, dependencies.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::digest::Sha256Digest;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest: {0}")]
    Syntax(String),
    #[error("release {version}: {problem}")]
    Invalid { version: String, problem: String },
}

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
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Service {
    pub name: String,
    pub service_version: String,
    pub depends_on: Vec<String>,
    pub tarball: Option<Tarball>,
    pub image: Option<Image>,
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

/// An artifact file the manifest names, with the digest and size it must have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArtifactRef<'a> {
    pub service: &'a str,
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
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    name: String,
    service_version: String,
    #[serde(default)]
    depends_on: Vec<String>,
    tarball: Option<Tarball>,
    image: Option<RawImage>,
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
        let raw: RawManifest = crate::toml_text::parse(text).map_err(ManifestError::Syntax)?;
        let invalid = |problem: String| ManifestError::Invalid {
            version: raw.version.clone(),
            problem,
        };
        let version = semver::Version::parse(&raw.version)
            .map_err(|e| invalid(format!("version {:?} is not semver: {e}", raw.version)))?;
        let created = datetime("created", &raw.created).map_err(&invalid)?;
        let expires = datetime("expires", &raw.expires).map_err(&invalid)?;
        if expires <= created {
            return Err(invalid("expires is not after created".into()));
        }
        let min_upgrade_from = raw
            .min_upgrade_from
            .as_deref()
            .map(|v| {
                semver::Version::parse(v)
                    .map_err(|e| invalid(format!("min_upgrade_from {v:?} is not semver: {e}")))
            })
            .transpose()?;
        let requires_intermediate = raw
            .requires_intermediate
            .iter()
            .map(|v| {
                semver::Version::parse(v)
                    .map_err(|e| invalid(format!("requires_intermediate {v:?} is not semver: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if raw.services.is_empty() {
            return Err(invalid("no [[services]]".into()));
        }
        let mut services = Vec::with_capacity(raw.services.len());
        let mut seen = BTreeSet::new();
        for s in &raw.services {
            crate::names::validate("service", &s.name).map_err(|e| invalid(e.to_string()))?;
            if !seen.insert(s.name.as_str()) {
                return Err(invalid(format!("service {:?} is listed twice", s.name)));
            }
            services.push(service(s).map_err(|p| invalid(format!("service {:?}: {p}", s.name)))?);
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
        let manifest = Manifest {
            version,
            created,
            expires,
            min_upgrade_from,
            requires_intermediate,
            services,
        };
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

    /// Every artifact file the manifest names.
    pub fn artifacts(&self) -> Vec<ArtifactRef<'_>> {
        let mut out = Vec::new();
        for s in &self.services {
            if let Some(t) = &s.tarball {
                out.push(ArtifactRef {
                    service: &s.name,
                    kind: "tarball",
                    sha256: t.sha256,
                    size: t.size,
                    file: &t.file,
                });
            }
            if let Some(t) = s.image.as_ref().and_then(|i| i.tarball.as_ref()) {
                out.push(ArtifactRef {
                    service: &s.name,
                    kind: "image tarball",
                    sha256: t.sha256,
                    size: t.size,
                    file: &t.file,
                });
            }
        }
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

fn service(s: &RawService) -> Result<Service, String> {
    if s.service_version.trim().is_empty() {
        return Err("service_version is empty".into());
    }
    if s.depends_on.contains(&s.name) {
        return Err("depends on itself".into());
    }
    let image = s.image.as_ref().map(image).transpose()?;
    if s.tarball.is_none() && image.is_none() {
        return Err("pins no artifact: give `tarball` or `image`".into());
    }
    if let Some(t) = &s.tarball {
        check_file_name(&t.file)?;
    }
    Ok(Service {
        name: s.name.clone(),
        service_version: s.service_version.clone(),
        depends_on: s.depends_on.clone(),
        tarball: s.tarball.clone(),
        image,
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
            check_file_name(file)?;
            Some(Tarball {
                sha256: *sha256,
                size,
                file: file.clone(),
            })
        }
        (None, None, None) => None,
        _ => return Err("image needs all of tarball_sha256, size and file, or none".into()),
    };
    if let Some(r) = &raw.reference {
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
mod tests {
    use super::*;

    const SHA: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

    fn manifest(services: &str) -> String {
        format!(
            "version = \"1.2.0\"\ncreated = 2026-01-01T00:00:00Z\nexpires = 2036-01-01T00:00:00Z\n{services}"
        )
    }

    fn svc(name: &str, deps: &str) -> String {
        format!(
            "[[services]]\nname = \"{name}\"\nservice_version = \"1.0\"\ndepends_on = [{deps}]\ntarball = {{ sha256 = \"{SHA}\", size = 3, file = \"{name}.tar.gz\" }}\n"
        )
    }

    fn err(text: &str) -> String {
        Manifest::parse(text).unwrap_err().to_string()
    }

    #[test]
    fn orders_services_in_dependency_levels() {
        let m = Manifest::parse(&manifest(&format!(
            "{}{}{}",
            svc("api", "\"db\", \"cache\""),
            svc("db", ""),
            svc("cache", "\"db\"")
        )))
        .unwrap();
        assert_eq!(
            m.levels().unwrap(),
            vec![vec!["db"], vec!["cache"], vec!["api"]]
        );
        assert_eq!(m.artifacts().len(), 3);
    }

    #[test]
    fn names_the_cycle() {
        let e = err(&manifest(&format!(
            "{}{}{}",
            svc("a", "\"b\""),
            svc("b", "\"c\""),
            svc("c", "\"a\"")
        )));
        assert_eq!(e, "release 1.2.0: dependency cycle: a -> b -> c -> a");
    }

    #[test]
    fn refuses_duplicates_missing_deps_and_bad_digests() {
        let dup = err(&manifest(&format!("{}{}", svc("a", ""), svc("a", ""))));
        assert_eq!(dup, "release 1.2.0: service \"a\" is listed twice");
        let missing = err(&manifest(&svc("api", "\"db\"")));
        assert_eq!(
            missing,
            "release 1.2.0: service \"api\" depends on \"db\", which is not in the release"
        );
        let bad = err(&manifest(&svc("a", "").replace(SHA, "abc123")));
        assert!(bad.contains("malformed sha256 digest \"abc123\""), "{bad}");
    }

    #[test]
    fn unknown_key_is_named() {
        let e = err(&manifest(&svc("a", "").replace("depends_on", "dependson")));
        assert!(e.contains("unknown field `dependson`"), "{e}");
        assert!(!e.contains('\n'));
    }

    #[test]
    fn expiry_is_checked_against_now() {
        let m = Manifest::parse(&manifest(&svc("a", ""))).unwrap();
        let later = time::macros::datetime!(2037-01-01 0:00 UTC);
        let e = m.check_current(later).unwrap_err().to_string();
        assert!(e.contains("expired at 2036-01-01T00:00:00Z"), "{e}");
        m.check_current(time::macros::datetime!(2027-01-01 0:00 UTC))
            .unwrap();
    }

    #[test]
    fn image_needs_prefixed_id_and_pinned_reference() {
        let img = |body: &str| {
            manifest(&format!(
                "[[services]]\nname = \"web\"\nservice_version = \"2\"\nimage = {{ {body} }}\n"
            ))
        };
        Manifest::parse(&img(&format!(
            "id = \"sha256:{SHA}\", tarball_sha256 = \"{SHA}\", size = 10, file = \"web.tar\""
        )))
        .unwrap();
        assert!(err(&img(&format!(
            "id = \"{SHA}\", reference = \"r/web@sha256:{SHA}\""
        )))
        .contains("must start with \"sha256:\""));
        assert!(err(&img(&format!(
            "id = \"sha256:{SHA}\", reference = \"r/web:latest\""
        )))
        .contains("must pin a digest"));
    }

    #[test]
    fn artifact_paths_stay_inside_the_directory() {
        let e = err(&manifest(&svc("a", "").replace("a.tar.gz", "../a.tar.gz")));
        assert!(e.contains("must be a relative path"), "{e}");
    }
}
