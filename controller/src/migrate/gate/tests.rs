//! Tests of the migration gates: each refusal, one line, naming the
//! database, phase, release and fix; and what lets each gate pass.

use super::*;
use cutover_core::migration_views::{LedgerEntry, PendingMigration};
use cutover_core::views::ContentIdentity;

const API: char = 'b';

fn manifest(contract_extra: &str) -> Manifest {
    let sha = |c: char| c.to_string().repeat(64);
    crate::testing::manifest(&format!(
        r#"
[[services]]
name = "api"
service_version = "2"
databases = ["billing"]
tarball = {{ sha256 = "{}", size = 10, file = "api.tgz" }}
[[migrations]]
database = "billing"
version = "2.0.0"
phase = "contract"
name = "001_drop.sql"
sha256 = "{}"
size = 1
file = "migrations/billing/2.0.0/contract/001_drop.sql"
{contract_extra}
"#,
        sha(API),
        sha('e')
    ))
}

/// Hosts h1 and h2; "api" runs where `assign` says (`hosts = [...]` or
/// `labels = [...]`).
fn fleet(assign: &str) -> FleetConfig {
    FleetConfig::parse(
        "f.toml",
        &format!(
            "[hosts.h1]\nlabels = [\"all\"]\n[hosts.h2]\nlabels = [\"all\"]\n\
             [services.api]\n{assign}\nrunner = \"process\"\ncommand = \"bin/api\"\n"
        ),
    )
    .unwrap()
}

fn host(name: &str, release: &str, c: char) -> HostState {
    let current = ContentIdentity {
        release: release.into(),
        service_version: "2".into(),
        tarball_sha256: Some(c.to_string().repeat(64).parse().unwrap()),
        image_id: None,
    };
    crate::testing::host(name, "api", Some(current), None)
}

fn pending(phase: &str, name: &str) -> PendingMigration {
    PendingMigration {
        version: "2.0.0".into(),
        phase: phase.into(),
        name: name.into(),
        checksum: "e".repeat(64),
        no_transaction: false,
    }
}

fn status(pending: Vec<PendingMigration>) -> DatabaseStatus {
    DatabaseStatus {
        database: "billing".into(),
        ledger: true,
        applied: Vec::new(),
        pending,
        failed: Vec::new(),
        dirty: Vec::new(),
        migrating: None,
        drift: Vec::new(),
        out_of_order: Vec::new(),
        unknown: Vec::new(),
    }
}

fn one_line(e: String) -> String {
    assert!(!e.contains('\n'), "{e}");
    e
}

#[test]
fn pending_expand_refuses_the_upgrade_naming_the_count_and_the_command() {
    let s = status(vec![
        pending("expand", "001_a.sql"),
        pending("expand", "002_b.sql"),
        pending("postdeploy", "001_c.sql"),
    ]);
    assert_eq!(
        one_line(expand_gate("2.0.0", &s).unwrap_err()),
        "database billing has 2 pending expand migrations of release 2.0.0: run `cutover migrate --phase expand --version 2.0.0` first"
    );
    // Postdeploy and contract pending do not hold back the upgrade.
    assert!(expand_gate("2.0.0", &status(vec![pending("contract", "001_d.sql")])).is_ok());
}

#[test]
fn a_dirty_ledger_refuses_the_plan_and_says_how_to_repair() {
    let mut s = status(Vec::new());
    s.dirty.push(LedgerEntry {
        version: "2.0.0".into(),
        phase: "expand".into(),
        name: "001_a.sql".into(),
        checksum: "e".repeat(64),
        state: "running".into(),
        applied_by: "operator alice".into(),
        started_at: time::OffsetDateTime::UNIX_EPOCH,
        finished_at: None,
        elapsed_ms: None,
        error: None,
    });
    let e = one_line(expand_gate("2.0.0", &s).unwrap_err());
    assert!(
        e.contains("release 2.0.0 cannot be planned")
            && e.contains("cutover migrate repair --database billing"),
        "{e}"
    );
    let u = one_line(unreadable("2.0.0", "billing", "connection refused"));
    assert!(
        u.contains("database billing")
            && u.contains("cutover migrate status --database billing --version 2.0.0"),
        "{u}"
    );
}

#[test]
fn the_rollout_is_done_only_when_every_assigned_host_runs_the_release() {
    let m = manifest("");
    let f = fleet("hosts = [\"h1\", \"h2\"]");
    let both = [host("h1", "2.0.0", API), host("h2", "2.0.0", API)];
    assert!(not_rolled_out(&m, &f, &both, "billing").is_empty());
    let one = [host("h1", "2.0.0", API), host("h2", "1.0.0", 'c')];
    assert_eq!(
        not_rolled_out(&m, &f, &one, "billing"),
        ["api on h2 (runs release 1.0.0)"]
    );
    let mut nothing = one.clone();
    nothing[1].installed.clear();
    assert_eq!(
        not_rolled_out(&m, &f, &nothing, "billing"),
        ["api on h2 (runs nothing)"]
    );
    let mut revoked = both.clone();
    revoked[0].revoked = true;
    assert_eq!(
        not_rolled_out(&m, &f, &revoked, "billing"),
        ["api on h1 (revoked)"]
    );
    assert_eq!(
        not_rolled_out(&m, &f, &both[..1], "billing"),
        ["api on h2 (not enrolled)"]
    );
    // A service the fleet runs nowhere has not rolled out: fail closed.
    assert_eq!(
        not_rolled_out(&m, &fleet("labels = [\"none\"]"), &both, "billing"),
        ["service api is assigned to no host"]
    );
    let empty = FleetConfig::parse("f.toml", "[hosts.h1]\n").unwrap();
    assert_eq!(
        not_rolled_out(&m, &empty, &both, "billing"),
        ["service api is not in the fleet config"]
    );
}

