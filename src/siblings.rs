//! The binaries installed next to `p3-executor` that it runs: the built-in steps, the
//! host-side AWS calls and the demo. Each keeps its dependencies (the AWS SDK, the fixtures)
//! out of the binary the runner starts for every stage.

use std::path::PathBuf;

/// The built-in steps (`p3-executor <step>`).
pub const STEPS: &str = "p3-executor-steps";
/// The host-side AWS calls (audit shipping and S3 queries, STS web identity).
pub const AWS: &str = "p3-executor-aws";
/// The demo, built from the test fixtures.
pub const DEMO: &str = "p3-executor-demo";

/// Where sibling `name` belongs: the directory of the running executor.
pub fn expected(name: &str) -> Option<PathBuf> {
    Some(std::env::current_exe().ok()?.with_file_name(name))
}

/// Sibling `name`, when it is installed.
pub fn path(name: &str) -> Option<PathBuf> {
    expected(name).filter(|p| p.is_file())
}
