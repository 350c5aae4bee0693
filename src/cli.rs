//! Command-line interface of `p3-executor`: the runner-facing calls and host tools; the built-in
//! job steps and the demo are named here but parsed by their own binaries.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// GitLab Runner custom executor that grants verified jobs Kerberos and S3 credentials by
/// policy, and built-in steps for image builds, P3 deploys and S3 transfers.
#[derive(Debug, Parser)]
#[command(name = "p3-executor", version = env!("P3_EXECUTOR_VERSION"), about, long_about = None)]
pub struct Cli {
    /// Executor config file.
    #[arg(long, global = true, env = "P3_EXECUTOR_CONFIG", default_value = crate::config::DEFAULT_CONFIG_PATH)]
    pub config: PathBuf,
    /// Subcommand.
    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// The command line of this process: the runner's own calls by [`Cli::runner_call`],
    /// everything else (host tools, `--help`, `--version`, any other spelling) by clap.
    pub fn from_env() -> Self {
        Self::runner_call(std::env::args_os(), std::env::var_os("P3_EXECUTOR_CONFIG"))
            .unwrap_or_else(Self::parse)
    }

    /// The four runner calls exactly as gitlab-runner spells them (`[--config <path>] config`,
    /// `prepare`, `cleanup`, `run <script> <stage>`), parsed without building clap's command
    /// tree: the runner starts the executor for every call of every job, and clap's tree of
    /// every subcommand is a sixth of `config`'s instructions. The result is what clap gives
    /// for the same line (tested); anything else, and anything ambiguous (a value starting
    /// with `-`, an empty value, an empty `P3_EXECUTOR_CONFIG`, non-UTF-8 stage), is `None`
    /// and goes to clap. `config_env` is `P3_EXECUTOR_CONFIG`.
    pub fn runner_call(
        args: impl IntoIterator<Item = OsString>,
        config_env: Option<OsString>,
    ) -> Option<Self> {
        let args: Vec<OsString> = args.into_iter().skip(1).collect();
        let plain = |a: &OsString| !a.is_empty() && !a.as_encoded_bytes().starts_with(b"-");
        let (config, rest) = match args.first() {
            Some(flag) if flag == "--config" => {
                let value = args.get(1).filter(|v| plain(v))?;
                (Some(PathBuf::from(value)), &args[2..])
            }
            Some(flag) if flag.as_encoded_bytes().starts_with(b"--config=") => {
                let value = flag.to_str()?.strip_prefix("--config=")?;
                if value.is_empty() {
                    return None;
                }
                (Some(PathBuf::from(value)), &args[1..])
            }
            _ => (None, &args[..]),
        };
        let command = match rest {
            [c] if c == "config" => Command::Config,
            [c] if c == "prepare" => Command::Prepare,
            [c] if c == "cleanup" => Command::Cleanup,
            [c, script, stage] if c == "run" && plain(script) && plain(stage) => Command::Run {
                script: PathBuf::from(script),
                stage: stage.to_str()?.to_owned(),
            },
            _ => return None,
        };
        let config = match (config, config_env) {
            (Some(path), _) => path,
            (None, Some(env)) if env.is_empty() => return None,
            (None, Some(env)) => PathBuf::from(env),
            (None, None) => PathBuf::from(crate::config::DEFAULT_CONFIG_PATH),
        };
        Some(Self { config, command })
    }
}

