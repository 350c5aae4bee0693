//! Which system calls a job's processes may not make: pure data and rules, table-tested.
//!
//! In the spirit of Docker's and Podman's default profiles, but as a deny list: everything not
//! named here is allowed, so a new system call in a new kernel (or a tool probing one) keeps
//! working, and a refused call returns `EPERM` (not a kill), so tools that probe features
//! degrade as they would without the privilege. Two profiles share one list:
//! - [`Profile::Default`] for every job;
//! - [`Profile::Container`] for jobs that policy lets run containers in an executor-made user
//!   namespace: namespace creation and mounting are allowed (they act only inside the job's
//!   own user namespace); the kernel's riskiest interfaces stay closed.

use serde::{Deserialize, Serialize};

/// The filter a job gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// Every job's filter.
    Default,
    /// The filter of a job that may run containers (its own user namespace).
    Container,
}

/// Groups of calls a devstage (or `[sandbox]` for plain jobs) may opt back in to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OptIn {
    /// `keyctl`, `add_key`, `request_key`: a `KEYRING:` ticket cache. The job's keyrings are
    /// still cleared before its uid is reused.
    Keyrings,
    /// `io_uring_setup`, `io_uring_enter`, `io_uring_register`.
    IoUring,
}

/// Why a group of calls is refused: one reason per group, printed by `check` and the docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Group {
    /// Kernel keyrings are not namespaced and outlive every process of a uid: a key put there
    /// is readable by the uid's next job, and the runner's session keyring is shared.
    Keyrings,
    /// io_uring has been the source of many kernel privilege escalations; most jobs never use it.
    IoUring,
    /// eBPF programs, perf events and userfaultfd: large kernel attack surface, and the usual
    /// tools of kernel exploits (userfaultfd to win races).
    KernelAttackSurface,
    /// New user namespaces: every kernel bug reachable only from a user namespace would be
    /// reachable by every job.
    UserNamespaces,
    /// Mounting and namespace switching: the job's view of the file system is the executor's.
    Mounts,
    /// Loading or replacing kernel code: modules and kexec.
    KernelCode,
    /// Host-wide settings: clocks, swap, reboot, process accounting, quotas, the kernel log.
    HostSettings,
    /// Obsolete or hardware-level interfaces no job needs (x86 I/O ports, vm86, uselib, ...).
    Obsolete,
    /// Access to files by handle, NUMA memory policy: both bypass ordinary permission paths
    /// or move other processes' memory.
    Handles,
}

impl Group {
    /// One line: why this group is refused.
    pub fn why(self) -> &'static str {
        match self {
            Group::Keyrings => {
                "kernel keyrings are not namespaced and outlive a job's processes (a ticket put \
                 there reaches the uid's next job); opt in per devstage with seccomp_allow = \
                 [\"keyrings\"]"
            }
            Group::IoUring => {
                "io_uring is a frequent source of kernel privilege escalations; opt in with \
                 seccomp_allow = [\"io_uring\"]"
            }
            Group::KernelAttackSurface => {
                "eBPF, perf events and userfaultfd are large kernel attack surfaces and the \
                 usual tools of kernel exploits"
            }
            Group::UserNamespaces => {
                "a new user namespace opens every kernel bug reachable only from one; container \
                 jobs get theirs from the executor"
            }
            Group::Mounts => "the job's view of the file system is made by the executor",
            Group::KernelCode => "loading kernel modules or a new kernel",
            Group::HostSettings => "host-wide clocks, swap, reboot, accounting, quotas and log",
            Group::Obsolete => "obsolete or hardware-level interfaces no job needs",
            Group::Handles => {
                "open-by-handle bypasses path permissions; NUMA policy calls move memory"
            }
        }
    }

    /// The opt-in that lifts this group, if any.
    pub fn opt_in(self) -> Option<OptIn> {
        match self {
            Group::Keyrings => Some(OptIn::Keyrings),
            Group::IoUring => Some(OptIn::IoUring),
            _ => None,
        }
    }

    /// Whether a container job (in its own user namespace) still has it refused.
    fn refused_in_container(self) -> bool {
        !matches!(self, Group::UserNamespaces | Group::Mounts)
    }
}

/// How a call is matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Match {
    /// Every use of the call.
    Always,
    /// Only when the flags in argument `arg` include any of `mask` (e.g. `clone` with
    /// `CLONE_NEWUSER`).
    FlagsAny {
        /// Argument index.
        arg: u8,
        /// Flag bits.
        mask: u64,
    },
}

