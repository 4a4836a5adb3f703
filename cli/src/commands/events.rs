//! `cutover events`: the controller's event log, once or followed live
//! (`--follow`), optionally from a point in time (`--since`).

use std::time::Duration;

use cutover_core::rollout::EventView;
use cutover_core::views::now_ms;
use cutover_proto::v1;

use super::rollout::{decode, print_event};
use crate::client::ConnectArgs;
use crate::doc::rollout::EventDoc;
use crate::error::{Error, Result};
use crate::output::{self, Format};

/// How often `--follow` asks the controller for new events.
const POLL: Duration = Duration::from_millis(500);
/// The furthest back `--since` reaches.
const MAX_SINCE: Duration = Duration::from_secs(366 * 24 * 3600);

/// What `cutover events` was asked for.
pub struct EventsArgs {
    pub rollout: Option<u64>,
    pub limit: u32,
    pub since: Option<Since>,
    pub follow: bool,
}

/// `--since`: a duration back from now or an RFC 3339 time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Since {
    Ago(Duration),
    At(time::OffsetDateTime),
}

impl Since {
    /// Parses `--since` (clap's value parser): `10m`, `2h 30m`, or
    /// `2026-11-30T12:00:00Z`; a duration at most 366 days, a time not
    /// in the future.
    pub fn parse(text: &str) -> std::result::Result<Since, String> {
        if let Ok(at) =
            time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        {
            if at > time::OffsetDateTime::now_utc() + time::Duration::minutes(1) {
                return Err(format!(
                    "{text} is in the future; no event is stored there yet"
                ));
            }
            return Ok(Since::At(at));
        }
        let ago = humantime::parse_duration(text).map_err(|e| {
            format!("{e}; give a duration back from now (10m, 2h) or an RFC 3339 time (2026-11-30T12:00:00Z)")
        })?;
        if ago > MAX_SINCE {
            return Err(format!(
                "{} is more than a year back; give at most 366d",
                humantime::format_duration(ago)
            ));
        }
        Ok(Since::Ago(ago))
    }

    /// Milliseconds since the epoch, at `now_ms`; never below 1 (0 means
    /// "no bound" on the wire).
    fn at_ms(self, now_ms: i64) -> i64 {
        let ms = match self {
            Since::Ago(d) => {
                now_ms.saturating_sub(i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            }
            Since::At(t) => i64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(0),
        };
        ms.max(1)
    }
}

/// `cutover events`: prints the newest `limit` events (since `--since`),
/// then with `--follow` every new one as it is stored, until the reader
/// closes the pipe (exit 0) or Ctrl-C (exit 130). Followed in JSON, each
/// event is one JSON object on one line.
pub async fn events(c: &ConnectArgs, args: EventsArgs, out: Format) -> Result<()> {
    let mut op = c.operator().await?;
    let request = |after_id: u64, since_ms: i64| v1::EventsRequest {
        rollout: args.rollout.unwrap_or(0),
        limit: args.limit,
        after_id,
        since_ms,
    };
    let since_ms = args.since.map(|s| s.at_ms(now_ms())).unwrap_or(0);
    if !args.follow {
        let doc = op.events(request(0, since_ms)).await?.into_inner();
        let events: Vec<EventView> = decode("events", doc)?;
        if out == Format::Json {
            output::json(&events.iter().map(EventDoc::of).collect::<Vec<_>>());
        } else {
            events.iter().for_each(print_event);
        }
        return Ok(());
    }
    // Listening before the first poll: Ctrl-C is never the default action.
    let mut interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .map_err(|e| Error::Failed(format!("cannot listen for Ctrl-C: {e}")))?;
    let follow = async {
        let mut last_id = 0u64;
        loop {
            let doc = op.events(request(last_id, since_ms)).await?.into_inner();
            let events: Vec<EventView> = decode("events", doc)?;
            for e in &events {
                print_followed(e, out);
                last_id = last_id.max(e.id);
            }
            // A full page: more may be waiting, ask again at once.
            if events.len() < args.limit.max(1) as usize || last_id == 0 {
                tokio::time::sleep(POLL).await;
            }
            if last_id == 0 && !events.is_empty() {
                return Err(Error::Failed(
                    "the controller does not number its events; --follow needs a newer controller"
                        .into(),
                ));
            }
        }
    };
    tokio::select! {
        r = follow => r,
        _ = interrupt.recv() => Err(Error::Stopped),
    }
}

fn print_followed(e: &EventView, out: Format) {
    match out {
        Format::Text => print_event(e),
        Format::Json => output::json_line(&EventDoc::of(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_is_a_bounded_duration_back_or_an_rfc3339_time() {
        assert_eq!(
            Since::parse("10m"),
            Ok(Since::Ago(Duration::from_secs(600)))
        );
        assert!(matches!(
            Since::parse("2020-01-01T00:00:00Z"),
            Ok(Since::At(_))
        ));
        assert!(Since::parse("400d")
            .unwrap_err()
            .contains("more than a year"));
        assert!(Since::parse("yesterday").is_err());
        assert!(Since::parse("2999-01-01T00:00:00Z")
            .unwrap_err()
            .contains("in the future"));
        assert_eq!(Since::Ago(Duration::from_secs(1)).at_ms(10_000), 9_000);
        // Never 0 (no bound) nor negative.
        assert_eq!(Since::Ago(MAX_SINCE).at_ms(5), 1);
        let t = Since::parse("2020-01-01T00:00:00Z").unwrap();
        assert_eq!(t.at_ms(0), 1_577_836_800_000);
    }
}
