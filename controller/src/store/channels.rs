//! Channels in the store: named pointers to imported releases, and which
//! one is the fleet's default (the `default_channel` setting).

use cutover_core::views::{now_ms, ChannelView};
use rusqlite::{params, OptionalExtension};

use super::{insert_event, Store};
use crate::error::{Error, Result};

impl Store {
    pub fn set_channel(&self, name: &str, version: &str) -> Result<()> {
        self.with(|c| {
            let tx = c.transaction()?;
            let exists: bool = tx
                .prepare("SELECT 1 FROM releases WHERE version = ?1")?
                .exists([version])?;
            if !exists {
                return Err(Error::NotFound(format!(
                    "no release {version}; import it first with `cutover release import`"
                )));
            }
            tx.execute(
                "INSERT INTO channels (name, version, updated_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT(name) DO UPDATE SET version = ?2, updated_at = ?3",
                params![name, version, now_ms()],
            )?;
            insert_event(
                &tx,
                "channel.set",
                None,
                &format!("channel {name} -> {version}"),
            )?;
            tx.commit()?;
            Ok(())
        })
    }

    pub fn set_default_channel(&self, name: &str) -> Result<()> {
        self.with(|c| {
            let tx = c.transaction()?;
            let exists = tx
                .prepare("SELECT 1 FROM channels WHERE name = ?1")?
                .exists([name])?;
            if !exists {
                return Err(Error::NotFound(format!(
                    "no channel {name:?}; create it with `cutover channel set {name} VERSION`"
                )));
            }
            tx.execute(
                "INSERT INTO settings (key, value) VALUES ('default_channel', ?1)
                 ON CONFLICT(key) DO UPDATE SET value = ?1",
                [name],
            )?;
            insert_event(
                &tx,
                "channel.default",
                None,
                &format!("default channel {name}"),
            )?;
            tx.commit()?;
            Ok(())
        })
    }

    pub fn channels(&self) -> Result<Vec<ChannelView>> {
        self.with(|c| {
            let default: Option<String> = c
                .query_row(
                    "SELECT value FROM settings WHERE key = 'default_channel'",
                    [],
                    |r| r.get(0),
                )
                .optional()?;
            let mut stmt =
                c.prepare("SELECT name, version, updated_at FROM channels ORDER BY name")?;
            let rows = stmt
                .query_map([], |r| {
                    let name: String = r.get(0)?;
                    Ok(ChannelView {
                        is_default: default.as_deref() == Some(name.as_str()),
                        name,
                        version: r.get(1)?,
                        updated_at: cutover_core::views::from_ms(r.get(2)?),
                    })
                })?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
    }
}
