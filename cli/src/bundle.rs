//! Building release bundles: deterministic `.tar.gz` artifacts, the
//! migration files a release carries, and the manifest that pins them all.
//! `release build`, the demo and the system tests make their releases with
//! this.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use cutover_core::manifest::migrations::Location;
use cutover_core::Sha256Digest;

use crate::error::{Error, Result};

/// One file of a tarball: path inside the release, bytes, Unix mode.
pub struct File {
    pub path: String,
    pub bytes: Vec<u8>,
    pub mode: u32,
}

impl File {
    pub fn new(path: &str, bytes: impl Into<Vec<u8>>, mode: u32) -> File {
        File {
            path: path.into(),
            bytes: bytes.into(),
            mode,
        }
    }
}

/// One service of a release.
pub struct Service {
    pub name: String,
    pub service_version: String,
    pub depends_on: Vec<String>,
    /// The databases it owns (`databases` in the manifest).
    pub databases: Vec<String>,
    /// The data migrations its binary runs (`[[services.data_migrations]]`).
    pub data_migrations: Vec<cutover_core::manifest::DataMigration>,
    pub files: Vec<File>,
}

/// One migration file of a release: where it goes and its bytes.
pub struct Migration {
    pub at: Location,
    pub bytes: Vec<u8>,
}

/// A release made in memory: its manifest and every file the manifest
/// pins, each by its path relative to the release directory.
pub struct Bundle {
    pub manifest: String,
    /// `release-<version>.toml`.
    pub manifest_name: String,
    pub files: Vec<(String, Vec<u8>)>,
}

/// A gzip'd tar of `files` with fixed owners and times, so the same files
/// always give the same digest.
pub fn tarball(files: &[File]) -> Result<Vec<u8>> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut b = tar::Builder::new(gz);
    let mut dirs = std::collections::BTreeSet::new();
    for f in files {
        let mut parent = Path::new(&f.path).parent();
        let mut chain = Vec::new();
        while let Some(p) = parent.filter(|p| !p.as_os_str().is_empty()) {
            chain.push(p.to_path_buf());
            parent = p.parent();
        }
        for d in chain.into_iter().rev() {
            if dirs.insert(d.clone()) {
                let mut h = tar::Header::new_ustar();
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                h.set_size(0);
                h.set_mtime(0);
                b.append_data(&mut h, &d, std::io::empty())
                    .map_err(|e| Error::Failed(format!("tar {}: {e}", d.display())))?;
            }
        }
        let mut h = tar::Header::new_ustar();
        h.set_mode(f.mode);
        h.set_size(f.bytes.len() as u64);
        h.set_mtime(0);
        b.append_data(&mut h, &f.path, f.bytes.as_slice())
            .map_err(|e| Error::Failed(format!("tar {}: {e}", f.path)))?;
    }
    let gz = b
        .into_inner()
        .map_err(|e| Error::Failed(format!("tar: {e}")))?;
    gz.finish().map_err(|e| Error::Failed(format!("gzip: {e}")))
}

/// Options of a release manifest beyond its services.
#[derive(Default)]
pub struct Floor {
    pub min_upgrade_from: Option<String>,
    pub requires_intermediate: Vec<String>,
}

/// Writes `<service>-<version>.tar.gz` for every service and
/// `release-<version>.toml` pinning them into `dir`; returns the manifest.
pub fn write_release(
    dir: &Path,
    version: &str,
    services: &[Service],
    floor: &Floor,
) -> Result<PathBuf> {
    bundle(version, services, floor, &[])?.write(dir)
}

