//! Per-job directories and the small state file shared by the separate runner calls.
//!
//! Two trees per job, both named by the GitLab job id from JOB_RESPONSE_FILE (never by a job
//! variable):
//! - the *workspace* `<state_root>/jobs/<id>/`, root-only (0700): `state.json`, which later calls
//!   trust, so the job must not be able to touch it;
//! - the *job root* `<builds_root>/<id>/`, owned by the job's uid (0700): `builds/`, `cache/`,
//!   `home/`, `tmp/`. Another job's uid cannot enter it.
//! - the *credentials dir* `<state_root>/creds/<id>/`, owned by root (0711) so the job cannot
//!   plant symlinks where root writes, holding files owned by the job's uid (0600): the ticket
//!   cache and AWS files. `state_root` and `creds/` are 0711: traversable, not listable.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::error::{Error, Result};

/// The `job_env` key through which `config` tells the later calls the job's workspace.
pub const ANNOUNCED_WORKSPACE: &str = "P3_EXECUTOR_WORKSPACE";

/// Every path belonging to one job, derived from the config and the job id alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobPaths {
    /// GitLab job id.
    pub job_id: u64,
    /// Root-only workspace holding `state.json`.
    pub workspace: PathBuf,
    /// The job-owned root.
    pub job_root: PathBuf,
    /// `builds_dir` reported to the runner.
    pub builds_dir: PathBuf,
    /// `cache_dir` reported to the runner.
    pub cache_dir: PathBuf,
    /// HOME of the job.
    pub home: PathBuf,
    /// TMPDIR of the job.
    pub tmp: PathBuf,
    /// Root-owned directory of the credential files handed to the job.
    pub creds: PathBuf,
}

impl JobPaths {
    /// Paths for `job_id` under the configured roots.
    pub fn new(cfg: &Config, job_id: u64) -> Self {
        let workspace = cfg.state_root.join("jobs").join(job_id.to_string());
        let job_root = cfg.builds_root.join(job_id.to_string());
        Self {
            job_id,
            workspace,
            builds_dir: job_root.join("builds"),
            cache_dir: job_root.join("cache"),
            home: job_root.join("home"),
            tmp: job_root.join("tmp"),
            creds: cfg.state_root.join("creds").join(job_id.to_string()),
            job_root,
        }
    }

    /// Check the workspace `config` announced to the later calls (its `job_env`, which job
    /// variables cannot shadow) against the one this call computes: a config edited while the
    /// job runs would otherwise make run or cleanup look in the wrong place.
    pub fn check_announced(&self) -> Result<()> {
        match std::env::var_os(ANNOUNCED_WORKSPACE) {
            Some(announced) if Path::new(&announced) != self.workspace => {
                Err(Error::Workspace(format!(
                    "config_exec announced workspace {} but this call computes {}: was state_root changed while job {} was running?",
                    Path::new(&announced).display(),
                    self.workspace.display(),
                    self.job_id
                )))
            }
            _ => Ok(()),
        }
    }

    /// `state.json` inside the workspace.
    pub fn state_file(&self) -> PathBuf {
        self.workspace.join("state.json")
    }
}

/// Who the job's processes run as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobIdentityIds {
    /// uid of the job's processes.
    pub uid: u32,
    /// gid of the job's processes.
    pub gid: u32,
    /// The uid belongs to this job alone (leased from `job_uid_range`).
    pub private_uid: bool,
    /// The executor switches to this uid (it runs as root).
    pub switch_user: bool,
}

/// What a credential grant left in the workspace, for refresh, cleanup and audit.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct GrantState {
    /// Devstage granted.
    pub devstage: String,
    /// Deploy stage (account name) whose credentials the job holds.
    pub deploy_account: String,
    /// Kerberos principal.
    pub principal: String,
    /// Ticket cache file (inside `creds/`).
    pub ccache: PathBuf,
    /// When the ticket expires.
    pub ticket_expires: Option<DateTime<Utc>>,
    /// When the ticket's renewable life ends.
    pub ticket_renew_until: Option<DateTime<Utc>>,
    /// When the S3 credentials expire, if the account has S3 and they expire.
    pub s3_expires: Option<DateTime<Utc>>,
    /// The account has S3 credentials in `creds/`.
    pub s3: bool,
    /// The grant's audit record of the verified job (before its outcome): later records of
    /// this grant (renew, S3, cleanup, gc) repeat its identity facts.
    pub audit_context: Option<crate::audit::AuditRecord>,
}

