//! `backfill_prices`: copies each order's price out of `orders.doc`
//! (JSONB, release A) into `order_prices` (release B's expand), in
//! batches of keyset pagination over `orders.id`. Each batch is one
//! transaction that inserts the batch's prices (`ON CONFLICT DO NOTHING`:
//! rows a release B binary already dual-wrote are kept as they are) and
//! advances the checkpoint (`last_key`, `done`), so a run killed at any
//! moment continues where its last batch committed and no row is counted
//! twice. Orders added during a run with ids above `last_key` are picked
//! up by later batches.
//!
//! `total` is `count(*)` of `orders` when the run (re)starts and `done`
//! counts the rows of `orders` processed, so a complete run ends with
//! `done` equal to the number of orders it saw. Between batches a run
//! stops if a pause was asked for, and records its rate (rows per second
//! over the last [`RATE_WINDOW`] batches).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use tokio_postgres::{Client, GenericClient};

use crate::checkpoint::{self, failed, State, Status};
use crate::db::{describe, one_line, Pace};
use crate::error::{Error, Result};

/// The migration's id.
pub const ID: &str = "backfill_prices";
/// What it does, as `list` prints it.
pub const DESCRIPTION: &str = "copy each order's price out of orders.doc (JSONB) into order_prices";
/// The session-level advisory lock a run holds for as long as it works.
pub const LOCK_KEY: i64 = 0x6375_7473_616d_0001;

/// How many batches the rate is measured over.
pub const RATE_WINDOW: usize = 10;
/// How many times a `run` tries the lock before saying another run works
/// (a `pause` holds it for an instant), and the pause between tries.
const LOCK_TRIES: u32 = 40;
const LOCK_PAUSE: Duration = Duration::from_millis(50);

/// The first batch (no checkpoint yet): `$1` rows from the smallest id.
const FIRST_BATCH: &str = "WITH batch AS (SELECT id, doc FROM orders ORDER BY id LIMIT $1), \
    ins AS (INSERT INTO order_prices (order_id, price_cents) \
            SELECT id, (doc->>'price_cents')::bigint FROM batch \
            ON CONFLICT (order_id) DO NOTHING RETURNING 1) \
    SELECT (SELECT count(*) FROM batch), (SELECT max(id) FROM batch), (SELECT count(*) FROM ins)";

/// A later batch: `$2` rows after the checkpoint's `last_key` `$1`.
const NEXT_BATCH: &str =
    "WITH batch AS (SELECT id, doc FROM orders WHERE id > $1 ORDER BY id LIMIT $2), \
    ins AS (INSERT INTO order_prices (order_id, price_cents) \
            SELECT id, (doc->>'price_cents')::bigint FROM batch \
            ON CONFLICT (order_id) DO NOTHING RETURNING 1) \
    SELECT (SELECT count(*) FROM batch), (SELECT max(id) FROM batch), (SELECT count(*) FROM ins)";

/// Orders with no row in `order_prices`.
pub const WITHOUT_PRICE: &str =
    "SELECT count(*) FROM orders o WHERE NOT EXISTS (SELECT 1 FROM order_prices p WHERE p.order_id = o.id)";

/// Rows per second over the last [`RATE_WINDOW`] batches.
#[derive(Debug)]
pub struct Rate {
    /// (when, rows done by then), oldest first.
    samples: VecDeque<(Instant, i64)>,
}

impl Rate {
    pub fn new(start: Instant) -> Rate {
        let mut samples = VecDeque::with_capacity(RATE_WINDOW + 1);
        samples.push_back((start, 0));
        Rate { samples }
    }

    /// A batch of `rows` finished at `at`.
    pub fn record(&mut self, at: Instant, rows: i64) {
        let so_far = self.samples.back().map_or(0, |s| s.1);
        self.samples.push_back((at, so_far.saturating_add(rows)));
        while self.samples.len() > RATE_WINDOW + 1 {
            self.samples.pop_front();
        }
    }

    /// `None` until some time has passed.
    pub fn per_second(&self) -> Option<f64> {
        let (first, last) = (self.samples.front()?, self.samples.back()?);
        let secs = last.0.checked_duration_since(first.0)?.as_secs_f64();
        (secs > 0.0).then(|| (last.1.saturating_sub(first.1)) as f64 / secs)
    }
}

