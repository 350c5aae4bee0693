//! Which live processes hold a uid: the tests' view of `/proc` (read by `p3_contract::procs`,
//! as the executor reads it), counting a uid in any of the real, effective, saved and
//! filesystem fields (as cleanup kills), zombies excluded.

use std::ops::RangeInclusive;

use p3_contract::procs;

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
    procs::processes()
        .into_iter()
        .filter(|p| p.status.holds_uid(|u| uids.contains(&u)))
        .map(|p| Proc {
            pid: p.pid,
            cmd: procs::cmdline(p.pid),
            uids: p.status.uids,
        })
        .collect()
}
