//! When the controller was last reachable, shared by the session (which
//! marks it) and the installer (which acts on a long loss).

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// When the controller was last reachable, shared with the session.
#[derive(Default)]
pub struct Link {
    lost_since: Mutex<Option<Instant>>,
}

impl Link {
    pub fn new_lost() -> Link {
        Link {
            lost_since: Mutex::new(Some(Instant::now())),
        }
    }

    pub fn connected(&self) {
        *self.lost_since.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    pub fn lost(&self) {
        self.lost_since
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_or_insert_with(Instant::now);
    }

    pub fn is_up(&self) -> bool {
        self.lost_since
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_none()
    }

    /// How long the controller has been unreachable (zero when connected).
    pub fn lost_for(&self) -> Duration {
        self.lost_since
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .map(|t| t.elapsed())
            .unwrap_or_default()
    }
}
