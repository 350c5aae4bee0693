//! Running a long host tool (an image build, a push) with its output streamed straight into
//! the job log, bounded by a timeout. `command::run_bounded` captures output instead, which is
//! right for short calls whose stderr goes into an error message, wrong for a ten-minute build
//! whose progress the user wants to see live.

use std::os::unix::process::CommandExt;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use p3_contract::command::CommandError;

/// Run `cmd` with stdin closed and stdout/stderr inherited; kill its whole process group when
/// it runs past `timeout`.
pub(crate) fn run_streaming(
    mut cmd: Command,
    timeout: Duration,
) -> Result<ExitStatus, CommandError> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    cmd.stdin(Stdio::null()).process_group(0);
    let mut child = cmd.spawn().map_err(|source| CommandError::Spawn {
        program: program.clone(),
        source,
    })?;
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Ok(status),
            Ok(None) if Instant::now() >= deadline => {
                let pgid = nix::unistd::Pid::from_raw(child.id() as i32);
                // Unchecked: ESRCH (the group is already gone) is its only failure here, and
                // the wait below reaps the child either way; the timeout is what is reported.
                let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
                let _ = child.wait();
                return Err(CommandError::Timeout { program, timeout });
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            Err(source) => return Err(CommandError::Spawn { program, source }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returns_status_and_kills_on_timeout() {
        let mut ok = Command::new("sh");
        ok.args(["-c", "exit 4"]);
        assert_eq!(
            run_streaming(ok, Duration::from_secs(5)).unwrap().code(),
            Some(4)
        );
        let mut slow = Command::new("sh");
        slow.args(["-c", "sleep 30"]);
        let err = run_streaming(slow, Duration::from_millis(200)).unwrap_err();
        assert!(matches!(err, CommandError::Timeout { .. }));
    }
}