/// Refuses, naming the missing table and what to do, unless both tables
/// the migration reads and writes exist.
pub async fn tables(client: &impl GenericClient) -> std::result::Result<(), String> {
    let row = client
        .query_one(
            "SELECT to_regclass('orders') IS NOT NULL, to_regclass('order_prices') IS NOT NULL",
            &[],
        )
        .await
        .map_err(|e| {
            format!(
                "cannot look for the tables orders and order_prices: {}",
                describe(&e)
            )
        })?;
    if !row.get::<_, bool>(0) {
        return Err("the table orders does not exist: is CUTOVER_SAMPLE_DATABASE_URL the service's database, with release A's migrations applied?".into());
    }
    if !row.get::<_, bool>(1) {
        return Err("the table order_prices does not exist: apply release B's expand migration first (cutover migrate --phase expand)".into());
    }
    Ok(())
}

/// `run ID --dry-run`: the status with the rows a run would move now.
/// Reads only (the checkpoint table is not created).
pub async fn dry_run(client: &Client) -> Result<Status> {
    tables(client).await.map_err(Error::Database)?;
    let would: i64 = client
        .query_one(WITHOUT_PRICE, &[])
        .await
        .map_err(failed("cannot count the orders without a price"))?
        .get(0);
    let mut status = checkpoint::status(client, ID, LOCK_KEY).await?;
    status.dry_run = true;
    status.would_move = Some(would);
    Ok(status)
}

/// `run ID`: works until succeeded, failed or paused, then the status.
/// Another run working: its status at once.
pub async fn run(client: &mut Client, pace: Pace) -> Result<Status> {
    checkpoint::ensure(client, ID).await?;
    if !acquire(client).await? {
        return Ok(checkpoint::status(client, ID, LOCK_KEY)
            .await?
            .with_message("another run is working on it; follow it with status"));
    }
    let outcome = locked(client, pace).await;
    if let Err(e) = checkpoint::unlock(client, LOCK_KEY).await {
        eprintln!("cutover-sample data-migrate: {e}; it goes with the connection");
    }
    outcome
}

/// Takes the run lock; `false` when another run holds it.
async fn acquire(client: &Client) -> Result<bool> {
    for _ in 0..LOCK_TRIES {
        if checkpoint::try_lock(client, LOCK_KEY).await? {
            return Ok(true);
        }
        // The holder is a run if the row says so; otherwise a `pause`
        // holds it for an instant, or a run is just starting.
        let row = checkpoint::read(client, ID).await?;
        if row.is_some_and(|r| r.state == State::Running) {
            return Ok(false);
        }
        tokio::time::sleep(LOCK_PAUSE).await;
    }
    Ok(false)
}

/// What a run went through before it ended (succeeded or paused).
struct Ended {
    /// Rows this run inserted (the rest were there already).
    moved: i64,
    /// Rows of `orders` this run went through.
    processed: i64,
}

/// The run, its lock held.
async fn locked(client: &mut Client, pace: Pace) -> Result<Status> {
    let row = checkpoint::read(client, ID)
        .await?
        .ok_or_else(|| Error::Database(format!("the checkpoint row of {ID} is gone")))?;
    match row.state {
        State::Paused => {
            return Ok(checkpoint::status(client, ID, LOCK_KEY)
                .await?
                .with_message("paused: resume it first"))
        }
        State::Succeeded => return checkpoint::status(client, ID, LOCK_KEY).await,
        _ if row.pause_requested => {
            client
                .execute(
                    "UPDATE cutover_sample_data_migrations SET state = 'paused', rate = NULL, updated_at = now() WHERE id = $1",
                    &[&ID],
                )
                .await
                .map_err(failed("cannot record the pause"))?;
            return Ok(checkpoint::status(client, ID, LOCK_KEY)
                .await?
                .with_message("a pause was asked for: resume it first"));
        }
        _ => {}
    }
    client
        .execute(
            "UPDATE cutover_sample_data_migrations SET state = 'running', error = NULL, rate = NULL, \
             finished_at = NULL, started_at = coalesce(started_at, now()), updated_at = now() WHERE id = $1",
            &[&ID],
        )
        .await
        .map_err(failed("cannot record the run's start"))?;
    match work(client, row.last_key, pace).await {
        Ok(ended) => {
            let s = checkpoint::status(client, ID, LOCK_KEY).await?;
            Ok(s.with_message(format!(
                "this run went through {} orders and inserted {} prices",
                ended.processed, ended.moved
            )))
        }
        Err(why) => {
            eprintln!("cutover-sample data-migrate: {ID} failed: {why}");
            client
                .execute(
                    "UPDATE cutover_sample_data_migrations SET state = 'failed', error = $2, rate = NULL, updated_at = now() WHERE id = $1",
                    &[&ID, &why],
                )
                .await
                .map_err(|e| {
                    Error::Database(format!(
                        "{ID} failed ({why}) and the failure cannot be recorded: {}",
                        describe(&e)
                    ))
                })?;
            checkpoint::status(client, ID, LOCK_KEY).await
        }
    }
}

