//! The walls' side in the job's own process: what the shell does after its uid switch and
//! before exec, in this order (the same for the sandbox's shell and `process.rs`'s).

use crate::walls::{abstract_sockets, keyring, seccomp};

/// What the job's shell enters before exec, made in the supervisor before any fork (the child
/// only makes system calls: nothing to allocate, nothing to compile).
#[derive(Debug, Clone, Default)]
pub struct ChildWalls {
    /// `no_new_privs` (the sandbox's shell; a seccomp filter sets it anyway).
    pub(crate) no_new_privs: bool,
    /// The compiled filter; `None` when `[sandbox] seccomp = "off"`.
    pub(crate) seccomp: Option<seccomp::Filter>,
    /// The abstract unix socket scope; `None` on a kernel without it.
    pub(crate) abstract_sockets: Option<abstract_sockets::Ruleset>,
}

impl ChildWalls {
    /// In the job's process, after the uid switch: a fresh session keyring (before the filter,
    /// which refuses `keyctl`), `no_new_privs` (setuid binaries and file capabilities do nothing
    /// from here on), the abstract socket scope (which needs it), then the filter, last before
    /// exec. Async-signal-safe. `Err` names the step that failed.
    pub(crate) fn apply(&self) -> Result<(), (&'static str, std::io::Error)> {
        keyring::enter().map_err(|e| ("join a new session keyring", e))?;
        // The filter would set it anyway; the scope needs it first. Without either (no
        // sandbox, seccomp off) setuid binaries keep working, and the scope is not entered.
        let no_new_privs = self.no_new_privs || self.seccomp.is_some();
        if no_new_privs {
            nix::sys::prctl::set_no_new_privs().map_err(|e| ("set no_new_privs", e.into()))?;
        }
        if let Some(scope) = self.abstract_sockets.as_ref().filter(|_| no_new_privs) {
            scope
                .enter()
                .map_err(|e| ("scope abstract unix sockets", e))?;
        }
        if let Some(filter) = &self.seccomp {
            filter
                .install()
                .map_err(|e| ("install the seccomp filter", e))?;
        }
        Ok(())
    }
}
