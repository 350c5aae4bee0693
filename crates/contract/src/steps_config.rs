//! The `[steps]` settings of the executor config: the contract between the executor, which
//! reads them from its root-only config and hands them to the job (`P3_STEPS_CONFIG`), and the
//! built-in steps, which read them there. The steps own their settings and validate them here;
//! the executor's `Config::validate` calls [`StepsConfig::validate`].

use serde::{Deserialize, Serialize};

/// Settings handed to the built-in steps.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StepsConfig {
    /// `p3-executor image build`.
    #[serde(default)]
    pub image: ImageConfig,
    /// `p3-executor p3 ...`.
    #[serde(default)]
    pub p3: P3Config,
}

/// Image build settings.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ImageConfig {
    /// Builder to use (`buildah`, `podman`, `docker`, `kaniko`, or an absolute path); None: first found.
    #[serde(default)]
    pub builder: Option<String>,
    /// Extra arguments for the builder (e.g. `--storage-driver=vfs`).
    #[serde(default)]
    pub builder_args: Vec<String>,
    /// Registry to tag into when the job has none (`CI_REGISTRY_IMAGE`).
    #[serde(default)]
    pub registry: Option<String>,
    /// Devstage that only builds from release tags.
    #[serde(default = "default_prod_devstage")]
    pub prod_devstage: String,
    /// Release tag pattern.
    #[serde(default = "default_release_pattern")]
    pub release_tag_pattern: String,
    /// Extra options for the builder's build subcommand (e.g. `--isolation=chroot` for
    /// buildah without a daemon); `builder_args` are the builder's global options.
    #[serde(default)]
    pub build_options: Vec<String>,
    /// Extra options for the builder's push subcommand (e.g. `--tls-verify=false`).
    #[serde(default)]
    pub push_options: Vec<String>,
    /// Upper bound on one build or push, in seconds (the job timeout also applies).
    #[serde(default = "default_image_timeout")]
    pub timeout_secs: u64,
}

/// P3 client command templates: argv arrays with `{placeholder}`s, never run through a shell.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct P3Config {
    /// Deploy one job.
    #[serde(default)]
    pub deploy: Vec<String>,
    /// Remove one job.
    #[serde(default)]
    pub remove: Vec<String>,
    /// Show one job.
    #[serde(default)]
    pub status: Vec<String>,
    /// Upper bound on one P3 client call.
    #[serde(default = "default_p3_timeout")]
    pub timeout_secs: u64,
}

/// What to do with each job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Create or update.
    Deploy,
    /// Remove.
    Remove,
    /// Show.
    Status,
}

impl Action {
    /// Lower-case name (also the `steps.p3.<name>` template key).
    pub fn name(self) -> &'static str {
        match self {
            Action::Deploy => "deploy",
            Action::Remove => "remove",
            Action::Status => "status",
        }
    }

    /// The configured argv template for this action.
    pub fn template(self, cfg: &P3Config) -> &[String] {
        match self {
            Action::Deploy => &cfg.deploy,
            Action::Remove => &cfg.remove,
            Action::Status => &cfg.status,
        }
    }
}

/// Placeholder names a template may use (for `check` and docs).
pub(crate) const PLACEHOLDERS: &[&str] = &[
    "deploy_stage",
    "devstage",
    "image",
    "job",
    "command",
    "schedule",
    "cpu",
    "memory",
    "env",
];

/// Problems in the configured templates (unknown placeholders, unbalanced braces), one line
/// each naming the key, for `p3-executor check` and config validation. Empty templates are
/// not problems here: a site without P3 leaves them unset.
pub fn validate_templates(cfg: &P3Config) -> Vec<String> {
    [Action::Deploy, Action::Remove, Action::Status]
        .into_iter()
        .filter(|a| !a.template(cfg).is_empty())
        .filter_map(|a| {
            let known: Vec<&str> = PLACEHOLDERS
                .iter()
                .copied()
                .filter(|p| a == Action::Deploy || *p != "image")
                .collect();
            crate::template::validate(a.template(cfg), &known)
                .err()
                .map(|e| format!("steps.p3.{}: {e}", a.name()))
        })
        .collect()
}

impl StepsConfig {
    /// Problems a config edit would otherwise reveal only in a deploy job, one line each,
    /// naming the key.
    pub fn validate(&self) -> Vec<String> {
        let mut problems = validate_templates(&self.p3);
        if let Err(e) = regex_syntax::Parser::new().parse(&self.image.release_tag_pattern) {
            problems.push(format!(
                "steps.image.release_tag_pattern: invalid regex: {e}"
            ));
        }
        problems
    }
}

fn default_prod_devstage() -> String {
    "client_prod".into()
}
fn default_release_pattern() -> String {
    r"^v\d+\.\d+\.\d+$".into()
}
fn default_image_timeout() -> u64 {
    3600
}
fn default_p3_timeout() -> u64 {
    300
}

impl Default for ImageConfig {
    fn default() -> Self {
        Self {
            builder: None,
            builder_args: Vec::new(),
            registry: None,
            prod_devstage: default_prod_devstage(),
            release_tag_pattern: default_release_pattern(),
            build_options: Vec::new(),
            push_options: Vec::new(),
            timeout_secs: default_image_timeout(),
        }
    }
}

impl Default for P3Config {
    fn default() -> Self {
        Self {
            deploy: Vec::new(),
            remove: Vec::new(),
            status: Vec::new(),
            timeout_secs: default_p3_timeout(),
        }
    }
}
