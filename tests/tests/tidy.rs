//! Tidy checks, as rust-analyzer keeps them: the invariants of the code's
//! shape that a test can check, over the workspace's own sources (the
//! members the root `Cargo.toml` names; `fuzz/` is a workspace of its own).
//! ARCHITECTURE.md marks each invariant checked here "tidy", beside the
//! crate it governs. Every module opens with a `//!` line; no source file
//! outside tests is over 600 lines unless `LONG_FILES` says why; wire
//! message types (`cutover_proto::v1`) appear only in `proto` and the
//! edges ARCHITECTURE.md lists; only `proto` depends on prost; crates
//! depend only downward and forbid `unsafe`; `core` has no wire format or
//! runtime and its `error.rs` imports nothing of it; the install lifecycle
//! sees only its traits; the agent writes in place only where
//! `WRITES_IN_PLACE` says why. Each failure names the file and the fix.

use std::path::{Path, PathBuf};

/// The most lines a source file outside tests may have without a reason.
const MAX_LINES: usize = 600;

/// Source files allowed past [`MAX_LINES`] today, each with the reason.
/// An entry is refused once its file is back under the limit, so the list
/// only ever shrinks.
const LONG_FILES: &[(&str, &str)] = &[
    (
        "core/src/fleet.rs",
        "the fleet config's serde types with their defaults, checks, container settings, \
         parse and `${var}` substitution in one file; not split yet: the check and \
         container types can move to fleet/ beside bounds.rs and apply.rs",
    ),
    (
        "controller/src/api/agent.rs",
        "the Agent service impl: enrollment and the whole session loop (fetch is already \
         in fetch.rs), with its unit tests inline; the session loop can move out with \
         issue 16's work on the controller's edge",
    ),
];

/// The agent's source files that write files in place rather than through
/// `fsutil::write_atomic`, each with the reason that is safe. An entry is
/// refused once its file no longer writes in place.
const WRITES_IN_PLACE: &[(&str, &str)] = &[
    (
        "agent/src/data_migrate/command.rs",
        "a run's stdout and stderr files: the run writes them as it goes; the follow file that matters is written with write_atomic",
    ),
    (
        "agent/src/lock.rs",
        "agent.lock: its pid is written in place while the file is locked",
    ),
    (
        "agent/src/install/fetch.rs",
        "the download's .part file, resumed by offset and hashed whole before anything uses it",
    ),
    (
        "agent/src/install/extract.rs",
        "a release's files, unpacked into a staging directory nothing runs from and synced before its rename",
    ),
    (
        "agent/src/services/runner/process.rs",
        "a service's own log, appended and rotated, not state the agent reads back",
    ),
];

/// The files of the install lifecycle, which see only `Backend` and
/// `Prober`, and what in them would reach past those traits.
const LIFECYCLE: &[&str] = &[
    "agent/src/install/lifecycle.rs",
    "agent/src/install/recovery.rs",
    "agent/src/install/checks.rs",
    "agent/src/install/probing.rs",
    "agent/src/install/stage.rs",
];
const PAST_THE_TRAITS: &[&str] = &[
    "docker",
    "Docker",
    "bollard",
    "runner",
    "Runner",
    "fetch::",
    "pipeline",
    "process::",
    "Command::new",
];

/// Which crates of ours each member may depend on; `None`: any.
const LAYERS: &[(&str, Option<&[&str]>)] = &[
    ("core", Some(&[])),
    ("proto", Some(&["cutover-core"])),
    ("runtime", Some(&[])),
    (
        "controller",
        Some(&["cutover-core", "cutover-proto", "cutover-runtime"]),
    ),
    (
        "agent",
        Some(&["cutover-core", "cutover-proto", "cutover-runtime"]),
    ),
    (
        "cli",
        Some(&["cutover-core", "cutover-proto", "cutover-runtime"]),
    ),
    ("sample", Some(&[])),
    ("sim", None),
    ("tests", None),
];

