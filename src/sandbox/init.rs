//! The two processes inside a job's namespaces: PID 1 (our init, still root while it mounts)
//! and the job's shell (dropped to the job uid, `no_new_privs`, then exec).
//!
//! Both run after `fork` from the single-threaded supervisor: the shell's argv, environment
//! and paths are built before the fork, and every failure is written to the error pipe (which
//! closes on a successful exec) so the supervisor can report it as a system failure.

use std::ffi::{CStr, CString};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::mount::{MsFlags, mount};
use nix::sched::CloneFlags;
use nix::sys::signal::{SigSet, Signal};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid};

use super::KeepDir;
use super::plan::MountOp;

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
    /// The seccomp filter, compiled before the fork; `None` when `[sandbox] seccomp = "off"`.
    pub seccomp: Option<crate::walls::seccomp::Filter>,
    /// A container job's user namespace: the shell unshares it, init writes its maps.
    pub userns: Option<&'a crate::walls::userns::JobUserns>,
    /// An image stage: its root, the private dirs and the kept dirs to bind into it.
    pub image: Option<(&'a super::ImageRoot, &'a Vec<PathBuf>, &'a Vec<PathBuf>)>,
}

/// The two pipes of the user-namespace handshake: the shell says "unshared", init answers
/// "mapped" (both close-on-exec, so the job never holds them).
#[derive(Clone, Copy)]
struct Handshake {
    /// shell → init.
    unshared: (RawFd, RawFd),
    /// init → shell.
    mapped: (RawFd, RawFd),
}

fn cloexec_pipe() -> Result<(RawFd, RawFd), String> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 into a two-element array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(format!(
            "sandbox: pipe: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok((fds[0], fds[1]))
}

/// One byte over a handshake pipe; false on EOF or error.
fn send(fd: RawFd) -> bool {
    // SAFETY: write(2) of one byte from a static buffer.
    unsafe { libc::write(fd, b"x".as_ptr().cast(), 1) == 1 }
}

fn receive(fd: RawFd) -> bool {
    let mut b = [0u8; 1];
    loop {
        // SAFETY: read(2) into a one-byte buffer.
        let n = unsafe { libc::read(fd, b.as_mut_ptr().cast(), 1) };
        if n == 1 {
            return true;
        }
        if n < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
            continue;
        }
        return false;
    }
}

/// Bind the container job's own `/etc/passwd` (and group, subuid, subgid) read-only over the
/// host's, in the job's mount namespace. The files are written to a root-owned tmpfs the
/// sandbox just mounted (like the mask of hidden files; a memfd cannot be a bind source).
fn bind_userns_files(userns: &crate::walls::userns::JobUserns) -> Result<(), String> {
    let none: Option<&str> = None;
    let dir = MASK_DIR
        .get()
        .or(PRIVATE_TMP.get())
        .ok_or("sandbox: no private tmpfs for the job's /etc files")?;
    for (i, (target, content)) in userns.files.iter().enumerate() {
        let source = dir.join(format!(".p3-etc-{i}"));
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o444)
            .open(&source)
            .and_then(|mut f| std::io::Write::write_all(&mut f, content))
            .map_err(|e| format!("sandbox: write {}: {e}", source.display()))?;
        mount(Some(source.as_path()), target, none, MsFlags::MS_BIND, none)
            .map_err(|e| format!("sandbox: bind the job's {}: {e}", target.display()))?;
        mount(
            none,
            target,
            none,
            MsFlags::MS_BIND
                | MsFlags::MS_REMOUNT
                | MsFlags::MS_RDONLY
                | MsFlags::MS_NOSUID
                | MsFlags::MS_NODEV,
            none,
        )
        .map_err(|e| {
            format!(
                "sandbox: remount the job's {} read-only: {e}",
                target.display()
            )
        })?;
    }
    Ok(())
}

/// Signals PID 1 takes: the supervisor's forwarded ones and SIGCHLD.
fn init_signals() -> SigSet {
    let mut set = crate::process::forwarded_set();
    set.add(Signal::SIGCHLD);
    set
}

extern "C" fn noop(_: libc::c_int) {}

