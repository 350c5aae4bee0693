//! Who a job is: a GitLab ID token verified against the instance's JWKS, optionally confirmed
//! with the GitLab API.
//!
//! Only two inputs are trusted here: the job id in JOB_RESPONSE_FILE (it comes from GitLab
//! through the runner, the job cannot change it) and claims inside a token whose RS256 signature
//! checks out against GitLab's published keys. Job variables such as `CI_COMMIT_REF_PROTECTED`
//! or `CI_COMMIT_TAG` are *never* read: a job's own `variables:` outrank predefined ones, so any
//! branch can forge them. The token itself travels in a job variable, but forging it is useless:
//! it must be signed by GitLab and name this very job.
//!
//! Nothing in this module logs or formats the token: errors carry claim names and the values
//! policy compares (issuer, audience, ids), never the token text.

mod claims;
mod crypto;
mod error;
pub mod gitlab_api;
pub mod jwks;
mod token;

use serde::Serialize;

use crate::config::{Config, RefType};
use crate::job::JobContext;

pub use claims::identity_from_claims;
pub use error::IdentityError;
pub use jwks::JwksStore;
use token::expected_issuer;
pub use token::{Expected, verify_job_token, verify_token, verify_token_for};

/// Where the identity's facts were confirmed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum IdentitySource {
    /// A GitLab ID token with a valid signature.
    IdToken,
    /// A valid ID token whose job, ref, tag flag and user the GitLab API confirmed.
    IdTokenAndGitlabApi,
}

/// The verified facts about a job that policy decides on and the audit log records.
///
/// Every field comes from a signed ID token (and, for [`IdentitySource::IdTokenAndGitlabApi`],
/// was cross-checked with the GitLab API); none comes from a job variable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Identity {
    /// `project_path`, e.g. `group/sub/project`.
    pub project_path: String,
    /// `project_id`.
    pub project_id: u64,
    /// `namespace_path`, e.g. `group/sub`.
    pub namespace_path: String,
    /// `ref`: branch or tag name.
    pub ref_name: String,
    /// `ref_type`.
    pub ref_type: RefType,
    /// `ref_protected`.
    pub ref_protected: bool,
    /// `ref_path`, e.g. `refs/heads/main` (derived from `ref`/`ref_type` when absent).
    pub ref_path: String,
    /// `environment`, when the job declares one.
    pub environment: Option<String>,
    /// `environment_protected` (false without an environment).
    pub environment_protected: bool,
    /// `pipeline_source`, e.g. `push`, `merge_request_event`, `schedule`.
    pub pipeline_source: String,
    /// `pipeline_id`.
    pub pipeline_id: u64,
    /// `user_login`: the user the job runs for.
    pub user_login: String,
    /// `job_id`; always equal to the payload's job id.
    pub job_id: u64,
    /// `jti`: the token's unique id, for the audit log.
    pub jti: String,
    /// `sha`: the commit.
    pub sha: String,
    /// How the identity was established.
    pub source: IdentitySource,
}

/// Verify the job's ID token and return its identity, confirmed with the GitLab API when
/// `identity.confirm_with_gitlab_api` is set.
///
/// The JWKS comes from `identity.jwks_file`, or from `cfg.jwks_url()` through the on-disk cache
/// under `<state_root>/jwks/`.
pub fn verify(cfg: &Config, job: &JobContext) -> Result<Identity, IdentityError> {
    verify_with(cfg, job, &JwksStore::from_config(cfg))
}

/// [`verify`] with an explicit key store (tests, or a caller that keeps one around).
pub fn verify_with(
    cfg: &Config,
    job: &JobContext,
    keys: &JwksStore,
) -> Result<Identity, IdentityError> {
    // Checked before the token is read, so a config without an issuer says so first.
    expected_issuer(cfg)?;
    let (identity, _) = verify_job_token(cfg, job, keys, &Expected::identity(cfg))?;
    if cfg.identity.confirm_with_gitlab_api {
        gitlab_api::confirm(cfg, job, &identity)?;
        return Ok(Identity {
            source: IdentitySource::IdTokenAndGitlabApi,
            ..identity
        });
    }
    Ok(identity)
}
