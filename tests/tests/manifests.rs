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
        .filter(|n| n != ".staging")
        .collect()
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
