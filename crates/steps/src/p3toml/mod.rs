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

mod location;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use self::location::{Seg, key, line_col, path_at_table, shown_path, span_of};

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
    pub(crate) defaults: JobSettings,
    /// The jobs, in order (deploy order follows it).
    #[serde(default, rename = "job")]
    pub(crate) jobs: Vec<JobSpec>,
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
pub(crate) struct JobSettings {
    /// Command the P3 job runs in the image (one string, interpreted by P3, not by us).
    #[serde(default)]
    pub(crate) command: Option<String>,
    /// Cron schedule; none: one-off job.
    #[serde(default)]
    pub(crate) schedule: Option<String>,
    /// Resources.
    #[serde(default)]
    pub(crate) resources: Resources,
    /// Environment variables of the P3 job (merged key by key across layers).
    #[serde(default)]
    pub(crate) env: BTreeMap<String, String>,
}

/// One declared job.
///
/// Read and written through [`RawJob`], which spells every key out: `#[serde(flatten)]` would
/// buffer the job's keys and lose where a mistake is (every error said `line 1, column 1`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(from = "RawJob", into = "RawJob")]
pub(crate) struct JobSpec {
    /// P3 job name (`[A-Za-z0-9][A-Za-z0-9._-]*`).
    pub(crate) name: String,
    /// Devstages the job exists in; None: all.
    pub(crate) devstages: Option<Vec<String>>,
    /// The job's own settings.
    pub(crate) settings: JobSettings,
    /// Per-devstage overrides.
    pub(crate) overrides: BTreeMap<String, JobSettings>,
}

/// A `[[job]]` table as written: the job's own keys and the [`JobSettings`] keys side by side.
#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawJob {
    name: String,
    #[serde(default)]
    devstages: Option<Vec<String>>,
    #[serde(default)]
    command: Option<String>,
    #[serde(default)]
    schedule: Option<String>,
    #[serde(default)]
    resources: Resources,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    overrides: BTreeMap<String, JobSettings>,
}

impl From<RawJob> for JobSpec {
    fn from(raw: RawJob) -> Self {
        Self {
            name: raw.name,
            devstages: raw.devstages,
            settings: JobSettings {
                command: raw.command,
                schedule: raw.schedule,
                resources: raw.resources,
                env: raw.env,
            },
            overrides: raw.overrides,
        }
    }
}

impl From<JobSpec> for RawJob {
    fn from(job: JobSpec) -> Self {
        Self {
            name: job.name,
            devstages: job.devstages,
            command: job.settings.command,
            schedule: job.settings.schedule,
            resources: job.settings.resources,
            env: job.settings.env,
            overrides: job.overrides,
        }
    }
}

/// A job as it is in one devstage: every layer applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedJob {
    /// Name.
    pub name: String,
    /// Command.
    pub(crate) command: String,
    /// Schedule, if scheduled.
    pub schedule: Option<String>,
    /// Resources.
    pub resources: Resources,
    /// Environment.
    pub(crate) env: BTreeMap<String, String>,
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

/// A consistency problem and where it is (so [`P3File::parse`] can give its line).
struct Problem {
    at: Vec<Seg>,
    message: String,
}

impl P3File {
    /// Parse and validate. Every error names its line and the key (`job "score": key
    /// resources.cpu`): the jobs are read through [`RawJob`], not `flatten`, so the TOML
    /// reader keeps the position of a wrong type; the key path is found in a second,
    /// schema-free parse of the same text.
    pub fn parse(text: &str) -> Result<Self, P3TomlError> {
        let doc = toml::de::DeTable::parse(text).ok();
        let doc = doc.as_ref().map(|d| d.get_ref());
        let file: P3File = toml::from_str(text).map_err(|e| {
            let Some(span) = e.span() else {
                return P3TomlError::Parse(e.to_string());
            };
            let (line, col) = line_col(text, span.start);
            let mut path = Vec::new();
            let at = match doc {
                Some(d) if path_at_table(d, span.start, &mut path) => {
                    format!("{}: ", shown_path(doc, &path))
                }
                _ => String::new(),
            };
            P3TomlError::Parse(format!(
                "line {line}, column {col}: {at}{}",
                p3_contract::terminal::escape(e.message().trim_end())
            ))
        })?;
        let problems = file.problems();
        if problems.is_empty() {
            return Ok(file);
        }
        let shown: Vec<String> = problems
            .iter()
            .map(|p| match doc.and_then(|d| span_of(d, &p.at)) {
                Some(span) => format!("line {}: {}", line_col(text, span.start).0, p.message),
                None => p.message.clone(),
            })
            .collect();
        Err(P3TomlError::Invalid(shown.join("; ")))
    }