/// Write `msg` to the error pipe (best effort: the supervisor also sees the exit code).
fn report(pipe: RawFd, msg: &str) {
    // SAFETY: write(2) on a descriptor we hold.
    unsafe {
        libc::write(pipe, msg.as_ptr().cast(), msg.len());
    }
}

fn mount_op(
    op: &MountOp,
    keep_fds: &[OwnedFd],
    exec_fd: Option<&OwnedFd>,
    tmpfs_size: &str,
) -> Result<(), String> {
    let none: Option<&str> = None;
    let fail = |what: &str, target: &Path, e: nix::Error| {
        format!("sandbox: {what} {}: {e}", target.display())
    };
    let plain = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    match op {
        MountOp::PrivateRoot => mount(none, "/", none, MsFlags::MS_REC | MsFlags::MS_PRIVATE, none)
            .map_err(|e| fail("make private", Path::new("/"), e)),
        MountOp::PrivateTmp(target) => {
            // One tmpfs for all private dirs, so they share one size limit: mounted on the
            // first, then each dir (the first too, stacked over the store) is a sticky
            // directory of it bound into place.
            let store = match TMP_STORE.get() {
                Some(fd) => fd,
                None => {
                    mount(
                        Some("tmpfs"),
                        target,
                        Some("tmpfs"),
                        plain,
                        Some(format!("mode=0700,size={tmpfs_size}").as_str()),
                    )
                    .map_err(|e| fail("private tmpfs on", target, e))?;
                    let fd = nix::fcntl::open(
                        target,
                        nix::fcntl::OFlag::O_RDONLY
                            | nix::fcntl::OFlag::O_DIRECTORY
                            | nix::fcntl::OFlag::O_CLOEXEC,
                        nix::sys::stat::Mode::empty(),
                    )
                    .map_err(|e| fail("open the private tmpfs", target, e))?;
                    let _ = PRIVATE_TMP.set(target.clone());
                    TMP_STORE.get_or_init(|| fd)
                }
            };
            let name = format!(
                "{}",
                TMP_DIRS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            );
            let dir_mode = nix::sys::stat::Mode::from_bits_truncate(0o1777);
            nix::sys::stat::mkdirat(store, name.as_str(), dir_mode)
                .map_err(|e| fail("create a private dir for", target, e))?;
            // mkdir applies the umask: set the mode explicitly.
            nix::sys::stat::fchmodat(
                store,
                name.as_str(),
                dir_mode,
                nix::sys::stat::FchmodatFlags::NoFollowSymlink,
            )
            .map_err(|e| fail("chmod the private dir for", target, e))?;
            let source = format!("/proc/self/fd/{}/{name}", store.as_raw_fd());
            mount(Some(source.as_str()), target, none, MsFlags::MS_BIND, none)
                .map_err(|e| fail("bind the private dir on", target, e))
        }
        MountOp::HideDir(target) => {
            make_dirs(target)?;
            mount(
                Some("tmpfs"),
                target,
                Some("tmpfs"),
                plain | MsFlags::MS_NOEXEC,
                Some("mode=0711,size=1m"),
            )
            .map_err(|e| fail("hide", target, e))?;
            let _ = MASK_DIR.set(target.clone());
            Ok(())
        }
        MountOp::HideFile(target) => mount(
            Some(mask_source(target)?.as_path()),
            target,
            none,
            MsFlags::MS_BIND,
            none,
        )
        .map_err(|e| fail("hide", target, e)),
        MountOp::Keep { target, index } => {
            make_dirs(target)?;
            let source = format!("/proc/self/fd/{}", keep_fds[*index].as_raw_fd());
            mount(Some(source.as_str()), target, none, MsFlags::MS_BIND, none)
                .map_err(|e| fail("bind the job's directory at", target, e))?;
            mount(
                none,
                target,
                none,
                MsFlags::MS_BIND | MsFlags::MS_REMOUNT | plain,
                none,
            )
            .map_err(|e| fail("remount nosuid", target, e))
        }
        MountOp::ExecDir(target) => {
            let fd = exec_fd.ok_or("sandbox: the executor's directory was not opened")?;
            make_dirs(target)?;
            let source = format!("/proc/self/fd/{}", fd.as_raw_fd());
            mount(Some(source.as_str()), target, none, MsFlags::MS_BIND, none)
                .map_err(|e| fail("bind the executor's directory at", target, e))?;
            mount(
                none,
                target,
                none,
                MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | plain,
                none,
            )
            .map_err(|e| fail("remount read-only", target, e))
        }
        MountOp::Mqueue => mount(
            Some("mqueue"),
            "/dev/mqueue",
            Some("mqueue"),
            plain | MsFlags::MS_NOEXEC,
            none,
        )
        .map_err(|e| fail("mount", Path::new("/dev/mqueue"), e)),
        // hidepid=2: the job sees only its own processes, not this init (a copy of the
        // supervisor, whose command line names the config and the runner's script).
        MountOp::Proc => mount(
            Some("proc"),
            "/proc",
            Some("proc"),
            plain | MsFlags::MS_NOEXEC,
            Some("hidepid=2"),
        )
        .map_err(|e| fail("mount", Path::new("/proc"), e)),
    }
}

