//! `ImportRelease`: verify the signed manifest first, then receive each
//! artifact (service and image tarballs, migration files) into staging
//! while hashing it, and only when every artifact is verified publish them
//! and record the release in one transaction.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use cutover_core::manifest::Manifest;
use cutover_core::signing::SignatureFile;
use cutover_core::views::now_ms;
use cutover_core::Sha256Digest;
use cutover_proto::v1::{self, import_chunk::Part};
use tokio::sync::Semaphore;
use tonic::Streaming;

use crate::artifacts::{check_copy, Publish, Staged, StoredCopy, Verified};
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

    // `Manifest::parse` refuses one digest pinned with two sizes.
    let mut expected: BTreeMap<Sha256Digest, Expected> = BTreeMap::new();
    for a in manifest.artifacts() {
        expected.insert(
            a.sha256,
            Expected {
                size: a.size,
                what: format!("release {version}: {}: {} {}", a.owner, a.kind, a.file),
            },
        );
    }
    // Refused before any byte is received; checked again at commit.
    stored_sizes(c, &expected).await?;

    let mut staged_paths: Vec<PathBuf> = Vec::new();
    let received = receive(c, &mut stream, &expected, &mut staged_paths).await;
    let result = async {
        let received = received?;
        // From here to the commit, no other import publishes, repairs or
        // takes back a digest.
        let _commit = c.artifacts.commit.lock().await;
        let sizes = stored_sizes(c, &expected).await?;
        let mut plan: Vec<(Verified, Publish)> = Vec::new();
        let mut damage: BTreeMap<Sha256Digest, String> = BTreeMap::new();
        for (digest, e) in &expected {
            let uploaded = received.iter().find(|v| v.digest == *digest);
            if !sizes.contains_key(&digest.to_hex()) {
                match uploaded {
                    Some(v) => plan.push((v.clone(), Publish::New)),
                    None => {
                        return Err(Error::Invalid(format!(
                            "{}: sha256 {digest} was not uploaded and is not in the controller's store",
                            e.what
                        )))
                    }
                }
                continue;
            }
            // Stored already: hash the copy again, so importing the same
            // bytes again repairs a damaged one.
            match check_stored(c, *digest, e.size).await? {
                StoredCopy::Intact => {}
                StoredCopy::Damaged(why) => match uploaded {
                    Some(v) => {
                        damage.insert(*digest, why);
                        plan.push((v.clone(), Publish::Repair));
                    }
                    None => {
                        return Err(Error::Invalid(format!(
                            "{}: the controller's copy of sha256 {digest} is damaged ({why}); import the release again from a directory holding that file to repair it",
                            e.what
                        )))
                    }
                },
            }
        }
        // Every copy read here is verified now: uploaded, or stored intact.
        check_images(c, &manifest, &received).await?;
        check_tarballs(c, &manifest, &received).await?;
        let present = sizes.len();
        let published = c.artifacts.publish(plan)?;
        for r in &published.repaired {
            let kept = r
                .kept
                .as_ref()
                .map(|p| format!("; the damaged copy is kept as {}", p.display()))
                .unwrap_or_default();
            let detail = format!(
                "{}: the stored copy of sha256 {} was damaged ({}) and was replaced by the verified bytes of this import{kept}",
                expected[&r.digest].what,
                r.digest,
                damage.get(&r.digest).map(String::as_str).unwrap_or("unknown"),
            );
            tracing::warn!("{detail}");
            let event = c
                .store
                .run(move |s| s.event("artifact.repaired", None, &detail))
                .await;
            if let Err(e) = event {
                tracing::warn!(error = %e, "could not record the repair as an event");
            }
        }
        let repaired = count(published.repaired.len());
        if existing.is_some() {
            tracing::info!(%version, repaired, "release imported again; artifacts verified");
            return Ok(v1::ImportReleaseResponse {
                version: version.clone(),
                services: count(manifest.services.len()),
                artifacts_stored: 0,
                artifacts_present: count(present),
                signed_by: signed_by.clone(),
                already_imported: true,
                artifacts_repaired: repaired,
            });
        }
        let release = StoredRelease {
            version: version.clone(),
            manifest: header.manifest.clone(),
            signatures: header.signatures.clone(),
            signed_by: signed_by.clone(),
            imported_at: now_ms(),
        };
        let artifacts: Vec<(String, u64)> =
            expected.iter().map(|(d, e)| (d.to_hex(), e.size)).collect();
        let stored = count(published.added.len());
        let inserted = c
            .store
            .run(move |s| s.insert_release(&release, &artifacts))
            .await;
        if let Err(e) = inserted {
            // Repaired copies stay: they are the verified bytes of digests
            // the store already records.
            for p in published.added {
                let _ = std::fs::remove_file(p);
            }
            return Err(e);
        }
        tracing::info!(%version, "release imported");
        Ok(v1::ImportReleaseResponse {
            version: version.clone(),
            services: count(manifest.services.len()),
            artifacts_stored: stored,
            artifacts_present: count(present),
            signed_by: signed_by.clone(),
            already_imported: false,
            artifacts_repaired: repaired,
        })
    }
    .await;
    for p in staged_paths {
        let _ = std::fs::remove_file(p);
    }
    result
}

