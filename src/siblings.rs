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
///
/// Inside an image the executor runs through the host's dynamic loader, which the image sees
/// at `/.p3-executor/bin` (`sandbox/image.rs`): the running executable is then that loader,
/// and its directory holds the siblings' wrappers, so the lookup is the same.
pub fn expected(name: &str) -> Option<PathBuf> {
    Some(std::env::current_exe().ok()?.with_file_name(name))
}

/// The directory of the running executor (and of its siblings).
pub fn dir() -> Option<PathBuf> {
    Some(std::env::current_exe().ok()?.parent()?.to_path_buf())
}

/// A job's PATH: `path` with the executor's directory appended when it is not on it, so
/// `p3-executor <step>` resolves in every job wherever the binaries are installed (the
/// sandbox binds the directory back when it hides it, `sandbox/plan.rs`).
pub fn job_path(path: &str) -> String {
    match dir() {
        Some(d) => with_dir(path, &d),
        None => path.to_string(),
    }
}

fn with_dir(path: &str, dir: &std::path::Path) -> String {
    let Some(d) = dir.to_str().filter(|d| !d.contains(':')) else {
        return path.to_string();
    };
    if std::env::split_paths(path).any(|p| p == dir) {
        return path.to_string();
    }
    if path.is_empty() {
        d.to_string()
    } else {
        format!("{path}:{d}")
    }
}

/// Sibling `name`, when it is installed.
pub fn path(name: &str) -> Option<PathBuf> {
    expected(name).filter(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn the_executors_dir_goes_last_on_the_jobs_path_once() {
        let cases = [
            ("/usr/bin:/bin", "/usr/bin", "/usr/bin:/bin"),
            ("/usr/bin:/bin", "/opt/p3/bin", "/usr/bin:/bin:/opt/p3/bin"),
            (
                "/usr/bin",
                "/tmp/a b/target/debug",
                "/usr/bin:/tmp/a b/target/debug",
            ),
            ("", "/opt/p3/bin", "/opt/p3/bin"),
            ("/usr/bin", "/odd:dir", "/usr/bin"),
        ];
        for (path, dir, want) in cases {
            assert_eq!(with_dir(path, Path::new(dir)), want, "{path} + {dir}");
        }
    }
}
