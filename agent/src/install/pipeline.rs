//! A tarball's install pipeline in one pass over its bytes: each chunk is
//! written to the `.part` file, hashed and handed to the hardened extractor
//! on a thread of its own as it arrives. What the extractor writes goes to
//! a staging directory that nothing runs from; the caller renames it into
//! `releases/<sha256>/` only once the digest and size match what the signed
//! release pins. Until then the unpacked files are untrusted scratch, and
//! any failure removes them. A verified release is synced to disk before it
//! is handed over, and [`publish`] names it without ever replacing or
//! merging into a release another installer made first.

use std::io::Read;
use std::path::{Path, PathBuf};

use tokio::sync::mpsc;

use cutover_core::rollout::Evidence;
use cutover_core::Sha256Digest;

use crate::install::extract::{self, Limits, Unpacked};
use crate::install::fetch::{self, Fetched, Source, Tee};

/// Chunks in flight between the download and the extractor (256 KiB each).
const QUEUE: usize = 16;

/// Downloads, verifies and unpacks the artifact into `staging`, which must
/// not exist. On success `staging` holds the verified release, synced to
/// disk, and the `.part` file is gone; on failure `staging` is gone, and
/// the `.part` file is kept only when the download broke (to resume it).
pub async fn fetch_and_unpack(
    source: &dyn Source,
    data_dir: &Path,
    sha256: &Sha256Digest,
    size: u64,
    staging: &Path,
    limits: Limits,
) -> Result<(Fetched, Unpacked), Evidence> {
    let (tx, rx) = mpsc::channel(QUEUE);
    let dest = staging.to_path_buf();
    let extractor =
        tokio::task::spawn_blocking(move || extract::unpack_reader(Chunks::new(rx), &dest, limits));
    let fetched = fetch::fetch(source, data_dir, sha256, size, Tee::to(tx)).await;
    // The sender is gone with `fetch`: the extractor sees the end of the
    // bytes, whether they were all there or not.
    let unpacked = extractor
        .await
        .map_err(|e| Evidence::new("unpack", format!("the extractor stopped: {e}")));
    let discard = |part: Option<&PathBuf>| {
        let _ = std::fs::remove_dir_all(staging);
        if let Some(part) = part {
            let _ = std::fs::remove_file(part);
        }
    };
    // The digest speaks first: an archive that fails to unpack may just be
    // bytes that are not the release's.
    let (part, fetched) = match fetched {
        Ok(f) => f,
        Err(e) => {
            discard(None);
            return Err(e);
        }
    };
    match unpacked {
        Ok(Ok(u)) => {
            let _ = std::fs::remove_file(&part);
            if let Err(e) = sync_tree(staging).await {
                discard(None);
                return Err(Evidence::new(
                    "unpack",
                    format!("{}: syncing the unpacked release: {e}", staging.display()),
                ));
            }
            Ok((fetched, u))
        }
        Ok(Err(e)) => {
            discard(Some(&part));
            Err(Evidence::new(
                "unpack",
                format!("artifact {sha256} refused: {e}"),
            ))
        }
        Err(e) => {
            discard(Some(&part));
            Err(e)
        }
    }
}

/// How a verified staging directory became `releases/<sha256>/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Published {
    /// Renamed into place.
    Renamed,
    /// Another installer's whole, verified copy was there first; the
    /// staging directory is left for its owner to remove.
    AlreadyThere,
}

/// Gives a verified, synced staging directory its digest's name with one
/// `rename`, which never merges into or replaces a non-empty directory:
/// `dest` is either this tree whole or the one that was there before.
pub fn publish(staging: &Path, dest: &Path) -> std::io::Result<Published> {
    match std::fs::rename(staging, dest) {
        Ok(()) => Ok(Published::Renamed),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::DirectoryNotEmpty | std::io::ErrorKind::AlreadyExists
            ) && dest.is_dir() =>
        {
            Ok(Published::AlreadyThere)
        }
        Err(e) => Err(e),
    }
}

/// Puts what the extractor wrote on disk before the release can become
/// visible under its digest: an existing `releases/<sha256>/` is trusted
/// as whole, so after a power cut it must not hold empty or torn files.
/// One `syncfs` of the filesystem instead of an `fsync` per file: a
/// release may hold thousands of files, and each `fsync` is a journal
/// commit of its own.
async fn sync_tree(dir: &Path) -> std::io::Result<()> {
    let dir = std::fs::File::open(dir)?;
    tokio::task::spawn_blocking(move || nix::unistd::syncfs(&dir).map_err(std::io::Error::from))
        .await
        .map_err(std::io::Error::other)?
}

/// The chunks the download sends, read as one stream of bytes.
struct Chunks {
    rx: mpsc::Receiver<Vec<u8>>,
    chunk: Vec<u8>,
    at: usize,
}

impl Chunks {
    fn new(rx: mpsc::Receiver<Vec<u8>>) -> Chunks {
        Chunks {
            rx,
            chunk: Vec::new(),
            at: 0,
        }
    }
}

