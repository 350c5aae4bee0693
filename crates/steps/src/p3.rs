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

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::context::StepContext;
use super::p3toml::{P3File, P3TomlError, ResolvedJob};
use p3_contract::command::run_bounded_until;
use p3_contract::steps_config::P3Config;
pub use p3_contract::steps_config::{Action, PLACEHOLDERS, validate_templates};
use p3_contract::template::{self, TemplateError, Value, Values, quote_argv};
use p3_contract::terminal::escape;
use std::sync::atomic::{AtomicBool, Ordering};

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
    pub common: P3Args,
    /// Succeed, doing nothing, when p3.toml declares jobs but none for this devstage. Without
    /// it that is an error: a deploy job that deploys nothing must not pass. A p3.toml with
    /// no [[job]] at all is an error even with this flag.
    #[arg(long)]
    pub allow_empty: bool,
}

/// Options shared by the `p3` subcommands.
#[derive(Debug, Clone, clap::Args)]
pub struct P3Args {
    /// The project's P3 job file.
    #[arg(long, default_value = "p3.toml")]
    pub file: PathBuf,
    /// Only this job (repeatable); it must be declared for the devstage.
    #[arg(long = "job", value_name = "NAME")]
    pub jobs: Vec<String>,
    /// Print the exact argv for each job and run nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Devstage the P3 jobs run as (default `$P3_DEVSTAGE`).
    #[arg(long)]
    pub devstage: Option<String>,
    /// Deploy stage whose account the client authenticates as (default `$P3_DEPLOY_STAGE`).
    #[arg(long)]
    pub deploy_stage: Option<String>,
    /// Image to deploy (default `$P3_IMAGE`, from the build job's dotenv artifact).
    #[arg(long, env = "P3_IMAGE")]
    pub image: Option<String>,
    /// Also write the results as JSON here (the release step reads it).
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Steps config file (default `$P3_STEPS_CONFIG`).
    #[arg(long)]
    pub steps_config: Option<PathBuf>,
}

/// Why the step could not start.
#[derive(Debug, thiserror::Error)]
pub enum P3Error {
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

/// The job-independent values every template gets.
#[derive(Debug, Clone)]
pub struct Facts {
    /// Account the client authenticates as.
    pub deploy_stage: String,
    /// Devstage the P3 job runs as.
    pub devstage: String,
    /// Image (digest-pinned), needed by deploy.
    pub image: Option<String>,
}

/// The values for one job. `{schedule}`, `{cpu}` and `{memory}` are optional (their element is
/// dropped when unset); `{env}` is one `KEY=VALUE` per variable; `{image}` exists only when an
/// image is known, so a remove template that names it fails loudly instead of guessing.
pub fn values(job: &ResolvedJob, facts: &Facts) -> Values {
    let mut v = Values::new();
    v.insert(
        "deploy_stage".into(),
        Value::One(facts.deploy_stage.clone()),
    );
    v.insert("devstage".into(), Value::One(facts.devstage.clone()));
    if let Some(image) = &facts.image {
        v.insert("image".into(), Value::One(image.clone()));
    }
    v.insert("job".into(), Value::One(job.name.clone()));
    v.insert("command".into(), Value::One(job.command.clone()));
    v.insert("schedule".into(), Value::optional(job.schedule.clone()));
    v.insert("cpu".into(), Value::optional(job.resources.cpu.clone()));
    v.insert(
        "memory".into(),
        Value::optional(job.resources.memory.clone()),
    );
    v.insert(
        "env".into(),
        Value::Many(job.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
    );
    v
}

/// One client call to make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    /// P3 job name.
    pub job: String,
    /// Full argv (program first).
    pub argv: Vec<String>,
}

/// Render every call before running any (pure).
pub fn plan(
    action: Action,
    cfg: &P3Config,
    jobs: &[ResolvedJob],
    facts: &Facts,
) -> Result<Vec<Invocation>, P3Error> {
    if action == Action::Deploy && facts.image.is_none() {
        return Err(P3Error::Missing(
            "deploy needs an image: pass --image or set P3_IMAGE (the build job's dotenv artifact)"
                .into(),
        ));
    }
    jobs.iter()
        .map(|job| {
            let argv = template::render(action.name(), action.template(cfg), &values(job, facts))
                .map_err(|source| P3Error::Template {
                action: action.name(),
                source,
            })?;
            Ok(Invocation {
                job: job.name.clone(),
                argv,
            })
        })
        .collect()
}

/// Outcome of one call.
#[derive(Debug, Clone, Serialize)]
pub struct JobResult {
    /// P3 job name.
    pub job: String,
    /// Action.
    pub action: Action,
    /// Whether the client exited 0.
    pub ok: bool,
    /// Wall time in milliseconds.
    pub duration_ms: u128,
    /// The client's error text (stderr, else stdout) when it failed.
    pub error: Option<String>,
    /// The client's stdout (status output).
    #[serde(skip)]
    pub output: String,
}

/// Run each invocation with `env` added to the inherited job environment (so `KRB5CCNAME`
/// and the rest pass through), continuing past failures.
pub fn execute(
    action: Action,
    calls: &[Invocation],
    env: &[(String, String)],
    timeout: Duration,
) -> Vec<JobResult> {
    execute_until(action, calls, env, timeout, &AtomicBool::new(false)).0
}

/// Where a run stood when it was told to stop (SIGTERM, Ctrl-C).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stopped {
    /// The job whose call was running (and was sent SIGTERM): its state in P3 is unknown.
    pub in_flight: Option<String>,
    /// Jobs never started.
    pub not_started: Vec<String>,
}

