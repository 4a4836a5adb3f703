//! A batch in JSON: `[{"from": {…}, "hosts": ["h1", "h2"]}, …]`, each run
//! naming its `from` once (absent: the host runs nothing of the service
//! yet), and its `to` when the hosts of a manual rollback each go back to
//! their own release (absent: the service plan's target). At 10,000 hosts × 50 services this is half the bytes of an object
//! per host, and every parse is on the path of `cutover plan`. Plans stored
//! by earlier controllers, one `{"host", "from"}` object per host, read back
//! the same.

use std::sync::Arc;

use serde::de::{Deserializer, SeqAccess, Visitor};
use serde::ser::{SerializeMap, SerializeSeq, Serializer};
use serde::{Deserialize, Serialize};

use super::{HostMove, HostTarget};
use crate::views::ContentIdentity;

pub fn serialize<S: Serializer>(batches: &[Vec<HostMove>], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(batches.iter().map(|b| Runs(b)))
}

struct Runs<'a>(&'a [HostMove]);

impl Serialize for Runs<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(None)?;
        for run in self.0.chunk_by(|a, b| a.from == b.from && a.to == b.to) {
            seq.serialize_element(&Run(run))?;
        }
        seq.end()
    }
}

/// Moves that share one `from` and one `to`.
struct Run<'a>(&'a [HostMove]);

impl Serialize for Run<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(None)?;
        if let Some(from) = &self.0[0].from {
            map.serialize_entry("from", from)?;
        }
        if let Some(to) = &self.0[0].to {
            map.serialize_entry("to", to)?;
        }
        map.serialize_entry("hosts", &Hosts(self.0))?;
        map.end()
    }
}

struct Hosts<'a>(&'a [HostMove]);

impl Serialize for Hosts<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(|m| &m.host))
    }
}

pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Vec<HostMove>>, D::Error> {
    Vec::<Batch>::deserialize(d).map(|b| b.into_iter().map(|b| b.0).collect())
}

struct Batch(Vec<HostMove>);

/// A run, or one host as earlier controllers wrote it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    #[serde(default)]
    from: Option<ContentIdentity>,
    #[serde(default)]
    to: Option<HostTarget>,
    #[serde(default)]
    hosts: Option<Vec<String>>,
    #[serde(default)]
    host: Option<String>,
}

impl<'de> Deserialize<'de> for Batch {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_seq(BatchVisitor)
    }
}

struct BatchVisitor;

impl<'de> Visitor<'de> for BatchVisitor {
    type Value = Batch;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a batch: a list of {\"from\", \"hosts\"} runs")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Batch, A::Error> {
        use serde::de::Error;
        let mut moves = Vec::new();
        while let Some(e) = seq.next_element::<Entry>()? {
            let from = e.from.map(Arc::new);
            let to = e.to.map(Arc::new);
            match (e.hosts, e.host) {
                (Some(hosts), None) => moves.extend(hosts.into_iter().map(|host| HostMove {
                    host,
                    from: from.clone(),
                    to: to.clone(),
                })),
                (None, Some(host)) => moves.push(HostMove { host, from, to }),
                _ => {
                    return Err(A::Error::custom(
                        "a batch entry needs either \"hosts\" (a list) or \"host\", not both",
                    ))
                }
            }
        }
        Ok(Batch(moves))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Doc {
        #[serde(with = "super")]
        batches: Vec<Vec<HostMove>>,
    }

    fn id(release: &str) -> Option<Arc<ContentIdentity>> {
        Some(Arc::new(ContentIdentity {
            release: release.into(),
            service_version: "1".into(),
            ..ContentIdentity::default()
        }))
    }

    fn mv(host: &str, from: &Option<Arc<ContentIdentity>>) -> HostMove {
        HostMove {
            host: host.into(),
            from: from.clone(),
            to: None,
        }
    }

    #[test]
    fn a_batch_is_written_as_runs_of_hosts_that_share_their_from_and_read_back_the_same() {
        let (old, older) = (id("1.0.0"), id("0.9.0"));
        let doc = Doc {
            batches: vec![
                vec![mv("a", &old)],
                vec![
                    mv("b", &old),
                    mv("c", &old),
                    mv("d", &None),
                    mv("e", &older),
                    mv("f", &old),
                ],
            ],
        };
        let json = serde_json::to_value(&doc).unwrap();
        let from = |r: &str| serde_json::json!({"release": r, "service_version": "1"});
        assert_eq!(
            json,
            serde_json::json!({"batches": [
                [{"from": from("1.0.0"), "hosts": ["a"]}],
                [
                    {"from": from("1.0.0"), "hosts": ["b", "c"]},
                    {"hosts": ["d"]},
                    {"from": from("0.9.0"), "hosts": ["e"]},
                    {"from": from("1.0.0"), "hosts": ["f"]},
                ],
            ]})
        );
        assert_eq!(serde_json::from_value::<Doc>(json).unwrap(), doc);
    }

    #[test]
    fn a_plan_stored_with_one_object_per_host_reads_back_the_same() {
        let old = id("1.0.0");
        let stored = r#"{"batches": [[{"host": "a", "from": {"release": "1.0.0", "service_version": "1"}}, {"host": "b"}], []]}"#;
        assert_eq!(
            serde_json::from_str::<Doc>(stored).unwrap(),
            Doc {
                batches: vec![vec![mv("a", &old), mv("b", &None)], vec![]]
            }
        );
    }

    #[test]
    fn hosts_going_back_to_their_own_releases_are_runs_of_one_from_and_one_to() {
        let (new, old, older) = (id("1.2.0"), id("1.1.0"), id("1.0.0"));
        let to = |identity: &Option<Arc<ContentIdentity>>| {
            let identity = (**identity.as_ref().unwrap()).clone();
            Some(Arc::new(HostTarget {
                sha256: crate::Sha256Digest::of(identity.release.as_bytes()),
                size: 7,
                image: None,
                identity,
            }))
        };
        let back = |host: &str, from: &Option<Arc<ContentIdentity>>, target| HostMove {
            to: target,
            ..mv(host, from)
        };
        let doc = Doc {
            batches: vec![vec![
                back("a", &new, to(&old)),
                back("b", &new, to(&old)),
                back("c", &old, to(&older)),
            ]],
        };
        let json = serde_json::to_value(&doc).unwrap();
        let runs = json["batches"][0].as_array().unwrap();
        assert_eq!(runs.len(), 2, "{json}");
        assert_eq!(runs[0]["hosts"], serde_json::json!(["a", "b"]));
        assert_eq!(runs[0]["to"]["identity"]["release"], "1.1.0");
        assert_eq!(runs[1]["to"]["identity"]["release"], "1.0.0");
        assert_eq!(serde_json::from_value::<Doc>(json).unwrap(), doc);
    }

    #[test]
    fn a_batch_entry_must_name_its_hosts_one_way() {
        for bad in [r#"[{"from": null}]"#, r#"[{"host": "a", "hosts": ["b"]}]"#] {
            let e = serde_json::from_str::<Doc>(&format!(r#"{{"batches": [{bad}]}}"#))
                .unwrap_err()
                .to_string();
            assert!(e.contains("either \"hosts\""), "{bad}: {e}");
        }
        let e = serde_json::from_str::<Doc>(r#"{"batches": [[{"hots": ["a"]}]]}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field `hots`"), "{e}");
    }
}
