//! What a service binary says about a data migration
//! (`docs/data-migrations.md`): its state, progress and last error, and
//! what `verify` checked. The agent reads the binary's output into these
//! (bounded, and anything off the protocol is [`State::Unknown`] with the
//! reason); the controller stores them and gates on [`Record::ready`].

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::views::{bounded, limits};

/// The most bytes of stdout a data-migrate command may print.
pub const MAX_OUTPUT_BYTES: usize = 64 << 10;
/// The most checks one verify may list.
pub const MAX_CHECKS: usize = 64;
/// The most migrations `list` may name.
pub const MAX_LISTED: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Pending,
    Running,
    Paused,
    Succeeded,
    Failed,
    /// cutover cannot tell: the host is away, the binary lacks the
    /// protocol, or what it printed was off it. The reason says which.
    Unknown,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Running => "running",
            State::Paused => "paused",
            State::Succeeded => "succeeded",
            State::Failed => "failed",
            State::Unknown => "unknown",
        }
    }

    fn parse(s: &str) -> Option<State> {
        [
            State::Pending,
            State::Running,
            State::Paused,
            State::Succeeded,
            State::Failed,
        ]
        .into_iter()
        .find(|x| x.as_str() == s)
    }
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One observation of a migration: what `status` (or `run`, `pause`,
/// `resume`) printed, or why there is none.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub state: State,
    #[serde(default)]
    pub done: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total: Option<u64>,
    /// Rows per second, while running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<f64>,
    /// The binary's last error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Why the state is unknown (only then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// A run stopped without finishing or pausing.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub interrupted: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pause_requested: bool,
    /// `run --dry-run`: the rows a run would move now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub would_move: Option<u64>,
}

impl Status {
    pub fn unknown(reason: impl Into<String>) -> Status {
        Status {
            state: State::Unknown,
            done: 0,
            total: None,
            rate: None,
            error: None,
            reason: Some(bounded(&reason.into(), limits::DETAIL).into_owned()),
            interrupted: false,
            pause_requested: false,
            would_move: None,
        }
    }

    /// Bounds what came over the wire as it bounds what a binary prints.
    pub fn bound(mut self) -> Status {
        let cut = |s: &mut Option<String>| {
            if let Some(t) = s {
                *t = bounded(t, limits::DETAIL).into_owned();
            }
        };
        cut(&mut self.error);
        cut(&mut self.reason);
        if self.rate.is_some_and(|r| !r.is_finite() || r < 0.0) {
            self.rate = None;
        }
        self
    }

    /// `12000/1000000 rows (1.2%), 48211 rows/s`.
    pub fn progress(&self) -> String {
        let mut out = match self.total {
            Some(t) if t > 0 => format!(
                "{}/{t} rows ({:.1}%)",
                self.done,
                self.done as f64 * 100.0 / t as f64
            ),
            Some(t) => format!("{}/{t} rows", self.done),
            None => format!("{} rows", self.done),
        };
        if let Some(r) = self.rate {
            out.push_str(&format!(", {r:.0} rows/s"));
        }
        out
    }
}

/// One named check of a verify, with the value it expected and found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Check {
    pub name: String,
    pub expected: String,
    pub actual: String,
    pub ok: bool,
}

/// What `verify` found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verify {
    /// Whether the verify passed: at least one check, every check ok, the
    /// binary said ok and the state is `succeeded`. Computed here, not
    /// taken from the binary alone.
    pub ok: bool,
    pub state: State,
    pub checks: Vec<Check>,
    /// Set when there is no verdict (the binary failed or was off the
    /// protocol): then `ok` is false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl Verify {
    pub fn failed(reason: impl Into<String>) -> Verify {
        Verify {
            ok: false,
            state: State::Unknown,
            checks: Vec::new(),
            reason: Some(bounded(&reason.into(), limits::DETAIL).into_owned()),
        }
    }

    /// The checks that failed, as `name: expected E, found A`.
    pub fn failures(&self) -> Vec<String> {
        self.checks
            .iter()
            .filter(|c| !c.ok)
            .map(|c| format!("{}: expected {}, found {}", c.name, c.expected, c.actual))
            .collect()
    }

    /// Re-derives `ok` and bounds the strings of a verify from the wire.
    pub fn bound(mut self) -> Verify {
        self.checks.truncate(MAX_CHECKS);
        for c in &mut self.checks {
            for s in [&mut c.name, &mut c.expected, &mut c.actual] {
                *s = bounded(s, limits::SHORT).into_owned();
            }
        }
        if let Some(r) = &mut self.reason {
            *r = bounded(r, limits::DETAIL).into_owned();
        }
        self.ok = self.ok
            && self.reason.is_none()
            && self.state == State::Succeeded
            && !self.checks.is_empty()
            && self.checks.iter().all(|c| c.ok);
        self
    }
}

/// One migration `list` names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Listed {
    pub id: String,
    #[serde(default)]
    pub description: String,
}

