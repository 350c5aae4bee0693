//! The host's size, which the default limits are derived from.

use super::limits::HostSize;

/// `MemTotal` in bytes from a `/proc/meminfo` text.
pub fn mem_total(meminfo: &str) -> Option<u64> {
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

/// This host's RAM and `pid_max` (the kernel's defaults when unreadable: 1 GiB and 32768, small
/// enough that the defaults stay bounded).
pub fn host_size() -> HostSize {
    let ram = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| mem_total(&t))
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

    #[test]
    fn meminfo() {
        let text = "MemTotal:       24684012 kB\nMemFree:        22610408 kB\n";
        assert_eq!(mem_total(text), Some(24684012 * 1024));
        assert_eq!(mem_total("MemFree: 1 kB\n"), None);
    }
}
