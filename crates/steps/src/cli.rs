//! Command line of the built-in steps. Users type `p3-executor <step> ...`; the runner binary
//! hands its arguments on untouched, so the usage text says `p3-executor`.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Built-in steps for image builds, P3 deploys, S3 transfers and GitLab releases, run inside a
/// job with the credentials p3-executor granted it.
#[derive(Debug, Parser)]
#[command(name = "p3-executor", version, about, long_about = None)]
pub struct StepsCli {
    /// Accepted for symmetry with `p3-executor --config ...`; the steps never read the
    /// executor's config (their settings come from `P3_STEPS_CONFIG`).
    #[arg(long, global = true, hide = true, env = "P3_EXECUTOR_CONFIG")]
    pub(crate) config: Option<PathBuf>,
    /// The step.
    #[command(subcommand)]
    pub step: Step,
}

/// Every built-in step.
#[derive(Debug, Subcommand)]
pub enum Step {
    /// S3 transfers with the job's credentials.
    S3(crate::s3::S3Args),
    /// Container images.
    #[command(subcommand)]
    Image(crate::image::ImageCommand),
    /// Deploy, remove and inspect P3 jobs.
    #[command(subcommand)]
    P3(crate::p3::P3Command),
    /// Create or update the GitLab release of a release tag.
    Release(crate::release::ReleaseArgs),
}

/// The command line as users see it: named `p3-executor` (the binary users type, which execs
/// this one), and every help text starting with `p3-executor <step> ...`, e.g.
/// `p3-executor s3 cp — Copy a file or object ...`.
pub fn command() -> clap::Command {
    fn with_template(cmd: clap::Command, full: &str) -> clap::Command {
        let template = format!(
            "{full} — {{about-with-newline}}\n{{usage-heading}} {{usage}}\n\n{{all-args}}{{after-help}}"
        );
        cmd.help_template(template).mut_subcommands(|sub| {
            let name = format!("{full} {}", sub.get_name());
            with_template(sub, &name)
        })
    }
    with_template(
        <StepsCli as clap::CommandFactory>::command().bin_name("p3-executor"),
        "p3-executor",
    )
}
