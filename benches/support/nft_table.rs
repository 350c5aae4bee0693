//! The nftables table a benchmark's jobs put their rules in: the run's own, not the host's
//! `p3_executor`, and removed when the run ends (each job's cleanup removes only its chain).

use std::process::{Command, Stdio};

/// `[network] table` for this run's jobs.
pub fn name() -> String {
    format!("p3_bench_{}", std::process::id())
}

/// Removes the table when dropped, at the end of `main` or when a measurement panics.
pub struct Removed;

impl Drop for Removed {
    fn drop(&mut self) {
        let _ = Command::new("nft")
            .args(["delete", "table", "inet", &name()])
            .stderr(Stdio::null())
            .status();
    }
}
