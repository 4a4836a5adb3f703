//! The controller's durable state in SQLite: releases, artifacts, channels
//! and the event log, under a versioned schema; hosts and join tokens are in
//! [`hosts`], the fleet config and rollouts in [`rollouts`].
//! Heartbeats never reach this module; it is written on enrollment,
//! session start and end, imports and operator changes.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use cutover_core::views::{now_ms, ChannelView};
use rusqlite::{params, Connection, OptionalExtension};

use crate::error::{Error, Result};

mod events;
mod health;
mod host_releases;
mod hosts;
mod rollouts;
mod startup;
pub use events::EventQuery;
pub use hosts::{CertSerials, TokenProblem};
pub use rollouts::{LogLine, RolloutSave};
pub use startup::{open_checked, OpenOptions, MARKER_FILE, STORE_FILE};

/// Each entry upgrades the schema by one version; never edit a landed one.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE hosts (
    name           TEXT PRIMARY KEY,
    enrolled_at    INTEGER NOT NULL,
    cert_serial    TEXT NOT NULL,
    cert_not_after INTEGER NOT NULL,
    revoked_at     INTEGER,
    agent_version  TEXT NOT NULL DEFAULT '',
    last_seen      INTEGER,
    inventory      TEXT NOT NULL DEFAULT '[]'
);
CREATE TABLE join_tokens (
    token_hash TEXT PRIMARY KEY,
    host       TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    used_at    INTEGER
);
CREATE TABLE releases (
    version     TEXT PRIMARY KEY,
    manifest    BLOB NOT NULL,
    signatures  TEXT NOT NULL,
    signed_by   TEXT NOT NULL,
    imported_at INTEGER NOT NULL
);
CREATE TABLE artifacts (
    sha256    TEXT PRIMARY KEY,
    size      INTEGER NOT NULL,
    stored_at INTEGER NOT NULL
);
CREATE TABLE channels (
    name       TEXT PRIMARY KEY,
    version    TEXT NOT NULL REFERENCES releases(version),
    updated_at INTEGER NOT NULL
);
CREATE TABLE settings (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE events (
    id     INTEGER PRIMARY KEY AUTOINCREMENT,
    at     INTEGER NOT NULL,
    kind   TEXT NOT NULL,
    host   TEXT,
    detail TEXT NOT NULL
);
"#,
    r#"
CREATE TABLE fleet (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    toml       TEXT NOT NULL,
    applied_at INTEGER NOT NULL
);
CREATE TABLE rollouts (
    id         INTEGER PRIMARY KEY,
    status     TEXT NOT NULL,
    release    TEXT NOT NULL,
    services   TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    state      TEXT NOT NULL
);
ALTER TABLE events ADD COLUMN rollout INTEGER;
CREATE INDEX events_by_rollout ON events (rollout);
"#,
    // A rollout's plan is written once and its steps are rows, so a save
    // writes the steps that changed, not the whole rollout.
    r#"
CREATE TABLE rollout_steps (
    rollout INTEGER NOT NULL REFERENCES rollouts(id),
    idx     INTEGER NOT NULL,
    phase   TEXT NOT NULL,
    step    TEXT NOT NULL,
    PRIMARY KEY (rollout, idx)
);
ALTER TABLE rollouts ADD COLUMN plan TEXT NOT NULL DEFAULT 'null';
INSERT INTO rollout_steps (rollout, idx, phase, step)
    SELECT r.id, s.key, json_extract(s.value, '$.phase'), s.value
    FROM rollouts r, json_each(r.state, '$.steps') s;
UPDATE rollouts SET plan = json_extract(state, '$.plan'),
                    state = json_remove(state, '$.plan', '$.steps');
"#,
    // The certificate a host's last renewal replaced, still accepted for
    // the handover (NULL after an enrollment). Filled from the event log
    // once, for hosts whose last certificate event was a renewal.
    r#"
ALTER TABLE hosts ADD COLUMN previous_serial TEXT;
UPDATE hosts SET previous_serial = (
    SELECT substr(detail, 13) FROM events
    WHERE events.host = hosts.name AND kind IN ('host.enrolled', 'host.renewed')
      AND detail LIKE 'certificate %'
    ORDER BY id DESC LIMIT 1 OFFSET 1)
WHERE (SELECT kind FROM events
       WHERE events.host = hosts.name AND kind IN ('host.enrolled', 'host.renewed')
       ORDER BY id DESC LIMIT 1) = 'host.renewed';
"#,
    // A join token made with `--replace` may enroll a host that still
    // holds a valid certificate; tokens made before could not.
    r#"
ALTER TABLE join_tokens ADD COLUMN replaces INTEGER NOT NULL DEFAULT 0;
"#,
    // What each host has run of each service, as its steps ended: the
    // last known-good release a manual rollback goes back to.
    r#"
CREATE TABLE host_releases (
    host       TEXT NOT NULL,
    service    TEXT NOT NULL,
    digest     TEXT NOT NULL,
    identity   TEXT NOT NULL,
    healthy_ms INTEGER,
    bad_ms     INTEGER,
    PRIMARY KEY (host, service, digest)
);
CREATE INDEX host_releases_by_service ON host_releases (service);
"#,
];

