//! Built-in step `p3` (to be implemented).

/// Subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum P3Command {}

/// Run the step; returns the process exit code.
pub fn run(cmd: P3Command) -> anyhow::Result<i32> {
    match cmd {}
}
