//! Raw tar headers folded into archive members, for every reader of an
//! archive from outside (the agent's extractor, the image-tarball reader).
//! The `tar` crate reads GNU long names and links and PAX records into
//! memory whole, whatever size their header claims; here every such
//! extension is checked against a small bound *before* one byte of it is
//! read, and the member it describes gets its path, link target and size
//! from exactly one place. Read entries with `entries()?.raw(true)` and
//! hand each extension to [`Pending::read`], each member to
//! [`Pending::member`].

use std::io::{self, Read};

/// The most bytes a path or link target may have (PATH_MAX less its NUL).
pub const MAX_NAME_BYTES: usize = 4095;
/// A GNU long name or long link record: the name and its trailing NUL.
pub const MAX_GNU_EXTENSION: u64 = MAX_NAME_BYTES as u64 + 1;
/// A PAX record set, local (`x`) or global (`g`).
pub const MAX_PAX_EXTENSION: u64 = 64 * 1024;

/// Why a header extension was refused, at its header's byte offset.
#[derive(Debug, thiserror::Error)]
pub enum ExtensionError {
    #[error("{kind} at byte {offset}: {problem}")]
    Refused {
        offset: u64,
        kind: &'static str,
        problem: String,
    },
    #[error("{kind} at byte {offset}: {}", one_line(.source))]
    Unreadable {
        offset: u64,
        kind: &'static str,
        source: io::Error,
    },
}

/// Archive bytes as a message shows them ([`crate::text::shown`]).
fn shown(bytes: &[u8]) -> String {
    crate::text::shown(&String::from_utf8_lossy(bytes), 100)
}

/// An error from the `tar` crate (which may quote header bytes) in one
/// bounded line.
fn one_line(e: &io::Error) -> String {
    crate::text::shown(&e.to_string(), 300)
}

/// The extensions read so far for the member that comes next.
#[derive(Default)]
pub struct Pending {
    long_name: Option<Vec<u8>>,
    long_link: Option<Vec<u8>>,
    pax: Option<Pax>,
}

#[derive(Default)]
struct Pax {
    path: Option<Vec<u8>>,
    linkpath: Option<Vec<u8>>,
    size: Option<u64>,
}

/// A member as the archive describes it once its extensions are applied.
pub struct Member {
    pub path: Vec<u8>,
    pub link: Option<Vec<u8>>,
    pub size: u64,
}

/// What kind of extension a raw header is, if it is one.
#[derive(Clone, Copy)]
pub enum Extension {
    LongName,
    LongLink,
    PaxLocal,
    PaxGlobal,
}

impl Extension {
    /// The extension a header of type `kind` is, if any.
    pub fn of(kind: tar::EntryType) -> Option<Extension> {
        match kind {
            tar::EntryType::GNULongName => Some(Extension::LongName),
            tar::EntryType::GNULongLink => Some(Extension::LongLink),
            tar::EntryType::XHeader => Some(Extension::PaxLocal),
            tar::EntryType::XGlobalHeader => Some(Extension::PaxGlobal),
            _ => None,
        }
    }

    /// What the extension is called in a message.
    pub fn name(self) -> &'static str {
        match self {
            Extension::LongName => "GNU long name",
            Extension::LongLink => "GNU long link",
            Extension::PaxLocal => "PAX header",
            Extension::PaxGlobal => "PAX global header",
        }
    }

    fn bound(self) -> u64 {
        match self {
            Extension::LongName | Extension::LongLink => MAX_GNU_EXTENSION,
            Extension::PaxLocal | Extension::PaxGlobal => MAX_PAX_EXTENSION,
        }
    }
}

fn header_error(offset: u64, ext: Extension, problem: impl Into<String>) -> ExtensionError {
    ExtensionError::Refused {
        offset,
        kind: ext.name(),
        problem: problem.into(),
    }
}

impl Pending {
    /// Whether no extension is waiting for its member.
    pub fn is_empty(&self) -> bool {
        self.long_name.is_none() && self.long_link.is_none() && self.pax.is_none()
    }

    /// Whether a PAX record gives the next member's size (which
    /// [`Pending::member`] requires to equal its header's).
    pub fn gives_size(&self) -> bool {
        self.pax.as_ref().is_some_and(|p| p.size.is_some())
    }

