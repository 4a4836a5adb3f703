//! Data migrations run by the service binary for the controller
//! (`docs/data-migrations.md`): short commands answered at once, and `run`
//! started in its own process group and followed with `status` every
//! `data_migrate_poll` until it ends. A follow file under
//! `data-migrations/` is written before a run starts and removed when it
//! has ended, so a restarted agent finds the migration again through
//! `status` and keeps following it, or runs it again when it stopped
//! without finishing (the binary resumes from its checkpoint). What the
//! followers see is kept per migration (the latest only) until the session
//! takes it; a new session gets all of it again.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cutover_core::data_migration::{self as dm, State, Status, Verify, MAX_OUTPUT_BYTES};
use serde::{Deserialize, Serialize};

pub mod command;

use command::Program;

/// The most migrations followed at once, and follow files read at start.
pub const MAX_FOLLOWED: usize = 256;
/// `status` failures in a row after which a follower gives up (the state
/// stays `unknown`; `cutover data-migrate run` starts it again).
const MAX_FAILED_POLLS: u32 = 10;

/// What the controller asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    List,
    Status,
    Run { dry_run: bool },
    Verify,
    Pause,
    Resume,
}

/// One migration: (service, id).
pub type Key = (String, String);

#[derive(Serialize, Deserialize)]
struct FollowFile {
    service: String,
    id: String,
}

pub struct DataMigrations {
    data_dir: PathBuf,
    vars: BTreeMap<String, String>,
    poll: Duration,
    timeout: Duration,
    followed: Mutex<BTreeSet<Key>>,
    latest: Mutex<BTreeMap<Key, Status>>,
    unsent: Mutex<BTreeSet<Key>>,
    changed: tokio::sync::Notify,
}

impl DataMigrations {
    pub fn new(
        data_dir: &Path,
        vars: BTreeMap<String, String>,
        poll: Duration,
        timeout: Duration,
    ) -> Arc<DataMigrations> {
        Arc::new(DataMigrations {
            data_dir: data_dir.to_path_buf(),
            vars,
            poll,
            timeout,
            followed: Mutex::new(BTreeSet::new()),
            latest: Mutex::new(BTreeMap::new()),
            unsent: Mutex::new(BTreeSet::new()),
            changed: tokio::sync::Notify::new(),
        })
    }

    fn dir(&self) -> PathBuf {
        self.data_dir.join("data-migrations")
    }

    fn file(&self, key: &Key, ext: &str) -> PathBuf {
        self.dir().join(format!("{}.{}.{ext}", key.0, key.1))
    }

    /// Answers the controller: JSON of a `Status` (a `Verify` for verify,
    /// the `Listed` migrations for list). `Err` only for list, whose
    /// failure has no state to carry it.
    pub async fn answer(
        self: &Arc<Self>,
        service: &str,
        id: &str,
        action: Action,
    ) -> Result<String, String> {
        if action != Action::List {
            cutover_core::manifest::data_migrations::check_id(id)?;
        }
        let program = Program::locate(&self.data_dir, service, &self.vars);
        let key: Key = (service.to_string(), id.to_string());
        Ok(match action {
            Action::List => {
                let out = program?.output("", &["list"], self.timeout).await?;
                json(&dm::parse_list(&out)?)
            }
            Action::Verify => json(&match program {
                Ok(p) => match p.output(id, &["verify", id], self.timeout).await {
                    Ok(out) => dm::parse_verify(id, &out)
                        .unwrap_or_else(|e| Verify::failed(format!("verify {e}"))),
                    Err(e) => Verify::failed(e),
                },
                Err(e) => Verify::failed(e),
            }),
            Action::Status => json(&self.status(program.as_ref(), id, &["status", id]).await),
            Action::Run { dry_run: true } => json(
                &self
                    .status(program.as_ref(), id, &["run", id, "--dry-run"])
                    .await,
            ),
            Action::Pause => json(&self.status(program.as_ref(), id, &["pause", id]).await),
            Action::Resume => {
                let s = self.status(program.as_ref(), id, &["resume", id]).await;
                json(&match (program, s.state) {
                    (Ok(p), State::Pending) => self.start(p, key).await,
                    _ => s,
                })
            }
            Action::Run { dry_run: false } => json(&match program {
                Ok(p) => self.start(p, key).await,
                Err(e) => Status::unknown(e),
            }),
        })
    }

