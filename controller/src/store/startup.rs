//! Start-up checks on `state.db`: a data directory that has held state never
//! silently becomes an empty controller, and a damaged store is refused at
//! start (`PRAGMA quick_check`) instead of failing calls later. Nothing here
//! deletes, truncates or rewrites an existing file.

use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags};

use super::Store;
use crate::error::{Error, Result};

/// The SQLite file inside the data directory.
pub const STORE_FILE: &str = "state.db";
/// Written once the store exists: while it is there, a missing or empty
/// `state.db` is a lost store, not a new controller.
pub const MARKER_FILE: &str = "state.created";
/// How many lines of `quick_check` output an error quotes.
const QUOTED_PROBLEMS: usize = 3;

/// What the operator allowed at start.
#[derive(Clone, Copy, Debug, Default)]
pub struct OpenOptions {
    /// Start with a new, empty store even though the data directory shows
    /// that this controller has held state (`--allow-empty-store`).
    pub allow_empty_store: bool,
}

/// What is at the store's path before anything opens it for writing.
#[derive(Debug, PartialEq, Eq)]
enum Found {
    Missing,
    /// Zero bytes, or a SQLite file with no schema in it.
    Empty,
    Present,
}

/// Opens `data_dir/state.db` after the start-up checks; see the module doc.
pub fn open_checked(data_dir: &Path, options: OpenOptions) -> Result<Store> {
    let path = data_dir.join(STORE_FILE);
    let found = inspect(&path)?;
    let mut started_empty_over = None;
    if found != Found::Present {
        // SQLite would read a write-ahead log left by the lost store into
        // the new one: neither a fresh store nor the old one.
        let wal = data_dir.join(format!("{STORE_FILE}-wal"));
        match std::fs::metadata(&wal) {
            Ok(m) if m.len() > 0 => {
                return Err(unusable(
                    &path,
                    format!(
                        "{}, but its write-ahead log {} ({} bytes) is still there; move {STORE_FILE}-wal and {STORE_FILE}-shm aside (or restore {STORE_FILE} beside them) before starting",
                        if found == Found::Missing { "is missing" } else { "is empty" },
                        wal.display(),
                        m.len()
                    ),
                ));
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(&wal, e)),
        }
        let evidence = held_state(data_dir)?;
        if !evidence.is_empty() {
            let what = if found == Found::Missing {
                "is missing"
            } else {
                "is empty"
            };
            let evidence = evidence.join("; ");
            if !options.allow_empty_store {
                return Err(unusable(
                    &path,
                    format!(
                        "{what}, but {} shows this controller has held state ({evidence}); refusing to start an empty controller: restore {STORE_FILE} from a backup, or start with --allow-empty-store to begin with an empty store (nothing in the directory is deleted)",
                        data_dir.display()
                    ),
                ));
            }
            tracing::warn!(store = %path.display(), %evidence, "store {what}; starting with an empty store as --allow-empty-store asks");
            started_empty_over = Some(evidence);
        }
    }
    let store = Store::open(&path)?;
    if let Some(evidence) = started_empty_over {
        store.event(
            "store.started_empty",
            None,
            &format!("started with an empty store (--allow-empty-store) although the data directory had held state: {evidence}"),
        )?;
    }
    let marker = data_dir.join(MARKER_FILE);
    if !marker.exists() {
        let text = format!(
            "cutover-controller {} created {STORE_FILE} in this directory.\nWhile this file exists, the controller refuses to start on a missing or empty {STORE_FILE} unless started with --allow-empty-store.\n",
            cutover_core::VERSION
        );
        cutover_core::fsutil::write_atomic(&marker, text.as_bytes(), 0o644)?;
    }
    Ok(store)
}

/// Looks at the store without writing to it, and runs the integrity check
/// on a store that has a schema.
fn inspect(path: &Path) -> Result<Found> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Found::Missing),
        Err(e) => return Err(Error::io(path, e)),
    };
    if !meta.is_file() {
        return Err(unusable(
            path,
            "is not a regular file; move it aside or fix data_dir in the controller config".into(),
        ));
    }
    if meta.len() == 0 {
        return Ok(Found::Empty);
    }
    // Read-write (a WAL store needs its -shm), but nothing below writes.
    let cannot_read = |e: rusqlite::Error| unreadable(path, &format!("cannot read it: {e}"));
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(cannot_read)?;
    let tables: i64 = conn
        .query_row("SELECT count(*) FROM sqlite_schema", [], |r| r.get(0))
        .map_err(cannot_read)?;
    if tables == 0 {
        return Ok(Found::Empty);
    }
    // The check reports what it finds as rows, or stops with an error
    // (SQLITE_CORRUPT) on some damage: either way the store is refused.
    let problems = quick_check(&conn).unwrap_or_else(|e| vec![e.to_string()]);
    if !problems.is_empty() {
        return Err(unreadable(
            path,
            &format!("PRAGMA quick_check: {}", problems.join("; ")),
        ));
    }
    Ok(Found::Present)
}

