//! `ImportRelease`: verify the signed manifest first, then receive each
//! artifact into staging while hashing it, and only when every artifact is
//! verified publish them and record the release in one transaction.

use std::collections::BTreeMap;
use std::path::PathBuf;

use cutover_core::manifest::Manifest;
use cutover_core::signing::SignatureFile;
use cutover_core::views::now_ms;
use cutover_core::Sha256Digest;
use cutover_proto::v1::{self, import_chunk::Part};
use tonic::Streaming;

use crate::artifacts::Staged;
use crate::error::{Error, Result};
use crate::store::StoredRelease;
use crate::Controller;

struct Expected {
    size: u64,
    what: String,
}

pub async fn import(
    c: &Controller,
    mut stream: Streaming<v1::ImportChunk>,
) -> Result<v1::ImportReleaseResponse> {
    let header = match stream.message().await {
        Ok(Some(v1::ImportChunk {
            part: Some(Part::Header(h)),
        })) => h,
        Ok(_) => return Err(Error::Invalid("import must start with the manifest".into())),
        Err(e) => return Err(Error::Invalid(format!("import stream: {}", e.message()))),
    };
    let (manifest, signed_by) = verify(c, &header.manifest, &header.signatures)?;
    let version = manifest.version.to_string();

    let existing = {
        let v = version.clone();
        c.store.run(move |s| s.release(&v)).await?
    };
    if let Some(existing) = &existing {
        if existing.manifest != header.manifest {
            return Err(Error::Conflict(format!(
                "release {version} already exists with a different manifest; releases are immutable, give this one a new version"
            )));
        }
    }

    let mut expected: BTreeMap<Sha256Digest, Expected> = BTreeMap::new();
    for a in manifest.artifacts() {
        expected.insert(
            a.sha256,
            Expected {
                size: a.size,
                what: format!(
                    "release {version}: service {:?}: {} {}",
                    a.service, a.kind, a.file
                ),
            },
        );
    }

    let mut staged_paths: Vec<PathBuf> = Vec::new();
    let received = receive(c, &mut stream, &expected, &mut staged_paths).await;
    let result = async {
        let received = received?;
        check_images(c, &manifest, &received, &staged_paths).await?;
        if existing.is_some() {
            return Ok(v1::ImportReleaseResponse {
                version: version.clone(),
                services: manifest.services.len() as u32,
                artifacts_stored: 0,
                artifacts_present: expected.len() as u32,
                signed_by: signed_by.clone(),
                already_imported: true,
            });
        }
        let all: Vec<String> = expected.keys().map(|d| d.to_hex()).collect();
        let missing = c.store.run(move |s| s.missing_artifacts(&all)).await?;
        for hex in &missing {
            let digest: Sha256Digest =
                hex.parse()
                    .map_err(|e: cutover_core::digest::DigestParseError| {
                        Error::Internal(e.to_string())
                    })?;
            if !received.contains(&digest) {
                let e = &expected[&digest];
                return Err(Error::Invalid(format!(
                    "{}: sha256 {digest} was not uploaded and is not in the controller's store",
                    e.what
                )));
            }
        }
        let present = expected.len() - missing.len();
        let published = c.artifacts.publish(std::mem::take(&mut staged_paths))?;
        let release = StoredRelease {
            version: version.clone(),
            manifest: header.manifest.clone(),
            signatures: header.signatures.clone(),
            signed_by: signed_by.clone(),
            imported_at: now_ms(),
        };
        let artifacts: Vec<(String, u64)> =
            expected.iter().map(|(d, e)| (d.to_hex(), e.size)).collect();
        let inserted = c
            .store
            .run(move |s| s.insert_release(&release, &artifacts))
            .await;
        if let Err(e) = inserted {
            for p in published {
                let _ = std::fs::remove_file(p);
            }
            return Err(e);
        }
        tracing::info!(%version, "release imported");
        Ok(v1::ImportReleaseResponse {
            version: version.clone(),
            services: manifest.services.len() as u32,
            artifacts_stored: missing.len() as u32,
            artifacts_present: present as u32,
            signed_by: signed_by.clone(),
            already_imported: false,
        })
    }
    .await;
    for p in staged_paths {
        let _ = std::fs::remove_file(p);
    }
    result
}

