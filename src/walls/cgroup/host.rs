//! The host's size, which the default limits are derived from.

use super::limits::HostSize;

/// This host's RAM and `pid_max` (the kernel's defaults when unreadable: 1 GiB and 32768, small
/// enough that the defaults stay bounded).
///
/// The RAM is sysinfo(2)'s total, the kernel's `totalram_pages` that `/proc/meminfo` prints as
/// `MemTotal`: one system call, where the kernel generates meminfo's whole text (about 27 µs
/// here) for one number, twice in every prepare.
pub fn host_size() -> HostSize {
    let ram = nix::sys::sysinfo::sysinfo()
        .ok()
        .map(|info| info.ram_total())
        .filter(|&ram| ram > 0)
        .unwrap_or(1 << 30);
    let pid_max = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(32768);
    HostSize { ram, pid_max }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `MemTotal` in bytes from a `/proc/meminfo` text.
    fn mem_total(meminfo: &str) -> Option<u64> {
        let kib: u64 = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))?
            .trim()
            .strip_suffix("kB")?
            .trim()
            .parse()
            .ok()?;
        kib.checked_mul(1024)
    }

    #[test]
    fn the_ram_is_what_proc_meminfo_calls_mem_total() {
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
        assert_eq!(Some(host_size().ram), mem_total(&meminfo));
    }
}
