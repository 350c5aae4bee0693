//! The job sandbox on this host: are mount, PID and IPC namespaces available, is the sandbox
//! on, and is any uid quarantined out of the job pool.

use super::finding::{Finding, Severity, finding};
use crate::config::Config;

/// The job sandbox: does this host support it, is it on, and is any uid quarantined?
pub(super) fn sandbox_findings(cfg: &Config, out: &mut Vec<Finding>) {
    let probe = crate::sandbox::probe();
    match (&probe, cfg.sandbox.enabled) {
        (Ok(()), true) => out.push(finding(
            Severity::Info,
            "job sandbox: mount, PID and IPC namespaces are available; every job script runs in its own",
            "nothing to do",
        )),
        (Ok(()), false) => out.push(finding(
            Severity::Warning,
            "[sandbox] enabled = false: jobs share /tmp, see the host's processes and the state root, and setuid binaries work",
            "remove `enabled = false` from [sandbox]: this host supports the sandbox",
        )),
        (Err(why), true) => out.push(finding(
            Severity::Error,
            format!("job sandbox unavailable: {why}; every job will fail with a system error"),
            "allow namespaces for the runner (not in an unprivileged container; kernel.unprivileged_userns_clone does not matter, root is used), or set [sandbox] enabled = false to accept running without it",
        )),
        (Err(why), false) => out.push(finding(
            Severity::Warning,
            format!("[sandbox] enabled = false, and this host could not run it anyway: {why}"),
            "run the executor where mount, PID and IPC namespaces are allowed",
        )),
    }
    for (uid, why) in crate::uid_pool::quarantined(cfg) {
        out.push(finding(
            Severity::Warning,
            format!("uid {uid} is quarantined (out of the job pool): {why}"),
            format!(
                "find and remove what it owns (ps -u {uid}; ipcs; find / -xdev -uid {uid}), then run p3-executor gc"
            ),
        ));
    }
}
