//! Live diagnostics of this host, read from /proc and statvfs when the
//! controller asks (`cutover diag HOST`).

use std::path::Path;

use cutover_core::views::{DiagReport, InstalledService};

/// Figures the session measures, merged into the report.
#[derive(Debug, Clone, Copy, Default)]
pub struct SessionFigures {
    pub rtt_ms: f64,
    pub clock_offset_ms: f64,
}

/// The most of one /proc or /etc file a report reads.
const MAX_READ: u64 = 64 << 10;

/// A small system file as text: its first [`MAX_READ`] bytes, bytes that
/// are not UTF-8 replaced (a hostname set to raw bytes is shown, not
/// dropped), empty when it cannot be read.
fn read_text(path: &Path) -> String {
    use std::io::Read;
    let mut bytes = Vec::new();
    match std::fs::File::open(path) {
        Ok(f) => {
            let _ = f.take(MAX_READ).read_to_end(&mut bytes);
        }
        Err(_) => return String::new(),
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

pub fn gather(
    data_dir: &Path,
    agent_uptime_s: u64,
    session: SessionFigures,
    services: Vec<InstalledService>,
    logs: Vec<cutover_core::views::ServiceLog>,
) -> DiagReport {
    let read = |p: &str| read_text(Path::new(p));
    let load: Vec<f64> = read("/proc/loadavg")
        .split_whitespace()
        .take(3)
        .filter_map(|v| v.parse().ok())
        .collect();
    let meminfo = read("/proc/meminfo");
    let (disk_total, disk_available) = disk(data_dir);
    DiagReport {
        hostname: read("/proc/sys/kernel/hostname").trim().to_string(),
        os: os_name(&read("/etc/os-release")),
        kernel: read("/proc/sys/kernel/osrelease").trim().to_string(),
        cpus: std::thread::available_parallelism()
            .map(|n| n.get() as u32)
            .unwrap_or(0),
        load: [
            load.first().copied().unwrap_or(0.0),
            load.get(1).copied().unwrap_or(0.0),
            load.get(2).copied().unwrap_or(0.0),
        ],
        mem_total_bytes: meminfo_kib(&meminfo, "MemTotal") * 1024,
        mem_available_bytes: meminfo_kib(&meminfo, "MemAvailable") * 1024,
        data_dir: data_dir.display().to_string(),
        disk_total_bytes: disk_total,
        disk_available_bytes: disk_available,
        uptime_s: read("/proc/uptime")
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok())
            .map(|v| v as u64)
            .unwrap_or(0),
        agent_version: cutover_core::VERSION.to_string(),
        agent_uptime_s,
        rtt_ms: session.rtt_ms,
        clock_offset_ms: session.clock_offset_ms,
        logs,
        services,
    }
}

fn os_name(os_release: &str) -> String {
    os_release
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|v| v.trim_matches('"').to_string())
        .unwrap_or_else(|| std::env::consts::OS.to_string())
}

fn meminfo_kib(meminfo: &str, key: &str) -> u64 {
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn disk(path: &Path) -> (u64, u64) {
    match nix::sys::statvfs::statvfs(path) {
        Ok(s) => {
            let frag = s.fragment_size();
            (s.blocks() * frag, s.blocks_available() * frag)
        }
        Err(_) => (0, 0),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_system_file_that_is_not_utf8_is_read_with_replacements_and_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let odd = dir.path().join("hostname");
        std::fs::write(&odd, b"bad\xffname\n").unwrap();
        assert_eq!(super::read_text(&odd).trim(), "bad\u{fffd}name");
        let big = dir.path().join("big");
        std::fs::write(&big, vec![b'x'; 1 << 20]).unwrap();
        assert_eq!(super::read_text(&big).len() as u64, super::MAX_READ);
        assert_eq!(super::read_text(&dir.path().join("missing")), "");
    }

    use super::*;

    #[test]
    fn parses_proc_formats() {
        assert_eq!(
            meminfo_kib(
                "MemTotal:       16314388 kB\nMemAvailable:   100 kB\n",
                "MemAvailable"
            ),
            100
        );
        assert_eq!(
            os_name("NAME=x\nPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\n"),
            "Debian GNU/Linux 12 (bookworm)"
        );
    }

    #[test]
    fn gathers_real_figures_from_this_host() {
        let dir = tempfile::tempdir().unwrap();
        let d = gather(dir.path(), 1, SessionFigures::default(), vec![], vec![]);
        assert!(!d.hostname.is_empty());
        assert!(!d.kernel.is_empty());
        assert!(d.cpus >= 1);
        assert!(d.mem_total_bytes > d.mem_available_bytes && d.mem_available_bytes > 0);
        assert!(d.disk_total_bytes >= d.disk_available_bytes && d.disk_total_bytes > 0);
        assert!(d.uptime_s > 0);
    }
}
