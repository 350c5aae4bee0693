//! A cgroup per job, with limits: every process of a job, in every stage, runs in
//! `<base>/p3-executor/job-<id>-<tag>` with a memory, pids and CPU limit, so no job can take the
//! host down, and cleanup kills the job by its cgroup, which no process of the job can leave.
//! The tag names the config's state root ([`Placement::name`]).
//!
//! - prepare ([`plan`], then [`JobCgroup::create`]): resolve the limits ([`limits`], pure),
//!   record them and where the cgroup goes in `state.json`, make it;
//! - run ([`JobCgroup::enter`]): the stage's supervisor moves itself in before it starts the
//!   script, so the script and everything it starts inherit it; after the script, a failed stage
//!   during which the OOM killer struck or a fork was refused is a build failure naming the limit
//!   ([`Stage::verdict`]);
//! - cleanup and gc ([`JobCgroup::end`]): kill everything in it, read peak memory and CPU time
//!   for the audit record, remove it; `gc` also removes orphaned job cgroups
//!   ([`sweep_orphans`]);
//! - `check` ([`probe`]): the host's mode (v1, v2, none) and whether limits can be enforced.
//!
//! cgroup v2 ([`v2`]) and v1 ([`v1`], including hybrid hosts) speak different files; both are
//! driven by the [`Placement`] recorded at prepare. [`detect`] finds the layout.

pub mod detect;
pub(crate) mod error;
pub(crate) mod files;
pub mod host;
pub mod limits;
pub(crate) mod state;
pub mod v1;
pub mod v2;

pub use error::CgroupError;
pub use state::{JobCgroup, Placement};

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::Config;
use crate::job::JobContext;
use crate::workspace::JobState;
use detect::Layout;
use limits::{CgroupSetting, Limits, Request, format_size};

/// Name of the cgroup that holds every job cgroup, under the base.
pub const PARENT: &str = "p3-executor";

/// How long cleanup waits for a job's processes to die once killed.
const KILL_DEADLINE: Duration = Duration::from_secs(10);

/// Events counted by the kernel that say a limit was hit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Processes killed by the OOM killer in the cgroup.
    pub oom_kills: u64,
    /// Forks refused because `pids.max` was reached.
    pub pids_max: u64,
}

/// What a job used, read when it ends.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Peak memory in bytes (None: the kernel does not keep it, v2 before 5.19).
    pub peak_memory: Option<u64>,
    /// CPU time in microseconds.
    pub cpu_usec: Option<u64>,
}

impl Placement {
    /// Where the job's cgroup of `job_id` goes on this host for this config (no I/O but the
    /// layout's, which the caller read).
    pub fn for_job(cfg: &Config, layout: &Layout, job_id: u64) -> Self {
        let name = Self::name(cfg, job_id);
        let parent = cfg.limits.cgroup_parent.as_deref();
        match layout {
            Layout::V2 { mount, own } => {
                let base = parent.map_or_else(|| v2::base_of(own), |p| detect::under(mount, p));
                Placement::V2 {
                    dir: base.join(PARENT).join(name),
                }
            }
            Layout::V1 { hierarchies } => Placement::V1 {
                dirs: hierarchies
                    .iter()
                    .map(|(c, mount, own)| {
                        let base = parent.map_or_else(|| own.clone(), |p| detect::under(mount, p));
                        (c.clone(), base.join(PARENT).join(&name))
                    })
                    .collect(),
            },
        }
    }

    /// The name of the cgroup of `job_id`: `job-<id>-<tag>`, the tag the first 8 hex digits of
    /// the SHA-256 of `state_root`. Job ids are unique only within one GitLab instance, and
    /// configs with state roots of their own (runners of several instances on one host) share
    /// the parent cgroup: without the tag, one config's cleanup of its job 131 would kill the
    /// other's. Within one config, a job id has one owner (`job_owner`).
    pub fn name(cfg: &Config, job_id: u64) -> String {
        let tag = crate::config::state_root_digest(&cfg.state_root);
        format!("job-{job_id}-{}", &tag[..8])
    }

