//! Printing for humans (aligned text) or scripts (`--output json`).

use std::io::Write;

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Text,
    Json,
}

/// Writes to stdout through one buffer: a plan at fleet size is tens of
/// MiB. A closed pipe (`| head`) is the reader's choice, not an error: the
/// command ends quietly ([`crate::print`]).
pub fn to_stdout(write: impl FnOnce(&mut dyn Write) -> std::io::Result<()>) {
    let mut out = std::io::BufWriter::with_capacity(1 << 20, std::io::stdout().lock());
    if let Err(e) = write(&mut out).and_then(|()| out.flush()) {
        // What is buffered cannot be written either: dropped, not retried.
        let _ = out.into_parts();
        crate::print::stdout_failed(&e);
    }
}

/// The files a command wrote: `wrote PATH` lines, or `{"written": [...]}`.
pub fn written<P: AsRef<std::path::Path>>(paths: &[P], out: Format) {
    match out {
        Format::Json => json(&crate::doc::results::Written::of(paths)),
        Format::Text => {
            for p in paths {
                println!("wrote {}", p.as_ref().display());
            }
        }
    }
}

pub fn json<T: Serialize>(value: &T) {
    to_stdout(|out| {
        value
            .serialize(&mut pretty(&mut *out))
            .map_err(std::io::Error::other)?;
        writeln!(out)
    });
}

/// One JSON object on one line, for the commands that stream
/// (`events --follow`, `rollout watch`): each line is written and flushed
/// whole, so a reader never sees half an object.
pub fn json_line<T: Serialize>(value: &T) {
    let mut line = Vec::with_capacity(256);
    let mut ser = serde_json::Serializer::with_formatter(
        &mut line,
        LineSafe(serde_json::ser::CompactFormatter),
    );
    match value.serialize(&mut ser) {
        Ok(()) => println!("{}", String::from_utf8_lossy(&line)),
        Err(e) => eprintln!("cutover: cannot encode the output: {e}"),
    }
}

/// serde_json's formatting, but the characters that some readers take for
/// a line break inside a string (U+0085 and the other C1 controls, U+2028,
/// U+2029) are written as `\uXXXX` escapes: one object per line stays one
/// line for every reader, and the decoded value is the same.
struct LineSafe<F>(F);

impl<F: serde_json::ser::Formatter> serde_json::ser::Formatter for LineSafe<F> {
    fn write_string_fragment<W: ?Sized + Write>(
        &mut self,
        writer: &mut W,
        fragment: &str,
    ) -> std::io::Result<()> {
        let breaks = |c: char| matches!(c, '\u{80}'..='\u{9f}' | '\u{2028}' | '\u{2029}');
        let mut rest = fragment;
        while let Some(at) = rest.find(breaks) {
            writer.write_all(&rest.as_bytes()[..at])?;
            let c = rest[at..].chars().next().unwrap_or_default();
            write!(writer, "\\u{:04x}", u32::from(c))?;
            rest = &rest[at + c.len_utf8()..];
        }
        writer.write_all(rest.as_bytes())
    }

    fn begin_array<W: ?Sized + Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        self.0.begin_array(w)
    }
    fn end_array<W: ?Sized + Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        self.0.end_array(w)
    }
    fn begin_array_value<W: ?Sized + Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        self.0.begin_array_value(w, first)
    }
    fn end_array_value<W: ?Sized + Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        self.0.end_array_value(w)
    }
    fn begin_object<W: ?Sized + Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        self.0.begin_object(w)
    }
    fn end_object<W: ?Sized + Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        self.0.end_object(w)
    }
    fn begin_object_key<W: ?Sized + Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        self.0.begin_object_key(w, first)
    }
    fn begin_object_value<W: ?Sized + Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        self.0.begin_object_value(w)
    }
    fn end_object_value<W: ?Sized + Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        self.0.end_object_value(w)
    }
}

fn pretty(
    out: &mut dyn Write,
) -> serde_json::Serializer<&mut dyn Write, LineSafe<serde_json::ser::PrettyFormatter<'static>>> {
    serde_json::Serializer::with_formatter(out, LineSafe(serde_json::ser::PrettyFormatter::new()))
}

