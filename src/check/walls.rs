//! The kernel walls besides namespaces: the seccomp filter, keyrings and the abstract unix
//! socket scope (cgroup limits have their own check).

use super::finding::{Finding, Severity, finding};
use crate::config::{Config, Seccomp};
use crate::walls::{abstract_sockets, keyring, seccomp};

/// Which seccomp filter is in force, and does this kernel install it?
pub(super) fn seccomp_findings(cfg: &Config, out: &mut Vec<Finding>) {
    let opted: Vec<String> = cfg
        .devstages
        .iter()
        .filter(|(_, d)| !d.seccomp_allow.is_empty())
        .map(|(n, d)| format!("{n}: {:?}", d.seccomp_allow))
        .chain(match &cfg.sandbox.seccomp {
            Seccomp::Filter { plain_allow } if !plain_allow.is_empty() => {
                Some(format!("plain jobs: {plain_allow:?}"))
            }
            _ => None,
        })
        .collect();
    let opt_ins = if opted.is_empty() {
        String::new()
    } else {
        format!(" (opted back in: {})", opted.join("; "))
    };
    match (&cfg.sandbox.seccomp, seccomp::probe()) {
        (Seccomp::Filter { .. }, Ok(())) => out.push(finding(
            Severity::Info,
            format!(
                "seccomp: the default profile is in force on every job process; keyctl, bpf, \
                 perf_event_open, userfaultfd, io_uring, new user namespaces, mounts and module \
                 loading return EPERM{opt_ins}"
            ),
            "nothing to do",
        )),
        (Seccomp::Filter { .. }, Err(why)) => out.push(finding(
            Severity::Error,
            format!("seccomp: the default profile cannot be installed here: {why}; every job will fail with a system error"),
            "run on a kernel with CONFIG_SECCOMP_FILTER (every distribution kernel has it), or set [sandbox] seccomp = \"off\"",
        )),
        (Seccomp::Off, _) => out.push(finding(
            Severity::Warning,
            "[sandbox] seccomp = \"off\": jobs can create user namespaces, use keyrings, bpf, perf events, userfaultfd and io_uring",
            "remove `seccomp = \"off\"` from [sandbox]; opt single devstages in with seccomp_allow = [\"keyrings\"] or [\"io_uring\"] instead",
        )),
    }
}

/// Do jobs reach only their own abstract unix sockets?
pub(super) fn abstract_socket_findings(cfg: &Config, out: &mut Vec<Finding>) {
    let entered = cfg.sandbox.enabled || !matches!(cfg.sandbox.seccomp, Seccomp::Off);
    match abstract_sockets::probe() {
        Ok(what) if entered => out.push(finding(Severity::Info, what, "nothing to do")),
        Ok(_) => out.push(finding(
            Severity::Warning,
            "abstract unix sockets: not scoped, because jobs run without no_new_privs (the \
             sandbox and seccomp are both off): a job can reach every abstract socket of the \
             host and of other jobs",
            "turn the sandbox ([sandbox] enabled) or the seccomp filter back on",
        )),
        Err(why) => out.push(finding(
            Severity::Warning,
            format!(
                "abstract unix sockets: {why}: jobs share the host's network namespace, so a \
                 job can reach every abstract socket of the host (daemons listening on one) and \
                 of other jobs"
            ),
            "run a kernel of Linux 6.12 or later with Landlock enabled (lsm=...,landlock)",
        )),
    }
}

/// Do jobs get their own keyrings?
pub(super) fn keyring_findings(out: &mut Vec<Finding>) {
    match keyring::probe() {
        Ok(what) => out.push(finding(
            Severity::Info,
            format!("keyrings: {what}"),
            "nothing to do",
        )),
        Err(why) => out.push(finding(
            Severity::Info,
            format!("keyrings: {why}"),
            "nothing to do",
        )),
    }
}
