//! `cutover release keygen|sign|import|list` (`release build` is in
//! release_build.rs).

use std::path::Path;

use cutover_core::manifest::Manifest;
use cutover_core::signing::{self, SignatureFile};
use cutover_core::views::ReleaseView;
use cutover_proto::v1::{self, import_chunk::Part};
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;

use crate::client::ConnectArgs;
use crate::doc::results::{Imported, KeyMade, Signed};
use crate::error::{Error, Result};
use crate::output::{self, Format};

pub fn keygen(out: &Path, format: Format) -> Result<()> {
    // `--out DIR/NAME` with DIR missing: made, readable by its owner only
    // (it is about to hold a secret key). A directory that exists keeps
    // its mode.
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        if std::fs::symlink_metadata(dir).is_err() {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| Error::io(dir, e))?;
            if format == Format::Text {
                println!("made directory {} (mode 0700)", dir.display());
            }
        }
    }
    let (key, public, id) = signing::keygen(out)?;
    if format == Format::Json {
        output::json(&KeyMade::new(id, &key, &public));
        return Ok(());
    }
    println!("release key {id}");
    println!("  secret: {} (keep it offline)", key.display());
    println!(
        "  public: {} (list it in the controller's trusted_keys)",
        public.display()
    );
    Ok(())
}

pub fn sign(manifest_path: &Path, key_path: &Path, out: Format) -> Result<()> {
    let text = read_release_text(
        manifest_path,
        "manifest",
        cutover_core::manifest::MAX_MANIFEST_BYTES,
    )?;
    // Refuse to sign what the controller would refuse to import.
    let manifest = Manifest::parse(&text).map_err(|e| prefixed(manifest_path, e))?;
    let key = signing::read_signing_key(key_path).map_err(|e| {
        Error::Failed(format!(
            "{e}; it was named by --key (a key made by `cutover release keygen`)"
        ))
    })?;
    let sig_path = signing::signature_path(manifest_path);
    let mut sigs = if std::fs::symlink_metadata(&sig_path).is_ok() {
        let signatures = read_signature_file(&sig_path)?;
        SignatureFile::parse(&signatures).map_err(|e| prefixed(&sig_path, e))?
    } else {
        SignatureFile::default()
    };
    sigs.sign(text.as_bytes(), &key);
    cutover_core::fsutil::write_atomic(&sig_path, sigs.to_toml().as_bytes(), 0o644)?;
    let key_id = signing::key_id(&key.verifying_key());
    if out == Format::Json {
        output::json(&Signed::new(
            manifest.version.to_string(),
            key_id,
            sigs.signatures.len(),
            &sig_path,
        ));
        return Ok(());
    }
    println!(
        "signed release {} with key {} ({} signature(s) in {})",
        manifest.version,
        key_id,
        sigs.signatures.len(),
        sig_path.display()
    );
    Ok(())
}

fn prefixed(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Failed(format!("{}: {e}", path.display()))
}

/// Opens a release file for reading without following a symbolic link
/// at its end, and checks that it is a regular file. `O_NONBLOCK` keeps a
/// FIFO in its place from blocking the open; it means nothing for a
/// regular file.
fn open_release_file(path: &Path, what: &str) -> Result<std::fs::File> {
    use nix::fcntl::OFlag;
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags((OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK).bits())
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(nix::errno::Errno::ELOOP as i32) {
                symlink_refused(path, what)
            } else {
                Error::io(path, e)
            }
        })?;
    let meta = file.metadata().map_err(|e| Error::io(path, e))?;
    if !meta.is_file() {
        return Err(Error::Failed(format!(
            "{}: the {what} is not a regular file; release files must be plain files",
            path.display()
        )));
    }
    Ok(file)
}

fn symlink_refused(path: &Path, what: &str) -> Error {
    Error::Failed(format!(
        "{}: the {what} is a symbolic link, refused: release files are read only as regular files (copy the file into place instead of linking it)",
        path.display()
    ))
}

/// Reads a manifest or signature file as text: a regular file, not a
/// link, of at most `max` bytes, checked before it is read
/// ([`cutover_core::fsutil::read_bounded`]), and UTF-8.
fn read_release_text(path: &Path, what: &str, max: usize) -> Result<String> {
    let file = open_release_file(path, what)?;
    let max = u64::try_from(max).unwrap_or(u64::MAX);
    let bytes = cutover_core::fsutil::read_bounded(file, path, max).map_err(|e| match e {
        cutover_core::Error::TooLarge { len, max, .. } => Error::Failed(format!(
            "{}: the {what} is {len} bytes, more than the {max} it may have",
            path.display()
        )),
        e => e.into(),
    })?;
    String::from_utf8(bytes)
        .map_err(|_| Error::Failed(format!("{}: not UTF-8 text", path.display())))
}

