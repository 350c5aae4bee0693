//! What can go wrong with a job's cgroup: a leaf of its own, so `crate::error` can name it
//! without depending on the cgroup wall (which depends on `crate::error`).

use std::path::PathBuf;

/// What can go wrong with a job's cgroup (a system failure: the host's, not the job's).
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// The host has no usable cgroup hierarchy.
    #[error(
        "per-job cgroups are not available on this host: {0}; run `p3-executor check`, or set [limits] cgroups = \"off\" to run jobs without limits (not recommended)"
    )]
    Unsupported(String),
    /// A controller the limits need is not available where job cgroups are made.
    #[error(
        "the {controller} controller is not available in {dir}: delegate it to the runner (systemd: Delegate=yes in gitlab-runner.service, see the README's Limits section), or set [limits] cgroup_parent"
    )]
    MissingController {
        /// `memory`, `pids` or `cpu`.
        controller: String,
        /// Where it is missing.
        dir: PathBuf,
    },
    /// A cgroup file or directory could not be read, written, made or removed.
    #[error("cgroup: cannot {what} {path}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The file or directory.
        path: PathBuf,
        /// The kernel's answer.
        #[source]
        source: std::io::Error,
    },
    /// Processes were still in the job's cgroup after the kill's deadline.
    #[error("processes are still in {0} after SIGKILL (stuck in the kernel?)")]
    StillPopulated(PathBuf),
}

impl CgroupError {
    /// The kernel refused with EBUSY (v2: a cgroup with processes cannot hand out controllers).
    pub fn is_busy(&self) -> bool {
        matches!(self, CgroupError::Io { source, .. } if source.raw_os_error() == Some(libc::EBUSY))
    }

    /// The file does not exist (a kernel without that interface).
    pub fn is_not_found(&self) -> bool {
        matches!(self, CgroupError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
    }
}
