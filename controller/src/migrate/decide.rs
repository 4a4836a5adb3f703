//! The pure decisions of `cutover migrate`: a database's ledger held
//! against a release's migrations (what is applied, pending, failed,
//! dirty, changed since it ran, or unknown to the release), and whether a
//! run may go on. No database here: the rows come in, the answer goes out.

use std::collections::{HashMap, HashSet};

use cutover_core::manifest::Phase;
use cutover_core::migration_views::{DatabaseStatus, Drift, LedgerEntry, PendingMigration};
use cutover_core::Sha256Digest;

/// A ledger row's version, phase and name.
type Key<'a> = (&'a str, &'a str, &'a str);

/// One migration of the release for one database, as its manifest pins
/// it, with its text once read from the artifact store (a status reads
/// only the files it must: those pending or changed).
#[derive(Debug, Clone)]
pub struct Wanted {
    pub version: String,
    pub phase: Phase,
    pub name: String,
    pub sha256: Sha256Digest,
    /// The pinned size: the most bytes its stored copy may have.
    pub size: u64,
    pub text: Option<String>,
    /// Runs outside a transaction (its first line, or the database's
    /// `transactional_ddl = false`); until its text is read, the
    /// database's setting alone.
    pub no_transaction: bool,
}

impl Wanted {
    pub fn checksum(&self) -> String {
        checksum_of(&self.sha256)
    }

    pub fn key(&self) -> String {
        format!("{}/{}/{}", self.version, self.phase, self.name)
    }

    pub fn pending(&self) -> PendingMigration {
        PendingMigration {
            version: self.version.clone(),
            phase: self.phase.as_str().into(),
            name: self.name.clone(),
            checksum: self.checksum(),
            no_transaction: self.no_transaction,
        }
    }

    /// What a ledger row of this migration has in its version, phase and
    /// name columns.
    fn lookup(&self) -> Key<'_> {
        (
            self.version.as_str(),
            self.phase.as_str(),
            self.name.as_str(),
        )
    }
}

/// How a checksum is written in the ledger and shown: the SHA-256 as 64
/// lowercase hex digits, as every digest in `-o json`.
pub fn checksum_of(d: &Sha256Digest) -> String {
    d.to_hex()
}

/// Whether `bytes` with other line endings (CRLF made LF, or LF made CRLF)
/// hash to `checksum`: the file changed only in its line endings.
pub fn line_endings_only(bytes: &[u8], checksum: &str) -> bool {
    let lf: Vec<u8> = {
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'\r' && bytes.get(i + 1) == Some(&b'\n') {
                i += 1;
                continue;
            }
            out.push(bytes[i]);
            i += 1;
        }
        out
    };
    let mut crlf = Vec::with_capacity(lf.len().saturating_add(lf.len() / 8));
    for &b in &lf {
        if b == b'\n' {
            crlf.push(b'\r');
        }
        crlf.push(b);
    }
    [lf, crlf]
        .iter()
        .any(|v| checksum_of(&Sha256Digest::of(v)) == checksum)
}

/// The ledger `rows` (none: no ledger yet) against `wanted`, the release's
/// migrations of `database` in the order they run. Each row is listed
/// once: failed and dirty rows whoever's they are, applied rows under
/// `applied` when the release carries their migration and under
/// `unknown` when it does not.
pub fn assess(database: &str, wanted: &[Wanted], rows: Option<&[LedgerEntry]>) -> DatabaseStatus {
    let mut status = DatabaseStatus {
        database: database.into(),
        ledger: rows.is_some(),
        applied: Vec::new(),
        pending: Vec::new(),
        failed: Vec::new(),
        dirty: Vec::new(),
        migrating: None,
        drift: Vec::new(),
        out_of_order: Vec::new(),
        unknown: Vec::new(),
    };
    let rows = rows.unwrap_or_default();
    // Looked up by key, not searched: a ledger may hold 100,000 rows and a
    // release 4,096 files. The first row of a key is the one that counts.
    let wanted_keys: HashSet<Key<'_>> = wanted.iter().map(Wanted::lookup).collect();
    let mut by_key: HashMap<Key<'_>, &LedgerEntry> = HashMap::with_capacity(rows.len());
    for row in rows {
        let key = (row.version.as_str(), row.phase.as_str(), row.name.as_str());
        match row.state.as_str() {
            "applied" if wanted_keys.contains(&key) => status.applied.push(row.clone()),
            "applied" => status.unknown.push(row.clone()),
            "failed" => status.failed.push(row.clone()),
            // `running`, and any word this controller does not know: a
            // row it cannot vouch for blocks like an unfinished one.
            _ => status.dirty.push(row.clone()),
        }
        by_key.entry(key).or_insert(row);
    }
    // Per version and phase, the last file name the ledger has (whether
    // the release still carries it or not): a pending file of that
    // directory named before it was added behind one that ran. Files of
    // an earlier version pending after a later version ran are a
    // backport (a hotfix release's migration), which runs.
    let mut last_done: HashMap<(&str, &str), &str> = HashMap::new();
    for row in rows {
        let last = last_done
            .entry((row.version.as_str(), row.phase.as_str()))
            .or_insert(row.name.as_str());
        if row.name.as_str() > *last {
            *last = row.name.as_str();
        }
    }
    for w in wanted {
        match by_key.get(&w.lookup()).copied() {
            None => {
                let dir = (w.version.as_str(), w.phase.as_str());
                if last_done
                    .get(&dir)
                    .is_some_and(|&done| done > w.name.as_str())
                {
                    status.out_of_order.push(w.pending());
                }
                status.pending.push(w.pending());
            }
            Some(row) if row.state == "applied" && row.checksum != w.checksum() => {
                status.drift.push(Drift {
                    version: w.version.clone(),
                    phase: w.phase.as_str().into(),
                    name: w.name.clone(),
                    applied: row.checksum.clone(),
                    release: w.checksum(),
                    line_endings_only: w
                        .text
                        .as_deref()
                        .is_some_and(|t| line_endings_only(t.as_bytes(), &row.checksum)),
                })
            }
            Some(_) => {}
        }
    }
    status
}

