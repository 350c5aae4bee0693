//! p3-executor binary: parse the command line, dispatch, and map the outcome to an exit code in
//! one place.

use std::process::ExitCode;

use p3_executor::cli::{Cli, Command};
use p3_executor::config::Config;
use p3_executor::error::{ExitCodes, FailureKind, kind_of};
use p3_executor::job::JobContext;
use p3_executor::{audit, check, explain, gc, metrics, runner, siblings};

/// What a command ended with, before it becomes an exit code.
enum Outcome {
    /// Exit 0.
    Success,
    /// A job script (or step) exited non-zero with this code: a build failure.
    ScriptFailed(i32),
    /// A host tool's own exit code (check, gc, audit verify, steps).
    Code(i32),
}

fn main() -> ExitCode {
    let cli = Cli::from_env();
    let codes = ExitCodes::from_env();
    let result = dispatch(cli);
    let code = match result {
        Ok(Outcome::Success) => 0,
        Ok(Outcome::Code(c)) => c,
        Ok(Outcome::ScriptFailed(c)) => {
            // Keep the script's real code for `allow_failure: exit_codes`.
            record_build_exit_code(c);
            codes.build_failure
        }
        Err(err) => {
            eprintln!("p3-executor: error: {}", p3_contract::exit::describe(&err));
            let kind = kind_of(&err);
            if kind == FailureKind::Build {
                // The runner never clears this file; a stale code from an earlier stage must
                // not be reported for this failure.
                record_build_exit_code(codes.build_failure);
            }
            codes.for_kind(kind)
        }
    };
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

fn record_build_exit_code(code: i32) {
    if let Err(e) = runner::write_build_exit_code(code) {
        eprintln!("p3-executor: warning: {e}");
    }
}

/// Load the executor config and start logging with its settings.
fn load_config(path: &std::path::Path) -> anyhow::Result<Config> {
    Ok(Config::load_and_init_logging(path)?)
}

fn dispatch(cli: Cli) -> anyhow::Result<Outcome> {
    let path = cli.config;
    match cli.command {
        Command::Config => {
            // `config` logs nothing (its one error is printed by `main`), so it does not start
            // logging: the subscriber's set-up is a tenth of this call's instructions.
            let cfg = Config::load(&path)?;
            runner::config::execute(&cfg, &JobContext::from_env()?)?;
            Ok(Outcome::Success)
        }
        Command::Prepare => {
            let cfg = load_config(&path)?;
            runner::prepare::execute(&cfg, &JobContext::from_env()?)?;
            Ok(Outcome::Success)
        }
        Command::Run { script, stage } => {
            let cfg = load_config(&path)?;
            let job = JobContext::from_env()?;
            let outcome = runner::run::execute(&cfg, &job, &script, &stage)?;
            Ok(match outcome.code {
                0 => Outcome::Success,
                c => Outcome::ScriptFailed(c),
            })
        }
        Command::Cleanup => {
            let cfg = load_config(&path)?;
            runner::cleanup::execute(&cfg, &JobContext::from_env()?)?;
            Ok(Outcome::Success)
        }
        Command::Gc {
            max_age_secs,
            dry_run,
        } => {
            let cfg = load_config(&path)?;
            let swept = gc::sweep(&cfg, max_age_secs, dry_run)?;
            let verb = if dry_run { "would remove" } else { "removed" };
            for s in &swept {
                println!("{verb} job {} (idle {} s)", s.job_id, s.idle_secs);
            }
            println!("{} job(s) {verb}", swept.len());
            Ok(Outcome::Success)
        }
        Command::Metrics => {
            let cfg = load_config(&path)?;
            let text = metrics::collect(&cfg, metrics::Table::Read)?;
            print!("{text}");
            metrics::write_textfile(&cfg, &text);
            Ok(Outcome::Success)
        }
        Command::Check { probe, fix } => {
            let cfg = load_config(&path)?;
            let mut findings = if fix {
                check::network::fix(&cfg)
            } else {
                Vec::new()
            };
            findings.extend(check::check(&cfg, &path));
            if probe {
                findings.extend(check::kerberos::probe(&cfg));
            }
            Ok(Outcome::Code(check::report(&findings)))
        }
        Command::Demo(_) => Err(exec_sibling(
            siblings::DEMO,
            "the demo is built from the test fixtures and not installed with the executor: run scripts/demo.sh from a checkout",
        )),
        Command::Audit(cmd) if cmd.needs_s3() => Err(exec_sibling(
            siblings::AWS,
            "install it next to p3-executor (the package and scripts/install.sh do)",
        )),
        Command::Audit(cmd) => {
            let cfg = load_config(&path)?;
            Ok(Outcome::Code(audit::run(&cfg, cmd)?))
        }
        Command::Policy(cmd) => {
            let cfg = load_config(&path)?;
            Ok(Outcome::Code(explain::run(&cfg, cmd)))
        }
        Command::S3(_) | Command::Image(_) | Command::P3(_) | Command::Release(_) => {
            Err(exec_sibling(
                "p3-executor-steps",
                "install both binaries (scripts/install.sh does)",
            ))
        }
    }
}

/// Built-in steps live in the sibling binary `p3-executor-steps`, the demo in
/// `p3-executor-demo`, the audit trail's S3 side in `p3-executor-aws`; each gets the same
/// arguments.
///
/// The runner starts `p3-executor` four or more times per job; keeping the AWS SDK, the steps'
/// other heavy dependencies and the demo's fixtures out of this binary keeps every one of those
/// starts fast. Returns only if the exec failed.
fn exec_sibling(name: &str, fix: &str) -> anyhow::Error {
    use std::os::unix::process::CommandExt;
    let Some(sibling) = siblings::path(name) else {
        return anyhow::anyhow!("{name} is not installed next to p3-executor: {fix}");
    };
    let err = std::process::Command::new(&sibling)
        .args(std::env::args_os().skip(1))
        .exec();
    anyhow::anyhow!("cannot run {}: {err}", sibling.display())
}
