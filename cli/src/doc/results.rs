//! What the commands that change something print with `-o json`: what
//! they did, as data (`docs/json/*.schema.json`). Paths are as given.

use std::path::Path;

use serde::Serialize;

fn path(p: &Path) -> String {
    p.display().to_string()
}

/// `pki init`, `release build` and `man`: the files written, in order.
#[derive(Serialize)]
pub struct Written {
    written: Vec<String>,
}

impl Written {
    pub fn of<P: AsRef<Path>>(paths: &[P]) -> Written {
        Written {
            written: paths.iter().map(|p| path(p.as_ref())).collect(),
        }
    }
}

/// `release keygen`.
#[derive(Serialize)]
pub struct KeyMade {
    pub key_id: String,
    pub secret_key: String,
    pub public_key: String,
}

impl KeyMade {
    pub fn new(key_id: String, secret: &Path, public: &Path) -> KeyMade {
        KeyMade {
            key_id,
            secret_key: path(secret),
            public_key: path(public),
        }
    }
}

/// `release sign`.
#[derive(Serialize)]
pub struct Signed {
    pub release: String,
    pub key_id: String,
    pub signatures: usize,
    pub signature_file: String,
}

impl Signed {
    pub fn new(release: String, key_id: String, signatures: usize, file: &Path) -> Signed {
        Signed {
            release,
            key_id,
            signatures,
            signature_file: path(file),
        }
    }
}

/// `release import`.
#[derive(Serialize)]
pub struct Imported {
    pub version: String,
    pub services: u32,
    pub artifacts_stored: u32,
    pub artifacts_present: u32,
    pub artifacts_repaired: u32,
    pub signed_by: Vec<String>,
    pub already_imported: bool,
}

/// `token create`: the token itself, once.
#[derive(Serialize)]
pub struct TokenMade<'a> {
    pub host: &'a str,
    pub token: &'a str,
    pub expires_at: Option<String>,
    /// Made with `--replace` (as `token list` says it).
    pub replaces: bool,
}

/// `token revoke`.
#[derive(Serialize)]
pub struct TokensRevoked<'a> {
    pub host: &'a str,
    pub revoked: u32,
}

/// `host revoke` and `host forget`.
#[derive(Serialize)]
pub struct HostChanged<'a> {
    pub host: &'a str,
    /// `revoked` or `forgotten`.
    pub action: &'static str,
}
