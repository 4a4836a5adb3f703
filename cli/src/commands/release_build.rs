//! `cutover release build`: deterministic service tarballs, the source
//! tree's migrations (`DIR/migrations/`, copied as they are), the data
//! migrations its services declare (`DIR/data-migrations.toml`) and the
//! release manifest that pins them all (digests and sizes), from one
//! directory per service. Made by [`crate::bundle`], as the demo and the
//! system tests make theirs; `release sign` and `release import` take the
//! manifest it writes.

use std::path::{Path, PathBuf};

use std::collections::BTreeMap;

use cutover_core::manifest::data_migrations::{self, RawDataMigration};
use cutover_core::manifest::migrations::{parse_version, MAX_MIGRATION_BYTES, MIGRATIONS_DIR};

use crate::bundle::{self, File, Floor, Migration, Service};
use crate::error::{Error, Result};
use crate::migration_tree;

/// The most bytes one service's files may hold: the tarball is made in
/// memory.
pub const MAX_SERVICE_BYTES: u64 = 1 << 30;
/// The most files one service may hold.
pub const MAX_SERVICE_FILES: usize = 100_000;
/// The file of the source tree declaring its services' data migrations.
pub const DATA_MIGRATIONS_FILE: &str = "data-migrations.toml";
/// The largest [`DATA_MIGRATIONS_FILE`] read.
const MAX_DATA_MIGRATIONS_BYTES: u64 = 256 * 1024;

/// `--service NAME[=SERVICE_VERSION]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceArg {
    pub name: String,
    /// Empty: the release's version.
    pub service_version: String,
}

impl ServiceArg {
    /// clap's value parser.
    pub fn parse(text: &str) -> std::result::Result<ServiceArg, String> {
        let (name, version) = text.split_once('=').unwrap_or((text, ""));
        cutover_core::names::validate("service", name).map_err(|e| e.to_string())?;
        if !version.is_empty() {
            cutover_core::names::validate("service version", version).map_err(|e| e.to_string())?;
        }
        Ok(ServiceArg {
            name: name.into(),
            service_version: version.into(),
        })
    }
}

/// `--depends-on SERVICE=DEP[,DEP...]` and `--databases
/// SERVICE=DB[,DB...]`: names given to one service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceList {
    pub service: String,
    pub names: Vec<String>,
}

impl ServiceList {
    /// clap's value parser of `--depends-on`.
    pub fn depends_on(text: &str) -> std::result::Result<ServiceList, String> {
        ServiceList::parse(text, "service", "SERVICE=DEP[,DEP...], e.g. api=db")
    }

    /// clap's value parser of `--databases`.
    pub fn databases(text: &str) -> std::result::Result<ServiceList, String> {
        ServiceList::parse(text, "database", "SERVICE=DB[,DB...], e.g. api=billing")
    }

    fn parse(text: &str, kind: &str, form: &str) -> std::result::Result<ServiceList, String> {
        let (service, names) = text
            .split_once('=')
            .ok_or_else(|| format!("{text:?}: give {form}"))?;
        cutover_core::names::validate("service", service).map_err(|e| e.to_string())?;
        let names: Vec<String> = names.split(',').map(|d| d.trim().to_string()).collect();
        for name in &names {
            cutover_core::names::validate(kind, name).map_err(|e| e.to_string())?;
        }
        Ok(ServiceList {
            service: service.into(),
            names,
        })
    }
}

/// The names `lists` give `service`, in order.
fn given(lists: &[ServiceList], service: &str) -> Vec<String> {
    lists
        .iter()
        .filter(|d| d.service == service)
        .flat_map(|d| d.names.iter().cloned())
        .collect()
}

/// What `cutover release build` was asked for.
pub struct BuildArgs {
    /// Holds one directory per service, named as the service.
    pub dir: PathBuf,
    pub version: String,
    pub services: Vec<ServiceArg>,
    pub depends_on: Vec<ServiceList>,
    /// The databases each service owns.
    pub databases: Vec<ServiceList>,
    /// Where the tarballs and the manifest go.
    pub out: PathBuf,
    pub floor: Floor,
}

