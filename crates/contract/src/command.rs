//! Running host tools (kinit, credential_process, buildah, the P3 client) with an argv, a
//! timeout and captured output. Never through a shell.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use crate::pidfd::PidFd;

/// Why a bounded command failed to produce an exit status.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// The program could not be started.
    #[error("cannot start {program}: {source}")]
    Spawn {
        /// Program name.
        program: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The program ran past its timeout and was killed.
    #[error("{program} did not finish within {} s and was killed", timeout.as_secs_f32())]
    Timeout {
        /// Program name.
        program: String,
        /// The bound.
        timeout: Duration,
    },
}

/// Captured result of a bounded command.
#[derive(Debug)]
pub struct Output {
    /// Exit status.
    pub status: ExitStatus,
    /// Captured stdout.
    pub stdout: Vec<u8>,
    /// Captured stderr.
    pub stderr: Vec<u8>,
}

impl Output {
    /// stderr as trimmed text (for error messages: tools like kinit say exactly what is wrong).
    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).trim().to_string()
    }
}

/// Run `cmd` with stdin closed, capturing stdout and stderr, killing its whole process group
/// if it runs longer than `timeout`.
pub fn run_bounded(cmd: Command, timeout: Duration) -> Result<Output, CommandError> {
    run_bounded_until(cmd, timeout, &AtomicBool::new(false))
}

/// How long a command told to stop (SIGTERM to its process group) gets before SIGKILL.
pub(crate) const STOP_GRACE: Duration = Duration::from_secs(5);

/// How long output is still read after the tool exited, while something it started holds its
/// pipes open; then that is killed (it is in the tool's process group) and the tool's status
/// returned.
const EXIT_GRACE: Duration = Duration::from_secs(1);

/// [`run_bounded`], and when `stop` becomes true (a signal handler set it) the command's
/// process group gets SIGTERM, then SIGKILL after [`STOP_GRACE`]: the caller was asked to
/// stop, and its command with it.
pub fn run_bounded_until(
    mut cmd: Command,
    timeout: Duration,
    stop: &AtomicBool,
) -> Result<Output, CommandError> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = cmd.spawn().map_err(|source| CommandError::Spawn {
        program: program.clone(),
        source,
    })?;
    let pgid = nix::unistd::Pid::from_raw(child.id() as i32);
    // Both pipes and the exit are waited for in one poll on this thread: no reader threads to
    // start, and no thread to wake when a tool like kinit (~5 ms) exits.
    let mut pipes = [
        Pipe::new(child.stdout.take().expect("piped")),
        Pipe::new(child.stderr.take().expect("piped")),
    ];
    // None where unavailable (old kernel, seccomp): the wait then polls the pipes in short
    // sleeps. The child is not reaped yet, so the pid is still ours.
    let pidfd = PidFd::open(pgid).ok();
    let mut deadline = Instant::now() + timeout;
    let mut stopping = false;
    let mut sleep = Duration::from_millis(1);
    let mut status = None;
    loop {
        if status.is_none() {
            match child.try_wait() {
                Ok(exited) => status = exited,
                Err(source) => return Err(CommandError::Spawn { program, source }),
            }
            if status.is_some() {
                deadline = deadline.min(Instant::now() + EXIT_GRACE);
            }
        }
        let open = pipes.iter().any(Pipe::is_open);
        let expired = Instant::now() >= deadline;
        // Unchecked: ESRCH (the group is already gone) is its only failure.
        let kill_group = || nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
        match status {
            // The tool's own status decides, with its output read to the end, or to the end of
            // EXIT_GRACE, when what it left still holding its output is ended.
            Some(status) if !open || expired => {
                if open {
                    let _ = kill_group();
                }
                let [out, err] = pipes;
                return Ok(Output {
                    status,
                    stdout: out.buf,
                    stderr: err.buf,
                });
            }
            None if expired => {
                let _ = kill_group();
                let _ = child.wait();
                return Err(CommandError::Timeout { program, timeout });
            }
            _ => {}
        }
        if stop.load(Ordering::SeqCst) && !stopping {
            stopping = true;
            // Unchecked: ESRCH (already exited) is its only failure; the loop reaps it.
            let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGTERM);
            deadline = deadline.min(Instant::now() + STOP_GRACE);
        }
        // A signal handler may set `stop` while we wait: wait in steps of at most 100 ms.
        let mut step = deadline
            .saturating_duration_since(Instant::now())
            .min(Duration::from_millis(100));
        let exit_fd = match (&pidfd, status) {
            (Some(fd), None) => Some(fd.as_fd()),
            (None, None) => {
                step = step.min(sleep);
                sleep = (sleep * 2).min(Duration::from_millis(20));
                None
            }
            (_, Some(_)) => None,
        };
        wait_readable(&mut pipes, exit_fd, step);
    }
}

/// One of the child's output pipes and what was read from it; closed at end of file.
struct Pipe {
    fd: Option<OwnedFd>,
    buf: Vec<u8>,
}

impl Pipe {
    fn new(fd: impl Into<OwnedFd>) -> Self {
        Pipe {
            fd: Some(fd.into()),
            buf: Vec::new(),
        }
    }

    fn is_open(&self) -> bool {
        self.fd.is_some()
    }

