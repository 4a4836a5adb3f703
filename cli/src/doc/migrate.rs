//! The `cutover migrate` documents (`migrate-status`, `migrate-run`,
//! `migrate-repair` in docs/json/): core's `migration_views` printed as
//! the controller sent them. They already keep this module's rules
//! (instants `*_at` in RFC 3339 UTC, `elapsed_ms`, digests as 64 hex
//! digits, phases and states as one word), so no copy of them is made
//! here; the test below holds them to those rules.

pub use cutover_core::migration_views::{MigrateRun, MigrationStatus, Repaired};

#[cfg(test)]
mod tests {
    use cutover_core::migration_views::LedgerEntry;

    #[test]
    fn a_ledger_entry_keeps_the_document_rules() {
        let e = LedgerEntry {
            version: "1.0.0".into(),
            phase: "expand".into(),
            name: "001_a.sql".into(),
            checksum: "ab".repeat(32),
            state: "applied".into(),
            applied_by: "operator admin".into(),
            started_at: cutover_core::views::from_ms(1_764_600_000_123).unwrap(),
            finished_at: None,
            elapsed_ms: Some(5),
            error: None,
        };
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["started_at"], "2025-12-01T14:40:00.123Z");
        assert!(v["finished_at"].is_null());
        assert_eq!(v["elapsed_ms"], 5);
        let back: LedgerEntry = serde_json::from_value(v).unwrap();
        assert_eq!(back, e);
    }
}
