//! `[images]`: where `image:` jobs' images come from and how they may be pulled.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// GitLab's pull policies (`image: pull_policy`).
pub const PULL_POLICIES: [&str; 3] = ["always", "if-not-present", "never"];

/// `[images]` of the executor config.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ImagesConfig {
    /// Run `image:` jobs in their image (default on). Off: `image:` is refused at prepare.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Image of jobs that name none (None: they run on the host, in its sandbox).
    #[serde(default)]
    pub default: Option<String>,
    /// The shared image store (root-owned containers-storage, vfs); default
    /// `<state_root>/images`.
    #[serde(default)]
    pub store: Option<PathBuf>,
    /// Registry credentials (a containers `auth.json`, root-only) for images the job's own
    /// `CI_REGISTRY_USER`/`CI_REGISTRY_PASSWORD` do not cover.
    #[serde(default)]
    pub auth_file: Option<PathBuf>,
    /// Pull policy of jobs that name none.
    #[serde(default = "default_pull_policy")]
    pub pull_policy: String,
    /// Pull policies a job may ask for; a job asking only for others is refused.
    #[serde(default = "default_allowed_pull_policies")]
    pub allowed_pull_policies: Vec<String>,
    /// Registries spoken to over plain HTTP or without TLS verification (`host:port`).
    #[serde(default)]
    pub insecure_registries: Vec<String>,
    /// Images plain jobs (no devstage) may run in (globs; `**` crosses `/`). Default: any.
    #[serde(default = "default_any")]
    pub plain: Vec<String>,
}

fn default_true() -> bool {
    true
}
fn default_pull_policy() -> String {
    "if-not-present".into()
}
fn default_allowed_pull_policies() -> Vec<String> {
    PULL_POLICIES.iter().map(|s| s.to_string()).collect()
}
fn default_any() -> Vec<String> {
    vec!["**".into()]
}

impl Default for ImagesConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            default: None,
            store: None,
            auth_file: None,
            pull_policy: default_pull_policy(),
            allowed_pull_policies: default_allowed_pull_policies(),
            insecure_registries: Vec::new(),
            plain: default_any(),
        }
    }
}

impl ImagesConfig {
    /// Config check.
    pub fn validate(&self) -> Vec<String> {
        let mut problems = Vec::new();
        for p in self
            .allowed_pull_policies
            .iter()
            .chain(std::iter::once(&self.pull_policy))
        {
            if !PULL_POLICIES.contains(&p.as_str()) {
                problems.push(format!(
                    "[images] pull policy {p:?} is not one of {PULL_POLICIES:?}"
                ));
            }
        }
        if !self.allowed_pull_policies.contains(&self.pull_policy) {
            problems.push(format!(
                "[images] pull_policy {:?} is not in allowed_pull_policies",
                self.pull_policy
            ));
        }
        problems
    }
}
