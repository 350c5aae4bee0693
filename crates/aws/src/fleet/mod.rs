//! The audit trail beyond one host (being written).

use p3_executor::audit::AuditCommand;
use p3_executor::config::Config;

/// Run an S3 `audit` subcommand; returns the exit code.
pub fn run(_cfg: &Config, _cmd: AuditCommand) -> anyhow::Result<i32> {
    anyhow::bail!("not yet")
}