/// One source file of the workspace.
struct Source {
    /// Relative to the workspace root, with `/` separators.
    path: String,
    /// The member crate's directory (`core`, `controller`, …).
    member: String,
    text: String,
    /// A test module (`tests.rs`, `proptests.rs`, or under a `tests/`
    /// directory in `src/`).
    test: bool,
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate sits in the workspace root")
        .to_path_buf()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The workspace members, from the root `Cargo.toml`'s `members = [...]`.
fn members() -> Vec<String> {
    let manifest = read(&root().join("Cargo.toml"));
    let start = manifest
        .find("members")
        .and_then(|i| manifest[i..].find('[').map(|j| i + j + 1))
        .expect("Cargo.toml: no `members = [...]` in [workspace]");
    let end = start
        + manifest[start..]
            .find(']')
            .expect("Cargo.toml: `members` list not closed");
    let members: Vec<String> = manifest[start..end]
        .split(',')
        .map(|m| m.trim().trim_matches('"').to_string())
        .filter(|m| !m.is_empty())
        .collect();
    assert!(
        members.len() >= 3,
        "Cargo.toml: read only {members:?} as workspace members; fix members() in tests/tests/tidy.rs"
    );
    members
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for entry in entries {
        let path = entry
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .path();
        if path.is_dir() {
            walk(&path, out);
        } else if path.extension().is_some_and(|x| x == "rs") {
            out.push(path);
        }
    }
}

/// Every `.rs` file under each member's `src/`.
fn sources() -> Vec<Source> {
    let root = root();
    let mut sources = Vec::new();
    for member in members() {
        let src = root.join(&member).join("src");
        let mut files = Vec::new();
        walk(&src, &mut files);
        for file in files {
            let in_src = file
                .strip_prefix(&src)
                .expect("walked under src")
                .to_string_lossy()
                .replace('\\', "/");
            let test = in_src == "tests.rs"
                || in_src.ends_with("/tests.rs")
                || in_src.ends_with("proptests.rs")
                || in_src.starts_with("tests/")
                || in_src.contains("/tests/");
            sources.push(Source {
                path: format!("{member}/src/{in_src}"),
                member: member.clone(),
                text: read(&file),
                test,
            });
        }
    }
    sources.sort_by(|a, b| a.path.cmp(&b.path));
    assert!(
        sources.len() > 50,
        "found only {} source files under the members' src/; fix sources() in tests/tests/tidy.rs",
        sources.len()
    );
    sources
}

/// Panics with every problem, one line each, when there are any.
fn report(rule: &str, problems: Vec<String>) {
    assert!(problems.is_empty(), "{rule}:\n  {}", problems.join("\n  "));
}

#[test]
fn every_module_opens_with_a_doc_line() {
    let problems = sources()
        .iter()
        .filter(|s| !s.text.starts_with("//!"))
        .map(|s| {
            format!(
                "{}: its first line is not a `//!` comment; add one saying what the module is for",
                s.path
            )
        })
        .collect();
    report("every module opens with a `//!` line", problems);
}

#[test]
fn no_source_file_outside_tests_is_over_600_lines_without_a_reason() {
    let sources = sources();
    let mut problems = Vec::new();
    for s in sources.iter().filter(|s| !s.test) {
        let lines = s.text.lines().count();
        if lines > MAX_LINES && !LONG_FILES.iter().any(|(p, _)| *p == s.path) {
            problems.push(format!(
                "{}: {lines} lines, over the {MAX_LINES} a source file may have; split it by what it holds, or add it to LONG_FILES in tests/tests/tidy.rs with the reason it stays long",
                s.path
            ));
        }
    }
    for (path, reason) in LONG_FILES {
        assert!(
            !reason.trim().is_empty(),
            "LONG_FILES: {path} needs a reason"
        );
        match sources.iter().find(|s| s.path == *path) {
            None => problems.push(format!(
                "{path}: in LONG_FILES in tests/tests/tidy.rs but no such source file; remove it from the list"
            )),
            Some(s) if s.text.lines().count() <= MAX_LINES => problems.push(format!(
                "{path}: in LONG_FILES in tests/tests/tidy.rs but {} lines now, within the {MAX_LINES}; remove it from the list",
                s.text.lines().count()
            )),
            Some(_) => {}
        }
    }
    report(
        "no source file outside tests is over 600 lines without a reason",
        problems,
    );
}

/// Whether `text` names the generated wire types: `v1::…`, a
/// `cutover_proto::v1` path, or `v1` in a `use cutover_proto::{…}` group.
fn names_wire_types(text: &str) -> bool {
    if text.contains("v1::") || text.contains("cutover_proto::v1") {
        return true;
    }
    text.match_indices("cutover_proto::{").any(|(i, m)| {
        let group = &text[i + m.len()..];
        let group = &group[..group.find('}').unwrap_or(group.len())];
        group.split(',').any(|item| item.trim() == "v1")
    })
}

/// The edges ARCHITECTURE.md's invariant names: the backquoted paths
/// between "handled only at the edges:" and the end of that sentence.
fn edges() -> Vec<String> {
    let doc = read(&root().join("ARCHITECTURE.md"));
    let doc = doc.split_whitespace().collect::<Vec<_>>().join(" ");
    let lead = "Wire structs are handled only at the edges:";
    let start = doc.find(lead).unwrap_or_else(|| {
        panic!("ARCHITECTURE.md: no invariant line \"{lead} …\"; restore it or fix edges() in tests/tests/tidy.rs")
    }) + lead.len();
    let end = start + doc[start..].find(". ").unwrap_or(doc.len() - start);
    let edges: Vec<String> = doc[start..end]
        .split('`')
        .skip(1)
        .step_by(2)
        .filter(|p| p.contains('/'))
        .map(String::from)
        .collect();
    assert!(
        !edges.is_empty(),
        "ARCHITECTURE.md: the invariant \"{lead} …\" names no backquoted paths; list the edge files there"
    );
    edges
}

#[test]
fn wire_types_appear_only_in_proto_and_the_edges_architecture_md_lists() {
    let edges = edges();
    let at_edge = |path: &str| {
        edges
            .iter()
            .any(|e| path == e || (e.ends_with('/') && path.starts_with(e.as_str())))
    };
    // proto defines them; the tests crate and test modules speak the wire
    // on purpose.
    let checked = sources()
        .into_iter()
        .filter(|s| s.member != "proto" && s.member != "tests" && !s.test);
    let mut problems = Vec::new();
    for s in checked {
        if names_wire_types(&s.text) && !at_edge(&s.path) {
            problems.push(format!(
                "{}: names wire types (`cutover_proto::v1`) but is not an edge ARCHITECTURE.md lists ({}); take and give domain types (the TryFrom/From impls in proto/src/convert.rs) and leave the wire to an edge, or if it is a new edge, list it in the invariant in ARCHITECTURE.md's `proto/` section",
                s.path,
                edges.join(", ")
            ));
        }
    }
    report("wire types appear only in proto and at the edges", problems);
}

#[test]
fn only_proto_depends_on_prost() {
    let mut problems = Vec::new();
    for member in members().into_iter().filter(|m| m != "proto") {
        let path = format!("{member}/Cargo.toml");
        let manifest = read(&root().join(&path));
        for line in manifest.lines().map(str::trim) {
            let key = line.split(['=', ' ', '.']).next().unwrap_or("");
            if key == "prost" || key.starts_with("tonic-prost") || key.starts_with("prost-") {
                problems.push(format!(
                    "{path}: depends on {key}; only cutover-proto knows prost (ARCHITECTURE.md): use the domain types proto converts to"
                ));
            }
        }
    }
    for s in sources().iter().filter(|s| s.member != "proto") {
        if s.text.contains("prost::") {
            problems.push(format!(
                "{}: names `prost::`; only cutover-proto knows prost (ARCHITECTURE.md): decode and encode through proto",
                s.path
            ));
        }
    }
    report("only proto depends on prost", problems);
}

#[test]
fn wire_type_detection_sees_each_way_of_naming_them() {
    assert!(names_wire_types("use cutover_proto::v1;"));
    assert!(names_wire_types("let m = v1::Empty {};"));
    assert!(names_wire_types("use cutover_proto::{v1, AgentClient};"));
    assert!(names_wire_types(
        "use cutover_proto::{\n    AgentClient,\n    v1,\n};"
    ));
    assert!(!names_wire_types(
        "use cutover_proto::{AgentClient, Operator};"
    ));
    assert!(!names_wire_types("use cutover_core::views::HostView;"));
}

/// A source file's code: without its inline test module (what follows
/// `#[cfg(test)]` and `mod tests`) and without comments (a line is cut
/// at its first `//`, a string's included: what is left is still code).
fn code(text: &str) -> String {
    let end = text.find("#[cfg(test)]\nmod tests {").unwrap_or(text.len());
    text[..end]
        .lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The dependency names in a `Cargo.toml`'s `[dependencies]`,
/// `[dev-dependencies]` and `[build-dependencies]` tables.
fn dependencies(manifest: &str) -> Vec<String> {
    let mut in_deps = false;
    let mut names = Vec::new();
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            in_deps = line.ends_with("dependencies]");
        } else if in_deps && !line.is_empty() && !line.starts_with('#') {
            let name = line.split(['=', ' ', '.']).next().unwrap_or("");
            names.push(name.to_string());
        }
    }
    names
}

