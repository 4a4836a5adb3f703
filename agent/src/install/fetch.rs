//! Downloads an artifact from the controller by digest into
//! `downloads/<sha256>.part`, hashing as it writes and, for the one-pass
//! install, handing each chunk on to the extractor ([`crate::install::pipeline`]).
//! A broken connection resumes from the bytes already on disk; the result
//! is accepted only if both size and SHA-256 match what the signed release
//! pins.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::mpsc;

use cutover_core::digest::Hasher;
use cutover_core::rollout::Evidence;
use cutover_core::Sha256Digest;

/// Opens a fresh connection to the controller's artifact service and
/// streams one artifact from an offset. The real one dials with the
/// agent's certificate; tests fake it.
pub trait Source: Send + Sync {
    fn open<'a>(
        &'a self,
        sha256: &'a Sha256Digest,
        offset: u64,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Chunks, String>> + Send + 'a>>;
}

/// A stream of byte chunks; an `Err` item is a broken transfer.
pub type Chunks = std::pin::Pin<Box<dyn futures::Stream<Item = Result<Vec<u8>, String>> + Send>>;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Fetched {
    /// Bytes that came over the network in this call.
    pub transferred: u64,
    /// Offset the first request started from (bytes kept from before).
    pub resumed_from: u64,
    pub attempts: u32,
}

/// Where the artifact's bytes go besides the `.part` file, in order from
/// its first byte (a resumed download sends what was on disk first). The
/// reader may stop early (an archive the extractor refused); the download
/// still runs to the end, so the digest can tell bad bytes from a bad
/// archive.
pub struct Tee(Option<mpsc::Sender<Vec<u8>>>);

impl Tee {
    pub fn none() -> Tee {
        Tee(None)
    }

    pub fn to(tx: mpsc::Sender<Vec<u8>>) -> Tee {
        Tee(Some(tx))
    }

    async fn send(&mut self, chunk: Vec<u8>) {
        if let Some(tx) = &self.0 {
            if tx.send(chunk).await.is_err() {
                self.0 = None;
            }
        }
    }
}

const ATTEMPTS: u32 = 30;

pub fn part_path(data_dir: &Path, sha256: &Sha256Digest) -> PathBuf {
    data_dir
        .join("downloads")
        .join(format!("{}.part", sha256.to_hex()))
}

/// Fetches into the `.part` file and verifies it, passing every byte to
/// `tee` as well. On a mismatch the file is deleted so the next attempt
/// starts clean.
pub async fn fetch(
    source: &dyn Source,
    data_dir: &Path,
    sha256: &Sha256Digest,
    size: u64,
    mut tee: Tee,
) -> Result<(PathBuf, Fetched), Evidence> {
    let part = part_path(data_dir, sha256);
    let dir = part.parent().expect("part path has a parent");
    std::fs::create_dir_all(dir)
        .map_err(|e| Evidence::new("fetch", format!("{}: {e}", dir.display())))?;
    let on_part = |e: std::io::Error| Evidence::new("fetch", format!("{}: {e}", part.display()));
    let (mut file, mut hasher) = resume(&part, size, &mut tee).await.map_err(on_part)?;
    let mut out = Fetched {
        resumed_from: hasher.len(),
        ..Fetched::default()
    };
    if out.resumed_from > 0 {
        tracing::info!(artifact = %sha256, offset = out.resumed_from, "resuming download");
    }
    let mut last_error = String::new();
    while hasher.len() < size && out.attempts < ATTEMPTS {
        out.attempts += 1;
        if out.attempts > 1 {
            let wait = Duration::from_millis(250 * u64::from(out.attempts.min(8)));
            tracing::warn!(artifact = %sha256, offset = hasher.len(), error = %last_error, retry_in = ?wait, "download interrupted; resuming");
            tokio::time::sleep(wait).await;
        }
        let mut chunks = match source.open(sha256, hasher.len()).await {
            Ok(c) => c,
            Err(e) => {
                last_error = e;
                continue;
            }
        };
        use futures::StreamExt;
        while let Some(chunk) = chunks.next().await {
            match chunk {
                Ok(data) => {
                    if hasher.len() + data.len() as u64 > size {
                        drop(file);
                        let _ = std::fs::remove_file(&part);
                        return Err(Evidence::new("verify", format!("artifact {sha256} is larger than the {size} bytes the release pins")));
                    }
                    file.write_all(&data).map_err(on_part)?;
                    hasher.update(&data);
                    out.transferred += data.len() as u64;
                    tee.send(data).await;
                }
                Err(e) => {
                    last_error = e;
                    break;
                }
            }
        }
        if hasher.len() < size && last_error.is_empty() {
            last_error = "the controller ended the stream early".into();
        }
    }
    // Not synced: the file only lets a restarted agent resume. A sync here
    // would not cover a crash mid-download anyway; bytes a crash garbled
    // fail the digest, which deletes the file.
    drop(file);
    let (digest, len) = hasher.finish();
    if len < size {
        return Err(Evidence::new(
            "fetch",
            format!(
                "artifact {sha256}: got {len} of {size} bytes after {} attempts: {last_error}",
                out.attempts
            ),
        ));
    }
    if digest != *sha256 {
        let _ = std::fs::remove_file(&part);
        return Err(Evidence::new(
            "verify",
            format!("artifact bytes hash to {digest}, but the release pins {sha256}; refused"),
        ));
    }
    Ok((part, out))
}

