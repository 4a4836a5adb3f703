//! Bounds on every duration, count and check target a fleet file sets,
//! checked at parse time so nothing later (deadlines, sleeps, batches) can
//! overflow on them or probe another machine.

use std::time::Duration;

/// The range one duration of the fleet file must fall in. Every duration
/// the file sets has one, checked at parse time, so no later arithmetic on
/// it (deadlines, sleeps) can overflow.
#[derive(Debug, Clone, Copy)]
pub struct DurationBound {
    pub min: Duration,
    pub max: Duration,
}

impl DurationBound {
    pub fn check(&self, key: &str, value: Duration) -> std::result::Result<(), String> {
        if value < self.min || value > self.max {
            return Err(format!(
                "{key} = \"{}\": must be between {} and {}",
                show_duration(value),
                show_duration(self.min),
                show_duration(self.max)
            ));
        }
        Ok(())
    }
}

/// `stop_grace`: from an immediate kill to an hour of graceful stop.
pub const STOP_GRACE: DurationBound = DurationBound {
    min: Duration::ZERO,
    max: Duration::from_secs(3600),
};
/// `min_healthy_time`: zero (healthy at the first pass) to an hour.
pub const MIN_HEALTHY_TIME: DurationBound = DurationBound {
    min: Duration::ZERO,
    max: Duration::from_secs(3600),
};
/// `healthy_deadline`: long enough for one probe, at most a day.
pub const HEALTHY_DEADLINE: DurationBound = DurationBound {
    min: Duration::from_millis(100),
    max: Duration::from_secs(24 * 3600),
};
/// `policy.step_deadline`: at least a second, at most two days (a day of
/// health window plus a day to download).
pub const STEP_DEADLINE: DurationBound = DurationBound {
    min: Duration::from_secs(1),
    max: Duration::from_secs(48 * 3600),
};
/// A check's `interval`.
pub const CHECK_INTERVAL: DurationBound = DurationBound {
    min: Duration::from_millis(10),
    max: Duration::from_secs(3600),
};
/// A check's `timeout`.
pub const CHECK_TIMEOUT: DurationBound = DurationBound {
    min: Duration::from_millis(10),
    max: Duration::from_secs(600),
};
/// A check's `startup_grace`: up to the longest `healthy_deadline`.
pub const STARTUP_GRACE: DurationBound = DurationBound {
    min: Duration::ZERO,
    max: Duration::from_secs(24 * 3600),
};
/// A check's `failure_threshold`: consecutive failures, 1 to 1000.
pub const MAX_FAILURE_THRESHOLD: usize = 1000;
/// `policy.canary`, `max_parallel` and `max_unavailable`: hosts at once.
pub const MAX_BATCH_HOSTS: usize = 100_000;
/// Hosts the `[hosts]` table may name.
pub const MAX_HOSTS: usize = 100_000;
/// Services the `[services]` table may name.
pub const MAX_SERVICES: usize = 10_000;
/// Health checks of one service.
pub const MAX_CHECKS: usize = 32;
/// Entries of one list or table (labels, hosts, args, env, ports, mounts).
pub const MAX_ENTRIES: usize = 100_000;
/// Bytes of one string value (a command, an argument, a URL).
pub const MAX_TEXT: usize = 16 * 1024;
/// A container's memory limit: 4 MiB (Docker's own floor) to 16 TiB.
pub const CONTAINER_MEMORY: (i64, i64) = (4 << 20, 16 << 40);
/// A container's CPU limit in cores.
pub const CONTAINER_CPUS: (f64, f64) = (0.01, 1024.0);

/// A duration as an operator writes it: the largest unit that divides it
/// exactly, so bounds read `24h`, `100ms`, and a hostile value shows whole.
pub fn show_duration(d: Duration) -> String {
    let nanos = d.as_nanos();
    for (unit, per) in [
        ("h", 3_600_000_000_000u128),
        ("m", 60_000_000_000),
        ("s", 1_000_000_000),
        ("ms", 1_000_000),
        ("us", 1_000),
    ] {
        if nanos != 0 && nanos.is_multiple_of(per) {
            return format!("{}{unit}", nanos / per);
        }
    }
    if nanos == 0 {
        return "0s".into();
    }
    format!("{nanos}ns")
}