fn manifest(member: &str) -> String {
    read(&root().join(member).join("Cargo.toml"))
}

#[test]
fn crates_depend_only_downward() {
    let mut problems = Vec::new();
    for member in members() {
        let Some((_, allowed)) = LAYERS.iter().find(|(m, _)| *m == member) else {
            problems.push(format!(
                "{member}: a member LAYERS in tests/tests/tidy.rs does not place; add it with the crates of ours it may use, and say so in ARCHITECTURE.md's workspace invariants"
            ));
            continue;
        };
        let Some(allowed) = allowed else { continue };
        for dep in dependencies(&manifest(&member)) {
            if dep.starts_with("cutover-") && !allowed.contains(&dep.as_str()) {
                problems.push(format!(
                    "{member}/Cargo.toml: depends on {dep}, which is not below it ({member} may use {allowed:?}); move what it needs down into a crate it may use"
                ));
            }
        }
    }
    report("crates depend only downward", problems);
}

#[test]
fn every_crate_forbids_unsafe_code() {
    let root_manifest = read(&root().join("Cargo.toml"));
    let lints = root_manifest
        .split("[workspace.lints.rust]")
        .nth(1)
        .map(|rest| rest.split("\n[").next().unwrap_or(""));
    assert!(
        lints.is_some_and(|l| l
            .lines()
            .any(|l| l.replace(' ', "") == "unsafe_code=\"forbid\"")),
        "Cargo.toml: [workspace.lints.rust] must say unsafe_code = \"forbid\""
    );
    let problems = members()
        .into_iter()
        .filter(|m| {
            let manifest = manifest(m);
            let lints = manifest.split("[lints]").nth(1).unwrap_or("");
            lints.split("\n[").next().unwrap_or("").lines().all(|l| l.replace(' ', "") != "workspace=true")
        })
        .map(|m| format!("{m}/Cargo.toml: no `[lints] workspace = true`; add it so the workspace's forbid(unsafe_code) applies"))
        .collect();
    report("every crate forbids unsafe code", problems);
}

