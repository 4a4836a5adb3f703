//! The content-addressed artifact store: `artifacts/<sha256>`, written
//! through a staging directory so that only verified bytes ever appear
//! under their digest. A stored copy found damaged is replaced only by
//! verified bytes, and the damaged copy is kept in `.damaged/`.

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use cutover_core::digest::Hasher;
use cutover_core::Sha256Digest;
use tokio::io::AsyncWriteExt;

use crate::error::{Error, Result};

const STAGING: &str = ".staging";
const DAMAGED: &str = ".damaged";

pub struct ArtifactStore {
    root: PathBuf,
    /// Held by an import from its look at what is stored to its commit, so
    /// two imports never publish, repair or take back one digest at once.
    pub commit: tokio::sync::Mutex<()>,
}

/// What a stored copy was found to be when it was hashed again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoredCopy {
    Intact,
    /// Missing, unreadable, or not the pinned bytes; says which.
    Damaged(String),
}

/// How a verified staged file goes under its digest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Publish {
    /// The store has no record of the digest: anything on disk under that
    /// name was never vouched for and is replaced.
    New,
    /// The store records the digest but its copy is damaged: the damaged
    /// copy is kept in `.damaged/` and replaced in one rename.
    Repair,
}

/// A staged file whose size and digest matched its pin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub digest: Sha256Digest,
    pub path: PathBuf,
}

/// What [`ArtifactStore::publish`] did.
#[derive(Debug, Default)]
pub struct Published {
    /// Newly stored under their digest; a failed commit takes them out.
    pub added: Vec<PathBuf>,
    /// Damaged copies replaced by verified bytes.
    pub repaired: Vec<Repaired>,
}

#[derive(Debug)]
pub struct Repaired {
    pub digest: Sha256Digest,
    /// Where the damaged copy was kept (none if it was missing).
    pub kept: Option<PathBuf>,
}

/// An artifact being received, hashed while it is written.
pub struct Staged {
    path: PathBuf,
    file: tokio::fs::File,
    hasher: Hasher,
    pub expected: Sha256Digest,
    pub expected_size: u64,
    done: bool,
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.done {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl ArtifactStore {
    pub fn open(root: &Path) -> Result<ArtifactStore> {
        let staging = root.join(STAGING);
        // Anything left in staging is from an import that did not finish.
        let _ = std::fs::remove_dir_all(&staging);
        std::fs::create_dir_all(&staging).map_err(|e| Error::io(&staging, e))?;
        Ok(ArtifactStore {
            root: root.to_path_buf(),
            commit: tokio::sync::Mutex::new(()),
        })
    }

    pub fn path(&self, digest: &Sha256Digest) -> PathBuf {
        self.root.join(digest.to_hex())
    }

    /// Hashes the stored copy of `digest` again (blocking). The copy is
    /// opened without following a symbolic link, and must be a regular
    /// file of exactly `size` bytes that hash to `digest`.
    pub fn check(&self, digest: &Sha256Digest, size: u64) -> StoredCopy {
        check_copy(&self.path(digest), digest, size)
    }

    pub async fn stage(&self, expected: Sha256Digest, expected_size: u64) -> Result<Staged> {
        let path = self.root.join(STAGING).join(format!(
            "{}-{:016x}",
            expected.to_hex(),
            rand::random::<u64>()
        ));
        let file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .await
            .map_err(|e| Error::io(&path, e))?;
        Ok(Staged {
            path,
            file,
            hasher: Hasher::new(),
            expected,
            expected_size,
            done: false,
        })
    }

    /// Moves verified staged files under their digests. If one fails, the
    /// ones this call added are taken back out before the error returns.
    pub fn publish(&self, items: Vec<(Verified, Publish)>) -> Result<Published> {
        let mut done = Published::default();
        let mut result = Ok(());
        for (item, how) in items {
            let r = self.publish_one(&item, how, &mut done);
            if r.is_err() {
                result = r;
                break;
            }
        }
        if let Err(e) = result {
            for p in done.added.drain(..) {
                let _ = std::fs::remove_file(p);
            }
            return Err(e);
        }
        let _ = cutover_core::fsutil::sync_dir(&self.root);
        if !done.repaired.is_empty() {
            let _ = cutover_core::fsutil::sync_dir(&self.root.join(DAMAGED));
        }
        Ok(done)
    }

    fn publish_one(&self, item: &Verified, how: Publish, done: &mut Published) -> Result<()> {
        let target = self.path(&item.digest);
        match how {
            Publish::New => {
                std::fs::rename(&item.path, &target).map_err(|e| Error::io(&target, e))?;
                done.added.push(target);
            }
            Publish::Repair => {
                let kept = self.keep_damaged(&item.digest)?;
                std::fs::rename(&item.path, &target).map_err(|e| Error::io(&target, e))?;
                tracing::warn!(
                    artifact = %item.digest,
                    kept = ?kept,
                    "damaged stored artifact replaced by verified bytes"
                );
                done.repaired.push(Repaired {
                    digest: item.digest,
                    kept,
                });
            }
        }
        Ok(())
    }

    /// Links the damaged copy of `digest` into `.damaged/`, so that the
    /// rename that replaces it keeps it for inspection. A copy that is not
    /// there is nothing to keep; one that cannot be linked stops the repair.
    fn keep_damaged(&self, digest: &Sha256Digest) -> Result<Option<PathBuf>> {
        let target = self.path(digest);
        match std::fs::symlink_metadata(&target) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io(&target, e)),
            Ok(_) => {}
        }
        let dir = self.root.join(DAMAGED);
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        let kept = dir.join(format!(
            "{}-{}",
            digest.to_hex(),
            cutover_core::views::now_ms()
        ));
        std::fs::hard_link(&target, &kept).map_err(|e| {
            Error::Internal(format!(
                "cannot keep the damaged copy {} as {}: {e}; nothing was replaced, free the space or fix the permissions and import again",
                target.display(),
                kept.display()
            ))
        })?;
        Ok(Some(kept))
    }
}