    /// The distinct directories of the job's cgroup.
    pub fn dirs(&self) -> Vec<&Path> {
        match self {
            Placement::V2 { dir } => vec![dir.as_path()],
            Placement::V1 { dirs } => v1::unique(dirs),
        }
    }

    fn counters(&self) -> Counters {
        match self {
            Placement::V2 { dir } => v2::counters(dir),
            Placement::V1 { dirs } => v1::counters(dirs),
        }
    }

    fn kill_all(&self) -> Result<usize, CgroupError> {
        match self {
            Placement::V2 { dir } => v2::kill_all(dir, KILL_DEADLINE),
            Placement::V1 { dirs } => v1::kill_all(dirs, KILL_DEADLINE),
        }
    }

    fn remove(&self) -> Result<(), CgroupError> {
        let mut first = Ok(());
        for d in self.dirs() {
            if let Err(e) = files::rmdir(d) {
                first = first.and(Err(e));
            }
        }
        first
    }
}

/// The job's resolved limits; `Err` (a denial) when its request variables ask for more than
/// policy allows or are malformed. `devstage` is the granted one, if any.
pub fn limits_for(
    cfg: &Config,
    job: &JobContext,
    devstage: Option<&str>,
) -> Result<Limits, String> {
    let var = |name| job.variable(name).map(str::trim).filter(|v| !v.is_empty());
    let request = Request {
        memory: var(limits::REQUEST_MEMORY),
        pids: var(limits::REQUEST_PIDS),
        cpu: var(limits::REQUEST_CPU),
    };
    let stage = devstage.and_then(|name| {
        let l = cfg.devstages.get(name)?.limits.as_ref()?;
        Some((name, l))
    });
    limits::resolve(&host::host_size(), &cfg.limits.layer(), stage, &request)
}

/// Does this config put jobs into cgroups for a job in `state`? Only as root (as the sandbox).
pub fn wanted(cfg: &Config, state: &JobState) -> bool {
    state.ids.switch_user && cfg.limits.cgroups == CgroupSetting::Auto
}

/// prepare, first half: resolve the job's limits and record them and where its cgroup goes in
/// `state` and in gc's marker, before it is made, so cleanup finds even a half-made one. The
/// cgroup to make ([`JobCgroup::create`]); None when jobs get none.
pub fn plan(
    cfg: &Config,
    job: &JobContext,
    state: &mut JobState,
) -> crate::error::Result<Option<JobCgroup>> {
    if !wanted(cfg, state) {
        return Ok(None);
    }
    let devstage = state.grant.as_ref().map(|g| g.devstage.clone());
    let limits = limits_for(cfg, job, devstage.as_deref()).map_err(crate::error::Error::Denied)?;
    let layout = detect::detect().map_err(CgroupError::Unsupported)?;
    let placement = Placement::for_job(cfg, &layout, state.job_id);
    let cgroup = JobCgroup { placement, limits };
    state.cgroup = Some(cgroup.clone());
    write_marker(cfg, state.job_id, &cgroup.placement)?;
    Ok(Some(cgroup))
}

impl JobCgroup {
    /// Make the cgroup (and the parent of all jobs, on first use) and write the limits. A
    /// cgroup left by an earlier attempt of this job's prepare is emptied and made afresh.
    pub fn create(&self) -> Result<(), CgroupError> {
        let host = host::host_size();
        if self.placement.dirs().iter().any(|d| d.exists()) {
            self.placement.kill_all()?;
            self.placement.remove()?;
        }
        let made = match &self.placement {
            Placement::V2 { dir } => {
                let parent = dir.parent().expect("job dir has a parent");
                let base = parent.parent().expect("parent has a base");
                v2::ensure_parent(base, &host).and_then(|cpu| v2::create(dir, &self.limits, cpu))
            }
            Placement::V1 { dirs } => {
                let parents: Vec<(String, PathBuf)> = dirs
                    .iter()
                    .map(|(c, d)| (c.clone(), d.parent().expect("has a parent").to_path_buf()))
                    .collect();
                v1::ensure_parents(&parents, &host).and_then(|()| v1::create(dirs, &self.limits))
            }
        };
        if made.is_err() {
            // Ignored: the marker stays, so teardown or gc removes what is left; the error
            // returned is the one that stopped the making.
            let _ = self.placement.remove();
        }
        made
    }

