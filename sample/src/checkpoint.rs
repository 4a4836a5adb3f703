//! The checkpoint of each data migration, kept in the service's own
//! database in `cutover_sample_data_migrations` (made by the first command
//! that writes, under a transaction-level advisory lock so two processes
//! at once both succeed), and the status the protocol prints, derived
//! from the row and from whether a `run` holds the migration's lock: a
//! row that says `running` with nobody holding the lock is a run that
//! died (`pending`, `interrupted`).
//!
//! Whether a run holds the lock is read from `pg_locks`, not by trying to
//! take it: a `status` poll that took the lock for an instant would make
//! a `run` starting at that instant believe another run works.

use serde::Serialize;
use tokio_postgres::{Client, GenericClient};

use crate::db::describe;
use crate::error::{Error, Result};

/// The checkpoint table.
pub const TABLE: &str = "cutover_sample_data_migrations";

/// The transaction-level advisory lock key taken around creating it.
const CREATE_KEY: i64 = 0x6375_7473_616d_0000;

/// `last_key` NULL: no batch done yet (so no id, however small, is
/// skipped). `rate`: rows per second over the last batches while a run
/// works, NULL otherwise.
const CREATE: &str = "CREATE TABLE IF NOT EXISTS cutover_sample_data_migrations (
    id text PRIMARY KEY,
    state text NOT NULL,
    last_key bigint,
    done bigint NOT NULL DEFAULT 0,
    total bigint,
    rate double precision,
    pause_requested boolean NOT NULL DEFAULT false,
    error text,
    started_at timestamptz,
    updated_at timestamptz,
    finished_at timestamptz)";

/// The state of a migration, as the protocol names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Pending,
    Running,
    Paused,
    Succeeded,
    Failed,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Running => "running",
            State::Paused => "paused",
            State::Succeeded => "succeeded",
            State::Failed => "failed",
        }
    }

    fn parse(text: &str) -> Option<State> {
        [
            State::Pending,
            State::Running,
            State::Paused,
            State::Succeeded,
            State::Failed,
        ]
        .into_iter()
        .find(|s| s.as_str() == text)
    }
}

/// A checkpoint row.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub state: State,
    /// The largest key done (`None`: none yet).
    pub last_key: Option<i64>,
    pub done: i64,
    pub total: Option<i64>,
    pub rate: Option<f64>,
    pub pause_requested: bool,
    pub error: Option<String>,
}

/// What `status`, `run`, `pause` and `resume` print.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Status {
    pub id: &'static str,
    pub state: State,
    pub done: i64,
    pub total: Option<i64>,
    pub rate: Option<f64>,
    pub error: Option<String>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub interrupted: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub pause_requested: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub dry_run: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub would_move: Option<i64>,
}

impl Status {
    /// The status of migration `id` whose row is `row` (`None`: never
    /// started), `run_alive` saying whether a run holds its lock.
    pub fn derive(id: &'static str, row: Option<&Row>, run_alive: bool) -> Status {
        let stored = row.map_or(State::Pending, |r| r.state);
        let (state, interrupted) = match stored {
            // A run that has just taken the lock and not yet written
            // `running` is running.
            State::Pending | State::Running if run_alive => (State::Running, false),
            State::Running => (State::Pending, true),
            s => (s, false),
        };
        Status {
            id,
            state,
            done: row.map_or(0, |r| r.done),
            total: row.and_then(|r| r.total),
            rate: row.and_then(|r| r.rate).filter(|_| state == State::Running),
            error: row.and_then(|r| r.error.clone()),
            interrupted,
            pause_requested: row.is_some_and(|r| r.pause_requested),
            message: None,
            dry_run: false,
            would_move: None,
        }
    }

    pub fn with_message(mut self, message: impl Into<String>) -> Status {
        self.message = Some(message.into());
        self
    }
}

/// A statement that failed, as an error naming what was being done.
pub fn failed(doing: &str) -> impl Fn(tokio_postgres::Error) -> Error + '_ {
    move |e| Error::Database(format!("{doing}: {}", describe(&e)))
}

