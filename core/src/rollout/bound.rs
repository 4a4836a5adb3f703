//! Bounds on what a report carries: every free text of its evidence and
//! inventory is cut to its limit at a character boundary, with a marker,
//! on the way out of an agent and on the way into the controller, so no
//! report either side builds can exceed the session's message limit.

use super::{Evidence, Report};
use crate::views::{bound, limits};

impl Evidence {
    /// The gate that said no and why, with nothing measured; both bounded
    /// (a detail may quote a peer's file name or output).
    pub fn new(gate: &str, detail: impl Into<String>) -> Evidence {
        let mut e = Evidence {
            gate: gate.into(),
            detail: detail.into(),
            ..Evidence::default()
        };
        e.bound();
        e
    }

    /// Cuts every text to its bound ([`limits`]) at a character boundary,
    /// with a marker. Reports go through this before they leave an agent
    /// and when they enter the controller, so evidence of any size (a
    /// 5 MiB file name in an unpack error) can never make a message the
    /// other side refuses.
    pub fn bound(&mut self) {
        bound(&mut self.gate, limits::SHORT);
        bound(&mut self.detail, limits::DETAIL);
        if let Some(c) = &mut self.check {
            bound(c, limits::SHORT);
        }
        bound(&mut self.output, limits::OUTPUT);
    }
}

impl Report {
    /// The report with its evidence and free text bounded (see
    /// [`Evidence::bound`]); ids, names and identities are checked where
    /// they enter, never cut.
    pub fn bound(&mut self) {
        if let Some(e) = &mut self.evidence {
            e.bound();
        }
        self.installed.bound();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::views::InstalledService;

    #[test]
    fn evidence_of_any_size_is_bounded_by_its_constructor_and_by_bound() {
        let huge = "n".repeat(5 << 20);
        let e = Evidence::new("unpack", format!("entry {huge}: name too long"));
        assert!(e.detail.len() <= limits::DETAIL, "{}", e.detail.len());
        assert!(e.detail.starts_with("entry nnn"));
        assert!(e.detail.ends_with(crate::views::TRUNCATED));

        let mut r = Report {
            command_id: "r1-api-h".into(),
            service: "api".into(),
            ok: false,
            evidence: Some(Evidence {
                gate: huge.clone(),
                detail: huge.clone(),
                check: Some(huge.clone()),
                output: huge.clone(),
                ..Evidence::default()
            }),
            installed: InstalledService {
                name: "api".into(),
                current: None,
                previous: None,
                state: huge,
                health: Default::default(),
            },
            auto_rolled_back: false,
            fetched_bytes: 0,
            restarted: false,
            duration_ms: 0,
        };
        r.bound();
        let e = r.evidence.as_ref().unwrap();
        assert!(e.gate.len() <= limits::SHORT && e.detail.len() <= limits::DETAIL);
        assert!(e.check.as_ref().unwrap().len() <= limits::SHORT);
        assert!(e.output.len() <= limits::OUTPUT);
        assert!(r.installed.state.len() <= limits::SHORT);
    }
}