/// An empty file nobody but root may open, bound over hidden files: reading a hidden keytab
/// fails with EACCES instead of returning nothing. Made once per sandbox in a private tmpfs
/// (the first hidden dir's), so it is never the host's.
fn mask_source(target: &Path) -> Result<PathBuf, String> {
    static MASK: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    if let Some(p) = MASK.get() {
        return Ok(p.clone());
    }
    let dir = MASK_DIR.get().or(PRIVATE_TMP.get()).ok_or_else(|| {
        format!(
            "sandbox: no private tmpfs to hide {} with",
            target.display()
        )
    })?;
    let path = dir.join(".p3-hidden");
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o000)
        .open(&path)
        .map_err(|e| format!("sandbox: create {}: {e}", path.display()))?;
    Ok(MASK.get_or_init(|| path).clone())
}

/// The tmpfs behind every private dir (root-owned, 0700; see `MountOp::PrivateTmp`).
static TMP_STORE: std::sync::OnceLock<OwnedFd> = std::sync::OnceLock::new();
/// Private dirs made in the store so far (their names).
static TMP_DIRS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// The private dirs' shared tmpfs is (nearly) full: at most 1% or 1 MiB left. Read by init
/// when the script failed, to say why.
fn tmp_store_full() -> bool {
    let Some(fd) = TMP_STORE.get() else {
        return false;
    };
    let Ok(st) = nix::sys::statvfs::fstatvfs(fd) else {
        return false;
    };
    let size = st.blocks() * st.fragment_size();
    let free = st.blocks_available() * st.fragment_size();
    size > 0 && free <= (size / 100).max(1 << 20)
}

/// The first root-owned tmpfs the sandbox mounted (see [`mask_source`]).
static MASK_DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
/// The first private tmp dir, where the mask goes when nothing is hidden (sticky: the job
/// cannot remove a root-owned file there).
static PRIVATE_TMP: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// Create a mount point inside a cover we just mounted (root-owned, nothing of the job's yet).
fn make_dirs(target: &Path) -> Result<(), String> {
    if target.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o711)
        .create(target)
        .map_err(|e| format!("sandbox: create mount point {}: {e}", target.display()))
}

