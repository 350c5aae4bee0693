//! JobContext: the facts about one job, read from the runner's JOB_RESPONSE_FILE.
//!
//! The payload comes from GitLab through the runner, so its job id, project and token are
//! trustworthy. Its `variables` array also holds the job's own `variables:` (which can shadow
//! predefined ones), so variable values are only ever *requests*, never trust. Nothing here is
//! ever logged: the payload carries the job token and masked values in clear text.

use std::fmt;
use std::path::Path;

use serde::Deserialize;

use crate::error::{Error, Result};

/// One job variable from the payload.
#[derive(Clone, Deserialize)]
pub struct Variable {
    /// Name.
    pub key: String,
    /// Value (possibly a secret).
    #[serde(default)]
    pub value: String,
    /// Masked in the job log.
    #[serde(default)]
    pub masked: bool,
    /// File-type variable.
    #[serde(default)]
    pub file: bool,
}

/// The part of the runner's payload the executor uses.
#[derive(Clone, Deserialize)]
pub struct JobPayload {
    /// GitLab job id.
    pub id: u64,
    /// Job token (CI_JOB_TOKEN): authenticates API calls as this job.
    #[serde(default)]
    pub token: String,
    /// Job and project facts.
    #[serde(default)]
    pub job_info: JobInfo,
    /// Git facts.
    #[serde(default)]
    pub git_info: GitInfo,
    /// Every job variable, predefined first, then the job's own.
    #[serde(default)]
    pub variables: Vec<Variable>,
    /// Runner-side facts about the job (its timeout).
    #[serde(default)]
    pub runner_info: RunnerInfo,
    /// The job's `image:` (name, entrypoint, pull policy), if any.
    #[serde(default)]
    pub image: Option<ImageInfo>,
    /// The job's `services:` (out of scope: refused with a message).
    #[serde(default)]
    pub services: Option<Vec<serde_json::Value>>,
}

/// `image` of the payload.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct ImageInfo {
    /// Image reference.
    #[serde(default)]
    pub name: String,
    /// Entrypoint override (ignored: the runner's scripts are run by the image's shell).
    #[serde(default)]
    pub entrypoint: Option<Vec<String>>,
    /// GitLab's pull policies, in order of preference.
    #[serde(default)]
    pub pull_policy: Option<Vec<String>>,
}

/// `runner_info` of the payload.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct RunnerInfo {
    /// The job's timeout in seconds, as GitLab sets it (project or runner setting, or the
    /// job's `timeout:`). The runner stops the job once it has run this long. Absent or not
    /// above 0: unknown (the runner then applies its own default).
    #[serde(default)]
    pub timeout: Option<i64>,
}

/// `job_info` of the payload.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct JobInfo {
    /// Job name.
    #[serde(default)]
    pub name: String,
    /// Pipeline stage.
    #[serde(default)]
    pub stage: String,
    /// Project id.
    #[serde(default)]
    pub project_id: u64,
    /// Project name.
    #[serde(default)]
    pub project_name: String,
}

/// `git_info` of the payload.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct GitInfo {
    /// Clone URL (carries the job token: never log it).
    #[serde(default)]
    pub repo_url: String,
    /// Branch or tag name.
    #[serde(default, rename = "ref")]
    pub ref_name: String,
    /// Commit SHA.
    #[serde(default)]
    pub sha: String,
    /// `branch` or `tag`.
    #[serde(default)]
    pub ref_type: String,
}

/// The job as the executor sees it.
#[derive(Clone)]
pub struct JobContext {
    /// The payload.
    pub payload: JobPayload,
}

impl fmt::Debug for JobPayload {
    // Hand-written so a stray `{:?}` can never print the token or a variable value.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JobPayload")
            .field("id", &self.id)
            .field("job_info", &self.job_info)
            .field("variables", &self.variables.len())
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for JobContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.payload.fmt(f)
    }
}

impl JobContext {
    /// Read the payload from `JOB_RESPONSE_FILE`.
    pub fn from_env() -> Result<Self> {
        let path = std::env::var_os("JOB_RESPONSE_FILE").ok_or_else(|| {
            Error::Payload(
                "is not set: p3-executor must be called by gitlab-runner's custom executor".into(),
            )
        })?;
        Self::from_file(Path::new(&path))
    }

