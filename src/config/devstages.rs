//! `[devstages.<name>]`: who may be granted a devstage, and with which account.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{Account, Problem};

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

impl Devstage {
    /// Problems with `[devstages.<name>]`; `accounts` are the configured accounts.
    pub fn problems(&self, name: &str, accounts: &BTreeMap<String, Account>) -> Vec<Problem> {
        let key = |k: &str| format!("devstages.{name}.{k}");
        let mut problems = Vec::new();
        if let Some(limits) = &self.limits {
            let section = key("limits");
            problems.extend(
                limits
                    .problems(&section)
                    .iter()
                    .map(|p| Problem::from_text(&section, p)),
            );
        }
        if !accounts.contains_key(&self.deploy_account) {
            problems.push(Problem::new(
                key("deploy_account"),
                format!(
                    "{:?} names no [accounts.{}] section (known: {})",
                    self.deploy_account,
                    self.deploy_account,
                    accounts.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            ));
        }
        if self.projects.is_empty() {
            problems.push(Problem::new(
                key("projects"),
                "is empty: list the project path globs allowed",
            ));
        }
        for (k, pattern) in [
            ("branch_pattern", &self.branch_pattern),
            ("tag_pattern", &self.tag_pattern),
        ] {
            if let Some(p) = pattern
                && let Err(e) = check_regex(p)
            {
                problems.push(Problem::new(key(k), format!("invalid regex {p:?}: {e}")));
            }
        }
        for (i, glob) in self.projects.iter().enumerate() {
            if let Err(e) = globset::Glob::new(glob) {
                problems.push(Problem::new(
                    key(&format!("projects.{i}")),
                    format!("invalid glob {glob:?}: {e}"),
                ));
            }
        }
        problems
    }
}

/// Syntax check of a pattern without compiling it: every runner call validates the config,
/// and building the automaton is only needed where a pattern is matched (policy, steps).
fn check_regex(pattern: &str) -> std::result::Result<(), String> {
    regex_syntax::Parser::new()
        .parse(pattern)
        .map(drop)
        // regex-syntax draws the pattern with a caret above the error: keep its last line.
        .map_err(|e| {
            let text = e.to_string();
            let last = text.lines().last().unwrap_or_default();
            last.trim_start_matches("error: ").to_string()
        })
}
