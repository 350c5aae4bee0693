//! The job's shell, forked by the sandbox's init: its own process group, stdin from
//! `/dev/null`, the script on fd 3, the job's ids (or, for a container job, root in its own
//! user namespace, mapped by init over [`Handshake`]), then the walls' child side
//! (`walls::ChildWalls::apply`: session keyring, `no_new_privs`, seccomp), the builds dir, exec.
//!
//! Forked from init, which is single-threaded, so allocating here is safe; every failure is
//! written to the error pipe (close-on-exec: EOF once the exec succeeded) and exits 127.

use std::ffi::CStr;
use std::fmt::Display;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd, RawFd};

use nix::fcntl::{FcntlArg, FdFlag, OFlag, fcntl, open};
use nix::sched::{CloneFlags, unshare};
use nix::sys::signal::{SigHandler, SigSet, Signal, signal};
use nix::sys::stat::Mode;
use nix::unistd::{AccessFlags, Gid, Pid, Uid, access, dup2_stdin, fchdir, setgroups, setpgid};

use super::job_exec::{JobExec, report};

/// The two pipes of the user-namespace handshake: the shell says "unshared", init answers
/// "mapped" (both close-on-exec, so the job never holds them).
pub(super) struct Handshake {
    /// shell → init.
    unshared: (OwnedFd, OwnedFd),
    /// init → shell.
    mapped: (OwnedFd, OwnedFd),
}

/// Init's ends of a [`Handshake`]: it hears "unshared" on the first, answers on the second.
pub(super) struct InitEnds(pub OwnedFd, pub OwnedFd);

impl Handshake {
    pub(super) fn new() -> Result<Self, String> {
        let pipe =
            || nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| format!("sandbox: pipe: {e}"));
        Ok(Self {
            unshared: pipe()?,
            mapped: pipe()?,
        })
    }

    /// Init's side after the fork (the shell's ends close here: dropping a pipe end can lose
    /// nothing, so close's result does not matter).
    pub(super) fn into_init(self) -> InitEnds {
        InitEnds(self.unshared.0, self.mapped.1)
    }
}

/// One byte over a handshake pipe; false on EOF or error.
pub(super) fn send(fd: &OwnedFd) -> bool {
    nix::unistd::write(fd, b"x") == Ok(1)
}

/// Wait for one byte; false on EOF or error.
pub(super) fn receive(fd: &OwnedFd) -> bool {
    let mut b = [0u8; 1];
    loop {
        match nix::unistd::read(fd, &mut b) {
            Ok(1) => return true,
            Err(nix::Error::EINTR) => continue,
            _ => return false,
        }
    }
}

/// Report `what` failed with `e` and leave (without the supervisor's destructors).
fn fail(err_pipe: RawFd, what: &str, e: impl Display) -> ! {
    report(err_pipe, &format!("sandbox: {what}: {e}"));
    // SAFETY: _exit in a forked child.
    unsafe { libc::_exit(127) }
}

/// Report a message that is the job's own fault and leave.
fn job_fault(err_pipe: RawFd, msg: &str) -> ! {
    report(err_pipe, &format!("{}{msg}", super::JOB_FAULT));
    // SAFETY: _exit in a forked child.
    unsafe { libc::_exit(127) }
}

/// Default dispositions and an empty mask, as a fresh process has (init blocked and took its
/// signals; the Rust runtime ignores SIGPIPE, and an ignored signal survives exec: without
/// the reset every process of the job would get EPIPE instead of dying on a closed pipe, and
/// `yes | head -1` would spin. std's Command resets it the same way).
fn default_signals() -> nix::Result<()> {
    for sig in super::reaper::signals().iter().chain([Signal::SIGPIPE]) {
        // SAFETY: SIG_DFL installs no handler.
        unsafe { signal(sig, SigHandler::SigDfl) }?;
    }
    SigSet::empty().thread_set_mask()
}

/// The sealed script memfd becomes fd 3, without close-on-exec.
fn script_on_fd3(script_fd: RawFd) -> nix::Result<()> {
    if script_fd == 3 {
        // SAFETY: fd 3 is the script memfd, open in this process.
        let fd = unsafe { BorrowedFd::borrow_raw(3) };
        return fcntl(fd, FcntlArg::F_SETFD(FdFlag::empty())).map(drop);
    }
    // Raw dup2: nix's wants an owned target fd, which would close fd 3 when dropped.
    // SAFETY: dup2 onto a descriptor number this process does not use otherwise.
    nix::errno::Errno::result(unsafe { libc::dup2(script_fd, 3) }).map(drop)
}

