//! `gc`: sweep jobs whose cleanup never ran (runner crash, SIGKILL, host reboot).

use std::time::{Duration, SystemTime};

use crate::config::Config;
use crate::error::Result;
use crate::workspace::{self, JobPaths};

/// One swept (or, in a dry run, sweepable) job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Swept {
    /// Job id.
    pub job_id: u64,
    /// Seconds since the job's last activity.
    pub idle_secs: u64,
}

/// Seconds since the job last did anything: the newest mtime of its directories, its uid lease
/// and its active lock (touched by every `run`). No file is read: prepare sweeps on every job.
fn idle_secs(cfg: &Config, paths: &JobPaths, leases: &[(u32, u64)]) -> u64 {
    let lease = leases
        .iter()
        .find(|(_, job)| *job == paths.job_id)
        .map(|(uid, _)| cfg.state_root.join("uids").join(uid.to_string()));
    [
        Some(paths.workspace.clone()),
        Some(paths.workspace.join("active.lock")),
        Some(paths.job_root.clone()),
        Some(paths.creds.clone()),
        lease,
    ]
    .into_iter()
    .flatten()
    .filter_map(|p| std::fs::symlink_metadata(p).ok()?.modified().ok())
    .max()
    .and_then(|m| SystemTime::now().duration_since(m).ok())
    .unwrap_or(Duration::ZERO)
    .as_secs()
}

/// Remove every job idle longer than `max_age_secs` (config default when None) whose
/// processes are gone. With `dry_run`, only report.
pub fn sweep(cfg: &Config, max_age_secs: Option<u64>, dry_run: bool) -> Result<Vec<Swept>> {
    let max_age = max_age_secs.unwrap_or(cfg.gc_max_age_secs);
    let mut swept = Vec::new();
    let leases = workspace::leases(cfg);
    for job_id in workspace::known_jobs(cfg, &leases) {
        let paths = JobPaths::new(cfg, job_id);
        let idle = idle_secs(cfg, &paths, &leases);
        if idle < max_age {
            continue;
        }
        // A job whose `run` is still supervising a script (a long build step) is alive,
        // however long ago it started: leave it alone. A dead executor holds no lock.
        if workspace::is_active(&paths) {
            continue;
        }
        if !dry_run {
            crate::runner::cleanup::teardown(cfg, job_id, "gc")?;
        }
        swept.push(Swept {
            job_id,
            idle_secs: idle,
        });
    }
    Ok(swept)
}