/// Which of `wanted` a status needs the text of: those pending (whether
/// one runs outside a transaction is its first line) and those changed
/// (whether only line endings differ).
pub fn texts_needed(status: &DatabaseStatus) -> HashSet<String> {
    let pending = status.pending.iter().map(PendingMigration::key);
    let changed = status
        .drift
        .iter()
        .map(|d| format!("{}/{}/{}", d.version, d.phase, d.name));
    pending.chain(changed).collect()
}

/// What the texts in `read` (of [`texts_needed`]) tell of `status`: which
/// pending migrations run outside a transaction, and which changed files
/// differ only in their line endings.
pub fn complete(status: &mut DatabaseStatus, read: &[Wanted]) {
    let by_key: HashMap<String, &Wanted> = read.iter().map(|w| (w.key(), w)).collect();
    for p in status
        .pending
        .iter_mut()
        .chain(status.out_of_order.iter_mut())
    {
        if let Some(w) = by_key.get(&p.key()) {
            p.no_transaction = w.no_transaction;
        }
    }
    for d in &mut status.drift {
        let key = format!("{}/{}/{}", d.version, d.phase, d.name);
        if let Some(text) = by_key.get(&key).and_then(|w| w.text.as_deref()) {
            d.line_endings_only = line_endings_only(text.as_bytes(), &d.applied);
        }
    }
}

/// Why no migration may run on this database now, or `None`: a dirty or
/// failed row (until `repair`), or an applied migration whose file changed.
pub fn blocked(status: &DatabaseStatus) -> Option<String> {
    let db = &status.database;
    if let (Some(row), Some(holder)) = (status.dirty.first(), &status.migrating) {
        return Some(format!(
            "database {db:?}: migration {} is running now (started {} by {}; the migration lock is {holder}); wait for it, then look with `cutover migrate status --database {db}`",
            row.key(),
            cutover_core::manifest::rfc3339(row.started_at),
            row.applied_by,
        ));
    }
    if let Some(row) = status.dirty.first() {
        return Some(format!(
            "database {db:?}: migration {} is {} (started {} by {}, never finished): it ran outside a transaction and may have been cut short; check the database, then `cutover migrate repair --database {db} --name {}`",
            row.key(),
            if row.state == "running" { "dirty".to_string() } else { format!("in unknown state {:?}", row.state) },
            cutover_core::manifest::rfc3339(row.started_at),
            row.applied_by,
            row.key()
        ));
    }
    if let Some(row) = status.failed.first() {
        return Some(format!(
            "database {db:?}: migration {} failed ({}); fix the database by hand, then `cutover migrate repair --database {db} --name {}`",
            row.key(),
            row.error.as_deref().unwrap_or("no error recorded"),
            row.key()
        ));
    }
    if let Some(d) = status.drift.first() {
        return Some(format!(
            "database {db:?}: applied migration {}/{}/{} has changed since it ran: the ledger has {}, the release carries {}{}; an applied migration is never run again: restore the file or add a new migration",
            d.version,
            d.phase,
            d.name,
            d.applied,
            d.release,
            if d.line_endings_only { " (only its line endings differ)" } else { "" }
        ));
    }
    if let Some(p) = status.out_of_order.first() {
        return Some(format!(
            "database {db:?}: migration {} is pending, but a later file of {}/{}/ already ran: it was added behind it, and files of one directory never run out of order; give it a later number or put it in a later version",
            p.key(),
            p.version,
            p.phase
        ));
    }
    None
}

