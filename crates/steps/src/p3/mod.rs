//! Built-in step `p3 deploy | remove | status`: render the site's P3 client templates
//! (`steps.p3.*`) for each job `p3.toml` declares for this devstage, and run them.
//!
//! The split the team needs: the client authenticates as the *deploy stage*'s account (the
//! job's `KRB5CCNAME`, passed through untouched) while the deployed job runs as the job's own
//! *devstage* — for prod, `{deploy_stage}` = `client_uat` and `{devstage}` = `client_prod`.
//!
//! Every argv is rendered before anything runs, so a template or `p3.toml` mistake fails the
//! step without touching P3. After that, one job's failure does not stop the others: the step
//! runs all of them, prints a result table and exits non-zero if any failed. `deploy` is
//! idempotent as long as the site's deploy template is an apply/upsert (the contract
//! documented in docs/steps.md): running the step twice leaves the same jobs deployed.

mod execute;
mod output;
mod plan;
pub(crate) mod report;

use std::path::{Path, PathBuf};
use std::time::Duration;

use p3_contract::env;
use p3_contract::steps_config::Action;
use p3_contract::terminal::escape;

use self::execute::{STOP, catch_stop_signals, execute_until};
use self::output::{error_details, shown_argv, stopped_summary, table};
use self::plan::{Facts, plan};
use self::report::write_report;
use super::context::StepContext;
use super::p3toml::{P3File, P3TomlError, ResolvedJob};
use p3_contract::template::TemplateError;

/// Subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum P3Command {
    /// Deploy (create or update) the devstage's jobs.
    Deploy(ChangeArgs),
    /// Remove the devstage's jobs (exactly those p3.toml declares, or `--job`).
    Remove(ChangeArgs),
    /// Show the devstage's jobs.
    Status(P3Args),
}

/// Options of `deploy` and `remove`, the subcommands that change P3.
#[derive(Debug, Clone, clap::Args)]
pub struct ChangeArgs {
    /// Options shared with `status`.
    #[command(flatten)]
    pub(crate) common: P3Args,
    /// Succeed, doing nothing, when p3.toml declares jobs but none for this devstage. Without
    /// it that is an error: a deploy job that deploys nothing must not pass. A p3.toml with
    /// no `[[job]]` at all is an error even with this flag.
    #[arg(long)]
    pub(crate) allow_empty: bool,
}

/// Options shared by the `p3` subcommands.
#[derive(Debug, Clone, clap::Args)]
pub struct P3Args {
    /// The project's P3 job file.
    #[arg(long, default_value = "p3.toml")]
    pub(crate) file: PathBuf,
    /// Only this job (repeatable); it must be declared for the devstage.
    #[arg(long = "job", value_name = "NAME")]
    pub(crate) jobs: Vec<String>,
    /// Print the exact argv for each job and run nothing.
    #[arg(long)]
    pub(crate) dry_run: bool,
    /// Devstage the P3 jobs run as (default `$P3_DEVSTAGE`).
    #[arg(long)]
    pub(crate) devstage: Option<String>,
    /// Deploy stage whose account the client authenticates as (default `$P3_DEPLOY_STAGE`).
    #[arg(long)]
    pub(crate) deploy_stage: Option<String>,
    /// Image to deploy (default `$P3_IMAGE`, from the build job's dotenv artifact).
    #[arg(long, env = "P3_IMAGE")]
    pub(crate) image: Option<String>,
    /// Also write the results as JSON here (the release step reads it).
    #[arg(long)]
    pub(crate) report: Option<PathBuf>,
    /// Steps config file (default `$P3_STEPS_CONFIG`).
    #[arg(long)]
    pub(crate) steps_config: Option<PathBuf>,
}