/// The signature file beside a manifest, as text.
fn read_signature_file(sig_path: &Path) -> Result<String> {
    read_release_text(
        sig_path,
        "signature file",
        signing::MAX_SIGNATURE_FILE_BYTES,
    )
}

/// An artifact file the manifest names, owned so it can be sent from a
/// task of its own.
struct ArtifactFile {
    /// `service "api"` or `database "billing"`.
    owner: String,
    kind: &'static str,
    file: String,
    sha256: cutover_core::Sha256Digest,
    size: u64,
}

/// Opens an artifact file named by the manifest, relative to `dir`: no
/// component below `dir` may be a symbolic link, and the file must be a
/// regular, non-empty file.
fn open_artifact(dir: &Path, a: &ArtifactFile) -> Result<std::fs::File> {
    let what = format!("{} of {}", a.kind, a.owner);
    let relative = Path::new(&a.file);
    let mut below = dir.to_path_buf();
    let components: Vec<_> = relative.components().collect();
    for c in components.iter().take(components.len().saturating_sub(1)) {
        below.push(c);
        match std::fs::symlink_metadata(&below) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(symlink_refused(
                    &below,
                    &format!("directory holding the {what}"),
                ))
            }
            Ok(_) => {}
            Err(e) => return Err(Error::io(&below, e)),
        }
    }
    let path = dir.join(relative);
    let file = match open_release_file(&path, &what) {
        Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::Failed(format!(
                "{}: {} file {} is missing; put the file the manifest pins there (or name the directory that holds it with --artifacts)",
                a.owner,
                a.kind,
                path.display()
            )))
        }
        other => other?,
    };
    let len = file.metadata().map_err(|e| Error::io(&path, e))?.len();
    if len == 0 {
        return Err(Error::Failed(format!(
            "{}: the {what} is empty (0 bytes) but the manifest pins {} bytes; the file is truncated or was never written",
            path.display(),
            a.size
        )));
    }
    Ok(file)
}

