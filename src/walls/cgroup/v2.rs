//! The cgroup v2 file protocol (unified hierarchy), on directories only: every function takes
//! the directories it works on, so the tests drive it against a tree that mimics cgroupfs.
//!
//! Layout: `<base>/p3-executor/job-<id>-<tag>`. `base` is the delegated cgroup (the runner's own,
//! with `Delegate=yes`, or `[limits] cgroup_parent`). v2 lets a cgroup hand controllers to its
//! children only while it holds no process itself, so when the runner sits in `base`, its
//! processes are first moved into the leaf `<base>/p3-runner` (what systemd's
//! `DelegateSubgroup=` does on newer versions).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::error::CgroupError;
use super::files::{self, read_keyed, read_u64};
use super::limits::{HostSize, Limits};
use super::{Counters, PARENT, Usage};

/// The leaf the runner's own processes are moved into when `base` must hand out controllers.
pub const RUNNER_LEAF: &str = "p3-runner";

/// Controllers a job cgroup needs (`cpu` is optional: only for a CPU quota).
const REQUIRED: [&str; 2] = ["memory", "pids"];

fn controllers(dir: &Path, file: &str) -> Vec<String> {
    files::read(dir, file)
        .map(|t| t.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default()
}

/// The base to use for a process whose own cgroup is `own` (its parent when it already sits in
/// our runner leaf).
pub fn base_of(own: &Path) -> PathBuf {
    match own.file_name() {
        Some(n) if n == RUNNER_LEAF => own.parent().unwrap_or(own).to_path_buf(),
        _ => own.to_path_buf(),
    }
}

/// Enable `wanted` in `dir`'s `cgroup.subtree_control`.
fn enable(dir: &Path, wanted: &[&str]) -> Result<(), CgroupError> {
    let value: Vec<String> = wanted.iter().map(|c| format!("+{c}")).collect();
    files::write(dir, "cgroup.subtree_control", &value.join(" "))
}

/// Make `<base>/p3-executor` ready to hold job cgroups with `memory`, `pids` and (when
/// available) `cpu`, and bound all jobs together by what the host can spare. Cheap when done:
/// one read. Returns whether `cpu` is available to the jobs.
pub fn ensure_parent(base: &Path, host: &HostSize) -> Result<bool, CgroupError> {
    let parent = base.join(PARENT);
    let enabled = controllers(&parent, "cgroup.subtree_control");
    if REQUIRED.iter().all(|c| enabled.iter().any(|e| e == c)) {
        return Ok(enabled.iter().any(|e| e == "cpu"));
    }
    let available = controllers(base, "cgroup.controllers");
    if let Some(missing) = REQUIRED.iter().find(|c| !available.iter().any(|a| a == *c)) {
        return Err(CgroupError::MissingController {
            controller: (*missing).to_string(),
            dir: base.to_path_buf(),
        });
    }
    let cpu = available.iter().any(|a| a == "cpu");
    let wanted: Vec<&str> = REQUIRED
        .iter()
        .copied()
        .chain(cpu.then_some("cpu"))
        .collect();
    if let Err(e) = enable(base, &wanted) {
        // EBUSY: `base` holds processes (the runner). Move them into a leaf, then retry.
        if !e.is_busy() {
            return Err(e);
        }
        let leaf = base.join(RUNNER_LEAF);
        files::mkdir(&leaf)?;
        for pid in files::procs(base) {
            // Ignored: a process that exited meanwhile is not an error, and one that could not
            // move shows as EBUSY again in `enable` just below.
            let _ = files::write(&leaf, "cgroup.procs", &pid.to_string());
        }
        enable(base, &wanted)?;
    }
    if files::mkdir(&parent)? {
        // All jobs together: the host keeps its reserve whatever the number of jobs.
        files::write(&parent, "memory.max", &host.jobs_memory().to_string())?;
        files::write(&parent, "pids.max", &host.jobs_pids().to_string())?;
    }
    enable(&parent, &wanted)?;
    Ok(cpu)
}

/// Make the job's cgroup `dir` (under a parent made by [`ensure_parent`]) with `limits`.
pub fn create(dir: &Path, limits: &Limits, cpu_available: bool) -> Result<(), CgroupError> {
    files::mkdir(dir)?;
    let max = |v: Option<u64>| v.map_or("max".to_string(), |b| b.to_string());
    files::write(dir, "memory.max", &max(limits.memory.value))?;
    // "Swap included": v2 limits swap separately, so a job gets none (a missing file is a
    // kernel without swap accounting, where there is nothing to limit).
    if limits.memory.value.is_some() {
        match files::write(dir, "memory.swap.max", "0") {
            Err(e) if !e.is_not_found() => return Err(e),
            _ => {}
        }
    }
    files::write(dir, "pids.max", &max(limits.pids.value.map(u64::from)))?;
    if limits.cpu.value.is_some() {
        if !cpu_available {
            return Err(CgroupError::MissingController {
                controller: "cpu".into(),
                dir: dir.to_path_buf(),
            });
        }
        files::write(dir, "cpu.max", &limits.cpu_max())?;
    }
    Ok(())
}

/// Move process `pid` (the supervisor of a stage, before it starts the script) into `dir`.
pub fn enter(dir: &Path, pid: u32) -> Result<(), CgroupError> {
    files::write(dir, "cgroup.procs", &pid.to_string())
}

/// OOM kills and refused forks so far.
pub fn counters(dir: &Path) -> Counters {
    Counters {
        oom_kills: read_keyed(dir, "memory.events", "oom_kill").unwrap_or(0),
        pids_max: read_keyed(dir, "pids.events", "max").unwrap_or(0),
    }
}

/// Peak memory (`memory.peak`, Linux 5.19+) and CPU time.
pub fn usage(dir: &Path) -> Usage {
    Usage {
        peak_memory: read_u64(dir, "memory.peak"),
        cpu_usec: read_keyed(dir, "cpu.stat", "usage_usec"),
    }
}

/// Kill every process in `dir` and wait until it is empty. `cgroup.kill` (Linux 5.14+) kills
/// the whole cgroup at once, so nothing can fork past it; older kernels freeze, kill each
/// process, thaw. Returns how many processes were found in it.
pub fn kill_all(dir: &Path, deadline: Duration) -> Result<usize, CgroupError> {
    let found = files::procs(dir).len();
    if found == 0 && !populated(dir) {
        return Ok(0);
    }
    let until = Instant::now() + deadline;
    let killable = files::write(dir, "cgroup.kill", "1").is_ok();
    loop {
        if !killable {
            // Ignored, all three: the loop's test is whether the cgroup is still populated
            // (bounded by the deadline); a failed freeze only lets a fork race the kill once
            // more, and a failed kill is ESRCH (gone already).
            let _ = files::write(dir, "cgroup.freeze", "1");
            for pid in files::procs(dir) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
            let _ = files::write(dir, "cgroup.freeze", "0");
        }
        if !populated(dir) {
            return Ok(found);
        }
        if Instant::now() > until {
            return Err(CgroupError::StillPopulated(dir.to_path_buf()));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Does `dir` (or a cgroup below it) still hold a process?
fn populated(dir: &Path) -> bool {
    match read_keyed(dir, "cgroup.events", "populated") {
        Some(p) => p != 0,
        None => !files::procs(dir).is_empty(),
    }
}

#[cfg(test)]
mod tests {
    //! The protocol against a directory tree that mimics cgroupfs: the "kernel" here is the
    //! test, which provides the files the kernel would and checks what was written.
    use super::*;
    use crate::walls::cgroup::limits::{Limit, Limits};
    use std::fs;

    const HOST: HostSize = HostSize {
        ram: 16 << 30,
        pid_max: 32768,
    };

    fn limits(memory: Option<u64>, pids: Option<u32>, cpu: Option<f64>) -> Limits {
        let key = |k: &str| format!("[limits] {k}");
        Limits {
            memory: Limit {
                value: memory,
                key: key("memory"),
            },
            pids: Limit {
                value: pids,
                key: key("pids"),
            },
            cpu: Limit {
                value: cpu,
                key: key("cpu"),
            },
        }
    }

    /// A delegated cgroup as systemd leaves it with `Delegate=yes`.
    fn delegated(controllers: &str) -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        fs::write(root.path().join("cgroup.controllers"), controllers).unwrap();
        fs::write(root.path().join("cgroup.subtree_control"), "").unwrap();
        fs::write(root.path().join("cgroup.procs"), "").unwrap();
        root
    }

    fn text(dir: &Path, name: &str) -> String {
        fs::read_to_string(dir.join(name)).unwrap()
    }

    #[test]
    fn parent_enables_controllers_and_bounds_all_jobs() {
        let base = delegated("cpuset cpu io memory pids\n");
        let cpu = ensure_parent(base.path(), &HOST).unwrap();
        assert!(cpu);
        assert_eq!(
            text(base.path(), "cgroup.subtree_control"),
            "+memory +pids +cpu"
        );
        let parent = base.path().join(PARENT);
        assert_eq!(
            text(&parent, "cgroup.subtree_control"),
            "+memory +pids +cpu"
        );
        assert_eq!(text(&parent, "memory.max"), HOST.jobs_memory().to_string());
        assert_eq!(text(&parent, "pids.max"), "28672");
        // The kernel answers reads with the enabled set, without the "+": done in one read.
        fs::write(parent.join("cgroup.subtree_control"), "memory pids cpu\n").unwrap();
        fs::write(parent.join("memory.max"), "changed by the admin").unwrap();
        assert!(ensure_parent(base.path(), &HOST).unwrap());
        assert_eq!(text(&parent, "memory.max"), "changed by the admin");
    }

    #[test]
    fn a_base_without_memory_or_pids_is_refused() {
        let base = delegated("cpu io\n");
        let err = ensure_parent(base.path(), &HOST).unwrap_err();
        assert!(err.to_string().contains("memory"), "{err}");
        let base = delegated("memory io\n");
        assert!(
            ensure_parent(base.path(), &HOST)
                .unwrap_err()
                .to_string()
                .contains("pids")
        );
        let base = delegated("memory pids\n");
        assert!(
            !ensure_parent(base.path(), &HOST).unwrap(),
            "no cpu controller"
        );
        assert_eq!(text(base.path(), "cgroup.subtree_control"), "+memory +pids");
    }

    #[test]
    fn job_limits_are_written() {
        let base = delegated("memory pids cpu\n");
        ensure_parent(base.path(), &HOST).unwrap();
        let job = base.path().join(PARENT).join("job-7");
        create(&job, &limits(Some(64 << 20), Some(64), Some(1.5)), true).unwrap();
        assert_eq!(text(&job, "memory.max"), (64u64 << 20).to_string());
        assert_eq!(text(&job, "memory.swap.max"), "0");
        assert_eq!(text(&job, "pids.max"), "64");
        assert_eq!(text(&job, "cpu.max"), "150000 100000");
        let unlimited = base.path().join(PARENT).join("job-8");
        create(&unlimited, &limits(None, None, None), true).unwrap();
        assert_eq!(text(&unlimited, "memory.max"), "max");
        assert_eq!(text(&unlimited, "pids.max"), "max");
        assert!(!unlimited.join("cpu.max").exists());
        assert!(!unlimited.join("memory.swap.max").exists());
        let err = create(&job, &limits(None, None, Some(1.0)), false).unwrap_err();
        assert!(err.to_string().contains("cpu"), "{err}");
    }

    #[test]
    fn enter_counters_usage_and_kill() {
        let base = delegated("memory pids\n");
        ensure_parent(base.path(), &HOST).unwrap();
        let job = base.path().join(PARENT).join("job-9");
        create(&job, &limits(Some(64 << 20), Some(64), None), false).unwrap();
        enter(&job, 4242).unwrap();
        assert_eq!(text(&job, "cgroup.procs"), "4242");
        assert_eq!(counters(&job), Counters::default(), "no events file yet");
        fs::write(
            job.join("memory.events"),
            "low 0\nhigh 0\nmax 9\noom 2\noom_kill 1\n",
        )
        .unwrap();
        fs::write(job.join("pids.events"), "max 3\n").unwrap();
        assert_eq!(
            counters(&job),
            Counters {
                oom_kills: 1,
                pids_max: 3
            }
        );
        fs::write(job.join("memory.peak"), "67108864\n").unwrap();
        fs::write(
            job.join("cpu.stat"),
            "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\n",
        )
        .unwrap();
        assert_eq!(
            usage(&job),
            Usage {
                peak_memory: Some(64 << 20),
                cpu_usec: Some(1500)
            }
        );
        // The kernel empties the cgroup once cgroup.kill is written; here nothing does, so the
        // kill reports the cgroup still populated when its deadline passes.
        fs::write(job.join("cgroup.procs"), "").unwrap();
        fs::write(job.join("cgroup.events"), "populated 1\nfrozen 0\n").unwrap();
        let err = kill_all(&job, Duration::from_millis(20)).unwrap_err();
        assert!(matches!(err, CgroupError::StillPopulated(_)), "{err}");
        assert_eq!(text(&job, "cgroup.kill"), "1");
        fs::write(job.join("cgroup.events"), "populated 0\nfrozen 0\n").unwrap();
        assert_eq!(kill_all(&job, Duration::from_millis(20)).unwrap(), 0);
    }

    #[test]
    fn a_runner_in_its_leaf_still_makes_jobs_beside_it() {
        // Only the kernel answers EBUSY to "+memory" in a base that holds processes, so the
        // move into the leaf needs a v2 kernel; what a later call, already in the leaf, takes
        // as its base is checked here.
        assert_eq!(
            base_of(Path::new("/sys/fs/cgroup/system.slice/r.service/p3-runner")),
            PathBuf::from("/sys/fs/cgroup/system.slice/r.service")
        );
        assert_eq!(
            base_of(Path::new("/sys/fs/cgroup/system.slice/r.service")),
            PathBuf::from("/sys/fs/cgroup/system.slice/r.service")
        );
    }
}