/// `PRAGMA quick_check`: the structure of every page (not index contents
/// against their tables, which `integrity_check` adds at several times the
/// cost). Returns the first problems found; empty when the store is sound.
fn quick_check(conn: &Connection) -> rusqlite::Result<Vec<String>> {
    let limit = QUOTED_PROBLEMS.to_string();
    let mut stmt = conn.prepare(&format!("PRAGMA quick_check({limit})"))?;
    let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
    let mut problems = Vec::new();
    for row in rows {
        let text = row?;
        if text == "ok" {
            continue;
        }
        // One row may hold several lines ("*** in database main ***" and
        // the finding): the error stays one line.
        for line in text.lines().map(str::trim) {
            if !line.is_empty() && !line.starts_with("***") {
                problems.push(line.to_string());
            }
        }
    }
    Ok(problems)
}

/// What in `data_dir` shows that a store existed here: the marker and any
/// artifact. Unreadable evidence is an error, never "no evidence".
fn held_state(data_dir: &Path) -> Result<Vec<String>> {
    let mut evidence = Vec::new();
    let marker = data_dir.join(MARKER_FILE);
    match std::fs::symlink_metadata(&marker) {
        Ok(_) => evidence.push(format!("{MARKER_FILE} exists")),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io(&marker, e)),
    }
    let artifacts = data_dir.join("artifacts");
    match std::fs::read_dir(&artifacts) {
        Ok(entries) => {
            let mut count = 0usize;
            for entry in entries {
                let entry = entry.map_err(|e| Error::io(&artifacts, e))?;
                if entry.file_name() != ".staging" {
                    count = count.saturating_add(1);
                }
            }
            if count > 0 {
                evidence.push(format!("artifacts/ holds {count} entries"));
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io(&artifacts, e)),
    }
    Ok(evidence)
}

fn unreadable(path: &Path, problem: &str) -> Error {
    unusable(
        path,
        format!(
            "failed its integrity check at start ({problem}); the file is kept as it is: stop here and restore {STORE_FILE} from a backup (`sqlite3 {STORE_FILE} .recover` can salvage rows into a new file)"
        ),
    )
}