/// One refused call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    /// The call's name, as in `man 2`.
    pub name: &'static str,
    /// Its number on this architecture.
    pub nr: i64,
    /// When it is refused.
    pub when: Match,
    /// Why.
    pub group: Group,
}

/// A rule refusing every use of `libc::SYS_<name>`.
macro_rules! always {
    ($group:ident: $($name:ident),* $(,)?) => {
        [$(Rule {
            name: stringify!($name),
            nr: paste_sys!($name),
            when: Match::Always,
            group: Group::$group,
        }),*]
    };
}

/// `libc::SYS_<name>` as `i64`.
macro_rules! paste_sys {
    (_sysctl) => {
        libc::SYS__sysctl as i64
    };
    ($name:ident) => {
        sys::$name as i64
    };
}

/// libc's system call numbers under their `man 2` names (this architecture's).
mod sys {
    pub(super) use libc::{
        SYS_acct as acct, SYS_add_key as add_key, SYS_bpf as bpf,
        SYS_clock_adjtime as clock_adjtime, SYS_clock_settime as clock_settime, SYS_clone as clone,
        SYS_delete_module as delete_module, SYS_finit_module as finit_module,
        SYS_fsconfig as fsconfig, SYS_fsmount as fsmount, SYS_fsopen as fsopen,
        SYS_fspick as fspick, SYS_get_mempolicy as get_mempolicy, SYS_init_module as init_module,
        SYS_io_uring_enter as io_uring_enter, SYS_io_uring_register as io_uring_register,
        SYS_io_uring_setup as io_uring_setup, SYS_kexec_file_load as kexec_file_load,
        SYS_kexec_load as kexec_load, SYS_keyctl as keyctl, SYS_mbind as mbind, SYS_mount as mount,
        SYS_mount_setattr as mount_setattr, SYS_move_mount as move_mount,
        SYS_move_pages as move_pages, SYS_name_to_handle_at as name_to_handle_at,
        SYS_open_by_handle_at as open_by_handle_at, SYS_open_tree as open_tree,
        SYS_perf_event_open as perf_event_open, SYS_pivot_root as pivot_root,
        SYS_quotactl as quotactl, SYS_reboot as reboot, SYS_request_key as request_key,
        SYS_set_mempolicy as set_mempolicy, SYS_setns as setns, SYS_settimeofday as settimeofday,
        SYS_swapoff as swapoff, SYS_swapon as swapon, SYS_syslog as syslog, SYS_umount2 as umount2,
        SYS_unshare as unshare, SYS_userfaultfd as userfaultfd, SYS_vhangup as vhangup,
    };
    #[cfg(target_arch = "x86_64")]
    pub(super) use libc::{
        SYS_ioperm as ioperm, SYS_iopl as iopl, SYS_lookup_dcookie as lookup_dcookie,
        SYS_nfsservctl as nfsservctl, SYS_sysfs as sysfs, SYS_uselib as uselib, SYS_ustat as ustat,
    };
}

/// Namespace flags of `clone`/`unshare` that create a user namespace.
const NEW_USER: u64 = libc::CLONE_NEWUSER as u64;

/// Every refused call of both profiles, before opt-ins (see [`rules`]).
fn all_rules() -> Vec<Rule> {
    let mut rules = Vec::new();
    rules.extend(always!(Keyrings: keyctl, add_key, request_key));
    rules.extend(always!(IoUring: io_uring_setup, io_uring_enter, io_uring_register));
    rules.extend(always!(KernelAttackSurface: bpf, perf_event_open, userfaultfd));
    // clone3 passes its flags in a struct seccomp cannot read: it is answered ENOSYS by the
    // filter's prologue (see `super::compile`), and libc falls back to clone.
    for name_nr in [("clone", sys::clone), ("unshare", sys::unshare)] {
        rules.push(Rule {
            name: name_nr.0,
            nr: name_nr.1,
            when: Match::FlagsAny {
                arg: 0,
                mask: NEW_USER,
            },
            group: Group::UserNamespaces,
        });
    }
    rules.extend(always!(
        Mounts: mount, umount2, pivot_root, move_mount, open_tree, mount_setattr, fsopen,
        fsconfig, fsmount, fspick, setns
    ));
    rules.extend(always!(
        KernelCode: init_module, finit_module, delete_module, kexec_load, kexec_file_load
    ));
    rules.extend(always!(
        HostSettings: swapon, swapoff, reboot, acct, clock_settime, clock_adjtime,
        settimeofday, quotactl, syslog, vhangup
    ));
    rules.extend(always!(
        Handles: name_to_handle_at, open_by_handle_at, get_mempolicy, set_mempolicy, mbind,
        move_pages
    ));
    #[cfg(target_arch = "x86_64")]
    rules.extend(always!(
        Obsolete: _sysctl, nfsservctl, ioperm,
        iopl, lookup_dcookie, sysfs, uselib, ustat
    ));
    rules
}

