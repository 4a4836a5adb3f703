//! Live diagnostics of this host, read through `sysinfo` when the
//! controller asks (`cutover diag HOST`).

use std::path::Path;

use cutover_core::views::{DiagReport, InstalledService};
use sysinfo::{Disks, System};

/// Figures the session measures, merged into the report.
#[derive(Debug, Clone, Copy, Default)]
pub struct SessionFigures {
    pub rtt_ms: f64,
    pub clock_offset_ms: f64,
}

pub fn gather(
    data_dir: &Path,
    agent_uptime_s: u64,
    session: SessionFigures,
    services: Vec<InstalledService>,
    logs: Vec<cutover_core::views::ServiceLog>,
) -> DiagReport {
    // Memory and CPUs only: no process table, which is most of what a full
    // refresh would cost.
    let mut system = System::new();
    system.refresh_memory();
    system.refresh_cpu_list(sysinfo::CpuRefreshKind::nothing());
    let load = System::load_average();
    let (disk_total, disk_available) = disk(data_dir);
    DiagReport {
        hostname: hostname(),
        os: System::long_os_version().unwrap_or_else(|| std::env::consts::OS.to_string()),
        kernel: System::kernel_version().unwrap_or_default(),
        cpus: u32::try_from(system.cpus().len()).unwrap_or(u32::MAX),
        load: [load.one, load.five, load.fifteen],
        mem_total_bytes: system.total_memory(),
        mem_available_bytes: system.available_memory(),
        data_dir: data_dir.display().to_string(),
        disk_total_bytes: disk_total,
        disk_available_bytes: disk_available,
        uptime_s: System::uptime(),
        agent_version: cutover_core::VERSION.to_string(),
        agent_uptime_s,
        rtt_ms: session.rtt_ms,
        clock_offset_ms: session.clock_offset_ms,
        logs,
        services,
    }
}

/// The host's name, bytes that are not UTF-8 replaced: a hostname set to
/// raw bytes is shown, not dropped (`sysinfo` drops it).
fn hostname() -> String {
    nix::unistd::gethostname()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Total and available bytes of the filesystem holding `path`: the
/// mounted filesystem with the longest mount point above it. Network
/// filesystems are not listed (a hard-mounted NFS that stopped answering
/// would hang the report), so a data dir on one shows 0 (`-` in the table).
fn disk(path: &Path) -> (u64, u64) {
    let Ok(path) = path.canonicalize() else {
        return (0, 0);
    };
    let disks = Disks::new_with_refreshed_list_specifics(
        sysinfo::DiskRefreshKind::nothing().with_storage(),
    );
    disks
        .list()
        .iter()
        .filter(|d| path.starts_with(d.mount_point()))
        .max_by_key(|d| d.mount_point().components().count())
        .map_or((0, 0), |d| (d.total_space(), d.available_space()))
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn the_disk_is_the_filesystem_holding_the_data_dir_and_a_missing_dir_has_none() {
        let dir = tempfile::tempdir().unwrap();
        let expected = nix::sys::statvfs::statvfs(dir.path()).unwrap();
        let (total, _) = disk(dir.path());
        assert_eq!(total, expected.blocks() * expected.fragment_size());
        assert_eq!(disk(&dir.path().join("missing")), (0, 0));
    }

    #[test]
    fn the_hostname_is_the_kernels() {
        let kernel = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
        assert_eq!(hostname(), kernel.trim());
    }
}
