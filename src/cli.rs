//! Command-line interface: the runner-facing calls, host tools, and the built-in job steps.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// GitLab Runner custom executor that grants verified jobs Kerberos and S3 credentials by
/// policy, and built-in steps for image builds, P3 deploys and S3 transfers.
#[derive(Debug, Parser)]
#[command(name = "p3-executor", version, about, long_about = None)]
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
    /// Validate the config and this host; print every problem with a fix.
    Check,
    /// Run the demo locally, no GitLab needed: jobs through the four runner calls on an embedded
    /// config (with MIT Kerberos: a policy grant, a forged-variable denial, the audit log).
    Demo(crate::demo::DemoArgs),
    /// Inspect and verify the audit log.
    #[command(subcommand)]
    Audit(crate::audit::AuditCommand),
    /// Built-in step: S3 transfers with the job's credentials.
    S3(crate::steps::s3::S3Args),
    /// Built-in step: container images.
    #[command(subcommand)]
    Image(crate::steps::image::ImageCommand),
    /// Built-in step: deploy, remove and inspect P3 jobs.
    #[command(subcommand)]
    P3(crate::steps::p3::P3Command),
    /// Built-in step: create or update the GitLab release of a release tag.
    Release(crate::steps::release::ReleaseArgs),
}
