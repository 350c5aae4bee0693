//! Per-call overhead of p3-executor next to its floors, measured in the same run.
//!
//! `cargo bench --bench overhead` prints, for each runner call (config, prepare, run with an
//! empty script, cleanup), the median wall time of p3-executor over many calls, next to the
//! median of spawning `/bin/true` and of a minimal bash custom executor doing the same call;
//! and the peak RSS of `run`. Jobs run as in production: as root with a private job uid when
//! the benchmark runs as root, in the job sandbox; `run` is also measured with
//! `[sandbox] enabled = false` on the same prepared job, interleaved, to show what the
//! sandbox (namespaces, mounts, PID 1) adds per stage.
//!
//! The Rust floor (issue 23's yardstick, target: `config` <= 1.5x it) is the smallest Rust
//! program that does what `config` must: read `JOB_RESPONSE_FILE` and print one line. It is
//! compiled here with the `rustc` on `PATH` (`-C opt-level=3`, PIE like ours), so the floor
//! moves with the toolchain, not with this crate.
//!
//! The runner binary measured is built on its own first, as the package builds it
//! (`support/runner_binary.rs`); `P3_BENCH_EXECUTOR` measures another build instead. The jobs'
//! directories go where `TMPDIR` says (`TMPDIR=/dev/shm` keeps a slow disk out of the figures).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[path = "support/nft_table.rs"]
mod nft_table;
#[path = "support/runner_binary.rs"]
mod runner_binary;
use runner_binary::executor;

/// Calls per measurement; `P3_BENCH_RUNS` overrides it (a quick look: 50).
fn iterations() -> usize {
    std::env::var("P3_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300)
        .max(3)
}

/// The Rust floor: std start-up, read the payload, print a line.
const RUST_FLOOR: &str = r#"fn main() {
    let path = std::env::var_os("JOB_RESPONSE_FILE").expect("JOB_RESPONSE_FILE");
    let payload = std::fs::read(path).expect("payload");
    println!("{{\"payload_bytes\":{}}}", payload.len());
}
"#;

const BASH_EXECUTOR: &str = r#"#!/usr/bin/env bash
# The smallest custom executor that does the same four calls (no isolation, no credentials).
set -eo pipefail
dir="$STATE/bash/$JOB"
case "$1" in
  config) printf '{"builds_dir":"%s/builds","cache_dir":"%s/cache","builds_dir_is_shared":false,"driver":{"name":"bash","version":"1"}}\n' "$dir" "$dir" ;;
  prepare) mkdir -p -m 0700 "$dir/builds" "$dir/cache" ;;
  run) cd "$dir/builds" && bash "$2" || exit "$BUILD_FAILURE_EXIT_CODE" ;;
  cleanup) rm -rf "$dir" ;;
esac
"#;

/// Wall time and peak RSS (KiB) of one child.
#[allow(clippy::zombie_processes)] // reaped by wait4 below, which also yields its rusage
fn measure(cmd: &mut Command) -> (Duration, i64) {
    let start = Instant::now();
    let child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let mut status = 0;
    // SAFETY: wait4 on our own child; gives its rusage, which std's wait does not.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    let took = start.elapsed();
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "{cmd:?} failed with status {status}"
    );
    (took, usage.ru_maxrss)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