/// Hashes a stored copy at `path` (blocking): it must be a regular file,
/// not a symbolic link, of exactly `size` bytes that hash to `digest`.
pub fn check_copy(path: &Path, digest: &Sha256Digest, size: u64) -> StoredCopy {
    let mut file = match open_no_follow(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return StoredCopy::Damaged("the file is missing".into())
        }
        Err(e) if e.raw_os_error() == Some(nix::errno::Errno::ELOOP as i32) => {
            return StoredCopy::Damaged("it is a symbolic link".into())
        }
        Err(e) => return StoredCopy::Damaged(format!("it cannot be opened: {e}")),
    };
    let meta = match file.metadata() {
        Ok(m) => m,
        Err(e) => return StoredCopy::Damaged(format!("it cannot be read: {e}")),
    };
    if !meta.is_file() {
        return StoredCopy::Damaged("it is not a regular file".into());
    }
    if meta.len() != size {
        return StoredCopy::Damaged(format!("it is {} bytes, the pin says {size}", meta.len()));
    }
    let mut hasher = Hasher::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                hasher.update(&buf[..n]);
                if hasher.len() > size {
                    return StoredCopy::Damaged(format!(
                        "it grew past the pinned {size} bytes while it was read"
                    ));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return StoredCopy::Damaged(format!("it cannot be read: {e}")),
        }
    }
    let (found, len) = hasher.finish();
    if len != size {
        StoredCopy::Damaged(format!("it is {len} bytes, the pin says {size}"))
    } else if found != *digest {
        StoredCopy::Damaged(format!("its bytes hash to sha256 {found}"))
    } else {
        StoredCopy::Intact
    }
}

/// Opens `path` for reading without following a symbolic link at its end
/// (and without blocking on a FIFO in its place).
pub(crate) fn open_no_follow(path: &Path) -> std::io::Result<std::fs::File> {
    use nix::fcntl::OFlag;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags((OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK).bits())
        .open(path)
}

impl Staged {
    pub async fn write(&mut self, bytes: &[u8], what: &str) -> Result<()> {
        let total = u64::try_from(bytes.len())
            .ok()
            .and_then(|n| self.hasher.len().checked_add(n));
        if total.is_none_or(|t| t > self.expected_size) {
            return Err(Error::Invalid(format!(
                "{what}: more bytes than the manifest's size {}",
                self.expected_size
            )));
        }
        self.hasher.update(bytes);
        self.file
            .write_all(bytes)
            .await
            .map_err(|e| Error::io(&self.path, e))
    }

