//! The documents `-o json` prints: the contract scripts rely on, one JSON
//! Schema per document in `docs/json/` (its README says the rules), each
//! tested against the real commands' output (`tests/tests/json_contract.rs`).
//!
//! The rules, kept here in one place: instants are RFC 3339 UTC strings
//! (`*_at`, `at`, `since`), durations are numbers named with their unit
//! (`*_ms`, `*_s`); identifiers that can pass 2^53 (rollout, event and
//! session ids) are decimal strings; enum values are one snake_case word,
//! spelled as the text output spells them; a machine field (`code`,
//! `action`, `release: null`) stands next to the sentence for people
//! (`reason`, `message`, `detail`), never inside it. The domain types
//! keep their own encoding for the store and the wire; these borrow from
//! them.

pub mod fleet;
pub mod migrate;
pub mod results;
pub mod rollout;

use time::OffsetDateTime;

/// An instant given in ms since the epoch (0: never), as RFC 3339 UTC.
pub fn at(ms: i64) -> Option<String> {
    cutover_core::views::from_ms(ms).map(cutover_core::manifest::rfc3339)
}

/// An instant that is always set, as RFC 3339 UTC.
pub fn at_always(ms: i64) -> String {
    let t = OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH);
    cutover_core::manifest::rfc3339(t)
}

/// An identifier, as a decimal string (jq reads numbers as doubles).
pub fn id(n: u64) -> String {
    n.to_string()
}

#[cfg(test)]
mod tests {
    #[test]
    fn instants_are_rfc3339_utc_with_milliseconds_when_they_have_any() {
        assert_eq!(super::at(0), None);
        assert_eq!(
            super::at(1_764_600_000_000).as_deref(),
            Some("2025-12-01T14:40:00Z")
        );
        assert_eq!(
            super::at_always(1_764_600_000_123),
            "2025-12-01T14:40:00.123Z"
        );
        assert_eq!(super::at_always(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::at_always(i64::MAX), "1970-01-01T00:00:00Z");
        assert_eq!(super::id(u64::MAX), "18446744073709551615");
    }
}
