//! Link-time settings for the p3-executor binary.
//!
//! GitLab Runner starts the executor several times per job, so process start-up is on every
//! job's critical path. Packed relative relocations (DT_RELR, glibc >= 2.36, binutils >= 2.38)
//! shrink the ~1.3 MB of relocation records the dynamic loader would otherwise read and apply
//! at every start. Only the final link is affected: no dependency is rebuilt.

fn main() {
    let target = std::env::var("TARGET").unwrap_or_default();
    if target.contains("linux-gnu") && linker_supports_relr() {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
    // Tests keep their scratch trees in target/tmp (.cargo/config.toml points TMPDIR there,
    // outside the private /tmp of a job's sandbox). Cargo creates it only in its own target
    // dir, which CARGO_TARGET_DIR may move elsewhere.
    if let Ok(dir) = std::env::var("CARGO_MANIFEST_DIR") {
        let _ = std::fs::create_dir_all(std::path::Path::new(&dir).join("target/tmp"));
    }
    println!("cargo:rerun-if-changed=build.rs");
}

/// Older toolchains reject the flag; probe once instead of failing the build.
fn linker_supports_relr() -> bool {
    std::process::Command::new("ld")
        .arg("--help")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("pack-relative-relocs"))
        .unwrap_or(false)
}