/// Counts bounded by the manifest's limits fit a `u32`; saturates anyway.
fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// The sizes the store records for those of `expected` it holds. A digest
/// names one byte string, so one it holds under another size means the
/// pin is wrong: refused, naming both sizes.
async fn stored_sizes(
    c: &Controller,
    expected: &BTreeMap<Sha256Digest, Expected>,
) -> Result<BTreeMap<String, u64>> {
    let all: Vec<String> = expected.keys().map(|d| d.to_hex()).collect();
    let sizes = c.store.run(move |s| s.artifact_sizes(&all)).await?;
    for (digest, e) in expected {
        if let Some(stored) = sizes.get(&digest.to_hex()) {
            if *stored != e.size {
                return Err(Error::Invalid(format!(
                    "{}: pins sha256 {digest} with size {} bytes, but the controller stores that digest with size {stored} bytes; one digest has one size, so the pin is wrong: fix the size in the manifest and sign it again",
                    e.what, e.size
                )));
            }
        }
    }
    Ok(sizes)
}

/// Artifact file checks (hashing a stored copy again, reading a tarball's
/// first entries or an image tarball's manifest) running at once on tokio's
/// blocking pool. The store's calls run there too: a big import, or many
/// imports at once, wait for one of these places rather than take the pool.
pub const ARTIFACT_CHECKS: usize = 2;
static CHECKS: Semaphore = Semaphore::const_new(ARTIFACT_CHECKS);

/// Runs one blocking artifact check `f` under [`ARTIFACT_CHECKS`].
async fn check_bounded<T: Send + 'static>(
    what: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T> {
    let _place = CHECKS
        .acquire()
        .await
        .map_err(|_| Error::Internal(format!("{what}: the artifact check limiter is closed")))?;
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Internal(format!("{what}: {e}")))
}

/// Hashes the stored copy of `digest` again, off the async runtime.
async fn check_stored(c: &Controller, digest: Sha256Digest, size: u64) -> Result<StoredCopy> {
    let path = c.artifacts.path(&digest);
    check_bounded(&format!("checking stored artifact {digest}"), move || {
        check_copy(&path, &digest, size)
    })
    .await
}

/// `digests` without repeats, in their first order: each is looked up and
/// hashed once, and named once in the answer.
fn distinct(digests: Vec<Sha256Digest>) -> Vec<Sha256Digest> {
    let mut seen = BTreeSet::new();
    digests.into_iter().filter(|d| seen.insert(*d)).collect()
}

/// The most digests one `MissingArtifacts` call may ask about: every
/// artifact of the largest release (each service with a tarball and an
/// image tarball, and every migration it may pin).
pub const MAX_DIGESTS_PER_QUERY: usize = cutover_core::manifest::MAX_ARTIFACTS;

