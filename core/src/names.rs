//! Validation of the names operators choose: hosts, services, channels.

use crate::error::{Error, Result};

/// Host, service and channel names: 1–253 characters of ASCII letters,
/// digits, `-`, `_` and `.`, starting with a letter or digit.
pub fn validate(kind: &str, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "invalid {kind} name {}: use 1-253 letters, digits, '-', '_' or '.', starting with a letter or digit",
            crate::text::shown(name, 64)
        )))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn accepts_dns_like_names_only() {
        for good in ["edge-1", "db.eu-west", "a", "host_9"] {
            super::validate("host", good).unwrap();
        }
        for bad in ["", "-x", "a b", "a/b", "ä", ".."] {
            assert!(super::validate("host", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_long_or_hostile_name_is_quoted_cut_short_and_escaped() {
        let long = "h".repeat(70_000);
        let err = super::validate("host", &long).unwrap_err().to_string();
        assert!(err.len() < 300, "{err}");
        assert!(err.contains("(70000 bytes)"), "{err}");
        let err = super::validate("host", "a\u{1b}[31mb")
            .unwrap_err()
            .to_string();
        assert!(!err.contains('\u{1b}'), "{err}");
    }
}
