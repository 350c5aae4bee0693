//! The executor's error type and its one mapping to runner exit codes.
//!
//! Every failure is classified exactly once, here: a *build failure* is the job's fault (its
//! script failed, policy denied what it asked for, its input was wrong); a *system failure* is
//! the host's fault (bad config, KDC down, cannot spawn) and makes the runner retry prepare.

use std::path::PathBuf;

/// Library result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

pub use p3_contract::exit::{ExitCodes, FailureKind};

/// Everything that can go wrong in the executor.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The executor config cannot be read or is invalid.
    #[error("invalid executor config {path}:\n{message}")]
    Config {
        /// Config file.
        path: PathBuf,
        /// What is wrong, naming the key.
        message: String,
    },
    /// The runner's job payload is missing or malformed.
    #[error("job payload (JOB_RESPONSE_FILE) {0}")]
    Payload(String),
    /// The per-job workspace is missing or unusable.
    #[error("job workspace: {0}")]
    Workspace(String),
    /// The job script could not be started or supervised.
    #[error("cannot run job script: {0}")]
    Spawn(String),
    /// The job asked for something it is not allowed to have.
    #[error("{0}")]
    Denied(String),
    /// Credentials could not be obtained, refreshed or destroyed on the host side.
    #[error("{0}")]
    Credentials(String),
    /// The job broke its own workspace (e.g. replaced its builds dir with a symlink).
    #[error("{0}")]
    JobFault(String),
    /// Bad arguments or input to a built-in step.
    #[error("{0}")]
    Usage(String),
    /// The job hit one of its limits (OOM-killed, a fork refused at `pids.max`) and failed;
    /// the message names the limit and the setting behind it.
    #[error("{0}")]
    LimitExceeded(String),
    /// The job's cgroup could not be made, entered or removed.
    #[error(transparent)]
    Cgroup(#[from] crate::walls::cgroup::error::CgroupError),
    /// The network wall (nftables) could not be set up or taken down.
    #[error(transparent)]
    Network(#[from] crate::walls::network::error::NetworkError),
    /// A file read on a job's behalf is larger than the executor accepts.
    #[error("{what} {path} is larger than the {limit}-byte limit; refusing to read it")]
    TooLarge {
        /// What the file is (`job payload (JOB_RESPONSE_FILE)`, `job script`, ...).
        what: String,
        /// The file.
        path: PathBuf,
        /// The limit in bytes.
        limit: u64,
    },
    /// An I/O error with what was being done.
    #[error("{context}: {source}")]
    Io {
        /// What the executor was doing.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// The one place that decides build versus system failure.
    pub fn kind(&self) -> FailureKind {
        match self {
            Error::Denied(_) | Error::Usage(_) | Error::JobFault(_) | Error::LimitExceeded(_) => {
                FailureKind::Build
            }
            Error::Config { .. }
            | Error::Payload(_)
            | Error::Workspace(_)
            | Error::Spawn(_)
            | Error::Credentials(_)
            | Error::TooLarge { .. }
            | Error::Cgroup(_)
            | Error::Network(_)
            | Error::Io { .. } => FailureKind::System,
        }
    }

    /// Wrap an I/O error with context.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}

/// Classify an `anyhow` error from the CLI edge: our own errors keep their kind, anything else
/// (an unexpected I/O failure in a step, say) is a system failure.
pub fn kind_of(err: &anyhow::Error) -> FailureKind {
    err.chain()
        .find_map(|e| e.downcast_ref::<Error>())
        .map(Error::kind)
        .unwrap_or_else(|| p3_contract::exit::kind_of(err))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn denial_is_the_jobs_fault_and_config_the_hosts() {
        assert_eq!(Error::Denied("x".into()).kind(), FailureKind::Build);
        assert_eq!(Error::Credentials("kdc".into()).kind(), FailureKind::System);
        let wrapped = anyhow::Error::new(Error::Usage("bad".into())).context("step");
        assert_eq!(kind_of(&wrapped), FailureKind::Build);
        assert_eq!(kind_of(&anyhow::anyhow!("other")), FailureKind::System);
    }
}
