//! Shared helpers for end-to-end tests: the runner stand-in lives in the library
//! (`p3_testkit::driver`, also used by `p3-executor demo`).
#![allow(dead_code)]

use std::path::PathBuf;

pub use p3_testkit::driver::JobResult;

/// Path of the executor binary under test.
pub fn exe() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_p3-executor"))
}

/// A host calling the binary under test.
pub fn host(extra: &str) -> p3_testkit::driver::Host {
    p3_testkit::driver::Host::new(exe(), extra)
}

/// A command's status, stdout and stderr, for assertion messages.
pub fn text(out: &std::process::Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// True when the tests run as root (isolation tests need it; CI runs as root).
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Live processes holding `uid` in any uid field, one line each.
pub fn processes_of(uid: u32) -> Vec<String> {
    p3_testkit::procs::holding(uid..=uid)
        .iter()
        .map(ToString::to_string)
        .collect()
}

/// GitLab ID tokens: minting ([`p3_testkit::tokens`]) and attack tokens and HTTP stand-ins
/// ([`p3_testkit::http_stub`]) under one name.
pub mod tokens {
    pub use p3_testkit::http_stub::*;
    pub use p3_testkit::tokens::*;
}
