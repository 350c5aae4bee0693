//! Which live processes hold a uid: the tests' one view of `/proc`, counting a uid in any of
//! the real, effective, saved and filesystem fields (as cleanup kills), zombies excluded.

use std::ops::RangeInclusive;

/// One live process holding a uid of the range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proc {
    /// Its pid (in the host's PID namespace).
    pub pid: i32,
    /// Its real, effective, saved and filesystem uids.
    pub uids: Vec<u32>,
    /// Its command line, arguments joined by spaces.
    pub cmd: String,
}

impl std::fmt::Display for Proc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} uids {:?}: {}", self.pid, self.uids, self.cmd)
    }
}

/// Every live process holding a uid of `uids` in any field.
pub fn holding(uids: RangeInclusive<u32>) -> Vec<Proc> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let pid: i32 = e.file_name().to_str()?.parse().ok()?;
            let status = std::fs::read_to_string(e.path().join("status")).ok()?;
            if status
                .lines()
                .any(|l| l.starts_with("State:") && l.contains('Z'))
            {
                return None;
            }
            let held: Vec<u32> = status
                .lines()
                .find_map(|l| l.strip_prefix("Uid:"))?
                .split_whitespace()
                .filter_map(|u| u.parse().ok())
                .collect();
            if !held.iter().any(|u| uids.contains(u)) {
                return None;
            }
            let cmd = std::fs::read_to_string(e.path().join("cmdline")).unwrap_or_default();
            Some(Proc {
                pid,
                uids: held,
                cmd: cmd.replace('\0', " ").trim().to_string(),
            })
        })
        .collect()
}