/// The calls refused for `profile`, with `allowed` groups opted back in.
pub fn rules(profile: Profile, allowed: &[OptIn]) -> Vec<Rule> {
    all_rules()
        .into_iter()
        .filter(|r| profile == Profile::Default || r.group.refused_in_container())
        .filter(|r| r.group.opt_in().is_none_or(|o| !allowed.contains(&o)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(profile: Profile, allowed: &[OptIn], name: &str) -> bool {
        rules(profile, allowed).iter().any(|r| r.name == name)
    }

    #[test]
    fn each_profile_refuses_what_it_must_and_opt_ins_lift_only_their_group() {
        use OptIn::*;
        use Profile::*;
        #[rustfmt::skip]
        let cases: &[(Profile, &[OptIn], &str, bool)] = &[
            (Default, &[], "keyctl", true),
            (Default, &[], "add_key", true),
            (Default, &[], "request_key", true),
            (Default, &[Keyrings], "keyctl", false),
            (Default, &[Keyrings], "io_uring_setup", true),
            (Default, &[IoUring], "io_uring_setup", false),
            (Default, &[IoUring], "keyctl", true),
            (Default, &[Keyrings, IoUring], "bpf", true),
            (Default, &[], "bpf", true),
            (Default, &[], "perf_event_open", true),
            (Default, &[], "userfaultfd", true),
            (Default, &[], "unshare", true),
            (Default, &[], "clone", true),
            (Default, &[], "mount", true),
            (Default, &[], "umount2", true),
            (Default, &[], "pivot_root", true),
            (Default, &[], "move_mount", true),
            (Default, &[], "fsopen", true),
            (Default, &[], "open_tree", true),
            (Default, &[], "setns", true),
            (Default, &[], "kexec_load", true),
            (Default, &[], "finit_module", true),
            (Default, &[], "swapon", true),
            (Default, &[], "reboot", true),
            (Default, &[], "acct", true),
            // What ordinary tools need stays allowed.
            (Default, &[], "read", false),
            (Default, &[], "execve", false),
            (Default, &[], "ptrace", false),
            (Container, &[], "mount", false),
            (Container, &[], "unshare", false),
            (Container, &[], "clone", false),
            (Container, &[], "pivot_root", false),
            (Container, &[], "setns", false),
            (Container, &[], "keyctl", true),
            (Container, &[], "bpf", true),
            (Container, &[], "perf_event_open", true),
            (Container, &[], "finit_module", true),
            (Container, &[], "kexec_load", true),
            (Container, &[Keyrings], "keyctl", false),
        ];
        for &(profile, allowed, name, want) in cases {
            assert_eq!(
                refused(profile, allowed, name),
                want,
                "{profile:?} {allowed:?} {name}"
            );
        }
    }

    #[test]
    fn clone_and_unshare_are_refused_only_for_a_new_user_namespace() {
        for r in rules(Profile::Default, &[]) {
            if r.name == "clone" || r.name == "unshare" {
                assert_eq!(
                    r.when,
                    Match::FlagsAny {
                        arg: 0,
                        mask: libc::CLONE_NEWUSER as u64
                    }
                );
            }
        }
    }

    #[test]
    fn docs_sandbox_md_lists_every_refused_call() {
        let doc = include_str!("../../../docs/sandbox.md");
        for rule in all_rules() {
            assert!(
                doc.contains(&format!("`{}`", rule.name)),
                "docs/sandbox.md does not list {}",
                rule.name
            );
        }
    }

    #[test]
    fn every_rule_has_a_distinct_call_and_a_reason() {
        let all = all_rules();
        let mut nrs: Vec<i64> = all.iter().map(|r| r.nr).collect();
        nrs.sort();
        nrs.dedup();
        assert_eq!(nrs.len(), all.len(), "a call is listed twice");
        assert!(all.iter().all(|r| !r.group.why().is_empty()));
    }
}