/// State shared between prepare, run and cleanup of one job.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobState {
    /// GitLab job id.
    pub job_id: u64,
    /// When prepare created the workspace.
    pub created: DateTime<Utc>,
    /// Who the job runs as.
    pub ids: JobIdentityIds,
    /// Name of the job user (for USER/LOGNAME).
    pub user: String,
    /// Environment injected into every job script (credential locations, never secrets'
    /// values other than what the job is granted).
    pub env: BTreeMap<String, String>,
    /// The credential grant, if any.
    pub grant: Option<GrantState>,
    /// The job's cgroup and the limits in force (None: no cgroup, e.g. not running as root).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<crate::walls::cgroup::state::JobCgroup>,
    /// The network policy applied to the job's uid (None: none applied).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<crate::walls::network::state::JobNetwork>,
}

/// Mark the job as active for as long as the returned file stays open.
///
/// `run` holds this (shared) lock while the job script runs; `gc` never sweeps a job whose lock
/// is held, and reads the job's last activity from the lock's mtime. The kernel drops the lock when the process dies, even by SIGKILL, so a crashed
/// runner cannot keep a job "active" forever.
pub fn hold_active(paths: &JobPaths) -> Result<Flock<fs::File>> {
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(paths.workspace.join("active.lock"))
        .map_err(|e| Error::io("open the job's active lock", e))?;
    let file = Flock::lock(file, FlockArg::LockShared)
        .map_err(|(_, e)| Error::io("lock the job's active lock", e.into()))?;
    // The lock's mtime is the job's last activity for gc: one futimens on an fd we hold,
    // instead of rewriting state.json at every stage. A failure only leaves gc an older age,
    // and gc never touches a job whose lock is held.
    if let Err(e) = file.set_modified(std::time::SystemTime::now()) {
        tracing::warn!("touch the job's active lock: {e}");
    }
    Ok(file)
}

/// True when some executor process currently holds the job's active lock.
pub fn is_active(paths: &JobPaths) -> bool {
    let Ok(file) = fs::OpenOptions::new()
        .write(true)
        .open(paths.workspace.join("active.lock"))
    else {
        return false;
    };
    // Any failure counts as held (EWOULDBLOCK is the usual one): gc stays off the job. The
    // lock, if taken, is released when it drops.
    Flock::lock(file, FlockArg::LockExclusiveNonblock).is_err()
}

/// Create a directory with `mode` if missing; refuse a symlink or non-directory in its place.
pub fn ensure_dir(path: &Path, mode: u32) -> Result<()> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => {
            if meta.permissions().mode() & 0o7777 != mode {
                fs::set_permissions(path, fs::Permissions::from_mode(mode))
                    .map_err(|e| Error::io(format!("chmod {}", path.display()), e))?;
            }
            Ok(())
        }
        Ok(_) => Err(Error::Workspace(format!(
            "{} exists and is not a directory",
            path.display()
        ))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => fs::DirBuilder::new()
            .recursive(true)
            .mode(mode)
            .create(path)
            .and_then(|()| fs::set_permissions(path, fs::Permissions::from_mode(mode)))
            .map_err(|e| Error::io(format!("create {}", path.display()), e)),
        Err(e) => Err(Error::io(format!("stat {}", path.display()), e)),
    }
}

/// Create a job's root-owned directories: its workspace (the state), its credentials dir,
/// and the roots above them and above its job root ([`create_job_root`]). Idempotent.
pub fn create(cfg: &Config, paths: &JobPaths) -> Result<()> {
    // Traversable so jobs reach their own credentials dir; nothing in it is listable.
    ensure_dir(&cfg.state_root, 0o711)?;
    ensure_dir(&cfg.state_root.join("jobs"), 0o700)?;
    ensure_dir(&cfg.state_root.join("creds"), 0o711)?;
    ensure_dir(&paths.creds, 0o711)?;
    // Jobs must traverse builds_root to reach their own root, but not list it.
    ensure_dir(&cfg.builds_root, 0o711)?;
    ensure_dir(&paths.workspace, 0o700)
}

