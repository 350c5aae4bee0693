//! Built-in step `s3` (to be implemented).

/// Arguments.
#[derive(Debug, clap::Args)]
pub struct S3Args {}

/// Run the step; returns the process exit code.
pub fn run(_args: S3Args) -> anyhow::Result<i32> {
    anyhow::bail!("s3 is not implemented yet")
}