    /// Reads the extension `entry` carries (bounded) and keeps what it says
    /// for the next member. A global PAX header is checked and ignored.
    pub fn read(
        &mut self,
        ext: Extension,
        entry: &mut tar::Entry<'_, impl Read>,
    ) -> Result<(), ExtensionError> {
        let offset = entry.raw_header_position();
        let claimed = entry
            .header()
            .entry_size()
            .map_err(|e| header_error(offset, ext, format!("unreadable size: {}", one_line(&e))))?;
        if claimed > ext.bound() {
            return Err(header_error(
                offset,
                ext,
                format!(
                    "claims {claimed} bytes, more than the {} allowed; refused before reading it",
                    ext.bound()
                ),
            ));
        }
        let already = match ext {
            Extension::LongName => self.long_name.is_some(),
            Extension::LongLink => self.long_link.is_some(),
            Extension::PaxLocal => self.pax.is_some(),
            Extension::PaxGlobal => false,
        };
        if already {
            return Err(header_error(
                offset,
                ext,
                "follows another one for the same entry",
            ));
        }
        // `claimed` is at most 64 KiB, so it fits and is allocated once.
        let mut data = Vec::with_capacity(claimed as usize);
        entry
            .take(claimed)
            .read_to_end(&mut data)
            .map_err(|source| ExtensionError::Unreadable {
                offset,
                kind: ext.name(),
                source,
            })?;
        if data.len() as u64 != claimed {
            return Err(header_error(
                offset,
                ext,
                format!(
                    "the archive ends after {} of its {claimed} bytes",
                    data.len()
                ),
            ));
        }
        match ext {
            Extension::LongName | Extension::LongLink => {
                while data.last() == Some(&0) {
                    data.pop();
                }
                if matches!(ext, Extension::LongName) {
                    self.long_name = Some(data);
                } else {
                    self.long_link = Some(data);
                }
            }
            Extension::PaxLocal => {
                let mut pax = Pax::default();
                for (key, value) in records(&data).map_err(|p| header_error(offset, ext, p))? {
                    let slot = match key {
                        b"path" => &mut pax.path,
                        b"linkpath" => &mut pax.linkpath,
                        b"size" => {
                            let size = std::str::from_utf8(value)
                                .ok()
                                .and_then(|v| v.parse::<u64>().ok())
                                .ok_or_else(|| {
                                    header_error(
                                        offset,
                                        ext,
                                        format!("size {} is not a number", shown(value)),
                                    )
                                })?;
                            if pax.size.replace(size).is_some() {
                                return Err(header_error(offset, ext, "gives size twice"));
                            }
                            continue;
                        }
                        k if k.starts_with(b"GNU.sparse.") => {
                            return Err(header_error(
                                offset,
                                ext,
                                "describes a sparse file; sparse files are not allowed",
                            ))
                        }
                        _ => continue,
                    };
                    if slot.replace(value.to_vec()).is_some() {
                        return Err(header_error(
                            offset,
                            ext,
                            format!("gives {} twice", shown(key)),
                        ));
                    }
                }
                self.pax = Some(pax);
            }
            Extension::PaxGlobal => {
                // `git archive` writes one holding the commit id. Keys that
                // would change every later entry are refused, not ignored.
                for (key, _) in records(&data).map_err(|p| header_error(offset, ext, p))? {
                    if matches!(key, b"path" | b"linkpath" | b"size")
                        || key.starts_with(b"GNU.sparse.")
                    {
                        return Err(header_error(
                            offset,
                            ext,
                            format!(
                                "sets {} for every later entry, which this reader does not apply",
                                shown(key)
                            ),
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// Applies what was read to the member `header` starts, and resets.
    pub fn member(&mut self, header: &tar::Header) -> Result<Member, String> {
        let pending = std::mem::take(self);
        let pax = pending.pax.unwrap_or_default();
        let path = match (pending.long_name, pax.path) {
            (Some(_), Some(_)) => {
                return Err("has both a GNU long name and a PAX path; refused as ambiguous".into())
            }
            (Some(p), None) | (None, Some(p)) => p,
            (None, None) => header.path_bytes().into_owned(),
        };
        let link = match (pending.long_link, pax.linkpath) {
            (Some(_), Some(_)) => {
                return Err(
                    "has both a GNU long link and a PAX linkpath; refused as ambiguous".into(),
                )
            }
            (Some(l), None) | (None, Some(l)) => Some(l),
            (None, None) => header.link_name_bytes().map(|l| l.into_owned()),
        };
        let size = header
            .entry_size()
            .map_err(|e| format!("unreadable size: {}", one_line(&e)))?;
        if let Some(pax_size) = pax.size {
            // Readers that honour one and not the other see different archives.
            if pax_size != size {
                return Err(format!(
                    "its PAX size {pax_size} differs from its header's {size}; refused as ambiguous"
                ));
            }
        }
        Ok(Member { path, link, size })
    }
}

/// One PAX record: its key and its value.
type Record<'a> = (&'a [u8], &'a [u8]);

/// The `LEN key=value\n` records of a PAX extension, all of them, exactly.
fn records(mut data: &[u8]) -> Result<Vec<Record<'_>>, String> {
    let mut out = Vec::new();
    while !data.is_empty() {
        let space = data
            .iter()
            .take(20)
            .position(|b| *b == b' ')
            .ok_or("malformed PAX record: no length")?;
        let len: usize = std::str::from_utf8(&data[..space])
            .ok()
            .and_then(|l| l.parse().ok())
            .ok_or("malformed PAX record: bad length")?;
        if len <= space + 1 || len > data.len() || data[len - 1] != b'\n' {
            return Err("malformed PAX record: length does not match".into());
        }
        let record = &data[space + 1..len - 1];
        let equals = record
            .iter()
            .position(|b| *b == b'=')
            .ok_or("malformed PAX record: no `=`")?;
        out.push((&record[..equals], &record[equals + 1..]));
        data = &data[len..];
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::records;

    #[test]
    fn pax_records_are_read_exactly() {
        let data = b"16 path=a/b/c/d\n11 size=10\n";
        let got = records(data).unwrap();
        assert_eq!(got, vec![(&b"path"[..], &b"a/b/c/d"[..]), (b"size", b"10")]);
        // A value may hold a newline: the length, not the newline, ends it.
        let got = records(b"11 path=\nx\n").unwrap();
        assert_eq!(got, vec![(&b"path"[..], &b"\nx"[..])]);
        for bad in [
            &b"16 path=a/b/c/d\n\n"[..],
            b"99 path=x\n",
            b"path=x\n",
            b"3 x\n",
            b"8 path\nx",
            b"18446744073709551616 a=b\n",
        ] {
            assert!(records(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