    /// What one short command says, or `unknown` with the reason.
    async fn status(&self, program: Result<&Program, &String>, id: &str, args: &[&str]) -> Status {
        let program = match program {
            Ok(p) => p,
            Err(e) => return Status::unknown(e.clone()),
        };
        match program.output(id, args, self.timeout).await {
            Ok(out) => dm::parse_status(id, &out)
                .unwrap_or_else(|e| Status::unknown(format!("`{}` {e}", args[0]))),
            Err(e) => Status::unknown(e),
        }
    }

    /// `run`, unless it has nothing to do: a migration that succeeded or
    /// is paused is left as it is, one already running (a run this agent
    /// or an earlier one started) is followed, anything else is started
    /// and followed.
    async fn start(self: &Arc<Self>, program: Program, key: Key) -> Status {
        // Claimed before the first await, so two requests at once never
        // start two runs.
        if !self.claim(&key) {
            return self
                .latest(&key)
                .unwrap_or_else(|| running(Status::unknown("")));
        }
        let before = self.status(Ok(&program), &key.1, &["status", &key.1]).await;
        match before.state {
            State::Succeeded | State::Paused | State::Unknown => {
                self.release(&key);
                return before;
            }
            State::Running => {
                self.follow(program, key, None, before.clone());
                return before;
            }
            State::Pending | State::Failed => {}
        }
        match self.spawn(&program, &key) {
            Ok(child) => {
                let now = running(before);
                self.follow(program, key, Some(child), now.clone());
                now
            }
            Err(e) => {
                self.release(&key);
                Status::unknown(e)
            }
        }
    }

    /// Marks `key` followed; false when it is already, or when as many
    /// as may be are.
    fn claim(&self, key: &Key) -> bool {
        let mut followed = self.followed.lock().unwrap_or_else(|p| p.into_inner());
        if followed.contains(key) || followed.len() >= MAX_FOLLOWED {
            return false;
        }
        followed.insert(key.clone())
    }

    fn release(&self, key: &Key) {
        self.followed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
    }

    /// Writes the follow file, then starts the run.
    fn spawn(&self, program: &Program, key: &Key) -> Result<tokio::process::Child, String> {
        let dir = self.dir();
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let follow = serde_json::to_vec(&FollowFile {
            service: key.0.clone(),
            id: key.1.clone(),
        })
        .map_err(|e| e.to_string())?;
        let path = self.file(key, "json");
        cutover_core::fsutil::write_atomic(&path, &follow, 0o600)
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        program.start_run(&key.1, &self.file(key, "out"), &self.file(key, "err"))
    }

    /// Follows one migration (claimed) until it ends, in a task of its own;
    /// its follow file goes once it has ended.
    fn follow(
        self: &Arc<Self>,
        program: Program,
        key: Key,
        child: Option<tokio::process::Child>,
        now: Status,
    ) {
        self.publish(&key, now);
        let this = self.clone();
        tokio::spawn(async move {
            // A follower that gave up keeps its file: the next agent
            // start looks again.
            if this.follow_until_done(&program, &key, child).await {
                let _ = std::fs::remove_file(this.file(&key, "json"));
            }
            this.release(&key);
        });
    }

    async fn follow_until_done(
        &self,
        program: &Program,
        key: &Key,
        mut child: Option<tokio::process::Child>,
    ) -> bool {
        let id = key.1.as_str();
        let mut failed_polls = 0;
        loop {
            if let Some(c) = child.as_mut() {
                tokio::select! {
                    exit = c.wait() => {
                        let end = self.ended(key, exit);
                        child = None;
                        // A run that found another one working ends at
                        // once: follow that one instead.
                        if end.state != State::Running {
                            self.publish(key, end);
                            return true;
                        }
                    }
                    _ = tokio::time::sleep(self.poll) => {}
                }
            } else {
                tokio::time::sleep(self.poll).await;
            }
            let now = self.status(Ok(program), id, &["status", id]).await;
            match now.state {
                State::Unknown => {
                    failed_polls += 1;
                    // A run of ours is waited for whatever status says:
                    // its exit is the last word.
                    if failed_polls >= MAX_FAILED_POLLS && child.is_none() {
                        self.publish(key, now);
                        return false;
                    }
                    continue;
                }
                State::Running => self.publish(key, now),
                // Not yet running (the run has not taken its lock yet).
                State::Pending if child.is_some() => {}
                // Found again after a restart, or its run died: run it
                // again, from its checkpoint.
                State::Pending => match self.spawn(program, key) {
                    Ok(c) => child = Some(c),
                    Err(e) => {
                        self.publish(key, Status::unknown(e));
                        return false;
                    }
                },
                State::Paused | State::Succeeded | State::Failed if child.is_none() => {
                    self.publish(key, now);
                    return true;
                }
                // Its run says last, when it exits.
                _ => {}
            }
            failed_polls = 0;
        }
    }

