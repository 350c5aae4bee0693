//! The keyring wall. Kernel keyrings are not namespaced and outlive every process of a uid, so
//! two things keep a job's keys its own:
//! - [`enter`]: every job script starts in a fresh anonymous session keyring, joined after the
//!   uid switch, never the runner's (under systemd's `KeyringMode=private` the runner's service
//!   has one session keyring that every job would otherwise share);
//! - [`clear_uid`]: before a uid goes back to the pool, its user, user-session and persistent
//!   keyrings are emptied; a uid whose keyrings cannot be emptied stays quarantined.
//!
//! With the seccomp wall on, jobs cannot call `keyctl` at all unless their devstage opts in;
//! the clearing still applies, so an opt-in never leaks into the uid's next job.

use libc::{c_long, c_ulong};

/// `keyctl(2)` with up to three further arguments.
///
/// SAFETY: the caller passes arguments valid for `op` (ids and null pointers only here).
unsafe fn keyctl(op: u32, a: c_ulong, b: c_ulong, c: c_ulong) -> c_long {
    // SAFETY: see the function's contract.
    unsafe { libc::syscall(libc::SYS_keyctl, op as c_ulong, a, b, c) }
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// Join a new anonymous session keyring. Called in the job's process after the uid switch and
/// before the seccomp filter (which refuses `keyctl`). Async-signal-safe.
pub fn enter() -> std::io::Result<()> {
    // SAFETY: KEYCTL_JOIN_SESSION_KEYRING with a null name creates an anonymous keyring.
    let r = unsafe { keyctl(libc::KEYCTL_JOIN_SESSION_KEYRING, 0, 0, 0) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Exit codes of the clearing child, one per keyring.
const FAILED: [(i32, &str); 4] = [
    (2, "switch to the uid"),
    (3, "user keyring"),
    (4, "user-session keyring"),
    (5, "persistent keyring"),
];

/// Empty `keyring` (a special id or a serial) if it exists; `false` if it exists and could
/// not be emptied. Runs in the clearing child.
fn clear(keyring: i32, create: bool) -> bool {
    // SAFETY: KEYCTL_GET_KEYRING_ID with integer arguments.
    let id = unsafe {
        keyctl(
            libc::KEYCTL_GET_KEYRING_ID,
            keyring as c_ulong,
            create as c_ulong,
            0,
        )
    };
    if id < 0 {
        // ENOKEY: the uid never had this keyring (created on first use since Linux 5.3).
        return errno() == libc::ENOKEY;
    }
    // SAFETY: KEYCTL_CLEAR then KEYCTL_READ with a null buffer (returns the size only).
    unsafe {
        keyctl(libc::KEYCTL_CLEAR, id as c_ulong, 0, 0) == 0
            && keyctl(libc::KEYCTL_READ, id as c_ulong, 0, 0) == 0
    }
}

/// Empty the user, user-session and persistent keyrings of `uid` (a job uid whose processes
/// are all gone). `Err` names the keyring that could not be emptied.
///
/// Keyrings are reached only as their owner, so a forked child switches to `uid` (for good: it
/// exits after) and clears them there.
pub fn clear_uid(uid: u32) -> Result<(), String> {
    // SAFETY: the child makes only syscalls and exits.
    match unsafe { nix::unistd::fork() } {
        Ok(nix::unistd::ForkResult::Child) => {
            let (u, g) = (
                nix::unistd::Uid::from_raw(uid),
                nix::unistd::Gid::from_raw(uid),
            );
            // SAFETY: keyctl calls with ids and null pointers (raw: nix has no keyctl).
            let code = unsafe {
                if nix::unistd::setgroups(&[]).is_err()
                    || nix::unistd::setresgid(g, g, g).is_err()
                    || nix::unistd::setresuid(u, u, u).is_err()
                    // Our own session keyring, so nothing is linked into root's.
                    || enter().is_err()
                {
                    2
                } else if !clear(libc::KEY_SPEC_USER_KEYRING, false) {
                    3
                } else if !clear(libc::KEY_SPEC_USER_SESSION_KEYRING, false) {
                    4
                } else {
                    // Linked into our session keyring (which dies with this child); absent
                    // when the kernel has no persistent keyrings (EOPNOTSUPP).
                    let id = keyctl(
                        libc::KEYCTL_GET_PERSISTENT,
                        c_ulong::MAX, // -1: our own uid
                        libc::KEY_SPEC_SESSION_KEYRING as c_ulong,
                        0,
                    );
                    if id < 0 && errno() == libc::EOPNOTSUPP {
                        0
                    } else if id < 0 || !clear(id as i32, false) {
                        5
                    } else {
                        0
                    }
                }
            };
            // SAFETY: leave the forked child without running destructors.
            unsafe { libc::_exit(code) }
        }
        Ok(nix::unistd::ForkResult::Parent { child }) => {
            match nix::sys::wait::waitpid(child, None) {
                Ok(nix::sys::wait::WaitStatus::Exited(_, 0)) => Ok(()),
                Ok(nix::sys::wait::WaitStatus::Exited(_, code)) => {
                    let what = FAILED
                        .iter()
                        .find(|(c, _)| *c == code)
                        .map_or("keyrings", |(_, w)| w);
                    Err(format!("the uid's {what} could not be cleared"))
                }
                Ok(other) => Err(format!("clearing the uid's keyrings: {other:?}")),
                Err(e) => Err(format!("wait for the keyring clearing: {e}")),
            }
        }
        Err(e) => Err(format!("fork to clear the uid's keyrings: {e}")),
    }
}

/// For `check`: does this kernel have keyrings (and persistent ones)?
pub fn probe() -> Result<&'static str, String> {
    // SAFETY: KEYCTL_GET_KEYRING_ID of our session keyring, without creating one.
    let r = unsafe {
        keyctl(
            libc::KEYCTL_GET_KEYRING_ID,
            libc::KEY_SPEC_SESSION_KEYRING as c_ulong,
            0,
            0,
        )
    };
    if r < 0 && errno() == libc::ENOSYS {
        return Err("this kernel has no keyrings (nothing to clear)".into());
    }
    Ok("jobs start in their own session keyring; a uid's keyrings are cleared before reuse")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Add a user key to `keyring` as `uid` in a forked child; true on success.
    fn add_key_as(uid: u32, keyring: i32) -> bool {
        match unsafe { nix::unistd::fork() }.unwrap() {
            nix::unistd::ForkResult::Child => unsafe {
                let ok = libc::setresuid(uid, uid, uid) == 0 && enter().is_ok() && {
                    let id = if keyring == 0 {
                        keyctl(
                            libc::KEYCTL_GET_PERSISTENT,
                            c_ulong::MAX,
                            libc::KEY_SPEC_SESSION_KEYRING as c_ulong,
                            0,
                        ) as i32
                    } else {
                        keyring
                    };
                    libc::syscall(
                        libc::SYS_add_key,
                        c"user".as_ptr(),
                        c"p3-test".as_ptr(),
                        c"secret".as_ptr(),
                        6usize,
                        id,
                    ) > 0
                };
                libc::_exit(if ok { 0 } else { 1 })
            },
            nix::unistd::ForkResult::Parent { child } => matches!(
                nix::sys::wait::waitpid(child, None),
                Ok(nix::sys::wait::WaitStatus::Exited(_, 0))
            ),
        }
    }

    /// Number of links in `keyring` as `uid` (forked child's exit code), without creating it.
    fn links_as(uid: u32, keyring: i32) -> i32 {
        match unsafe { nix::unistd::fork() }.unwrap() {
            nix::unistd::ForkResult::Child => unsafe {
                let _ = libc::setresuid(uid, uid, uid);
                let _ = enter();
                let id = if keyring == 0 {
                    keyctl(
                        libc::KEYCTL_GET_PERSISTENT,
                        c_ulong::MAX,
                        libc::KEY_SPEC_SESSION_KEYRING as c_ulong,
                        0,
                    )
                } else {
                    keyctl(libc::KEYCTL_GET_KEYRING_ID, keyring as c_ulong, 0, 0)
                };
                let n = if id < 0 {
                    0
                } else {
                    keyctl(libc::KEYCTL_READ, id as c_ulong, 0, 0) / 4
                };
                libc::_exit(n as i32)
            },
            nix::unistd::ForkResult::Parent { child } => {
                match nix::sys::wait::waitpid(child, None).unwrap() {
                    nix::sys::wait::WaitStatus::Exited(_, n) => n,
                    other => panic!("{other:?}"),
                }
            }
        }
    }

    #[test]
    fn a_uids_user_session_and_persistent_keys_are_gone_after_clearing() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root to act as another uid");
            return;
        }
        let uid = 4_000_321;
        for keyring in [
            libc::KEY_SPEC_USER_KEYRING,
            libc::KEY_SPEC_USER_SESSION_KEYRING,
            0,
        ] {
            assert!(add_key_as(uid, keyring), "add a key to {keyring}");
            // @us also links @u.
            assert!(links_as(uid, keyring) >= 1, "key in {keyring}");
        }
        clear_uid(uid).unwrap();
        for keyring in [
            libc::KEY_SPEC_USER_KEYRING,
            libc::KEY_SPEC_USER_SESSION_KEYRING,
            0,
        ] {
            assert_eq!(links_as(uid, keyring), 0, "key left in {keyring}");
        }
    }
}
