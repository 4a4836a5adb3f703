//! Release import: a good release goes in; every bad one is refused with a
//! one-line error naming the problem, and nothing is stored.

use std::path::{Path, PathBuf};

use cutover_core::signing::{read_signing_key, SignatureFile};
use cutover_core::Sha256Digest;
use cutover_proto::v1;
use cutover_tests::{grpc, Fleet};

/// A manifest that the controller must refuse with `expected`.
struct Case {
    name: &'static str,
    services: Vec<(&'static str, &'static str)>,
    edit: Box<dyn Fn(String) -> String>,
    expected: &'static str,
}

struct Release {
    dir: PathBuf,
    manifest: PathBuf,
}

/// Writes artifacts `<svc>.tar.gz` and a manifest pinning them; `edit`
/// may change the manifest text before it is written.
fn release(
    f: &Fleet,
    name: &str,
    services: &[(&str, &str)],
    edit: impl Fn(String) -> String,
) -> Release {
    let dir = f.path(name);
    std::fs::create_dir_all(&dir).unwrap();
    let mut text = String::from(
        "version = \"1.0.0\"\ncreated = 2026-01-01T00:00:00Z\nexpires = 2099-01-01T00:00:00Z\n",
    );
    for (svc, deps) in services {
        let bytes = format!("artifact of {svc}").into_bytes();
        std::fs::write(dir.join(format!("{svc}.tar.gz")), &bytes).unwrap();
        text.push_str(&format!(
            "\n[[services]]\nname = \"{svc}\"\nservice_version = \"1.0\"\ndepends_on = [{deps}]\ntarball = {{ sha256 = \"{}\", size = {}, file = \"{svc}.tar.gz\" }}\n",
            Sha256Digest::of(&bytes),
            bytes.len()
        ));
    }
    let manifest = dir.join("release.toml");
    std::fs::write(&manifest, edit(text)).unwrap();
    Release { dir, manifest }
}

/// Signs with the library, so that manifests the CLI would refuse to sign
/// can still reach the controller.
fn sign_with(manifest: &Path, key: &Path) {
    let bytes = std::fs::read(manifest).unwrap();
    let mut sigs = SignatureFile::default();
    sigs.sign(&bytes, &read_signing_key(key).unwrap());
    std::fs::write(
        cutover_core::signing::signature_path(manifest),
        sigs.to_toml(),
    )
    .unwrap();
}

fn import(f: &Fleet, r: &Release) -> cutover_tests::Run {
    f.cli(&["release", "import", r.manifest.to_str().unwrap()])
}

