//! The programs a job needs on this host: the built-in steps' binary, the job shell, and what
//! the runner's generated scripts call from the job's PATH.

use super::finding::{Finding, Severity, finding};
use crate::config::Config;

/// The steps binary next to this one, the shell, and git/gitlab-runner on `job_path`.
pub(super) fn tools(cfg: &Config, out: &mut Vec<Finding>) {
    // `p3-executor <step>` runs the steps binary installed next to this one.
    if let Some(steps) = crate::siblings::expected(crate::siblings::STEPS) {
        if !steps.is_file() {
            out.push(finding(
                Severity::Warning,
                format!(
                    "{} is missing: jobs cannot run the built-in steps (s3, image, p3, release)",
                    steps.display()
                ),
                "install it next to p3-executor (scripts/install.sh does)",
            ));
        }
    }
    if which::which(&cfg.shell).is_err() {
        out.push(finding(
            Severity::Error,
            format!("shell {:?} not found", cfg.shell),
            "install it (apt-get install bash) or set shell to an absolute path",
        ));
    }
    // The runner's generated scripts call git (get_sources) and gitlab-runner (caches,
    // artifacts) from the job's PATH.
    let cwd = std::env::current_dir().unwrap_or_else(|_| "/".into());
    for (tool, severity, why) in [
        ("git", Severity::Error, "get_sources clones with it"),
        (
            "gitlab-runner",
            Severity::Warning,
            "cache and artifact stages call it",
        ),
    ] {
        if which::which_in(tool, Some(&cfg.job_path), &cwd).is_err() {
            out.push(finding(
                severity,
                format!("{tool} is not on job_path ({why})"),
                format!("install {tool} or add its directory to job_path"),
            ));
        }
    }
}