/// [`execute`], stopping when `stop` becomes true: the call in flight gets SIGTERM and no
/// other starts. Returns the finished calls and, when stopped, where it stood.
pub fn execute_until(
    action: Action,
    calls: &[Invocation],
    env: &[(String, String)],
    timeout: Duration,
    stop: &AtomicBool,
) -> (Vec<JobResult>, Option<Stopped>) {
    let mut results = Vec::new();
    for (i, call) in calls.iter().enumerate() {
        if stop.load(Ordering::SeqCst) {
            return (
                results,
                Some(Stopped {
                    in_flight: None,
                    not_started: calls[i..].iter().map(|c| c.job.clone()).collect(),
                }),
            );
        }
        let start = Instant::now();
        let mut cmd = Command::new(&call.argv[0]);
        cmd.args(&call.argv[1..]);
        cmd.envs(env.iter().map(|(k, v)| (k, v)));
        let outcome = run_bounded_until(cmd, timeout, stop);
        if stop.load(Ordering::SeqCst) {
            // Stopped while this call ran: whatever it printed, P3 may or may not have it.
            return (
                results,
                Some(Stopped {
                    in_flight: Some(call.job.clone()),
                    not_started: calls[i + 1..].iter().map(|c| c.job.clone()).collect(),
                }),
            );
        }
        let (ok, error, output) = match outcome {
            Ok(out) => {
                let stdout = String::from_utf8_lossy(&out.stdout).trim().to_string();
                if out.status.success() {
                    (true, None, stdout)
                } else {
                    let mut msg = out.stderr_text();
                    if msg.is_empty() {
                        msg = stdout.clone();
                    }
                    (false, Some(format!("{}: {msg}", out.status)), stdout)
                }
            }
            Err(e) => (false, Some(e.to_string()), String::new()),
        };
        results.push(JobResult {
            job: call.job.clone(),
            action,
            ok,
            duration_ms: start.elapsed().as_millis(),
            error,
            output,
        });
    }
    (results, None)
}

/// Most characters of a client's error in the table; the whole text follows the table.
pub const ERROR_CELL_CHARS: usize = 200;

/// `text` without terminal escape sequences (colours, titles, cursor moves).
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\x1b' {
            out.push(c);
            continue;
        }
        match chars.next() {
            // CSI: parameters, then one final byte in @..~.
            Some('[') => {
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
            // OSC: up to BEL or ESC \.
            Some(']') => {
                while let Some(c) = chars.next() {
                    if c == '\x07' {
                        break;
                    }
                    if c == '\x1b' {
                        chars.next();
                        break;
                    }
                }
            }
            _ => {}
        }
    }
    out
}

/// The table's error cell: the first line of the error that says something (ANSI stripped,
/// blank and decoration-only lines skipped), at most [`ERROR_CELL_CHARS`] characters, after
/// the exit status.
pub fn error_cell(error: &str) -> String {
    let clean = strip_ansi(error);
    // `exit status: 3: <stderr>` or `signal: 9 (SIGKILL): <stderr>`.
    let (status, rest) = ["exit status: ", "signal: "]
        .iter()
        .find_map(|p| {
            let after = clean.strip_prefix(p)?;
            let (code, rest) = after.split_once(':')?;
            Some((Some(format!("{p}{code}")), rest))
        })
        .unwrap_or((None, clean.as_str()));
    let first = rest
        .lines()
        .map(str::trim)
        .find(|l| l.chars().any(char::is_alphanumeric))
        .unwrap_or("");
    let line = match status {
        Some(s) if first.is_empty() => s.to_string(),
        Some(s) => format!("{s}: {first}"),
        None => first.to_string(),
    };
    let more = rest.lines().filter(|l| !l.trim().is_empty()).count() > 1;
    let mut cell: String = line.chars().take(ERROR_CELL_CHARS).collect();
    if line.chars().count() > ERROR_CELL_CHARS || more {
        cell.push_str(" …");
    }
    escape(&cell).into_owned()
}

