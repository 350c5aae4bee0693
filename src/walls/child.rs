//! The walls' side in the job's own process: what the shell does after its uid switch and
//! before exec, in this order (the same for the sandbox's shell and `process.rs`'s).

use crate::walls::{keyring, seccomp};

/// What the job's shell enters before exec, made in the supervisor before any fork (the child
/// only makes system calls: nothing to allocate, nothing to compile).
#[derive(Debug, Clone, Default)]
pub struct ChildWalls {
    /// `no_new_privs` (the sandbox's shell; a seccomp filter sets it anyway).
    pub(crate) no_new_privs: bool,
    /// The compiled filter; `None` when `[sandbox] seccomp = "off"`.
    pub(crate) seccomp: Option<seccomp::Filter>,
}

impl ChildWalls {
    /// In the job's process, after the uid switch: a fresh session keyring (before the filter,
    /// which refuses `keyctl`), `no_new_privs` (setuid binaries and file capabilities do nothing
    /// from here on), then the filter, last before exec. Async-signal-safe. `Err` names the
    /// step that failed.
    pub(crate) fn apply(&self) -> Result<(), (&'static str, std::io::Error)> {
        keyring::enter().map_err(|e| ("join a new session keyring", e))?;
        if self.no_new_privs {
            nix::sys::prctl::set_no_new_privs().map_err(|e| ("set no_new_privs", e.into()))?;
        }
        if let Some(filter) = &self.seccomp {
            filter
                .install()
                .map_err(|e| ("install the seccomp filter", e))?;
        }
        Ok(())
    }
}
