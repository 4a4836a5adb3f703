//! Releases in the store: the exact manifest bytes and signatures of each
//! imported release, and the artifacts they pin, recorded together.

use std::collections::BTreeMap;

use cutover_core::views::now_ms;
use rusqlite::{params, OptionalExtension};

use super::{insert_event, Store};
use crate::error::{Error, Result};

/// A release row as stored.
pub struct StoredRelease {
    pub version: String,
    pub manifest: Vec<u8>,
    pub signatures: String,
    pub signed_by: Vec<String>,
    pub imported_at: i64,
}

impl Store {
    pub fn release(&self, version: &str) -> Result<Option<StoredRelease>> {
        self.with(|c| {
            Ok(c.query_row(
                "SELECT version, manifest, signatures, signed_by, imported_at FROM releases WHERE version = ?1",
                [version],
                release_row,
            )
            .optional()?)
        })
    }

    pub fn releases(&self) -> Result<Vec<StoredRelease>> {
        self.with(|c| {
            let mut stmt = c.prepare(
                "SELECT version, manifest, signatures, signed_by, imported_at FROM releases ORDER BY imported_at",
            )?;
            let rows = stmt
                .query_map([], release_row)?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
    }

    /// The recorded size of each of `digests` that is in the store.
    pub fn artifact_sizes(&self, digests: &[String]) -> Result<BTreeMap<String, u64>> {
        self.with(|c| {
            let mut stmt = c.prepare("SELECT size FROM artifacts WHERE sha256 = ?1")?;
            let mut sizes = BTreeMap::new();
            for d in digests {
                let size: Option<i64> = stmt.query_row([d], |r| r.get(0)).optional()?;
                if let Some(size) = size {
                    let size = u64::try_from(size).map_err(|_| {
                        Error::Internal(format!("store: artifact {d} is recorded with size {size}"))
                    })?;
                    sizes.insert(d.clone(), size);
                }
            }
            Ok(sizes)
        })
    }

    /// Records a verified release and its artifacts in one transaction.
    pub fn insert_release(
        &self,
        release: &StoredRelease,
        artifacts: &[(String, u64)],
    ) -> Result<()> {
        self.with(|c| {
            let tx = c.transaction()?;
            tx.execute(
                "INSERT INTO releases (version, manifest, signatures, signed_by, imported_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    release.version,
                    release.manifest,
                    release.signatures,
                    release.signed_by.join(","),
                    release.imported_at
                ],
            )?;
            for (sha, size) in artifacts {
                let size = i64::try_from(*size).map_err(|_| {
                    Error::Internal(format!("artifact {sha}: size {size} is past what the store holds"))
                })?;
                tx.execute(
                    "INSERT OR IGNORE INTO artifacts (sha256, size, stored_at) VALUES (?1, ?2, ?3)",
                    params![sha, size, now_ms()],
                )?;
            }
            insert_event(
                &tx,
                "release.imported",
                None,
                &format!("release {} signed by {}", release.version, release.signed_by.join(", ")),
            )?;
            tx.commit()?;
            Ok(())
        })
    }
}

fn release_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<StoredRelease> {
    let signed_by: String = r.get(3)?;
    Ok(StoredRelease {
        version: r.get(0)?,
        manifest: r.get(1)?,
        signatures: r.get(2)?,
        signed_by: signed_by
            .split(',')
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect(),
        imported_at: r.get(4)?,
    })
}
