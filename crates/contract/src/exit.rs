//! Every exit code p3-executor's binaries use, decided here and nowhere else.
//!
//! | outcome | runner calls (`config`, `prepare`, `run`, `cleanup`) | built-in steps (in a job) |
//! |---|---|---|
//! | success | 0 | 0 ([`STEP_OK`]) |
//! | the job script exited N ≠ 0 | `BUILD_FAILURE_EXIT_CODE`; N in `BUILD_EXIT_CODE_FILE` | — |
//! | build failure: the job's fault (denied, bad input) | `BUILD_FAILURE_EXIT_CODE` (default 1) | `BUILD_FAILURE_EXIT_CODE` (default 1) |
//! | system failure: the host's fault (config, KDC, spawn) | `SYSTEM_FAILURE_EXIT_CODE` (default 2) | 1 ([`STEP_FAILED`]): 2 is usage |
//! | a remote or operational failure of a step (unreachable, timeout, TLS, HTTP error) | — | 1 ([`STEP_FAILED`]) |
//! | a step's bad usage | — | 2 ([`STEP_USAGE`]) |
//! | a step interrupted by a signal | — | 130 ([`STEP_INTERRUPTED`]) |
//!
//! The built-in steps use one table ([`step_code`]): 0 done; 1 a remote or operational
//! failure (a refused request, an unreachable server, a timeout) or input the job gave that
//! cannot be used (a bad `p3.toml`: `BUILD_FAILURE_EXIT_CODE` when the runner set one);
//! 2 bad usage (arguments, missing settings: a [`Usage`] error); 130 interrupted.
//!
//! Host tools (`check`, `gc`, `audit verify`) exit 0 when all is well and 1 when they found a
//! problem. Library code classifies a failure once (its error type's `kind()`); the binaries
//! turn the kind into a code with [`ExitCodes`].

/// Which side of the runner's contract a failure falls on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// The job's fault: exit with `BUILD_FAILURE_EXIT_CODE`.
    Build,
    /// The host's fault: exit with `SYSTEM_FAILURE_EXIT_CODE`.
    System,
}

/// A step finished and everything it was asked to do was done.
pub const STEP_OK: i32 = 0;
/// A step ran but some of its work failed (each failure was printed).
pub const STEP_FAILED: i32 = 1;
/// A step was called wrongly (arguments, missing settings).
pub const STEP_USAGE: i32 = 2;
/// A step was interrupted (SIGINT/SIGTERM), as shells report it.
pub const STEP_INTERRUPTED: i32 = 130;

/// Exit codes the runner told us to use (section 6 of the protocol).
#[derive(Debug, Clone, Copy)]
pub struct ExitCodes {
    /// `BUILD_FAILURE_EXIT_CODE`, default 1.
    pub build_failure: i32,
    /// `SYSTEM_FAILURE_EXIT_CODE`, default 2.
    pub system_failure: i32,
}

impl ExitCodes {
    /// Read the codes from the runner's environment, falling back to the protocol defaults.
    pub fn from_env() -> Self {
        let read = |name: &str, default: i32| {
            std::env::var(name)
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(default)
        };
        Self {
            build_failure: read("BUILD_FAILURE_EXIT_CODE", 1),
            system_failure: read("SYSTEM_FAILURE_EXIT_CODE", 2),
        }
    }

    /// Exit code for a failure kind.
    pub fn for_kind(&self, kind: FailureKind) -> i32 {
        match kind {
            FailureKind::Build => self.build_failure,
            FailureKind::System => self.system_failure,
        }
    }
}

/// A classified failure of code outside the executor (the built-in steps): what went wrong
/// and whose fault it is.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Failure {
    /// Build (the job's fault) or system (the host's).
    pub kind: FailureKind,
    /// What went wrong, for the job log.
    pub message: String,
}

impl Failure {
    /// The job's fault: bad input, a refused request.
    pub fn build(message: impl Into<String>) -> Self {
        Self {
            kind: FailureKind::Build,
            message: message.into(),
        }
    }

