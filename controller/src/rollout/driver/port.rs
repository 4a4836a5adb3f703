//! What the driver needs of the rest of the controller, and no more: the
//! unfinished rollouts and one rollout read from the store, a rollout's
//! changes saved, a command handed to a host's session, and which hosts
//! are online ([`Online`]). [`ControllerPort`] is the real one, over the
//! store and the session map; the driver's tests have a fake that records
//! the order of saves and sends. No wire message is built here: the
//! session edge (`sessions.rs`) turns a [`Command`] into one.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use cutover_core::rollout::{Command, Rollout};
use cutover_core::views::now_ms;

use super::engine::Online;
use crate::error::Result;
use crate::sessions::Delivery;
use crate::store::{LogLine, RolloutSave};
use crate::Controller;

/// How long a command waits for room in a session's outbound queue.
const SEND_TIMEOUT: Duration = Duration::from_secs(2);

/// The driver's view of the store and the sessions.
pub trait Port: Online + Send + Sync + 'static {
    /// Every unfinished rollout the store holds, each read on its own.
    fn unfinished(&self) -> impl Future<Output = Result<Vec<Result<Rollout>>>> + Send;

    /// Rollout `id` as stored.
    fn load(&self, id: u64) -> impl Future<Output = Result<Option<Rollout>>> + Send;

    /// Stores `rollout`'s fields, its steps `changed` and `events` in one
    /// transaction. Nothing it implies may be sent before this succeeds.
    fn save(
        &self,
        rollout: &Rollout,
        changed: &[usize],
        events: Vec<LogLine>,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Hands `command` to `host`'s session; a host that is offline, or
    /// whose session does not take it, gets it again on its next session.
    fn send(&self, host: &str, command: Command) -> impl Future<Output = ()> + Send;
}

/// The real port: the controller's store and session map.
pub struct ControllerPort(pub Arc<Controller>);

impl Online for ControllerPort {
    /// A host is online while its session is live.
    fn session(&self, host: &str) -> Option<u64> {
        self.0
            .sessions
            .get(host)
            .filter(|s| s.is_live(now_ms()))
            .map(|s| s.id)
    }
}

impl Port for ControllerPort {
    async fn unfinished(&self) -> Result<Vec<Result<Rollout>>> {
        self.0.store.run(|s| s.unfinished_rollouts()).await
    }

    async fn load(&self, id: u64) -> Result<Option<Rollout>> {
        self.0.store.run(move |s| s.rollout(id)).await
    }

    fn save(
        &self,
        rollout: &Rollout,
        changed: &[usize],
        events: Vec<LogLine>,
    ) -> impl Future<Output = Result<()>> + Send {
        // Encoded here, on the driver's task, before the store is locked.
        let save = RolloutSave::new(rollout, changed, events);
        async move {
            let save = save?;
            self.0.store.run(move |s| s.save_rollout(&save)).await
        }
    }

    async fn send(&self, host: &str, command: Command) {
        let id = command.id().to_string();
        match self
            .0
            .sessions
            .send_command(host, &command, SEND_TIMEOUT)
            .await
        {
            Delivery::Sent => tracing::debug!(%host, command = %id, "command sent"),
            Delivery::Offline => {
                tracing::warn!(%host, "host went offline before its command was sent; it is sent again when it is back")
            }
            Delivery::Refused => {
                tracing::warn!(%host, command = %id, "could not send command; it is sent again on the next session")
            }
        }
    }
}
