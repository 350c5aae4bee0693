//! The seccomp wall: a filter on every process of a job, installed by the job's shell just
//! before it execs (after the uid switch and `no_new_privs`), inherited by everything it starts
//! and never removable. Which calls it refuses is pure data in [`profile`]; this file compiles
//! that list into BPF (in the supervisor, before any fork) and installs it (in the child).
//!
//! Two filters are installed, newest first in the kernel's order of evaluation:
//! 1. the deny list, compiled by `seccompiler`: a refused call returns `EPERM`;
//! 2. a prologue answering `ENOSYS` for `clone3` (its flags sit in a struct the filter cannot
//!    read, so it could create a user namespace unseen; libc then falls back to `clone`, which
//!    the deny list checks) and for x32 system call numbers (the same calls under other
//!    numbers, which would bypass the list on a kernel with the x32 ABI enabled).
//!
//! A process of another architecture (32-bit `int 0x80` on x86_64) is killed by seccompiler's
//! architecture check: the list could not be trusted for it.

pub mod profile;
pub mod setting;

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

pub use profile::{Group, OptIn, Profile};
pub use setting::Setting;

/// A compiled filter, ready to install in a forked child (no allocation needed there).
#[derive(Debug, Clone)]
pub struct Filter {
    programs: Vec<BpfProgram>,
}

#[cfg(target_arch = "x86_64")]
fn arch() -> TargetArch {
    TargetArch::x86_64
}
#[cfg(target_arch = "aarch64")]
fn arch() -> TargetArch {
    TargetArch::aarch64
}

/// Compile the filter for `profile` with `allowed` groups opted back in.
pub fn compile(profile: Profile, allowed: &[OptIn]) -> Result<Filter, String> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for rule in profile::rules(profile, allowed) {
        let entry = rules.entry(rule.nr).or_default();
        if let profile::Match::FlagsAny { arg, mask } = rule.when {
            let cond = SeccompCondition::new(
                arg,
                SeccompCmpArgLen::Qword,
                SeccompCmpOp::MaskedEq(mask),
                mask,
            )
            .map_err(|e| format!("seccomp rule for {}: {e}", rule.name))?;
            entry.push(
                SeccompRule::new(vec![cond])
                    .map_err(|e| format!("seccomp rule for {}: {e}", rule.name))?,
            );
        }
    }
    let deny = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        arch(),
    )
    .and_then(BpfProgram::try_from)
    .map_err(|e| format!("compile the seccomp filter: {e}"))?;
    Ok(Filter {
        programs: vec![prologue(), deny],
    })
}

/// The filter for one job: `None` when `[sandbox] seccomp = "off"`; else the default profile
/// (the container profile for a job that runs in its own user namespace, `containers`) with
/// the opt-ins of the job's devstage (`[sandbox] seccomp_allow` for a plain job).
pub fn for_job(
    cfg: &crate::config::Config,
    devstage: Option<&str>,
    containers: bool,
) -> Result<Option<Filter>, String> {
    choose(cfg, devstage, containers)
        .map(|(profile, allowed)| compile(profile, allowed))
        .transpose()
}

/// Which profile and opt-ins a job gets (pure): none when `[sandbox] seccomp = "off"`; the
/// granted devstage's `seccomp_allow`, or `[sandbox] seccomp_allow` for a plain job.
pub(crate) fn choose<'c>(
    cfg: &'c crate::config::Config,
    devstage: Option<&str>,
    containers: bool,
) -> Option<(Profile, &'c [OptIn])> {
    let crate::config::Seccomp::Filter { plain_allow } = &cfg.sandbox.seccomp else {
        return None;
    };
    let allowed = match devstage.and_then(|d| cfg.devstages.get(d)) {
        Some(d) => &d.seccomp_allow,
        None => plain_allow,
    };
    let profile = if containers {
        Profile::Container
    } else {
        Profile::Default
    };
    Some((profile, allowed))
}

/// `ENOSYS` for `clone3` and for x32 numbers (see the module docs), everything else allowed.
/// Classic BPF by hand: six instructions seccompiler cannot express (a range of numbers).
fn prologue() -> BpfProgram {
    use libc::{BPF_ABS, BPF_JEQ, BPF_JGE, BPF_JMP, BPF_K, BPF_LD, BPF_RET, BPF_W};
    let stmt = |code: u32, k: u32| seccompiler::sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    };
    let jump = |code: u32, k: u32, jt: u8, jf: u8| seccompiler::sock_filter {
        code: code as u16,
        jt,
        jf,
        k,
    };
    // struct seccomp_data { int nr; __u32 arch; ... }: nr at offset 0.
    const NR: u32 = 0;
    const X32_BIT: u32 = 0x4000_0000;
    let enosys = libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32;
    vec![
        stmt(BPF_LD | BPF_W | BPF_ABS, NR),
        jump(BPF_JMP | BPF_JEQ | BPF_K, libc::SYS_clone3 as u32, 2, 0),
        jump(BPF_JMP | BPF_JGE | BPF_K, X32_BIT, 1, 0),
        stmt(BPF_RET | BPF_K, libc::SECCOMP_RET_ALLOW),
        stmt(BPF_RET | BPF_K, enosys),
    ]
}