/// Whether the checkpoint table exists (read-only).
pub async fn exists(client: &impl GenericClient) -> Result<bool> {
    let row = client
        .query_one(
            "SELECT to_regclass('cutover_sample_data_migrations') IS NOT NULL",
            &[],
        )
        .await
        .map_err(failed("cannot look for the checkpoint table"))?;
    Ok(row.get(0))
}

/// Creates the checkpoint table if it is missing, and the row of `id`.
pub async fn ensure(client: &mut Client, id: &str) -> Result<()> {
    let doing = "cannot create the checkpoint table cutover_sample_data_migrations (the role needs CREATE on the schema)";
    let tx = client.transaction().await.map_err(failed(doing))?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&CREATE_KEY])
        .await
        .map_err(failed(doing))?;
    tx.batch_execute(CREATE).await.map_err(failed(doing))?;
    tx.execute(
        "INSERT INTO cutover_sample_data_migrations (id, state, updated_at) VALUES ($1, 'pending', now()) ON CONFLICT (id) DO NOTHING",
        &[&id],
    )
    .await
    .map_err(failed(doing))?;
    tx.commit().await.map_err(failed(doing))
}

/// The row of `id`, if the table and the row exist.
pub async fn read(client: &impl GenericClient, id: &str) -> Result<Option<Row>> {
    if !exists(client).await? {
        return Ok(None);
    }
    let row = client
        .query_opt(
            "SELECT state, last_key, done, total, rate, pause_requested, error FROM cutover_sample_data_migrations WHERE id = $1",
            &[&id],
        )
        .await
        .map_err(failed("cannot read the checkpoint"))?;
    let Some(row) = row else { return Ok(None) };
    let text: String = row.get(0);
    let state = State::parse(&text).ok_or_else(|| {
        Error::Database(format!(
            "the checkpoint of {id} in {TABLE} has the state {:?}, which this binary does not know; a newer release wrote it: run that release's binary",
            crate::db::one_line(&text)
        ))
    })?;
    Ok(Some(Row {
        state,
        last_key: row.get(1),
        done: row.get(2),
        total: row.get(3),
        rate: row.get(4),
        pause_requested: row.get(5),
        error: row.get(6),
    }))
}

/// The two halves `pg_locks` shows a bigint advisory key as (`classid`,
/// `objid`, with `objsubid` 1).
fn halves(key: i64) -> (i64, i64) {
    let k = key as u64;
    ((k >> 32) as i64, (k & 0xffff_ffff) as i64)
}

/// Whether some session of this database holds the advisory lock `key`.
pub async fn held(client: &impl GenericClient, key: i64) -> Result<bool> {
    let (hi, lo) = halves(key);
    let row = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted \
             AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
             AND objsubid = 1 AND classid::bigint = $1 AND objid::bigint = $2)",
            &[&hi, &lo],
        )
        .await
        .map_err(failed(
            "cannot read whether a run holds the migration's lock",
        ))?;
    Ok(row.get(0))
}

/// The status of migration `id`, whose runs hold the lock `key`.
pub async fn status(client: &impl GenericClient, id: &'static str, key: i64) -> Result<Status> {
    let row = read(client, id).await?;
    let alive = held(client, key).await?;
    Ok(Status::derive(id, row.as_ref(), alive))
}

/// Tries to take the session-level lock `key` on `client`'s session.
pub async fn try_lock(client: &impl GenericClient, key: i64) -> Result<bool> {
    let row = client
        .query_one("SELECT pg_try_advisory_lock($1)", &[&key])
        .await
        .map_err(failed("cannot ask for the migration's lock"))?;
    Ok(row.get(0))
}

/// Gives the lock `key` back (the session's end would too).
pub async fn unlock(client: &impl GenericClient, key: i64) -> Result<()> {
    client
        .query_one("SELECT pg_advisory_unlock($1)", &[&key])
        .await
        .map_err(failed("cannot give the migration's lock back"))?;
    Ok(())
}

