//! The project's `p3.toml` (pure model): which P3 jobs a project runs, and how each looks in
//! a given devstage.
//!
//! ```toml
//! [defaults]                      # optional, applies to every job
//! resources = { cpu = "1", memory = "2Gi" }
//! env = { LOG_LEVEL = "info" }
//!
//! [[job]]
//! name = "nightly-scoring"
//! command = "python -m scoring --date today"
//! schedule = "0 2 * * *"          # optional: without it the job is one-off
//! devstages = ["client_dev", "client_uat", "client_prod"]   # optional: default all
//! resources = { cpu = "2", memory = "4Gi" }
//! env = { MODEL = "v3" }
//!
//! [job.overrides.client_prod]     # per-devstage overrides; env is merged key by key
//! schedule = "0 3 * * *"
//! resources = { memory = "8Gi" }
//! ```

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Why `p3.toml` is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum P3TomlError {
    /// TOML syntax or schema error (names the key and line).
    #[error("p3.toml: {0}")]
    Parse(String),
    /// A consistency problem.
    #[error("p3.toml: {0}")]
    Invalid(String),
    /// `--job` named a job the file does not declare for this devstage.
    #[error("p3.toml declares no job {name:?} for devstage {devstage} (declared: {declared})")]
    NoSuchJob {
        /// Requested name.
        name: String,
        /// Devstage.
        devstage: String,
        /// Names declared for the devstage.
        declared: String,
    },
}

/// Whole file.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct P3File {
    /// Settings every job starts from.
    #[serde(default)]
    pub defaults: JobSettings,
    /// The jobs, in order (deploy order follows it).
    #[serde(default, rename = "job")]
    pub jobs: Vec<JobSpec>,
}

/// CPU and memory, as the P3 client spells them (passed through verbatim).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    /// CPU request, e.g. `"2"` or `"500m"`.
    #[serde(default)]
    pub cpu: Option<String>,
    /// Memory request, e.g. `"4Gi"`.
    #[serde(default)]
    pub memory: Option<String>,
}

/// Settings that defaults, jobs and overrides share; later layers win field by field.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct JobSettings {
    /// Command the P3 job runs in the image (one string, interpreted by P3, not by us).
    #[serde(default)]
    pub command: Option<String>,
    /// Cron schedule; none: one-off job.
    #[serde(default)]
    pub schedule: Option<String>,
    /// Resources.
    #[serde(default)]
    pub resources: Resources,
    /// Environment variables of the P3 job (merged key by key across layers).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

/// One declared job.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    /// P3 job name (`[A-Za-z0-9][A-Za-z0-9._-]*`).
    pub name: String,
    /// Devstages the job exists in; None: all.
    #[serde(default)]
    pub devstages: Option<Vec<String>>,
    /// The job's own settings.
    #[serde(flatten)]
    pub settings: JobSettings,
    /// Per-devstage overrides.
    #[serde(default)]
    pub overrides: BTreeMap<String, JobSettings>,
}

/// A job as it is in one devstage: every layer applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedJob {
    /// Name.
    pub name: String,
    /// Command.
    pub command: String,
    /// Schedule, if scheduled.
    pub schedule: Option<String>,
    /// Resources.
    pub resources: Resources,
    /// Environment.
    pub env: BTreeMap<String, String>,
}

