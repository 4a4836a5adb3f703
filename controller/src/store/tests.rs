//! The store against a real SQLite file.

use cutover_core::views::now_ms;
use rusqlite::params;

use super::*;

fn store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(&dir.path().join("state.db")).unwrap();
    (dir, s)
}

fn issue(host: &str) -> Result<((), String, i64)> {
    Ok(((), format!("serial-{host}"), now_ms() + 1000))
}

#[test]
fn token_is_used_once() {
    let (_d, s) = store();
    s.create_token("h1", "edge-1", now_ms() + 60_000).unwrap();
    let (host, ()) = s.enroll("h1", issue).unwrap().unwrap();
    assert_eq!(host, "edge-1");
    match s.enroll("h1", issue).unwrap() {
        Err(TokenProblem::Used { host, .. }) => assert_eq!(host, "edge-1"),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        s.enroll("nope", issue).unwrap().unwrap_err(),
        TokenProblem::Unknown
    );
    assert_eq!(s.hosts().unwrap()[0].cert_serial, "serial-edge-1");
}

#[test]
fn expired_token_and_revoked_host_are_refused() {
    let (_d, s) = store();
    s.create_token("old", "edge-1", now_ms() - 1).unwrap();
    assert!(matches!(
        s.enroll("old", issue).unwrap(),
        Err(TokenProblem::Expired { .. })
    ));
    s.create_token("t", "edge-2", now_ms() + 60_000).unwrap();
    s.create_token("t2", "edge-2", now_ms() + 60_000).unwrap();
    s.enroll("t", issue).unwrap().unwrap();
    assert!(s.revoke_host("edge-2").unwrap());
    assert!(!s.revoke_host("edge-2").unwrap());
    // The outstanding token died with the revocation; new ones are refused.
    assert_eq!(
        s.enroll("t2", issue).unwrap().unwrap_err(),
        TokenProblem::Unknown
    );
    assert!(s.create_token("t3", "edge-2", now_ms() + 60_000).is_err());
    assert_eq!(s.revoked_hosts().unwrap(), vec!["edge-2"]);
}

#[test]
fn state_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    {
        let s = Store::open(&path).unwrap();
        s.create_token("h", "edge-1", now_ms() + 60_000).unwrap();
        s.enroll("h", issue).unwrap().unwrap();
        s.insert_release(
            &StoredRelease {
                version: "1.0.0".into(),
                manifest: b"m".to_vec(),
                signatures: String::new(),
                signed_by: vec!["k".into()],
                imported_at: now_ms(),
            },
            &[("ab".into(), 3)],
        )
        .unwrap();
        s.set_channel("stable", "1.0.0").unwrap();
        s.set_default_channel("stable").unwrap();
    }
    let s = Store::open(&path).unwrap();
    assert_eq!(s.hosts().unwrap().len(), 1);
    assert_eq!(s.releases().unwrap()[0].signed_by, vec!["k"]);
    assert!(s.channels().unwrap()[0].is_default);
    assert_eq!(s.artifact_sizes(&["ab".into()]).unwrap()["ab"], 3);
    assert!(s.set_channel("rc", "9.9.9").is_err());
}

#[test]
fn a_renewal_records_the_serial_it_replaced_and_an_enrollment_clears_it() {
    let (_d, s) = store();
    assert_eq!(s.cert_serials("edge-1").unwrap(), None);
    s.create_token("t1", "edge-1", now_ms() + 60_000).unwrap();
    s.enroll("t1", issue).unwrap().unwrap();
    let first = s.cert_serials("edge-1").unwrap().unwrap();
    assert_eq!(
        (first.current.as_str(), first.previous),
        ("serial-edge-1", None)
    );
    s.record_renewal("edge-1", "bb", 42).unwrap();
    let renewed = s.cert_serials("edge-1").unwrap().unwrap();
    assert_eq!((renewed.current.as_str(), renewed.not_after), ("bb", 42));
    assert_eq!(renewed.previous.as_deref(), Some("serial-edge-1"));
    s.record_renewal("edge-1", "cc", 43).unwrap();
    assert_eq!(
        s.cert_serials("edge-1")
            .unwrap()
            .unwrap()
            .previous
            .as_deref(),
        Some("bb")
    );
    s.create_token("t2", "edge-1", now_ms() + 60_000).unwrap();
    s.enroll("t2", issue).unwrap().unwrap();
    assert_eq!(s.cert_serials("edge-1").unwrap().unwrap().previous, None);
    assert_eq!(s.all_cert_serials().unwrap().len(), 1);
}

#[test]
fn the_schema_upgrade_takes_the_replaced_serial_from_the_event_log() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    {
        // A store as the previous schema left it: edge-1 renewed once,
        // edge-2 renewed and then enrolled again.
        let mut c = Connection::open(&path).unwrap();
        for (i, sql) in MIGRATIONS.iter().take(3).enumerate() {
            c.execute_batch(sql).unwrap();
            c.pragma_update(None, "user_version", i + 1).unwrap();
        }
        let tx = c.transaction().unwrap();
        for (host, serial) in [("edge-1", "b1"), ("edge-2", "c2")] {
            tx.execute(
                "INSERT INTO hosts (name, enrolled_at, cert_serial, cert_not_after) VALUES (?1, 0, ?2, 0)",
                params![host, serial],
            )
            .unwrap();
        }
        for (kind, host, serial) in [
            ("host.enrolled", "edge-1", "a1"),
            ("host.enrolled", "edge-2", "a2"),
            ("host.renewed", "edge-2", "b2"),
            ("host.renewed", "edge-1", "b1"),
            ("host.enrolled", "edge-2", "c2"),
        ] {
            insert_event(&tx, kind, Some(host), &format!("certificate {serial}")).unwrap();
        }
        tx.commit().unwrap();
    }
    let s = Store::open(&path).unwrap();
    let previous = |h: &str| s.cert_serials(h).unwrap().unwrap().previous;
    assert_eq!(previous("edge-1").as_deref(), Some("a1"));
    assert_eq!(previous("edge-2"), None);
}