/// `pause`: asks a working run to stop after its batch; with no run
/// working, pauses at once (a succeeded migration stays succeeded).
pub async fn pause(client: &mut Client, id: &'static str, key: i64) -> Result<Status> {
    ensure(client, id).await?;
    let doing = "cannot record the pause";
    client
        .execute(
            "UPDATE cutover_sample_data_migrations SET pause_requested = true, updated_at = now() \
             WHERE id = $1 AND state <> 'succeeded'",
            &[&id],
        )
        .await
        .map_err(failed(doing))?;
    if try_lock(client, key).await? {
        let set = client
            .execute(
                "UPDATE cutover_sample_data_migrations SET state = 'paused', rate = NULL, updated_at = now() \
                 WHERE id = $1 AND state IN ('pending', 'running', 'failed')",
                &[&id],
            )
            .await
            .map_err(failed(doing));
        unlock(client, key).await?;
        let status = status(client, id, key).await?;
        let state = status.state.as_str();
        return Ok(match set? {
            0 => status.with_message(format!("{id} is {state}: nothing to pause")),
            _ => status,
        });
    }
    Ok(status(client, id, key)
        .await?
        .with_message("a run is working: it stops after its current batch"))
}

/// `resume`: clears a pause; a paused migration is pending again.
pub async fn resume(client: &mut Client, id: &'static str, key: i64) -> Result<Status> {
    if exists(client).await? {
        client
            .execute(
                "UPDATE cutover_sample_data_migrations SET pause_requested = false, \
                 state = CASE WHEN state = 'paused' THEN 'pending' ELSE state END, updated_at = now() \
                 WHERE id = $1",
                &[&id],
            )
            .await
            .map_err(failed("cannot record the resume"))?;
    }
    status(client, id, key).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(state: State) -> Row {
        Row {
            state,
            last_key: Some(10),
            done: 10,
            total: Some(100),
            rate: Some(5.0),
            pause_requested: false,
            error: None,
        }
    }

    #[test]
    fn a_running_row_without_a_live_run_is_an_interrupted_pending_one() {
        let s = Status::derive("m", Some(&row(State::Running)), false);
        assert_eq!(
            (s.state, s.interrupted, s.rate),
            (State::Pending, true, None)
        );
        let s = Status::derive("m", Some(&row(State::Running)), true);
        assert_eq!(
            (s.state, s.interrupted, s.rate),
            (State::Running, false, Some(5.0))
        );
    }

    #[test]
    fn a_run_that_has_just_taken_the_lock_is_running() {
        assert_eq!(Status::derive("m", None, true).state, State::Running);
        assert_eq!(
            Status::derive("m", Some(&row(State::Pending)), true).state,
            State::Running
        );
        let s = Status::derive("m", None, false);
        assert_eq!((s.state, s.done, s.total), (State::Pending, 0, None));
    }

    #[test]
    fn final_states_are_reported_as_stored_without_a_rate() {
        for state in [State::Paused, State::Succeeded, State::Failed] {
            for alive in [false, true] {
                let s = Status::derive("m", Some(&row(state)), alive);
                assert_eq!((s.state, s.rate, s.interrupted), (state, None, false));
            }
        }
    }

    #[test]
    fn the_status_document_has_the_protocol_fields_and_only_set_options() {
        let mut r = row(State::Running);
        r.pause_requested = true;
        let v = serde_json::to_value(Status::derive("m", Some(&r), true)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"id": "m", "state": "running", "done": 10, "total": 100,
                "rate": 5.0, "error": null, "pause_requested": true})
        );
    }

    #[test]
    fn states_read_back_as_written() {
        for s in [
            State::Pending,
            State::Running,
            State::Paused,
            State::Succeeded,
            State::Failed,
        ] {
            assert_eq!(State::parse(s.as_str()), Some(s));
        }
        assert_eq!(State::parse("exploded"), None);
        assert_eq!(halves(0x0000_0001_0000_0002), (1, 2));
    }
}
