//! The per-job sandbox: every job script runs in its own mount, PID and IPC namespaces, with
//! `no_new_privs`, a private `/tmp`, and nothing of the executor's state in reach but the job's
//! own directories.
//!
//! Built on the kernel's interfaces directly (`unshare`, `mount`, `prctl` via `nix`/`libc`)
//! rather than bubblewrap: the executor already runs as root and already supervises the
//! script, so a sandbox costs one fork and a few mounts instead of another exec, and the uid
//! switch, the sealed script fd and the error reporting stay in one place.
//!
//! Process tree of one `run`:
//! ```text
//! p3-executor run (supervisor, root, host namespaces)
//!   └─ PID 1: init (root until the shell forks; mounts, reaps, forwards signals)
//!        └─ PID 2: job shell (job uid, no_new_privs, own process group) ─ whatever it starts
//! ```
//! The supervisor is init's parent and init dies with it (`PR_SET_PDEATHSIG`); when init
//! exits, the kernel kills every process left in the namespace, so "everything the job
//! started" is exact.

mod image;
pub(crate) mod image_root;
mod init;
mod job_exec;
mod mounts;
pub mod plan;
mod reaper;
mod shell;

pub use image_root::{HostRuntime, ImageRoot, host_ca_bundle, host_runtime};

use std::ffi::{CString, OsStr};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nix::fcntl::{OFlag, open, openat};
use nix::sched::CloneFlags;
use nix::sys::signal::Signal;
use nix::sys::stat::Mode;
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::ForkResult;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::process::{ScriptOutcome, ScriptSpec};
use crate::workspace::JobPaths;
use plan::{MountOp, PlanInput};

/// Prefix of an error-pipe message that is the job's own fault (a build failure).
pub(crate) const JOB_FAULT: &str = "job-fault: ";

/// Directories every job gets a private tmpfs for.
pub const PRIVATE_DIRS: [&str; 3] = ["/tmp", "/var/tmp", "/dev/shm"];

/// The mounts of one job's sandbox and the job directories they bind back.
#[derive(Debug)]
pub struct Sandbox {
    ops: Vec<MountOp>,
    keep: Vec<KeepDir>,
    tmpfs_size: String,
    /// A container job's user namespace (`walls/userns.rs`); None for every other job.
    userns: Option<crate::walls::userns::JobUserns>,
    /// An image stage's root (`images/`): the shell runs in the job's image.
    image: Option<ImageRoot>,
    /// The private dirs and the kept dirs, bound into an image.
    binds: (Vec<PathBuf>, Vec<PathBuf>),
}

/// A job directory bound back into the sandbox: `<parent>/<name>`, owned by `owner`.
#[derive(Debug, Clone)]
pub(crate) struct KeepDir {
    parent: PathBuf,
    name: String,
    owner: u32,
}

impl KeepDir {
    /// Open it (without following a symlink) and check its owner.
    pub(crate) fn open(&self) -> Result<OwnedFd> {
        open_job_dir(&self.parent, &self.name, self.owner)
    }
}

fn is_real_dir(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.is_dir())
}

fn cstring(bytes: &OsStr, what: &str) -> Result<CString> {
    CString::new(bytes.as_bytes()).map_err(|_| Error::Spawn(format!("{what} contains a NUL byte")))
}

/// Open a directory the job owns, without following a symlink in its last component:
/// `parent` is root-owned (from the config), `name` the job id.
fn open_job_dir(parent: &Path, name: &str, owner: u32) -> Result<OwnedFd> {
    let dir = open(
        parent,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| Error::Workspace(format!("open {}: {e}", parent.display())))?;
    let fd = openat(
        &dir,
        name,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| {
        Error::Workspace(format!(
            "open {}/{name} (must be a directory, not a symlink): {e}",
            parent.display()
        ))
    })?;
    let fd = std::fs::File::from(fd);
    let meta = fd
        .metadata()
        .map_err(|e| Error::io(format!("stat {}/{name}", parent.display()), e))?;
    if meta.uid() != owner {
        return Err(Error::Workspace(format!(
            "{}/{name} is owned by uid {}, expected {owner}",
            parent.display(),
            meta.uid()
        )));
    }
    Ok(OwnedFd::from(fd))
}

