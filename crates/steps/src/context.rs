//! What a built-in step knows about the job it runs in: the `[steps]` settings the executor's
//! `prepare` wrote for it (`P3_STEPS_CONFIG`), the devstage facts `prepare` set, and the
//! standard GitLab CI variables.
//!
//! Steps run as the job user and cannot read the executor's root-only config, so everything
//! comes from the job environment. The environment is read through a lookup function so tests
//! (and the pure decision code) never depend on the process environment.

use std::fmt;
use std::path::{Path, PathBuf};

use p3_contract::env;
use p3_contract::exit::Failure;
use p3_contract::steps_config::StepsConfig;

/// Variable naming the job-readable JSON file holding [`StepsConfig`].
pub(crate) const STEPS_CONFIG_VAR: &str = env::STEPS_CONFIG;

/// A value that must never be printed (registry password, job token). `Debug` and `Display`
/// are redacted so a stray `{:?}` of a context cannot leak it into a job log.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Secret(String);

impl Secret {
    /// Wrap a secret value.
    pub(crate) fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The value itself, for the one place that hands it to a client.
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Facts about the pipeline, from the standard GitLab CI variables.
#[derive(Debug, Clone, Default)]
pub(crate) struct CiFacts {
    /// `CI_COMMIT_TAG`: set only in tag pipelines.
    pub(crate) commit_tag: Option<String>,
    /// `CI_COMMIT_SHORT_SHA`.
    pub(crate) commit_short_sha: Option<String>,
    /// `CI_COMMIT_SHA`.
    pub(crate) commit_sha: Option<String>,
    /// `CI_PROJECT_URL`.
    pub(crate) project_url: Option<String>,
    /// `CI_PIPELINE_URL`.
    pub(crate) pipeline_url: Option<String>,
    /// `CI_REGISTRY` (host\[:port\]).
    pub(crate) registry: Option<String>,
    /// `CI_REGISTRY_IMAGE` (`registry/group/project`).
    pub(crate) registry_image: Option<String>,
    /// `CI_REGISTRY_USER`.
    pub(crate) registry_user: Option<String>,
    /// `CI_REGISTRY_PASSWORD`.
    pub(crate) registry_password: Option<Secret>,
    /// `CI_JOB_TOKEN`.
    pub(crate) job_token: Option<Secret>,
    /// `CI_API_V4_URL`.
    pub(crate) api_v4_url: Option<String>,
    /// `CI_PROJECT_ID`.
    pub(crate) project_id: Option<String>,
}

/// Everything a step knows about its job.
#[derive(Debug, Clone, Default)]
pub(crate) struct StepContext {
    /// The `[steps]` section of the executor config (defaults when none was provided).
    pub(crate) config: StepsConfig,
    /// `P3_DEVSTAGE`: the devstage the job runs as (and deployed P3 jobs run as).
    pub(crate) devstage: Option<String>,
    /// `P3_DEPLOY_STAGE`: the account whose credentials the job holds (client_uat for prod).
    pub(crate) deploy_stage: Option<String>,
    /// Pipeline facts.
    pub(crate) ci: CiFacts,
}

impl StepContext {
    /// Load from the process environment; `steps_config` (a `--steps-config` flag) wins over
    /// `P3_STEPS_CONFIG`.
    pub(crate) fn from_env(steps_config: Option<&Path>) -> Result<Self, Failure> {
        Self::from_lookup(steps_config, |k| std::env::var(k).ok())
    }

    /// Load with an explicit variable lookup. Empty variables count as unset: GitLab defines
    /// some variables as empty strings rather than leaving them out.
    pub(crate) fn from_lookup(
        steps_config: Option<&Path>,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, Failure> {
        let get = |k: &str| lookup(k).filter(|v| !v.is_empty());
        let config_path = steps_config
            .map(Path::to_path_buf)
            .or_else(|| get(STEPS_CONFIG_VAR).map(PathBuf::from));
        let config = match &config_path {
            Some(path) => load_steps_config(path)?,
            None => StepsConfig::default(),
        };
        Ok(Self {
            config,
            devstage: get(env::DEVSTAGE),
            deploy_stage: get(env::DEPLOY_STAGE),
            ci: CiFacts {
                commit_tag: get("CI_COMMIT_TAG"),
                commit_short_sha: get("CI_COMMIT_SHORT_SHA"),
                commit_sha: get("CI_COMMIT_SHA"),
                project_url: get("CI_PROJECT_URL"),
                pipeline_url: get("CI_PIPELINE_URL"),
                registry: get("CI_REGISTRY"),
                registry_image: get("CI_REGISTRY_IMAGE"),
                registry_user: get("CI_REGISTRY_USER"),
                registry_password: get("CI_REGISTRY_PASSWORD").map(Secret::new),
                job_token: get("CI_JOB_TOKEN").map(Secret::new),
                api_v4_url: get("CI_API_V4_URL"),
                project_id: get("CI_PROJECT_ID"),
            },
        })
    }
}

/// Read the JSON `[steps]` file `prepare` wrote. Unknown keys are rejected like in the TOML
/// config, so a typo in the executor config surfaces in the first step that runs.
pub fn load_steps_config(path: &Path) -> Result<StepsConfig, Failure> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Failure::system(format!("cannot read steps config {}: {e}", path.display()))
    })?;
    serde_json::from_str(&text).map_err(|e| {
        Failure::system(format!(
            "{} is not a steps settings file (the JSON of the executor config's [steps] that prepare writes to P3_STEPS_CONFIG): {e}",
            path.display()
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn lookup(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn reads_job_facts_and_treats_empty_as_unset() {
        let ctx = StepContext::from_lookup(
            None,
            lookup(&[
                ("P3_DEVSTAGE", "client_prod"),
                ("P3_DEPLOY_STAGE", "client_uat"),
                ("CI_COMMIT_TAG", ""),
                ("CI_COMMIT_SHORT_SHA", "abc1234"),
                ("CI_JOB_TOKEN", "tok-secret"),
            ]),
        )
        .unwrap();
        assert_eq!(ctx.devstage.as_deref(), Some("client_prod"));
        assert_eq!(ctx.deploy_stage.as_deref(), Some("client_uat"));
        assert_eq!(ctx.ci.commit_tag, None);
        assert_eq!(ctx.ci.commit_short_sha.as_deref(), Some("abc1234"));
        let debug = format!("{ctx:?}");
        assert!(
            !debug.contains("tok-secret"),
            "secret leaked in Debug: {debug}"
        );
    }

    #[test]
    fn explicit_path_wins_over_variable_and_unknown_keys_fail() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good.json");
        std::fs::write(&good, r#"{"p3": {"deploy": ["p3", "apply", "{job}"]}}"#).unwrap();
        let bad = dir.path().join("bad.json");
        std::fs::write(&bad, r#"{"p3": {"deploi": []}}"#).unwrap();
        let env = lookup(&[(STEPS_CONFIG_VAR, bad.to_str().unwrap())]);
        let ctx = StepContext::from_lookup(Some(&good), &env).unwrap();
        assert_eq!(ctx.config.p3.deploy, ["p3", "apply", "{job}"]);
        let err = StepContext::from_lookup(None, &env).unwrap_err();
        assert!(err.to_string().contains("deploi"), "{err}");
    }
}