/// Builds the release and prints what it wrote.
pub fn build(args: BuildArgs, out: crate::output::Format) -> Result<()> {
    // A name first (it is in file names and the manifest's text); the
    // manifest's own rules (semantic version) are checked on reading back.
    cutover_core::names::validate("release version", &args.version)
        .map_err(|e| Error::Usage(format!("--version: {e}")))?;
    let version = args.version.clone();
    if args.services.is_empty() {
        return Err(Error::Usage(
            "give at least one --service NAME (its files are DIR/NAME)".into(),
        ));
    }
    let mut declared = read_data_migrations(&args.dir, &args.services)?;
    let mut services = Vec::new();
    for s in &args.services {
        if services.iter().any(|o: &Service| o.name == s.name) {
            return Err(Error::Usage(format!("--service {} is given twice", s.name)));
        }
        if s.name == MIGRATIONS_DIR {
            return Err(Error::Usage(format!(
                "--service {MIGRATIONS_DIR}: DIR/{MIGRATIONS_DIR} holds the release's migrations, so no service can be built from it; give the service another name"
            )));
        }
        let root = args.dir.join(&s.name);
        let databases = given(&args.databases, &s.name);
        let raw = declared.remove(&s.name).unwrap_or_default();
        let data_migrations = if raw.is_empty() {
            Vec::new()
        } else {
            // The manifest's own check of a declaration needs the version.
            let release = parse_version(&args.version)
                .map_err(|e| Error::Usage(format!("--version: {e}")))?;
            data_migrations::parse(&raw, &databases, &release).map_err(|e| {
                Error::Failed(format!(
                    "{}: [[{}]]: {e}",
                    args.dir.join(DATA_MIGRATIONS_FILE).display(),
                    s.name
                ))
            })?
        };
        services.push(Service {
            name: s.name.clone(),
            service_version: if s.service_version.is_empty() {
                version.clone()
            } else {
                s.service_version.clone()
            },
            depends_on: given(&args.depends_on, &s.name),
            databases,
            data_migrations,
            files: read_tree(&root)?,
        });
    }
    for (flag, lists) in [
        ("--depends-on", &args.depends_on),
        ("--databases", &args.databases),
    ] {
        if let Some(d) = lists
            .iter()
            .find(|d| !args.services.iter().any(|s| s.name == d.service))
        {
            return Err(Error::Usage(format!(
                "{flag} {}: no --service {} in this release",
                d.service, d.service
            )));
        }
    }
    let migrations = read_migrations(&args.dir, &services)?;
    let bundle = bundle::bundle(&version, &services, &args.floor, &migrations)?;
    // Checked with the controller's own rules before anything is written:
    // a release that would be refused at import is refused here.
    let manifest_path = args.out.join(&bundle.manifest_name);
    let manifest = cutover_core::manifest::Manifest::parse(&bundle.manifest)
        .map_err(|e| Error::Failed(format!("{}: {e}", manifest_path.display())))?;
    // So is a --out whose migrations/ holds files of another build.
    migration_tree::check_pinned(&args.out, &manifest)?;
    let manifest_path = bundle.write(&args.out)?;
    let mut written: Vec<PathBuf> = bundle.files.iter().map(|(f, _)| args.out.join(f)).collect();
    written.push(manifest_path);
    crate::output::written(&written, out);
    Ok(())
}

/// The migrations under `dir/migrations/`, read (each at most
/// [`MAX_MIGRATION_BYTES`], checked before it is read), in the order they
/// run. A database no service owns is refused naming the flag that
/// gives it one.
fn read_migrations(dir: &Path, services: &[Service]) -> Result<Vec<Migration>> {
    let found = migration_tree::walk(dir)?;
    if let Some(f) = found.iter().find(|f| {
        !services
            .iter()
            .any(|s| s.databases.contains(&f.at.database))
    }) {
        return Err(Error::Usage(format!(
            "{}: a migration of database {:?}, which no service of this release owns; give the service that uses it --databases SERVICE={}",
            f.path.display(),
            f.at.database,
            f.at.database
        )));
    }
    let mut out = Vec::with_capacity(found.len());
    for f in found {
        let file = std::fs::File::open(&f.path).map_err(|e| Error::io(&f.path, e))?;
        let bytes = cutover_core::fsutil::read_bounded(file, &f.path, MAX_MIGRATION_BYTES)?;
        out.push(Migration { at: f.at, bytes });
    }
    Ok(out)
}