#[test]
fn core_has_no_wire_format_and_no_async_runtime() {
    let problems = dependencies(&manifest("core"))
        .into_iter()
        .filter(|d| ["tokio", "tonic", "prost", "cutover-proto"].iter().any(|x| d == x || d.starts_with(&format!("{x}-"))))
        .map(|d| format!("core/Cargo.toml: depends on {d}; core holds domain types only: put what needs it in proto or the crate that uses it"))
        .collect();
    report("core has no wire format and no async runtime", problems);
}

#[test]
fn cores_error_module_imports_nothing_of_the_crate() {
    let text = read(&root().join("core/src/error.rs"));
    let problems = code(&text)
        .lines()
        .filter(|l| l.contains("crate::") || l.contains("super::"))
        .map(|l| format!("core/src/error.rs: `{}`; error.rs is the bottom of core's import graph: move the type it needs into error.rs or take it as a String", l.trim()))
        .collect();
    report("core's error.rs imports nothing of the crate", problems);
}

#[test]
fn the_install_lifecycle_sees_only_backend_and_prober() {
    let mut problems = Vec::new();
    for path in LIFECYCLE {
        let text = read(&root().join(path));
        for (n, line) in code(&text).lines().enumerate() {
            if let Some(word) = PAST_THE_TRAITS.iter().find(|w| line.contains(*w)) {
                problems.push(format!(
                    "{path}: code line {} names `{word}`; the lifecycle reaches services only through the Backend and Prober traits: add what it needs to Backend (install/backend/) and implement it in both backends",
                    n + 1
                ));
            }
        }
    }
    report(
        "the install lifecycle sees only Backend and Prober",
        problems,
    );
}