/// Opens the `.part` file for appending, hashing what it already holds
/// and passing it to `tee`.
async fn resume(part: &Path, size: u64, tee: &mut Tee) -> std::io::Result<(std::fs::File, Hasher)> {
    let mut hasher = Hasher::new();
    if let Ok(mut f) = std::fs::File::open(part) {
        if f.metadata()?.len() > size {
            drop(f);
            std::fs::remove_file(part)?;
        } else {
            loop {
                let mut buf = vec![0u8; cutover_proto::CHUNK_BYTES];
                let n = f.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                buf.truncate(n);
                hasher.update(&buf);
                tee.send(buf).await;
            }
        }
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(part)?;
    // Bytes past what was hashed cannot exist: the file was just read whole.
    Ok((file, hasher))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// Serves `data`, breaking the first `breaks` transfers after 3 bytes.
    struct Flaky {
        data: Vec<u8>,
        breaks: u32,
        opened: AtomicU32,
        offsets: std::sync::Mutex<Vec<u64>>,
    }

    impl Source for Flaky {
        fn open<'a>(
            &'a self,
            _sha: &'a Sha256Digest,
            offset: u64,
        ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Chunks, String>> + Send + 'a>>
        {
            Box::pin(async move {
                self.offsets.lock().unwrap().push(offset);
                let n = self.opened.fetch_add(1, Ordering::SeqCst);
                let rest = self.data[offset as usize..].to_vec();
                let items: Vec<Result<Vec<u8>, String>> = if n < self.breaks {
                    vec![
                        Ok(rest[..3.min(rest.len())].to_vec()),
                        Err("connection reset".into()),
                    ]
                } else {
                    rest.chunks(4).map(|c| Ok(c.to_vec())).collect()
                };
                Ok(Box::pin(futures::stream::iter(items)) as Chunks)
            })
        }
    }

    fn flaky(data: &[u8], breaks: u32) -> Flaky {
        Flaky {
            data: data.to_vec(),
            breaks,
            opened: AtomicU32::new(0),
            offsets: Default::default(),
        }
    }

    #[tokio::test]
    async fn resumes_from_the_offset_after_a_break() {
        let dir = tempfile::tempdir().unwrap();
        let data = b"0123456789abcdef".to_vec();
        let sha = Sha256Digest::of(&data);
        let src = flaky(&data, 2);
        let (path, f) = fetch(&src, dir.path(), &sha, data.len() as u64, Tee::none())
            .await
            .unwrap();
        assert_eq!(std::fs::read(path).unwrap(), data);
        assert_eq!(*src.offsets.lock().unwrap(), [0, 3, 6]);
        assert_eq!((f.transferred, f.attempts), (16, 3));
    }

    #[tokio::test]
    async fn wrong_bytes_are_refused_and_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let data = b"0123456789".to_vec();
        let pinned = Sha256Digest::of(b"something else");
        let e = fetch(&flaky(&data, 0), dir.path(), &pinned, 10, Tee::none())
            .await
            .unwrap_err();
        assert_eq!(e.gate, "verify");
        assert!(!part_path(dir.path(), &pinned).exists());
        let e = fetch(
            &flaky(&data, 0),
            dir.path(),
            &Sha256Digest::of(&data),
            5,
            Tee::none(),
        )
        .await
        .unwrap_err();
        assert!(e.detail.contains("larger than"), "{}", e.detail);
    }
}