/// The one JSON object a command printed, or why it is not one.
fn object(stdout: &[u8]) -> Result<serde_json::Map<String, serde_json::Value>, String> {
    if stdout.len() > MAX_OUTPUT_BYTES {
        return Err(format!(
            "printed more than {MAX_OUTPUT_BYTES} bytes on stdout; the protocol is one JSON object"
        ));
    }
    let text = std::str::from_utf8(stdout).map_err(|_| "printed bytes that are not UTF-8")?;
    match serde_json::from_str::<serde_json::Value>(text.trim()) {
        Ok(serde_json::Value::Object(m)) => Ok(m),
        Ok(_) => Err("printed JSON that is not an object".into()),
        Err(_) if text.trim().is_empty() => Err("printed nothing on stdout".into()),
        Err(e) => Err(format!(
            "printed something that is not one JSON object ({e}): {}",
            crate::text::shown(text.trim(), 120)
        )),
    }
}

fn count(m: &serde_json::Map<String, serde_json::Value>, key: &str) -> Result<Option<u64>, String> {
    match m.get(key) {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .map(Some)
            .ok_or_else(|| format!("`{key}` is {v}, not a count of rows")),
    }
}

fn text(m: &serde_json::Map<String, serde_json::Value>, key: &str) -> Option<String> {
    m.get(key)
        .and_then(|v| v.as_str())
        .map(|s| bounded(s, limits::DETAIL).into_owned())
}

fn flag(m: &serde_json::Map<String, serde_json::Value>, key: &str) -> bool {
    m.get(key).and_then(|v| v.as_bool()).unwrap_or(false)
}

fn state(m: &serde_json::Map<String, serde_json::Value>) -> Result<State, String> {
    let s = m
        .get("state")
        .and_then(|v| v.as_str())
        .ok_or("no `state`")?;
    State::parse(s).ok_or_else(|| {
        format!(
            "state {} is not one of pending, running, paused, succeeded, failed",
            crate::text::shown(s, 32)
        )
    })
}

/// What `status ID` (or `run`, `pause`, `resume`) printed, for `id`.
pub fn parse_status(id: &str, stdout: &[u8]) -> Result<Status, String> {
    let m = object(stdout)?;
    check_about(&m, id)?;
    let rate = m.get("rate").and_then(|v| v.as_f64());
    Ok(Status {
        state: state(&m)?,
        done: count(&m, "done")?.unwrap_or(0),
        total: count(&m, "total")?,
        rate,
        error: text(&m, "error"),
        reason: None,
        interrupted: flag(&m, "interrupted"),
        pause_requested: flag(&m, "pause_requested"),
        would_move: count(&m, "would_move")?,
    }
    .bound())
}

