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

/// Without `job_uid_range`, concurrent jobs share one uid.
pub(super) fn uid_range(cfg: &Config, out: &mut Vec<Finding>) {
    if cfg.job_uid_range.is_none() {
        out.push(finding(
            Severity::Warning,
            "concurrent jobs share job_user's uid and could read each other's credentials",
            "set job_uid_range = [200000, 265535] (uids not used by any account) so each job gets its own uid",
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