/// Pretty-prints a JSON document as the controller sent it, without
/// building the value it describes: a plan at fleet size is half a million
/// moves, and decoding them only to encode them again costs more than
/// printing. The document is checked whole first, so a malformed one is
/// an error before anything is printed.
pub fn json_document(what: &str, json: &str) -> Result<(), String> {
    serde_json::from_str::<serde::de::IgnoredAny>(json)
        .map_err(|e| format!("malformed {what} from the controller: {e}"))?;
    to_stdout(|out| write_pretty(out, json));
    Ok(())
}

fn write_pretty(out: &mut dyn Write, json: &str) -> std::io::Result<()> {
    serde_transcode::transcode(
        &mut serde_json::Deserializer::from_str(json),
        &mut pretty(&mut *out),
    )
    .map_err(std::io::Error::other)?;
    writeln!(out)
}

/// Text from a peer (a host's report, an archive's file name, an agent's
/// version or log) made safe to print on a terminal: control characters
/// (C0, DEL, C1: cursor moves, screen clears, title changes, OSC 8 links)
/// and the invisible format characters that reorder or hide text (bidi
/// overrides, zero-width marks) are written as Rust escapes (`\u{1b}`,
/// `\n`), so what an operator sees is what was sent. Every text printer
/// goes through this; JSON output is escaped by serde already.
pub fn escape(text: &str) -> std::borrow::Cow<'_, str> {
    // Fast path: printable ASCII, which is nearly everything.
    if text.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return std::borrow::Cow::Borrowed(text);
    }
    if !text.chars().any(cutover_core::text::hidden_on_terminal) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if cutover_core::text::hidden_on_terminal(c) {
            out.extend(c.escape_debug());
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

/// [`escape`] for text printed over several lines: each line is escaped
/// and they are joined with `separator` (a newline and an indent).
pub fn escape_lines(text: &str, separator: &str) -> String {
    text.split('\n')
        .map(escape)
        .collect::<Vec<_>>()
        .join(separator)
}

/// Prints rows as columns padded to the widest cell, two spaces apart, with
/// every cell escaped ([`escape`]). Built by comfy-table, which handles a
/// cell of any width (the hand-written printer panicked on a 70,000-character
/// agent version).
pub fn table(header: &[&str], rows: &[Vec<String>]) {
    to_stdout(|out| write_table(out, header, rows));
}

fn write_table(out: &mut dyn Write, header: &[&str], rows: &[Vec<String>]) -> std::io::Result<()> {
    let mut t = comfy_table::Table::new();
    t.load_preset(comfy_table::presets::NOTHING)
        .set_content_arrangement(comfy_table::ContentArrangement::Disabled)
        .set_header(header.iter().map(|h| comfy_table::Cell::new(escape(h))));
    for row in rows {
        t.add_row(row.iter().map(|c| comfy_table::Cell::new(escape(c))));
    }
    for column in t.column_iter_mut() {
        column.set_padding((0, 2));
    }
    for line in t.lines() {
        writeln!(out, "{}", line.trim_end())?;
    }
    Ok(())
}

pub fn when(t: Option<time::OffsetDateTime>) -> String {
    t.map(cutover_core::manifest::rfc3339)
        .unwrap_or_else(|| "-".into())
}

pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

pub fn short(d: &cutover_core::Sha256Digest) -> String {
    d.to_hex()[..12].to_string()
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_document_prints_as_its_decoded_value_would() {
        let value = serde_json::json!({
            "release": "2026.11.1",
            "services": [{"service": "api", "batches": [[{"from": null, "hosts": ["a", "b"]}]], "size": 7}],
            "note": "quotes \" and é",
        });
        let compact = serde_json::to_string(&value).unwrap();
        let mut out = Vec::new();
        super::write_pretty(&mut out, &compact).unwrap();
        let expected = serde_json::to_string_pretty(&value).unwrap() + "\n";
        assert_eq!(String::from_utf8(out).unwrap(), expected);

        let e = super::json_document("plan", r#"{"release": "x", "services": [}"#).unwrap_err();
        assert!(e.starts_with("malformed plan from the controller: "), "{e}");
    }

    #[test]
    fn characters_that_some_readers_split_lines_at_are_escaped_and_decode_the_same() {
        let value =
            serde_json::json!({"detail": "a\u{2028}b\u{85}c\u{2029}d é ✓ \u{202e}", "n": [1, 2]});
        let mut out = Vec::new();
        super::write_pretty(&mut out, &serde_json::to_string(&value).unwrap()).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains(r"a\u2028b\u0085c\u2029d é ✓ "), "{text}");
        assert!(
            !text.contains('\u{2028}') && !text.contains('\u{85}'),
            "{text}"
        );
        let back: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(back, value);
        // The pretty layout is serde_json's own.
        let plain = serde_json::json!({"a": [1, {"b": null}], "c": "x"});
        let mut out = Vec::new();
        super::write_pretty(&mut out, &plain.to_string()).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            serde_json::to_string_pretty(&plain).unwrap() + "\n"
        );
    }

    #[test]
    fn formats_bytes() {
        assert_eq!(super::bytes(512), "512 B");
        assert_eq!(super::bytes(1536), "1.5 KiB");
        assert_eq!(super::bytes(3 * 1024 * 1024 * 1024), "3.0 GiB");
    }

    fn table_text(header: &[&str], rows: &[Vec<String>]) -> String {
        let mut out = Vec::new();
        super::write_table(&mut out, header, rows).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn a_table_is_columns_padded_to_the_widest_cell_two_spaces_apart() {
        let rows = vec![
            vec!["edge-1".into(), "online".into(), "0.1.0".into()],
            vec!["db".into(), "offline".into(), "-".into()],
        ];
        assert_eq!(
            table_text(&["HOST", "STATE", "AGENT"], &rows),
            "HOST    STATE    AGENT\n\
             edge-1  online   0.1.0\n\
             db      offline  -\n"
        );
        // Width is what a terminal shows, not bytes.
        let rows = vec![vec!["é".into(), "x".into()], vec!["ab".into(), "y".into()]];
        assert_eq!(table_text(&["A", "B"], &rows), "A   B\né   x\nab  y\n");
        // No rows: the header alone.
        assert_eq!(table_text(&["A", "B"], &[]), "A  B\n");
    }

    #[test]
    fn a_table_prints_a_cell_of_any_width_escaped() {
        let long = "v".repeat(70_000);
        let rows = vec![
            vec!["h1".into(), long.clone(), "last".into()],
            vec!["h2\u{1b}[2J".into(), "1.0".into(), "x".into()],
        ];
        let text = table_text(&["HOST", "AGENT", "SEEN"], &rows);
        assert!(!text.contains('\u{1b}'), "raw escape printed");
        assert!(text.contains("h2\\u{1b}[2J"), "{}", &text[..200]);
        // Every character of the long cell is printed.
        assert_eq!(text.matches('v').count(), 70_000);
        assert!(text.contains("last"));
    }

    #[test]
    fn control_and_invisible_characters_are_escaped_and_everything_else_is_kept() {
        use super::escape;
        assert!(matches!(escape("edge-1 ok"), std::borrow::Cow::Borrowed(_)));
        assert!(matches!(escape("café ✓"), std::borrow::Cow::Borrowed(_)));
        assert_eq!(escape("café ✓"), "café ✓");
        assert_eq!(escape("a\u{1b}]0;pwned\u{7}b"), "a\\u{1b}]0;pwned\\u{7}b");
        assert_eq!(escape("line\nnext\r\tx"), "line\\nnext\\r\\tx");
        assert_eq!(escape("\u{9b}31m"), "\\u{9b}31m"); // C1 CSI
        assert_eq!(escape("\u{7f}"), "\\u{7f}");
        assert_eq!(escape("abc\u{202e}fed"), "abc\\u{202e}fed"); // bidi override
        assert_eq!(escape("a\u{200b}b\u{feff}"), "a\\u{200b}b\\u{feff}");
        assert_eq!(
            super::escape_lines("one\u{1b}\ntwo", "\n  "),
            "one\\u{1b}\n  two"
        );
    }
}