/// The data migrations `DIR/data-migrations.toml` declares, as written,
/// by service (`[[SERVICE]]` tables with the manifest's keys; none when
/// there is no such file). Each service must be one built; the entries
/// are checked by the manifest's own [`data_migrations::parse`].
fn read_data_migrations(
    dir: &Path,
    services: &[ServiceArg],
) -> Result<BTreeMap<String, Vec<RawDataMigration>>> {
    let path = dir.join(DATA_MIGRATIONS_FILE);
    let file = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(e) => return Err(Error::io(&path, e)),
    };
    let bytes = cutover_core::fsutil::read_bounded(file, &path, MAX_DATA_MIGRATIONS_BYTES)?;
    let bad = |why: String| Error::Failed(format!("{}: {why}", path.display()));
    let text = std::str::from_utf8(&bytes).map_err(|_| bad("not UTF-8".into()))?;
    let raw: BTreeMap<String, Vec<RawDataMigration>> = toml::from_str(text).map_err(|e| {
        let line = e.span().map(|at| {
            text.as_bytes()[..at.start.min(text.len())]
                .iter()
                .filter(|b| **b == b'\n')
                .count()
                + 1
        });
        let at = line.map(|l| format!("line {l}: ")).unwrap_or_default();
        bad(format!("{at}{}", crate::output::escape(e.message().trim())))
    })?;
    if let Some(service) = raw.keys().find(|k| !services.iter().any(|s| &s.name == *k)) {
        let service = crate::output::escape(service);
        return Err(bad(format!(
            "[[{service}]]: no --service {service} in this release"
        )));
    }
    Ok(raw)
}

