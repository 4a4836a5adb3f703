//! The protocol's output read strictly, and the gate's verdicts.

use super::*;

#[test]
fn a_status_is_read_with_its_progress_and_bounded() {
    let s = parse_status(
        "backfill",
        br#"{"id":"backfill","state":"running","done":12,"total":100,"rate":5.5,"error":null,"pause_requested":true}"#,
    )
    .unwrap();
    assert_eq!(s.state, State::Running);
    assert_eq!((s.done, s.total, s.rate), (12, Some(100), Some(5.5)));
    assert!(s.pause_requested && !s.interrupted);
    assert_eq!(s.progress(), "12/100 rows (12.0%), 6 rows/s");
    let long = format!(
        r#"{{"id":"backfill","state":"failed","error":"{}"}}"#,
        "e".repeat(10_000)
    );
    let s = parse_status("backfill", long.as_bytes()).unwrap();
    assert!(s.error.unwrap().len() <= limits::DETAIL);
}

#[test]
fn output_off_the_protocol_is_refused_with_the_reason() {
    let cases: [(&[u8], &str); 8] = [
        (b"", "printed nothing"),
        (b"usage: sample --port PORT", "not one JSON object"),
        (b"[1,2]", "not an object"),
        (br#"{"id":"backfill"}"#, "no `state`"),
        (
            br#"{"id":"backfill","state":"done"}"#,
            "is not one of pending",
        ),
        (
            br#"{"id":"other","state":"running"}"#,
            "answered about \"other\"",
        ),
        (
            br#"{"id":"backfill","state":"running","done":-1}"#,
            "not a count",
        ),
        (b"\xff\xfe", "not UTF-8"),
    ];
    for (out, want) in cases {
        let e = parse_status("backfill", out).unwrap_err();
        assert!(e.contains(want), "{out:?}: {e}");
    }
    let huge = vec![b' '; MAX_OUTPUT_BYTES + 1];
    assert!(parse_status("backfill", &huge)
        .unwrap_err()
        .contains("more than"));
}

#[test]
fn a_verify_passes_only_with_checks_all_ok_and_succeeded() {
    let doc = |ok: bool, state: &str, checks: &str| {
        format!(r#"{{"id":"b","ok":{ok},"state":"{state}","checks":[{checks}]}}"#)
    };
    let good = r#"{"name":"rows","expected":"5","actual":"5","ok":true}"#;
    let bad = r#"{"name":"price total","expected":"10","actual":"11","ok":false}"#;
    assert!(
        parse_verify("b", doc(true, "succeeded", good).as_bytes())
            .unwrap()
            .ok
    );
    // The binary's word alone is not enough.
    let v = parse_verify(
        "b",
        doc(true, "succeeded", &format!("{good},{bad}")).as_bytes(),
    )
    .unwrap();
    assert!(!v.ok);
    assert_eq!(v.failures(), ["price total: expected 10, found 11"]);
    assert!(
        !parse_verify("b", doc(true, "succeeded", "").as_bytes())
            .unwrap()
            .ok
    );
    assert!(
        !parse_verify("b", doc(true, "running", good).as_bytes())
            .unwrap()
            .ok
    );
    assert!(
        !parse_verify("b", doc(false, "succeeded", good).as_bytes())
            .unwrap()
            .ok
    );
    assert!(
        parse_verify("b", br#"{"id":"b","state":"succeeded","checks":[]}"#)
            .unwrap_err()
            .contains("no `ok`")
    );
}

fn t(ms: i64) -> OffsetDateTime {
    crate::views::from_ms(ms).unwrap()
}

fn record(state: State, finished: Option<i64>, verify: Option<(bool, i64)>) -> Record {
    let mut status = Status::unknown("away");
    status.state = state;
    if state != State::Unknown {
        status.reason = None;
    }
    Record {
        service: "orders".into(),
        id: "backfill".into(),
        status,
        host: Some("h1".into()),
        updated_at: t(100),
        finished_at: finished.map(t),
        verify: verify.map(|(ok, _)| Verify {
            ok,
            state: State::Succeeded,
            checks: vec![Check {
                name: "rows".into(),
                expected: "5".into(),
                actual: if ok { "5" } else { "4" }.into(),
                ok,
            }],
            reason: None,
        }),
        verified_at: verify.map(|(_, at)| t(at)),
        requested_by: None,
    }
}

#[test]
fn the_gate_opens_only_after_success_and_a_later_passing_verify() {
    let key = "orders.backfill";
    let ready = |r: Option<Record>| Record::ready(key, r.as_ref());
    assert!(ready(None).unwrap_err().contains("has never run"));
    assert!(ready(Some(record(State::Unknown, None, None)))
        .unwrap_err()
        .contains("unknown (away)"));
    assert!(ready(Some(record(State::Running, None, None)))
        .unwrap_err()
        .contains("is running"));
    assert!(ready(Some(record(State::Succeeded, Some(100), None)))
        .unwrap_err()
        .contains("has not been verified"));
    // A verify from before the run finished says nothing about its end.
    assert!(
        ready(Some(record(State::Succeeded, Some(100), Some((true, 50)))))
            .unwrap_err()
            .contains("has not been verified")
    );
    assert!(ready(Some(record(
        State::Succeeded,
        Some(100),
        Some((false, 150))
    )))
    .unwrap_err()
    .contains("verify failed: rows: expected 5, found 4"));
    ready(Some(record(State::Succeeded, Some(100), Some((true, 150))))).unwrap();
}

#[test]
fn observations_record_transitions_as_events_and_when_it_finished() {
    let status = |state: State, done: u64| Status {
        state,
        done,
        total: Some(10),
        ..Status::unknown("")
    };
    let k = ("orders", "backfill");
    let (r, e) = Record::observe(None, k, "h1", status(State::Running, 1), t(100));
    assert_eq!(
        e.unwrap(),
        "orders.backfill: untracked -> running on h1 (1/10 rows (10.0%))"
    );
    let (r, e) = Record::observe(Some(r), k, "h1", status(State::Running, 5), t(200));
    assert!(e.is_none(), "progress alone is no event");
    assert_eq!((r.status.done, r.updated_at), (5, t(200)));
    let (r, e) = Record::observe(Some(r), k, "h1", status(State::Succeeded, 10), t(300));
    assert!(e.unwrap().contains("running -> succeeded"));
    assert_eq!(r.finished_at, Some(t(300)));
    let (r, _) = Record::observe(Some(r), k, "h2", status(State::Succeeded, 10), t(400));
    assert_eq!(r.finished_at, Some(t(300)), "kept while it stays succeeded");
    let dry = Status {
        would_move: Some(3),
        ..status(State::Pending, 0)
    };
    let (r, e) = Record::observe(Some(r), k, "h2", dry, t(500));
    assert!(
        e.is_none() && r.status.state == State::Succeeded,
        "a dry run changes nothing"
    );
}

#[test]
fn a_failed_look_never_replaces_a_state_the_database_holds() {
    let k = ("orders", "backfill");
    let done = Status {
        state: State::Succeeded,
        done: 10,
        total: Some(10),
        ..Status::unknown("")
    };
    let (r, _) = Record::observe(None, k, "h1", done, t(100));
    let (r, e) = Record::observe(Some(r), k, "h1", Status::unknown("timed out"), t(200));
    assert!(e.is_none());
    assert_eq!(
        (r.status.state, r.finished_at),
        (State::Succeeded, Some(t(100)))
    );
    // A running one, though, is unknown once it cannot be seen.
    let (r, _) = Record::observe(
        None,
        k,
        "h1",
        Status {
            state: State::Running,
            ..Status::unknown("")
        },
        t(100),
    );
    let (r, _) = Record::observe(Some(r), k, "h1", Status::unknown("away"), t(200));
    assert_eq!(r.status.state, State::Unknown);
}
