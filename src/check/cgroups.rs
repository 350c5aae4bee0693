//! Per-job cgroups: the host's cgroup mode (v1, v2, none), whether job limits can be enforced
//! here (a probe cgroup is made and removed), and the limits a plain job gets.

use super::finding::{Finding, Severity, finding};
use crate::config::Config;
use crate::walls::cgroup::{self, limits};

/// The cgroup mode and whether `[limits]` can be enforced.
pub(super) fn cgroup_findings(cfg: &Config, out: &mut Vec<Finding>) {
    if cfg.limits.cgroups == limits::CgroupSetting::Off {
        out.push(finding(
            Severity::Warning,
            "[limits] cgroups = \"off\": jobs run without memory, pids or CPU limits; one fork loop or allocation can take the host down",
            "remove `cgroups = \"off\"` from [limits]",
        ));
        return;
    }
    let probe = cgroup::probe(cfg);
    let where_ = probe
        .parent
        .as_ref()
        .map_or(String::new(), |p| format!(" under {}", p.display()));
    match probe.problem {
        None => {
            let plain = limits::resolve(
                &cgroup::host::host_size(),
                &cfg.limits.layer(),
                None,
                &limits::Request::default(),
            )
            .map(|l| l.summary())
            .unwrap_or_default();
            out.push(finding(
                Severity::Info,
                format!(
                    "cgroups: {} mode; every job gets its own cgroup{where_} (a job without a devstage: {plain})",
                    probe.mode
                ),
                "nothing to do",
            ));
        }
        Some(why) => out.push(finding(
            Severity::Error,
            format!(
                "cgroups: {} mode, but job limits cannot be enforced: {why}; every job will fail with a system error",
                probe.mode
            ),
            "cgroup v2: add Delegate=yes to gitlab-runner.service (README, Limits), or set [limits] cgroup_parent to a delegated cgroup; or set [limits] cgroups = \"off\" to run without limits",
        )),
    }
}
