//! `cutover release …` and `cutover channel …`.

use std::path::Path;

use cutover_core::manifest::Manifest;
use cutover_core::signing::{self, SignatureFile};
use cutover_core::views::{ChannelView, ReleaseView};
use cutover_proto::v1::{self, import_chunk::Part};
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;

use crate::client::ConnectArgs;
use crate::error::{Error, Result};
use crate::output::{self, Format};

pub fn keygen(out: &Path) -> Result<()> {
    let (key, public, id) = signing::keygen(out)?;
    println!("release key {id}");
    println!("  secret: {} (keep it offline)", key.display());
    println!(
        "  public: {} (list it in the controller's trusted_keys)",
        public.display()
    );
    Ok(())
}

pub fn sign(manifest_path: &Path, key_path: &Path) -> Result<()> {
    let bytes = std::fs::read(manifest_path).map_err(|e| Error::io(manifest_path, e))?;
    let text = std::str::from_utf8(&bytes)
        .map_err(|_| Error::Failed(format!("{}: not UTF-8 text", manifest_path.display())))?;
    // Refuse to sign what the controller would refuse to import.
    let manifest = Manifest::parse(text).map_err(|e| prefixed(manifest_path, e))?;
    let key = signing::read_signing_key(key_path)?;
    let sig_path = signing::signature_path(manifest_path);
    let mut sigs = if sig_path.exists() {
        SignatureFile::parse(&cutover_core::fsutil::read_to_string(&sig_path)?)
            .map_err(|e| prefixed(&sig_path, e))?
    } else {
        SignatureFile::default()
    };
    sigs.sign(&bytes, &key);
    cutover_core::fsutil::write_atomic(&sig_path, sigs.to_toml().as_bytes(), 0o644)?;
    println!(
        "signed release {} with key {} ({} signature(s) in {})",
        manifest.version,
        signing::key_id(&key.verifying_key()),
        sigs.signatures.len(),
        sig_path.display()
    );
    Ok(())
}

fn prefixed(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Failed(format!("{}: {e}", path.display()))
}

pub async fn import(
    c: &ConnectArgs,
    manifest_path: &Path,
    artifacts_dir: Option<&Path>,
    out: Format,
) -> Result<()> {
    let bytes = std::fs::read(manifest_path).map_err(|e| Error::io(manifest_path, e))?;
    let text = std::str::from_utf8(&bytes)
        .map_err(|_| Error::Failed(format!("{}: not UTF-8 text", manifest_path.display())))?;
    let manifest = Manifest::parse(text).map_err(|e| prefixed(manifest_path, e))?;
    let sig_path = signing::signature_path(manifest_path);
    if !sig_path.exists() {
        return Err(Error::Failed(format!(
            "{} not found: sign the manifest first with `cutover release sign {} --key KEY`",
            sig_path.display(),
            manifest_path.display()
        )));
    }
    let signatures = cutover_core::fsutil::read_to_string(&sig_path)?;
    let dir = artifacts_dir
        .map(Path::to_path_buf)
        .or_else(|| manifest_path.parent().map(Path::to_path_buf))
        .unwrap_or_default();
    let mut files = Vec::new();
    for a in manifest.artifacts() {
        let path = dir.join(a.file);
        if !path.is_file() {
            return Err(Error::Failed(format!(
                "release {}: service {:?}: {} file {} is missing",
                manifest.version,
                a.service,
                a.kind,
                path.display()
            )));
        }
        files.push((a.sha256, a.size, path));
    }

    let mut client = c.operator().await?;
    let missing = client
        .missing_artifacts(v1::ArtifactDigests {
            sha256: files.iter().map(|f| f.0.to_hex()).collect(),
        })
        .await?
        .into_inner()
        .sha256;
    let to_send: Vec<_> = files
        .into_iter()
        .filter(|f| missing.contains(&f.0.to_hex()))
        .collect();

    let (tx, rx) = mpsc::channel::<v1::ImportChunk>(8);
    let header = v1::ImportChunk {
        part: Some(Part::Header(v1::ImportHeader {
            manifest: bytes.clone(),
            signatures,
        })),
    };
    let reader = tokio::spawn(async move {
        if tx.send(header).await.is_err() {
            return Ok(());
        }
        for (sha, size, path) in to_send {
            let start = v1::ImportChunk {
                part: Some(Part::Artifact(v1::ArtifactStart {
                    sha256: sha.to_hex(),
                    size,
                })),
            };
            if tx.send(start).await.is_err() {
                return Ok(());
            }
            let mut file = tokio::fs::File::open(&path)
                .await
                .map_err(|e| Error::io(&path, e))?;
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
        output::json(&serde_json::json!({
            "version": r.version,
            "services": r.services,
            "artifacts_stored": r.artifacts_stored,
            "artifacts_present": r.artifacts_present,
            "signed_by": r.signed_by,
            "already_imported": r.already_imported,
        }));
    } else if r.already_imported {
        println!("release {} was already imported (same manifest)", r.version);
    } else {
        println!(
            "imported release {}: {} service(s), {} artifact(s) stored, {} already present, signed by {}",
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

pub async fn channel_set(c: &ConnectArgs, name: &str, version: &str) -> Result<()> {
    c.operator()
        .await?
        .set_channel(v1::SetChannelRequest {
            name: name.into(),
            version: version.into(),
        })
        .await?;
    println!("channel {name} -> {version}");
    Ok(())
}

pub async fn channel_default(c: &ConnectArgs, name: &str) -> Result<()> {
    c.operator()
        .await?
        .set_default_channel(v1::ChannelName { name: name.into() })
        .await?;
    println!("default channel is now {name}");
    Ok(())
}

pub async fn channels(c: &ConnectArgs) -> Result<Vec<ChannelView>> {
    let list = c
        .operator()
        .await?
        .list_channels(v1::Empty {})
        .await?
        .into_inner();
    Ok(list.channels.into_iter().map(Into::into).collect())
}

pub async fn channel_list(c: &ConnectArgs, out: Format) -> Result<()> {
    let channels = channels(c).await?;
    if out == Format::Json {
        output::json(&channels);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = channels
        .iter()
        .map(|ch| {
            vec![
                ch.name.clone(),
                ch.version.clone(),
                if ch.is_default {
                    "yes".into()
                } else {
                    String::new()
                },
                output::when(ch.updated_at),
            ]
        })
        .collect();
    output::table(&["CHANNEL", "VERSION", "DEFAULT", "UPDATED"], &rows);
    Ok(())
}