/// The result table: job, action, result, duration, and the first meaningful line of the
/// error ([`error_cell`]). Job names and errors are [`escape`]d: one line per job.
pub fn table(results: &[JobResult]) -> String {
    let rows = results.iter().map(|r| {
        [
            escape(&r.job).into_owned(),
            r.action.name().into(),
            if r.ok { "ok" } else { "FAILED" }.into(),
            format!("{:.1}s", r.duration_ms as f64 / 1000.0),
            r.error.as_deref().map(error_cell).unwrap_or_default(),
        ]
    });
    p3_contract::terminal::table(["JOB", "ACTION", "RESULT", "DURATION", "ERROR"], rows)
}

/// Below the table: each failed job's whole error (ANSI stripped, each line escaped).
pub fn error_details(results: &[JobResult]) -> String {
    let mut out = String::new();
    for r in results {
        let Some(error) = &r.error else { continue };
        out.push_str(&format!(
            "--- {} {}: the client's error output ---\n",
            escape(&r.job),
            r.action.name()
        ));
        for line in strip_ansi(error).lines() {
            out.push_str(&escape(line));
            out.push('\n');
        }
    }
    out
}

/// What a stopped run had done, for the log.
pub fn stopped_summary(action: Action, results: &[JobResult], stopped: &Stopped) -> String {
    let names = |v: Vec<&str>| {
        if v.is_empty() {
            "none".to_string()
        } else {
            v.into_iter()
                .map(|n| escape(n).into_owned())
                .collect::<Vec<_>>()
                .join(", ")
        }
    };
    let done = |ok: bool| {
        names(
            results
                .iter()
                .filter(|r| r.ok == ok)
                .map(|r| r.job.as_str())
                .collect(),
        )
    };
    let verb = match action {
        Action::Deploy => "applied",
        Action::Remove => "removed",
        Action::Status => "shown",
    };
    let mut s = format!("p3 {} stopped by a signal:\n", action.name());
    s.push_str(&format!("  {verb}: {}\n", done(true)));
    if results.iter().any(|r| !r.ok) {
        s.push_str(&format!("  failed: {}\n", done(false)));
    }
    s.push_str(&format!(
        "  in flight (sent SIGTERM; its state in P3 is unknown, check with p3 status): {}\n",
        names(stopped.in_flight.iter().map(String::as_str).collect())
    ));
    s.push_str(&format!(
        "  not started: {}\n",
        names(stopped.not_started.iter().map(String::as_str).collect())
    ));
    s
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// SIGTERM (the runner cancelling the job) and SIGINT set [`STOP`] instead of killing the
/// step, so it can stop its client and say where it stood.
fn catch_stop_signals() {
    use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};
    let action = SigAction::new(
        SigHandler::Handler(on_stop),
        SaFlags::empty(),
        SigSet::empty(),
    );
    for sig in [Signal::SIGTERM, Signal::SIGINT] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        let _ = unsafe { sigaction(sig, &action) };
    }
}

