//! Text from a peer (an archive, a manifest, a `.sig` file, a host, a
//! report) as an error message or a log line may show it: quoted, with
//! every control, C1 and bidirectional-override character escaped, and cut
//! short at a character boundary saying how long it was. Beside
//! [`crate::views::bounded`], which bounds text that is kept (unescaped).

use std::fmt::Write as _;

/// `s` quoted and escaped, its first `max` bytes at most (cut at a
/// character boundary); when cut, followed by `… (<len> bytes)`:
/// `"abc"… (70000 bytes)`. The result is one line whatever `s` holds.
pub fn shown(s: &str, max: usize) -> String {
    let head = prefix(s, max);
    let mut out = String::with_capacity(head.len() + 24);
    out.push('"');
    for c in head.chars() {
        escape_into(&mut out, c);
    }
    out.push('"');
    if head.len() < s.len() {
        let _ = write!(out, "… ({} bytes)", s.len());
    }
    out
}

/// The longest prefix of `s` of at most `max` bytes ending at a character
/// boundary.
fn prefix(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut cut = max;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    &s[..cut]
}

/// Characters a terminal must not be given raw from a peer: controls (C0,
/// DEL, C1: cursor moves, screen clears, OSC links) and the invisible
/// format characters that reorder or hide text (bidi marks, embeddings,
/// overrides and isolates, zero-width spaces and joiners, line and
/// paragraph separators). The one list for `shown` and the CLI's printer.
pub fn hidden_on_terminal(c: char) -> bool {
    c.is_control()
        || matches!(c,
            '\u{061c}'
            | '\u{200b}'..='\u{200f}'
            | '\u{2028}'..='\u{202e}'
            | '\u{2060}'..='\u{2069}'
            | '\u{feff}')
}

fn escape_into(out: &mut String, c: char) {
    match c {
        // Inside double quotes a single quote needs no escape.
        '\'' => out.push('\''),
        c if hidden_on_terminal(c) && !c.is_control() => {
            let _ = write!(out, "\\u{{{:x}}}", c as u32);
        }
        // Escapes C0, DEL, C1, line separators and other unprintables,
        // quotes and backslashes.
        c => out.extend(c.escape_debug()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_text_is_quoted_whole() {
        assert_eq!(shown("abc", 10), r#""abc""#);
        assert_eq!(shown("it's", 10), r#""it's""#);
        assert_eq!(shown("", 0), r#""""#);
    }

    #[test]
    fn long_text_is_cut_with_its_byte_count() {
        let long = "abc".repeat(70_000 / 3) + "a";
        assert_eq!(long.len(), 70_000);
        assert_eq!(shown(&long, 3), r#""abc"… (70000 bytes)"#);
        assert!(shown(&long, 64).len() < 100);
    }

    #[test]
    fn the_cut_falls_on_a_char_boundary() {
        let long = "é".repeat(100); // 200 bytes
        assert_eq!(shown(&long, 5), "\"éé\"… (200 bytes)");
        assert_eq!(shown(&long, 1), "\"\"… (200 bytes)");
    }

    #[test]
    fn control_c1_and_bidi_characters_are_escaped() {
        assert_eq!(shown("a\nb\x1b[2J", 64), r#""a\nb\u{1b}[2J""#);
        assert_eq!(shown("\u{85}\u{9b}\u{7f}", 64), r#""\u{85}\u{9b}\u{7f}""#);
        assert_eq!(
            shown("x\u{202e}y\u{2066}\u{200f}\u{61c}", 64),
            r#""x\u{202e}y\u{2066}\u{200f}\u{61c}""#
        );
        assert_eq!(shown("a\u{2028}b", 64), r#""a\u{2028}b""#);
        // Zero-width characters hide text: the same list as the CLI's.
        assert_eq!(shown("a\u{200b}b\u{feff}", 64), r#""a\u{200b}b\u{feff}""#);
        assert!("\u{61c}\u{200b}\u{2066}\u{feff}\u{9b}"
            .chars()
            .all(hidden_on_terminal));
        assert!(!"aé漢 ".chars().any(hidden_on_terminal));
        assert_eq!(shown(r#"q"\"#, 64), r#""q\"\\""#);
        let escaped = shown(&"\x1b".repeat(1000), 100);
        assert!(!escaped.contains('\x1b') && !escaped.contains('\n'));
    }
}
