//! Hosts and the fleet overview as `-o json` prints them
//! (`docs/json/hosts.schema.json`, `status.schema.json`).

use serde::Serialize;

use cutover_core::views::{ChannelView, HostView, InstalledService, ReleaseView};

/// A service's state as its agent said it, in the contract's form for
/// text and JSON alike: the words cutover's agents use (`running`, `not
/// running`, `journal unreadable`) as one snake_case word (`not_running`).
/// Anything else an agent sends is kept as it came (bounded by the
/// controller, escaped by the text printer), so nothing it said is hidden.
pub fn word_state(s: &mut InstalledService) {
    let words = !s.state.is_empty() && s.state.bytes().all(|b| b.is_ascii_lowercase() || b == b' ');
    if words {
        s.state = s.state.trim().replace(' ', "_");
    }
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

#[cfg(test)]
mod tests {
    fn word(state: &str) -> String {
        let mut s = cutover_core::views::InstalledService {
            name: "api".into(),
            current: None,
            previous: None,
            state: state.into(),
            health: Default::default(),
        };
        super::word_state(&mut s);
        s.state
    }

    #[test]
    fn an_agents_words_become_one_word_and_anything_else_is_kept_as_sent() {
        assert_eq!(word("running"), "running");
        assert_eq!(word("not running"), "not_running");
        assert_eq!(word("journal unreadable"), "journal_unreadable");
        assert_eq!(word("running\u{1b}[2J"), "running\u{1b}[2J");
        assert_eq!(word("Weird State…[truncated]"), "Weird State…[truncated]");
        assert_eq!(word(""), "");
    }
}
