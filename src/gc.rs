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

/// Seconds since the job last did anything, read only from clocks a job cannot set: files
/// and directories in root-owned places (its workspace, its active lock, touched by every
/// `run`, its state file, its credentials dir, its uid lease). The job root is the job's own:
/// `touch -d 2099-01-01` there must not keep a dead job alive. A job with none of these left
/// (only a stray job root) is an orphan and counts as idle forever. No file is read: prepare
/// sweeps on every job.
fn idle_secs(cfg: &Config, paths: &JobPaths, leases: &[(u32, u64)]) -> u64 {
    let lease = leases
        .iter()
        .find(|(_, job)| *job == paths.job_id)
        .map(|(uid, _)| cfg.state_root.join("uids").join(uid.to_string()));
    [
        Some(paths.workspace.clone()),
        Some(paths.workspace.join("active.lock")),
        Some(paths.state_file()),
        Some(paths.creds.clone()),
        lease,
    ]
    .into_iter()
    .flatten()
    .filter_map(|p| std::fs::symlink_metadata(p).ok()?.modified().ok())
    .max()
    .map_or(u64::MAX, |newest| {
        SystemTime::now()
            .duration_since(newest)
            .unwrap_or(Duration::ZERO)
            .as_secs()
    })
}

/// Remove what each quarantined subordinate range (first id) left in the scrub dirs.
fn purge_ranges(cfg: &Config, ranges: &[(u32, String)]) {
    let deadline = std::time::Instant::now() + crate::residue::PURGE_TIME;
    let gid = nix::unistd::User::from_name(&cfg.job_user)
        .ok()
        .flatten()
        .map(|u| u.gid.as_raw());
    for (first, _) in ranges {
        let last = first.saturating_add(crate::subid_pool::RANGE_SIZE - 1);
        let left = crate::residue::scrub_ids(
            *first,
            last,
            gid,
            &cfg.sandbox.scrub_dirs,
            crate::residue::Pass::Purge { deadline },
        );
        if !left.is_clean() {
            tracing::warn!(
                first,
                "purge of subordinate range {first}: {}",
                left.summary()
            );
        }
    }
}

/// `p3-executor gc` (the timer): retry quarantined uids, remove every job idle longer than
/// `max_age_secs` (config default when None) whose processes are gone, and update the metrics
/// textfile. With `dry_run`, only report.
pub fn sweep(cfg: &Config, max_age_secs: Option<u64>, dry_run: bool) -> Result<Vec<Swept>> {
    if !dry_run {
        // Purges quarantined uids' trees however deep, within a bound per run; one that runs
        // out of time stays quarantined and the next run continues it.
        for (uid, why) in crate::uid_pool::retry_quarantined(cfg, crate::residue::PURGE_TIME) {
            tracing::warn!(uid, "uid still quarantined: {why}");
        }
        // Ranges: the first retry kills their processes and frees the clean ones; the files
        // the others left in the scrub dirs are then removed (within the same bound as the
        // uids'), and a second retry frees them, so a range recovers without a hand.
        let held = crate::subid_pool::retry_quarantined(cfg);
        if !held.is_empty() {
            purge_ranges(cfg, &held);
            for (first, why) in crate::subid_pool::retry_quarantined(cfg) {
                tracing::warn!(first, "subordinate range still quarantined: {why}");
            }
        }
    }
    let swept = sweep_jobs(
        cfg,
        max_age_secs.unwrap_or(cfg.gc_max_age_secs),
        dry_run,
        None,
    )?;
    if !dry_run {
        // Job cgroups whose job this host no longer knows (a teardown that could not remove
        // one); after the jobs above, so their own cgroups went with them.
        let known = workspace::known_jobs(cfg, &crate::uid_pool::leases(cfg));
        for job_id in crate::walls::cgroup::sweep_orphans(cfg, &known) {
            tracing::info!("job {job_id}: removed its orphaned cgroup");
        }
        for job_id in crate::images::sweep_orphans(cfg, &known) {
            tracing::info!("job {job_id}: removed its orphaned image layer");
        }
        // Network elements of uids no job holds (after the jobs above released theirs).
        match crate::walls::network::sweep(cfg) {
            Ok(removed) => {
                for what in removed {
                    tracing::info!("network: removed stale {what}");
                }
            }
            Err(e) => tracing::warn!("network: sweeping stale rules failed: {e}"),
        }
        remove_stray_temp_files(cfg);
        crate::metrics::update_textfile(cfg, crate::metrics::Table::Read);
    }
    Ok(swept)
}

/// Temp files of `atomic_file` (`.p3-*`) that a killed process left in the executor's own
/// root-owned dirs (the job dirs go whole with their job): removed once clearly abandoned.
fn remove_stray_temp_files(cfg: &Config) {
    const ABANDONED: Duration = Duration::from_secs(600);
    let kinit = crate::credentials::kerberos::kinit_dir(&cfg.state_root);
    for dir in [
        cfg.state_root.clone(),
        cfg.state_root.join("uids"),
        kinit.join("no-spake"),
        kinit.join("profiles"),
    ] {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let stale = e.file_name().to_string_lossy().starts_with(".p3-")
                && e.metadata()
                    .ok()
                    .and_then(|m| m.modified().ok())
                    .is_some_and(|m| {
                        SystemTime::now().duration_since(m).unwrap_or_default() > ABANDONED
                    });
            if stale {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

/// The part of gc every `prepare` runs: only the stale jobs, never `preparing` (the caller's
/// own job, which prepare has begun to make: with a short `gc_max_age_secs` its clocks could
/// already read as idle). Retrying quarantined uids (a walk of the world-writable dirs each)
/// and the metrics are the timer's job, off the job's path.
pub fn sweep_stale(cfg: &Config, preparing: u64) -> Result<Vec<Swept>> {
    sweep_jobs(cfg, cfg.gc_max_age_secs, false, Some(preparing))
}

fn sweep_jobs(cfg: &Config, max_age: u64, dry_run: bool, spare: Option<u64>) -> Result<Vec<Swept>> {
    let mut swept = Vec::new();
    let leases = crate::uid_pool::leases(cfg);
    for job_id in workspace::known_jobs(cfg, &leases) {
        if Some(job_id) == spare {
            continue;
        }
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
            crate::teardown::teardown(cfg, job_id, crate::grant::Ending::Gc)?;
        }
        swept.push(Swept {
            job_id,
            idle_secs: idle,
        });
    }
    Ok(swept)
}
