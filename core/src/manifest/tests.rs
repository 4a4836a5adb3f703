//! Tests of release-manifest parsing and validation.

use super::*;

const SHA: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

fn manifest(services: &str) -> String {
    format!(
        "version = \"1.2.0\"\ncreated = 2026-01-01T00:00:00Z\nexpires = 2036-01-01T00:00:00Z\n{services}"
    )
}

fn svc(name: &str, deps: &str) -> String {
    format!(
        "[[services]]\nname = \"{name}\"\nservice_version = \"1.0\"\ndepends_on = [{deps}]\ntarball = {{ sha256 = \"{SHA}\", size = 3, file = \"{name}.tar.gz\" }}\n"
    )
}

fn err(text: &str) -> String {
    Manifest::parse(text).unwrap_err().to_string()
}

#[test]
fn orders_services_in_dependency_levels() {
    let m = Manifest::parse(&manifest(&format!(
        "{}{}{}",
        svc("api", "\"db\", \"cache\""),
        svc("db", ""),
        svc("cache", "\"db\"")
    )))
    .unwrap();
    assert_eq!(
        m.levels().unwrap(),
        vec![vec!["db"], vec!["cache"], vec!["api"]]
    );
    assert_eq!(m.artifacts().len(), 3);
}

#[test]
fn names_the_cycle() {
    let e = err(&manifest(&format!(
        "{}{}{}",
        svc("a", "\"b\""),
        svc("b", "\"c\""),
        svc("c", "\"a\"")
    )));
    assert_eq!(e, "release 1.2.0: dependency cycle: a -> b -> c -> a");
}

#[test]
fn refuses_duplicates_missing_deps_and_bad_digests() {
    let dup = err(&manifest(&format!("{}{}", svc("a", ""), svc("a", ""))));
    assert_eq!(dup, "release 1.2.0: service \"a\" is listed twice");
    let missing = err(&manifest(&svc("api", "\"db\"")));
    assert_eq!(
        missing,
        "release 1.2.0: service \"api\" depends on \"db\", which is not in the release"
    );
    let bad = err(&manifest(&svc("a", "").replace(SHA, "abc123")));
    assert!(bad.contains("malformed sha256 digest \"abc123\""), "{bad}");
}

#[test]
fn unknown_key_is_named() {
    let e = err(&manifest(&svc("a", "").replace("depends_on", "dependson")));
    assert!(e.contains("unknown field `dependson`"), "{e}");
    assert!(!e.contains('\n'));
}

#[test]
fn expiry_is_checked_against_now() {
    let m = Manifest::parse(&manifest(&svc("a", ""))).unwrap();
    let later = time::macros::datetime!(2037-01-01 0:00 UTC);
    let e = m.check_current(later).unwrap_err().to_string();
    assert!(e.contains("expired at 2036-01-01T00:00:00Z"), "{e}");
    m.check_current(time::macros::datetime!(2027-01-01 0:00 UTC))
        .unwrap();
}

#[test]
fn image_needs_prefixed_id_and_pinned_reference() {
    let img = |body: &str| {
        manifest(&format!(
            "[[services]]\nname = \"web\"\nservice_version = \"2\"\nimage = {{ {body} }}\n"
        ))
    };
    Manifest::parse(&img(&format!(
        "id = \"sha256:{SHA}\", tarball_sha256 = \"{SHA}\", size = 10, file = \"web.tar\""
    )))
    .unwrap();
    assert!(err(&img(&format!(
        "id = \"{SHA}\", reference = \"r/web@sha256:{SHA}\""
    )))
    .contains("must start with \"sha256:\""));
    assert!(err(&img(&format!(
        "id = \"sha256:{SHA}\", reference = \"r/web:latest\""
    )))
    .contains("must pin a digest"));
}

#[test]
fn size_zero_pins_are_refused_for_tarballs_and_images() {
    let e = err(&manifest(&svc("a", "").replace("size = 3", "size = 0")));
    assert_eq!(
        e,
        "release 1.2.0: service \"a\": tarball a.tar.gz is pinned with size 0; an artifact must have bytes (pin the size of the real file)"
    );
    let e = err(&manifest(&format!(
        "[[services]]\nname = \"web\"\nservice_version = \"2\"\nimage = {{ id = \"sha256:{SHA}\", tarball_sha256 = \"{SHA}\", size = 0, file = \"web.tar\" }}\n"
    )));
    assert!(
        e.contains("image tarball web.tar is pinned with size 0"),
        "{e}"
    );
    let huge = (MAX_ARTIFACT_SIZE + 1).to_string();
    let e = err(&manifest(
        &svc("a", "").replace("size = 3", &format!("size = {huge}")),
    ));
    assert!(
        e.contains(&format!("pinned with size {huge}, more than")),
        "{e}"
    );
    Manifest::parse(&manifest(
        &svc("a", "").replace("size = 3", &format!("size = {MAX_ARTIFACT_SIZE}")),
    ))
    .unwrap();
}