    /// What a run printed when it exited.
    fn ended(&self, key: &Key, exit: std::io::Result<std::process::ExitStatus>) -> Status {
        let stderr = command::read_file(&self.file(key, "err"), 1 << 20).unwrap_or_default();
        match exit {
            Ok(s) if s.success() => {
                match command::read_file(&self.file(key, "out"), MAX_OUTPUT_BYTES) {
                    Ok(out) => dm::parse_status(&key.1, &out)
                        .unwrap_or_else(|e| Status::unknown(format!("`run` {e}"))),
                    Err(e) => Status::unknown(e),
                }
            }
            Ok(s) => Status::unknown(format!(
                "`data-migrate run {}` ended with {}{}",
                key.1,
                s.code()
                    .map(|c| format!("exit status {c}"))
                    .unwrap_or_else(|| "a signal".into()),
                command::last_line(&stderr)
            )),
            Err(e) => Status::unknown(format!("waiting for `data-migrate run {}`: {e}", key.1)),
        }
    }

    fn publish(&self, key: &Key, status: Status) {
        self.latest
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key.clone(), status);
        self.unsent
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key.clone());
        self.changed.notify_one();
    }

    fn latest(&self, key: &Key) -> Option<Status> {
        self.latest
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .cloned()
    }

    /// What changed since last taken, once something has; cancel-safe.
    pub async fn updates(&self) -> Vec<(Key, Status)> {
        loop {
            let keys = std::mem::take(&mut *self.unsent.lock().unwrap_or_else(|p| p.into_inner()));
            if !keys.is_empty() {
                let latest = self.latest.lock().unwrap_or_else(|p| p.into_inner());
                return keys
                    .into_iter()
                    .filter_map(|k| latest.get(&k).cloned().map(|s| (k, s)))
                    .collect();
            }
            self.changed.notified().await;
        }
    }

    /// A new session: everything seen goes again.
    pub fn resend(&self) {
        let keys: BTreeSet<Key> = self
            .latest
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect();
        if !keys.is_empty() {
            self.unsent
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend(keys);
            self.changed.notify_one();
        }
    }

    /// At start: follows again every migration a follow file names.
    pub fn recover(self: &Arc<Self>) {
        let Ok(entries) = std::fs::read_dir(self.dir()) else {
            return;
        };
        for e in entries.flatten().take(4 * MAX_FOLLOWED) {
            let path = e.path();
            if path.extension().and_then(|x| x.to_str()) != Some("json") {
                continue;
            }
            let found = command::read_file(&path, 4096)
                .and_then(|b| serde_json::from_slice::<FollowFile>(&b).map_err(|e| e.to_string()));
            let key = match found {
                Ok(f)
                    if cutover_core::manifest::data_migrations::check_id(&f.id).is_ok()
                        && cutover_core::names::validate("service", &f.service).is_ok() =>
                {
                    (f.service, f.id)
                }
                // Kept, and said: it is not ours to delete on doubt.
                Ok(_) | Err(_) => {
                    tracing::warn!(file = %path.display(), "unreadable data migration follow file; left in place");
                    continue;
                }
            };
            match Program::locate(&self.data_dir, &key.0, &self.vars) {
                Ok(p) => {
                    tracing::info!(service = %key.0, id = %key.1, "following a data migration again");
                    if self.claim(&key) {
                        self.follow(p, key, None, running(Status::unknown("")));
                    }
                }
                Err(e) => {
                    tracing::warn!(service = %key.0, id = %key.1, error = %e, "cannot follow a data migration again");
                    self.publish(&key, Status::unknown(e));
                }
            }
        }
    }
}

/// `s` as a run that has just started (or been found) says it.
fn running(mut s: Status) -> Status {
    s.state = State::Running;
    s.reason = None;
    s.interrupted = false;
    s
}

/// An answer as the reply carries it (these types always serialise).
fn json<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

#[cfg(test)]
mod tests;
