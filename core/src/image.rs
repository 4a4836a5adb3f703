//! Docker image tarballs (the `docker save` format): finding the image ID
//! they really carry. The ID is the SHA-256 of the image config; the config
//! is the file `manifest.json` names, and its bytes are hashed here rather
//! than trusting its file name. Both the legacy layout (`<hex>.json`) and
//! the OCI layout (`blobs/sha256/<hex>`) work; gzip is detected.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};

use serde::Deserialize;

use crate::digest::Hasher;
use crate::Sha256Digest;

/// Config files larger than this are not hashed (real ones are a few KiB).
const MAX_CONFIG_BYTES: u64 = 4 << 20;

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
    let entries = archive
        .entries()
        .map_err(|e| format!("not a tar archive: {e}"))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| format!("corrupt image tarball: {e}"))?;
        if entry.header().entry_type() != tar::EntryType::Regular {
            continue;
        }
        let path = String::from_utf8_lossy(&entry.path_bytes())
            .trim_start_matches("./")
            .to_string();
        let size = entry.header().size().unwrap_or(u64::MAX);
        if path == "manifest.json" {
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
