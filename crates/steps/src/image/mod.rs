//! Built-in step `image build`: build the project's image with the best builder on the host,
//! tag and label it by the rules in [`super::tag`], optionally push it and record the pushed
//! digest in a dotenv file so deploy jobs use exactly the image that was built.
//!
//! Registry credentials go to the builder in a private auth file (`--authfile` or
//! `DOCKER_CONFIG`), never on the command line, so they show up neither in the job log nor in
//! the host's process list.

mod builder;
mod plan;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use self::builder::{BuilderKind, find_builder};
use self::plan::{BuildPlan, auth_json, commands, dotenv, parse_digest, printable};
use super::context::StepContext;
use super::stream::run_streaming;
use super::tag::{self, LabelInput, TagError, TagInput};
use p3_contract::command::CommandError;
use p3_contract::terminal::escape;

/// Subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum ImageCommand {
    /// Build (and optionally push) the project's image for one devstage.
    Build(BuildArgs),
}

/// `image build` options.
#[derive(Debug, Clone, clap::Args)]
pub struct BuildArgs {
    /// Dockerfile/Containerfile (default: `Containerfile` or `Dockerfile` in the context).
    #[arg(long, short = 'f')]
    pub(crate) file: Option<PathBuf>,
    /// Build context directory.
    #[arg(long, default_value = ".")]
    pub(crate) context: PathBuf,
    /// `KEY=VALUE` build argument (repeatable). Values are not echoed in the log.
    #[arg(long = "build-arg", value_name = "KEY=VALUE")]
    pub(crate) build_args: Vec<String>,
    /// Build stage to stop at.
    #[arg(long)]
    pub(crate) target: Option<String>,
    /// Devstage to build for (default `$P3_DEVSTAGE`).
    #[arg(long)]
    pub(crate) devstage: Option<String>,
    /// Image repository (default `$CI_REGISTRY_IMAGE`, then `steps.image.registry`).
    #[arg(long)]
    pub(crate) image_name: Option<String>,
    /// Push the image and write its digest to the dotenv file.
    #[arg(long)]
    pub(crate) push: bool,
    /// Push destination in the builder's transport syntax (e.g. `oci:/dir:tag`); default
    /// `docker://<repository>:<tag>`. `P3_IMAGE` still names the repository.
    #[arg(long, value_name = "DEST")]
    pub(crate) push_to: Option<String>,
    /// Dotenv file receiving `P3_IMAGE=<repository>@sha256:...` after a push.
    #[arg(long, default_value = "image.env")]
    pub(crate) dotenv: PathBuf,
    /// Builder: `buildah`, `podman`, `docker`, `kaniko`, or a path (default:
    /// `steps.image.builder`, then the first one found).
    #[arg(long)]
    pub(crate) builder: Option<String>,
    /// Extra global builder option (repeatable), after `steps.image.builder_args`
    /// (e.g. `--builder-opt=--root=/tmp/store`).
    #[arg(long = "builder-opt", value_name = "OPT", allow_hyphen_values = true)]
    pub(crate) builder_opts: Vec<String>,
    /// Extra build-subcommand option (repeatable), after `steps.image.build_options`
    /// (e.g. `--build-opt=--isolation=chroot`).
    #[arg(long = "build-opt", value_name = "OPT", allow_hyphen_values = true)]
    pub(crate) build_opts: Vec<String>,
    /// Steps config file (default `$P3_STEPS_CONFIG`).
    #[arg(long)]
    pub(crate) steps_config: Option<PathBuf>,
}

