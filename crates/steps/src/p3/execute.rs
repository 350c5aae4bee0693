//! Running the rendered client calls, one after the other, past failures, until told to stop
//! (SIGTERM, Ctrl-C).

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use p3_contract::command::run_bounded_until;
use p3_contract::steps_config::Action;
use serde::Serialize;

use super::plan::Invocation;

/// Outcome of one call.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct JobResult {
    /// P3 job name.
    pub(crate) job: String,
    /// Action.
    pub(crate) action: Action,
    /// Whether the client exited 0.
    pub(crate) ok: bool,
    /// Wall time in milliseconds.
    pub(crate) duration_ms: u128,
    /// The client's error text (stderr, else stdout) when it failed.
    pub(crate) error: Option<String>,
    /// The client's stdout (status output).
    #[serde(skip)]
    pub(crate) output: String,
}

/// Where a run stood when it was told to stop (SIGTERM, Ctrl-C).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Stopped {
    /// The job whose call was running (and was sent SIGTERM): its state in P3 is unknown.
    pub(crate) in_flight: Option<String>,
    /// Jobs never started.
    pub(crate) not_started: Vec<String>,
}

/// Run each call with `env` added to the inherited job environment (so `KRB5CCNAME` and the
/// rest pass through), continuing past failures, until `stop` becomes true: the call in flight
/// then gets SIGTERM and no other starts. Returns the finished calls and, when stopped, where it stood.
pub(crate) fn execute_until(
    action: Action,
    calls: &[Invocation],
    env: &[(String, String)],
    timeout: Duration,
    stop: &AtomicBool,
) -> (Vec<JobResult>, Option<Stopped>) {
    let mut results = Vec::new();
    for (i, call) in calls.iter().enumerate() {
        if stop.load(Ordering::SeqCst) {
            return (
                results,
                Some(Stopped {
                    in_flight: None,
                    not_started: calls[i..].iter().map(|c| c.job.clone()).collect(),
                }),
            );
        }
        let start = Instant::now();
        let mut cmd = Command::new(&call.argv[0]);
        cmd.args(&call.argv[1..]);
        cmd.envs(env.iter().map(|(k, v)| (k, v)));
        let outcome = run_bounded_until(cmd, timeout, stop);
        if stop.load(Ordering::SeqCst) {
            // Stopped while this call ran: whatever it printed, P3 may or may not have it.
            return (
                results,
                Some(Stopped {
                    in_flight: Some(call.job.clone()),
                    not_started: calls[i + 1..].iter().map(|c| c.job.clone()).collect(),
                }),
            );
        }
        let (ok, error, output) = match outcome {
            Ok(out) => {
                let stdout = String::from_utf8_lossy(&out.stdout).trim().to_string();
                if out.status.success() {
                    (true, None, stdout)
                } else {
                    let mut msg = out.stderr_text();
                    if msg.is_empty() {
                        msg = stdout.clone();
                    }
                    (false, Some(format!("{}: {msg}", out.status)), stdout)
                }
            }
            Err(e) => (false, Some(e.to_string()), String::new()),
        };
        results.push(JobResult {
            job: call.job.clone(),
            action,
            ok,
            duration_ms: start.elapsed().as_millis(),
            error,
            output,
        });
    }
    (results, None)
}

/// Set by SIGTERM and SIGINT once [`catch_stop_signals`] ran.
pub(crate) static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop(_: std::ffi::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// SIGTERM (the runner cancelling the job) and SIGINT set [`STOP`] instead of killing the
/// step, so it can stop its client and say where it stood.
pub(crate) fn catch_stop_signals() {
    use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};
    let action = SigAction::new(
        SigHandler::Handler(on_stop),
        SaFlags::empty(),
        SigSet::empty(),
    );
    for sig in [Signal::SIGTERM, Signal::SIGINT] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        // Unchecked: sigaction fails only with EINVAL, which SIGTERM and SIGINT never give.
        let _ = unsafe { sigaction(sig, &action) };
    }
}