    /// Read the payload from a file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = crate::limits::read_bounded(
            path,
            crate::limits::MAX_PAYLOAD_BYTES,
            "job payload (JOB_RESPONSE_FILE)",
        )
        .map_err(|e| match e {
            Error::Io { source, .. } => {
                Error::Payload(format!("{} cannot be read: {source}", path.display()))
            }
            other => other,
        })?;
        Self::from_json(&text).map_err(|e| match e {
            Error::Payload(m) => Error::Payload(format!("{}: {m}", path.display())),
            other => other,
        })
    }

    /// Parse payload JSON. Errors name the field, never echo values.
    pub fn from_json(bytes: &[u8]) -> Result<Self> {
        let payload: JobPayload = serde_json::from_slice(bytes).map_err(|e| {
            // serde_json's "invalid type/value" messages quote the value, which may be a secret:
            // keep only messages that name a field, otherwise just the position.
            let text = e.to_string();
            let detail = if text.starts_with("missing field") {
                text
            } else {
                format!(
                    "{:?} error at line {} column {}",
                    e.classify(),
                    e.line(),
                    e.column()
                )
            };
            Error::Payload(format!("is not a valid job payload: {detail}"))
        })?;
        if payload.id == 0 {
            return Err(Error::Payload("has no job id".into()));
        }
        Ok(Self { payload })
    }

    /// GitLab job id.
    pub fn job_id(&self) -> u64 {
        self.payload.id
    }

    /// The job's timeout in seconds (`runner_info.timeout`), when the payload carries one
    /// above 0. It comes from GitLab, not from the job's variables, so it can bound what the
    /// job's credentials are worth.
    pub fn timeout_secs(&self) -> Option<u64> {
        self.payload
            .runner_info
            .timeout
            .and_then(|t| u64::try_from(t).ok())
            .filter(|&t| t > 0)
    }

    /// Last value of a job variable (later entries win, as in the runner).
    pub fn variable(&self, key: &str) -> Option<&str> {
        self.payload
            .variables
            .iter()
            .rev()
            .find(|v| v.key == key)
            .map(|v| v.value.as_str())
    }

    /// Job variable, but only if it was defined exactly once (an ID token shadowed by a second
    /// definition is suspicious and treated as absent by callers that care).
    pub fn variable_count(&self, key: &str) -> usize {
        self.payload
            .variables
            .iter()
            .filter(|v| v.key == key)
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAYLOAD: &str = r#"{"id": 42, "token": "glcbt-secret",
        "job_info": {"name": "deploy", "stage": "deploy", "project_id": 7, "project_name": "p"},
        "git_info": {"repo_url": "https://gitlab-ci-token:glcbt-secret@g/p.git", "ref": "main", "sha": "abc", "ref_type": "branch"},
        "variables": [{"key": "A", "value": "1", "public": true, "masked": false},
                      {"key": "A", "value": "2", "public": true, "masked": false}],
        "unknown_field": 1}"#;

    #[test]
    fn parses_payload_and_last_variable_wins() {
        let job = JobContext::from_json(PAYLOAD.as_bytes()).unwrap();
        assert_eq!(job.job_id(), 42);
        assert_eq!(job.variable("A"), Some("2"));
        assert_eq!(job.variable_count("A"), 2);
        assert_eq!(job.payload.git_info.ref_name, "main");
    }

    #[test]
    fn timeout_comes_from_runner_info_when_above_zero() {
        let with = |runner_info: &str| {
            let text = format!(r#"{{"id": 1 {runner_info}}}"#);
            JobContext::from_json(text.as_bytes())
                .unwrap()
                .timeout_secs()
        };
        assert_eq!(with(r#", "runner_info": {"timeout": 600}"#), Some(600));
        assert_eq!(with(""), None);
        assert_eq!(with(r#", "runner_info": {}"#), None);
        assert_eq!(with(r#", "runner_info": {"timeout": 0}"#), None);
        assert_eq!(with(r#", "runner_info": {"timeout": -5}"#), None);
    }

    #[test]
    fn debug_never_prints_the_token() {
        let job = JobContext::from_json(PAYLOAD.as_bytes()).unwrap();
        let dbg = format!("{job:?}");
        assert!(!dbg.contains("glcbt-secret"), "{dbg}");
    }

    #[test]
    fn invalid_payload_names_the_problem_without_values() {
        let err = JobContext::from_json(br#"{"id": "x-secret"}"#).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("line 1 column"), "{msg}");
        assert!(!msg.contains("x-secret"), "{msg}");
        assert!(JobContext::from_json(b"{}").is_err());
    }
}
