//! Shared helpers for end-to-end tests: the runner stand-in lives in the library
//! (`p3_testkit::driver`, also used by `p3-executor demo`).
#![allow(dead_code)]

use std::fs;
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

/// True when the tests run as root (isolation tests need it; CI runs as root).
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Processes whose real uid is `uid`.
pub fn processes_of(uid: u32) -> Vec<String> {
    let mut out = Vec::new();
    for e in fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(status) = fs::read_to_string(format!("/proc/{pid}/status")) else {
            continue;
        };
        if status
            .lines()
            .any(|l| l.starts_with("State:") && l.contains("Z (zombie)"))
        {
            continue;
        }
        let real = status
            .lines()
            .find(|l| l.starts_with("Uid:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|u| u.parse::<u32>().ok());
        if real == Some(uid) {
            let cmd = fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            out.push(format!("{pid}: {}", cmd.replace('\0', " ")));
        }
    }
    out
}

/// GitLab ID tokens: minting ([`p3_testkit::tokens`]) and attack tokens and HTTP stand-ins
/// ([`p3_testkit::http_stub`]) under one name.
pub mod tokens {
    pub use p3_testkit::http_stub::*;
    pub use p3_testkit::tokens::*;
}