fn stored_artifacts(f: &Fleet) -> Vec<String> {
    std::fs::read_dir(f.path("controller/artifacts"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != ".staging" && n != ".damaged")
        .collect()
}

fn sign(f: &Fleet, r: &Release) {
    sign_with(&r.manifest, &f.path("release.key"));
}

fn staging_is_empty(f: &Fleet) -> bool {
    std::fs::read_dir(f.path("controller/artifacts/.staging"))
        .unwrap()
        .next()
        .is_none()
}

/// Speaks `ImportRelease` directly, so the controller's own checks are
/// seen without the CLI's in front of them.
fn import_raw(
    f: &Fleet,
    chunks: Vec<v1::ImportChunk>,
) -> Result<v1::ImportReleaseResponse, String> {
    let op =
        grpc::Presented::from_files(&f.pki.join("operator.pem"), &f.pki.join("operator-key.pem"));
    grpc::runtime().block_on(async {
        let ch = grpc::channel(&f.url(), &f.pki.join("ca.pem"), Some(&op)).await?;
        grpc::operator(ch)
            .import_release(tonic::codegen::tokio_stream::iter(chunks))
            .await
            .map(tonic::Response::into_inner)
            .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
    })
}

fn header(r: &Release) -> v1::ImportChunk {
    v1::ImportChunk {
        part: Some(v1::import_chunk::Part::Header(v1::ImportHeader {
            manifest: std::fs::read(&r.manifest).unwrap(),
            signatures: std::fs::read_to_string(cutover_core::signing::signature_path(&r.manifest))
                .unwrap(),
        })),
    }
}

fn upload(bytes: &[u8]) -> Vec<v1::ImportChunk> {
    vec![
        v1::ImportChunk {
            part: Some(v1::import_chunk::Part::Artifact(v1::ArtifactStart {
                sha256: Sha256Digest::of(bytes).to_hex(),
                size: bytes.len() as u64,
            })),
        },
        v1::ImportChunk {
            part: Some(v1::import_chunk::Part::Data(bytes.to_vec())),
        },
    ]
}

#[test]
fn good_release_imports_and_channels_point_at_it() {
    let mut f = Fleet::new();
    f.start_controller();
    let r = release(&f, "good", &[("db", ""), ("api", "\"db\"")], |t| t);
    f.cli(&[
        "release",
        "sign",
        r.manifest.to_str().unwrap(),
        "--key",
        f.path("release.key").to_str().unwrap(),
    ])
    .ok();
    let out = import(&f, &r).ok();
    assert!(
        out.stdout
            .contains("imported release 1.0.0: 2 service(s), 2 artifact(s) stored"),
        "{}",
        out.stdout
    );
    assert_eq!(stored_artifacts(&f).len(), 2);
    let list = f.cli_json(&["release", "list"]);
    assert_eq!(list[0]["version"], "1.0.0");
    assert_eq!(list[0]["services"].as_array().unwrap().len(), 2);
    // Same manifest again: idempotent, nothing re-sent.
    assert!(import(&f, &r).ok().stdout.contains("already imported"));
    // A different manifest under the same version: refused.
    let other = release(&f, "other", &[("db", "")], |t| t);
    sign_with(&other.manifest, &f.path("release.key"));
    import(&f, &other).fails_with("release 1.0.0 already exists with a different manifest");

    f.cli(&["channel", "set", "stable", "1.0.0"]).ok();
    f.cli(&["channel", "default", "stable"]).ok();
    let ch = f.cli_json(&["channel", "list"]);
    assert_eq!(ch[0]["name"], "stable");
    assert_eq!(ch[0]["version"], "1.0.0");
    assert_eq!(ch[0]["is_default"], true);
    f.cli(&["channel", "set", "rc", "9.9.9"])
        .fails_with("no release 9.9.9");
    f.cli(&["channel", "default", "nightly"])
        .fails_with("no channel \"nightly\"");
}

#[test]
fn bad_releases_are_refused_with_one_line_and_nothing_stored() {
    let mut f = Fleet::new();
    f.start_controller();
    let key = f.path("release.key");
    let two = [("db", ""), ("api", "\"db\"")];

    // Signatures.
    let r = release(&f, "badsig", &two, |t| t);
    sign_with(&r.manifest, &key);
    let sig_path = cutover_core::signing::signature_path(&r.manifest);
    let sig = std::fs::read_to_string(&sig_path).unwrap();
    // 64 bytes of well-formed base64 that is not the signature.
    let forged =
        "BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBw==";
    let start = sig.find("signature = \"").unwrap() + "signature = \"".len();
    let end = start + sig[start..].find('"').unwrap();
    std::fs::write(
        &sig_path,
        format!("{}{}{}", &sig[..start], forged, &sig[end..]),
    )
    .unwrap();
    import(&f, &r).fails_with("bad signature by key");

    let r = release(&f, "unknownkey", &two, |t| t);
    f.cli(&[
        "release",
        "keygen",
        "--out",
        f.path("stranger").to_str().unwrap(),
    ])
    .ok();
    sign_with(&r.manifest, &f.path("stranger.key"));
    import(&f, &r).fails_with("signed only by unknown key(s)");

    let r = release(&f, "tampered", &two, |t| t);
    sign_with(&r.manifest, &key);
    let text = std::fs::read_to_string(&r.manifest).unwrap();
    std::fs::write(
        &r.manifest,
        text.replacen("service_version = \"1.0\"", "service_version = \"1.1\"", 1),
    )
    .unwrap();
    import(&f, &r).fails_with("bad signature by key");

    let r = release(&f, "unsigned", &two, |t| t);
    import(&f, &r).fails_with("release.toml.sig not found");

    // The manifest's own rules, each checked on a properly signed manifest.
    let cases = vec![
        Case {
            name: "expired",
            services: two.to_vec(),
            edit: Box::new(|t: String| {
                t.replace(
                    "created = 2026-01-01T00:00:00Z",
                    "created = 2020-01-01T00:00:00Z",
                )
                .replace("2099-01-01T00:00:00Z", "2021-01-01T00:00:00Z")
            }),
            expected: "release 1.0.0: expired at 2021-01-01T00:00:00Z",
        },
        Case {
            name: "duplicate",
            services: vec![("db", ""), ("db", "")],
            edit: Box::new(|t| t),
            expected: "release 1.0.0: service \"db\" is listed twice",
        },
        Case {
            name: "missingdep",
            services: vec![("api", "\"db\"")],
            edit: Box::new(|t| t),
            expected:
                "release 1.0.0: service \"api\" depends on \"db\", which is not in the release",
        },
        Case {
            name: "cycle",
            services: vec![("a", "\"b\""), ("b", "\"c\""), ("c", "\"a\"")],
            edit: Box::new(|t| t),
            expected: "release 1.0.0: dependency cycle: a -> b -> c -> a",
        },
        Case {
            name: "baddigest",
            services: vec![("db", "")],
            edit: Box::new(|t: String| {
                let at = t.find("sha256 = \"").unwrap() + 10;
                format!("{}XYZ{}", &t[..at], &t[at + 3..])
            }),
            expected: "malformed sha256 digest",
        },
        Case {
            name: "unknownkey",
            services: vec![("db", "")],
            edit: Box::new(|t: String| t.replace("depends_on", "dependson")),
            expected: "unknown field `dependson`",
        },
    ];
    for Case {
        name,
        services,
        edit,
        expected,
    } in cases
    {
        let r = release(&f, name, &services, edit);
        sign_with(&r.manifest, &key);
        let run = import(&f, &r);
        assert!(
            run.code == 1 && run.stderr.contains(expected),
            "{name}: {run:?}"
        );
        assert!(!run.stderr.trim().contains('\n'), "{name}: {run:?}");
    }

    // Artifacts: missing file, wrong bytes, wrong size.
    let r = release(&f, "nofile", &two, |t| t);
    sign_with(&r.manifest, &key);
    std::fs::remove_file(r.dir.join("api.tar.gz")).unwrap();
    import(&f, &r).fails_with("service \"api\": tarball file");

    let r = release(&f, "wrongbytes", &two, |t| t);
    sign_with(&r.manifest, &key);
    std::fs::write(r.dir.join("api.tar.gz"), b"artifact of XXX").unwrap();
    import(&f, &r).fails_with("bytes hash to sha256");

    let r = release(&f, "wrongsize", &two, |t| t);
    sign_with(&r.manifest, &key);
    std::fs::write(r.dir.join("db.tar.gz"), b"artifact of db, and more").unwrap();
    import(&f, &r).fails_with("more bytes than the manifest's size");
    std::fs::write(r.dir.join("db.tar.gz"), b"artifact").unwrap();
    import(&f, &r).fails_with("size is 8 bytes, the manifest says 14");

    // Nothing of any of this was stored.
    assert_eq!(f.cli_json(&["release", "list"]), serde_json::json!([]));
    assert!(
        stored_artifacts(&f).is_empty(),
        "{:?}",
        stored_artifacts(&f)
    );
    assert!(std::fs::read_dir(f.path("controller/artifacts/.staging"))
        .unwrap()
        .next()
        .is_none());
}

#[test]
fn controller_checks_manifests_itself_not_only_the_cli() {
    let mut f = Fleet::new();
    f.start_controller();
    let r = release(&f, "cycle", &[("a", "\"b\""), ("b", "\"a\"")], |t| t);
    sign_with(&r.manifest, &f.path("release.key"));
    let manifest = std::fs::read(&r.manifest).unwrap();
    let signatures =
        std::fs::read_to_string(cutover_core::signing::signature_path(&r.manifest)).unwrap();
    let op =
        grpc::Presented::from_files(&f.pki.join("operator.pem"), &f.pki.join("operator-key.pem"));
    let e = grpc::runtime()
        .block_on(async {
            let ch = grpc::channel(&f.url(), &f.pki.join("ca.pem"), Some(&op)).await?;
            let header = v1::ImportChunk {
                part: Some(v1::import_chunk::Part::Header(v1::ImportHeader {
                    manifest,
                    signatures,
                })),
            };
            grpc::operator(ch)
                .import_release(tonic::codegen::tokio_stream::iter(vec![header]))
                .await
                .map(|_| ())
                .map_err(|s| grpc::status_text(&s))
        })
        .unwrap_err();
    assert!(
        e.contains("InvalidArgument") && e.contains("dependency cycle: a -> b -> a"),
        "{e}"
    );
}

#[test]
fn size_zero_pins_and_empty_artifact_files_are_refused() {
    let mut f = Fleet::new();
    f.start_controller();
    let zero = |t: String| {
        let at = t.find("size = ").unwrap() + "size = ".len();
        let end = at + t[at..].find(',').unwrap();
        format!("{}0{}", &t[..at], &t[end..])
    };
    let r = release(&f, "zero", &[("db", "")], zero);
    sign(&f, &r);
    let expected =
        "service \"db\": tarball db.tar.gz is pinned with size 0; an artifact must have bytes";
    import(&f, &r).fails_with(expected);
    // The controller refuses it itself, not only the CLI.
    let e = import_raw(&f, vec![header(&r)]).unwrap_err();
    assert!(e.contains("InvalidArgument") && e.contains(expected), "{e}");

    // A pin with a size, but the file in the release directory is empty.
    let r = release(&f, "empty", &[("db", "")], |t| t);
    sign(&f, &r);
    std::fs::write(r.dir.join("db.tar.gz"), b"").unwrap();
    import(&f, &r).fails_with("db.tar.gz: the tarball of service \"db\" is empty (0 bytes) but the manifest pins 14 bytes");

    // An archive with no files in it: 1024 zero bytes, as `tar cf x.tar
    // -T /dev/null` writes.
    let empty_tar = vec![0u8; 1024];
    let r = release(&f, "emptytar", &[("db", "")], |t| {
        t.replace(
            &Sha256Digest::of(b"artifact of db").to_string(),
            &Sha256Digest::of(&empty_tar).to_string(),
        )
        .replace("size = 14", "size = 1024")
    });
    std::fs::write(r.dir.join("db.tar.gz"), &empty_tar).unwrap();
    sign(&f, &r);
    import(&f, &r).fails_with("release 1.0.0: service \"db\": tarball db.tar.gz is an empty tar archive: it holds no files; refused");

    assert_eq!(f.cli_json(&["release", "list"]), serde_json::json!([]));
    assert!(stored_artifacts(&f).is_empty());
    assert!(staging_is_empty(&f));
}

/// Every stored artifact file and its bytes.
fn stored_bytes(f: &Fleet) -> Vec<(String, Vec<u8>)> {
    let mut all: Vec<(String, Vec<u8>)> = stored_artifacts(f)
        .into_iter()
        .map(|n| {
            let bytes = std::fs::read(f.path("controller/artifacts").join(&n)).unwrap();
            (n, bytes)
        })
        .collect();
    all.sort();
    all
}

/// The bytes are present, so the CLI uploads nothing: the controller must
/// still hold the manifest's size against the stored one (a wrong size
/// accepted here made hosts without a cache retry their fetch for 60 s).
#[test]
fn a_stored_digest_pinned_with_another_size_is_refused_naming_both() {
    let mut f = Fleet::new();
    f.start_controller();
    let first = release(&f, "first", &[("db", "")], |t| t);
    sign(&f, &first);
    import(&f, &first).ok();
    let before = (f.cli_json(&["release", "list"]), stored_bytes(&f));
    // Release 1.1.0 pins the same bytes (same digest) with a size one more.
    let second = release(&f, "second", &[("db", "")], |t| {
        t.replace("1.0.0", "1.1.0")
            .replace("size = 14", "size = 15")
    });
    sign(&f, &second);
    let digest = Sha256Digest::of(b"artifact of db");
    let expected = format!(
        "release 1.1.0: service \"db\": tarball db.tar.gz: pins sha256 {digest} with size 15 bytes, but the controller stores that digest with size 14 bytes"
    );
    import(&f, &second).fails_with(&expected);
    // Also when the bytes are uploaded with the wrong pin.
    let mut chunks = vec![header(&second)];
    chunks.extend(upload(b"artifact of db"));
    let e = import_raw(&f, chunks).unwrap_err();
    assert!(e.contains(&expected), "{e}");
    // Nothing stored changed: the same one release, the same bytes, and
    // nothing left in staging.
    let after = (f.cli_json(&["release", "list"]), stored_bytes(&f));
    assert_eq!(after, before);
    assert_eq!(after.0.as_array().unwrap().len(), 1, "{}", after.0);
    assert!(staging_is_empty(&f));
}

#[test]
fn symlinked_or_special_release_files_are_refused_naming_the_file() {
    let mut f = Fleet::new();
    f.start_controller();
    let two = [("db", ""), ("api", "\"db\"")];
    let secret = f.path("secret");
    std::fs::write(&secret, b"not for the controller").unwrap();

    // An artifact file that is a link, even to the right bytes.
    let r = release(&f, "linkedartifact", &two, |t| t);
    sign(&f, &r);
    let real = f.path("api-elsewhere.tar.gz");
    std::fs::rename(r.dir.join("api.tar.gz"), &real).unwrap();
    std::os::unix::fs::symlink(&real, r.dir.join("api.tar.gz")).unwrap();
    import(&f, &r)
        .fails_with("api.tar.gz: the tarball of service \"api\" is a symbolic link, refused");

    // A directory on the way to an artifact file that is a link.
    let r = release(&f, "linkeddir", &[("db", "")], |t| {
        t.replace("file = \"db.tar.gz\"", "file = \"sub/db.tar.gz\"")
    });
    sign(&f, &r);
    let elsewhere = f.path("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    std::fs::rename(r.dir.join("db.tar.gz"), elsewhere.join("db.tar.gz")).unwrap();
    std::os::unix::fs::symlink(&elsewhere, r.dir.join("sub")).unwrap();
    import(&f, &r).fails_with("linkeddir/sub: the directory holding the tarball of service \"db\" is a symbolic link, refused");

    // The manifest and the signature file.
    let r = release(&f, "linkedmanifest", &two, |t| t);
    sign(&f, &r);
    let link = r.dir.join("link.toml");
    std::os::unix::fs::symlink(&r.manifest, &link).unwrap();
    std::fs::copy(
        cutover_core::signing::signature_path(&r.manifest),
        cutover_core::signing::signature_path(&link),
    )
    .unwrap();
    f.cli(&["release", "import", link.to_str().unwrap()])
        .fails_with("link.toml: the manifest is a symbolic link, refused");
    let sig = cutover_core::signing::signature_path(&r.manifest);
    let sig_elsewhere = f.path("elsewhere.sig");
    std::fs::rename(&sig, &sig_elsewhere).unwrap();
    std::os::unix::fs::symlink(&sig_elsewhere, &sig).unwrap();
    import(&f, &r).fails_with("release.toml.sig: the signature file is a symbolic link, refused");

    // A FIFO in place of an artifact neither blocks the CLI nor is read.
    let r = release(&f, "fifo", &[("db", "")], |t| t);
    sign(&f, &r);
    std::fs::remove_file(r.dir.join("db.tar.gz")).unwrap();
    nix::unistd::mkfifo(&r.dir.join("db.tar.gz"), nix::sys::stat::Mode::S_IRWXU).unwrap();
    import(&f, &r).fails_with("db.tar.gz: the tarball of service \"db\" is not a regular file");

    assert_eq!(f.cli_json(&["release", "list"]), serde_json::json!([]));
    assert!(stored_artifacts(&f).is_empty());
    assert!(staging_is_empty(&f));
}

#[test]
fn oversized_manifest_and_signature_files_are_refused_before_reading() {
    let mut f = Fleet::new();
    f.start_controller();
    let r = release(&f, "bigmanifest", &[("db", "")], |t| {
        format!("{t}# {}\n", "x".repeat(2 << 20))
    });
    sign(&f, &r);
    let size = std::fs::metadata(&r.manifest).unwrap().len();
    import(&f, &r).fails_with(&format!(
        "release.toml: the manifest is {size} bytes, more than the 1048576 it may have"
    ));

    let r = release(&f, "bigsig", &[("db", "")], |t| t);
    sign(&f, &r);
    let sig = cutover_core::signing::signature_path(&r.manifest);
    let mut text = std::fs::read_to_string(&sig).unwrap();
    text.push_str(&format!("# {}\n", "x".repeat(100_000)));
    std::fs::write(&sig, text).unwrap();
    import(&f, &r).fails_with("release.toml.sig: the signature file is 100");
    assert_eq!(f.cli_json(&["release", "list"]), serde_json::json!([]));
}

#[test]
fn build_metadata_versions_are_refused_beside_the_release_they_shadow() {
    let mut f = Fleet::new();
    f.start_controller();
    let r = release(&f, "plain", &[("db", "")], |t| t);
    sign(&f, &r);
    import(&f, &r).ok();
    let evil = release(&f, "evil", &[("db", "")], |t| {
        t.replace("\"1.0.0\"", "\"1.0.0+evil\"")
    });
    sign(&f, &evil);
    let expected = "version \"1.0.0+evil\" carries build metadata \"+evil\": semver ignores it when ordering versions, so it has the same precedence as 1.0.0; refused";
    import(&f, &evil).fails_with(expected);
    let e = import_raw(&f, vec![header(&evil)]).unwrap_err();
    assert!(e.contains("InvalidArgument") && e.contains(expected), "{e}");
    let list = f.cli_json(&["release", "list"]);
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    assert_eq!(list[0]["version"], "1.0.0");
}

#[test]
fn reimport_verifies_stored_artifacts_and_repairs_damaged_ones() {
    let mut f = Fleet::new();
    f.start_controller();
    let r = release(&f, "good", &[("db", ""), ("api", "\"db\"")], |t| t);
    sign(&f, &r);
    import(&f, &r).ok();
    let db = Sha256Digest::of(b"artifact of db");
    let api = Sha256Digest::of(b"artifact of api");
    let stored = |d: &Sha256Digest| f.path("controller/artifacts").join(d.to_hex());

    // Nothing damaged: verified, nothing re-sent or replaced.
    let out = import(&f, &r).ok();
    assert!(
        out.stdout.contains(
            "release 1.0.0 already imported (same manifest); artifacts verified (0 repaired)"
        ),
        "{}",
        out.stdout
    );

    // One byte flipped in one copy, the other copy truncated.
    std::fs::write(stored(&db), b"artifact of dB").unwrap();
    std::fs::write(stored(&api), b"artifact").unwrap();
    let out = import(&f, &r).ok();
    assert!(
        out.stdout.contains(
            "release 1.0.0 already imported (same manifest); artifacts verified (2 repaired)"
        ),
        "{}",
        out.stdout
    );
    assert_eq!(std::fs::read(stored(&db)).unwrap(), b"artifact of db");
    assert_eq!(std::fs::read(stored(&api)).unwrap(), b"artifact of api");
    // The damaged copies are kept, not deleted.
    let mut kept: Vec<Vec<u8>> = std::fs::read_dir(f.path("controller/artifacts/.damaged"))
        .unwrap()
        .map(|e| std::fs::read(e.unwrap().path()).unwrap())
        .collect();
    kept.sort();
    assert_eq!(kept, vec![b"artifact".to_vec(), b"artifact of dB".to_vec()]);
    let json = f.cli_json(&["release", "import", r.manifest.to_str().unwrap()]);
    assert_eq!(json["artifacts_repaired"], 0, "{json}");
    assert_eq!(json["already_imported"], true, "{json}");

    // A new release pinning the same bytes repairs a missing copy too.
    std::fs::remove_file(stored(&db)).unwrap();
    let next = release(&f, "next", &[("db", "")], |t| t.replace("1.0.0", "1.1.0"));
    sign(&f, &next);
    let out = import(&f, &next).ok();
    assert!(
        out.stdout.contains("imported release 1.1.0: 1 service(s), 0 artifact(s) stored, 1 already present (1 damaged stored copy(ies) repaired)"),
        "{}",
        out.stdout
    );
    assert_eq!(std::fs::read(stored(&db)).unwrap(), b"artifact of db");

    // Without the bytes, a damaged copy is refused with the way to repair it.
    std::fs::write(stored(&db), b"rotten").unwrap();
    let e = import_raw(&f, vec![header(&r)]).unwrap_err();
    assert!(
        e.contains(&format!("release 1.0.0: service \"db\": tarball db.tar.gz: the controller's copy of sha256 {db} is damaged (it is 6 bytes, the pin says 14); import the release again")),
        "{e}"
    );
    assert_eq!(std::fs::read(stored(&db)).unwrap(), b"rotten");
    // One upload of a digest per import.
    let mut chunks = vec![header(&r)];
    chunks.extend(upload(b"artifact of db"));
    chunks.extend(upload(b"artifact of db"));
    let e = import_raw(&f, chunks).unwrap_err();
    assert!(
        e.contains(&format!("sha256 {db} was uploaded twice in one import")),
        "{e}"
    );
    assert!(staging_is_empty(&f));
    // The repair is on record.
    let log = f.controller_log();
    assert!(
        log.contains("damaged stored artifact replaced by verified bytes"),
        "{log}"
    );
}

// Releases that carry migrations, in a file of their own beside this one.
#[path = "manifests/migrations.rs"]
mod migrations;
