//! Hosts and the fleet overview as `-o json` prints them
//! (`docs/json/hosts.schema.json`, `status.schema.json`).

use serde::Serialize;

use cutover_core::views::{ChannelView, HostView, InstalledService, ReleaseView};

/// A service's state as its agent said it (`running`, `not running`,
/// `journal unreadable`), as one snake_case word (`not_running`), the
/// contract's form for text and JSON alike; whatever an agent sends that
/// is not a letter or digit becomes `_`, and nothing becomes `unknown`.
pub fn word_state(s: &mut InstalledService) {
    let word: String = s
        .state
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    s.state = if word.is_empty() {
        "unknown".into()
    } else {
        word
    };
}

/// `online`, `offline` or `revoked`, as the text's STATE column says.
pub fn host_state(h: &HostView) -> &'static str {
    if h.revoked {
        "revoked"
    } else if h.online {
        "online"
    } else {
        "offline"
    }
}

/// One host of `hosts` and `status`: its record, and its state in one word.
#[derive(Serialize)]
pub struct HostDoc<'a> {
    state: &'static str,
    #[serde(flatten)]
    host: &'a HostView,
}

impl<'a> HostDoc<'a> {
    pub fn of(h: &'a HostView) -> HostDoc<'a> {
        HostDoc {
            state: host_state(h),
            host: h,
        }
    }
}

/// `status`: counts, then every host, channel and release.
#[derive(Serialize)]
pub struct StatusDoc<'a> {
    pub hosts_online: usize,
    pub hosts_offline: usize,
    pub hosts_revoked: usize,
    pub hosts: Vec<HostDoc<'a>>,
    pub channels: &'a [ChannelView],
    pub releases: &'a [ReleaseView],
}

impl<'a> StatusDoc<'a> {
    pub fn of(
        hosts: &'a [HostView],
        channels: &'a [ChannelView],
        releases: &'a [ReleaseView],
    ) -> StatusDoc<'a> {
        let count = |s: &str| hosts.iter().filter(|h| host_state(h) == s).count();
        StatusDoc {
            hosts_online: count("online"),
            hosts_offline: count("offline"),
            hosts_revoked: count("revoked"),
            hosts: hosts.iter().map(HostDoc::of).collect(),
            channels,
            releases,
        }
    }
}
