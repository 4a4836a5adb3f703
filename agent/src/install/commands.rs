//! Who may touch a service when: one lock per service (held by a command,
//! a round of probes, and the checks recovery resumes), what each service
//! is busy with, the queue of commands per service with how many wait, and
//! which services have a rollback waiting (their install's checks stop
//! early, and probes leave them alone).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use cutover_core::rollout::Command;
use tokio::sync::mpsc;

#[derive(Default)]
pub struct Commands {
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    busy: Mutex<HashMap<String, &'static str>>,
    queues: Mutex<HashMap<String, mpsc::UnboundedSender<Command>>>,
    /// Commands per service submitted and not yet done: health probes
    /// leave such a service alone.
    queued: Mutex<HashMap<String, usize>>,
    /// Services with a rollback waiting: their health checks stop early.
    rollback_waiting: Mutex<HashSet<String>>,
}

impl Commands {
    /// The service's lock: whoever holds it may change the service.
    pub fn lock(&self, service: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.locks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(service.to_string())
            .or_default()
            .clone()
    }

    /// What the service is busy with (`None`: nothing), for the inventory.
    pub fn set_busy(&self, service: &str, what: Option<&'static str>) {
        let mut busy = self.busy.lock().unwrap_or_else(|p| p.into_inner());
        match what {
            Some(w) => busy.insert(service.to_string(), w),
            None => busy.remove(service),
        };
    }

    /// What every busy service is busy with.
    pub fn busy(&self) -> HashMap<String, &'static str> {
        self.busy.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn rollback_waiting(&self, service: &str) -> bool {
        self.rollback_waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(service)
    }

    /// A rollback for `service` is queued (`true`) or has started.
    pub fn set_rollback_waiting(&self, service: &str, waiting: bool) {
        let mut set = self
            .rollback_waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if waiting {
            set.insert(service.to_string());
        } else {
            set.remove(service);
        }
    }

    /// Sends `cmd` down its service's queue, which `start` makes (and
    /// whose commands it runs) the first time the service has one.
    pub fn enqueue(&self, cmd: Command, start: impl FnOnce() -> mpsc::UnboundedSender<Command>) {
        let mut queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        let queue = queues
            .entry(cmd.service().to_string())
            .or_insert_with(start);
        self.count_queued(cmd.service(), true);
        let _ = queue.send(cmd);
    }

    /// Counts a command for `service` submitted (`up`) or done.
    pub fn count_queued(&self, service: &str, up: bool) {
        let mut queued = self.queued.lock().unwrap_or_else(|p| p.into_inner());
        let n = queued.entry(service.to_string()).or_default();
        if up {
            *n += 1;
        } else {
            *n = n.saturating_sub(1);
            if *n == 0 {
                queued.remove(service);
            }
        }
    }

    /// Whether a command for `service` is queued, running or waiting.
    pub fn commanded(&self, service: &str) -> bool {
        self.queued
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(service)
            || self
                .busy
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains_key(service)
            || self.rollback_waiting(service)
    }
}
