//! Credential grants for one job: identity → policy → credentials → audit.
//!
//! This is the only module that connects the verified identity to the credentials a job gets.

use crate::config::Config;
use crate::error::Result;
use crate::job::JobContext;
use crate::workspace::{JobPaths, JobState};

/// Decide and obtain the credentials a job asked for (no request: nothing to do).
pub fn prepare(
    cfg: &Config,
    job: &JobContext,
    _paths: &JobPaths,
    _state: &mut JobState,
) -> Result<()> {
    let _request = job.variable(&cfg.identity.request_variable);
    Ok(())
}

/// Renew or refresh credentials that are close to expiry, before a run stage.
pub fn refresh(
    _cfg: &Config,
    _job: &JobContext,
    _paths: &JobPaths,
    _state: &mut JobState,
) -> Result<()> {
    Ok(())
}

/// Destroy a job's credentials and record it.
pub fn revoke(_cfg: &Config, _paths: &JobPaths, _state: &JobState, _reason: &str) -> Result<()> {
    Ok(())
}

/// Host checks for accounts and keytabs, for `p3-executor check`.
pub fn check(_cfg: &Config) -> Vec<crate::check::Finding> {
    Vec::new()
}
