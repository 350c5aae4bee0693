//! The abstract unix socket wall. Jobs share the host's network namespace (their egress is
//! the network wall's), and with it its abstract unix sockets, which have no file and so no
//! owner or mode: any job could talk to a host daemon listening on one, and to another job's.
//! Landlock's scoping (ABI 6, Linux 6.12) puts each job script in a domain of its own that
//! reaches only the abstract sockets its own processes made; path sockets, TCP and UDP are
//! untouched. (A job can still bind a free name: a host client connecting to that name would
//! reach the job. Only a network namespace of its own would stop that.)
//!
//! The ruleset is made in the supervisor ([`for_stage`]); the job's shell only joins it
//! ([`Ruleset::enter`], one system call, after `no_new_privs`). Written against the system
//! calls, not the `landlock` crate: the crate builds and enforces a ruleset in one process,
//! while the shell, forked from a multi-threaded supervisor, may only make system calls.
//! On an older kernel there is nothing to enter, and `check` says so.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;

/// `LANDLOCK_CREATE_RULESET_VERSION`: ask for the ABI version.
const CREATE_RULESET_VERSION: u32 = 1;
/// `LANDLOCK_SCOPE_ABSTRACT_UNIX_SOCKET`.
const SCOPE_ABSTRACT_UNIX_SOCKET: u64 = 1;
/// The first ABI with the scope.
const SCOPE_ABI: i64 = 6;

/// `struct landlock_ruleset_attr` up to `scoped` (ABI 6).
#[repr(C)]
struct RulesetAttr {
    handled_access_fs: u64,
    handled_access_net: u64,
    scoped: u64,
}

/// The kernel's Landlock ABI version; `Err` names why there is none (not built in, or not
/// among the active security modules).
pub fn abi() -> Result<i64, String> {
    // SAFETY: a null attribute with size 0 and the version flag only reports the version.
    let v = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<RulesetAttr>(),
            0usize,
            CREATE_RULESET_VERSION,
        )
    };
    if v < 0 {
        let e = std::io::Error::last_os_error();
        return Err(match e.raw_os_error() {
            Some(libc::ENOSYS) => "this kernel has no Landlock".into(),
            Some(libc::EOPNOTSUPP) => {
                "Landlock is built in but not enabled (add landlock to the lsm= boot parameter)"
                    .into()
            }
            _ => format!("Landlock: {e}"),
        });
    }
    Ok(v)
}

/// A ruleset that scopes abstract unix sockets, for one stage's job shell.
#[derive(Debug, Clone)]
pub struct Ruleset(Arc<OwnedFd>);

/// run, in the supervisor: the stage's ruleset; None where the kernel cannot scope abstract
/// sockets (the stage runs without this wall, as `check` reports).
pub fn for_stage() -> std::io::Result<Option<Ruleset>> {
    if abi().is_ok_and(|v| v >= SCOPE_ABI) {
        Ruleset::new().map(Some)
    } else {
        Ok(None)
    }
}

impl Ruleset {
    fn new() -> std::io::Result<Self> {
        let attr = RulesetAttr {
            handled_access_fs: 0,
            handled_access_net: 0,
            scoped: SCOPE_ABSTRACT_UNIX_SOCKET,
        };
        // SAFETY: a valid attribute of its own size; the kernel returns a new O_CLOEXEC fd.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_landlock_create_ruleset,
                &attr as *const RulesetAttr,
                std::mem::size_of::<RulesetAttr>(),
                0u32,
            )
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: the fd was just returned to us and nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        // Above the descriptors the job's shell puts its stdin and its script on (0 and 3):
        // it joins the scope after those dup2s.
        let high = nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(10))?;
        // SAFETY: F_DUPFD_CLOEXEC returned a new descriptor that nothing else owns.
        Ok(Ruleset(Arc::new(unsafe { OwnedFd::from_raw_fd(high) })))
    }

    /// Its descriptor, which the sandbox's init keeps open for the shell.
    pub(crate) fn fd(&self) -> std::os::fd::RawFd {
        self.0.as_raw_fd()
    }

    /// In the job's process, after `no_new_privs` (the kernel requires it): this process and
    /// all it starts reach only abstract sockets made inside the domain. Async-signal-safe.
    pub(crate) fn enter(&self) -> std::io::Result<()> {
        // SAFETY: a ruleset fd we own, and no flags.
        let r =
            unsafe { libc::syscall(libc::SYS_landlock_restrict_self, self.0.as_raw_fd(), 0u32) };
        if r < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
}

/// For `check`: what jobs get on this kernel, or why not.
pub fn probe() -> Result<String, String> {
    match abi() {
        Ok(v) if v >= SCOPE_ABI => Ok(format!(
            "abstract unix sockets: each job reaches only its own (Landlock ABI {v})"
        )),
        Ok(v) => Err(format!(
            "Landlock ABI {v} cannot scope abstract unix sockets (ABI 6, Linux 6.12)"
        )),
        Err(why) => Err(why),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};

    /// In a forked child: enter the scope, then try the abstract name `outside` (made before)
    /// and one made after; exit code 0 when the first is refused and the second reached.
    #[test]
    fn a_process_in_the_scope_reaches_only_the_abstract_sockets_made_inside_it() {
        if !abi().is_ok_and(|v| v >= SCOPE_ABI) {
            eprintln!("skipped: no Landlock scoping on this kernel");
            return;
        }
        let outside = format!("p3-unit-outside-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(&outside).unwrap();
        let _listener = UnixListener::bind_addr(&addr).unwrap();
        assert!(
            UnixStream::connect_addr(&addr).is_ok(),
            "reachable outside the scope"
        );
        let inside = SocketAddr::from_abstract_name(format!("{outside}-in")).unwrap();
        let ruleset = Ruleset::new().unwrap();
        // SAFETY: the child only makes system calls (nothing allocated after the fork) and
        // exits.
        match unsafe { nix::unistd::fork() }.unwrap() {
            nix::unistd::ForkResult::Child => unsafe {
                let code = if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
                    || ruleset.enter().is_err()
                {
                    3
                } else {
                    let refused = UnixStream::connect_addr(&addr)
                        .is_err_and(|e| e.raw_os_error() == Some(libc::EPERM));
                    let own = UnixListener::bind_addr(&inside)
                        .and_then(|_l| UnixStream::connect_addr(&inside))
                        .is_ok();
                    match (refused, own) {
                        (true, true) => 0,
                        (false, _) => 1,
                        (true, false) => 2,
                    }
                };
                libc::_exit(code)
            },
            nix::unistd::ForkResult::Parent { child } => {
                let status = nix::sys::wait::waitpid(child, None).unwrap();
                assert_eq!(
                    status,
                    nix::sys::wait::WaitStatus::Exited(child, 0),
                    "1: the outside socket was reached; 2: the own one was not; 3: no scope"
                );
            }
        }
    }
}
