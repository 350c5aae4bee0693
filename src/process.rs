//! Running a job script: own process group, optional user switch, signal forwarding, and a
//! guarantee that no process the job started outlives the call.
//!
//! The executor makes itself a *child subreaper*, so every process the script starts, even one
//! that double-forks or calls `setsid` to leave the process group, stays its descendant and is
//! found and killed when the stage ends or is cancelled.

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::time::{Duration, Instant};

use nix::fcntl::{self, OFlag};
use nix::sys::memfd::{MFdFlags, memfd_create};
use nix::sys::prctl;
use nix::sys::signal::{self, SigSet, Signal};
use nix::sys::stat::{Mode, fchmod};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{self, Gid, Pid, Uid};
use p3_contract::procs;

use crate::error::{Error, Result};

/// How to run one script.
#[derive(Debug, Clone)]
pub struct ScriptSpec {
    /// Shell binary (name or path).
    pub shell: String,
    /// Script file written by the runner.
    pub script: PathBuf,
    /// Working directory.
    pub cwd: PathBuf,
    /// Complete environment of the script (nothing is inherited).
    pub env: Vec<(OsString, OsString)>,
    /// Switch to this uid/gid before exec (the executor runs as root).
    pub user: Option<(u32, u32)>,
    /// SIGTERM → SIGKILL grace period on cancellation.
    pub grace: Duration,
    /// The walls the shell enters after the uid switch, before exec (with a uid switch only):
    /// its session keyring and the seccomp filter.
    pub walls: crate::walls::child::ChildWalls,
}

/// How a script ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScriptOutcome {
    /// Exit code (128+N when killed by signal N).
    pub code: i32,
    /// The run was cancelled by a signal from the runner.
    pub cancelled: bool,
}

const FORWARDED: [Signal; 4] = [
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGHUP,
    Signal::SIGQUIT,
];

/// The signals the supervisor forwards to the job (blocked in the supervisor, taken by sigwait).
pub(crate) fn forwarded_set() -> SigSet {
    let mut set = SigSet::empty();
    for s in FORWARDED {
        set.add(s);
    }
    set
}

/// Run a script to completion under supervision; see the module docs.
pub fn run_script(spec: &ScriptSpec) -> Result<ScriptOutcome> {
    // Block the signals we forward before any thread or child exists; the sigwait thread takes
    // them. std resets the signal mask in the child.
    forwarded_set()
        .thread_block()
        .map_err(|e| Error::Spawn(format!("block signals: {e}")))?;
    become_subreaper();

    let shell = which::which(&spec.shell)
        .map_err(|e| Error::Spawn(format!("shell {:?} not found on PATH: {e}", spec.shell)))?;
    let mut cmd = Command::new(&shell);
    cmd.env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .process_group(0);
    if spec.user.is_none() {
        cmd.current_dir(&spec.cwd);
    }
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            // The forwarded signals are blocked in this process; the job must receive them.
            SigSet::empty().thread_set_mask()?;
            Ok(())
        });
    }

    // The runner's script file is root-only in the runner's private temp dir. When switching
    // user, hand the script over as a read-only in-memory file on fd 3 instead of copying it
    // into a directory the job could race on.
    let _script_fd: Option<OwnedFd> = match spec.user {
        Some((uid, gid)) => {
            let fd = script_memfd(&spec.script)?;
            let raw = fd.as_raw_fd();
            let cwd = std::ffi::CString::new(spec.cwd.as_os_str().as_encoded_bytes())
                .map_err(|_| Error::Spawn("builds dir contains a NUL byte".into()))?;
            cmd.arg("/dev/fd/3");
            let walls = spec.walls.clone();
            // SAFETY: only async-signal-safe calls between fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    // dup2 onto itself keeps FD_CLOEXEC: clear it explicitly in that case.
                    // (Raw dup2: nix's wants an owned target fd, which would close fd 3 here.)
                    if raw == 3 {
                        let fd = BorrowedFd::borrow_raw(3);
                        fcntl::fcntl(fd, fcntl::FcntlArg::F_SETFD(fcntl::FdFlag::empty()))?;
                    } else if libc::dup2(raw, 3) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    unistd::setgroups(&[])?;
                    unistd::setgid(Gid::from_raw(gid))?;
                    unistd::setuid(Uid::from_raw(uid))?;
                    // Entered only as the job uid and never through a symlink: the job owns
                    // this directory and could point it at another job's tree.
                    let dir = fcntl::open(
                        cwd.as_c_str(),
                        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                        Mode::empty(),
                    )?;
                    unistd::fchdir(&dir)?;
                    // Closed on drop; a close error on a read-only directory loses nothing.
                    drop(dir);
                    // The job's own session keyring, then the filter (which refuses keyctl).
                    walls.apply().map_err(|(_, e)| e)
                });
            }
            Some(fd)
        }
        None => {
            cmd.arg(&spec.script);
            None
        }
    };

    // SAFETY: prctl only. Registered last because a uid change clears the death signal.
    unsafe {
        cmd.pre_exec(|| {
            // If the executor itself is SIGKILLed (runner's force kill), take the script down
            // too; what it started is then killed by uid in cleanup or gc.
            prctl::set_pdeathsig(Signal::SIGKILL)?;
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(|e| {
        Error::Spawn(format!(
            "{} {}: {e}",
            shell.display(),
            spec.script.display()
        ))
    })?;
    let pgid = child.id() as i32;
    let cancelled = Arc::new(AtomicBool::new(false));
    let group = Arc::new(AtomicI32::new(pgid));
    spawn_signal_forwarder(group.clone(), cancelled.clone(), spec.grace);

    let status = child
        .wait()
        .map_err(|e| Error::Spawn(format!("wait for job script: {e}")))?;
    let code = status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0));

    // The script is gone; whatever it left behind (background jobs, daemons) goes too, or it
    // would hold the runner's output pipes open and outlive the job.
    let was_cancelled = cancelled.load(Ordering::SeqCst);
    let grace = if was_cancelled {
        spec.grace
    } else {
        spec.grace.min(Duration::from_secs(5))
    };
    terminate_descendants(pgid, grace);
    Ok(ScriptOutcome {
        code,
        cancelled: was_cancelled || cancelled.load(Ordering::SeqCst),
    })
}

