//! A process handle that cannot be confused with a recycled pid (`pidfd_open`, Linux 5.3+),
//! through `rustix` (nix has no pidfd calls): the executor signals its sandbox's init through
//! one, and a bounded command waits on one for its child to exit.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use nix::sys::signal::Signal;
use nix::unistd::Pid;

/// An open pidfd.
#[derive(Debug)]
pub struct PidFd(OwnedFd);

impl PidFd {
    /// A pidfd for `pid`. Fails on kernels before 5.3, under a seccomp filter that refuses it,
    /// or when `pid` does not exist.
    pub fn open(pid: Pid) -> std::io::Result<Self> {
        let pid = rustix::process::Pid::from_raw(pid.as_raw())
            .ok_or_else(|| std::io::Error::from(rustix::io::Errno::SRCH))?;
        let fd = rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty())?;
        Ok(Self(fd))
    }

    /// Send `sig` (an exited process is not an error worth reporting: the callers signal to
    /// end it, and it has ended).
    pub fn signal(&self, sig: Signal) {
        if let Some(sig) = rustix::process::Signal::from_named_raw(sig as i32) {
            // Ignored: ESRCH (already exited) is the only failure on an open pidfd.
            let _ = rustix::process::pidfd_send_signal(&self.0, sig);
        }
    }
}

impl AsFd for PidFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    use std::time::{Duration, Instant};

    /// Wait until the process exits (the pidfd becomes readable) or `deadline` passes.
    fn wait_exit(fd: &PidFd, deadline: Instant) {
        let left = deadline.saturating_duration_since(Instant::now());
        let ms = i32::try_from(left.as_millis()).unwrap_or(i32::MAX);
        let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
        let _ = poll(
            &mut fds,
            PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX),
        );
    }

    #[test]
    fn waits_for_exit_and_signals_through_the_fd() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let fd = PidFd::open(Pid::from_raw(child.id() as i32)).unwrap();
        let start = Instant::now();
        wait_exit(&fd, start + Duration::from_millis(100));
        assert!(
            start.elapsed() >= Duration::from_millis(90),
            "still running"
        );
        fd.signal(Signal::SIGKILL);
        wait_exit(&fd, Instant::now() + Duration::from_secs(10));
        assert!(start.elapsed() < Duration::from_secs(5));
        assert!(child.wait().unwrap().code().is_none());
        // Exited and reaped: signalling is harmless.
        fd.signal(Signal::SIGTERM);
    }
}