    /// run: move this process (the stage's supervisor, before it starts the script) into the
    /// job's cgroup; everything it starts inherits it. Returns the limit counters before the
    /// stage, for [`Stage::verdict`].
    pub fn enter(&self) -> Result<Stage<'_>, CgroupError> {
        match &self.placement {
            // A v2 move of a whole process waits for an RCU grace period (see v1::enter_self);
            // v2 cannot move a lone thread across domains.
            Placement::V2 { dir } => v2::enter(dir, std::process::id())?,
            Placement::V1 { dirs } => v1::enter_self(dirs)?,
        }
        Ok(Stage {
            cgroup: self,
            before: self.placement.counters(),
        })
    }

    /// cleanup and gc: kill every process in the cgroup, read what the job used, remove the
    /// cgroup. Usage is read even when the kill or the removal fails (the error is returned
    /// beside it).
    pub fn end(&self) -> (Usage, Result<usize, CgroupError>) {
        let killed = self.placement.kill_all();
        let usage = match &self.placement {
            Placement::V2 { dir } => v2::usage(dir),
            Placement::V1 { dirs } => v1::usage(dirs),
        };
        let result = killed.and_then(|n| self.placement.remove().map(|()| n));
        (usage, result)
    }

    /// The audit record's fields for a job that ended: the limits in force (and who set them),
    /// peak memory and CPU time.
    pub fn audit_fields(&self, usage: &Usage) -> BTreeMap<String, Value> {
        let l = &self.limits;
        let mut out = BTreeMap::new();
        out.insert(
            "limits".into(),
            serde_json::json!({
                "memory_bytes": l.memory.value,
                "memory_set_by": l.memory.key,
                "pids": l.pids.value,
                "pids_set_by": l.pids.key,
                "cpu": l.cpu.value,
                "cpu_set_by": l.cpu.key,
            }),
        );
        if let Some(peak) = usage.peak_memory {
            out.insert("peak_memory_bytes".into(), peak.into());
        }
        if let Some(usec) = usage.cpu_usec {
            out.insert("cpu_seconds".into(), (usec as f64 / 1e6).into());
        }
        out
    }
}

/// One stage inside the job's cgroup.
#[derive(Debug)]
pub struct Stage<'a> {
    cgroup: &'a JobCgroup,
    before: Counters,
}

impl Stage<'_> {
    /// After the script: when it `failed` and the OOM killer struck or a fork was refused during
    /// the stage, the message naming the limit and the setting that sets it. A stage that
    /// succeeded despite a refused fork (a tool that retries) is left alone.
    pub fn verdict(&self, failed: bool) -> Option<String> {
        if !failed {
            return None;
        }
        let after = self.cgroup.placement.counters();
        let l = &self.cgroup.limits;
        let mut hits = Vec::new();
        if after.oom_kills > self.before.oom_kills {
            hits.push(format!(
                "the job was killed by its memory limit ({}, {}): {} process(es) killed by the OOM killer",
                format_size(l.memory.value),
                l.memory.key,
                after.oom_kills - self.before.oom_kills
            ));
        }
        if after.pids_max > self.before.pids_max {
            hits.push(format!(
                "the job reached its pids limit ({}, {}): {} fork(s) refused",
                l.pids.value.map_or("max".into(), |p| p.to_string()),
                l.pids.key,
                after.pids_max - self.before.pids_max
            ));
        }
        (!hits.is_empty()).then(|| hits.join("; "))
    }
}

/// The directory in the state root with one file per job cgroup made and not yet removed
/// (`<id>`, the [`Placement`] as JSON): written before the cgroup is made, removed after it
/// is, so gc finds every job cgroup this host left, and only this host's (gc runs in its own
/// cgroup, not the runner's, and another executor may share the parent).
pub const MARKERS: &str = "cgroups";

fn marker(cfg: &Config, job_id: u64) -> PathBuf {
    cfg.state_root.join(MARKERS).join(job_id.to_string())
}