struct Setup {
    _dir: tempfile::TempDir,
    root: PathBuf,
    config: PathBuf,
    config_unsandboxed: PathBuf,
    config_no_seccomp: PathBuf,
    config_no_cgroup: PathBuf,
    payload: PathBuf,
    script: PathBuf,
    bash: PathBuf,
    rust_floor: PathBuf,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    fs::set_permissions(&root, fs::Permissions::from_mode(0o711)).unwrap();
    let config = root.join("config.toml");
    let isolation = if nix::unistd::geteuid().is_root() {
        "job_user = \"nobody\"\njob_uid_range = [400000, 400999]\n"
    } else {
        ""
    };
    // As in production with metrics on: cleanup also updates the textfile (incrementally).
    let text = format!(
        "state_root = \"{0}/state\"\nbuilds_root = \"{0}/builds\"\n{isolation}[log]\nlevel = \"warn\"\n[audit]\npath = \"{0}/audit.jsonl\"\n[metrics]\ntextfile = \"{0}/p3_executor.prom\"\n[network]\ntable = \"{1}\"\n",
        root.display(),
        nft_table::name()
    );
    fs::write(&config, &text).unwrap();
    let config_unsandboxed = root.join("config-unsandboxed.toml");
    fs::write(
        &config_unsandboxed,
        format!("{text}[sandbox]\nenabled = false\n"),
    )
    .unwrap();
    let config_no_seccomp = root.join("config-no-seccomp.toml");
    fs::write(
        &config_no_seccomp,
        format!("{text}[sandbox]\nseccomp = \"off\"\n"),
    )
    .unwrap();
    let config_no_cgroup = root.join("config-no-cgroup.toml");
    fs::write(
        &config_no_cgroup,
        format!("{text}[limits]\ncgroups = \"off\"\n"),
    )
    .unwrap();
    let payload = root.join("response.json");
    fs::write(
        &payload,
        r#"{"id": 4242, "token": "t", "job_info": {"project_id": 1}, "variables": []}"#,
    )
    .unwrap();
    let script = root.join("script");
    fs::write(&script, "#!/usr/bin/env bash\nexit 0\n").unwrap();
    fs::set_permissions(&script, fs::Permissions::from_mode(0o700)).unwrap();
    let bash = root.join("bash-executor");
    fs::write(&bash, BASH_EXECUTOR).unwrap();
    fs::set_permissions(&bash, fs::Permissions::from_mode(0o755)).unwrap();
    let rust_floor = root.join("rust-floor");
    let floor_src = root.join("rust-floor.rs");
    fs::write(&floor_src, RUST_FLOOR).unwrap();
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let built = Command::new(&rustc)
        .args([
            "--edition",
            "2021",
            "-C",
            "opt-level=3",
            "-C",
            "strip=debuginfo",
            "-o",
        ])
        .arg(&rust_floor)
        .arg(&floor_src)
        .status()
        .expect("rustc (the Rust floor is compiled at start)");
    assert!(built.success(), "compiling the Rust floor failed");
    Setup {
        _dir: dir,
        root,
        config,
        config_unsandboxed,
        config_no_seccomp,
        config_no_cgroup,
        payload,
        script,
        bash,
        rust_floor,
    }
}

fn ours(s: &Setup, args: &[&Path]) -> Command {
    ours_with(&s.config, s, args)
}

fn ours_with(config: &Path, s: &Setup, args: &[&Path]) -> Command {
    let mut cmd = Command::new(executor());
    cmd.arg("--config").arg(config).args(args);
    cmd.env("JOB_RESPONSE_FILE", &s.payload)
        .env("BUILD_FAILURE_EXIT_CODE", "1")
        .env("SYSTEM_FAILURE_EXIT_CODE", "2");
    cmd
}

fn bash(s: &Setup, args: &[&Path]) -> Command {
    let mut cmd = Command::new(&s.bash);
    cmd.args(args)
        .env("STATE", &s.root)
        .env("JOB", "4242")
        .env("BUILD_FAILURE_EXIT_CODE", "1");
    cmd
}