/// Create the job root for a job running as `ids`, under the roots [`create`] made. A prepare
/// retried by the runner starts from a fresh one. Nothing the credentials need is in it, so
/// prepare makes it while they are obtained.
pub fn create_job_root(paths: &JobPaths, ids: JobIdentityIds) -> Result<()> {
    remove_tree(&paths.job_root)?;
    // Build the job root as root first, hand it over last: no window in which the job owns a
    // directory root is still writing into.
    ensure_dir(&paths.job_root, 0o700)?;
    for dir in [&paths.builds_dir, &paths.cache_dir, &paths.home, &paths.tmp] {
        ensure_dir(dir, 0o700)?;
        chown(dir, ids)?;
    }
    chown(&paths.job_root, ids)
}

fn chown(path: &Path, ids: JobIdentityIds) -> Result<()> {
    if !ids.switch_user {
        return Ok(());
    }
    std::os::unix::fs::lchown(path, Some(ids.uid), Some(ids.gid))
        .map_err(|e| Error::io(format!("chown {}", path.display()), e))
}

/// Remove a directory tree if present. Symlinks inside are removed, never followed.
pub fn remove_tree(path: &Path) -> Result<()> {
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(format!("remove {}", path.display()), e)),
    }
}

impl JobState {
    /// Load the state written by prepare.
    pub fn load(paths: &JobPaths) -> Result<Self> {
        let file = paths.state_file();
        let bytes =
            crate::limits::read_bounded(&file, crate::limits::MAX_PAYLOAD_BYTES, "job state")
                .map_err(|e| match e {
                    Error::Io { source, .. } => Error::Workspace(format!(
                        "{} cannot be read ({source}); did prepare run for job {}?",
                        file.display(),
                        paths.job_id
                    )),
                    other => other,
                })?;
        serde_json::from_slice(&bytes)
            .map_err(|e| Error::Workspace(format!("{} is corrupt: {e}", file.display())))
    }

    /// Write the state atomically (temp file + rename), root-only.
    pub fn save(&self, paths: &JobPaths) -> Result<()> {
        let file = paths.state_file();
        // Not durable: the rename makes the update atomic against a crashed process, and a
        // host crash ends the job anyway. Every stage of every job pays for this call.
        let state = serde_json::to_vec_pretty(self).expect("state serializes");
        crate::atomic_file::write(&file, &state, crate::atomic_file::Options::PRIVATE)
            .map_err(|e| Error::io(format!("write {}", file.display()), e))
    }
}

/// Job ids that have a workspace, a job root, a credentials dir or a uid lease (`leases`, as
/// read by [`leases`](crate::uid_pool::leases): the caller reads them once per sweep) on this host.
pub fn known_jobs(cfg: &Config, leases: &[(u32, u64)]) -> Vec<u64> {
    let mut ids: Vec<u64> = [
        cfg.state_root.join("jobs"),
        cfg.state_root.join("creds"),
        cfg.builds_root.clone(),
    ]
    .iter()
    .filter_map(|d| fs::read_dir(d).ok())
    .flat_map(|entries| entries.flatten())
    .filter_map(|e| e.file_name().to_str()?.parse().ok())
    .collect();
    ids.extend(leases.iter().map(|(_, job)| *job));
    ids.sort_unstable();
    ids.dedup();
    ids
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(root: &Path) -> Config {
        let mut cfg = Config::parse("").unwrap();
        cfg.state_root = root.join("state");
        cfg.builds_root = root.join("builds");
        cfg
    }

    #[test]
    fn paths_are_per_job_and_never_shared() {
        let cfg = Config::parse("").unwrap();
        let a = JobPaths::new(&cfg, 1);
        let b = JobPaths::new(&cfg, 2);
        assert_ne!(a.builds_dir, b.builds_dir);
        assert_ne!(a.cache_dir, b.cache_dir);
        assert!(a.builds_dir.starts_with(&a.job_root));
    }

    #[test]
    fn create_is_idempotent_and_private() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = cfg(dir.path());
        let paths = JobPaths::new(&cfg, 7);
        let ids = JobIdentityIds {
            uid: 0,
            gid: 0,
            private_uid: false,
            switch_user: false,
        };
        create(&cfg, &paths).unwrap();
        create_job_root(&paths, ids).unwrap();
        fs::write(paths.builds_dir.join("leftover"), "x").unwrap();
        create(&cfg, &paths).unwrap();
        create_job_root(&paths, ids).unwrap();
        assert!(!paths.builds_dir.join("leftover").exists());
        let mode = fs::metadata(&paths.workspace).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        assert_eq!(known_jobs(&cfg, &crate::uid_pool::leases(&cfg)), vec![7]);
    }
}
