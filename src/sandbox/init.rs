//! PID 1 of a job's namespaces: our own small init, still root while it unshares the mount and
//! IPC namespaces and applies the mount plan (`mounts.rs`), then it forks the job's shell
//! (`shell.rs`), maps a container job's user namespace, and reaps (`reaper.rs`).
//!
//! It runs after `clone` from the single-threaded supervisor: the shell's argv, environment
//! and paths are built before, and every failure is written to the error pipe (which closes
//! on a successful exec) so the supervisor can report it as a system failure.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::time::Duration;

use nix::sched::CloneFlags;
use nix::sys::signal::Signal;
use nix::unistd::ForkResult;

use super::KeepDir;
use super::job_exec::{JobExec, report};
use super::plan::MountOp;
use super::shell::Handshake;
use super::{mounts, reaper, shell};

/// Close every descriptor from 3 up except `keep` (close_range(2), Linux 5.9+; on an older
/// kernel, ENOSYS, the descriptors stay open, as before).
fn close_inherited(keep: &[RawFd]) -> Result<(), String> {
    let mut keep: Vec<libc::c_uint> = keep
        .iter()
        .filter_map(|&fd| libc::c_uint::try_from(fd).ok())
        .filter(|&fd| fd >= 3)
        .collect();
    keep.sort_unstable();
    keep.dedup();
    let mut from: libc::c_uint = 3;
    for fd in keep.into_iter().chain([libc::c_uint::MAX]) {
        if fd > from {
            // SAFETY: close_range on descriptors this process does not use (it owns no Rust
            // handle to them: they were inherited by clone). Raw: nix has no close_range.
            let r = unsafe { libc::syscall(libc::SYS_close_range, from, fd - 1, 0) };
            match nix::errno::Errno::result(r) {
                Ok(_) | Err(nix::Error::ENOSYS) => {}
                Err(e) => return Err(format!("sandbox: close inherited descriptors: {e}")),
            }
        }
        from = fd.saturating_add(1);
    }
    Ok(())
}

/// The executor's directory, opened when the plan binds it back read-only (a cover hides it).
fn open_exec_dir(ops: &[MountOp]) -> Result<Option<OwnedFd>, String> {
    let dir = ops.iter().find_map(|op| match op {
        MountOp::ExecDir(dir) => Some(dir),
        _ => None,
    });
    dir.map(|dir| {
        nix::fcntl::open(
            dir,
            nix::fcntl::OFlag::O_PATH
                | nix::fcntl::OFlag::O_DIRECTORY
                | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .map_err(|e| {
            format!(
                "sandbox: open the executor's directory {}: {e}",
                dir.display()
            )
        })
    })
    .transpose()
}

/// Everything init does as root before the shell exists: its own namespaces and mounts, and a
/// container job's `/etc` files and handshake pipes. Returns the image's fds (if any) and the
/// handshake.
fn build(
    ops: &[MountOp],
    keep: &[KeepDir],
    tmpfs_size: &str,
    exec: &JobExec<'_>,
    err_pipe: RawFd,
) -> Result<(Option<super::image::ImageFds>, Option<Handshake>), String> {
    // The supervisor dies (even by SIGKILL): this init dies, and with it the whole namespace.
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)
        .map_err(|e| format!("sandbox: PR_SET_PDEATHSIG in the namespace's init: {e}"))?;
    // Nothing of the supervisor's but what init needs: above all not the job's active lock,
    // which would otherwise stay held (and gc keep off the job) until this init is reaped.
    let scope = exec.walls.abstract_sockets.as_ref().map(|r| r.fd());
    close_inherited(&[Some(err_pipe), Some(exec.script_fd), scope].map(|fd| fd.unwrap_or(-1)))?;
    nix::sched::unshare(CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWIPC)
        .map_err(|e| format!("sandbox: unshare mount and IPC namespaces: {e}"))?;
    let keep_fds = keep
        .iter()
        .map(|k| k.open().map_err(|e| format!("sandbox: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    // The image's base and the job's layer live under the state root, which the plan hides.
    let image_fds = exec.image.map(|(root, ..)| root.open()).transpose()?;
    let exec_fd = open_exec_dir(ops)?;
    for op in ops {
        mounts::mount_op(op, &keep_fds, exec_fd.as_ref(), tmpfs_size)?;
    }
    let Some(userns) = exec.userns else {
        return Ok((image_fds, None));
    };
    // An image has its own /etc/passwd; the host's is out of its view.
    if exec.image.is_none() {
        mounts::bind_userns_files(userns)?;
    }
    Ok((image_fds, Some(Handshake::new()?)))
}

/// PID 1 of the job's namespaces. Returns its exit code: the shell's (128+N if killed by N).
///
/// Sets up the mounts, starts the shell, then reaps every orphan and passes the supervisor's
/// SIGTERM on to every process of the namespace. When the shell exits, whatever it left
/// running gets SIGTERM and `leftover_grace`; returning then makes the kernel SIGKILL the rest.
pub(crate) fn init_main(
    ops: &[MountOp],
    keep: &[KeepDir],
    tmpfs_size: &str,
    exec: &JobExec<'_>,
    err_pipe: RawFd,
    leftover_grace: Duration,
) -> i32 {
    let built = build(ops, keep, tmpfs_size, exec, err_pipe)
        .and_then(|built| Ok((built, reaper::take_signals()?)));
    let ((image_fds, handshake), signals) = match built {
        Ok(built) => built,
        Err(msg) => {
            report(err_pipe, &msg);
            return 127;
        }
    };
    // SAFETY: the process is single-threaded (cloned from the supervisor's only thread).
    let shell = match unsafe { nix::unistd::fork() } {
        Ok(ForkResult::Child) => shell::exec_shell(exec, err_pipe, handshake),
        Ok(ForkResult::Parent { child }) => child,
        Err(e) => {
            report(err_pipe, &format!("sandbox: fork the job shell: {e}"));
            return 127;
        }
    };
    if let (Some(h), Some(userns)) = (handshake, exec.userns) {
        // The shell has its user namespace: map it (root in the host's namespace may map any
        // ids; the shell itself could only map its own), then let it go on.
        shell::map_shell(h.into_init(), shell, err_pipe, || {
            crate::walls::userns::write_maps(shell.as_raw(), userns)?;
            match (exec.image, &image_fds) {
                (Some((root, tmp, keep)), Some(fds)) => {
                    let store =
                        mounts::tmp_store().ok_or("sandbox: an image needs the private tmpfs")?;
                    super::image::enter(
                        root,
                        fds,
                        store.as_raw_fd(),
                        shell.as_raw(),
                        (exec.uid, exec.gid),
                        tmp,
                        keep,
                    )
                }
                _ => Ok(()),
            }
        });
    }
    // Our copy of the error pipe (the shell's closes at exec), so the supervisor sees EOF.
    // Ignored: closing a pipe's write end loses nothing.
    let _ = nix::unistd::close(err_pipe);
    let code = reaper::supervise(shell, &signals, leftover_grace);
    if code != 0 && mounts::tmp_store_full() {
        // The job log gets the cause: tools only say "No space left on device".
        let msg = format!(
            "p3-executor: the job's /tmp, /var/tmp and /dev/shm are full: together they may \
             hold {tmpfs_size} ([sandbox] tmp_size in the executor's config)\n"
        );
        // Ignored: a hint on stderr; the job's exit code is what counts.
        let _ = nix::unistd::write(std::io::stderr(), msg.as_bytes());
    }
    code
}