/// An argv as one line for a person that a shell reads back as the same argv: plain
/// arguments quoted as usual, one holding control or invisible characters (a newline in a
/// command) in bash's `$'...'` form, so a copy-paste passes a newline, not a backslash-n.
fn shown_argv(argv: &[String]) -> String {
    argv.iter()
        .map(|a| {
            if escape(a) == a.as_str() {
                quote_argv(std::slice::from_ref(a))
            } else {
                ansi_c_quote(a)
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// `$'...'` with `\n`, `\t`, `\xNN`, `\uNNNN` for what is not plainly printable.
fn ansi_c_quote(arg: &str) -> String {
    let mut out = String::from("$'");
    for c in arg.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("\\'"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32))
            }
            c if escape(&c.to_string()) != c.to_string().as_str() => {
                out.push_str(&format!("\\u{:04x}", c as u32))
            }
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// JSON report of a run (read by `release`).
#[derive(Debug, Serialize, serde::Deserialize)]
pub struct Report {
    /// Devstage.
    pub devstage: String,
    /// Deploy stage.
    pub deploy_stage: String,
    /// Image deployed, if any.
    pub image: Option<String>,
    /// Action.
    pub action: String,
    /// Per job: name and whether it succeeded.
    pub jobs: Vec<ReportJob>,
}

/// One job in a [`Report`].
#[derive(Debug, Serialize, serde::Deserialize)]
pub struct ReportJob {
    /// Name.
    pub job: String,
    /// Success.
    pub ok: bool,
    /// The client's whole error output when it failed (ANSI stripped).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Load `p3.toml`.
pub fn load_file(path: &Path) -> Result<P3File, P3Error> {
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
pub fn check_not_empty(
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

/// Write `--report`, if asked for.
fn write_report(
    args: &P3Args,
    action: Action,
    devstage: &str,
    deploy_stage: &str,
    facts: &Facts,
    results: &[JobResult],
) -> Result<(), P3Error> {
    let Some(path) = &args.report else {
        return Ok(());
    };
    let report = Report {
        devstage: devstage.into(),
        deploy_stage: deploy_stage.into(),
        image: facts.image.clone(),
        action: action.name().into(),
        jobs: results
            .iter()
            .map(|r| ReportJob {
                job: r.job.clone(),
                ok: r.ok,
                error: r.error.as_deref().map(strip_ansi),
            })
            .collect(),
    };
    let json = serde_json::to_string_pretty(&report).expect("report serializes");
    std::fs::write(path, json + "\n").map_err(|source| P3Error::Io {
        context: format!("cannot write {}", path.display()),
        source,
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
pub fn run_action(
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
        ("P3_DEVSTAGE".to_string(), devstage.clone()),
        ("P3_DEPLOY_STAGE".to_string(), deploy_stage.clone()),
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

    fn cfg() -> P3Config {
        P3Config {
            deploy: [
                "p3",
                "apply",
                "--as={deploy_stage}",
                "--devstage={devstage}",
                "--image={image}",
                "--name={job}",
                "--cmd",
                "{command}",
                "--cron={schedule}",
                "--env={env}",
            ]
            .map(String::from)
            .to_vec(),
            remove: ["p3", "rm", "--as={deploy_stage}", "{job}"]
                .map(String::from)
                .to_vec(),
            status: vec![],
            timeout_secs: 5,
        }
    }

    fn job(name: &str, schedule: Option<&str>) -> ResolvedJob {
        ResolvedJob {
            name: name.into(),
            command: "run it; now".into(),
            schedule: schedule.map(Into::into),
            resources: Default::default(),
            env: [("A".to_string(), "1 2".to_string())].into(),
        }
    }

    fn facts(image: Option<&str>) -> Facts {
        Facts {
            deploy_stage: "client_uat".into(),
            devstage: "client_prod".into(),
            image: image.map(Into::into),
        }
    }

    #[test]
    fn plan_renders_the_prod_split_per_job() {
        let calls = plan(
            Action::Deploy,
            &cfg(),
            &[job("a", Some("0 2 * * *")), job("b", None)],
            &facts(Some("reg/app@sha256:1")),
        )
        .unwrap();
        assert_eq!(
            calls[0].argv,
            [
                "p3",
                "apply",
                "--as=client_uat",
                "--devstage=client_prod",
                "--image=reg/app@sha256:1",
                "--name=a",
                "--cmd",
                "run it; now",
                "--cron=0 2 * * *",
                "--env=A=1 2"
            ]
        );
        assert!(!calls[1].argv.iter().any(|a| a.starts_with("--cron")));
    }

    #[test]
    fn deploy_without_image_and_remove_naming_image_fail_clearly() {
        let err = plan(Action::Deploy, &cfg(), &[job("a", None)], &facts(None)).unwrap_err();
        assert!(err.to_string().contains("P3_IMAGE"), "{err}");
        let mut c = cfg();
        c.remove.push("{image}".into());
        let err = plan(Action::Remove, &c, &[job("a", None)], &facts(None)).unwrap_err();
        assert!(err.to_string().contains("{image}"), "{err}");
        let err = plan(Action::Status, &cfg(), &[job("a", None)], &facts(None)).unwrap_err();
        assert!(err.to_string().contains("steps.p3.status"), "{err}");
    }

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

    #[test]
    fn template_validation_names_key_and_placeholder() {
        assert!(validate_templates(&cfg()).is_empty());
        assert!(validate_templates(&P3Config::default()).is_empty());
        let mut c = cfg();
        c.remove.push("--image={image}".into());
        c.status = vec!["p3".into(), "{jbo}".into()];
        let problems = validate_templates(&c);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].starts_with("steps.p3.remove:") && problems[0].contains("{image}"));
        assert!(problems[1].starts_with("steps.p3.status:") && problems[1].contains("{jbo}"));
    }

    #[test]
    fn table_lists_every_job_with_its_error() {
        let r = |job: &str, ok: bool| JobResult {
            job: job.into(),
            action: Action::Deploy,
            ok,
            duration_ms: 1500,
            error: (!ok).then(|| "exit status: 3: quota\nexceeded".into()),
            output: String::new(),
        };
        let t = table(&[r("alpha", true), r("b", false)]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "JOB    ACTION  RESULT  DURATION  ERROR");
        assert_eq!(lines[1], "alpha  deploy  ok      1.5s");
        assert_eq!(
            lines[2],
            "b      deploy  FAILED  1.5s      exit status: 3: quota …"
        );
        // The whole error follows the table.
        assert_eq!(
            error_details(&[r("b", false)]),
            "--- b deploy: the client's error output ---\nexit status: 3: quota\nexceeded\n"
        );
    }

    #[test]
    fn the_error_cell_is_the_first_meaningful_line_without_colours() {
        let stderr = format!(
            "exit status: 3: \n\x1b[31m===\x1b[0m\n\x1b[1;31mERROR\x1b[0m: quota exceeded in client_dev\n{}",
            "trace line\n".repeat(2000)
        );
        let cell = error_cell(&stderr);
        assert_eq!(
            cell,
            "exit status: 3: ERROR: quota exceeded in client_dev …"
        );
        let long = format!("exit status: 1: {}", "x".repeat(1000));
        assert!(error_cell(&long).chars().count() <= ERROR_CELL_CHARS + 2);
        assert_eq!(strip_ansi("\x1b]0;title\x07a\x1b[2Jb"), "ab");
    }

    #[test]
    fn a_stopped_run_says_what_was_applied_in_flight_and_not_started() {
        let r = JobResult {
            job: "a".into(),
            action: Action::Deploy,
            ok: true,
            duration_ms: 1,
            error: None,
            output: String::new(),
        };
        let s = stopped_summary(
            Action::Deploy,
            &[r],
            &Stopped {
                in_flight: Some("b".into()),
                not_started: vec!["c".into(), "d".into()],
            },
        );
        assert!(s.contains("applied: a\n"), "{s}");
        assert!(
            s.contains(
                "in flight (sent SIGTERM; its state in P3 is unknown, check with p3 status): b\n"
            ),
            "{s}"
        );
        assert!(s.contains("not started: c, d\n"), "{s}");
    }

    #[test]
    fn an_error_longer_than_the_table_can_measure_is_still_one_line() {
        let r = JobResult {
            job: "ingest".into(),
            action: Action::Deploy,
            ok: false,
            duration_ms: 1500,
            // One line far wider than comfy-table's u16 widths.
            error: Some("y".repeat(80_000)),
            output: String::new(),
        };
        let t = table(&[r]);
        assert_eq!(t.lines().count(), 2);
        let row = t.lines().nth(1).unwrap();
        assert!(
            row.starts_with("ingest  deploy  FAILED  1.5s  "),
            "{:.80}",
            row
        );
        assert!(row.ends_with(" …"), "{:.80}", row);
        assert!(row.chars().count() < 300);
    }

    #[test]
    fn table_and_argv_escape_what_the_client_and_job_supplied() {
        let r = JobResult {
            job: "ingest\x1b[2J".into(),
            action: Action::Deploy,
            ok: false,
            duration_ms: 1500,
            error: Some("exit status: 3: \x1b]0;owned\x07bad\nforged  deploy  ok\r".into()),
            output: String::new(),
        };
        let t = table(&[r]);
        assert_eq!(t.lines().count(), 2, "{t}");
        assert!(!t.contains(['\x1b', '\x07', '\r']), "{t:?}");
        assert_eq!(
            t.lines().nth(1).unwrap(),
            r"ingest\x1b[2J  deploy  FAILED  1.5s      exit status: 3: bad …"
        );
        // A newline is shown as bash reads it back: $'a\nb' is a, newline, b.
        assert_eq!(
            shown_argv(&["p3".into(), "a\nb".into(), "it's".into(), "x\\y\x07".into()]),
            r"p3 $'a\nb' 'it'\''s' $'x\\y\x07'"
        );
    }
}
