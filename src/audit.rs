//! Tamper-evident audit log (to be implemented).

/// `audit` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum AuditCommand {}

/// Run an audit subcommand; returns the exit code.
pub fn run(_cfg: &crate::config::Config, cmd: AuditCommand) -> anyhow::Result<i32> {
    match cmd {}
}
