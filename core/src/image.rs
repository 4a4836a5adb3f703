//! Docker image tarballs (the `docker save` format): finding the image ID
//! they really carry. The ID is the SHA-256 of the image config; the config
//! is the file `manifest.json` names, and its bytes are hashed here rather
//! than trusting its file name. Both the legacy layout (`<hex>.json`) and
//! the OCI layout (`blobs/sha256/<hex>`) work; gzip is detected. Also
//! [`check_holds_files`], which refuses an empty service tarball.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};

use serde::Deserialize;

use crate::digest::Hasher;
use crate::tar_headers::{Extension, Pending};
use crate::Sha256Digest;

/// Config files larger than this are not hashed (real ones are a few KiB).
const MAX_CONFIG_BYTES: u64 = 4 << 20;
/// The most members an image tarball may have: `docker save` writes a few
/// per layer, and an image has at most 127 layers.
pub const MAX_ENTRIES: usize = 10_000;

#[derive(Deserialize)]
struct ManifestEntry {
    #[serde(rename = "Config")]
    config: String,
}

/// The image ID a `docker save` tarball carries, or why it carries none.
pub fn image_id(reader: impl Read) -> Result<Sha256Digest, String> {
    let mut reader = BufReader::new(reader);
    let gz = reader
        .fill_buf()
        .map(|b| b.starts_with(&[0x1f, 0x8b]))
        .map_err(|e| format!("cannot read the image tarball: {e}"))?;
    let reader: Box<dyn Read> = if gz {
        Box::new(flate2::bufread::MultiGzDecoder::new(reader))
    } else {
        Box::new(reader)
    };
    let mut archive = tar::Archive::new(reader);
    let mut manifest: Option<Vec<u8>> = None;
    let mut hashes: HashMap<String, Sha256Digest> = HashMap::new();
    // Raw: the `tar` crate would read long names and PAX records whole,
    // whatever size their header claims; `tar_headers` bounds each first.
    let entries = archive
        .entries()
        .map_err(|e| format!("not a tar archive: {e}"))?
        .raw(true);
    let mut pending = Pending::default();
    for (n, entry) in entries.enumerate() {
        if n >= MAX_ENTRIES {
            return Err(format!(
                "more than {MAX_ENTRIES} members; not a `docker save` tarball"
            ));
        }
        let mut entry = entry.map_err(|e| format!("corrupt image tarball: {e}"))?;
        let at = entry.raw_header_position();
        let kind = entry.header().entry_type();
        if kind == tar::EntryType::GNUSparse {
            return Err(format!(
                "sparse member at byte {at}: `docker save` writes none; refused"
            ));
        }
        if let Some(ext) = Extension::of(kind) {
            pending.read(ext, &mut entry).map_err(|e| e.to_string())?;
            // Read raw, a member's data is as long as its own header says;
            // a PAX size is refused rather than compared.
            if pending.gives_size() {
                return Err(format!(
                    "PAX header at byte {at} overrides a member's size, which an image tarball read here may not do"
                ));
            }
            continue;
        }
        let member = pending
            .member(entry.header())
            .map_err(|p| format!("member at byte {at}: {p}"))?;
        if kind != tar::EntryType::Regular {
            continue;
        }
        let (raw_path, size) = (member.path, member.size);
        let path = String::from_utf8_lossy(&raw_path)
            .trim_start_matches("./")
            .to_string();
        if path == "manifest.json" {
            if size > MAX_CONFIG_BYTES {
                return Err(format!(
                    "manifest.json is {size} bytes, more than the {MAX_CONFIG_BYTES} a `docker save` manifest may have"
                ));
            }
            let mut bytes = Vec::new();
            (&mut entry)
                .take(MAX_CONFIG_BYTES)
                .read_to_end(&mut bytes)
                .map_err(|e| format!("manifest.json: {e}"))?;
            manifest = Some(bytes);
        } else if size <= MAX_CONFIG_BYTES {
            let mut hasher = Hasher::new();
            let mut buf = [0u8; 16 * 1024];
            loop {
                let n = entry.read(&mut buf).map_err(|e| format!("{path}: {e}"))?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
            }
            hashes.insert(path, hasher.finish().0);
        }
    }
    let manifest = manifest.ok_or("no manifest.json: not a `docker save` tarball")?;
    let entries: Vec<ManifestEntry> = serde_json::from_slice(&manifest)
        .map_err(|e| format!("manifest.json is not a docker save manifest: {e}"))?;
    let [entry] = entries.as_slice() else {
        return Err(format!(
            "manifest.json lists {} images; an image tarball must hold exactly one",
            entries.len()
        ));
    };
    let config = entry.config.trim_start_matches("./");
    hashes.get(config).copied().ok_or_else(|| {
        format!("manifest.json names config {config:?}, which is not in the tarball")
    })
}