/// Every subcommand.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Runner call 1: print this job's directories as JSON (config_exec).
    Config,
    /// Runner call 2: create the job's workspace and credentials (prepare_exec).
    Prepare,
    /// Runner call 3: run one generated script for one stage (run_exec).
    Run {
        /// Script written by the runner.
        script: PathBuf,
        /// Stage name (prepare_script, get_sources, build_script, ...).
        stage: String,
    },
    /// Runner call 4: destroy credentials and remove the job's workspace (cleanup_exec).
    Cleanup,
    /// Remove workspaces of jobs whose cleanup never ran.
    Gc {
        /// Sweep jobs idle at least this many seconds (default: gc_max_age_secs).
        #[arg(long)]
        max_age_secs: Option<u64>,
        /// Only list what would be removed.
        #[arg(long)]
        dry_run: bool,
    },
    /// Print Prometheus metrics (grants, denials, durations, active jobs); also writes
    /// `[metrics] textfile` when set.
    Metrics,
    /// Validate the config and this host; print every problem with a fix.
    Check {
        /// Also run a real kinit from each account's keytab (bounded, into a throwaway cache)
        /// and show which DC answered and how fast.
        #[arg(long)]
        probe: bool,
        /// Repair what can be repaired before checking: make the network wall's nftables
        /// table (or restore its base) and remove stale job rules.
        #[arg(long)]
        fix: bool,
    },
    /// Run the demo locally, no GitLab needed: jobs through the four runner calls on an embedded
    /// config (with MIT Kerberos: a policy grant, a forged-variable denial, the audit log).
    /// Runs `p3-executor-demo`, which is built from the test fixtures, not shipped in this binary.
    #[command(disable_help_flag = true)]
    Demo(Passthrough),
    /// Inspect and verify the audit log.
    #[command(subcommand)]
    Audit(crate::audit::AuditCommand),
    /// Ask the policy offline: would a job get a devstage, and which rule decides?
    #[command(subcommand)]
    Policy(crate::explain::PolicyCommand),
    /// Built-in step: S3 transfers with the job's credentials (`p3-executor s3 --help`).
    #[command(disable_help_flag = true)]
    S3(Passthrough),
    /// Built-in step: container images (`p3-executor image --help`).
    #[command(disable_help_flag = true)]
    Image(Passthrough),
    /// Built-in step: deploy, remove and inspect P3 jobs (`p3-executor p3 --help`).
    #[command(disable_help_flag = true)]
    P3(Passthrough),
    /// Built-in step: create or update the GitLab release of a release tag.
    #[command(disable_help_flag = true)]
    Release(Passthrough),
}

/// Arguments handed on untouched to the binary that implements the subcommand (the steps, the
/// demo): this binary never compiles their parsers.
#[derive(Debug, clap::Args)]
pub struct Passthrough {
    /// Arguments for the subcommand.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<std::ffi::OsString>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(line: &str) -> Vec<OsString> {
        std::iter::once("p3-executor")
            .chain(line.split(' ').filter(|a| !a.is_empty()))
            .map(OsString::from)
            .collect()
    }

    #[test]
    fn the_runner_calls_parse_as_clap_parses_them() {
        for line in [
            "--config /etc/p3/c.toml config",
            "--config /etc/p3/c.toml prepare",
            "--config /etc/p3/c.toml cleanup",
            "--config /etc/p3/c.toml run /b/script.sh build_script",
            "--config=/etc/p3/c.toml run /b/script.sh step_release",
            "--config=rel.toml config",
        ] {
            let fast = Cli::runner_call(argv(line), None).expect(line);
            let clap = Cli::try_parse_from(argv(line)).expect(line);
            assert_eq!(format!("{fast:?}"), format!("{clap:?}"), "{line}");
        }
    }

    #[test]
    fn everything_else_goes_to_clap() {
        for line in [
            "",
            "--version",
            "--help",
            "config --help",
            "config extra",
            "prepare --config /x",
            "--config",
            "--config --x config",
            "--config= config",
            "run /b/script.sh",
            "run /b/script.sh build_script extra",
            "run -x build_script",
            "run /b/script.sh --stage",
            "gc",
            "check --probe",
            "audit verify",
            "s3 cp a b",
            "-v config",
        ] {
            assert!(Cli::runner_call(argv(line), None).is_none(), "{line:?}");
        }
    }

    #[test]
    fn the_config_path_comes_from_the_flag_then_the_environment_then_the_default() {
        let env = Some(OsString::from("/env.toml"));
        let path =
            |line: &str, env: Option<OsString>| Cli::runner_call(argv(line), env).map(|c| c.config);
        assert_eq!(
            path("--config /flag.toml config", env.clone()),
            Some("/flag.toml".into())
        );
        assert_eq!(path("config", env), Some("/env.toml".into()));
        assert_eq!(
            path("config", None),
            Some(crate::config::DEFAULT_CONFIG_PATH.into())
        );
        // clap's own handling of an empty variable decides.
        assert_eq!(path("config", Some(OsString::new())), None);
    }
}