/// Make this process the reaper of its orphaned descendants (Linux ≥ 3.4). Without it the
/// script still runs, and what double-forks is left to cleanup's kill by uid: a warning.
fn become_subreaper() {
    if let Err(e) = prctl::set_child_subreaper(true) {
        tracing::warn!(
            "PR_SET_CHILD_SUBREAPER: {e}: processes that leave the job's process group are found only by cleanup"
        );
    }
}

/// Largest job script the executor reads (the runner's scripts are a few hundred KiB at most).
pub const MAX_SCRIPT_BYTES: u64 = 64 << 20;

/// Copy the script into a sealed, read-only memfd.
pub(crate) fn script_memfd(script: &Path) -> Result<OwnedFd> {
    let content = crate::limits::read_bounded(script, MAX_SCRIPT_BYTES, "job script")?;
    let fd = memfd_create(
        c"p3-job-script",
        MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING,
    )
    .map_err(|e| Error::Spawn(format!("memfd_create: {}", std::io::Error::from(e))))?;
    let mut file = std::fs::File::from(fd);
    use std::io::Write;
    file.write_all(&content)
        .map_err(|e| Error::Spawn(format!("write script memfd: {e}")))?;
    let fd = OwnedFd::from(file);
    let seals = fcntl::SealFlag::F_SEAL_WRITE
        | fcntl::SealFlag::F_SEAL_GROW
        | fcntl::SealFlag::F_SEAL_SHRINK
        | fcntl::SealFlag::F_SEAL_SEAL;
    let sealed = (|| -> nix::Result<bool> {
        fchmod(&fd, Mode::from_bits_truncate(0o444))?;
        fcntl::fcntl(&fd, fcntl::FcntlArg::F_ADD_SEALS(seals))?;
        let now = fcntl::fcntl(&fd, fcntl::FcntlArg::F_GET_SEALS)?;
        Ok(now & seals.bits() == seals.bits())
    })();
    match sealed {
        Ok(true) => Ok(fd),
        Ok(false) => Err(Error::Spawn(
            "seal the job script memfd read-only: the seals did not hold".into(),
        )),
        Err(e) => Err(Error::Spawn(format!(
            "seal the job script memfd read-only: {}",
            std::io::Error::from(e)
        ))),
    }
}