/// The batches, from after `from`; `Err` is why the run failed.
async fn work(
    client: &mut Client,
    from: Option<i64>,
    pace: Pace,
) -> std::result::Result<Ended, String> {
    let sql = |doing: &'static str| {
        move |e: tokio_postgres::Error| one_line(&format!("{doing}: {}", describe(&e)))
    };
    tables(client).await?;
    client
        .execute(
            "UPDATE cutover_sample_data_migrations SET total = (SELECT count(*) FROM orders) WHERE id = $1",
            &[&ID],
        )
        .await
        .map_err(sql("cannot count the orders"))?;
    let mut last = from;
    let mut rate = Rate::new(Instant::now());
    let (mut moved, mut processed) = (0i64, 0i64);
    loop {
        let paused = client
            .query_opt(
                "UPDATE cutover_sample_data_migrations SET state = 'paused', rate = NULL, updated_at = now() \
                 WHERE id = $1 AND pause_requested RETURNING 1",
                &[&ID],
            )
            .await
            .map_err(sql("cannot read whether a pause was asked for"))?;
        if paused.is_some() {
            return Ok(Ended { moved, processed });
        }
        let tx = client
            .transaction()
            .await
            .map_err(sql("cannot begin a batch"))?;
        let row = match last {
            None => tx.query_one(FIRST_BATCH, &[&pace.batch]).await,
            Some(key) => tx.query_one(NEXT_BATCH, &[&key, &pace.batch]).await,
        }
        .map_err(|e| {
            one_line(&format!(
                "the batch after order id {} failed: {}",
                last.map_or("(none)".into(), |k| k.to_string()),
                describe(&e)
            ))
        })?;
        let (rows, max, inserted): (i64, Option<i64>, i64) = (row.get(0), row.get(1), row.get(2));
        let Some(max) = max else {
            tx.execute(
                "UPDATE cutover_sample_data_migrations SET state = 'succeeded', rate = NULL, pause_requested = false, \
                 finished_at = now(), updated_at = now() WHERE id = $1",
                &[&ID],
            )
            .await
            .map_err(sql("cannot record the success"))?;
            tx.commit()
                .await
                .map_err(sql("cannot commit the success"))?;
            return Ok(Ended { moved, processed });
        };
        rate.record(Instant::now(), rows);
        tx.execute(
            "UPDATE cutover_sample_data_migrations SET last_key = $2, done = done + $3, rate = $4, updated_at = now() WHERE id = $1",
            &[&ID, &max, &rows, &rate.per_second()],
        )
        .await
        .map_err(sql("cannot advance the checkpoint"))?;
        tx.commit().await.map_err(sql("cannot commit a batch"))?;
        last = Some(max);
        moved = moved.saturating_add(inserted);
        processed = processed.saturating_add(rows);
        if !pace.delay.is_zero() {
            tokio::time::sleep(pace.delay).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_is_over_the_last_batches() {
        let t0 = Instant::now();
        let mut r = Rate::new(t0);
        assert_eq!(r.per_second(), None);
        r.record(t0 + Duration::from_secs(1), 100);
        assert_eq!(r.per_second(), Some(100.0));
        // A slow start falls out of the window.
        for i in 2..=(RATE_WINDOW as u64 + 2) {
            r.record(t0 + Duration::from_secs(1 + (i - 1) * 2), 1000);
        }
        assert_eq!(r.per_second(), Some(500.0));
    }

    #[test]
    fn both_batches_insert_the_prices_and_report_rows_last_key_and_inserted() {
        for sql in [FIRST_BATCH, NEXT_BATCH] {
            assert!(sql.contains("ON CONFLICT (order_id) DO NOTHING"));
            assert!(sql.contains("ORDER BY id LIMIT"));
            assert!(sql.ends_with("(SELECT count(*) FROM ins)"));
        }
    }
}
