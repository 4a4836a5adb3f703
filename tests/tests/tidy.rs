//! Tidy checks, as rust-analyzer keeps them: the invariants of the code's
//! shape that a test can check, over the workspace's own sources (the
//! members the root `Cargo.toml` names; `fuzz/` is a workspace of its own).
//! Every module opens with a `//!` line; no source file outside tests is
//! over 600 lines unless `LONG_FILES` says why; wire message types
//! (`cutover_proto::v1`) appear only in `proto` and the edges
//! ARCHITECTURE.md lists, unless `WIRE_OUTSIDE_EDGES` says why; only
//! `proto` depends on prost. Each failure names the file and the fix.

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

/// Files outside the edges that name wire types today, each with the
/// reason. An entry is refused once its file no longer names them.
const WIRE_OUTSIDE_EDGES: &[(&str, &str)] = &[(
    "sim/src/swarm.rs",
    "the simulator enrolls its hosts through the operator API like the CLI does; \
         issue 16: either route it through the CLI's client or list it as an edge",
)];

/// One source file of the workspace.
struct Source {
    /// Relative to the workspace root, with `/` separators.
    path: String,
    /// The member crate's directory (`core`, `controller`, …).
    member: String,
    text: String,
    /// A test module (`tests.rs`, or under a `tests/` directory in `src/`).
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
    let sources = sources();
    // proto defines them; the tests crate and test modules speak the wire
    // on purpose.
    let checked = || {
        sources
            .iter()
            .filter(|s| s.member != "proto" && s.member != "tests" && !s.test)
    };
    let mut problems = Vec::new();
    for s in checked() {
        let listed = WIRE_OUTSIDE_EDGES.iter().any(|(p, _)| *p == s.path);
        if names_wire_types(&s.text) && !at_edge(&s.path) && !listed {
            problems.push(format!(
                "{}: names wire types (`cutover_proto::v1`) but is not an edge ARCHITECTURE.md lists ({}); take and give domain types (the TryFrom/From impls in proto/src/convert.rs) and leave the wire to an edge, or if it is a new edge, list it in ARCHITECTURE.md's invariant",
                s.path,
                edges.join(", ")
            ));
        }
    }
    for (path, reason) in WIRE_OUTSIDE_EDGES {
        assert!(
            !reason.trim().is_empty(),
            "WIRE_OUTSIDE_EDGES: {path} needs a reason"
        );
        match checked().find(|s| s.path == *path) {
            None => problems.push(format!(
                "{path}: in WIRE_OUTSIDE_EDGES in tests/tests/tidy.rs but no such source file; remove it from the list"
            )),
            Some(s) if !names_wire_types(&s.text) => problems.push(format!(
                "{path}: in WIRE_OUTSIDE_EDGES in tests/tests/tidy.rs but names no wire types now; remove it from the list"
            )),
            Some(_) => {}
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