impl Filter {
    /// Install the filter on the calling thread. Async-signal-safe (two `prctl`/`seccomp`
    /// calls per program), so it runs between fork and exec. Sets `no_new_privs`.
    pub fn install(&self) -> std::io::Result<()> {
        for program in &self.programs {
            seccompiler::apply_filter(program).map_err(|e| match e {
                seccompiler::Error::Prctl(io) | seccompiler::Error::Seccomp(io) => io,
                other => std::io::Error::other(other.to_string()),
            })?;
        }
        Ok(())
    }
}

/// For `check`: can this kernel install a filter? Installs the default filter in a forked
/// child and checks that a refused call (`keyctl`) returns `EPERM` there.
pub fn probe() -> Result<(), String> {
    let filter = compile(Profile::Default, &[])?;
    // SAFETY: the child installs a filter, makes one syscall and exits.
    match unsafe { nix::unistd::fork() } {
        Ok(nix::unistd::ForkResult::Child) => {
            let ok = filter.install().is_ok() && {
                // SAFETY: keyctl(KEYCTL_GET_KEYRING_ID, @s, 0) has no side effect.
                let r = unsafe {
                    libc::syscall(libc::SYS_keyctl, 0, libc::KEY_SPEC_SESSION_KEYRING, 0)
                };
                r == -1 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
            };
            // SAFETY: leave the forked child without running destructors.
            unsafe { libc::_exit(if ok { 0 } else { 1 }) }
        }
        Ok(nix::unistd::ForkResult::Parent { child }) => match nix::sys::wait::waitpid(child, None)
        {
            Ok(nix::sys::wait::WaitStatus::Exited(_, 0)) => Ok(()),
            Ok(other) => Err(format!(
                "a seccomp filter could not be installed or did not refuse keyctl ({other:?})"
            )),
            Err(e) => Err(format!("wait for the seccomp probe: {e}")),
        },
        Err(e) => Err(format!("fork: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Choice = Option<(Profile, &'static [OptIn])>;

    #[test]
    fn a_jobs_devstage_decides_its_opt_ins_and_plain_jobs_take_the_sandboxs() {
        let cfg = |extra: &str| {
            crate::config::Config::parse(&format!(
                "[sandbox]\nseccomp_allow = [\"io_uring\"]\n{extra}\n[identity]\ngitlab_url = \"https://g\"\n\
                 [accounts.a]\nprincipal = \"p\"\nkeytab = \"/k\"\n\
                 [devstages.d]\ndeploy_account = \"a\"\nprojects = [\"x/*\"]\nseccomp_allow = [\"keyrings\"]\n\
                 [devstages.e]\ndeploy_account = \"a\"\nprojects = [\"x/*\"]\n"
            ))
            .unwrap()
        };
        let on = cfg("");
        #[rustfmt::skip]
        let cases: &[(Option<&str>, bool, Choice)] = &[
            (Some("d"), false, Some((Profile::Default, &[OptIn::Keyrings]))),
            (Some("e"), false, Some((Profile::Default, &[]))),
            (None, false, Some((Profile::Default, &[OptIn::IoUring]))),
            (Some("d"), true, Some((Profile::Container, &[OptIn::Keyrings]))),
            (None, true, Some((Profile::Container, &[OptIn::IoUring]))),
        ];
        for &(devstage, containers, want) in cases {
            assert_eq!(
                choose(&on, devstage, containers),
                want,
                "{devstage:?} {containers}"
            );
        }
        let off = cfg("seccomp = \"off\"");
        assert_eq!(choose(&off, Some("d"), false), None);
        assert!(for_job(&off, None, false).unwrap().is_none());
    }

    #[test]
    fn both_profiles_compile_with_and_without_opt_ins() {
        for profile in [Profile::Default, Profile::Container] {
            for allowed in [&[][..], &[OptIn::Keyrings, OptIn::IoUring][..]] {
                let f = compile(profile, allowed).unwrap();
                assert_eq!(f.programs.len(), 2);
                assert!(f.programs[1].len() > 20, "{profile:?}");
            }
        }
    }
}