#[test]
fn a_hello_reporting_a_broken_journal_records_an_event_naming_the_service() {
    use cutover_core::views::{InstalledService, STATE_JOURNAL_UNREADABLE};
    let (_d, s) = store();
    s.create_token("t", "edge-1", now_ms() + 60_000).unwrap();
    s.enroll("t", issue).unwrap().unwrap();
    let service = |name: &str, state: &str| InstalledService {
        name: name.into(),
        current: None,
        previous: None,
        state: state.into(),
        health: Default::default(),
    };
    assert!(s
        .record_hello("edge-1", "1.0", &[service("api", "running")])
        .unwrap());
    let broken = |s: &Store| {
        s.events(None, 100)
            .unwrap()
            .into_iter()
            .filter(|e| e.kind == "host.journal_broken")
            .collect::<Vec<_>>()
    };
    assert!(broken(&s).is_empty(), "a healthy inventory records nothing");
    s.record_hello(
        "edge-1",
        "1.0",
        &[
            service("api", "running"),
            service("web", STATE_JOURNAL_UNREADABLE),
        ],
    )
    .unwrap();
    let events = broken(&s);
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].host.as_deref(), Some("edge-1"));
    assert!(
        events[0].detail.contains("web (journal unreadable)"),
        "{:?}",
        events[0]
    );
    assert!(!events[0].detail.contains("api"), "{:?}", events[0]);
}

fn kinds(s: &Store) -> Vec<String> {
    s.events(None, 1000)
        .unwrap()
        .into_iter()
        .map(|e| e.kind)
        .collect()
}

#[test]
fn a_host_with_a_valid_certificate_is_replaced_only_by_a_token_made_with_replace() {
    let (_d, s) = store();
    // A token made before the host enrolled, without --replace.
    s.create_token("early", "edge-1", now_ms() + 60_000)
        .unwrap();
    s.create_token("t1", "edge-1", now_ms() + 60_000).unwrap();
    s.enroll("t1", issue).unwrap().unwrap();
    let e = s
        .create_token("t2", "edge-1", now_ms() + 60_000)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("already enrolled") && e.contains("--replace") && !e.contains('\n'),
        "{e}"
    );
    match s.enroll("early", issue).unwrap() {
        Err(TokenProblem::HostEnrolled { host, until }) => {
            assert_eq!(host, "edge-1");
            assert!(until > now_ms());
        }
        other => panic!("{other:?}"),
    }
    s.create_token_with("t3", "edge-1", now_ms() + 60_000, true)
        .unwrap();
    let replacing = |_: &str| Ok(((), "serial-new".to_string(), now_ms() + 1000));
    s.enroll("t3", replacing).unwrap().unwrap();
    let serials = s.cert_serials("edge-1").unwrap().unwrap();
    assert_eq!(
        (serials.current.as_str(), serials.previous),
        ("serial-new", None)
    );
    let replaced = s
        .events(None, 1000)
        .unwrap()
        .into_iter()
        .find(|e| e.kind == "host.replaced")
        .expect("host.replaced event");
    assert!(
        replaced.detail.contains("serial-edge-1 revoked"),
        "{}",
        replaced.detail
    );
    // A host whose certificate expired enrolls again without --replace.
    s.record_renewal("edge-1", "gone", now_ms() - 1).unwrap();
    s.create_token("t4", "edge-1", now_ms() + 60_000).unwrap();
    s.enroll("t4", issue).unwrap().unwrap();
}

#[test]
fn only_a_revoked_host_is_forgotten_and_its_events_stay() {
    let (_d, s) = store();
    assert!(matches!(s.forget_host("edge-1"), Err(Error::NotFound(_))));
    s.create_token("t1", "edge-1", now_ms() + 60_000).unwrap();
    s.enroll("t1", issue).unwrap().unwrap();
    let e = s.forget_host("edge-1").unwrap_err().to_string();
    assert!(
        e.contains("not revoked") && e.contains("host revoke"),
        "{e}"
    );
    assert!(s.revoke_host("edge-1").unwrap());
    let e = s
        .create_token("t2", "edge-1", now_ms() + 60_000)
        .unwrap_err();
    assert!(e.to_string().contains("host forget edge-1"), "{e}");
    s.forget_host("edge-1").unwrap();
    assert!(s.hosts().unwrap().is_empty());
    assert!(s.revoked_hosts().unwrap().is_empty());
    let k = kinds(&s);
    for kind in ["host.enrolled", "host.revoked", "host.forgotten"] {
        assert!(k.contains(&kind.to_string()), "{kind}: {k:?}");
    }
    // The name enrolls afresh, with a plain token.
    s.create_token("t3", "edge-1", now_ms() + 60_000).unwrap();
    s.enroll("t3", issue).unwrap().unwrap();
    assert!(!s.hosts().unwrap()[0].revoked);
}
