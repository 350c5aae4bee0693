//! Build-time settings for the p3-executor binary: link flags, and what `--version` says.
//!
//! GitLab Runner starts the executor several times per job, so process start-up is on every
//! job's critical path. Packed relative relocations (DT_RELR, glibc >= 2.36, binutils >= 2.38)
//! shrink the ~1.3 MB of relocation records the dynamic loader would otherwise read and apply
//! at every start. Only the final link is affected: no dependency is rebuilt.
//!
//! Provenance: `P3_EXECUTOR_VERSION` (used by `cli.rs` for `--version`) is the package version,
//! the git commit it was built from (`-dirty` when tracked files differed from it) and the
//! build date, like `p3-executor 0.1.0 (commit 60aabd6, built 2026-05-01)`. Outside a git
//! checkout (a source tarball) the commit is `unknown`. The date is `SOURCE_DATE_EPOCH`'s
//! when set (reproducible builds), else the day this script ran. The parts are also exported
//! on their own (`P3_EXECUTOR_GIT_COMMIT`, `P3_EXECUTOR_BUILD_DATE`).

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let target = std::env::var("TARGET").unwrap_or_default();
    if target.contains("linux-gnu") && linker_supports_relr() {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
    // Tests keep their scratch trees in target/tmp (.cargo/config.toml points TMPDIR there,
    // outside the private /tmp of a job's sandbox). Cargo creates it only in its own target
    // dir, which CARGO_TARGET_DIR may move elsewhere.
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default());
    let _ = std::fs::create_dir_all(manifest_dir.join("target/tmp"));

    let commit = git_commit(&manifest_dir);
    let date = build_date();
    let version = std::env::var("CARGO_PKG_VERSION").unwrap_or_default();
    println!("cargo:rustc-env=P3_EXECUTOR_GIT_COMMIT={commit}");
    println!("cargo:rustc-env=P3_EXECUTOR_BUILD_DATE={date}");
    println!("cargo:rustc-env=P3_EXECUTOR_VERSION={version} (commit {commit}, built {date})");

    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=SOURCE_DATE_EPOCH");
    // Re-run when the commit changes (HEAD moves, the branch it names advances, refs are
    // packed) and when this package's sources change (they recompile anyway, and that is when
    // the dirty flag can change). Not on `git add` or `git status`: the index is not watched,
    // so those never rebuild the executor. A clean checkout (CI, the .deb) is always exact.
    for path in git_paths_to_watch(&manifest_dir) {
        println!("cargo:rerun-if-changed={}", path.display());
    }
    println!("cargo:rerun-if-changed=src");
    println!("cargo:rerun-if-changed=Cargo.toml");
}

/// Older toolchains reject the flag; probe once instead of failing the build.
fn linker_supports_relr() -> bool {
    Command::new("ld")
        .arg("--help")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("pack-relative-relocs"))
        .unwrap_or(false)
}

/// Output of `git <args>` in `dir`, trimmed; None if git is missing or fails (no checkout).
fn git(dir: &Path, args: &[&str]) -> Option<String> {
    // `--no-optional-locks`: `status` must not rewrite the index as a side effect of a build.
    // `safe.directory`: a checkout owned by another user (a CI clone) is still read; building
    // it runs its code anyway.
    let out = Command::new("git")
        .args(["--no-optional-locks", "-c", "safe.directory=*", "-C"])
        .arg(dir)
        .args(args)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// `60aabd6`, `60aabd6-dirty` (tracked files differ from the commit), or `unknown`.
fn git_commit(dir: &Path) -> String {
    let Some(short) = git(dir, &["rev-parse", "--short", "HEAD"]).filter(|s| !s.is_empty()) else {
        return "unknown".into();
    };
    // Untracked files (build output, scratch) do not make a build dirty; edits do.
    match git(dir, &["status", "--porcelain", "--untracked-files=no"]) {
        Some(changes) if changes.is_empty() => short,
        _ => format!("{short}-dirty"),
    }
}

/// The files whose change means HEAD names another commit (worktrees included).
fn git_paths_to_watch(dir: &Path) -> Vec<PathBuf> {
    let mut paths = Vec::new();
    let mut add = |git_path: &str| {
        if let Some(p) = git(dir, &["rev-parse", "--git-path", git_path]) {
            let p = dir.join(p); // relative paths are relative to `dir`
            if p.exists() {
                paths.push(p);
            }
        }
    };
    add("HEAD");
    add("packed-refs");
    if let Some(head_ref) = git(dir, &["symbolic-ref", "-q", "HEAD"]) {
        add(&head_ref);
    }
    paths
}

/// `YYYY-MM-DD` (UTC) of `SOURCE_DATE_EPOCH`, else of now.
fn build_date() -> String {
    let secs = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.trim().parse::<i64>().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64)
        });
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    format!("{y:04}-{m:02}-{d:02}")
}

/// Proleptic Gregorian date of a day count since 1970-01-01 (H. Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = (if mp < 10 { mp + 3 } else { mp - 9 }) as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}