/// Why the step could not start.
#[derive(Debug, thiserror::Error)]
pub(crate) enum P3Error {
    /// p3.toml problem.
    #[error(transparent)]
    File(#[from] P3TomlError),
    /// The file is not a valid p3.toml (syntax, schema or consistency; names line and key).
    #[error("{path}: {detail}")]
    Invalid {
        /// The file, as given (escaped).
        path: String,
        /// What is wrong, and where.
        detail: String,
    },
    /// Template problem.
    #[error("steps.p3.{action}: {source}")]
    Template {
        /// Action.
        action: &'static str,
        /// Cause.
        #[source]
        source: TemplateError,
    },
    /// Missing input.
    #[error("{0}")]
    Missing(String),
    /// The file declares no `[[job]]` at all (deploy, remove and status refuse it).
    #[error(
        "{path} declares no [[job]], so p3 {action} would do nothing. Declare the project's P3 jobs in it ([[job]] tables with name and command, see docs/steps.md), or point --file at the right file"
    )]
    NoJobs {
        /// The file, as given (escaped).
        path: String,
        /// Action.
        action: &'static str,
    },
    /// The file declares jobs, but none for the devstage (deploy and remove, without
    /// `--allow-empty`).
    #[error(
        "{path} declares no job for devstage {devstage} (it declares jobs for: {declared}), so p3 {action} would do nothing. Add {devstage} to a job's `devstages` (or drop the list so the job is in every devstage), or pass --allow-empty if p3 {action} in {devstage} is meant to do nothing"
    )]
    NoJobsForDevstage {
        /// The file, as given (escaped).
        path: String,
        /// Action.
        action: &'static str,
        /// The devstage (escaped).
        devstage: String,
        /// [`P3File::declared`] (escaped).
        declared: String,
    },
    /// File I/O.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

/// Load `p3.toml`.
pub(crate) fn load_file(path: &Path) -> Result<P3File, P3Error> {
    let text = std::fs::read_to_string(path).map_err(|source| P3Error::Io {
        context: format!("cannot read {}", path.display()),
        source,
    })?;
    P3File::parse(&text).map_err(|e| match e {
        P3TomlError::Parse(detail) | P3TomlError::Invalid(detail) => P3Error::Invalid {
            path: escape(&path.display().to_string()).into_owned(),
            detail,
        },
        other => other.into(),
    })
}

/// Whether there is anything to do (pure): a file without jobs is always an error; a
/// devstage without jobs is an error for deploy and remove unless `allow_empty`. `Ok(true)`:
/// go on; `Ok(false)`: nothing to do, and that is fine.
pub(crate) fn check_not_empty(
    file: &P3File,
    path: &Path,
    action: Action,
    devstage: &str,
    selected: &[ResolvedJob],
    allow_empty: bool,
) -> Result<bool, P3Error> {
    let shown_path = || escape(&path.display().to_string()).into_owned();
    if file.jobs.is_empty() {
        return Err(P3Error::NoJobs {
            path: shown_path(),
            action: action.name(),
        });
    }
    if !selected.is_empty() {
        return Ok(true);
    }
    if action == Action::Status || allow_empty {
        return Ok(false);
    }
    Err(P3Error::NoJobsForDevstage {
        path: shown_path(),
        action: action.name(),
        devstage: escape(devstage).into_owned(),
        declared: escape(&file.declared()).into_owned(),
    })
}

/// Run the step; returns the process exit code.
pub fn run(cmd: P3Command) -> anyhow::Result<i32> {
    let (action, args, allow_empty) = match cmd {
        P3Command::Deploy(a) => (Action::Deploy, a.common, a.allow_empty),
        P3Command::Remove(a) => (Action::Remove, a.common, a.allow_empty),
        P3Command::Status(a) => (Action::Status, a, false),
    };
    let ctx = StepContext::from_env(args.steps_config.as_deref())?;
    run_action(&ctx, action, &args, allow_empty).map_err(|e| match e {
        // A bad or empty p3.toml or a missing input is the job's fault; a broken template is
        // the host's.
        P3Error::File(_)
        | P3Error::Invalid { .. }
        | P3Error::Missing(_)
        | P3Error::NoJobs { .. }
        | P3Error::NoJobsForDevstage { .. } => {
            anyhow::Error::new(p3_contract::exit::Failure::build(e.to_string()))
        }
        other => other.into(),
    })
}