/// Every regular file under `root`, path-sorted, with its Unix mode.
/// Symbolic links and other special files are refused: what is shipped is
/// what is in the directory.
fn read_tree(root: &Path) -> Result<Vec<File>> {
    let meta = std::fs::symlink_metadata(root).map_err(|e| Error::io(root, e))?;
    if !meta.is_dir() {
        return Err(Error::Failed(format!(
            "{}: not a directory; a service's files are DIR/SERVICE",
            root.display()
        )));
    }
    let mut files = Vec::new();
    let mut total = 0u64;
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).map_err(|e| Error::io(&dir, e))? {
            let entry = entry.map_err(|e| Error::io(&dir, e))?;
            let path = entry.path();
            let meta = std::fs::symlink_metadata(&path).map_err(|e| Error::io(&path, e))?;
            if meta.is_dir() {
                pending.push(path);
                continue;
            }
            if !meta.is_file() {
                return Err(Error::Failed(format!(
                    "{}: not a regular file or directory (symbolic links are not shipped)",
                    path.display()
                )));
            }
            let rel = path
                .strip_prefix(root)
                .ok()
                .and_then(Path::to_str)
                .ok_or_else(|| {
                    Error::Failed(format!("{}: file names must be UTF-8", path.display()))
                })?
                .to_string();
            total = total.saturating_add(meta.len());
            if total > MAX_SERVICE_BYTES || files.len() >= MAX_SERVICE_FILES {
                return Err(Error::Failed(format!(
                    "{}: more than {} or {MAX_SERVICE_FILES} files in one service",
                    root.display(),
                    crate::output::bytes(MAX_SERVICE_BYTES)
                )));
            }
            let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
            use std::os::unix::fs::PermissionsExt;
            files.push(File::new(&rel, bytes, meta.permissions().mode() & 0o7777));
        }
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_and_dependency_arguments_are_names() {
        assert_eq!(
            ServiceArg::parse("api=1.4").unwrap(),
            ServiceArg {
                name: "api".into(),
                service_version: "1.4".into()
            }
        );
        assert_eq!(ServiceArg::parse("db").unwrap().service_version, "");
        assert!(ServiceArg::parse("a/b").is_err());
        assert!(ServiceArg::parse("api=../x").is_err());
        assert_eq!(
            ServiceList::depends_on("api=db,cache").unwrap().names,
            ["db", "cache"]
        );
        assert!(ServiceList::depends_on("api").is_err());
        assert_eq!(
            ServiceList::databases("api=billing").unwrap().names,
            ["billing"]
        );
        let e = ServiceList::databases("api=bil ling").unwrap_err();
        assert!(e.contains("invalid database name \"bil ling\""), "{e}");
        assert!(ServiceList::databases("api")
            .unwrap_err()
            .contains("SERVICE=DB[,DB...]"));
    }

    /// Builds release 2.0.0 of service `api` owning `billing` from a tree
    /// whose `data-migrations.toml` says `declared`.
    fn build_declaring(declared: &str) -> Result<cutover_core::manifest::Manifest> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("src/api/bin")).unwrap();
        std::fs::write(dir.path().join("src/api/bin/api"), b"#!/bin/sh\n").unwrap();
        std::fs::write(dir.path().join("src").join(DATA_MIGRATIONS_FILE), declared).unwrap();
        let out = dir.path().join("dist");
        build(
            BuildArgs {
                dir: dir.path().join("src"),
                version: "2.0.0".into(),
                services: vec![ServiceArg::parse("api").unwrap()],
                depends_on: Vec::new(),
                databases: vec![ServiceList::databases("api=billing").unwrap()],
                out: out.clone(),
                floor: Floor::default(),
            },
            crate::output::Format::Json,
        )?;
        let text = std::fs::read_to_string(out.join("release-2.0.0.toml")).unwrap();
        Ok(cutover_core::manifest::Manifest::parse(&text).unwrap())
    }

    #[test]
    fn data_migrations_toml_declares_each_services_data_migrations() {
        let m = build_declaring(
            "[[api]]\nid = \"backfill_prices\"\ndatabase = \"billing\"\ndescription = \"copy prices\"\nrequired_before = \"contract\"\n\n[[api]]\nid = \"reindex\"\ndatabase = \"billing\"\nrequired_before_upgrade_to = \"3.0.0\"\n",
        )
        .unwrap();
        let d: Vec<_> = m.data_migrations().map(|(_, d)| d.clone()).collect();
        assert_eq!(d.len(), 2, "{d:?}");
        assert_eq!(
            (d[0].id.as_str(), d[0].required_before_contract),
            ("backfill_prices", true)
        );
        assert_eq!(d[0].description, "copy prices");
        assert_eq!(
            d[1].required_before_upgrade_to
                .as_ref()
                .map(ToString::to_string),
            Some("3.0.0".to_string())
        );
        // Without the file, none.
        let none = build_declaring("").unwrap();
        assert_eq!(none.data_migrations().count(), 0);
    }

    #[test]
    fn a_bad_data_migrations_toml_is_refused_naming_the_entry() {
        for (text, needle) in [
            (
                "[[web]]\nid = \"a\"\ndatabase = \"billing\"\n",
                "no --service web",
            ),
            (
                "[[api]]\nid = \"a\"\ndatabase = \"billing\"\nrequired_before = \"expand\"\n",
                "the one value is \"contract\"",
            ),
            (
                "[[api]]\nid = \"a\"\ndatabase = \"billing\"\nrequired_before_upgrade_to = \"3\"\n",
                "required_before_upgrade_to",
            ),
            (
                "[[api]]\nid = \"a\"\ndatabase = \"billing\"\nwhen = 1\n",
                "unknown field",
            ),
            // The manifest's own rules, checked before anything is written.
            ("[[api]]\nid = \"a\"\ndatabase = \"other\"\n", "other"),
            (
                "[[api]]\nid = \"Bad\"\ndatabase = \"billing\"\n",
                "data migration id",
            ),
            ("[[api]\n", "data-migrations.toml"),
        ] {
            let e = build_declaring(text)
                .err()
                .unwrap_or_else(|| panic!("{text:?} built"))
                .to_string();
            assert!(e.contains(needle), "{text:?}: {e}");
            assert_eq!(e.lines().count(), 1, "{e}");
        }
        let big = format!("# {}\n", "x".repeat(300 * 1024));
        let e = build_declaring(&big).err().unwrap().to_string();
        assert!(e.contains("data-migrations.toml"), "{e}");
    }

    #[test]
    fn the_same_directory_builds_the_same_tarball() {
        let dir = tempfile::tempdir().unwrap();
        let svc = dir.path().join("api");
        std::fs::create_dir_all(svc.join("bin")).unwrap();
        std::fs::write(svc.join("bin/api"), b"#!/bin/sh\n").unwrap();
        std::fs::write(svc.join("VERSION"), b"1\n").unwrap();
        let a = bundle::tarball(&read_tree(&svc).unwrap()).unwrap();
        let b = bundle::tarball(&read_tree(&svc).unwrap()).unwrap();
        assert_eq!(a, b);
        std::os::unix::fs::symlink("VERSION", svc.join("link")).unwrap();
        let Err(e) = read_tree(&svc) else {
            panic!("a symbolic link was read")
        };
        assert!(e.to_string().contains("symbolic links"), "{e}");
    }
}