fn unusable(path: &Path, problem: String) -> Error {
    Error::StoreUnusable {
        path: PathBuf::from(path),
        problem,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allow() -> OpenOptions {
        OpenOptions {
            allow_empty_store: true,
        }
    }

    /// A data directory whose store was created and holds a few rows, with
    /// one artifact beside it.
    fn held() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let s = open_checked(dir.path(), OpenOptions::default()).unwrap();
        // Enough events that the middle of the file is their pages.
        s.with(|c| {
            let tx = c.transaction()?;
            for i in 0..2000 {
                super::super::insert_event(&tx, "test", Some(&format!("h{i}")), &"x".repeat(200))?;
            }
            tx.commit()?;
            Ok(())
        })
        .unwrap();
        drop(s);
        std::fs::create_dir_all(dir.path().join("artifacts/.staging")).unwrap();
        std::fs::write(dir.path().join("artifacts").join("ab".repeat(32)), b"a").unwrap();
        dir
    }

    #[test]
    fn a_new_directory_starts_and_writes_the_marker() {
        let dir = tempfile::tempdir().unwrap();
        open_checked(dir.path(), OpenOptions::default()).unwrap();
        assert!(dir.path().join(MARKER_FILE).is_file());
        // A second start finds a sound store.
        open_checked(dir.path(), OpenOptions::default()).unwrap();
    }

    #[test]
    fn a_store_from_before_the_marker_gets_one() {
        let dir = tempfile::tempdir().unwrap();
        drop(Store::open(&dir.path().join(STORE_FILE)).unwrap());
        open_checked(dir.path(), OpenOptions::default()).unwrap();
        assert!(dir.path().join(MARKER_FILE).is_file());
    }

    #[test]
    fn missing_store_with_marker_is_refused_and_nothing_is_created() {
        let dir = held();
        std::fs::remove_file(dir.path().join(STORE_FILE)).unwrap();
        let e = open_checked(dir.path(), OpenOptions::default())
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("state.db: is missing"), "{e}");
        assert!(e.contains("--allow-empty-store"), "{e}");
        assert!(e.contains("state.created exists"), "{e}");
        assert!(!e.contains('\n'), "{e}");
        assert!(!dir.path().join(STORE_FILE).exists());
    }

    #[test]
    fn empty_store_with_only_artifacts_is_refused_and_left_empty() {
        let dir = held();
        std::fs::remove_file(dir.path().join(MARKER_FILE)).unwrap();
        std::fs::write(dir.path().join(STORE_FILE), b"").unwrap();
        let e = open_checked(dir.path(), OpenOptions::default())
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("is empty"), "{e}");
        assert!(e.contains("artifacts/ holds 1 entries"), "{e}");
        let len = std::fs::metadata(dir.path().join(STORE_FILE))
            .unwrap()
            .len();
        assert_eq!(len, 0, "the refused store was written to");
    }

    #[test]
    fn a_schema_less_sqlite_file_counts_as_empty() {
        let dir = held();
        let path = dir.path().join(STORE_FILE);
        std::fs::remove_file(&path).unwrap();
        let c = Connection::open(&path).unwrap();
        c.pragma_update(None, "user_version", 0).unwrap();
        c.execute_batch("CREATE TABLE t (x); DROP TABLE t;")
            .unwrap();
        drop(c);
        let e = open_checked(dir.path(), OpenOptions::default())
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("is empty"), "{e}");
    }

    #[test]
    fn a_write_ahead_log_left_by_a_lost_store_is_refused_even_with_the_flag() {
        let dir = held();
        let path = dir.path().join(STORE_FILE);
        let wal = dir.path().join(format!("{STORE_FILE}-wal"));
        // A store that crashed with pages still in its log, then lost its
        // main file.
        let c = Connection::open(&path).unwrap();
        c.pragma_update(None, "journal_mode", "WAL").unwrap();
        c.pragma_update(None, "wal_autocheckpoint", 0).unwrap();
        c.execute("INSERT INTO settings (key, value) VALUES ('k', 'v')", [])
            .unwrap();
        let log = std::fs::read(&wal).unwrap();
        drop(c);
        assert!(!log.is_empty());
        std::fs::write(&wal, &log).unwrap();
        std::fs::remove_file(&path).unwrap();
        let e = open_checked(dir.path(), allow()).err().unwrap().to_string();
        assert!(e.contains("is missing, but its write-ahead log"), "{e}");
        assert!(
            e.contains("move state.db-wal and state.db-shm aside"),
            "{e}"
        );
        assert_eq!(std::fs::read(&wal).unwrap(), log, "the log was touched");
        assert!(!path.exists());
    }

    #[test]
    fn the_flag_starts_an_empty_store_and_records_why() {
        let dir = held();
        std::fs::remove_file(dir.path().join(STORE_FILE)).unwrap();
        let s = open_checked(dir.path(), allow()).unwrap();
        let kinds: Vec<String> = s
            .with(|c| {
                let mut st = c.prepare("SELECT kind FROM events")?;
                let v = st
                    .query_map([], |r| r.get(0))?
                    .collect::<rusqlite::Result<_>>()?;
                Ok(v)
            })
            .unwrap();
        assert_eq!(kinds, vec!["store.started_empty".to_string()]);
        // The artifact is still there.
        assert!(dir.path().join("artifacts").join("ab".repeat(32)).is_file());
    }

    #[test]
    fn a_damaged_page_is_refused_even_with_the_flag_and_kept() {
        let dir = held();
        let path = dir.path().join(STORE_FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        let pages = bytes.len() / 4096;
        assert!(pages >= 100, "the test store is too small: {pages} pages");
        let middle = pages / 2 * 4096;
        bytes[middle..middle + 4096].fill(0xa5);
        std::fs::write(&path, &bytes).unwrap();
        let e = open_checked(dir.path(), allow()).err().unwrap().to_string();
        assert!(e.contains("failed its integrity check"), "{e}");
        assert!(e.contains("PRAGMA quick_check: "), "{e}");
        assert!(e.contains("restore state.db from a backup"), "{e}");
        assert!(!e.contains('\n'), "{e}");
        assert_eq!(
            std::fs::read(&path).unwrap(),
            bytes,
            "the damaged store was changed"
        );
    }

    #[test]
    fn a_file_that_is_not_sqlite_is_refused() {
        let dir = held();
        std::fs::write(dir.path().join(STORE_FILE), vec![7u8; 8192]).unwrap();
        let e = open_checked(dir.path(), allow()).err().unwrap().to_string();
        assert!(e.contains("failed its integrity check"), "{e}");
    }

    #[test]
    fn an_unreadable_artifacts_directory_is_an_error_not_no_evidence() {
        let dir = held();
        std::fs::remove_file(dir.path().join(STORE_FILE)).unwrap();
        std::fs::remove_file(dir.path().join(MARKER_FILE)).unwrap();
        let artifacts = dir.path().join("artifacts");
        std::fs::remove_dir_all(&artifacts).unwrap();
        // A file where the directory should be cannot be listed.
        std::fs::write(&artifacts, b"not a directory").unwrap();
        let e = open_checked(dir.path(), allow()).err().unwrap().to_string();
        assert!(e.contains("artifacts"), "{e}");
        assert!(!dir.path().join(STORE_FILE).exists());
    }
}