impl Sandbox {
    /// The sandbox for one job running as `uid`: private tmp dirs, the executor's state,
    /// builds root, keytabs and audit log hidden, the job's root and credentials dir kept.
    pub fn for_job(cfg: &Config, paths: &JobPaths, uid: u32) -> Result<Self> {
        let id = paths.job_id.to_string();
        let keep = vec![
            KeepDir {
                parent: cfg.builds_root.clone(),
                name: id.clone(),
                owner: uid,
            },
            KeepDir {
                parent: cfg.state_root.join("creds"),
                name: id,
                owner: 0,
            },
        ];
        // Checked here for a clear error; opened again inside the job's mount namespace
        // (a bind mount's source must be in the caller's namespace).
        for k in &keep {
            k.open()?;
        }
        let mut input = PlanInput {
            private_dirs: PRIVATE_DIRS
                .iter()
                .map(PathBuf::from)
                .filter(|p| is_real_dir(p))
                .collect(),
            hide_dirs: vec![cfg.state_root.clone(), cfg.builds_root.clone()],
            hide_files: Vec::new(),
            keep: vec![paths.job_root.clone(), paths.creds.clone()],
            mqueue: is_real_dir(Path::new("/dev/mqueue")),
            exec_dir: crate::siblings::dir(),
        };
        let hidden = cfg
            .accounts
            .values()
            .map(|a| &a.keytab)
            .chain([&cfg.audit.path])
            .chain(&cfg.sandbox.hide);
        for path in hidden {
            match std::fs::symlink_metadata(path) {
                Ok(m) if m.is_dir() => input.hide_dirs.push(path.clone()),
                Ok(m) if m.is_file() => input.hide_files.push(path.clone()),
                _ => {}
            }
        }
        if let Some(dir) = plan::exec_dir_left_hidden(&input) {
            tracing::warn!(
                dir = %dir.display(),
                "the executor's directory is hidden from jobs and holds a hidden path: jobs \
                 cannot run the built-in steps; install the binaries elsewhere"
            );
        }
        Ok(Self {
            ops: plan::plan(&input),
            keep,
            tmpfs_size: cfg.sandbox.tmp_size.clone(),
            userns: None,
            image: None,
            binds: (input.private_dirs.clone(), input.keep.clone()),
        })
    }

    /// Run the job's shell in its own user namespace (a container job), or not (`None`).
    pub fn with_userns(mut self, userns: Option<crate::walls::userns::JobUserns>) -> Self {
        self.userns = userns;
        self
    }

    /// Run the job's shell in its image (an image job's user stage), or not (`None`); needs a
    /// user namespace.
    pub fn with_image(mut self, image: Option<ImageRoot>) -> Self {
        self.image = image;
        self
    }
}

/// Can this host create the namespaces the sandbox needs? `Err` says why not.
pub fn probe() -> std::result::Result<(), String> {
    // SAFETY: the child only makes syscalls and exits.
    match unsafe { nix::unistd::fork() } {
        Ok(ForkResult::Child) => {
            let ok = nix::sched::unshare(
                CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWPID | CloneFlags::CLONE_NEWIPC,
            )
            .is_ok();
            // SAFETY: leave the forked child without running destructors.
            unsafe { libc::_exit(if ok { 0 } else { 1 }) }
        }
        Ok(ForkResult::Parent { child }) => match waitpid(child, None) {
            Ok(WaitStatus::Exited(_, 0)) => Ok(()),
            Ok(_) => Err(
                "unshare(CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWIPC) is refused (not root, or \
                 namespaces disabled in this kernel or container)"
                    .into(),
            ),
            Err(e) => Err(format!("wait for the namespace probe: {e}")),
        },
        Err(e) => Err(format!("fork: {e}")),
    }
}