/// A container job: its own user namespace, owned by root (so the job's uid on the host holds
/// no power over it), mapped by init; then root inside, which is the job's uid outside. No
/// exec in between, so the shell keeps its capabilities in the new namespace (and only there)
/// through the uid change.
fn enter_userns(exec: &JobExec<'_>, err_pipe: RawFd, h: Handshake) {
    let Handshake {
        unshared: (init_reads, to_init),
        mapped: (from_init, init_writes),
    } = h;
    // Init's ends: closed here, so an init that is gone is EOF to `receive` (dropping a pipe
    // end can lose nothing, so close's result does not matter).
    drop((init_reads, init_writes));
    if let Err(e) = unshare(CloneFlags::CLONE_NEWUSER) {
        fail(err_pipe, "unshare the user namespace", e);
    }
    if !send(&to_init) || !receive(&from_init) {
        report(err_pipe, "sandbox: the user namespace was not mapped");
        // SAFETY: _exit in a forked child.
        unsafe { libc::_exit(127) }
    }
    drop((to_init, from_init));
    let root = (Uid::from_raw(0), Gid::from_raw(0));
    if let Err(e) = setgroups(&[]) {
        fail(
            err_pipe,
            "drop supplementary groups in the user namespace",
            e,
        );
    }
    if let Err(e) = nix::unistd::setresgid(root.1, root.1, root.1) {
        let what = format!("become gid 0 (host gid {}) in the user namespace", exec.gid);
        fail(err_pipe, &what, e);
    }
    if let Err(e) = nix::unistd::setresuid(root.0, root.0, root.0) {
        let what = format!("become uid 0 (host uid {}) in the user namespace", exec.uid);
        fail(err_pipe, &what, e);
    }
    // A mount namespace the job's user namespace owns: buildah's mounts are the job's own,
    // and everything the sandbox mounted is locked beneath them.
    if let Err(e) = unshare(CloneFlags::CLONE_NEWNS) {
        fail(err_pipe, "unshare the job's mount namespace", e);
    }
}

/// A plain job: the job uid and gid, no supplementary groups.
fn drop_to_job_ids(exec: &JobExec<'_>, err_pipe: RawFd) {
    if let Err(e) = setgroups(&[]) {
        fail(err_pipe, "drop supplementary groups", e);
    }
    if let Err(e) = nix::unistd::setgid(Gid::from_raw(exec.gid)) {
        fail(err_pipe, &format!("setgid {}", exec.gid), e);
    }
    if let Err(e) = nix::unistd::setuid(Uid::from_raw(exec.uid)) {
        fail(err_pipe, &format!("setuid {}", exec.uid), e);
    }
}

/// The job's shell: see the module docs. Never returns.
pub(super) fn exec_shell(exec: &JobExec<'_>, err_pipe: RawFd, handshake: Option<Handshake>) -> ! {
    if let Err(e) = default_signals() {
        fail(err_pipe, "reset the signals", e);
    }
    // Its own process group: the supervisor's forwarder and the leftovers' kill address it.
    if let Err(e) = setpgid(Pid::from_raw(0), Pid::from_raw(0)) {
        fail(err_pipe, "own process group", e);
    }
    let null = open(
        c"/dev/null",
        OFlag::O_RDONLY | OFlag::O_CLOEXEC,
        Mode::empty(),
    );
    if let Err(e) = null.and_then(dup2_stdin) {
        fail(err_pipe, "stdin from /dev/null", e);
    }
    if let Err(e) = script_on_fd3(exec.script_fd) {
        fail(err_pipe, "hand over the job script", e);
    }
    match handshake {
        Some(h) => enter_userns(exec, err_pipe, h),
        None => drop_to_job_ids(exec, err_pipe),
    }
    // The walls' child side: session keyring, no_new_privs, seccomp last.
    if let Err((what, e)) = exec.walls.apply() {
        fail(err_pipe, what, e);
    }
    // Entered as the job uid and never through a symlink the job planted.
    let dir = open(
        exec.cwd.as_c_str(),
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    );
    if let Err(e) = dir.and_then(|d| fchdir(d.as_fd())) {
        // The job owns this directory: if it made it a symlink or removed it, the stage
        // fails as the job's own fault, not the host's.
        job_fault(
            err_pipe,
            &format!(
                "the job's builds dir {} is not a directory the job can enter ({e}); a job \
                 must not replace it with a symlink or remove it",
                exec.cwd.to_string_lossy()
            ),
        );
    }
    // In an image, the shell is the image's: bash if it has one, else sh (as the docker
    // executor chooses); the script is read through /proc (an image may lack /dev/fd).
    let (shell, argv): (&CStr, Vec<&CStr>) = if exec.image.is_some() {
        let shell = if access(c"/bin/bash", AccessFlags::X_OK).is_ok() {
            c"/bin/bash"
        } else {
            c"/bin/sh"
        };
        (shell, vec![shell, c"/proc/self/fd/3"])
    } else {
        (
            &exec.shell,
            exec.argv.iter().map(|a| a.as_c_str()).collect(),
        )
    };
    // execve returns only on failure.
    let Err(e) = nix::unistd::execve(shell, &argv, &exec.envp);
    if exec.image.is_some() {
        // The image has no usable shell: the job's choice of image, not the host's fault.
        job_fault(
            err_pipe,
            &format!("the job's image has no shell to run its script (/bin/bash or /bin/sh: {e})"),
        );
    }
    fail(
        err_pipe,
        &format!("exec {}", exec.shell.to_string_lossy()),
        e,
    )
}

/// Init's half of the handshake: wait for "unshared", run `map` (write the maps, enter an
/// image), answer "mapped" or kill the shell. If the shell died first, its reason is already
/// on the error pipe and the reaper collects it.
pub(super) fn map_shell(
    ends: InitEnds,
    shell: Pid,
    err_pipe: RawFd,
    map: impl FnOnce() -> Result<(), String>,
) {
    let InitEnds(from_shell, to_shell) = ends;
    if !receive(&from_shell) {
        return;
    }
    match map() {
        Ok(()) => {
            // Ignored: a shell that died meanwhile is reported by the reaper.
            let _ = send(&to_shell);
        }
        Err(msg) => {
            report(err_pipe, &msg);
            // Ignored: ESRCH (the shell already gone) is what we want.
            let _ = nix::sys::signal::kill(shell, Signal::SIGKILL);
        }
    }
    // Both ends close on return: a shell still waiting sees EOF.
}
