//! The store's schema: SQLite tables under a version kept in
//! `PRAGMA user_version`, upgraded by an append-only list of migrations.

use std::path::{Path, PathBuf};

use rusqlite::Connection;

use crate::error::{Error, Result};

/// Each entry upgrades the schema by one version; never edit a landed one.
pub(super) const MIGRATIONS: &[&str] = &[
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
    // What the controller last saw of each data migration
    // (cutover_core::data_migration::Record as JSON).
    r#"
CREATE TABLE data_migrations (
    service TEXT NOT NULL,
    id      TEXT NOT NULL,
    record  TEXT NOT NULL,
    PRIMARY KEY (service, id)
);
"#,
];

pub(super) fn migrate(conn: &mut Connection, path: &Path) -> Result<()> {
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
