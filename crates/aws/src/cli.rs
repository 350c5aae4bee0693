//! Command line of `p3-executor-aws`. `p3-executor audit ...` execs this binary with its own
//! arguments, so the `audit` subcommands are the executor's own clap type, parsed the same way.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// The executor's host-side AWS calls (run by `p3-executor`, not by hand).
#[derive(Debug, Parser)]
#[command(name = "p3-executor", about, long_about = None)]
pub struct AwsCli {
    /// Executor config file.
    #[arg(long, global = true, env = "P3_EXECUTOR_CONFIG", default_value = p3_executor::config::DEFAULT_CONFIG_PATH)]
    pub config: PathBuf,
    /// Subcommand.
    #[command(subcommand)]
    pub command: AwsCommand,
}

/// Every subcommand.
#[derive(Debug, Subcommand)]
pub enum AwsCommand {
    /// The audit trail in S3: `ship`, `verify --s3`, `show --s3`.
    #[command(subcommand)]
    Audit(p3_executor::audit::AuditCommand),
    /// STS calls for the web-identity credential source.
    #[command(subcommand)]
    Sts(crate::sts::StsCommand),
}
