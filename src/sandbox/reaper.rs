//! PID 1's other job once the shell runs: reap every orphan of the namespace, pass the
//! supervisor's SIGTERM on to all of its processes, and give leftovers a grace when the shell
//! exits (returning then makes the kernel SIGKILL the rest).

use std::time::{Duration, Instant};

use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, kill, sigaction};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

/// Signals PID 1 takes: the supervisor's forwarded ones and SIGCHLD.
pub(super) fn signals() -> SigSet {
    let mut set = crate::process::forwarded_set();
    set.add(Signal::SIGCHLD);
    set
}

extern "C" fn noop(_: libc::c_int) {}

/// Make PID 1 able to take [`signals`]: a namespace's init only receives signals it has a
/// handler for; the handler never runs (the signals are blocked here and taken with
/// `sigtimedwait` by [`supervise`]).
pub(super) fn take_signals() -> Result<SigSet, String> {
    let set = signals();
    let action = SigAction::new(SigHandler::Handler(noop), SaFlags::empty(), SigSet::empty());
    for sig in set.iter() {
        // SAFETY: the handler does nothing, so it is async-signal-safe.
        unsafe { sigaction(sig, &action) }
            .map_err(|e| format!("sandbox: take {sig} in the namespace's init: {e}"))?;
    }
    set.thread_block()
        .map_err(|e| format!("sandbox: block signals in the namespace's init: {e}"))?;
    Ok(set)
}

/// SIGTERM to every process of the namespace but init.
fn terminate_all() {
    // Ignored: ESRCH (nothing left but init) is what we want. kill(-1) from a namespace's
    // init reaches exactly that namespace.
    let _ = kill(Pid::from_raw(-1), Signal::SIGTERM);
}

/// Wait for a signal of `set` for at most `wait`; `None` on timeout.
fn next_signal(set: &SigSet, wait: Duration) -> Option<libc::c_int> {
    let ts = libc::timespec {
        tv_sec: wait.as_secs() as libc::time_t,
        tv_nsec: wait.subsec_nanos() as libc::c_long,
    };
    // SAFETY: sigtimedwait on a valid set; no siginfo wanted. Raw libc: nix has no timed wait.
    let sig = unsafe { libc::sigtimedwait(set.as_ref(), std::ptr::null_mut(), &ts) };
    // -1 is EAGAIN (the time is up) or EINTR: either way no signal, and the caller reaps
    // and comes back.
    (sig > 0).then_some(sig)
}

/// Reap until the shell's status is known and no child is left, or the leftovers' grace is
/// over. Returns the shell's exit code (128+N if killed by N).
pub(super) fn supervise(shell: Pid, signals: &SigSet, leftover_grace: Duration) -> i32 {
    let mut code: Option<i32> = None;
    let mut deadline: Option<Instant> = None;
    loop {
        let wait = deadline.map_or(Duration::from_secs(1), |d| {
            d.saturating_duration_since(Instant::now())
        });
        if next_signal(signals, wait).is_some_and(|sig| sig != libc::SIGCHLD) {
            // Cancellation from the supervisor: every process of the namespace gets SIGTERM;
            // the supervisor SIGKILLs this init (and so everything) after the grace period.
            terminate_all();
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
                    terminate_all();
                    deadline = Some(Instant::now() + leftover_grace);
                }
                Some(d) if Instant::now() >= d => return code,
                Some(_) => {}
            }
        }
    }
}
