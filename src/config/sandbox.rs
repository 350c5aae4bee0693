//! `[sandbox]`: the per-job sandbox around every job script.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{Problem, default_true};

/// The per-job sandbox: namespaces around every job script (see `sandbox/`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SandboxConfig {
    /// Run every job script in its own mount, PID and IPC namespaces with `no_new_privs`, a
    /// private `/tmp`, and the state root hidden. Turning it off is an explicit choice that
    /// `check` warns about; it has no effect when the executor does not run as root.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// The one size limit shared by the job's private `/tmp`, `/var/tmp` and `/dev/shm` (one
    /// tmpfs, three directories of it bound into place; tmpfs `size=` syntax: `512m`, `4g`,
    /// `10%` of RAM). Its pages count against the job's memory limit. `tmpfs_size` is the old
    /// name, still accepted.
    #[serde(default = "default_tmpfs_size", alias = "tmpfs_size")]
    pub tmp_size: String,
    /// The seccomp filter on every job process: `"default"` (the built-in profile, see
    /// `walls/seccomp/profile.rs`) or `"off"` (`check` warns).
    #[serde(default)]
    pub seccomp: crate::walls::seccomp::Setting,
    /// Groups of refused calls plain jobs (no devstage) may make anyway: `"keyrings"`,
    /// `"io_uring"`. Devstages have their own `seccomp_allow`.
    #[serde(default)]
    pub seccomp_allow: Vec<crate::walls::seccomp::OptIn>,
    /// Further host paths made unreachable inside the sandbox: a directory is covered by an
    /// empty root-owned tmpfs, a file by `/dev/null`. The state root, the builds root, the
    /// keytabs and the audit log are always hidden.
    #[serde(default)]
    pub hide: Vec<PathBuf>,
    /// Plain jobs (no devstage) may build and run containers: their script runs in its own
    /// user namespace with a private subordinate range (`walls/userns.rs`). Devstages have
    /// their own `containers`.
    #[serde(default)]
    pub containers: bool,
    /// World-writable places searched for anything a job uid left behind before the uid is
    /// leased to another job (files are removed; a uid that cannot be cleaned is quarantined).
    #[serde(default = "default_scrub_dirs")]
    pub scrub_dirs: Vec<PathBuf>,
}

fn default_tmpfs_size() -> String {
    // Shared by /tmp, /var/tmp and /dev/shm, and charged to the job's memory limit.
    "10%".into()
}
fn default_scrub_dirs() -> Vec<PathBuf> {
    ["/tmp", "/var/tmp", "/dev/shm", "/run/lock", "/dev/mqueue"]
        .into_iter()
        .map(PathBuf::from)
        .collect()
}

impl Default for SandboxConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            tmp_size: default_tmpfs_size(),
            seccomp: Default::default(),
            seccomp_allow: Vec::new(),
            hide: Vec::new(),
            containers: false,
            scrub_dirs: default_scrub_dirs(),
        }
    }
}

impl SandboxConfig {
    /// Problems with `[sandbox]`.
    pub fn problems(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        // Interpolated into tmpfs mount options: no separators, only a size.
        let size = &self.tmp_size;
        if size.is_empty()
            || !size
                .trim_end_matches(['k', 'm', 'g', 'K', 'M', 'G', '%'])
                .bytes()
                .all(|b| b.is_ascii_digit())
            || !size.as_bytes()[0].is_ascii_digit()
        {
            problems.push(Problem::new(
                "sandbox.tmp_size",
                format!("{size:?} is not a size like \"512m\", \"4g\" or \"25%\""),
            ));
        }
        for (key, paths) in [("hide", &self.hide), ("scrub_dirs", &self.scrub_dirs)] {
            for (i, path) in paths.iter().enumerate() {
                if !path.is_absolute() {
                    problems.push(Problem::new(
                        format!("sandbox.{key}.{i}"),
                        format!("{path:?} is not an absolute path (sandbox.hide and sandbox.scrub_dirs take absolute paths)"),
                    ));
                }
            }
        }
        problems
    }
}