fn main() {
    let _table = nft_table::Removed;
    let s = setup();
    // Built (on its own, as packaged) before anything is timed.
    let exe = executor();
    let size = fs::metadata(exe).map_or(0, |m| m.len());
    println!(
        "runner binary: {} ({:.1} MB)",
        exe.display(),
        size as f64 / 1e6
    );
    let true_bin = Path::new("/bin/true");
    let (mut t_true, mut t_ours, mut t_bash) = (Vec::new(), Vec::new(), Vec::new());
    let (mut t_floor, mut t_version) = (Vec::new(), Vec::new());
    let calls = ["config", "prepare", "run", "cleanup"];
    for _ in 0..calls.len() {
        t_ours.push(Vec::new());
        t_bash.push(Vec::new());
    }
    let mut run_rss = 0;
    let mut t_unsandboxed = Vec::new();
    let mut t_no_seccomp = Vec::new();
    // A whole job with [limits] cgroups = "off" (run follows the cgroup recorded at prepare).
    let (mut t_prepare_no_cgroup, mut t_run_no_cgroup) = (Vec::new(), Vec::new());
    let script = s.script.clone();
    let iterations = iterations();
    for _ in 0..iterations {
        t_true.push(measure(&mut Command::new(true_bin)).0);
        t_floor.push(measure(Command::new(&s.rust_floor).env("JOB_RESPONSE_FILE", &s.payload)).0);
        t_version.push(measure(Command::new(executor()).arg("--version")).0);
        for (i, call) in calls.iter().enumerate() {
            let call_path = Path::new(call);
            let args: Vec<&Path> = if *call == "run" {
                vec![call_path, &script, Path::new("build_script")]
            } else {
                vec![call_path]
            };
            let (t, rss) = measure(&mut ours(&s, &args));
            t_ours[i].push(t);
            if *call == "run" {
                run_rss = run_rss.max(rss);
                t_unsandboxed.push(measure(&mut ours_with(&s.config_unsandboxed, &s, &args)).0);
                t_no_seccomp.push(measure(&mut ours_with(&s.config_no_seccomp, &s, &args)).0);
            }
            t_bash[i].push(measure(&mut bash(&s, &args)).0);
        }
        let plain = |args: &[&Path]| measure(&mut ours_with(&s.config_no_cgroup, &s, args)).0;
        t_prepare_no_cgroup.push(plain(&[Path::new("prepare")]));
        t_run_no_cgroup.push(plain(&[
            Path::new("run"),
            &script,
            Path::new("build_script"),
        ]));
        plain(&[Path::new("cleanup")]);
    }
    let floor = median(t_true);
    let rust_floor = median(t_floor);
    println!("p3-executor per-call overhead, median of {iterations} calls (same run, same host)");
    println!(
        "/bin/true {}, Rust floor (read the payload, print a line) {}, p3-executor --version {}",
        ms(floor),
        ms(rust_floor),
        ms(median(t_version))
    );
    println!(
        "{:<10} {:>12} {:>16} {:>14} {:>14}",
        "call", "p3-executor", "bash executor", "vs Rust floor", "vs /bin/true"
    );
    for (i, call) in calls.iter().enumerate() {
        let o = median(t_ours[i].clone());
        let b = median(t_bash[i].clone());
        println!(
            "{:<10} {:>12} {:>16} {:>13.2}x {:>13.2}x",
            call,
            ms(o),
            ms(b),
            o.as_secs_f64() / rust_floor.as_secs_f64(),
            o.as_secs_f64() / floor.as_secs_f64()
        );
    }
    let config = median(t_ours[0].clone()).as_secs_f64() / rust_floor.as_secs_f64();
    println!(
        "config = {config:.2}x the Rust floor (target <= 1.50x){}",
        if config <= 1.5 {
            ""
        } else {
            "  ** over target **"
        }
    );
    let sandboxed = median(t_ours[2].clone());
    let unsandboxed = median(t_unsandboxed);
    println!(
        "run without the sandbox: {} (the sandbox adds {} per stage)",
        ms(unsandboxed),
        ms(sandboxed.saturating_sub(unsandboxed))
    );
    let no_seccomp = median(t_no_seccomp);
    println!(
        "run with [sandbox] seccomp = \"off\": {} (the filter and the session keyring add {} per stage)",
        ms(no_seccomp),
        ms(sandboxed.saturating_sub(no_seccomp))
    );
    let (prepare, prepare_plain) = (median(t_ours[1].clone()), median(t_prepare_no_cgroup));
    let run_plain = median(t_run_no_cgroup);
    println!(
        "with [limits] cgroups = \"off\": prepare {} (the job's cgroup adds {}), run {} (entering it and reading its counters add {} per stage)",
        ms(prepare_plain),
        ms(prepare.saturating_sub(prepare_plain)),
        ms(run_plain),
        ms(sandboxed.saturating_sub(run_plain))
    );
    println!("peak RSS of `run`: {:.1} MiB", run_rss as f64 / 1024.0);
    println!(
        "note: `run` includes bash executing the (empty) job script; its floor is the bash executor's run."
    );
}