/// Run `spec` (which must switch to a job uid) inside `sandbox`; see the module docs.
pub fn run_script(spec: &ScriptSpec, mut sandbox: Sandbox) -> Result<ScriptOutcome> {
    let (uid, gid) = spec
        .user
        .ok_or_else(|| Error::Spawn("the sandbox needs a job uid to switch to".into()))?;
    crate::process::forwarded_set()
        .thread_block()
        .map_err(|e| Error::Spawn(format!("block signals: {e}")))?;
    let shell = which::which(&spec.shell)
        .map_err(|e| Error::Spawn(format!("shell {:?} not found on PATH: {e}", spec.shell)))?;
    let script_fd = crate::process::script_memfd(&spec.script)?;
    // Kept open until the clone below: init binds its files and writes its maps.
    let userns = sandbox.userns.take();
    let exec = job_exec::JobExec {
        shell: cstring(shell.as_os_str(), "shell path")?,
        argv: vec![
            cstring(shell.as_os_str(), "shell path")?,
            CString::new("/dev/fd/3").expect("no NUL"),
        ],
        envp: spec
            .env
            .iter()
            .map(|(k, v)| {
                let mut kv = k.clone();
                kv.push("=");
                kv.push(v);
                cstring(&kv, "job environment")
            })
            .collect::<Result<_>>()?,
        cwd: cstring(spec.cwd.as_os_str(), "builds dir")?,
        uid,
        gid,
        script_fd: script_fd.as_raw_fd(),
        // The sandbox's shell also sets no_new_privs when no filter does.
        walls: crate::walls::child::ChildWalls {
            no_new_privs: true,
            ..spec.walls.clone()
        },
        userns: userns.as_ref(),
        image: sandbox
            .image
            .as_ref()
            .map(|i| (i, &sandbox.binds.0, &sandbox.binds.1)),
    };
    let (err_read, err_write) =
        nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| Error::Spawn(format!("pipe: {e}")))?;
    let leftover_grace = spec.grace.min(Duration::from_secs(5));
    // The child is PID 1 of a new PID namespace (clone, not unshare: a process whose
    // children go to another PID namespace can no longer start threads).
    let mut stack = vec![0u8; 256 << 10];
    let (ops, keep) = (&sandbox.ops, &sandbox.keep);
    let tmpfs_size = &sandbox.tmpfs_size;
    let (err_read_raw, err_write_raw) = (err_read.as_raw_fd(), err_write.as_raw_fd());
    let child_main = Box::new(|| -> isize {
        // The child's copy of the read end. Ignored: closing a read end loses nothing.
        let _ = nix::unistd::close(err_read_raw);
        let code = init::init_main(ops, keep, tmpfs_size, &exec, err_write_raw, leftover_grace);
        // SAFETY: leave without running the supervisor's destructors.
        unsafe { libc::_exit(code) }
    });
    // SAFETY: this process is single-threaded here (the signal forwarder starts below); the
    // child gets a copy of the address space (no CLONE_VM) and only runs init_main.
    let init = unsafe {
        nix::sched::clone(
            child_main,
            &mut stack,
            CloneFlags::CLONE_NEWPID,
            Some(libc::SIGCHLD),
        )
    }
    .map_err(|e| {
        Error::Spawn(format!(
            "the job sandbox needs PID, mount and IPC namespaces, which this host refuses \
             (clone: {e}); run `p3-executor check`, or set [sandbox] enabled = false to run \
             jobs without it (not recommended)"
        ))
    })?;
    drop(err_write);
    let pidfd = crate::process::PidFd::open(init);
    drop(sandbox);
    drop(script_fd);
    // EOF once the shell has exec'd (the pipe is close-on-exec) or everything has failed.
    let mut message = String::new();
    // Ignored: a read error leaves what was read; the exit status below still decides.
    let _ = std::io::Read::read_to_string(&mut std::fs::File::from(err_read), &mut message);
    let cancelled = Arc::new(AtomicBool::new(false));
    spawn_signal_forwarder(pidfd, cancelled.clone(), spec.grace);
    let status = loop {
        match waitpid(init, None) {
            Err(nix::Error::EINTR) => continue,
            other => break other,
        }
    };
    if let Some(fault) = message.strip_prefix(JOB_FAULT) {
        return Err(Error::JobFault(fault.to_string()));
    }
    if !message.is_empty() {
        return Err(Error::Spawn(message));
    }
    let code = match status {
        Ok(WaitStatus::Exited(_, c)) => c,
        Ok(WaitStatus::Signaled(_, s, _)) => 128 + s as i32,
        Ok(other) => return Err(Error::Spawn(format!("job sandbox: unexpected {other:?}"))),
        Err(e) => return Err(Error::Spawn(format!("wait for the job sandbox: {e}"))),
    };
    Ok(ScriptOutcome {
        code,
        cancelled: cancelled.load(Ordering::SeqCst),
    })
}

/// On SIGTERM/SIGINT/SIGHUP/SIGQUIT from the runner: SIGTERM to the sandbox's init (which
/// passes it to every process of the job), then SIGKILL to init after the grace period, which
/// takes the whole PID namespace down.
fn spawn_signal_forwarder(
    init: std::io::Result<crate::process::PidFd>,
    cancelled: Arc<AtomicBool>,
    grace: Duration,
) {
    // Signals go through a pidfd, so a late SIGKILL can never hit a recycled pid.
    let Ok(init) = init.map(Arc::new) else {
        tracing::warn!("pidfd_open failed: cancellation reaches the job only by the runner's kill");
        return;
    };
    std::thread::spawn(move || {
        let set = crate::process::forwarded_set();
        let mut first: Option<Instant> = None;
        loop {
            let Ok(sig) = set.wait() else { return };
            tracing::warn!(signal = ?sig, "cancellation requested: stopping the job's processes");
            cancelled.store(true, Ordering::SeqCst);
            if first.is_none() {
                first = Some(Instant::now());
                init.signal(Signal::SIGTERM);
                let init = init.clone();
                std::thread::spawn(move || {
                    std::thread::sleep(grace);
                    init.signal(Signal::SIGKILL);
                });
            }
        }
    });
}
