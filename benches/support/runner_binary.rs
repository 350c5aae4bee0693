//! The runner binary the benchmarks measure: the one the package ships.
//!
//! `cargo bench` builds `p3-executor` together with the benchmarks' dev-dependencies (the
//! steps crate, the test kit), and cargo unifies features across one invocation: the runner
//! binary then links reqwest's and hyper's HTTP/2 and h2, which the steps' AWS and GitLab
//! clients enable and the runner never uses (+1 MB, ~1,500 more relocations to apply at every
//! start). `packaging/build-deb.sh` and `scripts/install.sh` build it in a cargo invocation of
//! its own, linked with fat LTO, so the benchmarks do the same before measuring.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The binary to measure: `P3_BENCH_EXECUTOR` (an A/B against another build) or this
/// checkout's runner binary built on its own, with the benchmark's profile, into the same
/// target directory (only the crates whose features differ are compiled again). Built once
/// per benchmark run.
pub fn executor() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| match std::env::var_os("P3_BENCH_EXECUTOR") {
        Some(path) => PathBuf::from(path),
        None => build_alone(),
    })
}

fn build_alone() -> PathBuf {
    // <target>/<profile dir>/p3-executor, as cargo built it with the benchmark.
    let unified = Path::new(env!("CARGO_BIN_EXE_p3-executor"));
    let profile_dir = unified.parent().expect("profile dir");
    let target_dir = profile_dir.parent().expect("target dir");
    let profile = if cfg!(debug_assertions) {
        "dev"
    } else {
        "release"
    };
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut build = Command::new(cargo);
    build.args(["build", "--quiet", "--locked", "--profile", profile]);
    if profile == "release" {
        // As packaged: one LLVM module, far fewer relocations to apply at every start (see
        // [profile.release.package.p3-executor] in Cargo.toml).
        build.args(["--config", "profile.release.lto=\"fat\""]);
    }
    let status = build
        .args(["-p", "p3-executor", "--bin", "p3-executor"])
        .arg("--manifest-path")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"))
        .arg("--target-dir")
        .arg(target_dir)
        .status()
        .expect("cargo (the runner binary is built on its own before measuring)");
    assert!(
        status.success(),
        "building the runner binary on its own failed"
    );
    unified.to_path_buf()
}