/// A cheaply cloneable handle on the store. Calls block; async code runs
/// them through [`Store::run`].
#[derive(Clone)]
pub struct Store {
    conn: Arc<Mutex<Connection>>,
}

/// A release row as stored.
pub struct StoredRelease {
    pub version: String,
    pub manifest: Vec<u8>,
    pub signatures: String,
    pub signed_by: Vec<String>,
    pub imported_at: i64,
}

impl Store {
    pub fn open(path: &Path) -> Result<Store> {
        let mut conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        migrate(&mut conn, path)?;
        Ok(Store {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    pub(crate) fn with<T>(&self, f: impl FnOnce(&mut Connection) -> Result<T>) -> Result<T> {
        let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut conn)
    }

    /// Runs a blocking store call off the async runtime.
    pub async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .map_err(|e| Error::Internal(format!("store task: {e}")))?
    }

    // ------------------------------------------------------------ events

    pub fn event(&self, kind: &str, host: Option<&str>, detail: &str) -> Result<()> {
        self.with(|c| {
            insert_event(c, kind, host, detail)?;
            Ok(())
        })
    }

    // ---------------------------------------------------------- releases

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
    pub fn artifact_sizes(
        &self,
        digests: &[String],
    ) -> Result<std::collections::BTreeMap<String, u64>> {
        self.with(|c| {
            let mut stmt = c.prepare("SELECT size FROM artifacts WHERE sha256 = ?1")?;
            let mut sizes = std::collections::BTreeMap::new();
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

    // ---------------------------------------------------------- channels

    pub fn set_channel(&self, name: &str, version: &str) -> Result<()> {
        self.with(|c| {
            let tx = c.transaction()?;
            let exists: bool = tx
                .prepare("SELECT 1 FROM releases WHERE version = ?1")?
                .exists([version])?;
            if !exists {
                return Err(Error::NotFound(format!(
                    "no release {version}; import it first with `cutover release import`"
                )));
            }
            tx.execute(
                "INSERT INTO channels (name, version, updated_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT(name) DO UPDATE SET version = ?2, updated_at = ?3",
                params![name, version, now_ms()],
            )?;
            insert_event(
                &tx,
                "channel.set",
                None,
                &format!("channel {name} -> {version}"),
            )?;
            tx.commit()?;
            Ok(())
        })
    }

    pub fn set_default_channel(&self, name: &str) -> Result<()> {
        self.with(|c| {
            let tx = c.transaction()?;
            let exists = tx
                .prepare("SELECT 1 FROM channels WHERE name = ?1")?
                .exists([name])?;
            if !exists {
                return Err(Error::NotFound(format!(
                    "no channel {name:?}; create it with `cutover channel set {name} VERSION`"
                )));
            }
            tx.execute(
                "INSERT INTO settings (key, value) VALUES ('default_channel', ?1)
                 ON CONFLICT(key) DO UPDATE SET value = ?1",
                [name],
            )?;
            insert_event(
                &tx,
                "channel.default",
                None,
                &format!("default channel {name}"),
            )?;
            tx.commit()?;
            Ok(())
        })
    }

    pub fn channels(&self) -> Result<Vec<ChannelView>> {
        self.with(|c| {
            let default: Option<String> = c
                .query_row(
                    "SELECT value FROM settings WHERE key = 'default_channel'",
                    [],
                    |r| r.get(0),
                )
                .optional()?;
            let mut stmt =
                c.prepare("SELECT name, version, updated_at FROM channels ORDER BY name")?;
            let rows = stmt
                .query_map([], |r| {
                    let name: String = r.get(0)?;
                    Ok(ChannelView {
                        is_default: default.as_deref() == Some(name.as_str()),
                        name,
                        version: r.get(1)?,
                        updated_at: cutover_core::views::from_ms(r.get(2)?),
                    })
                })?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
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

pub(crate) fn insert_event(
    c: &Connection,
    kind: &str,
    host: Option<&str>,
    detail: &str,
) -> Result<()> {
    c.execute(
        "INSERT INTO events (at, kind, host, detail) VALUES (?1, ?2, ?3, ?4)",
        params![now_ms(), kind, host, detail],
    )?;
    Ok(())
}

fn migrate(conn: &mut Connection, path: &Path) -> Result<()> {
    let version: usize = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if version > MIGRATIONS.len() {
        return Err(Error::StoreSchema {
            path: PathBuf::from(path),
            problem: format!(
                "schema version {version} is newer than this controller knows ({}); run a newer cutover-controller",
                MIGRATIONS.len()
            ),
        });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", i + 1)?;
        tx.commit()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
