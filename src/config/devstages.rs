//! `[devstages.<name>]`: who may be granted a devstage, and with which account.

use serde::{Deserialize, Serialize};

/// Ref kinds GitLab reports in `ref_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RefType {
    /// A branch.
    Branch,
    /// A tag.
    Tag,
}

/// Who may be granted a devstage, and with which account.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Devstage {
    /// Account (deploy stage) whose credentials the job gets, e.g. `client_uat` for `client_prod`.
    pub deploy_account: String,
    /// Project path globs (`group/sub/*`); the verified `project_path` must match one.
    pub projects: Vec<String>,
    /// Allowed ref types.
    #[serde(default = "default_ref_types")]
    pub ref_types: Vec<RefType>,
    /// The ref must be protected.
    #[serde(default)]
    pub protected_ref: bool,
    /// Regex a branch name must match (when the ref is a branch).
    #[serde(default)]
    pub branch_pattern: Option<String>,
    /// Regex a tag must match (when the ref is a tag), e.g. `^v\d+\.\d+\.\d+$`.
    #[serde(default)]
    pub tag_pattern: Option<String>,
    /// Allowed `pipeline_source` values (None: any).
    #[serde(default)]
    pub pipeline_sources: Option<Vec<String>>,
    /// Required protected environment (job `environment:` name), if any.
    #[serde(default)]
    pub environment: Option<String>,
    /// Groups of calls the seccomp filter refuses that this devstage's jobs may make anyway:
    /// `"keyrings"` (a `KEYRING:` ticket cache), `"io_uring"`.
    #[serde(default)]
    pub seccomp_allow: Vec<crate::walls::seccomp::OptIn>,
    /// Limits of this devstage's jobs, in place of `[limits]` for the keys it sets.
    #[serde(default)]
    pub limits: Option<crate::walls::cgroup::limits::LimitsConfig>,
    /// What this devstage's jobs may reach, after `[network] deny` (`walls/network/`).
    #[serde(default)]
    pub network: Option<crate::walls::network::config::StageNetwork>,
    /// This devstage's jobs may build and run containers (their own user namespace with a
    /// private subordinate range, `walls/userns.rs`).
    #[serde(default)]
    pub containers: bool,
    /// Images this devstage's jobs may run in (globs, `**` crosses `/`); None: any.
    #[serde(default)]
    pub images: Option<Vec<String>>,
    /// Only images pinned by digest (`name@sha256:...`).
    #[serde(default)]
    pub require_digest: bool,
}

fn default_ref_types() -> Vec<RefType> {
    vec![RefType::Branch, RefType::Tag]
}