/// What `verify ID` printed.
pub fn parse_verify(id: &str, stdout: &[u8]) -> Result<Verify, String> {
    let m = object(stdout)?;
    check_about(&m, id)?;
    let checks = m
        .get("checks")
        .and_then(|v| v.as_array())
        .ok_or("no `checks` list")?;
    if checks.len() > MAX_CHECKS {
        return Err(format!(
            "{} checks, at most {MAX_CHECKS} are read",
            checks.len()
        ));
    }
    let checks = checks
        .iter()
        .map(|c| serde_json::from_value::<Check>(c.clone()).map_err(|e| format!("a check: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    let ok = m
        .get("ok")
        .and_then(|v| v.as_bool())
        .ok_or("no `ok` (true or false)")?;
    Ok(Verify {
        ok,
        state: state(&m)?,
        checks,
        reason: None,
    }
    .bound())
}

/// What `list` printed.
pub fn parse_list(stdout: &[u8]) -> Result<Vec<Listed>, String> {
    let m = object(stdout)?;
    let list = m
        .get("migrations")
        .and_then(|v| v.as_array())
        .ok_or("no `migrations` list")?;
    if list.len() > MAX_LISTED {
        return Err(format!(
            "{} migrations listed, at most {MAX_LISTED} are read",
            list.len()
        ));
    }
    list.iter()
        .map(|v| {
            let l: Listed =
                serde_json::from_value(v.clone()).map_err(|e| format!("a migration: {e}"))?;
            Ok(Listed {
                id: bounded(&l.id, limits::SHORT).into_owned(),
                description: bounded(&l.description, limits::DETAIL).into_owned(),
            })
        })
        .collect()
}

/// A document about another migration is not an answer about this one.
fn check_about(m: &serde_json::Map<String, serde_json::Value>, id: &str) -> Result<(), String> {
    match m.get("id").and_then(|v| v.as_str()) {
        Some(said) if said == id => Ok(()),
        Some(said) => Err(format!(
            "answered about {}, not {id}",
            crate::text::shown(said, 64)
        )),
        None => Err("no `id`".into()),
    }
}

/// What the controller keeps of one (service, id): the last observation,
/// when it changed, and the last verify.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub service: String,
    pub id: String,
    pub status: Status,
    /// The host that ran or reported it last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
    /// When it was first seen `succeeded` (since it last was not).
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub finished_at: Option<OffsetDateTime>,
    #[serde(default)]
    pub verify: Option<Verify>,
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub verified_at: Option<OffsetDateTime>,
    /// The operator who asked for its last run, pause, resume or verify.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_by: Option<String>,
}

impl Record {
    /// `SERVICE.ID`, as operators name it.
    pub fn key(&self) -> String {
        format!("{}.{}", self.service, self.id)
    }

    /// `prev` after `host` said `status` at `now`, and the event detail
    /// when the state changed (progress alone is no event). `finished_at`
    /// is when it turned `succeeded`, kept while it stays so.
    pub fn observe(
        prev: Option<Record>,
        (service, id): (&str, &str),
        host: &str,
        status: Status,
        now: OffsetDateTime,
    ) -> (Record, Option<String>) {
        let was = prev.as_ref().map(|r| r.status.state);
        let mut r = prev.unwrap_or_else(|| Record {
            service: service.to_string(),
            id: id.to_string(),
            status: status.clone(),
            host: None,
            updated_at: now,
            finished_at: None,
            verify: None,
            verified_at: None,
            requested_by: None,
        });
        // A dry run's answer is no change of state; nor is a failed look
        // at one that has ended (the database holds it, not the host).
        let dry = status.would_move.is_some();
        let ended = matches!(was, Some(State::Succeeded | State::Paused | State::Failed));
        if dry || (status.state == State::Unknown && ended) {
            return (r, None);
        }
        r.finished_at = match (status.state, was) {
            (State::Succeeded, Some(State::Succeeded)) => r.finished_at.or(Some(now)),
            (State::Succeeded, _) => Some(now),
            _ => None,
        };
        r.status = status;
        r.host = Some(host.to_string());
        r.updated_at = now;
        let event = (was != Some(r.status.state)).then(|| {
            let mut d = format!(
                "{}: {} -> {} on {host} ({})",
                r.key(),
                was.map_or("untracked", State::as_str),
                r.status.state,
                r.status.progress()
            );
            let why = r.status.reason.as_ref().or(r.status.error.as_ref());
            if let Some(why) = why.filter(|w| !w.is_empty()) {
                d.push_str(&format!(": {why}"));
            }
            if let Some(by) = &r.requested_by {
                d.push_str(&format!(" (last asked by {by})"));
            }
            d
        });
        (r, event)
    }

    /// Whether what waits for this migration may go: it succeeded and a
    /// verify made after it finished passed. Otherwise why not, in words
    /// that end a sentence starting "data migration KEY " (`SERVICE.ID`).
    pub fn ready(key: &str, record: Option<&Record>) -> Result<(), String> {
        let Some(r) = record else {
            return Err(format!("has never run (its state is unknown to cutover): run it with `cutover data-migrate run {key} --wait`, then `cutover data-migrate verify {key}`"));
        };
        let s = &r.status;
        match s.state {
            State::Succeeded => {}
            State::Unknown => {
                return Err(format!(
                    "is in state unknown ({}); bring its host back or run `cutover data-migrate status {key}` again",
                    s.reason.as_deref().unwrap_or("no reason given")
                ))
            }
            State::Failed => {
                return Err(format!(
                    "failed ({}); fix the cause and run `cutover data-migrate run {key}` again",
                    s.error.as_deref().unwrap_or("no error given")
                ))
            }
            other => {
                return Err(format!(
                    "is {other} ({}), not succeeded; let it finish, then verify it",
                    s.progress()
                ))
            }
        }
        let finished = r.finished_at.unwrap_or(r.updated_at);
        match (&r.verify, r.verified_at) {
            (Some(v), Some(at)) if at >= finished && v.ok => Ok(()),
            (Some(v), Some(at)) if at >= finished => Err(match &v.reason {
                Some(reason) => format!("succeeded but its verify gave no verdict ({reason}); run `cutover data-migrate verify {key}` again"),
                None => format!(
                    "succeeded but its verify failed: {}",
                    v.failures().join("; ")
                ),
            }),
            _ => Err(format!("succeeded but has not been verified since it finished: run `cutover data-migrate verify {key}`")),
        }
    }
}

#[cfg(test)]
mod tests;

/// One data migration as `cutover data-migrate list` shows it: what the
/// releases declare and what the controller last saw.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub service: String,
    pub id: String,
    pub database: String,
    pub description: String,
    /// The releases declaring it, oldest first.
    pub declared_in: Vec<String>,
    /// Releases whose contract waits for it.
    pub required_before_contract_of: Vec<String>,
    /// No upgrade to this release or a later one starts before it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub required_before_upgrade_to: Option<String>,
    /// Never run (as far as this controller knows) when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record: Option<Record>,
    /// Succeeded and verified since: what waits for it may go.
    pub ready: bool,
    /// Why not, when not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_ready: Option<String>,
}

/// A data migration a plan (or a contract) waits for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Required {
    /// `SERVICE.ID`.
    pub key: String,
    pub database: String,
    /// `contract of 2.0.0` or `upgrade to 3.0.0`.
    pub before: String,
    /// The state last seen; absent: never run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<State>,
    pub ready: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_ready: Option<String>,
}
