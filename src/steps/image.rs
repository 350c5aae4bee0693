//! Built-in step `image` (to be implemented).

/// Subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum ImageCommand {}

/// Run the step; returns the process exit code.
pub fn run(cmd: ImageCommand) -> anyhow::Result<i32> {
    match cmd {}
}
