//! The hardened extractor over structure-aware random archives: entries of
//! every kind with adversarial names and link targets, written as real tar
//! headers (including GNU long names and PAX records), so the fuzzer spends
//! its time on path and link logic rather than on checksums.
#![no_main]

mod oracle;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
enum Kind {
    File(Vec<u8>),
    Dir,
    Symlink(Name),
    HardLink(Name),
    Fifo,
}

#[derive(Arbitrary, Debug)]
struct Entry {
    name: Name,
    kind: Kind,
    mode: u16,
    /// Write the name through a GNU long-name entry or a PAX record.
    long: u8,
}

/// Names built from path pieces that matter to an extractor.
#[derive(Arbitrary, Debug)]
struct Name(Vec<Piece>);

#[derive(Arbitrary, Debug)]
enum Piece {
    Dot,
    DotDot,
    Root,
    A,
    B,
    C,
    Etc,
    Tmp,
    Long,
    Raw(String),
}

impl Name {
    fn render(&self) -> String {
        let mut out = String::new();
        for (i, piece) in self.0.iter().take(8).enumerate() {
            if i > 0 && !matches!(piece, Piece::Root) {
                out.push('/');
            }
            out.push_str(match piece {
                Piece::Dot => ".",
                Piece::DotDot => "..",
                Piece::Root => "/",
                Piece::A => "a",
                Piece::B => "b",
                Piece::C => "c",
                Piece::Etc => "etc",
                Piece::Tmp => "tmp",
                Piece::Long => "llllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllll",
                Piece::Raw(s) => s.as_str(),
            });
        }
        out
    }
}

fn header(kind: tar::EntryType, size: u64, mode: u16) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(u32::from(mode) & 0o7777);
    h
}

fn append(builder: &mut tar::Builder<&mut Vec<u8>>, e: &Entry) -> std::io::Result<()> {
    let name = e.name.render();
    let (kind, data, link): (tar::EntryType, &[u8], Option<String>) = match &e.kind {
        Kind::File(bytes) => (tar::EntryType::Regular, bytes.as_slice(), None),
        Kind::Dir => (tar::EntryType::Directory, &[], None),
        Kind::Symlink(t) => (tar::EntryType::Symlink, &[], Some(t.render())),
        Kind::HardLink(t) => (tar::EntryType::Link, &[], Some(t.render())),
        Kind::Fifo => (tar::EntryType::Fifo, &[], None),
    };
    let mut h = header(kind, data.len() as u64, e.mode);
    match e.long % 3 {
        0 => {
            // Short names straight in the header; too long ones are skipped.
            h.set_path(&name)?;
            if let Some(link) = &link {
                h.set_link_name(link)?;
            }
            h.set_cksum();
            builder.append(&h, data)
        }
        1 => {
            // GNU long name / long link records (the tar crate writes them).
            if let Some(link) = &link {
                builder.append_link(&mut h, &name, link)
            } else {
                builder.append_data(&mut h, &name, data)
            }
        }
        _ => {
            // PAX records for path and linkpath.
            let mut records: Vec<(&str, &[u8])> = vec![("path", name.as_bytes())];
            if let Some(link) = &link {
                records.push(("linkpath", link.as_bytes()));
            }
            builder.append_pax_extensions(records)?;
            h.set_path("x")?;
            h.set_cksum();
            builder.append(&h, data)
        }
    }
}

fuzz_target!(|entries: Vec<Entry>| {
    let mut bytes = Vec::new();
    {
        let mut builder = tar::Builder::new(&mut bytes);
        for e in entries.iter().take(32) {
            // Entries the builder itself cannot write are left out.
            let _ = append(&mut builder, e);
        }
        let _ = builder.finish();
    }
    let jail = oracle::Jail::new();
    let accepted =
        cutover_agent::extract::unpack_reader(bytes.as_slice(), &jail.dest(), oracle::LIMITS)
            .is_ok();
    jail.check(accepted);
});