/// The step with its context given. `allow_empty` (deploy and remove): a devstage without
/// jobs is not an error.
fn run_action(
    ctx: &StepContext,
    action: Action,
    args: &P3Args,
    allow_empty: bool,
) -> Result<i32, P3Error> {
    let devstage = args
        .devstage
        .clone()
        .or_else(|| ctx.devstage.clone())
        .ok_or_else(|| {
            P3Error::Missing("no devstage: pass --devstage or set P3_DEVSTAGE".into())
        })?;
    let deploy_stage = args
        .deploy_stage
        .clone()
        .or_else(|| ctx.deploy_stage.clone())
        .ok_or_else(|| {
            P3Error::Missing(
                "no deploy stage: P3_DEPLOY_STAGE is set by the p3-executor runner; outside it pass --deploy-stage"
                    .into(),
            )
        })?;
    let file = load_file(&args.file)?;
    let jobs = file.select(&devstage, &args.jobs)?;
    let anything = check_not_empty(&file, &args.file, action, &devstage, &jobs, allow_empty)?;
    let facts = Facts {
        deploy_stage: deploy_stage.clone(),
        devstage: devstage.clone(),
        image: args.image.clone().filter(|i| !i.is_empty()),
    };
    let calls = plan(action, &ctx.config.p3, &jobs, &facts)?;
    if !anything {
        println!(
            "p3 {}: {} declares no job for devstage {}; nothing to do{}",
            action.name(),
            escape(&args.file.display().to_string()),
            escape(&devstage),
            if allow_empty { " (--allow-empty)" } else { "" }
        );
    }
    if !anything {
        // With --allow-empty the release step still finds its report (listing no jobs).
        if !args.dry_run {
            write_report(args, action, &devstage, &deploy_stage, &facts, &[])?;
        }
        return Ok(0);
    }
    if args.dry_run {
        for call in &calls {
            println!(
                "would run for job {}: {}",
                escape(&call.job),
                shown_argv(&call.argv)
            );
        }
        return Ok(0);
    }
    eprintln!(
        "p3 {}: {} job(s) as devstage {}, authenticated as deploy stage {}",
        action.name(),
        calls.len(),
        escape(&devstage),
        escape(&deploy_stage)
    );
    let env = vec![
        (env::DEVSTAGE.to_string(), devstage.clone()),
        (env::DEPLOY_STAGE.to_string(), deploy_stage.clone()),
    ];
    let timeout = Duration::from_secs(ctx.config.p3.timeout_secs);
    catch_stop_signals();
    let (results, stopped) = execute_until(action, &calls, &env, timeout, &STOP);
    if action == Action::Status {
        // The client's own output keeps its lines; each is escaped.
        for r in &results {
            let output: Vec<_> = r.output.lines().map(escape).collect();
            println!("== {} ==\n{}", escape(&r.job), output.join("\n"));
        }
    }
    print!("{}", table(&results));
    print!("{}", error_details(&results));
    write_report(args, action, &devstage, &deploy_stage, &facts, &results)?;
    if let Some(stopped) = stopped {
        eprint!("{}", stopped_summary(action, &results, &stopped));
        return Ok(p3_contract::exit::STEP_INTERRUPTED);
    }
    let failed = results.iter().filter(|r| !r.ok).count();
    if failed > 0 {
        eprintln!(
            "p3 {}: {failed} of {} job(s) failed",
            action.name(),
            results.len()
        );
        return Ok(1);
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_to_do_is_an_error_unless_allowed() {
        let path = Path::new("ci/p3.toml");
        let empty = P3File::parse("# no jobs yet\n").unwrap();
        for action in [Action::Deploy, Action::Remove, Action::Status] {
            for allow in [false, true] {
                let err = check_not_empty(&empty, path, action, "client_dev", &[], allow)
                    .unwrap_err()
                    .to_string();
                assert!(
                    err.starts_with(&format!(
                        "ci/p3.toml declares no [[job]], so p3 {} would do nothing.",
                        action.name()
                    )),
                    "{err}"
                );
            }
        }
        let file = P3File::parse(
            "[[job]]\nname = \"a\"\ncommand = \"x\"\ndevstages = [\"client_dev\", \"client_uat\"]\n\
             [[job]]\nname = \"b\"\ncommand = \"x\"\ndevstages = [\"client_dev\"]\n",
        )
        .unwrap();
        let jobs = file.jobs_for("client_prod");
        assert!(jobs.is_empty());
        for action in [Action::Deploy, Action::Remove] {
            let err = check_not_empty(&file, path, action, "client_prod", &jobs, false)
                .unwrap_err()
                .to_string();
            assert!(
                err.starts_with(&format!(
                    "ci/p3.toml declares no job for devstage client_prod (it declares jobs for: \
                     client_dev (a, b); client_uat (a)), so p3 {} would do nothing.",
                    action.name()
                )) && err.contains("--allow-empty"),
                "{err}"
            );
            assert!(!check_not_empty(&file, path, action, "client_prod", &jobs, true).unwrap());
        }
        // status of an empty devstage only says so.
        assert!(
            !check_not_empty(&file, path, Action::Status, "client_prod", &jobs, false).unwrap()
        );
        let dev = file.jobs_for("client_dev");
        assert!(check_not_empty(&file, path, Action::Deploy, "client_dev", &dev, false).unwrap());
        // A devstage name from the job's environment is escaped.
        let err = check_not_empty(&file, path, Action::Deploy, "x\x1b[2J", &[], false)
            .unwrap_err()
            .to_string();
        assert!(err.contains(r"devstage x\x1b[2J (it"), "{err}");
    }
}