    /// The host's fault.
    pub fn system(message: impl Into<String>) -> Self {
        Self {
            kind: FailureKind::System,
            message: message.into(),
        }
    }
}

/// A built-in step was called wrongly (arguments, a missing setting): exit 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Usage(pub String);

/// The exit code of a built-in step that failed with `err`: [`STEP_USAGE`] when a [`Usage`]
/// error is in its chain; the build-failure code (`BUILD_FAILURE_EXIT_CODE`, default 1) for
/// the job's own bad input (a [`Failure`] of kind build: a wrong `p3.toml`); else
/// [`STEP_FAILED`] (a remote or operational failure, whoever's fault).
pub fn step_code(err: &anyhow::Error, codes: &ExitCodes) -> i32 {
    if err.chain().any(|e| e.downcast_ref::<Usage>().is_some()) {
        STEP_USAGE
    } else if err
        .chain()
        .filter_map(|e| e.downcast_ref::<Failure>())
        .any(|f| f.kind == FailureKind::Build)
    {
        codes.build_failure
    } else {
        STEP_FAILED
    }
}

/// The kind of an `anyhow` error from a binary's edge: a [`Failure`] in its chain keeps its
/// kind; anything else (an unexpected I/O error) is a system failure.
pub fn kind_of(err: &anyhow::Error) -> FailureKind {
    err.chain()
        .find_map(|e| e.downcast_ref::<Failure>())
        .map_or(FailureKind::System, |f| f.kind)
}

/// The message a binary prints for `err`: each cause in its chain once. Error types that
/// include their cause in their own text (`"write state.json: No space left on device"`) would
/// otherwise print it twice with `{:#}`.
pub fn describe(err: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if text.is_empty() || out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classified_failures_keep_their_kind_and_the_rest_is_system() {
        let wrapped = anyhow::Error::new(Failure::build("bad")).context("step");
        assert_eq!(kind_of(&wrapped), FailureKind::Build);
        assert_eq!(kind_of(&anyhow::anyhow!("other")), FailureKind::System);
        let codes = ExitCodes {
            build_failure: 7,
            system_failure: 9,
        };
        assert_eq!(codes.for_kind(FailureKind::Build), 7);
        assert_eq!(codes.for_kind(FailureKind::System), 9);
    }

    #[test]
    fn steps_exit_2_for_usage_and_1_for_everything_else() {
        let codes = ExitCodes {
            build_failure: 1,
            system_failure: 2,
        };
        let usage = anyhow::Error::new(Usage("bad flag".into())).context("release");
        assert_eq!(step_code(&usage, &codes), STEP_USAGE);
        assert_eq!(step_code(&anyhow::anyhow!("timeout"), &codes), STEP_FAILED);
        assert_eq!(
            step_code(&anyhow::Error::new(Failure::system("x")), &codes),
            STEP_FAILED,
            "never 2: that is usage"
        );
        let custom = ExitCodes {
            build_failure: 17,
            system_failure: 18,
        };
        assert_eq!(
            step_code(&anyhow::Error::new(Failure::build("p3.toml")), &custom),
            17
        );
    }

    #[derive(Debug, thiserror::Error)]
    #[error("{context}: {source}")]
    struct WithCause {
        context: String,
        #[source]
        source: std::io::Error,
    }

    #[test]
    fn every_cause_is_printed_once() {
        let disk_full = std::io::Error::from_raw_os_error(28);
        let err = anyhow::Error::new(WithCause {
            context: "write state.json".into(),
            source: disk_full,
        })
        .context("prepare");
        let text = describe(&err);
        assert_eq!(text.matches("os error 28").count(), 1, "{text}");
        assert!(text.starts_with("prepare: write state.json: "), "{text}");
        assert_eq!(describe(&anyhow::anyhow!("plain")), "plain");
    }
}
