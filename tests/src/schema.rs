//! The JSON Schemas of `docs/json/` (the `-o json` contract), loaded from
//! the repository and applied to what the real CLI printed, plus the
//! contract's rules that a schema cannot say once for every document:
//! instants are RFC 3339 strings, identifiers are strings, durations name
//! their unit.

use std::path::PathBuf;

use serde_json::Value;

/// Where the schemas are kept.
pub fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/json")
}

/// Every schema file, by its name without `.schema.json`.
pub fn all() -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir()).expect("docs/json") {
        let path = entry.expect("entry").path();
        let Some(name) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".schema.json"))
        else {
            continue;
        };
        let text = std::fs::read_to_string(&path).expect("schema file");
        let value: Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{}: not JSON: {e}", path.display()));
        out.push((name.to_string(), value));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// The problems of `value` as the document `name` (`rollouts`, `plan`,
/// ...): schema errors with where they are, then broken contract rules.
pub fn problems(name: &str, value: &Value) -> Vec<String> {
    let schemas = all();
    let registry = jsonschema::Registry::new()
        .extend(schemas.iter().map(|(_, v)| {
            let id = v["$id"].as_str().expect("every schema has an $id");
            (
                id.to_string(),
                jsonschema::Resource::from_contents(v.clone()),
            )
        }))
        .and_then(|b| b.prepare())
        .expect("the schemas form a registry");
    let (_, schema) = schemas
        .iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("no schema docs/json/{name}.schema.json"));
    let validator = jsonschema::options()
        .with_registry(&registry)
        .build(schema)
        .unwrap_or_else(|e| panic!("docs/json/{name}.schema.json is not a valid schema: {e}"));
    let mut out: Vec<String> = validator
        .iter_errors(value)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    rules("", value, &mut out);
    out
}

/// Durations in ms that the contract names; any other `*_ms` key would be
/// an instant left as a number.
const DURATIONS_MS: [&str; 3] = ["elapsed_ms", "rtt_ms", "clock_offset_ms"];

fn rules(at: &str, value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                let here = format!("{at}/{k}");
                if k.ends_with("_ms") && !DURATIONS_MS.contains(&k.as_str()) {
                    out.push(format!(
                        "{here}: an instant in ms; instants are RFC 3339 strings (`*_at`)"
                    ));
                }
                let instant = k.ends_with("_at") || k == "at" || k.ends_with("since");
                if instant && !v.is_null() {
                    let ok = v.as_str().is_some_and(|s| {
                        time::OffsetDateTime::parse(
                            s,
                            &time::format_description::well_known::Rfc3339,
                        )
                        .is_ok_and(|t| t.offset().is_utc())
                    });
                    if !ok {
                        out.push(format!("{here}: {v} is not an RFC 3339 UTC instant"));
                    }
                }
                let looks_like_an_instant = v.as_str().is_some_and(|s| {
                    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
                        .is_ok()
                });
                if looks_like_an_instant && !instant {
                    out.push(format!(
                        "{here}: an instant under a name that does not say so (`*_at`, `at`, `*since`)"
                    ));
                }
                if ["id", "session", "rollout"].contains(&k.as_str()) && v.is_number() {
                    out.push(format!(
                        "{here}: {v} is an identifier as a number; ids are strings"
                    ));
                }
                rules(&here, v, out);
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                rules(&format!("{at}/{i}"), v, out);
            }
        }
        _ => {}
    }
}

/// Panics unless `value` is a valid `name` document.
pub fn check(name: &str, value: &Value) {
    let problems = problems(name, value);
    assert!(
        problems.is_empty(),
        "output breaks docs/json/{name}.schema.json:\n  {}\n{}",
        problems.join("\n  "),
        serde_json::to_string_pretty(value).unwrap_or_default()
    );
}
