//! The controller's event log: writing an event (alone, or inside another
//! write's transaction through [`insert_event`]) and reading the newest
//! events (`cutover events`), or the ones stored after a given event
//! (`events --follow` pages forward by id, so nothing is skipped or shown
//! twice).

use cutover_core::rollout::EventView;
use cutover_core::views::now_ms;
use rusqlite::{params, Connection};

use super::rollouts::{sql_id, sql_limit};
use super::Store;
use crate::error::Result;

/// Which events to read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EventQuery {
    /// Only this rollout's events.
    pub rollout: Option<u64>,
    /// Only events stored after the one with this id; then the oldest
    /// `limit` of them rather than the newest.
    pub after_id: Option<u64>,
    /// Only events at or after this time (ms since the epoch).
    pub since_ms: Option<i64>,
    pub limit: usize,
}

impl Store {
    pub fn event(&self, kind: &str, host: Option<&str>, detail: &str) -> Result<()> {
        self.with(|c| {
            insert_event(c, kind, host, detail)?;
            Ok(())
        })
    }

    /// The event log, oldest first; one rollout's events when `rollout` is set.
    pub fn events(&self, rollout: Option<u64>, limit: usize) -> Result<Vec<EventView>> {
        self.query_events(EventQuery {
            rollout,
            limit,
            ..EventQuery::default()
        })
    }

    /// The events `q` selects, oldest first: the newest `q.limit` of them,
    /// or with `after_id` the oldest `q.limit` after that event.
    pub fn query_events(&self, q: EventQuery) -> Result<Vec<EventView>> {
        let rollout = match q.rollout.map(sql_id) {
            // A rollout that cannot exist has no events.
            Some(None) => return Ok(Vec::new()),
            Some(Some(id)) => Some(id),
            None => None,
        };
        let after = match q.after_id.map(sql_id) {
            // No event can come after one past i64::MAX.
            Some(None) => return Ok(Vec::new()),
            Some(Some(id)) => Some(id),
            None => None,
        };
        // Forward from `after`: the oldest first. Otherwise the newest.
        let order = if after.is_some() { "ASC" } else { "DESC" };
        self.with(|c| {
            let mut stmt = c.prepare(&format!(
                "SELECT id, at, kind, host, rollout, detail FROM
                   (SELECT id, at, kind, host, rollout, detail FROM events
                    WHERE (?1 IS NULL OR rollout = ?1)
                      AND (?2 IS NULL OR id > ?2)
                      AND (?3 IS NULL OR at >= ?3)
                    ORDER BY id {order} LIMIT ?4)
                 ORDER BY id"
            ))?;
            let rows = stmt
                .query_map(
                    params![rollout, after, q.since_ms, sql_limit(q.limit)],
                    |r| {
                        Ok(EventView {
                            id: r.get::<_, i64>(0)?.try_into().unwrap_or(0),
                            at_ms: r.get(1)?,
                            kind: r.get(2)?,
                            host: r.get(3)?,
                            rollout: r.get(4)?,
                            detail: r.get(5)?,
                        })
                    },
                )?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
    }
}

pub(crate) fn insert_event(
    c: &Connection,
    kind: &str,
    host: Option<&str>,
    detail: &str,
) -> Result<()> {
    c.execute(
        "INSERT INTO events (at, kind, host, detail) VALUES (?1, ?2, ?3, ?4)",
        params![now_ms(), kind, host, detail],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_follower_pages_forward_from_the_last_event_it_saw_without_gaps() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("store.db")).unwrap();
        for i in 0..5 {
            s.event("test", None, &format!("e{i}")).unwrap();
        }
        let newest = s.events(None, 2).unwrap();
        assert_eq!(
            newest.iter().map(|e| e.detail.as_str()).collect::<Vec<_>>(),
            ["e3", "e4"]
        );
        let first = s.events(None, 100).unwrap()[0].id;
        let next = s
            .query_events(EventQuery {
                after_id: Some(first),
                limit: 2,
                ..EventQuery::default()
            })
            .unwrap();
        assert_eq!(
            next.iter().map(|e| e.detail.as_str()).collect::<Vec<_>>(),
            ["e1", "e2"]
        );
        let none = s
            .query_events(EventQuery {
                after_id: Some(u64::MAX),
                limit: 2,
                ..EventQuery::default()
            })
            .unwrap();
        assert!(none.is_empty());
        let future = s
            .query_events(EventQuery {
                since_ms: Some(i64::MAX),
                limit: 10,
                ..EventQuery::default()
            })
            .unwrap();
        assert!(future.is_empty());
    }
}
