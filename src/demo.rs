//! `demo`: drive the four runner calls for one job on an embedded config (to be implemented).

/// Demo options.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {}

/// Run the demo; returns the exit code.
pub fn run(_args: DemoArgs) -> anyhow::Result<i32> {
    anyhow::bail!("demo is not implemented yet")
}
