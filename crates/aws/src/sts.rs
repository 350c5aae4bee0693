//! STS for the web-identity S3 credential source (being written).

/// `sts` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum StsCommand {}

/// Run an `sts` subcommand; returns the exit code.
pub fn run(cmd: StsCommand) -> anyhow::Result<i32> {
    match cmd {}
}
