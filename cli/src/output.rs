//! Printing for humans (aligned text) or scripts (`--output json`).

use std::io::Write;

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Text,
    Json,
}

/// Writes to stdout through one buffer: a plan at fleet size is tens of
/// MiB. A closed pipe (`| head`) is the reader's choice, not an error.
pub fn to_stdout(write: impl FnOnce(&mut dyn Write) -> std::io::Result<()>) {
    let mut out = std::io::BufWriter::with_capacity(1 << 20, std::io::stdout().lock());
    match write(&mut out).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
        Err(e) => eprintln!("cutover: cannot write the output: {e}"),
        Ok(()) => {}
    }
}

pub fn json<T: Serialize>(value: &T) {
    to_stdout(|out| {
        serde_json::to_writer_pretty(&mut *out, value)?;
        writeln!(out)
    });
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
    let mut pretty = serde_json::Serializer::pretty(&mut *out);
    serde_transcode::transcode(&mut serde_json::Deserializer::from_str(json), &mut pretty)
        .map_err(std::io::Error::other)?;
    writeln!(out)
}

/// Prints rows as columns padded to the widest cell.
pub fn table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let mut out = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                out.push_str(c);
            } else {
                out.push_str(&format!("{c:<w$}  ", w = widths[i]));
            }
        }
        println!("{}", out.trim_end());
    };
    line(header.iter().map(|h| h.to_string()).collect());
    for row in rows {
        line(row.clone());
    }
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
    fn formats_bytes() {
        assert_eq!(super::bytes(512), "512 B");
        assert_eq!(super::bytes(1536), "1.5 KiB");
        assert_eq!(super::bytes(3 * 1024 * 1024 * 1024), "3.0 GiB");
    }
}