/// What of `phase` is pending, in the order it runs: the seam the gates
/// (upgrade, postdeploy, contract) ask.
pub fn pending_in(status: &DatabaseStatus, phase: Phase) -> Vec<&PendingMigration> {
    status
        .pending
        .iter()
        .filter(|p| p.phase == phase.as_str())
        .collect()
}

/// The ledger row `name` names: `VERSION/PHASE/FILE`, or `FILE` alone when
/// only one row has it; an error naming the candidates otherwise.
pub fn find_row<'a>(rows: &'a [LedgerEntry], name: &str) -> Result<&'a LedgerEntry, String> {
    let hits: Vec<&LedgerEntry> = rows
        .iter()
        .filter(|r| r.key() == name || r.name == name)
        .collect();
    match hits.as_slice() {
        [one] => Ok(one),
        [] => Err(format!("no ledger row is named {name:?}")),
        many => Err(format!(
            "{name:?} names {} rows ({}); give VERSION/PHASE/FILE",
            many.len(),
            many.iter().map(|r| r.key()).collect::<Vec<_>>().join(", ")
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wanted(version: &str, phase: Phase, name: &str, text: &str) -> Wanted {
        Wanted {
            version: version.into(),
            phase,
            name: name.into(),
            sha256: Sha256Digest::of(text.as_bytes()),
            size: text.len() as u64,
            text: Some(text.into()),
            no_transaction: false,
        }
    }

    fn row(w: &Wanted, state: &str) -> LedgerEntry {
        LedgerEntry {
            version: w.version.clone(),
            phase: w.phase.as_str().into(),
            name: w.name.clone(),
            checksum: w.checksum(),
            state: state.into(),
            applied_by: "operator alice".into(),
            started_at: time::OffsetDateTime::UNIX_EPOCH,
            finished_at: None,
            elapsed_ms: None,
            error: None,
        }
    }

    #[test]
    fn without_a_ledger_everything_is_pending_in_order() {
        let w = [
            wanted("1.0.0", Phase::Expand, "001_a.sql", "A"),
            wanted("1.0.0", Phase::Contract, "001_c.sql", "C"),
        ];
        let s = assess("billing", &w, None);
        assert!(!s.ledger && blocked(&s).is_none());
        assert_eq!(s.pending.len(), 2);
        let expand = pending_in(&s, Phase::Expand);
        assert_eq!(expand.len(), 1);
        assert_eq!(expand[0].name, "001_a.sql");
    }

    #[test]
    fn applied_rows_are_not_pending_and_unknown_rows_are_listed() {
        let w = [
            wanted("1.0.0", Phase::Expand, "001_a.sql", "A"),
            wanted("1.0.0", Phase::Expand, "002_b.sql", "B"),
        ];
        let gone = wanted("0.9.0", Phase::Expand, "001_old.sql", "O");
        let rows = [row(&w[0], "applied"), row(&gone, "applied")];
        let s = assess("billing", &w, Some(&rows));
        // Each row once: the release's under applied, the other under unknown.
        assert_eq!(s.applied, vec![rows[0].clone()]);
        assert_eq!(s.pending, vec![w[1].pending()]);
        assert_eq!(s.unknown, vec![rows[1].clone()]);
        assert!(blocked(&s).is_none());
        // A failed row the release does not carry blocks, listed once.
        let rows = [row(&w[0], "applied"), row(&gone, "failed")];
        let s = assess("billing", &w, Some(&rows));
        assert!(s.unknown.is_empty() && s.failed == vec![rows[1].clone()]);
        assert!(blocked(&s).unwrap().contains("0.9.0/expand/001_old.sql"));
    }

    #[test]
    fn a_migration_added_behind_one_that_ran_is_refused_by_name() {
        let w = [
            wanted("1.0.0", Phase::Expand, "001_a.sql", "A"),
            wanted("1.0.0", Phase::Expand, "002_late.sql", "L"),
            wanted("1.0.0", Phase::Contract, "001_c.sql", "C"),
            wanted("1.1.0", Phase::Expand, "001_b.sql", "B"),
        ];
        // 1.0.0's contract waits while 1.1.0's expand ran, and 1.0.0's
        // 002 comes after 1.1.0's expand ran (a backport): both run.
        let rows = [row(&w[0], "applied"), row(&w[3], "applied")];
        let s = assess("billing", &w, Some(&rows));
        assert!(s.out_of_order.is_empty() && blocked(&s).is_none(), "{s:?}");
        // 002_late.sql appeared after 003 of its own directory ran, which
        // this release no longer even carries.
        let gone = wanted("1.0.0", Phase::Expand, "003_gone.sql", "G");
        let rows = [row(&w[0], "applied"), row(&gone, "applied")];
        let s = assess("billing", &w, Some(&rows));
        assert_eq!(s.out_of_order, vec![w[1].pending()]);
        let why = blocked(&s).unwrap();
        assert!(
            why.contains("1.0.0/expand/002_late.sql") && why.contains("out of order"),
            "{why}"
        );
    }

    #[test]
    fn a_running_row_whose_lock_is_held_is_a_migrate_at_work_not_a_crash() {
        let w = [wanted("1.0.0", Phase::Expand, "001_a.sql", "A")];
        let mut s = assess("billing", &w, Some(&[row(&w[0], "running")]));
        s.migrating = Some("held by cutover-controller c1, pid 7".into());
        let why = blocked(&s).unwrap();
        assert!(
            why.contains("running now") && why.contains("pid 7") && !why.contains("repair"),
            "{why}"
        );
    }

    #[test]
    fn a_changed_applied_file_is_drift_naming_both_checksums() {
        let old = wanted("1.0.0", Phase::Expand, "001_a.sql", "CREATE TABLE a ();\n");
        let new = wanted("1.0.0", Phase::Expand, "001_a.sql", "CREATE TABLE b ();\n");
        let s = assess(
            "billing",
            std::slice::from_ref(&new),
            Some(&[row(&old, "applied")]),
        );
        let why = blocked(&s).unwrap();
        assert!(
            why.contains(&old.checksum()) && why.contains(&new.checksum()),
            "{why}"
        );
        assert!(
            why.contains("1.0.0/expand/001_a.sql") && !why.contains("line endings"),
            "{why}"
        );
        let crlf = wanted(
            "1.0.0",
            Phase::Expand,
            "001_a.sql",
            "CREATE TABLE a ();\r\n",
        );
        let s = assess("billing", &[crlf], Some(&[row(&old, "applied")]));
        assert!(s.drift[0].line_endings_only);
        assert!(blocked(&s)
            .unwrap()
            .contains("only its line endings differ"));
    }

    #[test]
    fn a_status_reads_only_the_texts_of_pending_and_changed_files_and_learns_from_them() {
        let ran = wanted("1.0.0", Phase::Expand, "001_a.sql", "CREATE TABLE a ();\n");
        let edited = wanted(
            "1.0.0",
            Phase::Expand,
            "001_a.sql",
            "CREATE TABLE a ();\r\n",
        );
        let outside = wanted(
            "1.0.0",
            Phase::Expand,
            "002_i.sql",
            "-- cutover:no-transaction\nCREATE INDEX CONCURRENTLY i ON a (x);\n",
        );
        let done = wanted("0.9.0", Phase::Expand, "001_z.sql", "Z");
        let unread = |w: &Wanted| Wanted {
            text: None,
            ..w.clone()
        };
        let pinned = [unread(&done), unread(&edited), unread(&outside)];
        let rows = [row(&done, "applied"), row(&ran, "applied")];
        let mut s = assess("billing", &pinned, Some(&rows));
        // Without texts: the flags are not known yet.
        assert!(!s.pending[0].no_transaction && !s.drift[0].line_endings_only);
        let needed = texts_needed(&s);
        assert_eq!(
            needed,
            HashSet::from([
                "1.0.0/expand/001_a.sql".to_string(),
                "1.0.0/expand/002_i.sql".to_string()
            ])
        );
        let mut read = [edited.clone(), outside.clone()];
        read[1].no_transaction = true;
        complete(&mut s, &read);
        assert!(s.pending[0].no_transaction && s.drift[0].line_endings_only);
    }

    #[test]
    fn dirty_and_failed_rows_block_until_repaired() {
        let w = [wanted("1.0.0", Phase::Expand, "001_a.sql", "A")];
        let dirty = assess("billing", &w, Some(&[row(&w[0], "running")]));
        assert!(dirty.pending.is_empty());
        assert!(blocked(&dirty).unwrap().contains("is dirty"));
        let failed = assess("billing", &w, Some(&[row(&w[0], "failed")]));
        assert!(blocked(&failed).unwrap().contains("failed"));
        let odd = assess("billing", &w, Some(&[row(&w[0], "paused")]));
        assert!(blocked(&odd).unwrap().contains("unknown state"));
    }

    #[test]
    fn a_row_is_found_by_its_file_name_or_its_full_key() {
        let a = wanted("1.0.0", Phase::Expand, "001_a.sql", "A");
        let b = wanted("1.1.0", Phase::Expand, "001_a.sql", "B");
        let rows = [row(&a, "failed"), row(&b, "applied")];
        assert_eq!(
            find_row(&rows, "1.1.0/expand/001_a.sql").unwrap().version,
            "1.1.0"
        );
        assert!(find_row(&rows, "001_a.sql")
            .unwrap_err()
            .contains("names 2 rows"));
        assert!(find_row(&rows[..1], "001_a.sql").is_ok());
        assert!(find_row(&rows, "nope.sql").is_err());
    }
}