#[test]
fn one_digest_pinned_with_two_sizes_is_refused() {
    let e = err(&manifest(&format!(
        "{}{}",
        svc("a", ""),
        svc("b", "").replace("size = 3", "size = 4")
    )));
    assert_eq!(
        e,
        format!("release 1.2.0: sha256 {SHA} is pinned with size 3 by service \"a\" and size 4 by service \"b\"; one digest has one size")
    );
    // The same bytes pinned twice with one size are fine.
    Manifest::parse(&manifest(&format!("{}{}", svc("a", ""), svc("b", "")))).unwrap();
}

#[test]
fn build_metadata_is_refused_in_every_version_field() {
    let e = err(&manifest(&svc("a", "")).replace("\"1.2.0\"", "\"1.2.0+evil\""));
    assert!(
        e.contains("version \"1.2.0+evil\" carries build metadata \"+evil\"")
            && e.contains("same precedence as 1.2.0; refused"),
        "{e}"
    );
    assert!(!e.contains('\n'));
    let e = err(&format!(
        "min_upgrade_from = \"1.0.0+b\"\n{}",
        manifest(&svc("a", ""))
    ));
    assert!(
        e.contains("min_upgrade_from \"1.0.0+b\" carries build metadata"),
        "{e}"
    );
    let e = err(&format!(
        "requires_intermediate = [\"1.1.0-rc.1+b\"]\n{}",
        manifest(&svc("a", ""))
    ));
    assert!(e.contains("same precedence as 1.1.0-rc.1"), "{e}");
    // Pre-release versions stay allowed: they order before the release.
    Manifest::parse(&manifest(&svc("a", "")).replace("\"1.2.0\"", "\"1.2.0-rc.1\"")).unwrap();
}

#[test]
fn counts_and_lengths_are_bounded() {
    let big = "x".repeat(MAX_MANIFEST_BYTES + 1);
    let e = err(&format!("{}# {big}\n", manifest(&svc("a", ""))));
    assert!(
        e.contains("more than the 1048576 a manifest may have"),
        "{e}"
    );

    let many: String = (0..=MAX_SERVICES)
        .map(|i| svc(&format!("s{i}"), ""))
        .collect();
    let e = err(&manifest(&many));
    assert!(e.contains("1025 [[services]], at most 1024"), "{e}");
    let most: String = (0..MAX_SERVICES)
        .map(|i| svc(&format!("s{i}"), ""))
        .collect();
    assert_eq!(
        Manifest::parse(&manifest(&most)).unwrap().services.len(),
        MAX_SERVICES
    );

    let e = err(&manifest(&format!(
        "{}{}",
        svc("a", "\"b\", \"b\""),
        svc("b", "")
    )));
    assert!(
        e.contains("service \"a\": depends_on lists \"b\" twice"),
        "{e}"
    );

    let long = "v".repeat(MAX_SERVICE_VERSION_LEN + 1);
    let e = err(&manifest(
        &svc("a", "").replace("\"1.0\"", &format!("\"{long}\"")),
    ));
    assert!(
        e.contains("service_version \"vvvv") && e.contains("(129 bytes)"),
        "{e}"
    );
    assert!(e.len() < 300, "the error echoes the whole value: {e}");

    let e = err(&manifest(&svc("a", "").replace("a.tar.gz", "a\\n.tar.gz")));
    assert!(
        e.contains("artifact file \"a\\n.tar.gz\" contains control characters"),
        "{e}"
    );

    let name = "n".repeat(10_000);
    let e = err(&manifest(&svc(&name, "")));
    assert!(e.contains("longer than 253") && e.len() < 300, "{e}");

    let version = "1.0.0-".to_string() + &"a".repeat(10_000);
    let e = err(&manifest(&svc("a", "")).replace("\"1.2.0\"", &format!("\"{version}\"")));
    assert!(e.contains("at most 64 characters") && e.len() < 300, "{e}");

    let list: Vec<String> = (0..=MAX_INTERMEDIATE)
        .map(|i| format!("\"1.1.{i}\""))
        .collect();
    let e = err(&format!(
        "requires_intermediate = [{}]\n{}",
        list.join(", "),
        manifest(&svc("a", ""))
    ));
    assert!(e.contains("requires_intermediate lists 65 versions"), "{e}");
}

#[test]
fn artifact_paths_stay_inside_the_directory() {
    let e = err(&manifest(&svc("a", "").replace("a.tar.gz", "../a.tar.gz")));
    assert!(e.contains("must be a relative path"), "{e}");
}