    /// Read what is there (poll said so: this does not block). A read error ends the pipe
    /// with what it read: the exit status decides, the output only explains.
    fn drain(&mut self) {
        let Some(fd) = &self.fd else { return };
        let mut chunk = [0u8; 64 * 1024];
        match nix::unistd::read(fd, &mut chunk) {
            Ok(0) => self.fd = None,
            Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            Err(nix::errno::Errno::EINTR | nix::errno::Errno::EAGAIN) => {}
            Err(_) => self.fd = None,
        }
    }
}

/// Wait up to `step` for output on the open pipes or for the exit (`exit_fd`, a pidfd), and
/// read what arrived. An interrupted or failed poll returns early: the caller loops.
fn wait_readable(pipes: &mut [Pipe; 2], exit_fd: Option<BorrowedFd<'_>>, step: Duration) {
    let ms = i32::try_from(step.as_micros().div_ceil(1000)).unwrap_or(i32::MAX);
    let timeout = PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX);
    let mut fds: Vec<PollFd<'_>> = Vec::with_capacity(3);
    let mut which = Vec::with_capacity(2);
    for (i, pipe) in pipes.iter().enumerate() {
        if let Some(fd) = &pipe.fd {
            fds.push(PollFd::new(fd.as_fd(), PollFlags::POLLIN));
            which.push(i);
        }
    }
    if let Some(fd) = exit_fd {
        fds.push(PollFd::new(fd, PollFlags::POLLIN));
    }
    if !matches!(poll(&mut fds, timeout), Ok(n) if n > 0) {
        return;
    }
    let ready: Vec<usize> = which
        .iter()
        .zip(&fds)
        .filter(|(_, fd)| fd.revents().is_some_and(|r| !r.is_empty()))
        .map(|(i, _)| *i)
        .collect();
    drop(fds);
    for i in ready {
        pipes[i].drain();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captures_output_and_status() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo out; echo err >&2; exit 3"]);
        let out = run_bounded(cmd, Duration::from_secs(5)).unwrap();
        assert_eq!(out.status.code(), Some(3));
        assert_eq!(out.stdout, b"out\n");
        assert_eq!(out.stderr_text(), "err");
    }

    #[test]
    fn kills_a_command_that_hangs_including_its_children() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "sleep 30 & sleep 30"]);
        let start = Instant::now();
        let err = run_bounded(cmd, Duration::from_millis(200)).unwrap_err();
        assert!(matches!(err, CommandError::Timeout { .. }), "{err}");
        assert!(start.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn a_stop_request_terminates_the_command_group() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "trap 'echo stopped; exit 143' TERM; sleep 30 & wait"]);
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let s2 = stop.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            s2.store(true, Ordering::SeqCst);
        });
        let start = Instant::now();
        let out = run_bounded_until(cmd, Duration::from_secs(30), &stop).unwrap();
        assert_eq!(out.status.code(), Some(143));
        assert!(start.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn both_pipes_are_read_in_full_while_the_tool_runs() {
        // More than a pipe holds (64 KiB) on each, interleaved: the tool would block on a full
        // pipe if either were left unread until it exits.
        let mut cmd = Command::new("sh");
        cmd.args([
            "-c",
            "i=0; while [ $i -lt 3000 ]; do echo out-line-$i-padding-padding-padding; \
             echo err-line-$i-padding-padding-padding >&2; i=$((i+1)); done",
        ]);
        let out = run_bounded(cmd, Duration::from_secs(20)).unwrap();
        assert!(out.status.success());
        let stdout = String::from_utf8(out.stdout).unwrap();
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert_eq!(stdout.lines().count(), 3000);
        assert_eq!(stderr.lines().count(), 3000);
        assert!(stdout.ends_with("out-line-2999-padding-padding-padding\n"));
        assert!(stderr.starts_with("err-line-0-"));
    }

    #[test]
    fn a_tool_that_exits_is_not_held_up_by_what_it_left_running() {
        // The tool exits at once; a background process it started keeps its stdout open and
        // writes once more soon after. Output is read for EXIT_GRACE after the exit, then that
        // process (in the tool's group) is killed, and the tool's own status and output are
        // returned, well before the 60 s bound.
        let mut cmd = Command::new("sh");
        cmd.args([
            "-c",
            "echo started; (sleep 0.2; echo late; exec sleep 30) & echo $! >&2; exit 3",
        ]);
        let start = Instant::now();
        let out = run_bounded(cmd, Duration::from_secs(60)).unwrap();
        let took = start.elapsed();
        assert!(took >= EXIT_GRACE, "stopped reading at once: {took:?}");
        assert!(took < EXIT_GRACE * 4, "waited for the sleep: {took:?}");
        assert_eq!(out.status.code(), Some(3));
        assert_eq!(out.stdout, b"started\nlate\n");
        let left: i32 = out.stderr_text().parse().unwrap();
        // SIGKILLed as part of the group: gone (or a zombie of init's) shortly after.
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::path::Path::new(&format!("/proc/{left}/cmdline")).exists()
            && std::fs::read(format!("/proc/{left}/cmdline")).is_ok_and(|c| !c.is_empty())
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        let cmdline = std::fs::read(format!("/proc/{left}/cmdline")).unwrap_or_default();
        assert!(cmdline.is_empty(), "the sleep it left still runs");
    }

    #[test]
    fn missing_program_is_a_spawn_error() {
        let err = run_bounded(Command::new("/nonexistent/tool"), Duration::from_secs(1));
        assert!(matches!(err, Err(CommandError::Spawn { .. })));
    }
}