/// On SIGTERM/SIGINT/SIGHUP/SIGQUIT: forward SIGTERM to the job's group and descendants, wait
/// the grace period, then SIGKILL them.
fn spawn_signal_forwarder(group: Arc<AtomicI32>, cancelled: Arc<AtomicBool>, grace: Duration) {
    std::thread::spawn(move || {
        let set = forwarded_set();
        let mut first: Option<Instant> = None;
        loop {
            let Ok(sig) = set.wait() else { return };
            tracing::warn!(signal = ?sig, "cancellation requested: stopping the job's processes");
            cancelled.store(true, Ordering::SeqCst);
            let pgid = group.load(Ordering::SeqCst);
            if first.is_none() {
                first = Some(Instant::now());
                signal_all(pgid, Signal::SIGTERM);
                let deadline = Instant::now() + grace;
                std::thread::spawn(move || {
                    while Instant::now() < deadline {
                        if !group_alive(pgid) && descendants().is_empty() {
                            return;
                        }
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    signal_all(pgid, Signal::SIGKILL);
                });
            }
        }
    });
}

/// Send `sig` to the process group and to every descendant of this process.
fn signal_all(pgid: i32, sig: Signal) {
    // Ignored: ESRCH (the group or the process is already gone) is what we want.
    let _ = signal::killpg(Pid::from_raw(pgid), sig);
    for pid in descendants() {
        // Ignored: as above.
        let _ = signal::kill(Pid::from_raw(pid), sig);
    }
}

fn group_alive(pgid: i32) -> bool {
    signal::killpg(Pid::from_raw(pgid), None).is_ok()
}

/// Every live descendant of this process, from /proc.
pub fn descendants() -> Vec<i32> {
    let me = std::process::id() as i32;
    let mut children: HashMap<i32, Vec<i32>> = HashMap::new();
    for p in procs::processes() {
        children.entry(p.status.ppid).or_default().push(p.pid);
    }
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    let mut stack = vec![me];
    while let Some(p) = stack.pop() {
        for &c in children.get(&p).into_iter().flatten() {
            if seen.insert(c) {
                out.push(c);
                stack.push(c);
            }
        }
    }
    out
}

/// Reap zombies; true when this process has no children left.
fn reap() -> bool {
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => return false,
            Ok(_) => continue,
            Err(_) => return true, // ECHILD
        }
    }
}

/// After the script exited: SIGTERM what it left behind, wait up to `grace`, SIGKILL the rest,
/// and reap until no descendant is left (bounded, in case of an unkillable D-state process).
fn terminate_descendants(pgid: i32, grace: Duration) {
    if reap() && !group_alive(pgid) {
        return;
    }
    // Common and harmless (git leaves its background maintenance after a fetch): debug only.
    tracing::debug!("stopping processes the job script left running");
    signal_all(pgid, Signal::SIGTERM);
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if reap() && !group_alive(pgid) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let hard_deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < hard_deadline {
        signal_all(pgid, Signal::SIGKILL);
        if reap() && !group_alive(pgid) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    tracing::error!("some job processes did not die after SIGKILL");
}

/// Kill every process holding `uid` in any uid field (a private per-job uid only: never a
/// shared one).
pub fn kill_uid(uid: u32) -> usize {
    if uid == 0 || uid == nix::unistd::getuid().as_raw() {
        return 0;
    }
    let mut killed = 0;
    for _ in 0..50 {
        let pids = pids_of_uid(uid);
        if pids.is_empty() {
            break;
        }
        for pid in &pids {
            if signal::kill(Pid::from_raw(*pid), Signal::SIGKILL).is_ok() {
                killed += 1;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    killed
}

/// Processes that hold `uid` as their real, effective, saved or filesystem uid.
///
/// Every field counts: a process that exec'd a setuid binary keeps the job's real uid with
/// another effective uid, and one that called setresuid may keep it only as the saved uid.
/// Zombies are skipped (already dead; reaping them is their parent's job).
pub fn pids_of_uid(uid: u32) -> Vec<i32> {
    procs::processes()
        .into_iter()
        .filter(|p| p.status.holds_uid(|u| u == uid))
        .map(|p| p.pid)
        .collect()
}

/// A process handle that cannot be confused with a recycled pid (the sandbox signals its init
/// through one).
pub use p3_contract::pidfd::PidFd;

#[cfg(test)]
mod tests {
    use super::*;

    /// Does a `/proc/<pid>/status` text belong to a live process holding `uid` in any uid field?
    fn status_holds_uid(status: &str, uid: u32) -> bool {
        procs::Status::parse(status).holds_uid(|u| u == uid)
    }

    fn status(state: &str, uids: &str) -> String {
        format!("Name:\tx\nState:\t{state}\nTgid:\t1\nUid:\t{uids}\nGid:\t0\t0\t0\t0\n")
    }

    #[test]
    fn a_uid_in_any_field_counts_and_zombies_do_not() {
        let cases = [
            ("S (sleeping)", "5000\t5000\t5000\t5000", true),
            ("S (sleeping)", "5000\t0\t0\t0", true), // exec'd a setuid-root binary
            ("R (running)", "0\t0\t5000\t0", true),  // kept only as the saved uid
            ("S (sleeping)", "0\t0\t0\t5000", true), // filesystem uid
            ("S (sleeping)", "50000\t50000\t50000\t50000", false),
            ("Z (zombie)", "5000\t5000\t5000\t5000", false),
        ];
        for (state, uids, want) in cases {
            assert_eq!(
                status_holds_uid(&status(state, uids), 5000),
                want,
                "{state} {uids}"
            );
        }
    }
}