/// Signature first, then the manifest's own rules, then its expiry. Plans
/// verify stored releases again with this too.
pub(crate) fn verify(
    c: &Controller,
    manifest: &[u8],
    signatures: &str,
) -> Result<(Manifest, Vec<String>)> {
    let sigs = SignatureFile::parse(signatures).map_err(cutover_core::Error::from)?;
    let signed_by = c
        .trusted_keys
        .verify(manifest, &sigs)
        .map_err(cutover_core::Error::from)?;
    let text = std::str::from_utf8(manifest)
        .map_err(|_| Error::Invalid("manifest is not UTF-8 text".into()))?;
    let manifest = Manifest::parse(text).map_err(cutover_core::Error::from)?;
    manifest
        .check_current(time::OffsetDateTime::now_utc())
        .map_err(cutover_core::Error::from)?;
    Ok((manifest, signed_by))
}

/// An image tarball must carry the image ID the manifest pins: the digest
/// of the config its own `manifest.json` names.
async fn check_images(
    c: &Controller,
    manifest: &Manifest,
    received: &[Sha256Digest],
    staged: &[PathBuf],
) -> Result<()> {
    for s in &manifest.services {
        let Some(image) = &s.image else { continue };
        let Some(tarball) = &image.tarball else {
            continue;
        };
        let path = match received.iter().position(|d| *d == tarball.sha256) {
            Some(i) => staged[i].clone(),
            None => c.artifacts.path(&tarball.sha256),
        };
        let found = tokio::task::spawn_blocking(move || {
            std::fs::File::open(&path)
                .map_err(|e| format!("{}: {e}", path.display()))
                .and_then(cutover_core::image::image_id)
        })
        .await
        .map_err(|e| Error::Internal(e.to_string()))?;
        let what = format!(
            "release {}: service {:?}: image tarball {}",
            manifest.version, s.name, tarball.file
        );
        match found {
            Ok(id) if id == image.id => {}
            Ok(id) => {
                return Err(Error::Invalid(format!(
                    "{what} holds image {}, but the manifest pins {}; refused",
                    id.to_prefixed(),
                    image.id.to_prefixed()
                )))
            }
            Err(e) => return Err(Error::Invalid(format!("{what}: {e}"))),
        }
    }
    Ok(())
}

/// Receives artifact streams; returns the digests verified into staging.
async fn receive(
    c: &Controller,
    stream: &mut Streaming<v1::ImportChunk>,
    expected: &BTreeMap<Sha256Digest, Expected>,
    staged_paths: &mut Vec<PathBuf>,
) -> Result<Vec<Sha256Digest>> {
    let mut current: Option<(Staged, String)> = None;
    let mut done = Vec::new();
    loop {
        let msg = stream
            .message()
            .await
            .map_err(|e| Error::Invalid(format!("import stream: {}", e.message())))?;
        let part = match msg {
            None => break,
            Some(v1::ImportChunk { part: Some(p) }) => p,
            Some(_) => continue,
        };
        match part {
            Part::Artifact(start) => {
                if let Some((staged, what)) = current.take() {
                    let digest = staged.expected;
                    staged_paths.push(staged.finish(&what).await?);
                    done.push(digest);
                }
                let digest = Sha256Digest::parse_prefixed(&start.sha256)
                    .map_err(|e| Error::Invalid(format!("uploaded artifact: {e}")))?;
                let e = expected.get(&digest).ok_or_else(|| {
                    Error::Invalid(format!(
                        "uploaded artifact sha256 {digest} is not named by the manifest"
                    ))
                })?;
                current = Some((c.artifacts.stage(digest, e.size).await?, e.what.clone()));
            }
            Part::Data(bytes) => {
                let (staged, what) = current.as_mut().ok_or_else(|| {
                    Error::Invalid("artifact bytes before an artifact header".into())
                })?;
                staged.write(&bytes, what).await?;
            }
            Part::Header(_) => {
                return Err(Error::Invalid("the manifest was sent twice".into()));
            }
        }
    }
    if let Some((staged, what)) = current.take() {
        let digest = staged.expected;
        staged_paths.push(staged.finish(&what).await?);
        done.push(digest);
    }
    Ok(done)
}