impl Read for Chunks {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.at == self.chunk.len() {
            match self.rx.blocking_recv() {
                Some(next) => (self.chunk, self.at) = (next, 0),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len() - self.at);
        buf[..n].copy_from_slice(&self.chunk[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;
    use crate::install::fetch::Chunks as Stream;

    const LIMITS: Limits = Limits {
        max_bytes: 64 << 20,
        max_entries: 1000,
    };

    /// Serves `bytes` in 1 KiB chunks; the first transfer breaks halfway
    /// when `break_once` is set.
    struct Served {
        bytes: Vec<u8>,
        break_once: AtomicBool,
    }

    impl Source for Served {
        fn open<'a>(
            &'a self,
            _sha: &'a Sha256Digest,
            offset: u64,
        ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Stream, String>> + Send + 'a>>
        {
            Box::pin(async move {
                let rest = &self.bytes[offset as usize..];
                let mut items: Vec<Result<Vec<u8>, String>> =
                    rest.chunks(1024).map(|c| Ok(c.to_vec())).collect();
                if self.break_once.swap(false, Ordering::SeqCst) {
                    items.truncate(items.len() / 2);
                    items.push(Err("connection reset".into()));
                }
                Ok(Box::pin(futures::stream::iter(items)) as Stream)
            })
        }
    }

    fn served(bytes: &[u8], break_once: bool) -> Served {
        Served {
            bytes: bytes.to_vec(),
            break_once: AtomicBool::new(break_once),
        }
    }

    /// A gzipped release: `files` regular files of 40 KiB each (so the
    /// archive spans many chunks), plus `extra` entries.
    fn tgz(files: usize, extra: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for i in 0..files {
            let data: Vec<u8> = (0..40 * 1024).map(|j| (i * 7 + j * 13) as u8).collect();
            let mut h = tar::Header::new_ustar();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            b.append_data(&mut h, format!("data/{i}.bin"), &data[..])
                .unwrap();
        }
        extra(&mut b);
        let tar = b.into_inner().unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &tar).unwrap();
        gz.finish().unwrap()
    }

    async fn run(
        dir: &Path,
        source: &Served,
        sha: &Sha256Digest,
    ) -> (PathBuf, Result<(Fetched, Unpacked), Evidence>) {
        let staging = dir.join("releases").join(".tmp-x");
        std::fs::create_dir_all(staging.parent().unwrap()).unwrap();
        let size = source.bytes.len() as u64;
        let r = fetch_and_unpack(source, dir, sha, size, &staging, LIMITS).await;
        (staging, r)
    }

    #[tokio::test]
    async fn a_broken_download_resumes_and_the_release_unpacks_whole_in_one_pass() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = tgz(20, |_| {});
        let sha = Sha256Digest::of(&bytes);
        let (staging, r) = run(dir.path(), &served(&bytes, true), &sha).await;
        let (fetched, unpacked) = r.unwrap();
        assert_eq!(fetched.attempts, 2);
        assert_eq!(fetched.transferred, bytes.len() as u64);
        assert_eq!((unpacked.files, unpacked.bytes), (20, 20 * 40 * 1024));
        let last: Vec<u8> = (0..40 * 1024).map(|j| (19 * 7 + j * 13) as u8).collect();
        assert_eq!(std::fs::read(staging.join("data/19.bin")).unwrap(), last);
        assert!(!fetch::part_path(dir.path(), &sha).exists());
    }

    #[tokio::test]
    async fn what_a_restarted_agent_downloaded_before_is_unpacked_from_disk_first() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = tgz(10, |_| {});
        let sha = Sha256Digest::of(&bytes);
        let part = fetch::part_path(dir.path(), &sha);
        std::fs::create_dir_all(part.parent().unwrap()).unwrap();
        std::fs::write(&part, &bytes[..bytes.len() / 3]).unwrap();
        let (staging, r) = run(dir.path(), &served(&bytes, false), &sha).await;
        let (fetched, unpacked) = r.unwrap();
        assert_eq!(fetched.resumed_from, (bytes.len() / 3) as u64);
        assert_eq!(unpacked.files, 10);
        assert!(staging.join("data/0.bin").is_file());
    }

    #[tokio::test]
    async fn bytes_that_unpack_but_are_not_the_pinned_ones_leave_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = tgz(3, |_| {});
        let pinned = Sha256Digest::of(b"the release's real bytes");
        let (staging, r) = run(dir.path(), &served(&bytes, false), &pinned).await;
        let e = r.unwrap_err();
        assert_eq!(e.gate, "verify", "{}", e.detail);
        assert!(!staging.exists(), "unverified files stayed");
        assert!(!fetch::part_path(dir.path(), &pinned).exists());
    }

    #[tokio::test]
    async fn garbage_that_is_not_the_pinned_bytes_is_a_verify_failure_not_an_unpack_one() {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = tgz(3, |_| {});
        bytes[100..200].fill(0xff);
        let probe = dir.path().join("probe");
        assert!(extract::unpack_reader(&bytes[..], &probe, LIMITS).is_err());
        let pinned = Sha256Digest::of(&tgz(3, |_| {}));
        let (staging, r) = run(dir.path(), &served(&bytes, false), &pinned).await;
        let e = r.unwrap_err();
        assert_eq!(e.gate, "verify", "{}", e.detail);
        assert!(!staging.exists());
    }

    #[tokio::test]
    async fn a_pinned_archive_the_extractor_refuses_is_named_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = tgz(3, |b| {
            let mut h = tar::Header::new_ustar();
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_size(0);
            b.append_link(&mut h, "escape", "/etc/passwd").unwrap();
        });
        let sha = Sha256Digest::of(&bytes);
        let (staging, r) = run(dir.path(), &served(&bytes, false), &sha).await;
        let e = r.unwrap_err();
        assert_eq!(e.gate, "unpack");
        assert!(
            e.detail.contains("\"escape\"") && e.detail.contains("outside the release"),
            "{}",
            e.detail
        );
        assert!(!staging.exists());
        assert!(!fetch::part_path(dir.path(), &sha).exists());
    }
}
