//! One `migrate` per database at a time: a session-level advisory lock on
//! a key derived from the database's own name (`current_database()`, so
//! two config entries naming one database share it), taken by polling
//! `pg_try_advisory_lock` (never a blocking `pg_advisory_lock`, whose
//! waiter would hold back `CREATE INDEX CONCURRENTLY` in the holder), and
//! a refusal naming the holder when it is not free in time.

use std::time::Duration;

use tokio_postgres::Client;

use super::target::describe;
use crate::error::{Error, Result};

/// The longest `--lock-timeout` an operator may ask for.
pub const MAX_WAIT: Duration = Duration::from_secs(3600);
/// `--lock-timeout` when none is given.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(30);

/// The advisory lock key of the database named `database` on its server:
/// the first 8 bytes of a SHA-256 of its name, the same on every
/// controller and every version.
pub fn key(database: &str) -> i64 {
    let d = cutover_core::Sha256Digest::of(format!("cutover migrate {database}").as_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(&d.as_bytes()[..8]);
    i64::from_be_bytes(b)
}

/// The two halves `pg_locks` shows a bigint advisory key as (`classid`,
/// `objid`, with `objsubid` 1).
fn halves(key: i64) -> (i64, i64) {
    let k = key as u64;
    ((k >> 32) as i64, (k & 0xffff_ffff) as i64)
}

/// The next pause between two tries: doubling from 50 ms to at most 1 s.
pub fn next_pause(pause: Duration) -> Duration {
    pause.saturating_mul(2).min(Duration::from_secs(1))
}

/// A lock taken: the key it was taken under, to give it back.
#[must_use = "a lock taken is given back with release"]
pub struct Held {
    key: i64,
}

/// Takes the lock of the database `client` is connected to (the config
/// calls it `database`) on `client`'s session, trying again until `wait`
/// has passed; then refuses, naming who holds it.
pub async fn acquire(client: &Client, database: &str, wait: Duration) -> Result<Held> {
    let key = key_of(client, database).await?;
    let deadline = tokio::time::Instant::now() + wait.min(MAX_WAIT);
    let mut pause = Duration::from_millis(50);
    loop {
        let row = client
            .query_one("SELECT pg_try_advisory_lock($1)", &[&key])
            .await
            .map_err(|e| {
                Error::Unavailable(format!(
                    "database {database:?}: cannot ask for its migration lock: {}",
                    describe(&e)
                ))
            })?;
        if row.get::<_, bool>(0) {
            return Ok(Held { key });
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            let holder = match holder(client, key).await {
                Ok(Some(h)) => h,
                Ok(None) => "its holder has just let it go".into(),
                Err(e) => format!("its holder cannot be read: {}", describe(&e)),
            };
            return Err(Error::Refused(format!(
                "database {database:?}: another migrate holds its lock ({holder}); waited {}; try again when it is done",
                cutover_core::fleet::show_duration(wait)
            )));
        }
        tokio::time::sleep(pause.min(deadline - now)).await;
        pause = next_pause(pause);
    }
}

/// Whether `client`'s session still holds the lock `held`; an error
/// (refusing to go on) when it does not or cannot say.
pub async fn still_held(client: &Client, database: &str, held: &Held) -> Result<()> {
    let (hi, lo) = halves(held.key);
    let sql = "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted \
               AND objsubid = 1 AND classid::bigint = $1 AND objid::bigint = $2 AND pid = pg_backend_pid())";
    match client.query_one(sql, &[&hi, &lo]).await {
        Ok(row) if row.get::<_, bool>(0) => Ok(()),
        Ok(_) => Err(Error::Refused(format!(
            "database {database:?}: this migrate no longer holds its migration lock; nothing more runs: look with `cutover migrate status --database {database}`"
        ))),
        Err(e) => Err(Error::Unavailable(format!(
            "database {database:?}: the session holding its migration lock is gone ({}); nothing more runs: look with `cutover migrate status --database {database}`",
            describe(&e)
        ))),
    }
}

/// Gives the lock back (the session's end would too).
pub async fn release(client: &Client, database: &str, held: Held) {
    if let Err(e) = client
        .query_one("SELECT pg_advisory_unlock($1)", &[&held.key])
        .await
    {
        tracing::warn!(database, error = %describe(&e), "could not release the migration lock; it goes with the connection");
    }
}

/// The lock key of the database `client` is connected to.
async fn key_of(client: &Client, database: &str) -> Result<i64> {
    let physical: String = client
        .query_one("SELECT current_database()::text", &[])
        .await
        .map_err(|e| {
            Error::Unavailable(format!(
                "database {database:?}: cannot ask for its migration lock: {}",
                describe(&e)
            ))
        })?
        .get(0);
    Ok(key(&physical))
}

/// Who holds the migration lock of the database `client` is connected to
/// now (`None`: nobody), as one line.
pub async fn holder_now(client: &Client, database: &str) -> Result<Option<String>> {
    let key = key_of(client, database).await?;
    holder(client, key).await.map_err(|e| {
        Error::Unavailable(format!(
            "database {database:?}: cannot read who holds its migration lock: {}",
            describe(&e)
        ))
    })
}

/// Who holds `key`, from `pg_locks` and `pg_stat_activity`, as one line.
async fn holder(
    client: &Client,
    key: i64,
) -> std::result::Result<Option<String>, tokio_postgres::Error> {
    let (hi, lo) = halves(key);
    let sql = "SELECT a.pid, coalesce(a.application_name, ''), coalesce(host(a.client_addr), 'local socket') \
               FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
               WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 \
               AND l.classid::bigint = $1 AND l.objid::bigint = $2 LIMIT 1";
    Ok(client.query_opt(sql, &[&hi, &lo]).await?.map(|row| {
        let pid: i32 = row.get(0);
        let app: String = row.get(1);
        let addr: String = row.get(2);
        format!(
            "held by {}, pid {pid}, from {}",
            cutover_core::text::shown(&app, 64),
            cutover_core::text::shown(&addr, 64)
        )
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_is_stable_and_differs_by_database() {
        assert_eq!(key("billing"), key("billing"));
        assert_ne!(key("billing"), key("orders"));
        // Pinned: a controller of another version must take the same lock.
        let d = cutover_core::Sha256Digest::of(b"cutover migrate billing");
        assert_eq!(key("billing").to_be_bytes(), d.as_bytes()[..8]);
    }

    #[test]
    fn the_halves_are_what_pg_locks_shows() {
        assert_eq!(halves(0x0000_0001_0000_0002), (1, 2));
        assert_eq!(halves(-1), (0xffff_ffff, 0xffff_ffff));
    }

    #[test]
    fn polling_backs_off_to_one_second() {
        let mut p = Duration::from_millis(50);
        for _ in 0..10 {
            p = next_pause(p);
        }
        assert_eq!(p, Duration::from_secs(1));
    }
}