/// Whether `code` writes a file other than by `write_atomic`.
fn writes_in_place(code: &str) -> bool {
    ["fs::write(", "File::create(", "OpenOptions::new()"]
        .iter()
        .any(|w| code.contains(w))
}

#[test]
fn the_agent_writes_durable_files_only_through_write_atomic() {
    let mut problems = Vec::new();
    let agent: Vec<Source> = sources()
        .into_iter()
        .filter(|s| s.member == "agent" && !s.test)
        .collect();
    for s in &agent {
        let listed = WRITES_IN_PLACE.iter().any(|(p, _)| *p == s.path);
        if writes_in_place(&code(&s.text)) && !listed {
            problems.push(format!(
                "{}: writes a file in place; write durable state with cutover_core::fsutil::write_atomic (a torn file after a power cut is lost state), or add it to WRITES_IN_PLACE in tests/tests/tidy.rs with the reason it is safe",
                s.path
            ));
        }
    }
    for (path, reason) in WRITES_IN_PLACE {
        assert!(
            !reason.trim().is_empty(),
            "WRITES_IN_PLACE: {path} needs a reason"
        );
        match agent.iter().find(|s| s.path == *path) {
            None => problems.push(format!(
                "{path}: in WRITES_IN_PLACE in tests/tests/tidy.rs but no such agent source file; remove it from the list"
            )),
            Some(s) if !writes_in_place(&code(&s.text)) => problems.push(format!(
                "{path}: in WRITES_IN_PLACE in tests/tests/tidy.rs but writes nothing in place now; remove it from the list"
            )),
            Some(_) => {}
        }
    }
    report(
        "the agent writes durable files only through write_atomic",
        problems,
    );
}

#[test]
fn the_shape_checks_see_what_they_look_for() {
    let text = "//! m\nuse x; // fs::write(\nfn a() {}\n#[cfg(test)]\nmod tests {\n    fn t() { std::fs::write(p, b) }\n}\n";
    assert!(
        !writes_in_place(&code(text)),
        "comments and inline tests are not code"
    );
    assert!(writes_in_place(
        "let f = std::fs::OpenOptions::new().append(true);"
    ));
    assert_eq!(
        dependencies("[package]\nname = \"x\"\n[dependencies]\ncutover-core = { workspace = true }\n# c\nserde.workspace = true\n[dev-dependencies]\ntempfile = \"3\"\n[lints]\nworkspace = true\n"),
        ["cutover-core", "serde", "tempfile"]
    );
}