fn layer(base: &mut JobSettings, over: &JobSettings) {
    if over.command.is_some() {
        base.command.clone_from(&over.command);
    }
    if over.schedule.is_some() {
        base.schedule.clone_from(&over.schedule);
    }
    if over.resources.cpu.is_some() {
        base.resources.cpu.clone_from(&over.resources.cpu);
    }
    if over.resources.memory.is_some() {
        base.resources.memory.clone_from(&over.resources.memory);
    }
    base.env
        .extend(over.env.iter().map(|(k, v)| (k.clone(), v.clone())));
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

fn valid_env_key(key: &str) -> bool {
    let mut chars = key.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

impl P3File {
    /// Parse and validate.
    pub fn parse(text: &str) -> Result<Self, P3TomlError> {
        let file: P3File = toml::from_str(text).map_err(|e| P3TomlError::Parse(e.to_string()))?;
        file.validate()?;
        Ok(file)
    }

    /// Consistency checks: unique valid names, a command for every devstage a job is in,
    /// valid env keys, overrides only for devstages the job is in.
    pub fn validate(&self) -> Result<(), P3TomlError> {
        let mut problems = Vec::new();
        let mut seen = std::collections::BTreeSet::new();
        for job in &self.jobs {
            if !valid_name(&job.name) {
                problems.push(format!(
                    "job name {:?} must match [A-Za-z0-9][A-Za-z0-9._-]*",
                    job.name
                ));
            }
            if !seen.insert(job.name.as_str()) {
                problems.push(format!("job {:?} is declared twice", job.name));
            }
            let layers = std::iter::once(&self.defaults)
                .chain(std::iter::once(&job.settings))
                .chain(job.overrides.values());
            for key in layers.flat_map(|l| l.env.keys()) {
                if !valid_env_key(key) {
                    problems.push(format!(
                        "job {:?}: env key {key:?} is not a valid variable name",
                        job.name
                    ));
                }
            }
            if let Some(stages) = &job.devstages {
                for stage in job.overrides.keys() {
                    if !stages.contains(stage) {
                        problems.push(format!(
                            "job {:?}: overrides.{stage} is for a devstage the job is not in ({})",
                            job.name,
                            stages.join(", ")
                        ));
                    }
                }
            }
            let stages: Vec<&str> = match &job.devstages {
                Some(s) => s.iter().map(String::as_str).collect(),
                None => vec![""],
            };
            for stage in stages {
                let resolved = self.merged(job, stage);
                if resolved
                    .command
                    .as_deref()
                    .is_none_or(|c| c.trim().is_empty())
                {
                    problems.push(format!("job {:?} has no command", job.name));
                    break;
                }
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(P3TomlError::Invalid(problems.join("; ")))
        }
    }

    fn merged(&self, job: &JobSpec, devstage: &str) -> JobSettings {
        let mut s = self.defaults.clone();
        layer(&mut s, &job.settings);
        if let Some(over) = job.overrides.get(devstage) {
            layer(&mut s, over);
        }
        s
    }

    /// Whether `job` exists in `devstage`.
    pub fn applies(job: &JobSpec, devstage: &str) -> bool {
        job.devstages
            .as_ref()
            .is_none_or(|s| s.iter().any(|d| d == devstage))
    }

    /// The jobs of `devstage`, fully resolved, in file order.
    pub fn jobs_for(&self, devstage: &str) -> Vec<ResolvedJob> {
        self.jobs
            .iter()
            .filter(|j| Self::applies(j, devstage))
            .map(|j| {
                let s = self.merged(j, devstage);
                ResolvedJob {
                    name: j.name.clone(),
                    command: s.command.unwrap_or_default(),
                    schedule: s.schedule,
                    resources: s.resources,
                    env: s.env,
                }
            })
            .collect()
    }

    /// The jobs of `devstage`, narrowed to `only` when it is not empty. Naming a job the
    /// devstage does not have is an error (a typo must not silently do nothing).
    pub fn select(&self, devstage: &str, only: &[String]) -> Result<Vec<ResolvedJob>, P3TomlError> {
        let all = self.jobs_for(devstage);
        if only.is_empty() {
            return Ok(all);
        }
        for name in only {
            if !all.iter().any(|j| &j.name == name) {
                return Err(P3TomlError::NoSuchJob {
                    name: name.clone(),
                    devstage: devstage.into(),
                    declared: all
                        .iter()
                        .map(|j| j.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                });
            }
        }
        Ok(all.into_iter().filter(|j| only.contains(&j.name)).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"
[defaults]
resources = { cpu = "1", memory = "2Gi" }
env = { LOG_LEVEL = "info" }

[[job]]
name = "nightly"
command = "python -m scoring"
schedule = "0 2 * * *"
env = { MODEL = "v3" }
[job.overrides.client_prod]
schedule = "0 3 * * *"
resources = { memory = "8Gi" }
env = { LOG_LEVEL = "warn" }

[[job]]
name = "backfill"
command = "python -m backfill"
devstages = ["client_dev"]
"#;

    #[test]
    fn resolves_layers_per_devstage() {
        let f = P3File::parse(FILE).unwrap();
        let prod = f.jobs_for("client_prod");
        assert_eq!(prod.len(), 1);
        let j = &prod[0];
        assert_eq!(j.schedule.as_deref(), Some("0 3 * * *"));
        assert_eq!(j.resources.cpu.as_deref(), Some("1"));
        assert_eq!(j.resources.memory.as_deref(), Some("8Gi"));
        assert_eq!(j.env["LOG_LEVEL"], "warn");
        assert_eq!(j.env["MODEL"], "v3");
        let dev = f.jobs_for("client_dev");
        let names: Vec<_> = dev.iter().map(|j| j.name.as_str()).collect();
        assert_eq!(names, ["nightly", "backfill"]);
        assert_eq!(dev[0].schedule.as_deref(), Some("0 2 * * *"));
        assert_eq!(dev[1].schedule, None);
    }

    #[test]
    fn select_rejects_a_job_not_in_the_devstage() {
        let f = P3File::parse(FILE).unwrap();
        let err = f.select("client_prod", &["backfill".into()]).unwrap_err();
        assert!(err.to_string().contains("declared: nightly"), "{err}");
        let one = f.select("client_dev", &["backfill".into()]).unwrap();
        assert_eq!(one.len(), 1);
    }

    #[test]
    fn invalid_files_table() {
        let cases = [
            ("[[job]]\nname = \"a b\"\ncommand = \"x\"", "must match"),
            (
                "[[job]]\nname = \"a\"\ncommand = \"x\"\n[[job]]\nname = \"a\"\ncommand = \"y\"",
                "declared twice",
            ),
            ("[[job]]\nname = \"a\"", "has no command"),
            (
                "[[job]]\nname = \"a\"\ncommand = \"x\"\nenv = { \"A-B\" = \"1\" }",
                "not a valid variable",
            ),
            (
                "[[job]]\nname = \"a\"\ncommand = \"x\"\ncmd = \"y\"",
                "unknown field",
            ),
            (
                "[[job]]\nname = \"a\"\ncommand = \"x\"\ndevstages = [\"client_dev\"]\n[job.overrides.client_prod]\nschedule = \"x\"",
                "not in",
            ),
        ];
        for (text, want) in cases {
            let err = P3File::parse(text).unwrap_err().to_string();
            assert!(err.contains(want), "{text:?}: {err}");
        }
    }
}
