//! What init hands the job's shell: [`JobExec`], built before any fork, and [`report`] on the
//! error pipe. A leaf of its own, shared by `init.rs` and `shell.rs` (init forks the shell, so
//! the shell must not depend on init).

use std::ffi::CString;
use std::os::fd::RawFd;
use std::path::PathBuf;

/// Everything the job's shell needs, prepared before any fork.
pub(crate) struct JobExec<'a> {
    /// Absolute path of the shell.
    pub shell: CString,
    /// argv, `argv[0]` first.
    pub argv: Vec<CString>,
    /// Complete environment, `KEY=value`.
    pub envp: Vec<CString>,
    /// Directory the shell starts in; entered as the job uid, never through a symlink.
    pub cwd: CString,
    /// Job uid and gid.
    pub uid: u32,
    /// Job gid.
    pub gid: u32,
    /// The sealed script memfd, which becomes fd 3.
    pub script_fd: RawFd,
    /// The walls the shell enters before exec (keyring, `no_new_privs`, seccomp).
    pub walls: crate::walls::child::ChildWalls,
    /// A container job's user namespace: the shell unshares it, init writes its maps.
    pub userns: Option<&'a crate::walls::userns::JobUserns>,
    /// An image stage: its root, the private dirs and the kept dirs to bind into it.
    pub image: Option<(
        &'a super::image_root::ImageRoot,
        &'a Vec<PathBuf>,
        &'a Vec<PathBuf>,
    )>,
}

/// Write `msg` to the error pipe.
pub(super) fn report(pipe: RawFd, msg: &str) {
    // SAFETY: the error pipe's write end, open until this process exits or execs.
    let pipe = unsafe { std::os::fd::BorrowedFd::borrow_raw(pipe) };
    // Ignored: nothing is left to tell a failed write to; the supervisor still sees the exit
    // code (127) and reports a system failure without the reason.
    let _ = nix::unistd::write(pipe, msg.as_bytes());
}