/// Close every descriptor from 3 up except `keep` (close_range(2), Linux 5.9+; on an older
/// kernel the descriptors stay open, as before).
fn close_inherited(keep: &[RawFd]) {
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
            // handle to them: they were inherited by clone). Failure leaves them open.
            unsafe {
                libc::syscall(libc::SYS_close_range, from, fd - 1, 0);
            }
        }
        from = fd.saturating_add(1);
    }
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
    // The supervisor dies (even by SIGKILL): this init dies, and with it the whole namespace.
    // SAFETY: prctl with integer arguments.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
    }
    // Nothing of the supervisor's but what init needs: above all not the job's active lock,
    // which would otherwise stay held (and gc keep off the job) until this init is reaped.
    close_inherited(&[err_pipe, exec.script_fd]);
    if let Err(e) = nix::sched::unshare(CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWIPC) {
        report(
            err_pipe,
            &format!("sandbox: unshare mount and IPC namespaces: {e}"),
        );
        return 127;
    }
    let mut keep_fds = Vec::with_capacity(keep.len());
    for k in keep {
        match k.open() {
            Ok(fd) => keep_fds.push(fd),
            Err(e) => {
                report(err_pipe, &format!("sandbox: {e}"));
                return 127;
            }
        }
    }
    // The image's base and the job's layer live under the state root, which the plan hides.
    let image_fds = match exec.image.map(|(root, ..)| root.open()).transpose() {
        Ok(fds) => fds,
        Err(msg) => {
            report(err_pipe, &msg);
            return 127;
        }
    };
    // The executor's binaries, bound back read-only when a cover hides them (plan.rs).
    let exec_fd = ops.iter().find_map(|op| match op {
        MountOp::ExecDir(dir) => Some(dir),
        _ => None,
    });
    let exec_fd = match exec_fd.map(|dir| {
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
    }) {
        Some(Err(msg)) => {
            report(err_pipe, &msg);
            return 127;
        }
        Some(Ok(fd)) => Some(fd),
        None => None,
    };
    for op in ops {
        if let Err(msg) = mount_op(op, &keep_fds, exec_fd.as_ref(), tmpfs_size) {
            report(err_pipe, &msg);
            return 127;
        }
    }
    let mut handshake = None;
    if let Some(userns) = exec.userns {
        // An image has its own /etc/passwd; the host's is out of its view.
        let files = if exec.image.is_some() {
            Ok(())
        } else {
            bind_userns_files(userns)
        };
        let pipes = files.and_then(|()| {
            Ok(Handshake {
                unshared: cloexec_pipe()?,
                mapped: cloexec_pipe()?,
            })
        });
        match pipes {
            Ok(h) => handshake = Some(h),
            Err(msg) => {
                report(err_pipe, &msg);
                return 127;
            }
        }
    }
    let signals = init_signals();
    // A namespace's init only receives signals it has a handler for; the handler never runs
    // (the signals stay blocked and are taken with sigtimedwait).
    for sig in signals.iter() {
        // SAFETY: installing a handler that does nothing.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = noop as *const () as usize;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig as libc::c_int, &sa, std::ptr::null_mut());
        }
    }
    let _ = signals.thread_block();
    // SAFETY: the process is single-threaded (forked from the supervisor's only thread).
    let shell = match unsafe { nix::unistd::fork() } {
        Ok(ForkResult::Child) => exec_shell(exec, err_pipe, handshake),
        Ok(ForkResult::Parent { child }) => child,
        Err(e) => {
            report(err_pipe, &format!("sandbox: fork the job shell: {e}"));
            return 127;
        }
    };
    if let (Some(h), Some(userns)) = (handshake, exec.userns) {
        // SAFETY: closing init's copies of the shell's ends.
        unsafe {
            libc::close(h.unshared.1);
            libc::close(h.mapped.0);
        }
        // The shell has its user namespace: map it (root in the host's namespace may map any
        // ids; the shell itself could only map its own), then let it go on. If the shell died
        // first, its reason is already on the error pipe and supervise() reaps it.
        if receive(h.unshared.0) {
            let entered = crate::walls::userns::write_maps(shell.as_raw(), userns).and_then(|()| {
                match (exec.image, &image_fds) {
                    (Some((root, tmp, keep)), Some(fds)) => {
                        let store = TMP_STORE
                            .get()
                            .ok_or("sandbox: an image needs the private tmpfs")?;
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
            match entered {
                Ok(()) => {
                    send(h.mapped.1);
                }
                Err(msg) => {
                    report(err_pipe, &msg);
                    let _ = nix::sys::signal::kill(shell, Signal::SIGKILL);
                }
            }
        }
        // SAFETY: closing init's ends; a shell still waiting sees EOF.
        unsafe {
            libc::close(h.unshared.0);
            libc::close(h.mapped.1);
        }
    }
    // SAFETY: closing our copy; the shell's copy closes at exec.
    unsafe {
        libc::close(err_pipe);
    }
    let code = supervise(shell, &signals, leftover_grace);
    if code != 0 && tmp_store_full() {
        // The job log gets the cause: tools only say "No space left on device".
        let msg = format!(
            "p3-executor: the job's /tmp, /var/tmp and /dev/shm are full: together they may \
             hold {tmpfs_size} ([sandbox] tmp_size in the executor's config)\n"
        );
        // SAFETY: write(2) to our stderr; best effort.
        unsafe {
            libc::write(2, msg.as_ptr().cast(), msg.len());
        }
    }
    code
}

fn supervise(shell: Pid, signals: &SigSet, leftover_grace: Duration) -> i32 {
    let mut code: Option<i32> = None;
    let mut deadline: Option<Instant> = None;
    loop {
        let wait = deadline.map_or(Duration::from_secs(1), |d| {
            d.saturating_duration_since(Instant::now())
        });
        let ts = libc::timespec {
            tv_sec: wait.as_secs() as libc::time_t,
            tv_nsec: wait.subsec_nanos() as libc::c_long,
        };
        // SAFETY: sigtimedwait on a valid set; no siginfo wanted.
        let sig = unsafe { libc::sigtimedwait(signals.as_ref(), std::ptr::null_mut(), &ts) };
        if sig > 0 && sig != libc::SIGCHLD {
            // Cancellation from the supervisor: every process of the namespace gets SIGTERM;
            // the supervisor SIGKILLs this init (and so everything) after the grace period.
            // SAFETY: kill(-1) from a namespace's init reaches exactly that namespace.
            unsafe {
                libc::kill(-1, libc::SIGTERM);
            }
        }
        let no_children = loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, c)) if pid == shell => code = Some(c),
                Ok(WaitStatus::Signaled(pid, s, _)) if pid == shell => code = Some(128 + s as i32),
                Ok(WaitStatus::StillAlive) => break false,
                Ok(_) => continue,
                Err(_) => break true, // ECHILD
            }
        };
        if let Some(code) = code {
            if no_children {
                return code;
            }
            match deadline {
                None => {
                    // The script is done; what it left behind would hold the runner's pipes.
                    // SAFETY: as above.
                    unsafe {
                        libc::kill(-1, libc::SIGTERM);
                    }
                    deadline = Some(Instant::now() + leftover_grace);
                }
                Some(d) if Instant::now() >= d => return code,
                Some(_) => {}
            }
        }
    }
}