pub async fn import(
    c: &ConnectArgs,
    manifest_path: &Path,
    artifacts_dir: Option<&Path>,
    out: Format,
) -> Result<()> {
    let text = read_release_text(
        manifest_path,
        "manifest",
        cutover_core::manifest::MAX_MANIFEST_BYTES,
    )?;
    let manifest = Manifest::parse(&text).map_err(|e| prefixed(manifest_path, e))?;
    let sig_path = signing::signature_path(manifest_path);
    if std::fs::symlink_metadata(&sig_path).is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound)
    {
        return Err(Error::Failed(format!(
            "{} not found: sign the manifest first with `cutover release sign {} --key KEY`",
            sig_path.display(),
            manifest_path.display()
        )));
    }
    let signatures = read_signature_file(&sig_path)?;
    let dir = artifacts_dir
        .map(Path::to_path_buf)
        .or_else(|| manifest_path.parent().map(Path::to_path_buf))
        .unwrap_or_default();
    let version = manifest.version.to_string();
    let mut files: Vec<ArtifactFile> = Vec::new();
    for a in manifest.artifacts() {
        let a = ArtifactFile {
            owner: a.owner.to_string(),
            kind: a.kind,
            file: a.file.to_string(),
            sha256: a.sha256,
            size: a.size,
        };
        open_artifact(&dir, &a).map_err(|e| Error::Failed(format!("release {version}: {e}")))?;
        // Two services may pin the same bytes: they are sent once.
        if !files.iter().any(|f| f.sha256 == a.sha256) {
            files.push(a);
        }
    }
    // Every file under migrations/ must be pinned: the controller sees
    // only what the manifest names.
    crate::migration_tree::check_pinned(&dir, &manifest)
        .map_err(|e| Error::Failed(format!("release {version}: {e}")))?;

    let mut client = c.operator().await?;
    let missing = client
        .missing_artifacts(v1::ArtifactDigests {
            sha256: files.iter().map(|f| f.sha256.to_hex()).collect(),
        })
        .await?
        .into_inner()
        .sha256;
    let to_send: Vec<_> = files
        .into_iter()
        .filter(|f| missing.contains(&f.sha256.to_hex()))
        .collect();

    let (tx, rx) = mpsc::channel::<v1::ImportChunk>(8);
    let header = v1::ImportChunk {
        part: Some(Part::Header(v1::ImportHeader {
            manifest: text.into_bytes(),
            signatures,
        })),
    };
    let reader = tokio::spawn(async move {
        if tx.send(header).await.is_err() {
            return Ok(());
        }
        for a in to_send {
            let path = dir.join(&a.file);
            // Opened again with the same checks: the file may have been
            // swapped for a link since it was looked at.
            let file = open_artifact(&dir, &a)
                .map_err(|e| Error::Failed(format!("release {version}: {e}")))?;
            let start = v1::ImportChunk {
                part: Some(Part::Artifact(v1::ArtifactStart {
                    sha256: a.sha256.to_hex(),
                    size: a.size,
                })),
            };
            if tx.send(start).await.is_err() {
                return Ok(());
            }
            let mut file = tokio::fs::File::from_std(file);
            loop {
                let mut buf = vec![0u8; cutover_proto::CHUNK_BYTES];
                let n = file.read(&mut buf).await.map_err(|e| Error::io(&path, e))?;
                if n == 0 {
                    break;
                }
                buf.truncate(n);
                let chunk = v1::ImportChunk {
                    part: Some(Part::Data(buf)),
                };
                if tx.send(chunk).await.is_err() {
                    return Ok(());
                }
            }
        }
        Ok::<(), Error>(())
    });
    let response = client
        .import_release(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await;
    // A local read error explains a refused upload better than the refusal.
    if let Ok(Err(e)) = reader.await {
        return Err(e);
    }
    let r = response?.into_inner();
    if out == Format::Json {
        output::json(&Imported {
            version: r.version,
            services: r.services,
            artifacts_stored: r.artifacts_stored,
            artifacts_present: r.artifacts_present,
            artifacts_repaired: r.artifacts_repaired,
            signed_by: r.signed_by,
            already_imported: r.already_imported,
        });
    } else if r.already_imported {
        println!(
            "release {} already imported (same manifest); artifacts verified ({} repaired)",
            r.version, r.artifacts_repaired
        );
    } else {
        let repaired = if r.artifacts_repaired > 0 {
            format!(
                " ({} damaged stored copy(ies) repaired)",
                r.artifacts_repaired
            )
        } else {
            String::new()
        };
        println!(
            "imported release {}: {} service(s), {} artifact(s) stored, {} already present{repaired}, signed by {}",
            r.version,
            r.services,
            r.artifacts_stored,
            r.artifacts_present,
            r.signed_by.join(", ")
        );
    }
    Ok(())
}

pub async fn releases(c: &ConnectArgs) -> Result<Vec<ReleaseView>> {
    let list = c
        .operator()
        .await?
        .list_releases(v1::Empty {})
        .await?
        .into_inner();
    list.releases
        .into_iter()
        .map(|r| ReleaseView::try_from(r).map_err(|e| Error::Rpc(e.to_string())))
        .collect()
}

pub async fn list(c: &ConnectArgs, out: Format) -> Result<()> {
    let releases = releases(c).await?;
    if out == Format::Json {
        output::json(&releases);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = releases
        .iter()
        .map(|r| {
            vec![
                r.version.clone(),
                r.services
                    .iter()
                    .map(|s| format!("{}@{}", s.name, s.service_version))
                    .collect::<Vec<_>>()
                    .join(" "),
                output::when(r.expires),
                r.signed_by.join(","),
            ]
        })
        .collect();
    output::table(&["VERSION", "SERVICES", "EXPIRES", "SIGNED BY"], &rows);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh directory of this test's own under the system's temp dir.
    fn scratch(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("cutover-cli-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn release_files_are_read_as_bounded_utf8_text_from_regular_files_only() {
        let dir = scratch("release-text");
        let path = dir.join("release.toml.sig");
        std::fs::write(&path, "[[signature]]\n").unwrap();
        assert_eq!(read_signature_file(&path).unwrap(), "[[signature]]\n");

        let e = read_release_text(&path, "manifest", 5)
            .unwrap_err()
            .to_string();
        assert!(
            e.ends_with("release.toml.sig: the manifest is 14 bytes, more than the 5 it may have"),
            "{e}"
        );

        std::fs::write(&path, b"\xff\xfe").unwrap();
        let e = read_signature_file(&path).unwrap_err().to_string();
        assert!(e.ends_with("release.toml.sig: not UTF-8 text"), "{e}");

        let link = dir.join("link.sig");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        let e = read_signature_file(&link).unwrap_err().to_string();
        assert!(
            e.contains("link.sig: the signature file is a symbolic link, refused"),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
