//! "Persisted before sent", against a fake [`Port`]: every command the
//! driver sends is one the last save that succeeded recorded (its step
//! stored in flight under that command id), and a failed save sends
//! nothing; its report is kept and sent on once a save takes it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use cutover_core::command_id::CommandId;
use cutover_core::rollout::{Command, RolloutKind, StepPhase};

use super::super::*;
use super::report;

/// What the driver asked of the port, in order.
#[derive(Debug, Clone, PartialEq)]
enum Call {
    Saved,
    SaveFailed,
    /// `stored`: the phase the store held, at the moment of sending, for
    /// the step this command belongs to.
    Sent {
        host: String,
        command: String,
        stored: Option<StepPhase>,
    },
}

/// A store in memory that can be made to refuse writes, and a session map
/// where every host is online.
#[derive(Default)]
struct Fake {
    stored: Mutex<HashMap<u64, Rollout>>,
    calls: Mutex<Vec<Call>>,
    refuse: AtomicBool,
}

impl Fake {
    fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    fn stored_phase(&self, host: &str, command: &Command) -> Option<StepPhase> {
        let stored = self.stored.lock().unwrap();
        stored
            .values()
            .flat_map(|r| &r.steps)
            .find(|s| {
                s.host == host
                    && s.service == command.service()
                    && (s.command_id == command.id()
                        || CommandId::is_rollback_of(command.id(), &s.command_id))
            })
            .map(|s| s.phase)
    }
}

impl engine::Online for Fake {
    fn session(&self, _host: &str) -> Option<u64> {
        Some(1)
    }
}

impl Port for Fake {
    async fn unfinished(&self) -> Result<Vec<Result<Rollout>>> {
        let stored = self.stored.lock().unwrap();
        Ok(stored.values().cloned().map(Ok).collect())
    }

    async fn load(&self, id: u64) -> Result<Option<Rollout>> {
        Ok(self.stored.lock().unwrap().get(&id).cloned())
    }

    /// Stores what the real store does: the rollout's fields and only the
    /// steps named as changed.
    async fn save(&self, rollout: &Rollout, changed: &[usize], _: Vec<LogLine>) -> Result<()> {
        if self.refuse.load(Ordering::SeqCst) {
            self.calls.lock().unwrap().push(Call::SaveFailed);
            return Err(Error::Unavailable("database or disk is full".into()));
        }
        let mut stored = self.stored.lock().unwrap();
        let mut steps = stored
            .get(&rollout.id)
            .map(|r| r.steps.clone())
            .unwrap_or_default();
        for &i in changed {
            steps[i] = rollout.steps[i].clone();
        }
        let mut r = rollout.clone();
        r.steps = steps;
        stored.insert(r.id, r);
        self.calls.lock().unwrap().push(Call::Saved);
        Ok(())
    }

    async fn send(&self, host: &str, command: Command) {
        let stored = self.stored_phase(host, &command);
        self.calls.lock().unwrap().push(Call::Sent {
            host: host.into(),
            command: command.id().into(),
            stored,
        });
    }
}

/// A rollout of `api` to `h1`, then `h2`, as the store holds it when it
/// is created.
fn two_batches(id: u64) -> Rollout {
    let plan = crate::testing::plan("api", &[&["h1"], &["h2"]]);
    crate::rollout::new_rollout(id, RolloutKind::Upgrade, plan, false, 1)
}

/// A clock tick for rollout `id`; `now`: not waiting out a backoff.
async fn tick(fake: &Fake, active: &mut Active, id: u64, now: bool) {
    drive(fake, active, id, now, |r| {
        engine::step(
            r,
            Event::Tick {
                now: now_ms(),
                online: fake,
            },
        )
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn a_command_is_sent_only_after_the_save_that_records_it_and_a_failed_save_sends_nothing() {
    let fake = Fake::default();
    let id = 7;
    fake.stored.lock().unwrap().insert(id, two_batches(id));
    let mut active: Active = HashMap::new();
    // Taken on from the store: the first batch starts.
    load(&fake, &mut active).await.unwrap();
    let install = |h: &str| CommandId::install(id, "api", h).to_string();
    let sent = |h: &str| Call::Sent {
        host: h.into(),
        command: install(h),
        stored: Some(StepPhase::Installing),
    };
    assert_eq!(fake.calls(), [Call::Saved, sent("h1")]);

    // h1 reports healthy, which starts h2's batch, but the store refuses
    // the save: nothing goes out, and the report is kept.
    fake.refuse.store(true, Ordering::SeqCst);
    let (tx, _rx) = mpsc::channel(8);
    on_reports(
        &fake,
        &mut active,
        &tx,
        vec![("h1".into(), report(&install("h1")))],
    )
    .await;
    assert_eq!(fake.calls(), [Call::Saved, sent("h1"), Call::SaveFailed]);
    assert_eq!(active[&id].held.len(), 1, "the report is kept");
    assert_eq!(
        active[&id].live.steps[0].phase,
        StepPhase::Installing,
        "back to what the store holds"
    );
    // Ticks while the save waits out its backoff send nothing either.
    tick(&fake, &mut active, id, false).await;
    assert_eq!(fake.calls().len(), 3);

    // The store takes writes again: the kept report is applied, saved,
    // and only then is h2's command sent.
    fake.refuse.store(false, Ordering::SeqCst);
    tick(&fake, &mut active, id, true).await;
    assert_eq!(
        fake.calls(),
        [
            Call::Saved,
            sent("h1"),
            Call::SaveFailed,
            Call::Saved,
            sent("h2")
        ]
    );
    let stored = fake.stored.lock().unwrap()[&id].clone();
    assert_eq!(stored.steps[0].phase, StepPhase::Healthy);
    assert!(active[&id].held.is_empty(), "stored, so no longer held");
}
