//! `[sandbox]`: the per-job sandbox around every job script.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{Problem, default_true};
use crate::walls::seccomp::profile::OptIn;
use crate::walls::seccomp::setting::Setting;

/// The per-job sandbox: namespaces around every job script (see `sandbox/`). The file's
/// `[sandbox]` ([`SandboxFile`]) resolved: the seccomp choice is one [`Seccomp`].
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(from = "SandboxFile", into = "SandboxFile")]
pub struct SandboxConfig {
    /// Run every job script in its own namespaces (`[sandbox] enabled`).
    pub enabled: bool,
    /// The size of the job's private `/tmp`, `/var/tmp` and `/dev/shm` (`tmp_size`).
    pub tmp_size: String,
    /// The seccomp filter jobs get (`seccomp` and `seccomp_allow`).
    pub seccomp: Seccomp,
    /// Further host paths made unreachable inside the sandbox (`hide`).
    pub hide: Vec<PathBuf>,
    /// Plain jobs may build and run containers (`containers`).
    pub containers: bool,
    /// Where a job uid's leftovers are searched for (`scrub_dirs`).
    pub scrub_dirs: Vec<PathBuf>,
}

/// `[sandbox] seccomp` with the opt-ins of plain jobs: the filter is either off or the
/// built-in profile, so a consumer matches instead of comparing a setting and reading a list
/// that only means something when the filter is on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seccomp {
    /// `seccomp = "off"`: no filter on any job (`check` warns).
    Off,
    /// The built-in profile (`walls/seccomp/profile.rs`) on every job.
    Filter {
        /// Groups of refused calls plain jobs (no devstage) may make anyway; a devstage's
        /// jobs get its own `seccomp_allow` instead.
        plain_allow: Vec<OptIn>,
    },
}

/// `[sandbox]` as written in the file.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SandboxFile {
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
    pub seccomp: Setting,
    /// Groups of refused calls plain jobs (no devstage) may make anyway: `"keyrings"`,
    /// `"io_uring"`. Devstages have their own `seccomp_allow`. Meaningless with `"off"`.
    #[serde(default)]
    pub seccomp_allow: Vec<OptIn>,
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

impl Default for SandboxFile {
    fn default() -> Self {
        Self {
            enabled: true,
            tmp_size: default_tmpfs_size(),
            seccomp: Setting::default(),
            seccomp_allow: Vec::new(),
            hide: Vec::new(),
            containers: false,
            scrub_dirs: default_scrub_dirs(),
        }
    }
}

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxFile::default().into()
    }
}

/// The infallible part of resolving `[sandbox]`: every combination of its keys is valid
/// (opt-ins with `seccomp = "off"` are moot, not wrong), so it happens as the file is read.
impl From<SandboxFile> for SandboxConfig {
    fn from(file: SandboxFile) -> Self {
        let seccomp = match file.seccomp {
            Setting::Off => Seccomp::Off,
            Setting::Default => Seccomp::Filter {
                plain_allow: file.seccomp_allow,
            },
        };
        Self {
            enabled: file.enabled,
            tmp_size: file.tmp_size,
            seccomp,
            hide: file.hide,
            containers: file.containers,
            scrub_dirs: file.scrub_dirs,
        }
    }
}

impl From<SandboxConfig> for SandboxFile {
    fn from(cfg: SandboxConfig) -> Self {
        let (seccomp, seccomp_allow) = match cfg.seccomp {
            Seccomp::Off => (Setting::Off, Vec::new()),
            Seccomp::Filter { plain_allow } => (Setting::Default, plain_allow),
        };
        Self {
            enabled: cfg.enabled,
            tmp_size: cfg.tmp_size,
            seccomp,
            seccomp_allow,
            hide: cfg.hide,
            containers: cfg.containers,
            scrub_dirs: cfg.scrub_dirs,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seccomp_keys_resolve_to_one_choice() {
        // ([sandbox] text, the choice)
        let cases = [
            (
                "",
                Seccomp::Filter {
                    plain_allow: vec![],
                },
            ),
            (
                "seccomp_allow = [\"io_uring\"]",
                Seccomp::Filter {
                    plain_allow: vec![OptIn::IoUring],
                },
            ),
            (
                "seccomp = \"default\"\nseccomp_allow = [\"keyrings\"]",
                Seccomp::Filter {
                    plain_allow: vec![OptIn::Keyrings],
                },
            ),
            ("seccomp = \"off\"", Seccomp::Off),
            // Opt-ins under no filter are moot, not an error.
            (
                "seccomp = \"off\"\nseccomp_allow = [\"keyrings\"]",
                Seccomp::Off,
            ),
        ];
        for (text, want) in cases {
            let cfg: SandboxConfig = toml::from_str(text).unwrap();
            assert_eq!(cfg.seccomp, want, "{text}");
            let again: SandboxConfig = toml::from_str(&toml::to_string(&cfg).unwrap()).unwrap();
            assert_eq!(again, cfg, "{text}");
        }
        assert_eq!(
            SandboxConfig::default().seccomp,
            Seccomp::Filter {
                plain_allow: vec![]
            }
        );
    }
}