/// Makes the tarballs of `services` and the manifest pinning them and
/// `migrations` (in the order given), without writing anything.
pub fn bundle(
    version: &str,
    services: &[Service],
    floor: &Floor,
    migrations: &[Migration],
) -> Result<Bundle> {
    let now = time::OffsetDateTime::now_utc();
    let mut text = String::new();
    let _ = writeln!(text, "version = \"{version}\"");
    let _ = writeln!(
        text,
        "created = {}",
        cutover_core::manifest::rfc3339(now - time::Duration::minutes(1))
    );
    let _ = writeln!(
        text,
        "expires = {}",
        cutover_core::manifest::rfc3339(now + time::Duration::days(30))
    );
    if let Some(v) = &floor.min_upgrade_from {
        let _ = writeln!(text, "min_upgrade_from = \"{v}\"");
    }
    if !floor.requires_intermediate.is_empty() {
        let _ = writeln!(
            text,
            "requires_intermediate = [{}]",
            quoted(&floor.requires_intermediate)
        );
    }
    let mut files = Vec::new();
    for s in services {
        let bytes = tarball(&s.files)?;
        let file = format!("{}-{}.tar.gz", s.name, s.service_version);
        let _ = write!(
            text,
            "\n[[services]]\nname = \"{}\"\nservice_version = \"{}\"\ndepends_on = [{}]\n",
            s.name,
            s.service_version,
            quoted(&s.depends_on),
        );
        if !s.databases.is_empty() {
            let _ = writeln!(text, "databases = [{}]", quoted(&s.databases));
        }
        let _ = writeln!(
            text,
            "tarball = {{ sha256 = \"{}\", size = {}, file = \"{file}\" }}",
            Sha256Digest::of(&bytes),
            bytes.len()
        );
        for d in &s.data_migrations {
            write_data_migration(&mut text, d);
        }
        files.push((file, bytes));
    }
    for m in migrations {
        let file = m.at.file();
        let _ = write!(
            text,
            "\n[[migrations]]\ndatabase = \"{}\"\nversion = \"{}\"\nphase = \"{}\"\nname = \"{}\"\nsha256 = \"{}\"\nsize = {}\nfile = \"{file}\"\n",
            m.at.database,
            m.at.version,
            m.at.phase,
            m.at.name,
            Sha256Digest::of(&m.bytes),
            m.bytes.len()
        );
        files.push((file, m.bytes.clone()));
    }
    Ok(Bundle {
        manifest: text,
        manifest_name: format!("release-{version}.toml"),
        files,
    })
}

impl Bundle {
    /// Writes every file into `dir` (making the directories they need),
    /// then the manifest; returns the manifest's path.
    pub fn write(&self, dir: &Path) -> Result<PathBuf> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        for (file, bytes) in &self.files {
            let path = dir.join(file);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
            }
            std::fs::write(&path, bytes).map_err(|e| Error::io(&path, e))?;
        }
        let manifest = dir.join(&self.manifest_name);
        std::fs::write(&manifest, &self.manifest).map_err(|e| Error::io(&manifest, e))?;
        Ok(manifest)
    }
}

/// One `[[services.data_migrations]]` table of the service written last.
fn write_data_migration(text: &mut String, d: &cutover_core::manifest::DataMigration) {
    let _ = write!(
        text,
        "[[services.data_migrations]]\nid = \"{}\"\ndatabase = \"{}\"\ndescription = {}\n",
        d.id,
        d.database,
        // A JSON string is a TOML basic string (the description holds no
        // control characters).
        serde_json::Value::String(d.description.clone())
    );
    if d.required_before_contract {
        text.push_str("required_before = \"contract\"\n");
    }
    if let Some(v) = &d.required_before_upgrade_to {
        let _ = writeln!(text, "required_before_upgrade_to = \"{v}\"");
    }
}

/// `"a", "b"`: TOML strings of names (which hold no quote or backslash).
fn quoted(names: &[String]) -> String {
    let list: Vec<String> = names.iter().map(|n| format!("\"{n}\"")).collect();
    list.join(", ")
}

/// The files of a release of `cutover-sample`: the binary, its version and
/// whether its health check passes.
/// Deterministic incompressible bytes (xorshift): ballast for test and
/// benchmark releases.
pub fn noise(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

pub fn sample_files(binary: &[u8], version: &str, healthy: bool) -> Vec<File> {
    let health = if healthy {
        "ok".to_string()
    } else {
        format!("release {version} cannot reach its database")
    };
    vec![
        File::new("bin/cutover-sample", binary.to_vec(), 0o755),
        File::new("VERSION", format!("{version}\n"), 0o644),
        File::new("HEALTH", format!("{health}\n"), 0o644),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tarballs_are_deterministic_and_unpack() {
        let files = || {
            vec![
                File::new("bin/x", b"#!/bin/sh\n".to_vec(), 0o755),
                File::new("VERSION", b"1\n".to_vec(), 0o644),
            ]
        };
        let a = tarball(&files()).unwrap();
        assert_eq!(a, tarball(&files()).unwrap());
        let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(a.as_slice()));
        let names: Vec<String> = ar
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect();
        assert_eq!(names, ["bin", "bin/x", "VERSION"]);
    }
}