fn write_marker(cfg: &Config, job_id: u64, placement: &Placement) -> crate::error::Result<()> {
    crate::workspace::ensure_dir(&cfg.state_root.join(MARKERS), 0o700)?;
    let file = marker(cfg, job_id);
    let text = serde_json::to_vec(placement).expect("placement serializes");
    crate::atomic_file::write(&file, &text, crate::atomic_file::Options::PRIVATE)
        .map_err(|e| crate::error::Error::io(format!("write {}", file.display()), e))
}

/// cleanup and gc: [`JobCgroup::end`], then forget the cgroup once it is gone (a cgroup that
/// could not be removed stays listed for gc).
pub fn end(cfg: &Config, job_id: u64, cgroup: &JobCgroup) -> (Usage, Result<usize, CgroupError>) {
    let (usage, result) = cgroup.end();
    if result.is_ok() {
        forget(&marker(cfg, job_id));
    }
    (usage, result)
}

/// Remove a cgroup's marker; a failure is logged (gc finds the marker again and retries).
fn forget(marker: &Path) {
    match std::fs::remove_file(marker) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!("remove {}: {e}", marker.display()),
    }
}

/// gc: end the job cgroups this host made whose job it no longer knows (`known`: the job ids
/// with any state left), as when a teardown could not remove one. Returns the job ids done.
pub fn sweep_orphans(cfg: &Config, known: &[u64]) -> Vec<u64> {
    let Ok(entries) = std::fs::read_dir(cfg.state_root.join(MARKERS)) else {
        return Vec::new();
    };
    let mut done = Vec::new();
    for e in entries.flatten() {
        let Some(id) = e.file_name().to_str().and_then(|n| n.parse::<u64>().ok()) else {
            continue;
        };
        if known.contains(&id) {
            continue;
        }
        let placement = std::fs::read(e.path())
            .ok()
            .and_then(|b| serde_json::from_slice::<Placement>(&b).ok());
        let Some(placement) = placement else {
            forget(&e.path());
            continue;
        };
        match placement.kill_all().and_then(|_| placement.remove()) {
            Ok(()) => {
                forget(&e.path());
                done.push(id);
            }
            Err(err) => tracing::warn!("job {id}: orphaned cgroup: {err}"),
        }
    }
    done
}

/// What `check` reports about cgroups on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    /// `v1`, `v2` or `none`.
    pub mode: &'static str,
    /// Where job cgroups would go (the first directory), when a mode was found.
    pub parent: Option<PathBuf>,
    /// Why limits cannot be enforced; None when they can.
    pub problem: Option<String>,
}

/// Can this host enforce job limits with this config? Makes and removes a probe job cgroup.
pub fn probe(cfg: &Config) -> Probe {
    let layout = match detect::detect() {
        Ok(l) => l,
        Err(why) => {
            return Probe {
                mode: "none",
                parent: None,
                problem: Some(why),
            };
        }
    };
    let placement = Placement::for_job(cfg, &layout, 0);
    let parent = placement
        .dirs()
        .first()
        .and_then(|d| d.parent())
        .map(Path::to_path_buf);
    // Job ids start at 1, so `job-0` is never a job's.
    let host = host::host_size();
    let probe = JobCgroup {
        placement,
        limits: limits::resolve(&host, &cfg.limits.layer(), None, &Request::default())
            .expect("no request, no denial"),
    };
    let problem = probe
        .create()
        .and_then(|()| probe.placement.remove())
        .err()
        .map(|e| e.to_string());
    Probe {
        mode: layout.name(),
        parent,
        problem,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_cgroup_is_named_by_its_id_and_its_configs_state_root() {
        let cfg = |root: &str| Config::parse(&format!("state_root = \"{root}\"\n")).unwrap();
        let (a, b) = (
            cfg("/var/lib/p3-executor"),
            cfg("/var/lib/p3-executor-staging"),
        );
        let name = Placement::name(&a, 131);
        assert_eq!(name, Placement::name(&a, 131), "stable");
        assert!(name.starts_with("job-131-") && name.len() == "job-131-".len() + 8);
        assert_ne!(name, Placement::name(&b, 131), "one per config");
        assert_ne!(name, Placement::name(&a, 132), "one per job");
    }
}
