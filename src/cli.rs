//! Command-line interface of `p3-executor`: the runner-facing calls and host tools; the built-in
//! job steps and the demo are named here but parsed by their own binaries.

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
