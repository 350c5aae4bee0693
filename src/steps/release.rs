//! Built-in step `release` (to be implemented).

/// Arguments.
#[derive(Debug, clap::Args)]
pub struct ReleaseArgs {}

/// Run the step; returns the process exit code.
pub fn run(_args: ReleaseArgs) -> anyhow::Result<i32> {
    anyhow::bail!("release is not implemented yet")
}
