//! The four calls GitLab Runner makes to a custom executor, one module each.
//!
//! See `shared/protocol/custom-executor.md`: `config` → `prepare` → `run` (per stage) →
//! `cleanup`, each a separate process. They share state only through the job's workspace.

pub mod cleanup;
pub mod config;
pub mod prepare;
pub mod run;

use std::path::PathBuf;

use crate::error::{Error, Result};

/// Host name shown in the job log and audit records.
pub fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "unknown-host".into())
}

/// Where the runner wants the script's real exit code (absent outside the runner).
pub fn build_exit_code_file() -> Option<PathBuf> {
    std::env::var_os("BUILD_EXIT_CODE_FILE")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// Record the script's real exit code for `allow_failure: exit_codes`.
///
/// The runner never clears this file, so it is overwritten before every build-failure exit.
pub fn write_build_exit_code(code: i32) -> Result<()> {
    if let Some(path) = build_exit_code_file() {
        std::fs::write(&path, format!("{code}\n"))
            .map_err(|e| Error::io(format!("write BUILD_EXIT_CODE_FILE {}", path.display()), e))?;
    }
    Ok(())
}
