//! Who jobs run as: the executor must be root to switch users, `job_user` must be an
//! unprivileged account, and a private uid range keeps concurrent jobs apart.

use super::finding::{Finding, Severity, finding};
use crate::config::Config;

/// `job_user` exists and is not root.
pub(super) fn job_user(cfg: &Config, out: &mut Vec<Finding>) {
    match nix::unistd::User::from_name(&cfg.job_user) {
        Ok(Some(u)) if u.uid.is_root() => out.push(finding(
            Severity::Error,
            format!("job_user {:?} is root", cfg.job_user),
            "set job_user to an unprivileged account",
        )),
        Ok(Some(_)) => {}
        _ => out.push(finding(
            Severity::Error,
            format!("job_user {:?} does not exist", cfg.job_user),
            format!(
                "useradd --system --no-create-home --shell /usr/sbin/nologin {}",
                cfg.job_user
            ),
        )),
    }
}

/// Jobs sharing one uid, or a private range that overlaps real accounts.
pub(super) fn uid_range(cfg: &Config, out: &mut Vec<Finding>) {
    let Some([lo, hi]) = cfg.private_uid_range() else {
        out.push(finding(
            Severity::Warning,
            "shared_job_uid = true: concurrent jobs share job_user's uid and could read each other's files and credentials",
            "remove shared_job_uid so each job gets its own uid (from job_uid_range, default [200000, 265535])",
        ));
        return;
    };
    // A leased uid must belong to no account: its files and processes would be the job's.
    let taken: Vec<String> = std::fs::read_to_string("/etc/passwd")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut f = l.split(':');
            let name = f.next()?;
            let uid: u32 = f.nth(1)?.parse().ok()?;
            (lo..=hi).contains(&uid).then(|| format!("{name} ({uid})"))
        })
        .collect();
    if !taken.is_empty() {
        out.push(finding(
            Severity::Error,
            format!(
                "the private job uid range [{lo}, {hi}] holds accounts: {}",
                taken.join(", ")
            ),
            "set job_uid_range to uids no account uses",
        ));
    }
}

/// Not root: no isolation at all.
pub(super) fn not_root(out: &mut Vec<Finding>) {
    out.push(finding(
        Severity::Warning,
        "not running as root: isolation is off, jobs run as the executor's own user and can read its config and state",
        "run gitlab-runner (and so p3-executor) as root with job_user set",
    ));
}