/// Refuses a service tarball (gzip or plain tar) that holds nothing: no
/// bytes at all once decompressed, or an end-of-archive block where its
/// first header should be. Only that first block is read; anything else
/// is judged by the agent's extractor, which treats every archive as
/// hostile.
pub fn check_holds_files(reader: impl Read) -> Result<(), String> {
    let mut reader = BufReader::new(reader);
    let gz = reader
        .fill_buf()
        .map(|b| b.starts_with(&[0x1f, 0x8b]))
        .map_err(|e| format!("cannot read the tarball: {e}"))?;
    let mut reader: Box<dyn Read> = if gz {
        Box::new(flate2::bufread::MultiGzDecoder::new(reader))
    } else {
        Box::new(reader)
    };
    let mut block = [0u8; 512];
    let mut got = 0;
    while got < block.len() {
        match reader.read(&mut block[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("cannot read the tarball: {e}")),
        }
    }
    if got == 0 {
        return Err("holds no bytes once decompressed: an empty archive".into());
    }
    if got == block.len() && block.iter().all(|b| *b == 0) {
        return Err("is an empty tar archive: it holds no files".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tarball(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, data) in files {
            let mut h = tar::Header::new_ustar();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            b.append_data(&mut h, path, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    #[test]
    fn reads_the_id_from_the_config_bytes_in_both_layouts() {
        let config = br#"{"architecture":"amd64","config":{}}"#;
        let id = Sha256Digest::of(config);
        let legacy = tarball(&[
            (
                "manifest.json",
                format!(r#"[{{"Config":"{}.json","Layers":[]}}]"#, id.to_hex()).as_bytes(),
            ),
            (&format!("{}.json", id.to_hex()), config),
        ]);
        assert_eq!(image_id(legacy.as_slice()).unwrap(), id);
        let oci = tarball(&[
            (&format!("blobs/sha256/{}", id.to_hex()), config),
            (
                "manifest.json",
                format!(
                    r#"[{{"Config":"blobs/sha256/{}","Layers":[]}}]"#,
                    id.to_hex()
                )
                .as_bytes(),
            ),
        ]);
        assert_eq!(image_id(oci.as_slice()).unwrap(), id);
    }

    #[test]
    fn a_config_whose_bytes_do_not_match_its_name_gives_its_real_digest() {
        let named = Sha256Digest::of(b"what the name claims");
        let t = tarball(&[
            (
                "manifest.json",
                format!(r#"[{{"Config":"{}.json"}}]"#, named.to_hex()).as_bytes(),
            ),
            (&format!("{}.json", named.to_hex()), b"tampered"),
        ]);
        assert_eq!(
            image_id(t.as_slice()).unwrap(),
            Sha256Digest::of(b"tampered")
        );
    }

    /// One raw header: an extension claiming `size` bytes, none of which
    /// follow.
    fn claiming(kind: tar::EntryType, size: u64) -> Vec<u8> {
        let mut h = tar::Header::new_gnu();
        h.set_path("././@LongLink").unwrap();
        h.set_entry_type(kind);
        h.set_size(size);
        h.set_mode(0o644);
        h.set_cksum();
        h.as_bytes().to_vec()
    }

    fn legacy(config: &[u8], config_path: &str) -> (Sha256Digest, Vec<u8>) {
        let id = Sha256Digest::of(config);
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(config.len() as u64);
        h.set_mode(0o644);
        // A path over 100 bytes: the builder writes a GNU long name.
        b.append_data(&mut h, config_path, config).unwrap();
        let m = format!(r#"[{{"Config":"{config_path}"}}]"#);
        let mut h = tar::Header::new_gnu();
        h.set_size(m.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, "manifest.json", m.as_bytes())
            .unwrap();
        (id, b.into_inner().unwrap())
    }

    #[test]
    fn header_extensions_are_bounded_before_they_are_read() {
        for (kind, what) in [
            (tar::EntryType::GNULongName, "GNU long name"),
            (tar::EntryType::GNULongLink, "GNU long link"),
            (tar::EntryType::XHeader, "PAX header"),
            (tar::EntryType::XGlobalHeader, "PAX global header"),
        ] {
            // 2 GiB claimed by a 512-byte file: read, it would fail on the
            // missing bytes (or take the memory) instead of this.
            let e = image_id(claiming(kind, 2 << 30).as_slice()).unwrap_err();
            assert!(
                e.starts_with(&format!(
                    "{what} at byte 0: claims 2147483648 bytes, more than the"
                )),
                "{e}"
            );
        }
    }

    #[test]
    fn long_names_pax_paths_and_global_headers_are_honoured() {
        let config = br#"{"architecture":"arm64"}"#;
        let long = format!("{}/config.json", "d".repeat(150));
        let (id, t) = legacy(config, &long);
        assert_eq!(image_id(t.as_slice()).unwrap(), id);

        // A PAX path record names the member; a global header (as `git
        // archive` writes) is read, bounded, and ignored.
        let mut b = tar::Builder::new(Vec::new());
        b.append_pax_extensions([("comment", b"global".as_slice())])
            .unwrap();
        let mut raw = b.into_inner().unwrap();
        // Without the end-of-archive blocks, so that more members follow.
        raw.truncate(raw.len() - 1024);
        // `append_pax_extensions` writes a local header: make it global.
        raw[156] = b'g';
        let mut h = tar::Header::from_byte_slice(&raw[..512]).clone();
        h.set_cksum();
        raw[..512].copy_from_slice(h.as_bytes());
        let mut b = tar::Builder::new(raw);
        b.append_pax_extensions([("path", b"blobs/cfg".as_slice())])
            .unwrap();
        let mut h = tar::Header::new_ustar();
        h.set_size(config.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, "ignored-name", config.as_slice())
            .unwrap();
        let m = br#"[{"Config":"blobs/cfg"}]"#;
        let mut h = tar::Header::new_ustar();
        h.set_size(m.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, "manifest.json", m.as_slice())
            .unwrap();
        let t = b.into_inner().unwrap();
        assert_eq!(image_id(t.as_slice()).unwrap(), Sha256Digest::of(config));
    }

    #[test]
    fn member_count_sizes_and_sparse_members_are_bounded() {
        let files: Vec<(String, Vec<u8>)> = (0..=MAX_ENTRIES)
            .map(|i| (format!("f{i}"), Vec::new()))
            .collect();
        let refs: Vec<(&str, &[u8])> = files
            .iter()
            .map(|(p, d)| (p.as_str(), d.as_slice()))
            .collect();
        let e = image_id(tarball(&refs).as_slice()).unwrap_err();
        assert_eq!(e, "more than 10000 members; not a `docker save` tarball");

        let big = vec![b' '; (MAX_CONFIG_BYTES + 1) as usize];
        let e = image_id(tarball(&[("manifest.json", &big)]).as_slice()).unwrap_err();
        assert!(
            e.starts_with("manifest.json is 4194305 bytes, more than"),
            "{e}"
        );

        let e = image_id(claiming(tar::EntryType::GNUSparse, 0).as_slice()).unwrap_err();
        assert!(e.starts_with("sparse member at byte 0"), "{e}");

        let mut b = tar::Builder::new(Vec::new());
        b.append_pax_extensions([("size", b"5".as_slice())])
            .unwrap();
        let e = image_id(b.into_inner().unwrap().as_slice()).unwrap_err();
        assert!(e.contains("overrides a member's size"), "{e}");
    }

    #[test]
    fn an_empty_tarball_is_refused_plain_or_gzipped() {
        use std::io::Write;
        let empty = tar::Builder::new(Vec::new()).into_inner().unwrap();
        let gz = |bytes: &[u8]| {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(bytes).unwrap();
            e.finish().unwrap()
        };
        for bytes in [empty.clone(), gz(&empty)] {
            assert_eq!(
                check_holds_files(bytes.as_slice()).unwrap_err(),
                "is an empty tar archive: it holds no files"
            );
        }
        assert_eq!(
            check_holds_files(gz(b"").as_slice()).unwrap_err(),
            "holds no bytes once decompressed: an empty archive"
        );
        // Anything else is left to the agent's extractor to judge.
        check_holds_files(b"short".as_slice()).unwrap();
        let one = tarball(&[("bin/svc", b"#!/bin/sh\n")]);
        check_holds_files(one.as_slice()).unwrap();
        check_holds_files(gz(&one).as_slice()).unwrap();
    }

    #[test]
    fn refuses_what_is_not_one_saved_image() {
        assert!(image_id(tarball(&[("x", b"y")]).as_slice())
            .unwrap_err()
            .contains("no manifest.json"));
        let two = tarball(&[("manifest.json", br#"[{"Config":"a"},{"Config":"b"}]"#)]);
        assert!(image_id(two.as_slice())
            .unwrap_err()
            .contains("lists 2 images"));
        let missing = tarball(&[("manifest.json", br#"[{"Config":"a.json"}]"#)]);
        assert!(image_id(missing.as_slice())
            .unwrap_err()
            .contains("not in the tarball"));
    }
}