/// Why an image step failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ImageError {
    /// The naming rules refused (e.g. prod from a branch): nothing was built.
    #[error("{0}")]
    Refused(#[from] TagError),
    /// No builder could be found or the named one is unknown.
    #[error("{0}")]
    Builder(String),
    /// Bad option.
    #[error("{0}")]
    Usage(String),
    /// The builder could not run.
    #[error(transparent)]
    Command(#[from] CommandError),
    /// The builder ran and failed.
    #[error("{what} failed with {status}: see the builder output above")]
    Failed {
        /// `build` or `push`.
        what: String,
        /// Exit status text.
        status: String,
    },
    /// A file could not be read or written.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> ImageError {
    let context = context.into();
    move |source| ImageError::Io { context, source }
}

fn default_file(context: &Path) -> PathBuf {
    for name in ["Containerfile", "Dockerfile"] {
        let p = context.join(name);
        if p.exists() {
            return p;
        }
    }
    context.join("Dockerfile")
}

/// Run the step; returns the process exit code.
pub fn run(cmd: ImageCommand) -> anyhow::Result<i32> {
    match cmd {
        ImageCommand::Build(args) => {
            let ctx = StepContext::from_env(args.steps_config.as_deref())?;
            build(&ctx, &args).map_err(|e| match e {
                // The job's fault (a build failure for the runner), not the host's.
                ImageError::Refused(_) | ImageError::Usage(_) | ImageError::Failed { .. } => {
                    anyhow::Error::new(p3_contract::exit::Failure::build(e.to_string()))
                }
                other => other.into(),
            })?;
            Ok(0)
        }
    }
}

/// Build (and push) per `args` in the job described by `ctx`. Returns the pushed
/// `repository@digest` when pushed.
pub(crate) fn build(ctx: &StepContext, args: &BuildArgs) -> Result<Option<String>, ImageError> {
    let cfg = &ctx.config.image;
    let devstage = args
        .devstage
        .clone()
        .or_else(|| ctx.devstage.clone())
        .unwrap_or_default();
    let repository = args
        .image_name
        .clone()
        .or_else(|| ctx.ci.registry_image.clone())
        .or_else(|| cfg.registry.clone())
        .unwrap_or_default();
    // The refusal (prod from a branch) comes first: before looking for a builder or files.
    let name = tag::decide(&TagInput {
        repository: &repository,
        commit_tag: ctx.ci.commit_tag.as_deref(),
        short_sha: ctx.ci.commit_short_sha.as_deref(),
        devstage: &devstage,
        prod_devstage: &cfg.prod_devstage,
        release_tag_pattern: &cfg.release_tag_pattern,
    })?;
    for a in &args.build_args {
        if !a.contains('=') {
            return Err(ImageError::Usage(format!(
                "--build-arg {a:?} must be KEY=VALUE"
            )));
        }
    }
    let (program, kind) = find_builder(args.builder.as_deref().or(cfg.builder.as_deref()))?;
    if kind == BuilderKind::Docker && args.push_to.is_some() {
        return Err(ImageError::Usage(
            "--push-to is not supported with docker (it pushes to the tagged repository)".into(),
        ));
    }
    let file = args
        .file
        .clone()
        .unwrap_or_else(|| default_file(&args.context));
    if !file.is_file() {
        return Err(ImageError::Usage(format!(
            "no Containerfile/Dockerfile at {}: pass --file",
            file.display()
        )));
    }
    let created = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let labels = tag::labels(&LabelInput {
        source: ctx.ci.project_url.as_deref(),
        revision: ctx.ci.commit_sha.as_deref(),
        created: &created,
        version: &name.version,
        devstage: &devstage,
        pipeline_url: ctx.ci.pipeline_url.as_deref(),
    });
    let scratch = tempfile::Builder::new()
        .prefix("p3-image-")
        .tempdir()
        .map_err(io("cannot create a temp dir"))?;
    // Also without --push: a base image in the project's registry needs them to be pulled.
    let auth_file = match (&ctx.ci.registry_user, &ctx.ci.registry_password) {
        (Some(user), Some(password)) => {
            let registry =
                ctx.ci.registry.clone().unwrap_or_else(|| {
                    name.repository.split('/').next().unwrap_or_default().into()
                });
            let path = scratch.path().join("config.json");
            write_private(&path, &auth_json(&registry, user, password))?;
            Some(path)
        }
        _ => None,
    };
    let push_to = args.push.then(|| {
        args.push_to
            .clone()
            .unwrap_or_else(|| format!("docker://{}", name.reference()))
    });
    let plan = BuildPlan {
        kind,
        global: cfg
            .builder_args
            .iter()
            .chain(&args.builder_opts)
            .cloned()
            .collect(),
        build_options: cfg
            .build_options
            .iter()
            .chain(&args.build_opts)
            .cloned()
            .collect(),
        push_options: cfg.push_options.clone(),
        file,
        context: args.context.clone(),
        build_args: args.build_args.clone(),
        target: args.target.clone(),
        name: name.clone(),
        labels,
        push_to,
        digest_file: scratch.path().join("digest"),
        auth_file: auth_file.clone(),
    };
    let timeout = Duration::from_secs(cfg.timeout_secs);
    eprintln!(
        "image: building {} for devstage {}",
        escape(&name.reference()),
        escape(&devstage)
    );
    for (i, argv) in commands(&plan).into_iter().enumerate() {
        let what = if i == 0 { "build" } else { "push" };
        eprintln!(
            "image: $ {} {}",
            escape(&program.display().to_string()),
            printable(&argv)
        );
        let mut cmd = Command::new(&program);
        cmd.args(&argv);
        if let (Some(auth), BuilderKind::Docker | BuilderKind::Kaniko) = (&auth_file, kind) {
            cmd.env("DOCKER_CONFIG", auth.parent().unwrap_or(scratch.path()));
        }
        let status = run_streaming(cmd, timeout)?;
        if !status.success() {
            return Err(ImageError::Failed {
                what: format!("{} {what}", program.display()),
                status: status.to_string(),
            });
        }
    }
    if !args.push {
        eprintln!("image: built {} (not pushed)", escape(&name.reference()));
        return Ok(None);
    }
    let digest = match kind {
        BuilderKind::Docker => docker_digest(&program, &plan.global, &name.reference())?,
        _ => {
            let text = std::fs::read_to_string(&plan.digest_file)
                .map_err(io("the builder wrote no digest file"))?;
            parse_digest(&text).ok_or_else(|| {
                ImageError::Builder(format!("the builder wrote an unexpected digest {text:?}"))
            })?
        }
    };
    std::fs::write(&args.dotenv, dotenv(&name, &digest, &devstage))
        .map_err(io(format!("cannot write {}", args.dotenv.display())))?;
    let pinned = format!("{}@{digest}", name.repository);
    eprintln!(
        "image: pushed {} as {}; wrote P3_IMAGE to {}",
        escape(&name.reference()),
        escape(&pinned),
        escape(&args.dotenv.display().to_string())
    );
    Ok(Some(pinned))
}

fn docker_digest(program: &Path, global: &[String], reference: &str) -> Result<String, ImageError> {
    let mut cmd = Command::new(program);
    cmd.args(global).args([
        "image",
        "inspect",
        "--format={{json .RepoDigests}}",
        reference,
    ]);
    let out = p3_contract::command::run_bounded(cmd, Duration::from_secs(60))?;
    let digests: Vec<String> = serde_json::from_slice(&out.stdout).unwrap_or_default();
    digests
        .iter()
        .find_map(|d| d.split_once('@').and_then(|(_, d)| parse_digest(d)))
        .ok_or_else(|| {
            ImageError::Builder(format!(
                "docker reported no digest for {reference}: {}",
                out.stderr_text()
            ))
        })
}

fn write_private(path: &Path, content: &str) -> Result<(), ImageError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io(format!("cannot create {}", path.display())))?;
    f.write_all(content.as_bytes())
        .map_err(io(format!("cannot write {}", path.display())))
}
