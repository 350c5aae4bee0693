//! The cgroup v1 file protocol: one directory per hierarchy (`memory`, `pids`, `cpu`,
//! `cpuacct`, `freezer`; `cpu,cpuacct` co-mounted share one), each
//! `<base>/p3-executor/job-<id>-<tag>`. The same limits as v2, in v1's files.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::error::CgroupError;
use super::files::{self, read_keyed, read_u64};
use super::limits::{HostSize, Limits};
use super::{Counters, Usage};

/// The job's directory in each hierarchy: `(controller, dir)`.
pub type Dirs = [(String, PathBuf)];

fn dir_of<'a>(dirs: &'a Dirs, controller: &str) -> Option<&'a Path> {
    dirs.iter()
        .find(|(c, _)| c == controller)
        .map(|(_, d)| d.as_path())
}

/// The distinct directories (co-mounted controllers share one).
pub fn unique(dirs: &Dirs) -> Vec<&Path> {
    let mut out: Vec<&Path> = Vec::new();
    for (_, d) in dirs {
        if !out.contains(&d.as_path()) {
            out.push(d);
        }
    }
    out
}

/// Make each hierarchy's `p3-executor` parent; the one that makes it bounds all jobs together
/// by what the host can spare.
pub fn ensure_parents(parents: &Dirs, host: &HostSize) -> Result<(), CgroupError> {
    for (controller, dir) in parents {
        // A configured `cgroup_parent` is made on first use (v1 needs nothing enabled above it).
        if let Some(base) = dir.parent().filter(|b| !b.exists()) {
            std::fs::create_dir_all(base).map_err(|source| CgroupError::Io {
                what: "create".into(),
                path: base.to_path_buf(),
                source,
            })?;
        }
        if !files::mkdir(dir)? {
            continue;
        }
        match controller.as_str() {
            "memory" => files::write(
                dir,
                "memory.limit_in_bytes",
                &host.jobs_memory().to_string(),
            )?,
            "pids" => files::write(dir, "pids.max", &host.jobs_pids().to_string())?,
            _ => {}
        }
    }
    Ok(())
}

/// Make the job's directories and write `limits`.
pub fn create(dirs: &Dirs, limits: &Limits) -> Result<(), CgroupError> {
    for d in unique(dirs) {
        files::mkdir(d)?;
    }
    let memory = dir_of(dirs, "memory").ok_or_else(|| missing("memory", dirs))?;
    let bytes = limits
        .memory
        .value
        .map_or("-1".to_string(), |b| b.to_string());
    // memsw (memory + swap) must stay at or above the memory limit: memory first on a fresh
    // cgroup (memsw starts unlimited). A kernel without swap accounting has no memsw file.
    files::write(memory, "memory.limit_in_bytes", &bytes)?;
    if memory.join("memory.memsw.limit_in_bytes").exists() {
        files::write(memory, "memory.memsw.limit_in_bytes", &bytes)?;
    }
    let pids = dir_of(dirs, "pids").ok_or_else(|| missing("pids", dirs))?;
    let max = limits
        .pids
        .value
        .map_or("max".to_string(), |p| p.to_string());
    files::write(pids, "pids.max", &max)?;
    if let Some(quota) = limits.cpu_quota_usec() {
        let cpu = dir_of(dirs, "cpu").ok_or_else(|| missing("cpu", dirs))?;
        files::write(
            cpu,
            "cpu.cfs_period_us",
            &super::limits::CPU_PERIOD_USEC.to_string(),
        )?;
        files::write(cpu, "cpu.cfs_quota_us", &quota.to_string())?;
    }
    Ok(())
}

fn missing(controller: &str, dirs: &Dirs) -> CgroupError {
    CgroupError::MissingController {
        controller: controller.into(),
        dir: dirs
            .first()
            .and_then(|(_, d)| d.parent())
            .map(Path::to_path_buf)
            .unwrap_or_default(),
    }
}

/// Move the calling process into the job's cgroup of every hierarchy.
///
/// Moving a whole process (`cgroup.procs`) takes the kernel's global threadgroup lock for
/// writing, which waits for an RCU grace period: about 11 ms on our hosts, for every stage.
/// Moving only the calling thread (`0` into `tasks`) needs no such lock, so a single-threaded
/// caller moves that way (everything it forks follows it); with more threads, the whole process.
pub fn enter_self(dirs: &Dirs) -> Result<(), CgroupError> {
    let threads = std::fs::read_dir("/proc/self/task").map_or(2, |d| d.count());
    for d in unique(dirs) {
        if threads == 1 {
            files::write(d, "tasks", "0")?;
        } else {
            files::write(d, "cgroup.procs", &std::process::id().to_string())?;
        }
    }
    Ok(())
}

/// OOM kills (`memory.oom_control`, Linux 4.13+) and refused forks (`pids.events`).
pub fn counters(dirs: &Dirs) -> Counters {
    Counters {
        oom_kills: dir_of(dirs, "memory")
            .and_then(|d| read_keyed(d, "memory.oom_control", "oom_kill"))
            .unwrap_or(0),
        pids_max: dir_of(dirs, "pids")
            .and_then(|d| read_keyed(d, "pids.events", "max"))
            .unwrap_or(0),
    }
}

/// Peak memory (`memory.max_usage_in_bytes`) and CPU time (`cpuacct.usage`, nanoseconds).
pub fn usage(dirs: &Dirs) -> Usage {
    Usage {
        peak_memory: dir_of(dirs, "memory").and_then(|d| read_u64(d, "memory.max_usage_in_bytes")),
        cpu_usec: dir_of(dirs, "cpuacct")
            .and_then(|d| read_u64(d, "cpuacct.usage"))
            .map(|ns| ns / 1000),
    }
}

/// Kill every process of the job and wait until no hierarchy holds one. With the freezer: freeze
/// (no fork can race the kill), SIGKILL every process, thaw (the kills land), repeated until
/// empty. Without it, SIGKILL until empty. Returns how many processes were found.
pub fn kill_all(dirs: &Dirs, deadline: Duration) -> Result<usize, CgroupError> {
    let until = Instant::now() + deadline;
    let freezer = dir_of(dirs, "freezer");
    let mut found = 0;
    loop {
        let pids: Vec<i32> = unique(dirs)
            .into_iter()
            .flat_map(files::procs)
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        if pids.is_empty() {
            return Ok(found);
        }
        found = found.max(pids.len());
        // Ignored below, the freezer's writes and the kills: the loop's test is whether any
        // pid is left (bounded by the deadline); a failed freeze only lets a fork race the
        // kill once more, and a failed kill is ESRCH (gone already).
        if let Some(f) = freezer {
            let _ = files::write(f, "freezer.state", "FROZEN");
            // FREEZING until every task has stopped; a short wait, bounded by the deadline.
            while files::read(f, "freezer.state").is_ok_and(|s| s.trim() == "FREEZING")
                && Instant::now() < until
            {
                std::thread::sleep(Duration::from_millis(1));
            }
            for pid in files::procs(f) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
        for pid in &pids {
            let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
        }
        if let Some(f) = freezer {
            let _ = files::write(f, "freezer.state", "THAWED");
        }
        if Instant::now() > until {
            let first = unique(dirs)
                .first()
                .map(|d| d.to_path_buf())
                .unwrap_or_default();
            return Err(CgroupError::StillPopulated(first));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}