pub(super) fn check_count(
    key: &str,
    n: usize,
    min: usize,
    max: usize,
) -> std::result::Result<(), String> {
    if n < min || n > max {
        return Err(format!("{key} = {n}: must be between {min} and {max}"));
    }
    Ok(())
}

pub(super) fn check_entries(key: &str, n: usize) -> std::result::Result<(), String> {
    if n > MAX_ENTRIES {
        return Err(format!(
            "{key}: {n} entries; at most {MAX_ENTRIES} are allowed"
        ));
    }
    Ok(())
}

pub(super) fn check_text<'a>(
    key: &str,
    values: impl IntoIterator<Item = &'a String>,
) -> std::result::Result<(), String> {
    for v in values {
        if v.len() > MAX_TEXT {
            return Err(format!(
                "{key}: a value of {} bytes; at most {MAX_TEXT} are allowed",
                v.len()
            ));
        }
        if v.contains('\0') {
            return Err(format!(
                "{key}: {v:?} contains a NUL byte, which no program argument, environment entry, name or path can carry"
            ));
        }
    }
    Ok(())
}

/// Environment keys: not empty and without `=` (the process would see
/// another key, or none). Values are checked by [`check_text`].
pub(super) fn check_env_keys<'a>(
    key: &str,
    keys: impl IntoIterator<Item = &'a String>,
) -> std::result::Result<(), String> {
    for k in keys {
        if k.is_empty() {
            return Err(format!("{key}: an empty variable name"));
        }
        if k.contains('=') {
            return Err(format!(
                "{key}: variable name {k:?} contains `=`, which ends a name in the environment"
            ));
        }
    }
    Ok(())
}

/// A `process` service's program: relative to the release directory, so no
/// `..` may lead out of it; an absolute path stays allowed (an operator may
/// run `/usr/bin/java`).
pub(super) fn check_command(command: &str) -> std::result::Result<(), String> {
    if command.split('/').any(|c| c == "..") {
        return Err(format!(
            "command: {command:?} has a `..` component; a relative command is inside the release directory (write an absolute path, such as /usr/bin/java, for a program outside it)"
        ));
    }
    Ok(())
}

/// Where a health check may connect: the host itself. `host` must be
/// `localhost`, a loopback address (`127.x.x.x`, `[::1]`) or one whole
/// `${var}` from the agent's `[vars]` (the host's own address, as its
/// operator wrote it); `port` a number from 1 to 65535 or one whole
/// `${var}`. After substitution ([`super::ServiceConfig::with_vars`]) the port
/// must be a number in range.
pub(super) fn check_target(
    key: &str,
    authority: &str,
    need_port: bool,
    substituted: bool,
) -> std::result::Result<(), String> {
    let bad = |why: &str| Err(format!("{key}: {authority:?} {why}"));
    if authority.contains('@') {
        return bad("must not carry a user name");
    }
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let Some(end) = rest.find(']') else {
            return bad("has an unclosed `[`");
        };
        let after = &rest[end + 1..];
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p),
            None if after.is_empty() => None,
            None => return bad("has text after `]` that is not `:PORT`"),
        };
        (&rest[..end], port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    let is_var = |s: &str| {
        s.len() > 3
            && s.starts_with("${")
            && s.ends_with('}')
            && !s[2..s.len() - 1].contains(['$', '{', '}'])
    };
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if !(loopback || (!substituted && is_var(host)) || (substituted && !host.is_empty())) {
        return bad(
            "must target the host itself: localhost, a loopback address or one ${var} set in the agent's [vars]",
        );
    }
    if substituted && host.contains(['/', '?', '#', ' ']) {
        return bad("has a host that is not a host name or address");
    }
    match port {
        None if need_port => bad("needs a :PORT"),
        None => Ok(()),
        Some(p) if !substituted && is_var(p) => Ok(()),
        Some(p) => match p.parse::<u32>() {
            Ok(n) if (1..=65535).contains(&n) && !p.starts_with('+') => Ok(()),
            _ => bad("has a port that is not a number from 1 to 65535"),
        },
    }
}

/// Checks an `http` check's URL (see [`check_target`]).
pub(super) fn check_url(
    key: &str,
    url: &str,
    substituted: bool,
) -> std::result::Result<(), String> {
    let Some(rest) = url.strip_prefix("http://") else {
        return Err(format!(
            "{key}: {url:?} must start with http:// (checks talk to the local service)"
        ));
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    check_target(key, authority, false, substituted)
}