    /// Checks digest and size; returns the staged file on success and
    /// removes it on failure.
    pub async fn finish(mut self, what: &str) -> Result<Verified> {
        let flushed = async {
            self.file.flush().await?;
            self.file.sync_all().await
        }
        .await;
        let (digest, size) = std::mem::take(&mut self.hasher).finish();
        let problem = if let Err(e) = flushed {
            Some(Error::io(&self.path, e))
        } else if size != self.expected_size {
            Some(Error::Invalid(format!(
                "{what}: size is {size} bytes, the manifest says {}",
                self.expected_size
            )))
        } else if digest != self.expected {
            Some(Error::Invalid(format!(
                "{what}: bytes hash to sha256 {digest}, the manifest says {}",
                self.expected
            )))
        } else {
            None
        };
        match problem {
            Some(e) => Err(e),
            None => {
                self.done = true;
                Ok(Verified {
                    digest,
                    path: self.path.clone(),
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, ArtifactStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = ArtifactStore::open(dir.path()).unwrap();
        (dir, store)
    }

    async fn staged(store: &ArtifactStore, bytes: &[u8]) -> Verified {
        let digest = Sha256Digest::of(bytes);
        let mut s = store.stage(digest, bytes.len() as u64).await.unwrap();
        s.write(bytes, "test").await.unwrap();
        s.finish("test").await.unwrap()
    }

    #[test]
    fn check_finds_every_kind_of_damage() {
        let (dir, store) = store();
        let good = b"artifact bytes";
        let d = Sha256Digest::of(good);
        let size = good.len() as u64;
        let path = store.path(&d);
        assert_eq!(
            store.check(&d, size),
            StoredCopy::Damaged("the file is missing".into())
        );
        std::fs::write(&path, good).unwrap();
        assert_eq!(store.check(&d, size), StoredCopy::Intact);
        std::fs::write(&path, b"artifact bytez").unwrap();
        let StoredCopy::Damaged(why) = store.check(&d, size) else {
            panic!("flipped byte not found")
        };
        assert!(why.starts_with("its bytes hash to sha256 "), "{why}");
        std::fs::write(&path, b"artifact").unwrap();
        assert_eq!(
            store.check(&d, size),
            StoredCopy::Damaged("it is 8 bytes, the pin says 14".into())
        );
        // A link to the right bytes elsewhere is still not a stored copy.
        std::fs::remove_file(&path).unwrap();
        let outside = dir.path().join("outside");
        std::fs::write(&outside, good).unwrap();
        std::os::unix::fs::symlink(&outside, &path).unwrap();
        assert_eq!(
            store.check(&d, size),
            StoredCopy::Damaged("it is a symbolic link".into())
        );
    }

    #[tokio::test]
    async fn repair_keeps_the_damaged_copy_and_new_replaces_an_unrecorded_file() {
        let (dir, store) = store();
        let good = b"the real bytes";
        let d = Sha256Digest::of(good);
        std::fs::write(store.path(&d), b"the rotten one").unwrap();
        let v = staged(&store, good).await;
        let done = store.publish(vec![(v, Publish::Repair)]).unwrap();
        assert!(done.added.is_empty());
        let kept = done.repaired[0].kept.clone().unwrap();
        assert!(kept.starts_with(dir.path().join(".damaged")), "{kept:?}");
        assert_eq!(std::fs::read(&kept).unwrap(), b"the rotten one");
        assert_eq!(std::fs::read(store.path(&d)).unwrap(), good);
        assert_eq!(store.check(&d, good.len() as u64), StoredCopy::Intact);

        let other = b"other bytes";
        let o = Sha256Digest::of(other);
        std::fs::write(store.path(&o), b"never verified").unwrap();
        let v = staged(&store, other).await;
        let done = store.publish(vec![(v, Publish::New)]).unwrap();
        assert_eq!(done.added, vec![store.path(&o)]);
        assert_eq!(std::fs::read(store.path(&o)).unwrap(), other);
    }

    #[tokio::test]
    async fn a_failed_publish_takes_back_what_it_added() {
        let (_dir, store) = store();
        let first = staged(&store, b"first").await;
        let mut second = staged(&store, b"second").await;
        // Its staged file vanished: the rename fails.
        std::fs::remove_file(&second.path).unwrap();
        second.path = second.path.with_extension("gone");
        let first_digest = first.digest;
        let e = store
            .publish(vec![(first, Publish::New), (second, Publish::New)])
            .unwrap_err();
        assert!(
            e.to_string()
                .contains(&Sha256Digest::of(b"second").to_hex()),
            "{e}"
        );
        assert!(!store.path(&first_digest).exists());
    }

    #[tokio::test]
    async fn staging_refuses_bytes_past_the_pin() {
        let (_dir, store) = store();
        let mut s = store.stage(Sha256Digest::of(b"ab"), 2).await.unwrap();
        s.write(b"ab", "svc").await.unwrap();
        let e = s.write(b"c", "svc").await.unwrap_err().to_string();
        assert_eq!(e, "svc: more bytes than the manifest's size 2");
    }
}
