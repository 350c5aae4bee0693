//! Running host tools (kinit, credential_process, buildah, the P3 client) with an argv, a
//! timeout and captured output. Never through a shell.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

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
    // Drain both pipes on threads so a chatty tool cannot block on a full pipe.
    let mut out = child.stdout.take().expect("piped");
    let mut err = child.stderr.take().expect("piped");
    // A read error ends a drain with what it read: the exit status decides, the output only
    // explains.
    let out_t = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = out.read_to_end(&mut b);
        b
    });
    let err_t = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = err.read_to_end(&mut b);
        b
    });
    let mut deadline = Instant::now() + timeout;
    let mut stopping = false;
    let mut sleep = Duration::from_millis(1);
    // Wake up the moment the child exits: tools like kinit take ~5 ms, and sleep-polling
    // alone adds up to half of that again (measured by benches/kinit.rs).
    // None where unavailable (old kernel, seccomp): sleep-polling then. The child is not
    // reaped yet, so the pid is still ours.
    let pidfd = PidFd::open(nix::unistd::Pid::from_raw(child.id() as i32)).ok();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() >= deadline => {
                let pgid = nix::unistd::Pid::from_raw(child.id() as i32);
                // Unchecked: ESRCH (the group is already gone) is its only failure here, and
                // the wait below reaps the child either way; the timeout is what is reported.
                let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
                let _ = child.wait();
                return Err(CommandError::Timeout { program, timeout });
            }
            Ok(None) if stop.load(Ordering::SeqCst) && !stopping => {
                stopping = true;
                let pgid = nix::unistd::Pid::from_raw(child.id() as i32);
                // Unchecked: ESRCH (already exited) is its only failure; the loop reaps it.
                let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGTERM);
                deadline = deadline.min(Instant::now() + STOP_GRACE);
            }
            // A signal handler may set `stop` while we sleep: poll in short steps then.
            Ok(None) => match &pidfd {
                Some(fd) => fd.wait_exit(deadline.min(Instant::now() + Duration::from_millis(100))),
                None => {
                    std::thread::sleep(sleep);
                    sleep = (sleep * 2).min(Duration::from_millis(20));
                }
            },
            Err(source) => return Err(CommandError::Spawn { program, source }),
        }
    };
    Ok(Output {
        status,
        stdout: out_t.join().unwrap_or_default(),
        stderr: err_t.join().unwrap_or_default(),
    })
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
    fn missing_program_is_a_spawn_error() {
        let err = run_bounded(Command::new("/nonexistent/tool"), Duration::from_secs(1));
        assert!(matches!(err, Err(CommandError::Spawn { .. })));
    }
}