/// The job's shell: job uid, no new privileges, its own process group, then exec. Never
/// returns; on failure the reason goes to the error pipe.
fn exec_shell(exec: &JobExec<'_>, err_pipe: RawFd, handshake: Option<Handshake>) -> ! {
    let fail = |what: &str| -> ! {
        let e = std::io::Error::last_os_error();
        report(err_pipe, &format!("sandbox: {what}: {e}"));
        // SAFETY: leave without running the supervisor's destructors.
        unsafe { libc::_exit(127) }
    };
    // SAFETY: plain syscalls in a freshly forked single-threaded child.
    unsafe {
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        for sig in init_signals().iter() {
            libc::signal(sig as libc::c_int, libc::SIG_DFL);
        }
        // The Rust runtime ignores SIGPIPE, and an ignored signal survives exec: without this,
        // every process of the job would get EPIPE instead of dying on a closed pipe
        // (`yes | head -1` would spin). std's Command resets it the same way.
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        libc::pthread_sigmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
        libc::setpgid(0, 0);
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY);
        if null < 0 || libc::dup2(null, 0) < 0 {
            fail("stdin from /dev/null");
        }
        let moved = if exec.script_fd == 3 {
            libc::fcntl(3, libc::F_SETFD, 0)
        } else {
            libc::dup2(exec.script_fd, 3)
        };
        if moved < 0 {
            fail("hand over the job script");
        }
        if let Some(h) = handshake {
            // A container job: its own user namespace, owned by root (so the job's uid on the
            // host holds no power over it), mapped by init; then root inside, which is the
            // job's uid outside. No exec in between, so the shell keeps its capabilities in
            // the new namespace (and only there) through the uid change.
            libc::close(h.unshared.0);
            libc::close(h.mapped.1);
            if libc::unshare(libc::CLONE_NEWUSER) != 0 {
                fail("unshare the user namespace");
            }
            if !send(h.unshared.1) || !receive(h.mapped.0) {
                report(err_pipe, "sandbox: the user namespace was not mapped");
                libc::_exit(127);
            }
            libc::close(h.unshared.1);
            libc::close(h.mapped.0);
            if libc::setgroups(0, std::ptr::null()) != 0 {
                fail("drop supplementary groups in the user namespace");
            }
            if libc::setresgid(0, 0, 0) != 0 {
                fail(&format!(
                    "become gid 0 (host gid {}) in the user namespace",
                    exec.gid
                ));
            }
            if libc::setresuid(0, 0, 0) != 0 {
                fail(&format!(
                    "become uid 0 (host uid {}) in the user namespace",
                    exec.uid
                ));
            }
            // A mount namespace the job's user namespace owns: buildah's mounts are the job's
            // own, and everything the sandbox mounted is locked beneath them.
            if libc::unshare(libc::CLONE_NEWNS) != 0 {
                fail("unshare the job's mount namespace");
            }
        } else {
            if libc::setgroups(0, std::ptr::null()) != 0 {
                fail("drop supplementary groups");
            }
            if libc::setgid(exec.gid) != 0 {
                fail(&format!("setgid {}", exec.gid));
            }
            if libc::setuid(exec.uid) != 0 {
                fail(&format!("setuid {}", exec.uid));
            }
        }
        // The job's own session keyring, owned by its uid: never the runner's.
        if crate::walls::keyring::enter().is_err() {
            fail("join a new session keyring");
        }
        // setuid binaries and file capabilities do nothing from here on.
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            fail("set no_new_privs");
        }
        // Last before exec: from here on, refused calls return EPERM (the filter also refuses
        // keyctl, so the keyring is joined above).
        if let Some(filter) = &exec.seccomp {
            if filter.install().is_err() {
                fail("install the seccomp filter");
            }
        }
        // Entered as the job uid and never through a symlink the job planted.
        let dir = libc::open(
            exec.cwd.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        );
        if dir < 0 || libc::fchdir(dir) != 0 {
            let e = std::io::Error::last_os_error();
            // The job owns this directory: if it made it a symlink or removed it, the stage
            // fails as the job's own fault, not the host's.
            report(
                err_pipe,
                &format!(
                    "{}the job's builds dir {} is not a directory the job can enter ({e}); a \
                     job must not replace it with a symlink or remove it",
                    super::JOB_FAULT,
                    CStr::from_ptr(exec.cwd.as_ptr()).to_string_lossy()
                ),
            );
            libc::_exit(127);
        }
        libc::close(dir);
        // In an image, the shell is the image's: bash if it has one, else sh (as the docker
        // executor chooses); the script is read through /proc (an image may lack /dev/fd).
        let mut shell = exec.shell.as_ptr();
        let mut argv: Vec<*const libc::c_char> = exec.argv.iter().map(|a| a.as_ptr()).collect();
        if exec.image.is_some() {
            shell = if libc::access(c"/bin/bash".as_ptr(), libc::X_OK) == 0 {
                c"/bin/bash".as_ptr()
            } else {
                c"/bin/sh".as_ptr()
            };
            argv = vec![shell, c"/proc/self/fd/3".as_ptr()];
        }
        argv.push(std::ptr::null());
        let envp: Vec<*const libc::c_char> = exec
            .envp
            .iter()
            .map(|a| a.as_ptr())
            .chain(std::iter::once(std::ptr::null()))
            .collect();
        libc::execve(shell, argv.as_ptr(), envp.as_ptr());
        let e = std::io::Error::last_os_error();
        if exec.image.is_some() {
            // The image has no usable shell: the job's choice of image, not the host's fault.
            report(
                err_pipe,
                &format!(
                    "{}the job's image has no shell to run its script (/bin/bash or /bin/sh: \
                     {e})",
                    super::JOB_FAULT
                ),
            );
            libc::_exit(127);
        }
    }
    fail(&format!("exec {}", exec.shell.to_string_lossy()))
}