    fn problems(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        let mut problem = |at: Vec<Seg>, message: String| problems.push(Problem { at, message });
        let mut seen = std::collections::BTreeSet::new();
        if !self.jobs.is_empty() {
            for k in self.defaults.env.keys().filter(|k| !valid_env_key(k)) {
                problem(
                    vec![key("defaults"), key("env"), key(k)],
                    format!("defaults: env key {k:?} is not a valid variable name"),
                );
            }
        }
        for (i, job) in self.jobs.iter().enumerate() {
            let at = |rest: &[&str]| {
                let mut p = vec![key("job"), Seg::Index(i)];
                p.extend(rest.iter().map(|k| key(k)));
                p
            };
            if !valid_name(&job.name) {
                problem(
                    at(&["name"]),
                    format!(
                        "job name {:?} must match [A-Za-z0-9][A-Za-z0-9._-]*",
                        job.name
                    ),
                );
            }
            if !seen.insert(job.name.as_str()) {
                problem(
                    at(&["name"]),
                    format!("job {:?} is declared twice", job.name),
                );
            }
            let layers = std::iter::once((at(&["env"]), &job.settings)).chain(
                job.overrides
                    .iter()
                    .map(|(stage, s)| (at(&["overrides", stage, "env"]), s)),
            );
            for (place, settings) in layers {
                for k in settings.env.keys().filter(|k| !valid_env_key(k)) {
                    let mut place = place.clone();
                    place.push(key(k));
                    problem(
                        place,
                        format!(
                            "job {:?}: env key {k:?} is not a valid variable name",
                            job.name
                        ),
                    );
                }
            }
            if let Some(stages) = &job.devstages {
                for stage in job.overrides.keys() {
                    if !stages.contains(stage) {
                        problem(
                            at(&["overrides", stage]),
                            format!(
                                "job {:?}: overrides.{stage} is for a devstage the job is not in ({})",
                                job.name,
                                stages.join(", ")
                            ),
                        );
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
                    problem(at(&[]), format!("job {:?} has no command", job.name));
                    break;
                }
            }
        }
        problems
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
    pub(crate) fn applies(job: &JobSpec, devstage: &str) -> bool {
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

    /// What the file declares per devstage, for a message: `client_dev (backfill, ingest);
    /// client_uat (ingest)`, with `every devstage (…)` for jobs that list no devstages and
    /// `no devstage (…)` for jobs with `devstages = []`. Empty when there are no jobs.
    pub(crate) fn declared(&self) -> String {
        let mut everywhere = Vec::new();
        let mut nowhere = Vec::new();
        let mut per_stage: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for job in &self.jobs {
            match &job.devstages {
                None => everywhere.push(job.name.as_str()),
                Some(stages) if stages.is_empty() => nowhere.push(job.name.as_str()),
                Some(stages) => {
                    for stage in stages {
                        let names = per_stage.entry(stage.as_str()).or_default();
                        if !names.contains(&job.name.as_str()) {
                            names.push(job.name.as_str());
                        }
                    }
                }
            }
        }
        let mut parts: Vec<String> = Vec::new();
        if !everywhere.is_empty() {
            parts.push(format!("every devstage ({})", everywhere.join(", ")));
        }
        parts.extend(
            per_stage
                .iter()
                .map(|(stage, names)| format!("{stage} ({})", names.join(", "))),
        );
        if !nowhere.is_empty() {
            parts.push(format!("no devstage ({})", nowhere.join(", ")));
        }
        parts.join("; ")
    }

    /// The jobs of `devstage`, narrowed to `only` when it is not empty. Naming a job the
    /// devstage does not have is an error (a typo must not silently do nothing).
    pub(crate) fn select(
        &self,
        devstage: &str,
        only: &[String],
    ) -> Result<Vec<ResolvedJob>, P3TomlError> {
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

    /// A wrong type or unknown key anywhere names the key (with its job) and its line.
    #[test]
    fn schema_errors_name_key_and_line_table() {
        let job = "[[job]]\nname = \"a\"\ncommand = \"x\"\n";
        let cases: Vec<(String, &str, &str)> = vec![
            // Top level.
            (
                "defaults = 3\n".into(),
                "line 1, column 12",
                "key defaults: invalid type",
            ),
            (
                "# comment\n\njob = \"x\"\n".into(),
                "line 3, column 7",
                "key job: invalid type",
            ),
            (
                "jobs = []\n".into(),
                "line 1, column 1",
                "key jobs: unknown field `jobs`",
            ),
            // [defaults].
            (
                "[defaults]\ncommand = 5\n".into(),
                "line 2, column 11",
                "key defaults.command: invalid type: integer `5`, expected a string",
            ),
            (
                "\n[defaults]\nresources = { cpu = 1 }\n".into(),
                "line 3, column 21",
                "key defaults.resources.cpu: invalid type",
            ),
            (
                "[defaults]\nenv = { A = true }\n".into(),
                "line 2, column 13",
                "key defaults.env.A: invalid type",
            ),
            (
                "[defaults]\nname = \"x\"\n".into(),
                "line 2, column 1",
                "key defaults.name: unknown field `name`",
            ),
            // [[job]]: the case of the issue (used to say line 1, column 1 and no key).
            (
                "[[job]]\nname = \"a\"\n\ncommand = 5\n".into(),
                "line 4, column 11",
                "job \"a\": key command: invalid type: integer `5`, expected a string",
            ),
            (
                format!("{job}[[job]]\nname = \"b\"\ncommand = \"y\"\nschedule = 3\n"),
                "line 7, column 12",
                "job \"b\": key schedule: invalid type",
            ),
            (
                format!("{job}devstages = \"client_dev\"\n"),
                "line 4, column 13",
                "job \"a\": key devstages: invalid type",
            ),
            (
                format!("{job}devstages = [\n  \"client_dev\",\n  5,\n]\n"),
                "line 6, column 3",
                "job \"a\": key devstages[1]: invalid type",
            ),
            (
                format!("{job}resources.memory = 4\n"),
                "line 4, column 20",
                "job \"a\": key resources.memory: invalid type",
            ),
            (
                format!("{job}cmd = \"y\"\n"),
                "line 4, column 1",
                "job \"a\": key cmd: unknown field `cmd`",
            ),
            (
                "[[job]]\ncommand = 5\nname = \"late\"\n".into(),
                "line 2, column 11",
                "job \"late\": key command: invalid type",
            ),
            (
                format!("{job}[[job]]\ncommand = \"y\"\n"),
                "line 4, column 1",
                "[[job]] #2: missing field `name`",
            ),
            (
                "[[job]]\nname = 7\ncommand = \"y\"\n".into(),
                "line 2, column 8",
                "[[job]] #1: key name: invalid type",
            ),
            // Per-devstage overrides.
            (
                format!("{job}[job.overrides.client_prod]\nschedule = 3\n"),
                "line 5, column 12",
                "job \"a\": key overrides.client_prod.schedule: invalid type",
            ),
            (
                format!("{job}[job.overrides.client_prod]\nresources = {{ memory = 8 }}\n"),
                "line 5, column 24",
                "job \"a\": key overrides.client_prod.resources.memory: invalid type",
            ),
            (
                format!("{job}overrides = {{ client_uat = {{ env = {{ A = 1 }} }} }}\n"),
                "line 4, column 42",
                "job \"a\": key overrides.client_uat.env.A: invalid type",
            ),
            (
                format!("{job}[job.overrides.client_prod]\ndevstages = []\n"),
                "line 5, column 1",
                "job \"a\": key overrides.client_prod.devstages: unknown field `devstages`",
            ),
            (
                format!("{job}overrides = 1\n"),
                "line 4, column 13",
                "job \"a\": key overrides: invalid type",
            ),
        ];
        for (text, line, want) in cases {
            let err = P3File::parse(&text).unwrap_err().to_string();
            assert!(
                err.starts_with(&format!("p3.toml: {line}: {want}")),
                "{text:?}:\n{err}\nwanted: p3.toml: {line}: {want}"
            );
        }
    }

    #[test]
    fn syntax_errors_give_their_line_and_escape_what_the_file_holds() {
        let cases = [
            (
                "[[job]]\nname = \"a\"\ncommand = \"x\n",
                "p3.toml: line 3, column 13: ",
            ),
            (
                "[[job]\n",
                "p3.toml: line 1, column 7: unclosed array table",
            ),
            ("[defaults]\n\ncommand = \n", "p3.toml: line 3, column 11: "),
        ];
        for (text, want) in cases {
            let err = P3File::parse(text).unwrap_err().to_string();
            assert!(err.starts_with(want), "{text:?}:\n{err}");
        }
        let err = P3File::parse("[defaults]\n\"\\u001b[2J\" = 1\n")
            .unwrap_err()
            .to_string();
        assert!(!err.contains('\x1b'), "{err:?}");
        assert!(
            err.starts_with(
                r#"p3.toml: line 2, column 1: key defaults."\u{1b}[2J": unknown field `\x1b[2J`"#
            ),
            "{err}"
        );
    }

    /// Consistency problems give the line of what is wrong, too.
    #[test]
    fn consistency_problems_name_their_line() {
        let cases = [
            (
                "[[job]]\nname = \"a\"\ncommand = \"x\"\n\n[[job]]\nname = \"a\"\ncommand = \"y\"\n",
                "line 6: job \"a\" is declared twice",
            ),
            (
                "[[job]]\nname = \"a\"\ncommand = \"x\"\n[[job]]\nname = \"b\"\n",
                "line 4: job \"b\" has no command",
            ),
            (
                "[[job]]\nname = \"a\"\ncommand = \"x\"\n[job.overrides.client_uat]\nenv = { \"A-B\" = \"1\" }\n",
                "line 5: job \"a\": env key \"A-B\" is not a valid variable name",
            ),
            (
                "[defaults]\nenv = { \"1X\" = \"1\" }\n[[job]]\nname = \"a\"\ncommand = \"x\"\n",
                "line 2: defaults: env key \"1X\"",
            ),
            (
                "[[job]]\nname = \"a\"\ncommand = \"x\"\ndevstages = [\"client_dev\"]\n\n[job.overrides.client_prod]\nschedule = \"x\"\n",
                "line 6: job \"a\": overrides.client_prod is for a devstage the job is not in",
            ),
        ];
        for (text, want) in cases {
            let err = P3File::parse(text).unwrap_err().to_string();
            assert!(
                err.starts_with(&format!("p3.toml: {want}")),
                "{text:?}:\n{err}"
            );
        }
    }

    #[test]
    fn empty_file_parses_to_no_jobs_and_declared_lists_devstages() {
        for text in ["", "  \n# nothing yet\n", "[defaults]\ncommand = \"x\"\n"] {
            let f = P3File::parse(text).unwrap();
            assert!(f.jobs.is_empty(), "{text:?}");
            assert_eq!(f.declared(), "");
        }
        let f = P3File::parse(FILE).unwrap();
        assert_eq!(
            f.declared(),
            "every devstage (nightly); client_dev (backfill)"
        );
        let f = P3File::parse(
            "[[job]]\nname = \"a\"\ncommand = \"x\"\ndevstages = [\"client_uat\", \"client_dev\"]\n\
             [[job]]\nname = \"b\"\ncommand = \"x\"\ndevstages = [\"client_dev\"]\n\
             [[job]]\nname = \"c\"\ncommand = \"x\"\ndevstages = []\n",
        )
        .unwrap();
        assert_eq!(
            f.declared(),
            "client_dev (a, b); client_uat (a); no devstage (c)"
        );
    }

    #[test]
    fn serializes_back_to_the_same_model() {
        let f = P3File::parse(FILE).unwrap();
        let text = toml::to_string(&f).unwrap();
        let again = P3File::parse(&text).unwrap();
        for stage in ["client_dev", "client_uat", "client_prod"] {
            assert_eq!(again.jobs_for(stage), f.jobs_for(stage), "{text}");
        }
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