#[test]
fn an_unfinished_rollout_of_an_owner_or_an_unreadable_one_holds_postdeploy() {
    let m = manifest("");
    let moving = |id, services: &[&str]| {
        Ok(Moving {
            id,
            services: services.iter().map(|s| s.to_string()).collect(),
        })
    };
    let all = [
        moving(8, &["web"]),
        moving(7, &["web", "api"]),
        Err("bad row".to_string()),
    ];
    assert_eq!(
        in_flight(&m, "billing", &all),
        [
            "rollout 7 still moves api",
            "a stored rollout cannot be read (bad row)"
        ]
    );
    assert!(in_flight(&m, "billing", &all[..1]).is_empty());
}

#[test]
fn postdeploy_waits_for_expand_and_for_the_rollout_naming_what_lags() {
    let s = status(vec![pending("postdeploy", "001_c.sql")]);
    assert!(postdeploy_gate("2.0.0", &s, &[]).is_ok());
    let e = one_line(
        postdeploy_gate("2.0.0", &s, &["api on h2 (runs release 1.0.0)".into()]).unwrap_err(),
    );
    assert_eq!(
        e,
        "database billing: postdeploy of release 2.0.0 refused: the rollout of 2.0.0 to the services owning it has not succeeded everywhere: api on h2 (runs release 1.0.0); finish it with `cutover upgrade --version 2.0.0` (see `cutover status`), then run `cutover migrate --phase postdeploy --version 2.0.0`"
    );
    let many: Vec<String> = (0..7)
        .map(|i| format!("api on h{i} (runs nothing)"))
        .collect();
    assert!(postdeploy_gate("2.0.0", &s, &many).unwrap_err().ends_with("and 2 more; finish it with `cutover upgrade --version 2.0.0` (see `cutover status`), then run `cutover migrate --phase postdeploy --version 2.0.0`"));
    let e =
        postdeploy_gate("2.0.0", &status(vec![pending("expand", "001_a.sql")]), &[]).unwrap_err();
    assert!(
        e.contains("1 pending expand migration;") && e.contains("--phase expand"),
        "{e}"
    );
}

#[test]
fn contract_waits_for_postdeploy_the_rollout_and_required_data_migrations() {
    let m = manifest("");
    let contract = status(vec![pending("contract", "001_drop.sql")]);
    assert!(contract_gate(&m, &contract, &[], &[]).is_ok());
    let e = one_line(
        contract_gate(
            &m,
            &status(vec![
                pending("postdeploy", "001_c.sql"),
                pending("contract", "001_drop.sql"),
            ]),
            &[],
            &[],
        )
        .unwrap_err(),
    );
    assert_eq!(
        e,
        "database billing: contract of release 2.0.0 refused: it has 1 pending postdeploy migration; run `cutover migrate --phase postdeploy --version 2.0.0` first"
    );
    let e = contract_gate(&m, &contract, &["api on h1 (runs nothing)".into()], &[]).unwrap_err();
    assert!(
        e.starts_with("database billing: contract of release 2.0.0 refused: the rollout"),
        "{e}"
    );

    // Required data migrations, as the edge found them in the store.
    use cutover_core::data_migration::{Record, State, Status, Verify};
    let key = "api.backfill_orders".to_string();
    let e = one_line(contract_gate(&m, &contract, &[], &[(key.clone(), None)]).unwrap_err());
    assert!(
        e.starts_with("database billing: contract of release 2.0.0 refused: it requires data migration api.backfill_orders, which has never run"),
        "{e}"
    );
    let mut record = Record {
        service: "api".into(),
        id: "backfill_orders".into(),
        status: Status::unknown("host h1 went offline while it ran"),
        host: Some("h1".into()),
        updated_at: cutover_core::views::from_ms(10).unwrap(),
        finished_at: None,
        verify: None,
        verified_at: None,
        requested_by: None,
    };
    let with = |r: &Record| contract_gate(&m, &contract, &[], &[(key.clone(), Some(r.clone()))]);
    assert!(with(&record)
        .unwrap_err()
        .contains("state unknown (host h1 went offline while it ran)"));
    record.status.state = State::Succeeded;
    record.status.reason = None;
    record.finished_at = cutover_core::views::from_ms(10);
    assert!(with(&record)
        .unwrap_err()
        .contains("has not been verified since it finished"));
    record.verify = Some(Verify {
        ok: true,
        state: State::Succeeded,
        checks: Vec::new(),
        reason: None,
    });
    record.verified_at = cutover_core::views::from_ms(20);
    with(&record).unwrap();
    // Once the contract files are applied, nothing is left to wait for.
    assert!(contract_gate(&m, &status(Vec::new()), &[], &[(key, None)]).is_ok());
}

#[test]
fn a_plan_shows_the_release_migrations_by_phase_pending_and_applied() {
    let m = manifest("");
    let v = plan_view(&m, &status(vec![pending("contract", "001_drop.sql")]));
    assert_eq!(v.database, "billing");
    assert_eq!(v.phases.len(), 1, "only phases the release has");
    assert_eq!(v.phases[0].phase, "contract");
    assert_eq!(v.phases[0].pending, ["2.0.0/contract/001_drop.sql"]);
    assert!(v.phases[0].applied.is_empty());
    let done = plan_view(&m, &status(Vec::new()));
    assert_eq!(done.phases[0].applied, ["2.0.0/contract/001_drop.sql"]);
    assert!(done.phases[0].pending.is_empty());
}
