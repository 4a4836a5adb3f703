//! The controller's durable state in SQLite, one file per thing it holds:
//! [`schema`] (the versioned tables), [`hosts`], [`tokens`] (join tokens
//! and enrollment), [`releases`] (with their artifacts), [`channels`],
//! [`events`], [`health`], [`host_releases`], and the fleet config and
//! rollouts in [`rollouts`]. This module is the [`Store`] handle itself.
//! Heartbeats never reach the store; it is written on enrollment,
//! session start and end, imports and operator changes.

use std::path::Path;
use std::sync::{Arc, Mutex};

use rusqlite::Connection;

use crate::error::{Error, Result};

mod channels;
mod data_migrations;
mod events;
mod health;
mod host_releases;
mod hosts;
mod releases;
mod rollouts;
mod schema;
mod startup;
mod tokens;
pub(crate) use events::insert_event;
pub use events::EventQuery;
pub use hosts::CertSerials;
pub use releases::StoredRelease;
pub use rollouts::{LogLine, RolloutSave};
pub use startup::{open_checked, OpenOptions, MARKER_FILE, STORE_FILE};
pub use tokens::TokenProblem;
// The tests build stores at older schema versions.
#[cfg(test)]
use schema::MIGRATIONS;

/// A cheaply cloneable handle on the store. Calls block; async code runs
/// them through [`Store::run`].
#[derive(Clone)]
pub struct Store {
    conn: Arc<Mutex<Connection>>,
}

impl Store {
    pub fn open(path: &Path) -> Result<Store> {
        let mut conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        schema::migrate(&mut conn, path)?;
        Ok(Store {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    pub(crate) fn with<T>(&self, f: impl FnOnce(&mut Connection) -> Result<T>) -> Result<T> {
        let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut conn)
    }

    /// Runs a blocking store call off the async runtime.
    pub async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .map_err(|e| Error::Internal(format!("store task: {e}")))?
    }
}

#[cfg(test)]
mod tests;
