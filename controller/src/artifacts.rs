//! The content-addressed artifact store: `artifacts/<sha256>`, written
//! through a staging directory so that only verified bytes ever appear
//! under their digest.

use std::path::{Path, PathBuf};

use cutover_core::digest::Hasher;
use cutover_core::Sha256Digest;
use tokio::io::AsyncWriteExt;

use crate::error::{Error, Result};

pub struct ArtifactStore {
    root: PathBuf,
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
        let staging = root.join(".staging");
        // Anything left in staging is from an import that did not finish.
        let _ = std::fs::remove_dir_all(&staging);
        std::fs::create_dir_all(&staging).map_err(|e| Error::io(&staging, e))?;
        Ok(ArtifactStore {
            root: root.to_path_buf(),
        })
    }

    pub fn path(&self, digest: &Sha256Digest) -> PathBuf {
        self.root.join(digest.to_hex())
    }

    pub async fn stage(&self, expected: Sha256Digest, expected_size: u64) -> Result<Staged> {
        let path = self.root.join(".staging").join(format!(
            "{}-{:016x}",
            expected.to_hex(),
            rand::random::<u64>()
        ));
        let file = tokio::fs::File::create(&path)
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

    /// Moves verified staged files under their digests. Returns the ones
    /// that were new, so a failed commit can take them back out.
    pub fn publish(&self, staged: Vec<PathBuf>) -> Result<Vec<PathBuf>> {
        let mut added = Vec::new();
        for path in staged {
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.split('-').next())
                .ok_or_else(|| Error::Internal(format!("staged name {}", path.display())))?
                .to_string();
            let target = self.root.join(&name);
            if target.exists() {
                let _ = std::fs::remove_file(&path);
                continue;
            }
            std::fs::rename(&path, &target).map_err(|e| Error::io(&target, e))?;
            added.push(target);
        }
        if let Ok(dir) = std::fs::File::open(&self.root) {
            let _ = dir.sync_all();
        }
        Ok(added)
    }
}

impl Staged {
    pub async fn write(&mut self, bytes: &[u8], what: &str) -> Result<()> {
        if self.hasher.len() + bytes.len() as u64 > self.expected_size {
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

    /// Checks digest and size; returns the staged path on success and
    /// removes the file on failure.
    pub async fn finish(mut self, what: &str) -> Result<PathBuf> {
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
                Ok(self.path.clone())
            }
        }
    }
}