/// Which of `digests` the controller cannot serve: not recorded, or
/// recorded but with a stored copy that no longer hashes to its digest
/// (hashed again here). The CLI uploads these, so importing the same
/// release again repairs a damaged copy.
pub(crate) async fn missing_artifacts(
    c: &Controller,
    digests: Vec<Sha256Digest>,
) -> Result<Vec<String>> {
    if digests.len() > MAX_DIGESTS_PER_QUERY {
        return Err(Error::Invalid(format!(
            "{} digests asked about in one call, at most {MAX_DIGESTS_PER_QUERY} are allowed",
            digests.len()
        )));
    }
    let digests = distinct(digests);
    let all: Vec<String> = digests.iter().map(Sha256Digest::to_hex).collect();
    let sizes = c.store.run(move |s| s.artifact_sizes(&all)).await?;
    let mut missing = Vec::new();
    for digest in digests {
        let hex = digest.to_hex();
        let Some(size) = sizes.get(&hex) else {
            missing.push(hex);
            continue;
        };
        if let StoredCopy::Damaged(why) = check_stored(c, digest, *size).await? {
            tracing::warn!(artifact = %digest, problem = %why, "stored artifact is damaged; asking for it again");
            missing.push(hex);
        }
    }
    Ok(missing)
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

/// A service tarball must hold something: an empty archive would install
/// as a release with no files.
async fn check_tarballs(c: &Controller, manifest: &Manifest, received: &[Verified]) -> Result<()> {
    for s in &manifest.services {
        let Some(tarball) = &s.tarball else { continue };
        let path = match received.iter().find(|v| v.digest == tarball.sha256) {
            Some(v) => v.path.clone(),
            None => c.artifacts.path(&tarball.sha256),
        };
        let checked = check_bounded(&format!("checking tarball {}", tarball.file), move || {
            crate::artifacts::open_no_follow(&path)
                .map_err(|e| format!("{}: {e}", path.display()))
                .and_then(cutover_core::image::check_holds_files)
        })
        .await?;
        if let Err(e) = checked {
            return Err(Error::Invalid(format!(
                "release {}: service {:?}: tarball {} {e}; refused",
                manifest.version, s.name, tarball.file
            )));
        }
    }
    Ok(())
}

/// An image tarball must carry the image ID the manifest pins: the digest
/// of the config its own `manifest.json` names.
async fn check_images(c: &Controller, manifest: &Manifest, received: &[Verified]) -> Result<()> {
    for s in &manifest.services {
        let Some(image) = &s.image else { continue };
        let Some(tarball) = &image.tarball else {
            continue;
        };
        let path = match received.iter().find(|v| v.digest == tarball.sha256) {
            Some(v) => v.path.clone(),
            None => c.artifacts.path(&tarball.sha256),
        };
        let found = check_bounded(
            &format!("checking image tarball {}", tarball.file),
            move || {
                crate::artifacts::open_no_follow(&path)
                    .map_err(|e| format!("{}: {e}", path.display()))
                    .and_then(cutover_core::image::image_id)
            },
        )
        .await?;
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
) -> Result<Vec<Verified>> {
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
                    let verified = staged.finish(&what).await?;
                    staged_paths.push(verified.path.clone());
                    done.push(verified);
                }
                let digest = Sha256Digest::parse_prefixed(&start.sha256)
                    .map_err(|e| Error::Invalid(format!("uploaded artifact: {e}")))?;
                let e = expected.get(&digest).ok_or_else(|| {
                    Error::Invalid(format!(
                        "uploaded artifact sha256 {digest} is not named by the manifest"
                    ))
                })?;
                if done.iter().any(|v: &Verified| v.digest == digest) {
                    return Err(Error::Invalid(format!(
                        "{}: sha256 {digest} was uploaded twice in one import",
                        e.what
                    )));
                }
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
        let verified = staged.finish(&what).await?;
        staged_paths.push(verified.path.clone());
        done.push(verified);
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_digest_asked_about_twice_is_looked_up_and_answered_once() {
        let (a, b, c) = (
            Sha256Digest::of(b"a"),
            Sha256Digest::of(b"b"),
            Sha256Digest::of(b"c"),
        );
        // Repeats that are not next to each other, as a release naming one
        // tarball for two services and an image beside them asks.
        let asked = vec![a, b, a, c, b, a];
        assert_eq!(distinct(asked), vec![a, b, c]);
    }

    #[tokio::test]
    async fn artifact_checks_run_at_most_their_bound_at_once() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::Arc;
        let (running, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let checks: Vec<_> = (0..4 * ARTIFACT_CHECKS)
            .map(|_| {
                let (running, most) = (running.clone(), most.clone());
                tokio::spawn(check_bounded("test", move || {
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    // Long enough for the others to pile up behind it.
                    std::thread::sleep(std::time::Duration::from_millis(5));
                    running.fetch_sub(1, Ordering::SeqCst);
                }))
            })
            .collect();
        for check in checks {
            check.await.unwrap().unwrap();
        }
        let most = most.load(Ordering::SeqCst);
        assert!((1..=ARTIFACT_CHECKS).contains(&most), "{most} at once");
    }
}
